//! UniPC: a rewrite of diffusers' `UniPCMultistepScheduler` (Zhao et al. 2023),
//! a multistep predictor (UniP) followed, on the next call, by a corrector
//! (UniC) that refines the sample with the model output just computed there.
//!
//! The corrector for step `i` therefore runs at the start of step `i + 1`,
//! using the sample before the predictor (`last_sample`) and the order the
//! predictor used; that is why the scheduler keeps both between calls.
//!
//! Defaults: order 2, data prediction (`predict_x0`), the `bh2` variant of
//! B(h), lower orders at the end, corrector everywhere. `bh1` and the noise
//! prediction form are implemented too, as are orders above 2 (they need a
//! small linear solve, done here in float32 with partial pivoting as LAPACK's
//! `sgesv` does for `torch.linalg.solve`), and dynamic thresholding (shared
//! with DDIM). `bh1` and the noise-prediction form are refused when the
//! schedule ends at sigma 0 (the default), because diffusers returns NaN
//! latents there.
//!
//! Timesteps are integers (int64 in diffusers); sigmas and every solver
//! coefficient are float32, as diffusers computes them on 0-dim float32 tensors.

use candle_core::Tensor;

use super::ddim::PredictedSample;
use super::dpm_solver_multistep::{read_threshold, refuse_flow_sigmas, History};
use super::sigmas::{self, alpha_sigma, mul, point, vp_prediction, Division, Predicted, SigmaRamp};
use super::{
    NoiseLevel, PredictionType, Schedule, SchedulerClass, SchedulerConfig, StepIn, TimestepSpacing,
};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h - 1.
    Bh2,
}

pub(super) struct UniPcMultistep {
    timesteps: Vec<f64>,
    /// One more entry than the steps: the last is the sigma we end at.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    /// Dynamic thresholding of the predicted x0 (`thresholding`), or `Keep`;
    /// diffusers applies it only in the data-prediction form.
    threshold: PredictedSample,
    predict_x0: bool,
    solver_type: SolverType,
    lower_order_final: bool,
    /// Step indices after which the corrector is skipped.
    disable_corrector: Vec<usize>,
    history: History,
    /// The sample the previous predictor started from, for the corrector.
    last_sample: Option<Tensor>,
    /// The order the previous predictor used; the corrector reuses it.
    this_order: usize,
}

/// What the predictor and the corrector share: both step from entry `s0` to
/// entry `s0 + 1` of the sigma table using the stored model outputs.
struct BhTerms {
    /// The first-order part of the update.
    x_t_: Tensor,
    /// (m_k - m0) / r_k for each older output k.
    d1s: Vec<Tensor>,
    /// `R`: row p holds r_k^p, with r = 1 for the newest point.
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
    /// alpha_t * B(h) (data prediction) or sigma_t * B(h) (noise prediction).
    scale: f32,
}

impl UniPcMultistep {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let n_train = config.num_train_timesteps()?;
        let solver_order = config.usize_or("solver_order", 2)?;
        if solver_order == 0 {
            return Err(config.error("solver_order", "must be at least 1; accepted: 1, 2, 3, ..."));
        }
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let threshold = read_threshold(config)?;
        let predict_x0 = config.bool_or("predict_x0", true)?;
        let solver_type = match config.str_or("solver_type", "bh2")?.as_str() {
            "bh1" => SolverType::Bh1,
            // diffusers maps DPM-Solver's solver names onto bh2.
            "bh2" | "midpoint" | "heun" | "logrho" => SolverType::Bh2,
            other => {
                return Err(config.error(
                    "solver_type",
                    format!("unsupported value \"{other}\"; accepted: \"bh1\", \"bh2\" (or \"midpoint\", \"heun\", \"logrho\", read as bh2)"),
                ))
            }
        };
        let lower_order_final = config.bool_or("lower_order_final", true)?;
        let disable_corrector = read_disable_corrector(config)?;
        if config.get("solver_p").is_some() {
            return Err(config.error(
                "solver_p",
                "an external predictor scheduler is not supported; accepted: null",
            ));
        }
        let ramp = SigmaRamp::read(config)?;
        refuse_flow_sigmas(config)?;
        if config.get("shift_terminal").is_some() {
            // diffusers itself refuses shift_terminal without flow sigmas.
            return Err(config.error(
                "shift_terminal",
                "only meaningful with use_flow_sigmas, which is not supported; accepted: null",
            ));
        }
        if config.bool_or("use_dynamic_shifting", false)? {
            // diffusers then requires `mu` in set_timesteps, which a Stable
            // Diffusion pipeline never passes.
            return Err(config.error(
                "use_dynamic_shifting",
                "dynamic shifting needs a per-image `mu`, which this pipeline does not provide; accepted: false",
            ));
        }
        config.str_or("time_shift_type", "exponential")?;
        let sigma_min = sigmas::optional_f64(config, "sigma_min")?;
        let sigma_max = sigmas::optional_f64(config, "sigma_max")?;
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let final_sigma_zero = sigmas::final_sigma_is_zero(config)?;
        if final_sigma_zero && (solver_type == SolverType::Bh1 || !predict_x0) {
            // The step onto sigma 0 has an infinite h; with B(h) = h, or in the
            // noise-prediction form, diffusers multiplies that infinity by zero
            // and returns NaN latents. Refuse rather than render black images.
            let field = if solver_type == SolverType::Bh1 {
                "solver_type"
            } else {
                "predict_x0"
            };
            return Err(config.error(
                field,
                "solver_type \"bh1\" and predict_x0 = false end in NaN latents when the schedule \
                 ends at sigma 0 (final_sigmas_type \"zero\", the default); accepted with them: \
                 final_sigmas_type \"sigma_min\"",
            ));
        }
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;

        let n = num_inference_steps;
        let mut timesteps = spacing.multistep_timesteps(n_train, n_train, n, steps_offset);

        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        let sigmas: Vec<f32> = if ramp == SigmaRamp::Interpolated {
            let sigma_last = if final_sigma_zero {
                0.0
            } else {
                train_sigmas[0]
            };
            let interpolated =
                sigmas::interpolated(timesteps.iter().map(|&t| t as f64), &train_sigmas);
            sigmas::with_final(interpolated, sigma_last)
        } else {
            let log_sigmas = sigmas::log_sigmas(&train_sigmas);
            let lo = sigma_min.unwrap_or(train_sigmas[0] as f64);
            let hi = sigma_max.unwrap_or(*train_sigmas.last().expect("non-empty schedule") as f64);
            let s = ramp.ramp(lo, hi, n);
            // Karras timesteps are rounded; the int64 cast truncates the rest.
            timesteps = sigmas::ramp_timesteps(&s, &log_sigmas, ramp == SigmaRamp::Karras);
            // Here "sigma_min" means the ramp's own last sigma, not the table's.
            let sigma_last = if final_sigma_zero {
                0.0
            } else {
                *s.last().expect("n >= 1") as f32
            };
            sigmas::with_final(s, sigma_last)
        };

        Ok(UniPcMultistep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas,
            prediction,
            threshold,
            predict_x0,
            solver_type,
            lower_order_final,
            disable_corrector,
            history: History::new(solver_order),
            last_sample: None,
            this_order: 0,
        })
    }

    /// diffusers' `convert_model_output`: x0 when `predict_x0`, else the noise.
    fn convert_model_output(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        i: usize,
    ) -> Result<Tensor> {
        let point = alpha_sigma(self.sigmas[i]);
        let want = if self.predict_x0 {
            Predicted::CleanSample
        } else {
            Predicted::Noise
        };
        let out = vp_prediction(
            want,
            self.prediction,
            model_output,
            sample,
            point,
            Division::Exact,
        )?;
        if self.predict_x0 {
            self.threshold.apply(out)
        } else {
            Ok(out)
        }
    }

    /// The B(h) update from sigma entry `s0` to `s0 + 1` starting at `x`,
    /// with the stored outputs (newest last) as m0, m1, ...
    fn bh_terms(&self, s0: usize, x: &Tensor, order: usize) -> Result<BhTerms> {
        let m0 = self.history.back(0);
        let (alpha_t, sigma_t, lambda_t) = point(self.sigmas[s0 + 1]);
        let (alpha_s0, sigma_s0, lambda_s0) = point(self.sigmas[s0]);
        let h = lambda_t - lambda_s0;

        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order.saturating_sub(1));
        for i in 1..order {
            let mi = self.history.back(i);
            let (_, _, lambda_si) = point(self.sigmas[s0 - i]);
            let rk = (lambda_si - lambda_s0) / h;
            rks.push(rk);
            d1s.push(sigmas::div(&(mi - m0)?, rk)?);
        }
        rks.push(1.0);

        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial_i: u64 = 1;
        let b_h = match self.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * factorial_i as f32 / b_h);
            factorial_i *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial_i as f64) as f32;
        }

        let (x_t_, scale) = if self.predict_x0 {
            (
                (mul(x, sigma_t / sigma_s0)? - mul(m0, alpha_t * h_phi_1)?)?,
                alpha_t * b_h,
            )
        } else {
            (
                (mul(x, alpha_t / alpha_s0)? - mul(m0, sigma_t * h_phi_1)?)?,
                sigma_t * b_h,
            )
        };
        Ok(BhTerms {
            x_t_,
            d1s,
            r,
            b,
            scale,
        })
    }

    /// UniP: from `x` at step `i` to the next sigma.
    fn predictor(&self, i: usize, x: &Tensor, order: usize) -> Result<Tensor> {
        let t = self.bh_terms(i, x, order)?;
        if t.d1s.is_empty() {
            return Ok(t.x_t_);
        }
        let rhos: Vec<f32> = if order == 2 {
            vec![0.5]
        } else {
            let m = order - 1;
            let r: Vec<Vec<f32>> = t.r[..m].iter().map(|row| row[..m].to_vec()).collect();
            solve(r, t.b[..m].to_vec())
        };
        let pred_res = weighted_sum(&rhos, &t.d1s)?;
        Ok((t.x_t_ - mul(&pred_res, t.scale)?)?)
    }

    /// UniC: redoes the previous step from `last_sample`, now also using
    /// `model_t`, the converted model output at the point that step reached.
    fn corrector(
        &self,
        i: usize,
        model_t: &Tensor,
        last_sample: &Tensor,
        order: usize,
    ) -> Result<Tensor> {
        let t = self.bh_terms(i - 1, last_sample, order)?;
        let m0 = self.history.back(0);
        let rhos: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            solve(t.r.clone(), t.b.clone())
        };
        let d1_t = (model_t - m0)?;
        let last = *rhos.last().expect("order >= 1");
        let tail = mul(&d1_t, last)?;
        let inner = if t.d1s.is_empty() {
            tail
        } else {
            (weighted_sum(&rhos[..rhos.len() - 1], &t.d1s)? + tail)?
        };
        Ok((t.x_t_ - mul(&inner, t.scale)?)?)
    }
}

/// `disable_corrector`: the step indices whose correction is skipped (default none).
fn read_disable_corrector(config: &SchedulerConfig) -> Result<Vec<usize>> {
    let key = "disable_corrector";
    match config.get(key) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    config.error(
                        key,
                        format!("expected step indices (non-negative integers), found {v}"),
                    )
                })
            })
            .collect(),
        Some(v) => Err(config.error(key, format!("expected a list of step indices, found {v}"))),
    }
}

/// sum_k w_k * t_k, as diffusers' einsum over the stacked differences.
fn weighted_sum(weights: &[f32], tensors: &[Tensor]) -> Result<Tensor> {
    let mut acc = mul(&tensors[0], weights[0])?;
    for (w, t) in weights.iter().zip(tensors).skip(1) {
        acc = (acc + mul(t, *w)?)?;
    }
    Ok(acc)
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting in float32.
fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .expect("non-empty column");
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (x, p) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0f32; n];
    for row in (0..n).rev() {
        let s: f32 = (row + 1..n).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

impl SchedulerClass for UniPcMultistep {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::VpSigma(self.sigmas[step_index])
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Unscaled(&self.timesteps)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample) = (at.output, at.index, at.sample);
        let n = self.timesteps.len();
        let i = step_index;
        let out_dtype = sample.dtype();
        let model_output = sigmas::f32(model_output)?;
        let mut sample = sigmas::f32(sample)?;

        let converted = self.convert_model_output(&model_output, &sample, i)?;
        if i > 0 && !self.disable_corrector.contains(&(i - 1)) {
            if let Some(last) = &self.last_sample {
                sample = self.corrector(i, &converted, last, self.this_order)?;
            }
        }

        self.history.push(converted);

        let solver_order = self.history.solver_order();
        let order = if self.lower_order_final {
            solver_order.min(n - i)
        } else {
            solver_order
        };
        // Warm-up: never use more history than has been collected.
        self.this_order = order.min(self.history.lower_order_nums() + 1);
        let prev = self.predictor(i, &sample, self.this_order)?;
        self.last_sample = Some(sample);
        self.history.count_step();
        Ok(prev.to_dtype(out_dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::sigmas::assert_refusals;
    use crate::scheduler::SchedulerKind;

    #[test]
    fn unsupported_values_name_their_field() {
        assert_refusals(
            SchedulerKind::UniPcMultistep,
            &[
                (r#"{"solver_type": "bh3"}"#, "solver_type"),
                (r#"{"solver_order": 0}"#, "solver_order"),
                (
                    r#"{"thresholding": true, "dynamic_thresholding_ratio": -1}"#,
                    "dynamic_thresholding_ratio",
                ),
                (r#"{"solver_type": "bh1"}"#, "solver_type"),
                (r#"{"predict_x0": false}"#, "predict_x0"),
                (
                    r#"{"solver_p": {"_class_name": "DDIMScheduler"}}"#,
                    "solver_p",
                ),
                (r#"{"use_dynamic_shifting": true}"#, "use_dynamic_shifting"),
                (r#"{"shift_terminal": 0.1}"#, "shift_terminal"),
                (r#"{"use_flow_sigmas": true}"#, "use_flow_sigmas"),
                (r#"{"disable_corrector": [1, -2]}"#, "disable_corrector"),
            ],
        );
    }

    #[test]
    fn solve_matches_a_hand_solved_system() {
        // 2x + y = 5, x + 3y = 10  ->  x = 1, y = 3
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![5.0, 10.0]);
        assert!(
            (x[0] - 1.0).abs() < 1e-6 && (x[1] - 3.0).abs() < 1e-6,
            "{x:?}"
        );
    }
}
