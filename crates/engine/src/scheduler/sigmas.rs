//! Noise-level helpers shared by the schedulers: sigma tables, interpolation,
//! Karras/exponential ramps and the zero-terminal-SNR rescale (used by all the
//! sigma-based schedulers, and by DDIM, DDPM, LMS and Heun for the rescale and ramps).
//!
//! It also holds [`SigmaSchedule`], the timesteps and sigmas that LMS, Heun,
//! Euler and Euler ancestral step along: their `set_timesteps` differ only in
//! the options [`SigmaOptions`] names, and the schedule answers the pipeline's
//! `timesteps`, `init_noise_sigma` and `scale_model_input` for all four. And
//! it holds [`vp_prediction`], which turns what the model predicts (eps, x0 or
//! v) into what the variance-preserving classes step with (the DDPM family,
//! DPM-Solver, UniPC).
//!
//! diffusers builds these tables partly in torch float32 and partly in numpy
//! float64, and the mix matters for bit-level agreement: the training sigma
//! table is float32 (it comes from the float32 `alphas_cumprod`), while
//! `np.interp`, the Karras ramp and `_sigma_to_t` run in float64 on top of it.
//! The helpers here keep each of those steps in the dtype diffusers uses, and
//! reproduce numpy's own conventions (round half to even, `arange` sizing).

use candle_core::{DType, Tensor};

use super::{linspace_f32, PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::Result;

/// `sqrt((1 - alphas_cumprod) / alphas_cumprod)` as torch computes it in
/// float32, indexed by training timestep (so ascending).
pub(super) fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// The training `alphas_cumprod` of the config, with `rescale_betas_zero_snr`
/// applied when asked for.
///
/// The sigma-based schedulers then replace the final value by 2^-24, as
/// diffusers does, so that the first sigma is large but finite.
pub(super) fn alphas_cumprod(config: &SchedulerConfig, rescale_zero_snr: bool) -> Result<Vec<f32>> {
    let mut ac = config.alphas_cumprod()?;
    if ac.len() < 2 {
        // Interpolation and `_sigma_to_t` need two training points to work between.
        let field = if config.get("trained_betas").is_some() {
            "trained_betas"
        } else {
            "num_train_timesteps"
        };
        return Err(config.error(
            field,
            format!(
                "gives {} training timesteps; accepted: at least 2",
                ac.len()
            ),
        ));
    }
    if rescale_zero_snr {
        ac = rescale_zero_terminal_snr(&ac);
        if let Some(last) = ac.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(ac)
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1), taking
/// and returning `alphas_cumprod` rather than betas.
///
/// diffusers goes betas -> cumprod -> rescale -> betas -> cumprod again; we
/// retrace the same float32 steps so the rounding matches, and redo the final
/// cumulative product in float64 because torch's CPU `cumprod` accumulates in
/// double before rounding each entry to float32.
pub(super) fn rescale_zero_terminal_snr(alphas_cumprod: &[f32]) -> Vec<f32> {
    let Some((&first, &last)) = alphas_cumprod.first().zip(alphas_cumprod.last()) else {
        return Vec::new();
    };
    let sqrt_0 = first.sqrt();
    let sqrt_t = last.sqrt();
    let factor = sqrt_0 / (sqrt_0 - sqrt_t);
    let bar: Vec<f32> = alphas_cumprod
        .iter()
        .map(|&a| {
            let s = (a.sqrt() - sqrt_t) * factor;
            s * s
        })
        .collect();
    super::cumprod_of_alphas((0..bar.len()).map(|i| {
        let alpha = if i == 0 { bar[0] } else { bar[i] / bar[i - 1] };
        let beta = 1.0 - alpha;
        1.0 - beta
    }))
}

/// `np.interp(x, np.arange(len(fp)), fp)` in float64, including numpy's
/// clamping outside the table and its exact-hit shortcut.
pub(super) fn interp_table(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    let last = (n - 1) as f64;
    if x.is_nan() {
        return x;
    }
    if x >= last {
        return fp[n - 1] as f64;
    }
    if x < 0.0 {
        return fp[0] as f64;
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return fp[j] as f64;
    }
    // The grid step is 1, so numpy's slope is just the difference.
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - xj) + fp[j] as f64
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma
/// matches `sigma`, by linear interpolation in the float32 `log_sigmas` table.
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // numpy picks the last index whose log-sigma is <= log_sigma (or 0 when
    // none is), capped so that `low + 1` stays inside the table.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    // The denominator is a float32 difference in numpy (both operands are float32).
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. (2022) sigmas: `rho = 7` interpolation between `sigma_max` and `sigma_min`, float64.
pub(super) fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    super::linspace_f64(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Sigmas evenly spaced in log space from `sigma_max` down to `sigma_min`, float64.
pub(super) fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    super::linspace_f64(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// `np.arange(start, stop, step)` for float arguments: numpy sizes it as
/// `ceil((stop - start) / step)` and fills entry `i >= 2` as
/// `start + i * ((start + step) - start)`.
pub(super) fn arange_f64(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    let len = if len > 0.0 { len as usize } else { 0 };
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Which sigma ramp replaces the interpolated training sigmas
/// (`use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SigmaRamp {
    Interpolated,
    Karras,
    Exponential,
}

impl SigmaRamp {
    pub(super) fn read(config: &SchedulerConfig) -> Result<Self> {
        let karras = config.bool_or("use_karras_sigmas", false)?;
        let exponential = config.bool_or("use_exponential_sigmas", false)?;
        let beta = config.bool_or("use_beta_sigmas", false)?;
        if [karras, exponential, beta].iter().filter(|b| **b).count() > 1 {
            return Err(config.error(
                "use_karras_sigmas",
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be true",
            ));
        }
        if beta {
            return Err(config.error(
                "use_beta_sigmas",
                "beta sigmas are not supported; accepted: false (use_karras_sigmas or use_exponential_sigmas are)",
            ));
        }
        Ok(if karras {
            SigmaRamp::Karras
        } else if exponential {
            SigmaRamp::Exponential
        } else {
            SigmaRamp::Interpolated
        })
    }

    /// The ramp between `sigma_min` and `sigma_max`, `n` entries, descending.
    pub(super) fn ramp(self, sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
        match self {
            SigmaRamp::Karras => karras(sigma_min, sigma_max, n),
            SigmaRamp::Exponential => exponential(sigma_min, sigma_max, n),
            SigmaRamp::Interpolated => unreachable!("the interpolated schedule has no ramp"),
        }
    }
}

/// An optional float key (`sigma_min`, `sigma_max`): absent or null is `None`.
pub(super) fn optional_f64(config: &SchedulerConfig, key: &str) -> Result<Option<f64>> {
    match config.get(key) {
        None => Ok(None),
        Some(_) => config.f64_or(key, 0.0).map(Some),
    }
}

/// `final_sigmas_type`: whether the schedule ends at sigma 0 (`"zero"`) or not (`"sigma_min"`).
pub(super) fn final_sigma_is_zero(config: &SchedulerConfig) -> Result<bool> {
    config.one_of(
        "final_sigmas_type",
        true,
        &[("zero", true), ("sigma_min", false)],
    )
}

/// The float32 log of the training sigmas: the table `_sigma_to_t` searches.
pub(super) fn log_sigmas(train_sigmas: &[f32]) -> Vec<f32> {
    train_sigmas.iter().map(|s| s.ln()).collect()
}

/// The training sigmas interpolated at each timestep (`np.interp`), float64.
pub(super) fn interpolated(
    timesteps: impl IntoIterator<Item = f64>,
    train_sigmas: &[f32],
) -> Vec<f64> {
    timesteps
        .into_iter()
        .map(|t| interp_table(t, train_sigmas))
        .collect()
}

/// The int64 timesteps of a ramp's sigmas, through `_sigma_to_t`: rounded
/// when `round`, else truncated by the cast (DPM-Solver, UniPC).
pub(super) fn ramp_timesteps(sigmas: &[f64], log_sigmas: &[f32], round: bool) -> Vec<i64> {
    sigmas
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, log_sigmas);
            (if round { t.round_ties_even() } else { t }) as i64
        })
        .collect()
}

/// The float64 sigmas stored as float32, followed by the sigma the last step ends at.
pub(super) fn with_final(sigmas: Vec<f64>, last: f32) -> Vec<f32> {
    sigmas
        .into_iter()
        .map(|s| s as f32)
        .chain(std::iter::once(last))
        .collect()
}

/// What a config asks of a [`SigmaSchedule`]; each class reads its own keys into it.
#[derive(Debug, Clone, Copy)]
pub(super) struct SigmaOptions {
    pub num_train: usize,
    pub spacing: TimestepSpacing,
    pub steps_offset: usize,
    /// Euler's `interpolation_type = "log_linear"`: `n + 1` sigmas evenly
    /// spaced in float32 log space between the table's ends, in place of the
    /// interpolated ones (diffusers keeps the extra entry).
    pub log_linear: bool,
    pub ramp: SigmaRamp,
    /// The ramp's ends where the config sets them; otherwise the interpolated schedule's.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Whether the last step ends at 0 or at the table's smallest sigma.
    pub final_sigma_zero: bool,
    /// How `scale_model_input` divides by sqrt(sigma^2 + 1).
    pub division: Division,
}

impl SigmaOptions {
    /// The interpolated schedule ending at 0, with nothing else asked.
    pub(super) fn interpolated(
        num_train: usize,
        spacing: TimestepSpacing,
        steps_offset: usize,
        division: Division,
    ) -> Self {
        SigmaOptions {
            num_train,
            spacing,
            steps_offset,
            log_linear: false,
            ramp: SigmaRamp::Interpolated,
            sigma_min: None,
            sigma_max: None,
            final_sigma_zero: true,
            division,
        }
    }
}

/// The timesteps and sigmas a sigma scheduler (LMS, Heun, Euler, Euler
/// ancestral) steps along, as its `set_timesteps` lays them out.
pub(super) struct SigmaSchedule {
    /// The float32 timesteps the UNet sees (e.g. 832.5), widened.
    pub timesteps: Vec<f64>,
    /// float32: one per timestep (one more for a log-linear schedule), then the
    /// sigma the last step ends at.
    pub sigmas: Vec<f32>,
    /// The largest sigma, or sqrt(max^2 + 1) for `leading` spacing, float32.
    pub init_noise_sigma: f32,
    division: Division,
}

impl SigmaSchedule {
    /// The float32 timesteps of the spacing, their sigmas interpolated in the
    /// training table (or log-linear), then replaced by a ramp if one is asked
    /// for (with the ramp's timesteps mapped back through `_sigma_to_t`).
    pub(super) fn new(train_sigmas: &[f32], n: usize, options: &SigmaOptions) -> Self {
        let spacing = options.spacing;
        let mut timesteps: Vec<f32> = spacing.timesteps(options.num_train, n, options.steps_offset);
        let mut sigmas: Vec<f64> = if options.log_linear {
            let last = *train_sigmas.last().expect("non-empty training schedule");
            linspace_f32(last.ln(), train_sigmas[0].ln(), n + 1)
                .into_iter()
                .map(|l| l.exp() as f64)
                .collect()
        } else {
            interpolated(timesteps.iter().map(|&t| t as f64), train_sigmas)
        };
        if options.ramp != SigmaRamp::Interpolated {
            let lo = options
                .sigma_min
                .unwrap_or(*sigmas.last().expect("at least one step"));
            let hi = options.sigma_max.unwrap_or(sigmas[0]);
            sigmas = options.ramp.ramp(lo, hi, n);
            let log_sigmas = log_sigmas(train_sigmas);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32)
                .collect();
        }
        let last = if options.final_sigma_zero {
            0.0
        } else {
            train_sigmas[0]
        };
        let sigmas = with_final(sigmas, last);
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        SigmaSchedule {
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            init_noise_sigma,
            division: options.division,
        }
    }

    /// diffusers' `scale_model_input`: the latents divided by sqrt(sigma^2 + 1).
    pub(super) fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step_index];
        self.division.apply(&sample, (sigma * sigma + 1.0).sqrt())
    }
}

/// How a class divides latents by a float32 scalar. diffusers always divides
/// by a 0-dim float32 tensor; our DDPM family (DDIM, DDPM, PNDM), LMS and Heun
/// multiply by the float64 reciprocal instead, which can round differently in
/// the last bit, and keep doing so so that their results do not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Division {
    /// A true division, as [`div`] (Euler, Euler ancestral, DPM-Solver, UniPC).
    Exact,
    /// A multiplication by the float64 reciprocal.
    Reciprocal,
}

impl Division {
    pub(super) fn apply(self, t: &Tensor, s: f32) -> Result<Tensor> {
        Ok(match self {
            Division::Exact => div(t, s)?,
            Division::Reciprocal => (t / s as f64)?,
        })
    }
}

/// Which of the two unknowns of the variance-preserving process a class wants
/// from the model output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Predicted {
    /// x0, the predicted clean sample.
    CleanSample,
    /// eps, the predicted noise.
    Noise,
}

/// x0 or eps from what the model predicts (eps, x0 or v), with
/// `sample = alpha x0 + sigma eps` and `v = alpha eps - sigma x0`: the
/// parametrisation of the DDPM family (alpha^2 = `alphas_cumprod`) and of
/// DPM-Solver and UniPC (alpha, sigma from [`alpha_sigma`]), in the latents' dtype.
pub(super) fn vp_prediction(
    want: Predicted,
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    (alpha, sigma): (f32, f32),
    division: Division,
) -> Result<Tensor> {
    Ok(match (want, prediction) {
        (Predicted::CleanSample, PredictionType::Sample)
        | (Predicted::Noise, PredictionType::Epsilon) => model_output.clone(),
        (Predicted::CleanSample, PredictionType::Epsilon) => {
            division.apply(&(sample - mul(model_output, sigma)?)?, alpha)?
        }
        (Predicted::Noise, PredictionType::Sample) => {
            division.apply(&(sample - mul(model_output, alpha)?)?, sigma)?
        }
        (Predicted::CleanSample, PredictionType::VPrediction) => {
            (mul(sample, alpha)? - mul(model_output, sigma)?)?
        }
        (Predicted::Noise, PredictionType::VPrediction) => {
            (mul(model_output, alpha)? + mul(sample, sigma)?)?
        }
    })
}

/// `tensor * s` with a float32 scalar, as torch multiplies by a 0-dim float32 tensor.
pub(super) fn mul(t: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    t.affine(s as f64, 0.0)
}

/// `tensor / s` with a float32 scalar. A true division, not a multiplication
/// by the reciprocal: at sigma in the thousands (zero-terminal-SNR schedules)
/// the Euler step cancels large terms and the last-bit difference shows.
pub(super) fn div(t: &Tensor, s: f32) -> candle_core::Result<Tensor> {
    let s = Tensor::new(s, t.device())?.to_dtype(t.dtype())?;
    t.broadcast_div(&s)
}

/// The tensor in float32: diffusers upcasts the latents before every update.
pub(super) fn f32(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// `alpha_t, sigma_t` of the variance-preserving process at noise level `sigma`,
/// in float32 (diffusers' `_sigma_to_alpha_sigma_t` on a float32 sigma).
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `log(alpha_t) - log(sigma_t)`: half the log-SNR; `+inf` at sigma 0.
pub(super) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// alpha_t, sigma_t and lambda_t at noise level `sigma`, float32.
pub(super) fn point(sigma: f32) -> (f32, f32, f32) {
    let (alpha_t, sigma_t) = alpha_sigma(sigma);
    (alpha_t, sigma_t, lambda(alpha_t, sigma_t))
}

/// Builds a scheduler from JSON text and returns its error message, for the
/// tests of refused configurations.
#[cfg(test)]
pub(super) fn config_error<T>(build: impl Fn(&SchedulerConfig) -> Result<T>, json: &str) -> String {
    let config = SchedulerConfig::from_json(std::path::Path::new("scheduler_config.json"), json)
        .expect("valid test JSON");
    match build(&config) {
        Ok(_) => panic!("{json} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Builds `kind` for 10 steps from JSON text, through [`super::build`].
#[cfg(test)]
pub(super) fn build_from_json(
    kind: super::SchedulerKind,
    json: &str,
) -> Result<Box<dyn super::Scheduler>> {
    let config = SchedulerConfig::from_json(std::path::Path::new("scheduler_config.json"), json)
        .expect("valid test JSON");
    super::build(kind, &config, 10, 0.0)
}

/// Asserts that `kind` refuses the config `json` with an error containing each of `needles`.
#[cfg(test)]
pub(super) fn assert_refused(kind: super::SchedulerKind, json: &str, needles: &[&str]) {
    let Err(e) = build_from_json(kind, json) else {
        panic!("{json} was accepted");
    };
    let e = e.to_string();
    assert!(needles.iter().all(|n| e.contains(n)), "{json}: {e}");
}

/// Asserts that `kind` refuses each `(json, field)` config with an error naming the field.
#[cfg(test)]
pub(super) fn assert_refusals(kind: super::SchedulerKind, cases: &[(&str, &str)]) {
    for (json, field) in cases {
        assert_refused(kind, json, &[&format!("`{field}`")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_sizing() {
        // np.arange(1000, 0, -1000 / 7).round() - 1
        let t: Vec<f64> = arange_f64(1000.0, 0.0, -1000.0 / 7.0)
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect();
        assert_eq!(t, [999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0]);
    }

    #[test]
    fn interp_clamps_and_hits_grid_points() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(interp_table(-1.0, &fp), 1.0);
        assert_eq!(interp_table(1.0, &fp), 3.0);
        assert_eq!(interp_table(1.5, &fp), 5.0);
        assert_eq!(interp_table(9.0, &fp), 7.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let log_sigmas: Vec<f32> = [0.1f32, 0.2, 0.4, 0.8].iter().map(|s| s.ln()).collect();
        assert!((sigma_to_t(0.4, &log_sigmas) - 2.0).abs() < 1e-6);
        assert!((sigma_to_t(0.2f64 * 2f64.sqrt(), &log_sigmas) - 1.5).abs() < 1e-6);
        // Outside the table it clamps to the ends.
        assert_eq!(sigma_to_t(0.01, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(5.0, &log_sigmas), 3.0);
    }

    #[test]
    fn beta_sigmas_and_two_ramps_are_refused() {
        let read = |c: &SchedulerConfig| SigmaRamp::read(c);
        let e = config_error(read, r#"{"use_beta_sigmas": true}"#);
        assert!(e.contains("use_beta_sigmas"), "{e}");
        let e = config_error(
            read,
            r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
        );
        assert!(e.contains("only one of"), "{e}");
        let e = config_error(final_sigma_is_zero, r#"{"final_sigmas_type": "one"}"#);
        assert!(
            e.contains("final_sigmas_type") && e.contains("sigma_min"),
            "{e}"
        );
    }
}
