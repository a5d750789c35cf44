//! Euler's method in sigma space: a rewrite of diffusers' `EulerDiscreteScheduler`
//! (Karras et al. 2022, algorithm 2) with the pipeline's defaults
//! `s_churn = 0`, `s_tmin = 0`, `s_tmax = inf`, `s_noise = 1`.
//!
//! With `s_churn = 0` the churn factor gamma is always 0, so the step never
//! draws noise and the sampler is deterministic; we therefore drop the churn
//! branch instead of carrying parameters nobody can set.
//!
//! Timesteps are floats here (the UNet sees e.g. 832.5), exactly as diffusers
//! hands them over. Tables follow diffusers' dtypes: the training sigmas are
//! float32, the interpolated inference sigmas are computed in float64 by
//! `np.interp` and stored in float32, and the update itself runs in float32
//! on 0-dim float32 scalars.

use candle_core::Tensor;

use super::sigmas::{self, SigmaRamp};
use super::{
    linspace_f32, linspace_f64, NoiseSource, PredictionType, Scheduler, SchedulerConfig,
    TimestepSpacing,
};
use crate::error::{Error, Result};

pub(super) struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One more entry than the steps: the last is the sigma we end at.
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let n_train = config.usize_or("num_train_timesteps", 1000)?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let ramp = SigmaRamp::read(config)?;
        let sigma_min = sigmas::optional_f64(config, "sigma_min")?;
        let sigma_max = sigmas::optional_f64(config, "sigma_max")?;
        let final_zero = sigmas::final_sigma_is_zero(config)?;
        let log_linear = match config.str_or("interpolation_type", "linear")?.as_str() {
            "linear" => false,
            "log_linear" => true,
            other => {
                return Err(config.error(
                    "interpolation_type",
                    format!("unsupported value \"{other}\"; accepted: \"linear\", \"log_linear\""),
                ))
            }
        };
        let continuous = match config.str_or("timestep_type", "discrete")?.as_str() {
            "discrete" => false,
            "continuous" => true,
            other => {
                return Err(config.error(
                    "timestep_type",
                    format!(
                        "unsupported value \"{other}\"; accepted: \"discrete\", \"continuous\""
                    ),
                ))
            }
        };

        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;
        let n = num_inference_steps;
        let mut timesteps: Vec<f32> = match spacing {
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
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
        let mut inference: Vec<f64> = if log_linear {
            // diffusers spaces n + 1 values here (one more than the timesteps)
            // and then still appends the final sigma; we keep that shape.
            let last = *train_sigmas.last().expect("non-empty training schedule");
            linspace_f32(last.ln(), train_sigmas[0].ln(), n + 1)
                .into_iter()
                .map(|l| l.exp() as f64)
                .collect()
        } else {
            timesteps
                .iter()
                .map(|&t| sigmas::interp_table(t as f64, &train_sigmas))
                .collect()
        };
        if ramp != SigmaRamp::Interpolated {
            let lo = sigma_min.unwrap_or(*inference.last().expect("at least one step"));
            let hi = sigma_max.unwrap_or(inference[0]);
            inference = ramp.ramp(lo, hi, n);
            timesteps = inference
                .iter()
                .map(|&s| sigmas::sigma_to_t(s, &log_sigmas) as f32)
                .collect();
        }
        let sigma_last = if final_zero { 0.0 } else { train_sigmas[0] };
        let sigmas: Vec<f32> = inference
            .into_iter()
            .map(|s| s as f32)
            .chain(std::iter::once(sigma_last))
            .collect();

        let timesteps: Vec<f64> = if continuous && prediction == PredictionType::VPrediction {
            // The EDM-style preconditioning feeds the UNet c_noise = ln(sigma) / 4.
            sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25 * s.ln()) as f64)
                .collect()
        } else {
            timesteps.into_iter().map(f64::from).collect()
        };

        let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        } as f64;

        Ok(EulerDiscrete {
            timesteps,
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

impl Scheduler for EulerDiscrete {
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
        _noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor> {
        let sigma = self.sigma(step_index)?;
        let out_dtype = model_output.dtype();
        let sample = sigmas::f32(sample)?;
        let model_output = sigmas::f32(model_output)?;
        // gamma = 0 with the default s_churn, so sigma_hat is sigma itself.
        let sigma_hat = sigma;
        let pred_original = match self.prediction {
            PredictionType::Sample => model_output.clone(),
            PredictionType::Epsilon => (&sample - sigmas::mul(&model_output, sigma_hat)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip_div = sigma * sigma + 1.0;
                (sigmas::mul(&model_output, c_out)? + sigmas::div(&sample, c_skip_div)?)?
            }
        };
        let derivative = sigmas::div(&(&sample - pred_original)?, sigma_hat)?;
        let dt = self.sigmas[step_index + 1] - sigma_hat;
        let prev = (&sample + sigmas::mul(&derivative, dt)?)?;
        Ok(prev.to_dtype(out_dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::sigmas::config_error;

    fn build(c: &SchedulerConfig) -> Result<EulerDiscrete> {
        EulerDiscrete::new(c, 10)
    }

    #[test]
    fn unsupported_values_name_their_field() {
        for (json, field) in [
            (r#"{"interpolation_type": "cubic"}"#, "interpolation_type"),
            (r#"{"timestep_type": "edm"}"#, "timestep_type"),
            (r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
            (r#"{"final_sigmas_type": "min"}"#, "final_sigmas_type"),
            (r#"{"timestep_spacing": "even"}"#, "timestep_spacing"),
            (
                r#"{"prediction_type": "flow_prediction"}"#,
                "prediction_type",
            ),
        ] {
            let e = config_error(build, json);
            assert!(e.contains(&format!("`{field}`")), "{json}: {e}");
        }
    }

    #[test]
    fn sd21_schedule_starts_at_the_top_sigma() {
        let json =
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#;
        let c = SchedulerConfig::from_json(std::path::Path::new("s.json"), json).unwrap();
        let s = build(&c).unwrap();
        assert_eq!(s.timesteps()[0], 999.0);
        assert_eq!(*s.timesteps().last().unwrap(), 0.0);
        assert!((s.init_noise_sigma() - 14.6146).abs() < 1e-3);
    }
}
