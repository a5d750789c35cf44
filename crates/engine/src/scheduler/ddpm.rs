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
//! DDPM also accepts the `sigmoid` and `laplace` beta schedules, which the
//! config's training schedule builds when asked.

use candle_core::Tensor;

use super::ddim::{
    alpha_sigma_of, integer_timesteps, rescale_if_asked, AlphaProducts, PredictedSample,
};
use super::sigmas::{vp_prediction, Division, Predicted};
use super::{
    draw_noise, BetaDefaults, NoiseLevel, PredictionType, Schedule, SchedulerClass,
    SchedulerConfig, StepIn, TimestepSpacing,
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
    alphas_cumprod: AlphaProducts,
    timesteps: Vec<f64>,
    int_timesteps: Vec<i64>,
    prediction: PredictionType,
    post: PredictedSample,
    variance_type: VarianceType,
}

impl Ddpm {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.num_train_timesteps()?;
        let alphas_cumprod =
            config.alphas_cumprod_with(BetaDefaults::DDPM_FAMILY, &["sigmoid", "laplace"])?;
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
        let int_timesteps = integer_timesteps(
            config,
            spacing,
            num_train,
            num_inference_steps,
            steps_offset,
        )?;
        Ok(Ddpm {
            // diffusers' DDPM steps from the last timestep to an alpha product of one.
            alphas_cumprod: AlphaProducts::new(alphas_cumprod, true),
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
            prediction,
            post,
            variance_type,
        })
    }
}

impl SchedulerClass for Ddpm {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::AlphaProduct(self.alphas_cumprod.at(self.int_timesteps[step_index]))
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Unscaled(&self.timesteps)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample, noise) = (at.output, at.index, at.sample, at.noise);
        let t = self.int_timesteps[step_index];
        // diffusers' `previous_timestep`: the next entry of the schedule, or -1 after the last.
        let prev_t = self
            .int_timesteps
            .get(step_index + 1)
            .copied()
            .unwrap_or(-1);
        let alpha_prod_t = self.alphas_cumprod.at(t);
        let alpha_prod_t_prev = self.alphas_cumprod.at(prev_t);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        let pred_original = vp_prediction(
            Predicted::CleanSample,
            self.prediction,
            model_output,
            sample,
            alpha_sigma_of(alpha_prod_t),
            Division::Reciprocal,
        )?;
        let pred_original = self.post.apply(pred_original)?;

        let original_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let prev_sample = (pred_original.affine(original_coeff as f64, 0.0)?
            + sample.affine(sample_coeff as f64, 0.0)?)?;
        if t <= 0 {
            return Ok(prev_sample);
        }

        let variance_noise = draw_noise(noise, model_output)?;
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

#[cfg(test)]
mod tests {
    use crate::scheduler::sigmas::assert_refused;
    use crate::scheduler::SchedulerKind;

    #[test]
    fn learned_variance_is_refused_with_the_field_named() {
        let json = r#"{"variance_type": "learned_range"}"#;
        assert_refused(
            SchedulerKind::Ddpm,
            json,
            &["`variance_type`", "fixed_small"],
        );
    }
}
