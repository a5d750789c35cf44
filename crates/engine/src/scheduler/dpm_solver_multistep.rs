//! DPM-Solver multistep: a rewrite of diffusers' `DPMSolverMultistepScheduler`
//! (Lu et al. 2022, DPM-Solver and DPM-Solver++).
//!
//! The default configuration is DPM-Solver++ of order 2 with the midpoint
//! update, a first-order final step (`final_sigmas_type = "zero"` ends at
//! sigma 0, which only a first-order step can reach), and lower orders near
//! the end when there are fewer than 15 steps. All four algorithm types are
//! implemented (`dpmsolver++`, `sde-dpmsolver++`, and the deprecated
//! `dpmsolver`, `sde-dpmsolver`), with both solver types and orders 1 to 3;
//! the SDE variants draw one noise tensor per step from the request's
//! generator, on every step, as diffusers does. Dynamic thresholding reuses
//! DDIM's implementation.
//!
//! This file also holds what UniPC shares with DPM-Solver: the reading of
//! `thresholding` and of the flow-matching keys, and the history of converted
//! model outputs.
//!
//! Timesteps are integers (int64 in diffusers). Sigmas are float32; the solver
//! coefficients are computed from them in float32, as diffusers computes them
//! on 0-dim float32 tensors, and the updates run in float32.

use candle_core::Tensor;

use super::ddim::PredictedSample;
use super::sigmas::{self, alpha_sigma, mul, point, vp_prediction, Division, Predicted, SigmaRamp};
use super::{
    draw_noise, linspace_f64, NoiseLevel, PredictionType, Schedule, SchedulerClass,
    SchedulerConfig, StepIn, TimestepSpacing,
};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// DPM-Solver++: integrates the data prediction (x0).
    DpmSolverPP,
    /// DPM-Solver: integrates the noise prediction.
    DpmSolver,
    SdeDpmSolverPP,
    SdeDpmSolver,
}

impl Algorithm {
    fn predicts_data(self) -> bool {
        matches!(self, Algorithm::DpmSolverPP | Algorithm::SdeDpmSolverPP)
    }

    fn is_sde(self) -> bool {
        matches!(self, Algorithm::SdeDpmSolverPP | Algorithm::SdeDpmSolver)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

pub(super) struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    /// One more entry than the steps: the last is the sigma we end at.
    sigmas: Vec<f32>,
    prediction: PredictionType,
    /// Dynamic thresholding of the predicted x0 (`thresholding`), or `Keep`.
    threshold: PredictedSample,
    algorithm: Algorithm,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    history: History,
}

impl DpmSolverMultistep {
    pub(super) fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let n_train = config.num_train_timesteps()?;
        let beta_schedule = config.str_or("beta_schedule", "linear")?;
        let solver_order = config.usize_or("solver_order", 2)?;
        if solver_order == 0 {
            return Err(config.error("solver_order", "must be at least 1; accepted: 1, 2, 3"));
        }
        let prediction = config.prediction_type(PredictionType::Epsilon)?;
        let threshold = read_threshold(config)?;
        let algorithm = config.one_of(
            "algorithm_type",
            Algorithm::DpmSolverPP,
            &[
                ("dpmsolver++", Algorithm::DpmSolverPP),
                ("sde-dpmsolver++", Algorithm::SdeDpmSolverPP),
                ("dpmsolver", Algorithm::DpmSolver),
                ("sde-dpmsolver", Algorithm::SdeDpmSolver),
                // diffusers maps "deis" onto DPM-Solver++ itself.
                ("deis", Algorithm::DpmSolverPP),
            ],
        )?;
        let solver_type = match config.str_or("solver_type", "midpoint")?.as_str() {
            // diffusers maps the other solvers' names onto midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(config.error(
                    "solver_type",
                    format!("unsupported value \"{other}\"; accepted: \"midpoint\", \"heun\" (or \"logrho\", \"bh1\", \"bh2\", read as midpoint)"),
                ))
            }
        };
        if algorithm == Algorithm::SdeDpmSolver && solver_order >= 3 {
            // diffusers has no third-order update for sde-dpmsolver and fails
            // mid-run once it would need one; refuse it up front.
            return Err(config.error(
                "solver_order",
                "sde-dpmsolver has no third-order update; accepted with it: 1, 2",
            ));
        }
        let lower_order_final = config.bool_or("lower_order_final", true)?;
        let euler_at_final = config.bool_or("euler_at_final", false)?;
        let ramp = SigmaRamp::read(config)?;
        let use_lu_lambdas = config.bool_or("use_lu_lambdas", false)?;
        refuse_flow_sigmas(config)?;
        // use_dynamic_shifting and time_shift_type only act on flow sigmas
        // (refused above), so they cannot change anything here.
        config.bool_or("use_dynamic_shifting", false)?;
        config.str_or("time_shift_type", "exponential")?;
        let final_sigma_zero = sigmas::final_sigma_is_zero(config)?;
        if final_sigma_zero && !algorithm.predicts_data() {
            return Err(config.error(
                "final_sigmas_type",
                "\"zero\" only works with algorithm_type \"dpmsolver++\" or \"sde-dpmsolver++\"; accepted here: \"sigma_min\"",
            ));
        }
        let lambda_min_clipped = config.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?;
        let variance_type = config.str_or("variance_type", "")?;
        if variance_type == "learned" || variance_type == "learned_range" {
            return Err(config.error(
                "variance_type",
                format!(
                    "\"{variance_type}\" needs a UNet that also predicts variance; accepted: null"
                ),
            ));
        }
        let spacing = config.timestep_spacing(TimestepSpacing::Linspace)?;
        let steps_offset = config.usize_or("steps_offset", 0)?;
        let rescale = config.bool_or("rescale_betas_zero_snr", false)?;
        let alphas_cumprod = sigmas::alphas_cumprod(config, rescale)?;

        // Clip the schedule where lambda(t) falls below lambda_min_clipped (for
        // the cosine schedule); with the default -inf nothing is clipped.
        let clipped = alphas_cumprod
            .iter()
            .rev()
            .map(|&a| (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64)
            .filter(|&l| l < lambda_min_clipped)
            .count();
        let last_timestep = n_train.saturating_sub(clipped);

        let n = num_inference_steps;
        let mut timesteps = spacing.multistep_timesteps(last_timestep, n_train, n, steps_offset);

        let train_sigmas = sigmas::training_sigmas(&alphas_cumprod);
        let log_sigmas = sigmas::log_sigmas(&train_sigmas);
        let round = beta_schedule != "squaredcos_cap_v2";
        let smallest = train_sigmas[0] as f64;
        let largest = *train_sigmas.last().expect("non-empty training schedule") as f64;
        let inference: Vec<f64> = if ramp == SigmaRamp::Karras {
            let s = sigmas::karras(smallest, largest, n);
            timesteps = sigmas::ramp_timesteps(&s, &log_sigmas, round);
            s
        } else if use_lu_lambdas {
            // Uniform steps in log-sigma between the float32 table's ends.
            let lo = log_sigmas[0] as f64;
            let hi = *log_sigmas.last().expect("non-empty training schedule") as f64;
            let s: Vec<f64> = linspace_f64(0.0, 1.0, n)
                .into_iter()
                .map(|r| (hi + r * (lo - hi)).exp())
                .collect();
            timesteps = sigmas::ramp_timesteps(&s, &log_sigmas, round);
            s
        } else if ramp == SigmaRamp::Exponential {
            let s = sigmas::exponential(smallest, largest, n);
            timesteps = sigmas::ramp_timesteps(&s, &log_sigmas, false);
            s
        } else {
            sigmas::interpolated(timesteps.iter().map(|&t| t as f64), &train_sigmas)
        };
        let sigma_last = if final_sigma_zero {
            0.0
        } else {
            train_sigmas[0]
        };
        let sigmas = sigmas::with_final(inference, sigma_last);

        Ok(DpmSolverMultistep {
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            sigmas,
            prediction,
            threshold,
            algorithm,
            solver_type,
            lower_order_final,
            euler_at_final,
            final_sigma_zero,
            history: History::new(solver_order),
        })
    }

    /// diffusers' `convert_model_output`: the data prediction x0 for DPM-Solver++,
    /// the noise prediction for DPM-Solver.
    fn convert_model_output(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        i: usize,
    ) -> Result<Tensor> {
        let point = alpha_sigma(self.sigmas[i]);
        let convert = |want, prediction, model_output: &Tensor| {
            vp_prediction(
                want,
                prediction,
                model_output,
                sample,
                point,
                Division::Exact,
            )
        };
        if self.algorithm.predicts_data() {
            let x0 = convert(Predicted::CleanSample, self.prediction, model_output)?;
            return self.threshold.apply(x0);
        }
        let eps = convert(Predicted::Noise, self.prediction, model_output)?;
        if let PredictedSample::Keep = self.threshold {
            return Ok(eps);
        }
        // Thresholding acts on x0, so go there and back.
        let x0 = convert(Predicted::CleanSample, PredictionType::Epsilon, &eps)?;
        let x0 = self.threshold.apply(x0)?;
        convert(Predicted::Noise, PredictionType::Sample, &x0)
    }

    /// alpha, sigma and lambda at entry `j` of the sigma table.
    fn point(&self, j: usize) -> (f32, f32, f32) {
        point(self.sigmas[j])
    }

    fn first_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let m0 = self.history.back(0);
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s, sigma_s, lambda_s) = self.point(i);
        let h = lambda_t - lambda_s;
        let x_t = match self.algorithm {
            Algorithm::DpmSolverPP => {
                (mul(x, sigma_t / sigma_s)? - mul(m0, alpha_t * ((-h).exp() - 1.0))?)?
            }
            Algorithm::DpmSolver => {
                (mul(x, alpha_t / alpha_s)? - mul(m0, sigma_t * (h.exp() - 1.0))?)?
            }
            Algorithm::SdeDpmSolverPP => {
                let noise = noise.expect("sde draws noise");
                let e2 = (-2.0 * h).exp();
                ((mul(x, sigma_t / sigma_s * (-h).exp())? + mul(m0, alpha_t * (1.0 - e2))?)?
                    + mul(noise, sigma_t * (1.0 - e2).sqrt())?)?
            }
            Algorithm::SdeDpmSolver => {
                let noise = noise.expect("sde draws noise");
                ((mul(x, alpha_t / alpha_s)? - mul(m0, 2.0 * (sigma_t * (h.exp() - 1.0)))?)?
                    + mul(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        };
        Ok(x_t)
    }

    fn second_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1) = (self.history.back(0), self.history.back(1));
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let x_t = match (self.algorithm, self.solver_type) {
            (Algorithm::DpmSolverPP, SolverType::Midpoint) => {
                let c = alpha_t * ((-h).exp() - 1.0);
                ((mul(x, sigma_t / sigma_s0)? - mul(d0, c)?)? - mul(&d1, 0.5 * c)?)?
            }
            (Algorithm::DpmSolverPP, SolverType::Heun) => {
                let e = (-h).exp() - 1.0;
                ((mul(x, sigma_t / sigma_s0)? - mul(d0, alpha_t * e)?)?
                    + mul(&d1, alpha_t * (e / h + 1.0))?)?
            }
            (Algorithm::DpmSolver, SolverType::Midpoint) => {
                let c = sigma_t * (h.exp() - 1.0);
                ((mul(x, alpha_t / alpha_s0)? - mul(d0, c)?)? - mul(&d1, 0.5 * c)?)?
            }
            (Algorithm::DpmSolver, SolverType::Heun) => {
                let e = h.exp() - 1.0;
                ((mul(x, alpha_t / alpha_s0)? - mul(d0, sigma_t * e)?)?
                    - mul(&d1, sigma_t * (e / h - 1.0))?)?
            }
            (Algorithm::SdeDpmSolverPP, solver) => {
                let noise = noise.expect("sde draws noise");
                let e2 = (-2.0 * h).exp();
                let c1 = match solver {
                    SolverType::Midpoint => 0.5 * (alpha_t * (1.0 - e2)),
                    SolverType::Heun => alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                };
                (((mul(x, sigma_t / sigma_s0 * (-h).exp())? + mul(d0, alpha_t * (1.0 - e2))?)?
                    + mul(&d1, c1)?)?
                    + mul(noise, sigma_t * (1.0 - e2).sqrt())?)?
            }
            (Algorithm::SdeDpmSolver, solver) => {
                let noise = noise.expect("sde draws noise");
                let e = h.exp() - 1.0;
                let c1 = match solver {
                    SolverType::Midpoint => sigma_t * e,
                    SolverType::Heun => 2.0 * (sigma_t * (e / h - 1.0)),
                };
                (((mul(x, alpha_t / alpha_s0)? - mul(d0, 2.0 * (sigma_t * e))?)? - mul(&d1, c1)?)?
                    + mul(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        };
        Ok(x_t)
    }

    fn third_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1, m2) = (
            self.history.back(0),
            self.history.back(1),
            self.history.back(2),
        );
        let (alpha_t, sigma_t, lambda_t) = self.point(i + 1);
        let (alpha_s0, sigma_s0, lambda_s0) = self.point(i);
        let (_, _, lambda_s1) = self.point(i - 1);
        let (_, _, lambda_s2) = self.point(i - 2);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let h_1 = lambda_s1 - lambda_s2;
        let r0 = h_0 / h;
        let r1 = h_1 / h;
        let d0 = m0;
        let d1_0 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let d1_1 = mul(&(m1 - m2)?, 1.0 / r1)?;
        let d1_diff = (&d1_0 - &d1_1)?;
        let d1 = (&d1_0 + mul(&d1_diff, r0 / (r0 + r1))?)?;
        let d2 = mul(&d1_diff, 1.0 / (r0 + r1))?;
        let x_t = match self.algorithm {
            Algorithm::DpmSolverPP => {
                let e = (-h).exp() - 1.0;
                (((mul(x, sigma_t / sigma_s0)? - mul(d0, alpha_t * e)?)?
                    + mul(&d1, alpha_t * (e / h + 1.0))?)?
                    - mul(&d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))?)?
            }
            Algorithm::DpmSolver => {
                let e = h.exp() - 1.0;
                (((mul(x, alpha_t / alpha_s0)? - mul(d0, sigma_t * e)?)?
                    - mul(&d1, sigma_t * (e / h - 1.0))?)?
                    - mul(&d2, sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))?)?
            }
            Algorithm::SdeDpmSolverPP => {
                let noise = noise.expect("sde draws noise");
                let e2 = (-2.0 * h).exp();
                let two_h = 2.0 * h;
                ((((mul(x, sigma_t / sigma_s0 * (-h).exp())?
                    + mul(d0, alpha_t * (1.0 - e2))?)?
                    + mul(&d1, alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0))?)?
                    + mul(
                        &d2,
                        alpha_t * ((1.0 - e2 - 2.0 * h) / (two_h * two_h) - 0.5),
                    )?)?
                    + mul(noise, sigma_t * (1.0 - e2).sqrt())?)?
            }
            Algorithm::SdeDpmSolver => unreachable!("refused when the scheduler was built"),
        };
        Ok(x_t)
    }
}

/// `thresholding` with its `dynamic_thresholding_ratio` and `sample_max_value`
/// (DPM-Solver and UniPC share DDIM's reading of them; they have no
/// `clip_sample`, so without thresholding x0 is kept as it is).
pub(super) fn read_threshold(config: &SchedulerConfig) -> Result<PredictedSample> {
    if config.bool_or("thresholding", false)? {
        // With thresholding on, DDIM's reader returns the thresholding variant.
        return PredictedSample::from_config(config);
    }
    // Only read by thresholding; still type-checked.
    config.f64_or("dynamic_thresholding_ratio", 0.995)?;
    config.f64_or("sample_max_value", 1.0)?;
    Ok(PredictedSample::Keep)
}

/// Refuses `use_flow_sigmas` (flow-matching models) and type-checks
/// `flow_shift`, which only acts on flow sigmas.
pub(super) fn refuse_flow_sigmas(config: &SchedulerConfig) -> Result<()> {
    if config.bool_or("use_flow_sigmas", false)? {
        return Err(config.error(
            "use_flow_sigmas",
            "flow-matching sigmas are not supported; accepted: false",
        ));
    }
    config.f64_or("flow_shift", 1.0)?;
    Ok(())
}

/// The converted model outputs a multistep solver keeps, oldest first
/// (diffusers' `model_outputs`, as many as the solver order), and how many
/// steps have stored one, up to that order (`lower_order_nums`).
pub(super) struct History {
    outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

impl History {
    pub(super) fn new(solver_order: usize) -> Self {
        History {
            outputs: vec![None; solver_order],
            lower_order_nums: 0,
        }
    }

    pub(super) fn solver_order(&self) -> usize {
        self.outputs.len()
    }

    pub(super) fn lower_order_nums(&self) -> usize {
        self.lower_order_nums
    }

    /// Stores the newest output, dropping the oldest.
    pub(super) fn push(&mut self, output: Tensor) {
        self.outputs.rotate_left(1);
        *self.outputs.last_mut().expect("solver_order >= 1") = Some(output);
    }

    /// The output stored `back` steps before the newest.
    pub(super) fn back(&self, back: usize) -> &Tensor {
        self.outputs[self.outputs.len() - 1 - back]
            .as_ref()
            .expect("an output stored that many steps back")
    }

    /// Counts a finished step toward the warm-up.
    pub(super) fn count_step(&mut self) {
        if self.lower_order_nums < self.solver_order() {
            self.lower_order_nums += 1;
        }
    }
}

impl SchedulerClass for DpmSolverMultistep {
    fn noise_level(&self, step_index: usize) -> NoiseLevel {
        NoiseLevel::VpSigma(self.sigmas[step_index])
    }

    fn schedule(&self) -> Schedule<'_> {
        Schedule::Unscaled(&self.timesteps)
    }

    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor> {
        let (model_output, step_index, sample, noise) = (at.output, at.index, at.sample, at.noise);
        let n = self.timesteps.len();
        let i = step_index;
        let out_dtype = model_output.dtype();
        let model_output = sigmas::f32(model_output)?;
        let sample = sigmas::f32(sample)?;

        // Lower orders at the end keep few-step runs stable; the step onto
        // sigma 0 must be first order because lambda is infinite there.
        let lower_order_final = i == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_sigma_zero);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;

        let converted = self.convert_model_output(&model_output, &sample, i)?;
        self.history.push(converted);

        let noise = if self.algorithm.is_sde() {
            Some(draw_noise(noise, &sample)?)
        } else {
            None
        };
        let noise = noise.as_ref();

        let order = self.history.solver_order();
        let warmed_up = self.history.lower_order_nums();
        let prev = if order == 1 || warmed_up < 1 || lower_order_final {
            self.first_order(i, &sample, noise)?
        } else if order == 2 || warmed_up < 2 || lower_order_second {
            self.second_order(i, &sample, noise)?
        } else {
            self.third_order(i, &sample, noise)?
        };
        self.history.count_step();
        Ok(prev.to_dtype(out_dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::sigmas::{assert_refusals, build_from_json};
    use crate::scheduler::SchedulerKind;

    #[test]
    fn unsupported_values_name_their_field() {
        assert_refusals(
            SchedulerKind::DpmSolverMultistep,
            &[
                (r#"{"algorithm_type": "dpmsolver+++"}"#, "algorithm_type"),
                (r#"{"solver_type": "rk4"}"#, "solver_type"),
                (r#"{"solver_order": 0}"#, "solver_order"),
                (
                    r#"{"thresholding": true, "dynamic_thresholding_ratio": 2}"#,
                    "dynamic_thresholding_ratio",
                ),
                (r#"{"variance_type": "learned_range"}"#, "variance_type"),
                (r#"{"use_flow_sigmas": true}"#, "use_flow_sigmas"),
                (r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
                (r#"{"algorithm_type": "dpmsolver"}"#, "final_sigmas_type"),
                (
                    r#"{"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}"#,
                    "solver_order",
                ),
            ],
        );
    }

    #[test]
    fn aliases_diffusers_remaps_are_accepted() {
        for json in [r#"{"algorithm_type": "deis"}"#, r#"{"solver_type": "bh2"}"#] {
            build_from_json(SchedulerKind::DpmSolverMultistep, json).unwrap();
        }
    }
}
