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

use super::euler::euler_step;
use super::sigmas::{self, mul, Division, SigmaOptions, SigmaSchedule};
use super::{
    draw_noise, NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn,
    TimestepSpacing,
};
use crate::error::Result;

pub(super) struct EulerAncestralDiscrete {
    /// One more sigma than the steps; the last is 0.
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerAncestralDiscrete {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.num_train_timesteps()?;
        let prediction = config.noise_or_v_prediction(
            "\"sample\" is not implemented by EulerAncestralDiscreteScheduler; accepted: \"epsilon\", \"v_prediction\"",
        )?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;
        let options = SigmaOptions::interpolated(num_train, spacing, steps_offset, Division::Exact);
        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        Ok(EulerAncestralDiscrete {
            schedule: SigmaSchedule::new(&train_sigmas, num_inference_steps, &options),
            prediction,
        })
    }
}

impl SchedulerClass for EulerAncestralDiscrete {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::Sigma(self.schedule.sigmas[step_index])
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Sigmas(&self.schedule)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample, noise) = (at.output, at.index, at.sample, at.noise);
        let sigma_from = self.schedule.sigmas[step_index];
        let sigma_to = self.schedule.sigmas[step_index + 1];
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();

        let prev = euler_step(
            self.prediction,
            model_output,
            sample,
            sigma_from,
            sigma_down,
        )?;
        let noise = draw_noise(noise, &prev)?;
        let prev = (prev + mul(&noise, sigma_up)?)?;
        Ok(prev.to_dtype(model_output.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::sigmas::assert_refused;
    use crate::scheduler::SchedulerKind;

    #[test]
    fn sample_prediction_is_refused_as_in_diffusers() {
        let json = r#"{"prediction_type": "sample"}"#;
        let needles = ["`prediction_type`", "v_prediction"];
        assert_refused(SchedulerKind::EulerAncestralDiscrete, json, &needles);
    }
}
