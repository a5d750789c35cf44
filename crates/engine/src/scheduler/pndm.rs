//! `PNDMScheduler`, rewritten from diffusers 0.42.1 (`scheduling_pndm.py`).
//!
//! Pseudo numerical methods for diffusion models: a linear multistep (PLMS)
//! update on DDIM's transfer function. Stable Diffusion's configs set
//! `skip_prk_steps`, so the multistep history is warmed up as diffusers does:
//! the second timestep is listed twice, and the first two model outputs are
//! averaged into one step (a second-order step). Without `skip_prk_steps` the
//! first three steps are Runge-Kutta steps (four model calls each, at the start,
//! twice at the midpoint and at the end), which diffusers lists as twelve
//! timesteps before the multistep ones.
//!
//! The schedule tables are torch float32 in diffusers, so the coefficients are
//! computed in `f32`; timesteps are numpy integers.

use candle_core::Tensor;

use super::ddim::{alpha_sigma_of, check_in_range, check_steps, AlphaProducts};
use super::sigmas::{vp_prediction, Division, Predicted};
use super::{
    NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn, TimestepSpacing,
};
use crate::error::{Error, Result};

/// Number of past model outputs the multistep formula uses (diffusers' `pndm_order`).
const PNDM_ORDER: usize = 4;

pub(super) struct Pndm {
    alphas_cumprod: AlphaProducts,
    timesteps: Vec<f64>,
    int_timesteps: Vec<i64>,
    /// How many leading entries of the timesteps are Runge-Kutta steps (0 with `skip_prk_steps`).
    prk_len: usize,
    /// `num_train_timesteps // num_inference_steps`: the step diffusers takes, whatever the spacing.
    step_ratio: i64,
    /// Epsilon or v: the model output is turned into the noise either way.
    prediction: PredictionType,
    /// Model outputs kept for the multistep formula (diffusers' `ets`).
    ets: Vec<Tensor>,
    /// The sample a multi-call step starts from (diffusers' `cur_sample`).
    cur_sample: Option<Tensor>,
    /// The Runge-Kutta weighted sum of model outputs so far (diffusers' `cur_model_output`).
    cur_model_output: Option<Tensor>,
    counter: usize,
}

impl Pndm {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let num_train = config.num_train_timesteps()?;
        let alphas_cumprod = config.alphas_cumprod()?;
        let skip_prk_steps = config.bool_or("skip_prk_steps", false)?;
        let set_alpha_to_one = config.bool_or("set_alpha_to_one", false)?;
        let prediction = config.noise_or_v_prediction(
            "PNDMScheduler does not support \"sample\"; accepted: \"epsilon\", \"v_prediction\"",
        )?;
        let spacing = config.timestep_spacing(TimestepSpacing::Leading)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        check_steps(num_inference_steps, num_train)?;
        if !skip_prk_steps && num_inference_steps < PNDM_ORDER {
            return Err(Error::invalid(
                "num_inference_steps",
                format!(
                    "PNDMScheduler's Runge-Kutta warm-up (the config's `skip_prk_steps` is false) \
                     needs at least {PNDM_ORDER} steps, got {num_inference_steps}"
                ),
            ));
        }

        // diffusers' `_timesteps`: the DDIM/DDPM list in ascending order.
        let mut ascending: Vec<i64> =
            spacing.timesteps(num_train, num_inference_steps, steps_offset);
        ascending.reverse();
        let n = ascending.len();
        let step_ratio = (num_train / num_inference_steps) as i64;
        let (prk, plms): (Vec<i64>, Vec<i64>) = if skip_prk_steps {
            // The second-largest timestep twice: it is where the warm-up averages two outputs.
            let mut plms = ascending[..n - 1].to_vec();
            if n >= 2 {
                plms.push(ascending[n - 2]);
            }
            plms.push(ascending[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // Each of the four largest timesteps t with its midpoint t + half, then every
            // entry but the first and last doubled, descending: start, midpoint twice, end.
            let half = step_ratio / 2;
            let pairs: Vec<i64> = ascending[n - PNDM_ORDER..]
                .iter()
                .flat_map(|&t| [t, t + half])
                .collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&t| [t, t])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = ascending[..n - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let prk_len = prk.len();
        let int_timesteps: Vec<i64> = prk.into_iter().chain(plms).collect();
        check_in_range(config, &int_timesteps, num_train)?;
        if skip_prk_steps
            && int_timesteps.len() > 1
            && int_timesteps[1] + step_ratio >= num_train as i64
        {
            return Err(config.error(
                "steps_offset",
                format!(
                    "puts PNDM's warm-up timestep {} outside the training schedule 0..{num_train}",
                    int_timesteps[1] + step_ratio
                ),
            ));
        }

        Ok(Pndm {
            alphas_cumprod: AlphaProducts::new(alphas_cumprod, set_alpha_to_one),
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
            prk_len,
            step_ratio,
            prediction,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
            counter: 0,
        })
    }

    fn step_prk(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.step_ratio / 2
        };
        let prev_timestep = timestep - diff_to_prev;
        // Every call of one Runge-Kutta step is a jump from the step's start.
        let start_timestep = self.int_timesteps[self.counter / 4 * 4];

        let add = |acc: Option<Tensor>, weight: f64| -> Result<Tensor> {
            let term = model_output.affine(weight, 0.0)?;
            Ok(match acc {
                Some(acc) => (acc + term)?,
                None => term,
            })
        };
        let mut model_output = model_output.clone();
        match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), 1.0 / 6.0)?);
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
            }
            1 | 2 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), 1.0 / 3.0)?);
            }
            _ => {
                model_output = add(self.cur_model_output.take(), 1.0 / 6.0)?;
            }
        }
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, start_timestep, prev_timestep, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(
        &mut self,
        model_output: &Tensor,
        timestep: i64,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let mut timestep = timestep;
        let mut prev_timestep = timestep - self.step_ratio;
        if self.counter != 1 {
            let keep_from = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep_from);
            self.ets.push(model_output.clone());
        } else {
            // The repeated timestep: redo the first step from its start with the
            // average of the two outputs.
            prev_timestep = timestep;
            timestep += self.step_ratio;
        }

        let mut sample = sample.clone();
        let e = &self.ets;
        let k = e.len();
        let combined = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if k == 1 && self.counter == 1 {
            if let Some(start) = self.cur_sample.take() {
                sample = start;
            }
            ((model_output + &e[0])? / 2.0)?
        } else if k == 2 {
            ((e[1].affine(3.0, 0.0)? - &e[0])? / 2.0)?
        } else if k == 3 {
            ((e[2].affine(23.0, 0.0)? - e[1].affine(16.0, 0.0)?)? + e[0].affine(5.0, 0.0)?)?
                .affine(1.0 / 12.0, 0.0)?
        } else {
            let sum = (((e[k - 1].affine(55.0, 0.0)? - e[k - 2].affine(59.0, 0.0)?)?
                + e[k - 3].affine(37.0, 0.0)?)?
                - e[k - 4].affine(9.0, 0.0)?)?;
            sum.affine(1.0 / 24.0, 0.0)?
        };
        let prev = self.prev_sample(&sample, timestep, prev_timestep, &combined)?;
        self.counter += 1;
        Ok(prev)
    }

    /// diffusers' `_get_prev_sample`: formula (9) of the PNDM paper, DDIM's
    /// deterministic jump from `timestep` to `prev_timestep` written in epsilon.
    fn prev_sample(
        &self,
        sample: &Tensor,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let alpha_prod_t = self.alphas_cumprod.at(timestep);
        let alpha_prod_t_prev = self.alphas_cumprod.at(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let model_output = vp_prediction(
            Predicted::Noise,
            self.prediction,
            model_output,
            sample,
            alpha_sigma_of(alpha_prod_t),
            Division::Reciprocal,
        )?;
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        let output_coeff = (alpha_prod_t_prev - alpha_prod_t) / denom;
        Ok((sample.affine(sample_coeff as f64, 0.0)?
            - model_output.affine(output_coeff as f64, 0.0)?)?)
    }
}

impl SchedulerClass for Pndm {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::AlphaProduct(self.alphas_cumprod.at(self.int_timesteps[step_index]))
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Unscaled(&self.timesteps)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample) = (at.output, at.index, at.sample);
        let timestep = self.int_timesteps[step_index];
        if self.counter < self.prk_len {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::sigmas::assert_refused;
    use crate::scheduler::SchedulerKind;
    use std::path::Path;

    fn build(json: &str, steps: usize) -> Result<Pndm> {
        let config = SchedulerConfig::from_json(Path::new("scheduler_config.json"), json).unwrap();
        Pndm::new(&config, steps)
    }

    #[test]
    fn timesteps_match_diffusers_layouts() {
        // Lists printed by diffusers 0.42.1 for steps_offset 1.
        let skip = build(r#"{"skip_prk_steps": true, "steps_offset": 1}"#, 4).unwrap();
        assert_eq!(skip.int_timesteps, vec![751, 501, 501, 251, 1]);
        let prk = build(r#"{"steps_offset": 1}"#, 4).unwrap();
        assert_eq!(
            prk.int_timesteps,
            vec![751, 626, 626, 501, 501, 376, 376, 251, 251, 126, 126, 1, 1]
        );
        let prk = build(r#"{"steps_offset": 1, "timestep_spacing": "trailing"}"#, 5).unwrap();
        assert_eq!(
            prk.int_timesteps,
            vec![999, 899, 899, 799, 799, 699, 699, 599, 599, 499, 499, 399, 399, 199]
        );
    }

    #[test]
    fn prk_needs_four_steps_and_sample_prediction_is_refused() {
        let err = build("{}", 3).err().unwrap().to_string();
        assert!(err.contains("skip_prk_steps"), "{err}");
        let json = r#"{"prediction_type": "sample"}"#;
        assert_refused(
            SchedulerKind::Pndm,
            json,
            &["`prediction_type`", "v_prediction"],
        );
    }
}
