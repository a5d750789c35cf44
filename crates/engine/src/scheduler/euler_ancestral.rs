//! Ancestral Euler sampling: a rewrite of diffusers' `EulerAncestralDiscreteScheduler`
//! (k-diffusion's `sample_euler_ancestral` with eta = 1).
//!
//! Each step takes an Euler step down to `sigma_down` and then adds fresh noise
//! of size `sigma_up`, so that the marginal noise level lands on the next sigma.
//! The noise is drawn from the request's generator once per step, on every
//! step including the last (where `sigma_up` is 0), because diffusers draws it
//! unconditionally and skipping a draw would shift every later random number.
//!
//! This class accepts fewer config keys than `EulerDiscreteScheduler` (no
//! Karras sigmas, no interpolation type) and, like diffusers, refuses
//! `prediction_type = "sample"`. Sigmas are float32, interpolated in float64
//! by `np.interp` as diffusers does.

use candle_core::Tensor;

use super::sigmas;
use super::{
    linspace_f64, NoiseSource, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::error::{Error, Result};

pub(super) struct EulerAncestralDiscrete {
    timesteps: Vec<f64>,
    /// One more entry than the steps; the last is 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerAncestralDiscrete {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let n_train = config.usize_or("num_train_timesteps", 1000)?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        if prediction == PredictionType::Sample {
            return Err(config.error(
                "prediction_type",
                "\"sample\" is not implemented by EulerAncestralDiscreteScheduler; accepted: \"epsilon\", \"v_prediction\"",
            ));
        }
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;

        let n = num_inference_steps;
        let timesteps: Vec<f32> = match spacing {
            TimestepSpacing::Linspace => linspace_f64(0.0, (n_train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| t as f32)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n_train / n;
                (0..n)
                    .rev()
                    .map(|i| (i * ratio) as f32 + steps_offset as f32)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                sigmas::arange_f64(n_train as f64, 0.0, -(n_train as f64 / n as f64))
                    .into_iter()
                    .map(|t| t.round_ties_even() as f32 - 1.0)
                    .collect()
            }
        };
        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        let sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| sigmas::interp_table(t as f64, &train_sigmas) as f32)
            .chain(std::iter::once(0.0))
            .collect();

        let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        } as f64;

        Ok(EulerAncestralDiscrete {
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            init_noise_sigma,
            prediction,
        })
    }

    fn sigma(&self, step_index: usize) -> Result<f32> {
        if step_index >= self.timesteps.len() {
            return Err(Error::invalid(
                "step_index",
                format!(
                    "{step_index} is past the last of {} timesteps",
                    self.timesteps.len()
                ),
            ));
        }
        Ok(self.sigmas[step_index])
    }
}

impl Scheduler for EulerAncestralDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = self.sigma(step_index)?;
        Ok(sigmas::div(&sample, (sigma * sigma + 1.0).sqrt())?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor> {
        let sigma = self.sigma(step_index)?;
        let out_dtype = model_output.dtype();
        let sample = sigmas::f32(sample)?;
        let model_output = sigmas::f32(model_output)?;
        let pred_original = match self.prediction {
            PredictionType::Epsilon => (&sample - sigmas::mul(&model_output, sigma)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (sigmas::mul(&model_output, c_out)? + sigmas::div(&sample, sigma * sigma + 1.0)?)?
            }
            PredictionType::Sample => unreachable!("refused when the scheduler was built"),
        };
        let sigma_from = sigma;
        let sigma_to = self.sigmas[step_index + 1];
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();

        let derivative = sigmas::div(&(&sample - pred_original)?, sigma)?;
        let dt = sigma_down - sigma;
        let prev = (&sample + sigmas::mul(&derivative, dt)?)?;
        let noise = sigmas::f32(&noise()?)?;
        let prev = (prev + sigmas::mul(&noise, sigma_up)?)?;
        Ok(prev.to_dtype(out_dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::sigmas::config_error;

    #[test]
    fn sample_prediction_is_refused_as_in_diffusers() {
        let build = |c: &SchedulerConfig| EulerAncestralDiscrete::new(c, 10);
        let e = config_error(build, r#"{"prediction_type": "sample"}"#);
        assert!(
            e.contains("`prediction_type`") && e.contains("v_prediction"),
            "{e}"
        );
    }
}
