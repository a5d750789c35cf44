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

use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::json::JsonConfig;

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

    pub(crate) fn prediction_type(&self, default: PredictionType) -> Result<PredictionType> {
        match self.get("prediction_type") {
            None => Ok(default),
            Some(v) => match v.as_str() {
                Some("epsilon") => Ok(PredictionType::Epsilon),
                Some("v_prediction") => Ok(PredictionType::VPrediction),
                Some("sample") => Ok(PredictionType::Sample),
                _ => Err(self.error(
                    "prediction_type",
                    format!("unsupported value {v}; accepted: \"epsilon\", \"v_prediction\", \"sample\""),
                )),
            },
        }
    }

    pub(crate) fn timestep_spacing(&self, default: TimestepSpacing) -> Result<TimestepSpacing> {
        match self.get("timestep_spacing") {
            None => Ok(default),
            Some(v) => match v.as_str() {
                Some("linspace") => Ok(TimestepSpacing::Linspace),
                Some("leading") => Ok(TimestepSpacing::Leading),
                Some("trailing") => Ok(TimestepSpacing::Trailing),
                _ => Err(self.error(
                    "timestep_spacing",
                    format!(
                        "unsupported value {v}; accepted: \"linspace\", \"leading\", \"trailing\""
                    ),
                )),
            },
        }
    }

    /// The training noise schedule as diffusers builds it in torch float32:
    /// `betas` from `beta_schedule` (or `trained_betas`), then `alphas_cumprod`.
    pub(crate) fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        let n = self.usize_or("num_train_timesteps", 1000)?;
        let start = self.f64_or("beta_start", 0.0001)?;
        let end = self.f64_or("beta_end", 0.02)?;
        let betas: Vec<f32> = if let Some(t) = self.trained_betas()? {
            t.into_iter().map(|b| b as f32).collect()
        } else {
            match self.str_or("beta_schedule", "linear")?.as_str() {
                "linear" => linspace_f32(start as f32, end as f32, n),
                "scaled_linear" => linspace_f32((start.sqrt()) as f32, (end.sqrt()) as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                "squaredcos_cap_v2" => squaredcos_cap_v2(n),
                other => {
                    return Err(self.error(
                        "beta_schedule",
                        format!("unsupported value \"{other}\"; accepted: \"linear\", \"scaled_linear\", \"squaredcos_cap_v2\""),
                    ))
                }
            }
        };
        // torch's CPU cumprod keeps its running product in f64 and rounds each entry to f32.
        let mut acc = 1f64;
        Ok(betas
            .into_iter()
            .map(|b| {
                acc *= (1.0 - b) as f64;
                acc as f32
            })
            .collect())
    }
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

/// diffusers' `betas_for_alpha_bar` with the cosine transform, capped at 0.999.
fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Draws a standard-normal tensor shaped like the latents from the request's
/// generator; stochastic schedulers call it exactly where diffusers calls `randn_tensor`.
pub type NoiseSource<'a> = dyn FnMut() -> candle_core::Result<Tensor> + 'a;

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
