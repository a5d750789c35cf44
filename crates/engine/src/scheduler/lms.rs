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
//! This file also holds what Heun shares with LMS: the float timesteps and
//! sigmas their `set_timesteps` lay out (on the numpy helpers of
//! [`super::sigmas`]) and the k-diffusion prediction of the clean sample.

use candle_core::Tensor;

use super::sigmas::{self, SigmaRamp};
use super::{
    linspace_f64, NoiseSource, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::error::Result;

/// diffusers' pipeline calls `step` with the default `order=4`.
const LMS_ORDER: usize = 4;

pub(super) struct Lms {
    /// One per timestep plus a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    init_noise_sigma: f32,
    prediction: PredictionType,
    /// The latest derivatives, oldest first, at most [`LMS_ORDER`].
    derivatives: Vec<Tensor>,
}

impl Lms {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let alphas_cumprod = config.alphas_cumprod()?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let schedule = SigmaSchedule::build(
            config,
            &alphas_cumprod,
            num_inference_steps,
            KarrasBounds::FromSchedule,
        )?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let init_noise_sigma = schedule.init_noise_sigma(spacing);
        Ok(Lms {
            sigmas: schedule.sigmas,
            timesteps: schedule.timesteps.iter().map(|&t| t as f64).collect(),
            init_noise_sigma,
            prediction,
            derivatives: Vec::new(),
        })
    }

    /// The weight of the derivative `current` steps back: the integral over
    /// [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial through the last
    /// `order` sigmas that is 1 at that derivative's sigma.
    fn lms_coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let s = |k: usize| self.sigmas[i - k] as f64;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(k)) / (s(current) - s(k)))
                .product::<f64>()
        };
        gauss_legendre_4(basis, self.sigmas[i] as f64, self.sigmas[i + 1] as f64)
    }
}

impl Scheduler for Lms {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step_index];
        Ok((sample / (sigma * sigma + 1.0).sqrt() as f64)?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[step_index];
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

/// The predicted clean sample of the k-diffusion parametrisation, as LMS,
/// Heun (and diffusers' other sigma schedulers) compute it from the model
/// output at noise level `sigma`.
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

/// One scheduler's sigmas and timesteps, as LMS's and Heun's `set_timesteps` lay them out.
pub(super) struct SigmaSchedule {
    /// One per timestep plus a final 0, float32.
    pub sigmas: Vec<f32>,
    /// float32, as diffusers stores them.
    pub timesteps: Vec<f32>,
}

impl SigmaSchedule {
    pub(super) fn build(
        config: &SchedulerConfig,
        alphas_cumprod: &[f32],
        n: usize,
        karras_bounds: KarrasBounds,
    ) -> Result<Self> {
        let num_train = config.usize_or("num_train_timesteps", 1000)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let ramp = SigmaRamp::read(config)?;

        let train_sigmas = sigmas::training_sigmas(alphas_cumprod);
        let timesteps = float_timesteps(spacing, num_train, n, steps_offset);
        let interpolated: Vec<f64> = timesteps
            .iter()
            .map(|&t| sigmas::interp_table(t as f64, &train_sigmas))
            .collect();

        let (sigmas, timesteps): (Vec<f64>, Vec<f32>) = match ramp {
            SigmaRamp::Interpolated => (interpolated, timesteps),
            SigmaRamp::Karras | SigmaRamp::Exponential => {
                let mut lo = interpolated[interpolated.len() - 1];
                let mut hi = interpolated[0];
                if ramp == SigmaRamp::Exponential || karras_bounds == KarrasBounds::ConfigOverrides
                {
                    lo = config.f64_or("sigma_min", lo)?;
                    hi = config.f64_or("sigma_max", hi)?;
                }
                let sigmas = ramp.ramp(lo, hi, n);
                let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                let timesteps = sigmas
                    .iter()
                    .map(|&s| sigmas::sigma_to_t(s, &log_sigmas) as f32)
                    .collect();
                (sigmas, timesteps)
            }
        };
        let sigmas = sigmas.into_iter().map(|s| s as f32).chain([0.0]).collect();
        Ok(SigmaSchedule { sigmas, timesteps })
    }

    /// diffusers' `init_noise_sigma`: the largest sigma, or sqrt(max² + 1) for
    /// `leading` spacing, in float32.
    pub(super) fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f32 {
        let max = self
            .sigmas
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }
}

/// The descending float32 timesteps of LMS's and Heun's `set_timesteps`.
fn float_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<f32> {
    match spacing {
        // np.linspace(0, N - 1, n, dtype=np.float32): computed in float64, then cast.
        TimestepSpacing::Linspace => linspace_f64(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => {
            sigmas::arange_f64(num_train as f64, 0.0, -(num_train as f64 / n as f64))
                .into_iter()
                .map(|t| t.round_ties_even() as f32 - 1.0)
                .collect()
        }
    }
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
