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
//!
//! This file also holds the Euler step that Euler ancestral takes before it
//! adds its noise.

use candle_core::Tensor;

use super::sigmas::{self, div, mul, Division, SigmaOptions, SigmaRamp, SigmaSchedule};
use super::{
    NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn, TimestepSpacing,
};
use crate::error::Result;

pub(super) struct EulerDiscrete {
    /// One more sigma than the steps: the last is the sigma we end at.
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.num_train_timesteps()?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let options = SigmaOptions {
            ramp: SigmaRamp::read(config)?,
            sigma_min: sigmas::optional_f64(config, "sigma_min")?,
            sigma_max: sigmas::optional_f64(config, "sigma_max")?,
            final_sigma_zero: sigmas::final_sigma_is_zero(config)?,
            log_linear: config.one_of(
                "interpolation_type",
                false,
                &[("linear", false), ("log_linear", true)],
            )?,
            ..SigmaOptions::interpolated(num_train, spacing, steps_offset, Division::Exact)
        };
        let continuous = config.one_of(
            "timestep_type",
            false,
            &[("discrete", false), ("continuous", true)],
        )?;

        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;
        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        let mut schedule = SigmaSchedule::new(&train_sigmas, num_inference_steps, &options);
        if continuous && prediction == PredictionType::VPrediction {
            // The EDM-style preconditioning feeds the UNet c_noise = ln(sigma) / 4.
            let sigmas = &schedule.sigmas;
            schedule.timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|s| (0.25 * s.ln()) as f64)
                .collect();
        }
        Ok(EulerDiscrete {
            schedule,
            prediction,
        })
    }
}

impl SchedulerClass for EulerDiscrete {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::Sigma(self.schedule.sigmas[step_index])
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Sigmas(&self.schedule)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample) = (at.output, at.index, at.sample);
        // gamma = 0 with the default s_churn, so sigma_hat is sigma itself.
        let sigma_hat = self.schedule.sigmas[step_index];
        let sigma_next = self.schedule.sigmas[step_index + 1];
        let prev = euler_step(self.prediction, model_output, sample, sigma_hat, sigma_next)?;
        Ok(prev.to_dtype(model_output.dtype())?)
    }
}

/// The Euler step of both Euler schedulers, in float32: the clean sample
/// predicted at `sigma`, and a step along the ODE's derivative there down to
/// `sigma_to`. Returns the float32 result, for the caller to add to (the
/// ancestral noise) and cast back to the model's dtype.
pub(super) fn euler_step(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
    sigma_to: f32,
) -> Result<Tensor> {
    let sample = sigmas::f32(sample)?;
    let model_output = sigmas::f32(model_output)?;
    let pred_original = match prediction {
        PredictionType::Sample => model_output,
        PredictionType::Epsilon => (&sample - mul(&model_output, sigma)?)?,
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip_div = sigma * sigma + 1.0;
            (mul(&model_output, c_out)? + div(&sample, c_skip_div)?)?
        }
    };
    let derivative = div(&(&sample - pred_original)?, sigma)?;
    let dt = sigma_to - sigma;
    Ok((&sample + mul(&derivative, dt)?)?)
}

#[cfg(test)]
mod tests {
    use crate::scheduler::sigmas::{assert_refusals, build_from_json};
    use crate::scheduler::SchedulerKind;

    #[test]
    fn unsupported_values_name_their_field() {
        assert_refusals(
            SchedulerKind::EulerDiscrete,
            &[
                (r#"{"interpolation_type": "cubic"}"#, "interpolation_type"),
                (r#"{"timestep_type": "edm"}"#, "timestep_type"),
                (r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
                (r#"{"final_sigmas_type": "min"}"#, "final_sigmas_type"),
                (r#"{"timestep_spacing": "even"}"#, "timestep_spacing"),
                (
                    r#"{"prediction_type": "flow_prediction"}"#,
                    "prediction_type",
                ),
            ],
        );
    }

    #[test]
    fn sd21_schedule_starts_at_the_top_sigma() {
        let json =
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#;
        let s = build_from_json(SchedulerKind::EulerDiscrete, json).unwrap();
        assert_eq!(s.timesteps()[0], 999.0);
        assert_eq!(*s.timesteps().last().unwrap(), 0.0);
        assert!((s.init_noise_sigma() - 14.6146).abs() < 1e-3);
    }
}
