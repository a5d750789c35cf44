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
//! PNDM) share with DDIM: the integer timestep layouts (numpy's `round` is
//! half-to-even), the zero-terminal-SNR option, and dynamic thresholding.

use candle_core::{DType, Tensor};

use super::{
    linspace_f64, sigmas, NoiseSource, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::error::{Error, Result};

pub(super) struct Ddim {
    alphas_cumprod: Vec<f32>,
    /// The "previous" alpha product of the last step, which has no previous timestep.
    final_alpha_cumprod: f32,
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
        let num_train = config.usize_or("num_train_timesteps", 1000)?;
        let alphas_cumprod = alphas_cumprod_with_rescale(config)?;
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", true)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let post = PredictedSample::from_config(config)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Leading)?;
        check_steps(num_inference_steps, num_train)?;
        let int_timesteps =
            integer_timesteps(spacing, num_train, num_inference_steps, steps_offset);
        check_in_range(config, &int_timesteps, num_train)?;
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Ddim {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
            step_ratio: (num_train / num_inference_steps) as i64,
            prediction,
            post,
            eta: eta as f32,
        })
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor, _step_index: usize) -> Result<Tensor> {
        Ok(sample)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor> {
        let t = self.int_timesteps[step_index];
        let prev_t = t - self.step_ratio;
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (pred_original, pred_epsilon) =
            predict_x0_and_eps(self.prediction, model_output, sample, alpha_prod_t)?;
        let pred_original = self.post.apply(pred_original)?;

        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let mut prev_sample = (pred_original.affine(alpha_prod_t_prev.sqrt() as f64, 0.0)?
            + pred_epsilon.affine(direction_coeff as f64, 0.0)?)?;
        if self.eta > 0.0 {
            let variance_noise = noise()?
                .to_dtype(model_output.dtype())?
                .to_device(model_output.device())?;
            prev_sample = (prev_sample + variance_noise.affine(std_dev_t as f64, 0.0)?)?;
        }
        Ok(prev_sample)
    }
}

/// The predicted clean sample and predicted noise, as DDIM derives both from
/// whichever of them (or v) the model predicts.
fn predict_x0_and_eps(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f32,
) -> Result<(Tensor, Tensor)> {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt() as f64, beta_prod_t.sqrt() as f64);
    Ok(match prediction {
        PredictionType::Epsilon => {
            let x0 = ((sample - model_output.affine(sqrt_b, 0.0)?)? / sqrt_a)?;
            (x0, model_output.clone())
        }
        PredictionType::Sample => {
            let eps = ((sample - model_output.affine(sqrt_a, 0.0)?)? / sqrt_b)?;
            (model_output.clone(), eps)
        }
        PredictionType::VPrediction => {
            let x0 = (sample.affine(sqrt_a, 0.0)? - model_output.affine(sqrt_b, 0.0)?)?;
            let eps = (model_output.affine(sqrt_a, 0.0)? + sample.affine(sqrt_b, 0.0)?)?;
            (x0, eps)
        }
    })
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

/// The descending integer timesteps of DDIM's and DDPM's `set_timesteps`
/// (PNDM's `_timesteps` are the same list ascending).
pub(super) fn integer_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => linspace_f64(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            sigmas::arange_f64(num_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// `alphas_cumprod` of the training schedule, rescaled to zero terminal SNR when
/// `rescale_betas_zero_snr` asks (DDIM and DDPM accept that key).
pub(super) fn alphas_cumprod_with_rescale(config: &SchedulerConfig) -> Result<Vec<f32>> {
    let alphas_cumprod = config.alphas_cumprod()?;
    rescale_if_asked(config, alphas_cumprod)
}

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

/// `torch.cumprod` of a float32 tensor on the CPU: the running product is kept
/// in double and rounded to float32 only when stored.
pub(super) fn cumprod_of_alphas(alphas: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1f64;
    alphas
        .into_iter()
        .map(|a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
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
    fn linspace_timesteps_round_half_to_even() {
        // np.linspace(0, 999, 3) = [0, 499.5, 999]; numpy rounds 499.5 to 500.
        assert_eq!(
            integer_timesteps(TimestepSpacing::Linspace, 1000, 3, 0),
            vec![999, 500, 0]
        );
        // np.round(np.arange(1000, 0, -62.5)) - 1 rounds 937.5 to 938.
        let t = integer_timesteps(TimestepSpacing::Trailing, 1000, 16, 0);
        assert_eq!(&t[..3], &[999, 937, 874]);
    }

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
