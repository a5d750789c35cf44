//! Noise schedulers, each a faithful rewrite of the diffusers class of the same name.
//!
//! Every scheduler is built from the model's `scheduler/scheduler_config.json`
//! the way diffusers' `SchedulerClass.from_config(config)` builds it: keys the
//! class understands are taken from the file, keys it does not know are ignored,
//! and anything the file leaves out takes that class's own default. That is why
//! [`SchedulerConfig`] is a key-value view and not one struct: the same file
//! means different things to different schedulers (DDIM's default spacing is
//! `leading`, Euler's is `linspace`).
//!
//! The pipeline drives all of them through one loop: for each entry of
//! [`Scheduler::timesteps`] it scales the latents, runs the UNet at that
//! timestep, and calls [`Scheduler::step`] with the same index. Schedulers that
//! evaluate the model twice per step (Heun) or warm up with repeated timesteps
//! (PNDM) simply list those timesteps, as diffusers does.
//!
//! Arithmetic mirrors diffusers' dtypes: where diffusers holds a table in
//! torch float32 we compute it in `f32`, where it uses numpy float64 we use `f64`.
//!
//! Each scheduler file holds its class and, where diffusers copies code between
//! classes, the one copy the others call (DDIM's for DDPM and PNDM, LMS's for
//! Heun, Euler's for Euler ancestral, DPM-Solver's for UniPC); `sigmas.rs` holds
//! the sigma tables, the schedule the four sigma-space classes share, and the
//! conversions between what the model predicts. This file holds what every
//! class reads the same way: the config keys and the training noise schedule,
//! the three timestep spacings, the noise draws and the step-index check; and
//! the one implementation of [`Scheduler`]: each class implements the
//! crate-private `SchedulerClass` (what its `set_timesteps` fixed, and its
//! `step`), and the pipeline's questions about timesteps, initial noise and
//! input scaling are answered from that in one place.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::json::JsonConfig;
use sigmas::SigmaSchedule;

mod ddim;
mod ddpm;
mod dpm_solver_multistep;
mod euler;
mod euler_ancestral;
mod heun;
mod lms;
mod pndm;
mod sigmas;
mod unipc;

/// The schedulers of the contract, by diffusers class name: the one list the API accepts
/// and [`build`] builds (`sie-vocab` owns the names).
pub use sie_vocab::SchedulerKind;

/// What the UNet predicts; read from the config's `prediction_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are spread over the training range (`timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

impl TimestepSpacing {
    /// The `n` descending timesteps `set_timesteps` lays over the training range
    /// `0..num_train`: numpy int64 for DDIM, DDPM and PNDM, float32 for LMS,
    /// Heun and the Euler schedulers (see [`TimestepValue`]).
    pub(crate) fn timesteps<T: TimestepValue>(
        self,
        num_train: usize,
        n: usize,
        steps_offset: usize,
    ) -> Vec<T> {
        match self {
            TimestepSpacing::Linspace => linspace_f64(0.0, num_train as f64 - 1.0, n)
                .into_iter()
                .rev()
                .map(T::from_f64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = num_train / n;
                (0..n)
                    .rev()
                    .map(|i| T::from_f64((i * ratio) as f64) + T::from_f64(steps_offset as f64))
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(num_train, num_train, n),
        }
    }

    /// The multistep solvers' layout (DPM-Solver, UniPC), int64: `linspace` and
    /// `leading` lay `n + 1` points over `0..last_timestep` and drop the last
    /// (timestep 0); `trailing` steps down from `last_timestep` by
    /// `num_train / n`. `last_timestep` is `num_train` unless DPM-Solver's
    /// `lambda_min_clipped` cuts the schedule short.
    pub(crate) fn multistep_timesteps(
        self,
        last_timestep: usize,
        num_train: usize,
        n: usize,
        steps_offset: usize,
    ) -> Vec<i64> {
        match self {
            TimestepSpacing::Trailing => trailing(last_timestep, num_train, n),
            TimestepSpacing::Linspace | TimestepSpacing::Leading => {
                let mut t = self.timesteps(last_timestep, n + 1, steps_offset);
                t.pop();
                t
            }
        }
    }
}

/// `np.round(np.arange(start, 0, -num_train / n)) - 1`: the `trailing` spacing.
fn trailing<T: TimestepValue>(start: usize, num_train: usize, n: usize) -> Vec<T> {
    sigmas::arange_f64(start as f64, 0.0, -(num_train as f64 / n as f64))
        .into_iter()
        .map(|t| T::from_f64(t.round_ties_even()) + T::from_f64(-1.0))
        .collect()
}

/// The dtype a class keeps its timesteps in. numpy computes every spacing in
/// float64 and then casts: `linspace` points are rounded half to even into
/// int64 or cast to float32, and the whole-number parts (`i * ratio` and
/// `steps_offset` for `leading`, the rounded point and its `- 1` for
/// `trailing`) are each cast before they are added, in the class's dtype.
pub(crate) trait TimestepValue: Copy + std::ops::Add<Output = Self> {
    fn from_f64(t: f64) -> Self;
}

impl TimestepValue for i64 {
    fn from_f64(t: f64) -> Self {
        t.round_ties_even() as i64
    }
}

impl TimestepValue for f32 {
    fn from_f64(t: f64) -> Self {
        t as f32
    }
}

/// The contents of `scheduler_config.json`, read key by key with each class's defaults
/// (the typed getters `f64_or`, `usize_or`, `bool_or`, `str_or`, `error` come from the loader's `JsonConfig`).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    json: JsonConfig,
}

impl std::ops::Deref for SchedulerConfig {
    type Target = JsonConfig;
    fn deref(&self) -> &JsonConfig {
        &self.json
    }
}

impl SchedulerConfig {
    /// Reads `scheduler_config.json`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        JsonConfig::load(path).map(|json| SchedulerConfig { json })
    }

    /// Parses the JSON text of a scheduler config; `path` is only used in error messages.
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        JsonConfig::from_json(path, text).map(|json| SchedulerConfig { json })
    }

    /// The `_class_name` the model was saved with: its default scheduler.
    pub(crate) fn default_kind(&self) -> Result<SchedulerKind> {
        let name = self.str_or("_class_name", "")?;
        SchedulerKind::parse(&name).map_err(|_| {
            self.error(
                "_class_name",
                format!("scheduler `{name}` is not one we implement"),
            )
        })
    }

    /// `trained_betas`, when the file gives an explicit table.
    pub(crate) fn trained_betas(&self) -> Result<Option<Vec<f64>>> {
        match self.get("trained_betas") {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        self.error("trained_betas", format!("expected numbers, found {v}"))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.error("trained_betas", format!("expected an array, found {v}"))),
        }
    }

    /// `num_train_timesteps`, with every class's default.
    pub(crate) fn num_train_timesteps(&self) -> Result<usize> {
        self.usize_or("num_train_timesteps", 1000)
    }

    pub(crate) fn prediction_type(&self, default: PredictionType) -> Result<PredictionType> {
        self.one_of(
            "prediction_type",
            default,
            &[
                ("epsilon", PredictionType::Epsilon),
                ("v_prediction", PredictionType::VPrediction),
                ("sample", PredictionType::Sample),
            ],
        )
    }

    /// `prediction_type` for a class that cannot step from a predicted clean
    /// sample (PNDM, Euler ancestral): `"sample"` is refused with `refusal`.
    pub(crate) fn noise_or_v_prediction(&self, refusal: &str) -> Result<PredictionType> {
        let prediction = self.prediction_type(PredictionType::Epsilon)?;
        if prediction == PredictionType::Sample {
            return Err(self.error("prediction_type", refusal));
        }
        Ok(prediction)
    }

    pub(crate) fn timestep_spacing(&self, default: TimestepSpacing) -> Result<TimestepSpacing> {
        self.one_of(
            "timestep_spacing",
            default,
            &[
                ("linspace", TimestepSpacing::Linspace),
                ("leading", TimestepSpacing::Leading),
                ("trailing", TimestepSpacing::Trailing),
            ],
        )
    }

    /// A key whose value is one of the strings `choices` names (`default`
    /// when absent); anything else is refused with the accepted names listed.
    pub(crate) fn one_of<T: Copy>(
        &self,
        key: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let chosen = v
            .as_str()
            .and_then(|s| choices.iter().find(|(name, _)| *name == s));
        match chosen {
            Some(&(_, value)) => Ok(value),
            None => {
                let accepted: Vec<String> = choices
                    .iter()
                    .map(|(name, _)| format!("\"{name}\""))
                    .collect();
                Err(self.error(
                    key,
                    format!("unsupported value {v}; accepted: {}", accepted.join(", ")),
                ))
            }
        }
    }

    /// The training noise schedule as diffusers builds it in torch float32:
    /// `betas` from `beta_schedule` (or `trained_betas`), then `alphas_cumprod`,
    /// with the defaults of the DDPM family.
    pub(crate) fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        self.alphas_cumprod_with(BetaDefaults::DDPM_FAMILY, &[])
    }

    /// [`SchedulerConfig::alphas_cumprod`] for a class with its own `beta_start`
    /// and `beta_end` defaults, or accepting `extra` schedules beyond `linear`,
    /// `scaled_linear` and `squaredcos_cap_v2` (DDPM: `sigmoid`, `laplace`;
    /// Heun: `exp`).
    pub(crate) fn alphas_cumprod_with(
        &self,
        defaults: BetaDefaults,
        extra: &[&str],
    ) -> Result<Vec<f32>> {
        const COMMON: [&str; 3] = ["linear", "scaled_linear", "squaredcos_cap_v2"];
        let n = self.num_train_timesteps()?;
        let start = self.f64_or("beta_start", defaults.start)?;
        let end = self.f64_or("beta_end", defaults.end)?;
        let betas: Vec<f32> = if let Some(t) = self.trained_betas()? {
            t.into_iter().map(|b| b as f32).collect()
        } else {
            match self.str_or("beta_schedule", "linear")?.as_str() {
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
                    return Err(self.error(
                        "beta_schedule",
                        format!(
                            "unsupported value \"{other}\"; accepted: {}",
                            accepted.join(", ")
                        ),
                    ));
                }
            }
        };
        Ok(cumprod_of_alphas(betas.into_iter().map(|b| 1.0 - b)))
    }
}

/// The `beta_start`/`beta_end` a class falls back to when the config omits them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BetaDefaults {
    pub start: f64,
    pub end: f64,
}

impl BetaDefaults {
    /// DDPM, DDIM, PNDM, LMS and the rest: the original DDPM paper's range.
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

/// `torch.cumprod` of a float32 tensor on the CPU: the running product is kept
/// in double and rounded to float32 only when stored.
fn cumprod_of_alphas(alphas: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1f64;
    alphas
        .into_iter()
        .map(|a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
}

/// `torch.linspace(start, end, n, dtype=torch.float32)`: torch fills the first
/// half from `start` and the second half from `end` backwards, in f32.
pub(crate) fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `numpy.linspace(start, end, n)` in float64.
pub(crate) fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// Draws a standard-normal tensor shaped like the latents from the request's
/// generator; stochastic schedulers call it exactly where diffusers calls `randn_tensor`.
pub type NoiseSource<'a> = dyn FnMut() -> candle_core::Result<Tensor> + 'a;

/// One draw from `noise`, in the dtype and on the device of `like`.
fn draw_noise(noise: &mut NoiseSource<'_>, like: &Tensor) -> Result<Tensor> {
    Ok(noise()?.to_dtype(like.dtype())?.to_device(like.device())?)
}

/// Refuses a step index past the last timestep: diffusers' `_step_index`
/// would run off its tables there, and so would ours.
fn check_step_index(step_index: usize, num_timesteps: usize) -> Result<()> {
    if step_index >= num_timesteps {
        return Err(Error::invalid(
            "step_index",
            format!("{step_index} is past the last of {num_timesteps} timesteps"),
        ));
    }
    Ok(())
}

/// One scheduler instance, set up for a fixed number of inference steps.
pub trait Scheduler: Send {
    /// The timesteps at which the UNet is evaluated, in order; `step` is called once per entry.
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial noise: the pipeline multiplies the seed's noise by it.
    fn init_noise_sigma(&self) -> f64;

    /// Scales the latents before the UNet call at `step_index` (identity for DDIM-like schedulers).
    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor>;

    /// Advances `sample` by one entry of [`Scheduler::timesteps`] given the model output there.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor>;

    /// diffusers' `scheduler.order`: how many entries of [`Scheduler::timesteps`] make one
    /// inference step (2 for Heun, which evaluates the model twice; 1 for the rest). An
    /// image-to-image run that skips the first `k` inference steps starts at entry `k * order`.
    fn order(&self) -> usize;

    /// diffusers' `add_noise` once the pipeline has set the scheduler's begin index:
    /// `original` (clean latents) noised with `noise` to the level of entry `step_index` of
    /// [`Scheduler::timesteps`], each class in its own parametrisation, in the dtype of
    /// `original` as diffusers computes it.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor>;
}

/// A diffusers scheduler class as its file rewrites it: what its
/// `set_timesteps` fixed, and its `step`. [`Scheduler`] is implemented once,
/// for every class, from these two.
trait SchedulerClass: Send {
    fn schedule(&self) -> Schedule<'_>;

    /// [`Scheduler::step`], at a step index within the timesteps.
    fn step(&mut self, at: StepIn<'_, '_>) -> Result<Tensor>;

    /// How this class's `add_noise` noises clean latents to entry `step_index` (within the
    /// timesteps) of its schedule.
    fn noise_level(&self, step_index: usize) -> NoiseLevel;

    /// [`Scheduler::order`].
    fn order(&self) -> usize {
        1
    }
}

/// The three ways diffusers' classes add noise in `add_noise`, each at one level.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NoiseLevel {
    /// The DDPM family (DDIM, DDPM, PNDM): `sqrt(a) * x + sqrt(1 - a) * noise`, with `a`
    /// the training `alphas_cumprod` at the entry's timestep.
    AlphaProduct(f32),
    /// The sigma-space classes (LMS, Heun, Euler, Euler ancestral): `x + noise * sigma`.
    Sigma(f32),
    /// The multistep solvers (DPM-Solver, UniPC), which keep sigmas but noise as the
    /// variance-preserving process does: `alpha_t * x + sigma_t * noise`, with
    /// `alpha_t = 1 / sqrt(sigma^2 + 1)` and `sigma_t = sigma * alpha_t`.
    VpSigma(f32),
}

impl NoiseLevel {
    /// diffusers moves the table to the samples' dtype first and computes the two scales in
    /// it, so in float16 each operation rounds to float16 (`round` below; identity in f32).
    fn apply(self, original: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let round = |v: f32| -> f32 {
            match original.dtype() {
                DType::F16 => half::f16::from_f32(v).to_f32(),
                DType::BF16 => half::bf16::from_f32(v).to_f32(),
                _ => v,
            }
        };
        let (x_scale, noise_scale) = match self {
            NoiseLevel::AlphaProduct(a) => {
                let a = round(a);
                (round(a.sqrt()), round(round(1.0 - a).sqrt()))
            }
            NoiseLevel::Sigma(sigma) => (1.0, round(sigma)),
            NoiseLevel::VpSigma(sigma) => {
                let sigma = round(sigma);
                let alpha = round(1.0 / round(round(round(sigma * sigma) + 1.0).sqrt()));
                (alpha, round(sigma * alpha))
            }
        };
        let noise = noise.to_dtype(original.dtype())?;
        let scaled_noise = noise.affine(noise_scale as f64, 0.0)?;
        if x_scale == 1.0 {
            return Ok((original + scaled_noise)?);
        }
        Ok((original.affine(x_scale as f64, 0.0)? + scaled_noise)?)
    }
}

/// The operands of one [`Scheduler::step`], as one value, so that every class's step has
/// the same short signature.
struct StepIn<'a, 'n> {
    /// The UNet's output at this step.
    output: &'a Tensor,
    /// The index into the timesteps, already checked to be within them.
    index: usize,
    /// The latents the UNet ran on.
    sample: &'a Tensor,
    noise: &'a mut NoiseSource<'n>,
}

/// What the pipeline reads of a class before each step: its timesteps, the
/// initial noise sigma, and how the UNet's input is scaled.
enum Schedule<'a> {
    /// The latents start from unit noise and reach the UNet as they are
    /// (DDIM, DDPM, PNDM, DPM-Solver, UniPC).
    Unscaled(&'a [f64]),
    /// Sigmas set the initial noise and scale the input (LMS, Heun, Euler,
    /// Euler ancestral).
    Sigmas(&'a SigmaSchedule),
}

impl<C: SchedulerClass> Scheduler for C {
    fn timesteps(&self) -> &[f64] {
        match self.schedule() {
            Schedule::Unscaled(timesteps) => timesteps,
            Schedule::Sigmas(schedule) => &schedule.timesteps,
        }
    }

    fn init_noise_sigma(&self) -> f64 {
        match self.schedule() {
            Schedule::Unscaled(_) => 1.0,
            Schedule::Sigmas(schedule) => schedule.init_noise_sigma as f64,
        }
    }

    fn scale_model_input(&self, sample: Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps().len())?;
        match self.schedule() {
            Schedule::Unscaled(_) => Ok(sample),
            Schedule::Sigmas(schedule) => schedule.scale_model_input(sample, step_index),
        }
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut NoiseSource<'_>,
    ) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps().len())?;
        let at = StepIn {
            output: model_output,
            index: step_index,
            sample,
            noise,
        };
        SchedulerClass::step(self, at)
    }

    fn order(&self) -> usize {
        SchedulerClass::order(self)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(step_index, self.timesteps().len())?;
        self.noise_level(step_index).apply(original, noise)
    }
}

/// Builds `kind` from the model's scheduler config for `num_inference_steps` steps.
/// `eta` is the request's DDIM eta (diffusers passes it to `step`); other schedulers ignore it.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    eta: f64,
) -> Result<Box<dyn Scheduler>> {
    if num_inference_steps == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    match kind {
        SchedulerKind::Ddim => Ok(Box::new(ddim::Ddim::new(config, num_inference_steps, eta)?)),
        SchedulerKind::Ddpm => Ok(Box::new(ddpm::Ddpm::new(config, num_inference_steps)?)),
        SchedulerKind::Pndm => Ok(Box::new(pndm::Pndm::new(config, num_inference_steps)?)),
        SchedulerKind::LmsDiscrete => Ok(Box::new(lms::Lms::new(config, num_inference_steps)?)),
        SchedulerKind::HeunDiscrete => Ok(Box::new(heun::Heun::new(config, num_inference_steps)?)),
        SchedulerKind::EulerDiscrete => Ok(Box::new(euler::EulerDiscrete::new(
            config,
            num_inference_steps,
        )?)),
        SchedulerKind::EulerAncestralDiscrete => Ok(Box::new(
            euler_ancestral::EulerAncestralDiscrete::new(config, num_inference_steps)?,
        )),
        SchedulerKind::DpmSolverMultistep => Ok(Box::new(
            dpm_solver_multistep::DpmSolverMultistep::new(config, num_inference_steps)?,
        )),
        SchedulerKind::UniPcMultistep => Ok(Box::new(unipc::UniPcMultistep::new(
            config,
            num_inference_steps,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_timesteps_round_half_to_even() {
        // np.linspace(0, 999, 3) = [0, 499.5, 999]; numpy rounds 499.5 to 500.
        assert_eq!(
            TimestepSpacing::Linspace.timesteps::<i64>(1000, 3, 0),
            vec![999, 500, 0]
        );
        // np.round(np.arange(1000, 0, -62.5)) - 1 rounds 937.5 to 938.
        let t = TimestepSpacing::Trailing.timesteps::<i64>(1000, 16, 0);
        assert_eq!(&t[..3], &[999, 937, 874]);
    }

    #[test]
    fn heun_beta_defaults_apply_when_missing() {
        let config = |json: &str| SchedulerConfig::from_json(Path::new("s.json"), json).unwrap();
        let ours = config("{}")
            .alphas_cumprod_with(BetaDefaults::HEUN, &["exp"])
            .unwrap();
        let explicit = config(r#"{"beta_start": 0.00085, "beta_end": 0.012}"#)
            .alphas_cumprod()
            .unwrap();
        assert_eq!(ours, explicit);
    }

    #[test]
    fn unknown_beta_schedule_lists_the_class_choices() {
        let json = r#"{"beta_schedule": "cubic"}"#;
        let config = SchedulerConfig::from_json(Path::new("s.json"), json).unwrap();
        let err = config
            .alphas_cumprod_with(BetaDefaults::DDPM_FAMILY, &["sigmoid", "laplace"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`beta_schedule`") && err.contains("\"laplace\""),
            "{err}"
        );
    }
}
