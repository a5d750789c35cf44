//! `HeunDiscreteScheduler`, rewritten from diffusers 0.42.1 (`scheduling_heun_discrete.py`).
//!
//! Heun's method (Karras et al. 2022, Algorithm 1 without churn) on the
//! probability-flow ODE in sigma: an Euler step, then a correction that averages
//! the derivative at both ends. It needs two model evaluations per step, and
//! diffusers expresses that by listing every timestep after the first twice;
//! `step` alternates between the first-order (Euler) and second-order
//! (correction) halves. The last entry is a plain Euler step down to sigma 0.
//!
//! Dtypes follow diffusers: sigmas and timesteps are float32, scalar arithmetic
//! on 0-dim float32 tensors, hence `f32`. Heun has its own defaults for
//! `beta_start`/`beta_end` (0.00085, 0.012) and also accepts the `exp` schedule.

use candle_core::Tensor;

use super::lms::{predict_original, read_sigma_options, KarrasBounds};
use super::sigmas::{self, SigmaSchedule};
use super::{
    BetaDefaults, NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn,
};
use crate::error::Result;

/// What the first-order half leaves for the second.
struct FirstOrder {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

pub(super) struct Heun {
    /// Timesteps: t_0, then every later timestep twice. Sigmas: sigma_0, then
    /// every later sigma twice, then the final 0.
    schedule: SigmaSchedule,
    prediction: PredictionType,
    clip: Option<f32>,
    /// Set between the two halves of a step (diffusers' `dt` being non-None).
    pending: Option<FirstOrder>,
}

impl Heun {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod_with(BetaDefaults::HEUN, &["exp"])?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let clip = if config.bool_or("clip_sample", false)? {
            Some(config.f64_or("clip_sample_range", 1.0)? as f32)
        } else {
            None
        };
        let options = read_sigma_options(config, KarrasBounds::ConfigOverrides)?;
        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        let mut schedule = SigmaSchedule::new(&train_sigmas, num_inference_steps, &options);

        let n = schedule.sigmas.len();
        schedule.sigmas = std::iter::once(schedule.sigmas[0])
            .chain(schedule.sigmas[1..n - 1].iter().flat_map(|&s| [s, s]))
            .chain(std::iter::once(schedule.sigmas[n - 1]))
            .collect();
        schedule.timesteps = std::iter::once(schedule.timesteps[0])
            .chain(schedule.timesteps[1..].iter().flat_map(|&t| [t, t]))
            .collect();
        Ok(Heun {
            schedule,
            prediction,
            clip,
            pending: None,
        })
    }
}

impl SchedulerClass for Heun {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::Sigma(self.schedule.sigmas[step_index])
    }

    /// Every inference step after the first is two entries (the first-order half and Heun's
    /// correction).
    fn order(&self) -> usize {
        2
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Sigmas(&self.schedule)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample) = (at.output, at.index, at.sample);
        let first_order = self.pending.is_none();
        let sigmas = &self.schedule.sigmas;
        let (sigma, sigma_next) = if first_order {
            (sigmas[step_index], sigmas[step_index + 1])
        } else {
            (sigmas[step_index - 1], sigmas[step_index])
        };
        // The model was evaluated at sigma in the first half and at sigma_next in the second.
        let sigma_input = if first_order { sigma } else { sigma_next };
        let mut pred_original =
            predict_original(self.prediction, model_output, sample, sigma_input)?;
        if let Some(range) = self.clip {
            pred_original = pred_original.clamp(-range, range)?;
        }

        let (derivative, dt, base) = match self.pending.take() {
            None => {
                let derivative = ((sample - &pred_original)? / sigma as f64)?;
                let dt = sigma_next - sigma;
                self.pending = Some(FirstOrder {
                    derivative: derivative.clone(),
                    dt,
                    sample: sample.clone(),
                });
                (derivative, dt, sample.clone())
            }
            Some(first) => {
                let derivative = ((sample - &pred_original)? / sigma_next as f64)?;
                let derivative = ((first.derivative + derivative)? / 2.0)?;
                (derivative, first.dt, first.sample)
            }
        };
        Ok((base + derivative.affine(dt as f64, 0.0)?)?)
    }
}
