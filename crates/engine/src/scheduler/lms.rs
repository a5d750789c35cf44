//! `LMSDiscreteScheduler`, rewritten from diffusers 0.42.1 (`scheduling_lms_discrete.py`).
//!
//! A linear multistep method on the probability-flow ODE in sigma (the
//! k-diffusion formulation): each step integrates the Lagrange polynomial
//! through the last up-to-four derivatives over [sigma_i, sigma_{i+1}], with
//! order 4 as the Stable Diffusion pipeline calls it. diffusers integrates with
//! `scipy.integrate.quad`; the integrand is a polynomial of degree at most 3, so
//! we use 4-point Gauss-Legendre, which is exact for it.
//!
//! Dtypes follow diffusers: `sigmas` are float32 (built with numpy float64
//! interpolation and stored as float32), timesteps are float32, and the
//! per-step scalar arithmetic is on 0-dim float32 tensors, hence `f32`; the LMS
//! coefficients are Python floats, hence `f64`.
//!
//! This file also holds what Heun shares with LMS: the reading of their sigma
//! options (the schedule itself is [`super::sigmas::SigmaSchedule`]) and the
//! k-diffusion prediction of the clean sample.

use candle_core::Tensor;

use super::sigmas::{self, Division, SigmaOptions, SigmaRamp, SigmaSchedule};
use super::{
    NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn, TimestepSpacing,
};
use crate::error::Result;

/// diffusers' pipeline calls `step` with the default `order=4`.
const LMS_ORDER: usize = 4;

pub(super) struct Lms {
    /// Sigmas: one per timestep plus a final 0.
    schedule: SigmaSchedule,
    prediction: PredictionType,
    /// The latest derivatives, oldest first, at most [`LMS_ORDER`].
    derivatives: Vec<Tensor>,
}

impl Lms {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod()?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let options = read_sigma_options(config, KarrasBounds::FromSchedule)?;
        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        Ok(Lms {
            schedule: SigmaSchedule::new(&train_sigmas, num_inference_steps, &options),
            prediction,
            derivatives: Vec::new(),
        })
    }

    /// The weight of the derivative `current` steps back: the integral over
    /// [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial through the last
    /// `order` sigmas that is 1 at that derivative's sigma.
    fn lms_coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let sigmas = &self.schedule.sigmas;
        let s = |k: usize| sigmas[i - k] as f64;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(k)) / (s(current) - s(k)))
                .product::<f64>()
        };
        gauss_legendre_4(basis, sigmas[i] as f64, sigmas[i + 1] as f64)
    }
}

impl SchedulerClass for Lms {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::Sigma(self.schedule.sigmas[step_index])
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Sigmas(&self.schedule)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample) = (at.output, at.index, at.sample);
        let sigma = self.schedule.sigmas[step_index];
        let pred_original = predict_original(self.prediction, model_output, sample, sigma)?;
        let derivative = ((sample - &pred_original)? / sigma as f64)?;
        self.derivatives.push(derivative);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.remove(0);
        }

        let order = (step_index + 1).min(LMS_ORDER);
        let mut update: Option<Tensor> = None;
        for (current, derivative) in (0..order).zip(self.derivatives.iter().rev()) {
            let term = derivative.affine(self.lms_coefficient(order, step_index, current), 0.0)?;
            update = Some(match update {
                Some(u) => (u + term)?,
                None => term,
            });
        }
        Ok(match update {
            Some(u) => (sample + u)?,
            None => sample.clone(),
        })
    }
}

/// The predicted clean sample of the k-diffusion parametrisation, as LMS and
/// Heun compute it from the model output at noise level `sigma`, in the
/// latents' dtype. It multiplies by 1 / (sigma^2 + 1) where the Euler
/// schedulers' float32 version divides (diffusers divides in all four); the
/// two round differently in the last bit, so each keeps its own.
pub(super) fn predict_original(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => (sample - model_output.affine(sigma as f64, 0.0)?)?,
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip = 1.0 / (sigma * sigma + 1.0);
            (model_output.affine(c_out as f64, 0.0)? + sample.affine(c_skip as f64, 0.0)?)?
        }
        PredictionType::Sample => model_output.clone(),
    })
}

/// The integral of `f` over [a, b] by 4-point Gauss-Legendre: exact for
/// polynomials up to degree 7, and the LMS integrands have degree at most 3.
fn gauss_legendre_4(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    const NODES: [f64; 2] = [0.339_981_043_584_856_3, 0.861_136_311_594_052_6];
    const WEIGHTS: [f64; 2] = [0.652_145_154_862_546_1, 0.347_854_845_137_453_9];
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let sum: f64 = NODES
        .iter()
        .zip(WEIGHTS)
        .map(|(x, w)| w * (f(mid - half * x) + f(mid + half * x)))
        .sum();
    half * sum
}

/// Where the Karras spacing takes its sigma range from: LMS always uses the
/// interpolated schedule's ends, Heun lets the config's `sigma_min`/`sigma_max`
/// override them (diffusers reads them from any key the config file carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KarrasBounds {
    FromSchedule,
    ConfigOverrides,
}

/// The [`SigmaOptions`] of LMS and Heun: their spacing and ramp (the
/// exponential ramp always takes its ends from the config when it sets them).
pub(super) fn read_sigma_options(
    config: &SchedulerConfig,
    karras_bounds: KarrasBounds,
) -> Result<SigmaOptions> {
    let num_train = config.num_train_timesteps()?;
    let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
    let steps_offset = config.usize_or("steps_offset", 0)?;
    let ramp = SigmaRamp::read(config)?;
    let mut options =
        SigmaOptions::interpolated(num_train, spacing, steps_offset, Division::Reciprocal);
    options.ramp = ramp;
    if ramp == SigmaRamp::Exponential
        || (ramp == SigmaRamp::Karras && karras_bounds == KarrasBounds::ConfigOverrides)
    {
        options.sigma_min = sigmas::optional_f64(config, "sigma_min")?;
        options.sigma_max = sigmas::optional_f64(config, "sigma_max")?;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_is_exact_for_cubics() {
        let f = |x: f64| 4.0 * x * x * x - 3.0 * x * x + 2.0 * x - 1.0;
        // Antiderivative x^4 - x^3 + x^2 - x from 3 to 0.5 (LMS integrates downwards).
        let exact = |x: f64| x.powi(4) - x.powi(3) + x * x - x;
        let got = gauss_legendre_4(f, 3.0, 0.5);
        assert!((got - (exact(0.5) - exact(3.0))).abs() < 1e-12, "{got}");
    }
}
