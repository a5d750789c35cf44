//! `DDIMScheduler`, rewritten from diffusers 0.42.1 (`scheduling_ddim.py`).
//!
//! DDIM is the default scheduler of Stable Diffusion 2.1: a deterministic
//! (eta = 0) or partly stochastic (eta > 0) jump from one training timestep to
//! an earlier one, using the predicted clean sample and predicted noise.
//!
//! diffusers holds the noise schedule as torch float32 tensors and does the
//! per-step scalar arithmetic on 0-dim float32 tensors, so every coefficient
//! here is computed in `f32`; the timesteps come from numpy integer arithmetic
//! and are kept as integers.
//!
//! This file also holds the pieces the other DDPM-family schedulers (DDPM,
//! PNDM) share with DDIM: the alpha products by timestep, the checks on the
//! integer timesteps, the zero-terminal-SNR option, and dynamic thresholding
//! (which DPM-Solver and UniPC use too).

use candle_core::{DType, Tensor};

use super::sigmas::{self, vp_prediction, Division, Predicted};
use super::{
    draw_noise, NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn,
    TimestepSpacing,
};
use crate::error::{Error, Result};

pub(super) struct Ddim {
    alphas_cumprod: AlphaProducts,
    timesteps: Vec<f64>,
    int_timesteps: Vec<i64>,
    /// diffusers steps back by `num_train_timesteps // num_inference_steps` whatever
    /// the spacing, so with `linspace`/`trailing` this is not the gap between entries.
    step_ratio: i64,
    prediction: PredictionType,
    post: PredictedSample,
    eta: f32,
}

impl Ddim {
    pub(super) fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
        eta: f64,
    ) -> Result<Self> {
        let num_train = config.num_train_timesteps()?;
        let alphas_cumprod = rescale_if_asked(config, config.alphas_cumprod()?)?;
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", true)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let post = PredictedSample::from_config(config)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Leading)?;
        let int_timesteps = integer_timesteps(
            config,
            spacing,
            num_train,
            num_inference_steps,
            steps_offset,
        )?;
        Ok(Ddim {
            alphas_cumprod: AlphaProducts::new(alphas_cumprod, set_alpha_to_one),
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
            step_ratio: (num_train / num_inference_steps) as i64,
            prediction,
            post,
            eta: eta as f32,
        })
    }
}

impl SchedulerClass for Ddim {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::AlphaProduct(self.alphas_cumprod.at(self.int_timesteps[step_index]))
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Unscaled(&self.timesteps)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample, noise) = (at.output, at.index, at.sample, at.noise);
        let t = self.int_timesteps[step_index];
        let alpha_prod_t = self.alphas_cumprod.at(t);
        let alpha_prod_t_prev = self.alphas_cumprod.at(t - self.step_ratio);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (prediction, point) = (self.prediction, alpha_sigma_of(alpha_prod_t));
        let predict = |want| {
            vp_prediction(
                want,
                prediction,
                model_output,
                sample,
                point,
                Division::Reciprocal,
            )
        };
        let pred_original = self.post.apply(predict(Predicted::CleanSample)?)?;
        let pred_epsilon = predict(Predicted::Noise)?;

        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let mut prev_sample = (pred_original.affine(alpha_prod_t_prev.sqrt() as f64, 0.0)?
            + pred_epsilon.affine(direction_coeff as f64, 0.0)?)?;
        if self.eta > 0.0 {
            let variance_noise = draw_noise(noise, model_output)?;
            prev_sample = (prev_sample + variance_noise.affine(std_dev_t as f64, 0.0)?)?;
        }
        Ok(prev_sample)
    }
}

/// The training `alphas_cumprod` by timestep, and the "previous" alpha product
/// of the last step, which has no previous timestep: 1 with `set_alpha_to_one`
/// (always, for DDPM), else the first entry.
pub(super) struct AlphaProducts {
    table: Vec<f32>,
    before_first: f32,
}

impl AlphaProducts {
    pub(super) fn new(table: Vec<f32>, set_alpha_to_one: bool) -> Self {
        let before_first = if set_alpha_to_one { 1.0 } else { table[0] };
        AlphaProducts {
            table,
            before_first,
        }
    }

    /// The alpha product at timestep `t`; a negative `t` is before the first.
    pub(super) fn at(&self, t: i64) -> f32 {
        if t >= 0 {
            self.table[t as usize]
        } else {
            self.before_first
        }
    }
}

/// alpha_t = sqrt(alpha_prod_t) and sigma_t = sqrt(1 - alpha_prod_t), in float32.
pub(super) fn alpha_sigma_of(alpha_prod_t: f32) -> (f32, f32) {
    let beta_prod_t = 1.0 - alpha_prod_t;
    (alpha_prod_t.sqrt(), beta_prod_t.sqrt())
}

/// diffusers refuses more inference steps than training timesteps (DDIM, DDPM);
/// PNDM does not check but then steps by zero and returns the noise unchanged.
pub(super) fn check_steps(num_inference_steps: usize, num_train: usize) -> Result<()> {
    if num_inference_steps > num_train {
        return Err(Error::invalid(
            "num_inference_steps",
            format!(
                "{num_inference_steps} is more than the scheduler's num_train_timesteps \
                 ({num_train}); accepted: 1 to {num_train}"
            ),
        ));
    }
    Ok(())
}

/// A timestep past the end of the training schedule would be an index error in
/// diffusers; it can only come from `steps_offset`, so name that field.
pub(super) fn check_in_range(
    config: &SchedulerConfig,
    timesteps: &[i64],
    num_train: usize,
) -> Result<()> {
    match timesteps
        .iter()
        .find(|&&t| t < 0 || t as usize >= num_train)
    {
        Some(t) => Err(config.error(
            "steps_offset",
            format!(
                "puts timestep {t} outside the training schedule 0..{num_train}; \
                 use fewer steps or a smaller offset"
            ),
        )),
        None => Ok(()),
    }
}

/// The descending integer timesteps of DDIM's and DDPM's `set_timesteps`,
/// refused where diffusers would fail.
pub(super) fn integer_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Result<Vec<i64>> {
    check_steps(n, num_train)?;
    let timesteps = spacing.timesteps(num_train, n, steps_offset);
    check_in_range(config, &timesteps, num_train)?;
    Ok(timesteps)
}

/// `alphas_cumprod` rescaled to zero terminal SNR when `rescale_betas_zero_snr`
/// asks (DDIM and DDPM accept that key).
pub(super) fn rescale_if_asked(
    config: &SchedulerConfig,
    alphas_cumprod: Vec<f32>,
) -> Result<Vec<f32>> {
    if config.bool_or("rescale_betas_zero_snr", false)? {
        Ok(sigmas::rescale_zero_terminal_snr(&alphas_cumprod))
    } else {
        Ok(alphas_cumprod)
    }
}

/// What happens to the predicted clean sample before it is used: dynamic
/// thresholding, clipping to `clip_sample_range`, or nothing (DDIM, DDPM).
#[derive(Debug, Clone, Copy)]
pub(super) enum PredictedSample {
    Keep,
    Clip(f32),
    Threshold { ratio: f32, max_value: f32 },
}

impl PredictedSample {
    /// Reads `thresholding` (which wins, as in diffusers) and `clip_sample`, with
    /// DDIM's and DDPM's shared defaults (`clip_sample` true).
    pub(super) fn from_config(config: &SchedulerConfig) -> Result<Self> {
        if config.bool_or("thresholding", false)? {
            let ratio = config.f64_or("dynamic_thresholding_ratio", 0.995)?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(config.error(
                    "dynamic_thresholding_ratio",
                    format!("{ratio} is not a quantile; accepted: 0 to 1"),
                ));
            }
            let max_value = config.f64_or("sample_max_value", 1.0)?;
            return Ok(PredictedSample::Threshold {
                ratio: ratio as f32,
                max_value: max_value as f32,
            });
        }
        if config.bool_or("clip_sample", true)? {
            return Ok(PredictedSample::Clip(
                config.f64_or("clip_sample_range", 1.0)? as f32,
            ));
        }
        Ok(PredictedSample::Keep)
    }

    pub(super) fn apply(self, x0: Tensor) -> Result<Tensor> {
        match self {
            PredictedSample::Keep => Ok(x0),
            PredictedSample::Clip(range) => Ok(x0.clamp(-range, range)?),
            PredictedSample::Threshold { ratio, max_value } => {
                threshold_sample(&x0, ratio, max_value)
            }
        }
    }
}

/// diffusers' `_threshold_sample` (Imagen's dynamic thresholding): per batch
/// item, `s` is the `ratio` quantile of |x0| clamped to [1, max_value], and x0
/// is clamped to [-s, s] and divided by s. The quantile is torch's default
/// linear interpolation, computed in f32 as torch does.
fn threshold_sample(x0: &Tensor, ratio: f32, max_value: f32) -> Result<Tensor> {
    let dtype = x0.dtype();
    let shape = x0.shape().clone();
    let batch = shape.dims().first().copied().unwrap_or(1);
    let flat = x0.to_dtype(DType::F32)?.reshape((batch, ()))?;
    let rows: Vec<Vec<f32>> = flat.to_vec2()?;
    let s: Vec<f32> = rows
        .into_iter()
        .map(|row| {
            let mut abs: Vec<f32> = row.into_iter().map(f32::abs).collect();
            abs.sort_by(f32::total_cmp);
            quantile_sorted(&abs, ratio).max(1.0).min(max_value)
        })
        .collect();
    let s = Tensor::from_vec(s, (batch, 1), x0.device())?;
    let clamped = flat.broadcast_maximum(&s.neg()?)?.broadcast_minimum(&s)?;
    Ok(clamped.broadcast_div(&s)?.reshape(shape)?.to_dtype(dtype)?)
}

/// `torch.quantile(v, q)` of sorted `v` with linear interpolation, in f32.
fn quantile_sorted(sorted: &[f32], q: f32) -> f32 {
    let rank = q * (sorted.len() - 1) as f32;
    let below = rank.floor();
    let weight = rank - below;
    let lo = sorted[below as usize];
    let hi = sorted[(rank.ceil() as usize).min(sorted.len() - 1)];
    // torch.lerp's two-sided formula, exact at both ends.
    if weight < 0.5 {
        lo + weight * (hi - lo)
    } else {
        hi - (hi - lo) * (1.0 - weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn thresholding_matches_torch_quantile() {
        // torch.quantile(|x|, 0.5) over [0.5, 2, 3, 4] = 2.5, so x0 is clamped to
        // [-2.5, 2.5] and divided by 2.5.
        let x = Tensor::new(&[[0.5f32, -2.0, 3.0, -4.0]], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = threshold_sample(&x, 0.5, 10.0).unwrap().to_vec2().unwrap();
        let want = [0.2f32, -0.8, 1.0, -1.0];
        for (a, b) in y[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", y);
        }
        // s is clamped to at least 1: plain clipping to [-1, 1].
        let y: Vec<Vec<f32>> = threshold_sample(&x, 0.0, 10.0).unwrap().to_vec2().unwrap();
        assert_eq!(y[0], vec![0.5, -1.0, 1.0, -1.0]);
    }
}
