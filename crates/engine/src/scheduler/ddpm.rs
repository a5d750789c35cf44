//! `DDPMScheduler`, rewritten from diffusers 0.42.1 (`scheduling_ddpm.py`).
//!
//! Ancestral sampling of the original DDPM paper, stepping between the
//! inference timesteps: the posterior mean from the predicted clean sample,
//! plus fresh noise scaled by the posterior variance at every step whose
//! timestep is above zero (so it draws from the request's generator exactly
//! where diffusers calls `randn_tensor`).
//!
//! The schedule tables are torch float32 in diffusers, so the coefficients are
//! computed in `f32`; timesteps are numpy integers. The variance types that
//! need a UNet predicting its own variance (twice the latent channels) are
//! refused, since Stable Diffusion's UNet does not, and diffusers fails on them.
//!
//! This file also builds the betas of the schedules only some classes accept
//! (`sigmoid` and `laplace` here, `exp` for Heun).

use candle_core::Tensor;

use super::ddim::{
    check_in_range, check_steps, cumprod_of_alphas, integer_timesteps, rescale_if_asked,
    PredictedSample,
};
use super::{
    linspace_f32, NoiseSource, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing,
};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// diffusers' `variance_type` values `fixed_small`, `fixed_small_log`, `fixed_large`.
enum VarianceType {
    Small,
    SmallLog,
    Large,
}

pub(super) struct Ddpm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    int_timesteps: Vec<i64>,
    prediction: PredictionType,
    post: PredictedSample,
    variance_type: VarianceType,
}

impl Ddpm {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.usize_or("num_train_timesteps", 1000)?;
        let alphas_cumprod =
            training_alphas_cumprod(config, BetaDefaults::DDPM_FAMILY, &["sigmoid", "laplace"])?;
        let alphas_cumprod = rescale_if_asked(config, alphas_cumprod)?;
        let variance_type = match config.str_or("variance_type", "fixed_small")?.as_str() {
            "fixed_small" => VarianceType::Small,
            "fixed_small_log" => VarianceType::SmallLog,
            "fixed_large" => VarianceType::Large,
            other @ ("learned" | "learned_range") => {
                return Err(config.error(
                    "variance_type",
                    format!(
                        "\"{other}\" needs a UNet that also predicts the variance (twice the latent \
                         channels), which Stable Diffusion's does not; accepted: \"fixed_small\", \
                         \"fixed_small_log\", \"fixed_large\""
                    ),
                ))
            }
            "fixed_large_log" => {
                return Err(config.error(
                    "variance_type",
                    "\"fixed_large_log\" makes diffusers' DDPMScheduler take the square root of a \
                     log-variance, which gives NaN; accepted: \"fixed_small\", \"fixed_small_log\", \
                     \"fixed_large\"",
                ))
            }
            other => {
                return Err(config.error(
                    "variance_type",
                    format!(
                        "unsupported value \"{other}\"; accepted: \"fixed_small\", \
                         \"fixed_small_log\", \"fixed_large\""
                    ),
                ))
            }
        };
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let post = PredictedSample::from_config(config)?;
        let spacing = config.timestep_spacing(TimestepSpacing::Leading)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        check_steps(num_inference_steps, num_train)?;
        let int_timesteps =
            integer_timesteps(spacing, num_train, num_inference_steps, steps_offset);
        check_in_range(config, &int_timesteps, num_train)?;
        Ok(Ddpm {
            alphas_cumprod,
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
            prediction,
            post,
            variance_type,
        })
    }
}

impl Scheduler for Ddpm {
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
        // diffusers' `previous_timestep`: the next entry of the schedule, or -1 after the last.
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev = match self.int_timesteps.get(step_index + 1) {
            Some(&prev) if prev >= 0 => self.alphas_cumprod[prev as usize],
            _ => 1.0,
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt() as f64, beta_prod_t.sqrt() as f64);
        let pred_original = match self.prediction {
            PredictionType::Epsilon => ((sample - model_output.affine(sqrt_b, 0.0)?)? / sqrt_a)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                (sample.affine(sqrt_a, 0.0)? - model_output.affine(sqrt_b, 0.0)?)?
            }
        };
        let pred_original = self.post.apply(pred_original)?;

        let original_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let prev_sample = (pred_original.affine(original_coeff as f64, 0.0)?
            + sample.affine(sample_coeff as f64, 0.0)?)?;
        if t <= 0 {
            return Ok(prev_sample);
        }

        let variance_noise = noise()?
            .to_dtype(model_output.dtype())?
            .to_device(model_output.device())?;
        let variance =
            ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
        let std = match self.variance_type {
            VarianceType::Small => variance.sqrt(),
            // exp(log(v) / 2) rather than sqrt(v): the same number, but diffusers' rounding.
            VarianceType::SmallLog => (0.5 * variance.ln()).exp(),
            VarianceType::Large => current_beta_t.sqrt(),
        };
        Ok((prev_sample + variance_noise.affine(std as f64, 0.0)?)?)
    }
}

/// The `beta_start`/`beta_end` a class falls back to when the config omits them.
#[derive(Debug, Clone, Copy)]
pub(super) struct BetaDefaults {
    pub start: f64,
    pub end: f64,
}

impl BetaDefaults {
    /// DDPM, DDIM, PNDM, LMS: the original DDPM paper's range.
    pub const DDPM_FAMILY: BetaDefaults = BetaDefaults {
        start: 0.0001,
        end: 0.02,
    };
    /// HeunDiscreteScheduler's own "sensible defaults".
    pub const HEUN: BetaDefaults = BetaDefaults {
        start: 0.00085,
        end: 0.012,
    };
}

/// The training `alphas_cumprod` for classes whose `beta_schedule` choices or
/// beta defaults go beyond [`SchedulerConfig::alphas_cumprod`]: the shared
/// builder is used where it gives the same table, the rest is built here.
pub(super) fn training_alphas_cumprod(
    config: &SchedulerConfig,
    defaults: BetaDefaults,
    extra: &[&str],
) -> Result<Vec<f32>> {
    const COMMON: [&str; 3] = ["linear", "scaled_linear", "squaredcos_cap_v2"];
    let schedule = config.str_or("beta_schedule", "linear")?;
    let shared_defaults = defaults.start == BetaDefaults::DDPM_FAMILY.start
        && defaults.end == BetaDefaults::DDPM_FAMILY.end;
    if config.trained_betas()?.is_some() || (shared_defaults && COMMON.contains(&schedule.as_str()))
    {
        return config.alphas_cumprod();
    }
    let n = config.usize_or("num_train_timesteps", 1000)?;
    let start = config.f64_or("beta_start", defaults.start)?;
    let end = config.f64_or("beta_end", defaults.end)?;
    let betas: Vec<f32> = match schedule.as_str() {
        "linear" => linspace_f32(start as f32, end as f32, n),
        "scaled_linear" => linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        "squaredcos_cap_v2" => betas_for_alpha_bar(n, |t| {
            ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2)
        }),
        // torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start, all float32.
        "sigmoid" if extra.contains(&"sigmoid") => linspace_f32(-6.0, 6.0, n)
            .into_iter()
            .map(|x| 1.0 / (1.0 + (-x).exp()) * (end - start) as f32 + start as f32)
            .collect(),
        "laplace" if extra.contains(&"laplace") => betas_for_alpha_bar(n, |t| {
            let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
            let snr = lmb.exp();
            (snr / (1.0 + snr)).sqrt()
        }),
        "exp" if extra.contains(&"exp") => betas_for_alpha_bar(n, |t| (t * -12.0).exp()),
        other => {
            let accepted: Vec<String> = COMMON
                .iter()
                .chain(extra)
                .map(|s| format!("\"{s}\""))
                .collect();
            return Err(config.error(
                "beta_schedule",
                format!(
                    "unsupported value \"{other}\"; accepted: {}",
                    accepted.join(", ")
                ),
            ));
        }
    };
    Ok(cumprod_of_alphas(betas.into_iter().map(|b| 1.0 - b)))
}

/// diffusers' `betas_for_alpha_bar`: betas that discretise `alpha_bar` over
/// [0, 1], capped at 0.999, computed in Python floats and stored as float32.
fn betas_for_alpha_bar(n: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(json: &str) -> SchedulerConfig {
        SchedulerConfig::from_json(Path::new("scheduler_config.json"), json).unwrap()
    }

    #[test]
    fn learned_variance_is_refused_with_the_field_named() {
        let c = config(r#"{"variance_type": "learned_range"}"#);
        let err = Ddpm::new(&c, 10).err().unwrap().to_string();
        assert!(
            err.contains("variance_type") && err.contains("fixed_small"),
            "{err}"
        );
    }

    #[test]
    fn unknown_beta_schedule_lists_this_class_choices() {
        let c = config(r#"{"beta_schedule": "cubic"}"#);
        let err = Ddpm::new(&c, 10).err().unwrap().to_string();
        assert!(
            err.contains("beta_schedule") && err.contains("\"sigmoid\""),
            "{err}"
        );
    }

    #[test]
    fn heun_beta_defaults_apply_when_missing() {
        let c = config("{}");
        let ours = training_alphas_cumprod(&c, BetaDefaults::HEUN, &["exp"]).unwrap();
        let explicit = config(r#"{"beta_start": 0.00085, "beta_end": 0.012}"#);
        let explicit = training_alphas_cumprod(&explicit, BetaDefaults::HEUN, &["exp"]).unwrap();
        assert_eq!(ours, explicit);
        // Same betas as the shared builder (which starts from the DDPM defaults).
        let shared = config(r#"{"beta_start": 0.00085, "beta_end": 0.012}"#)
            .alphas_cumprod()
            .unwrap();
        for (a, b) in ours.iter().zip(&shared) {
            assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
        }
    }
}
