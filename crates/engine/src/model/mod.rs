//! Loading a diffusers-layout Stable Diffusion 2.x directory.
//!
//! The directory is the contract: `model_index.json`, `scheduler/`,
//! `text_encoder/`, `tokenizer/`, `unet/`, `vae/`, each weight file either
//! `*.safetensors` or its `*.fp16.safetensors` variant. [`ModelFiles`] finds and
//! parses everything without touching tensors (what `sie model check` shows);
//! [`StableDiffusion`] then builds the networks on a device. Every failure names
//! the file, and the field or tensor, at fault. A `safety_checker/` (with
//! `feature_extractor/`), when present, is loaded too unless the caller says
//! otherwise ([`SafetyCheckerSource`]).

pub mod activation;
pub mod attention;
pub mod blocks;
pub mod clip;
pub mod config;
pub mod conv;
pub mod linear;
pub mod norm;
pub mod profile;
pub mod unet;
pub mod vae;
mod vector;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::json_config::JsonConfig;
use crate::safety::SafetyChecker;
use crate::scheduler::{PredictionType, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use clip::ClipTextEncoder;
use config::{ClipTextConfig, UNetConfig, VaeConfig};
use unet::UNet;
use vae::Vae;

/// The elements of a contiguous operand of our CPU kernels (`op` names the kernel in the
/// error; callers make their operands contiguous first, so this is a guard).
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs contiguous operands"),
    }
}

/// Pipelines whose directories share SD 2.x's layout.
const PIPELINE_CLASSES: [&str; 3] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
];

/// One weights file and what its header says.
#[derive(Debug, Clone)]
pub struct WeightsFile {
    pub path: PathBuf,
    pub dtype: DType,
    pub parameters: usize,
}

impl WeightsFile {
    /// Finds `{stem}.safetensors`, else `{stem}.fp16.safetensors`, in `dir`, and reads its header.
    pub(crate) fn find(dir: &Path, stem: &str) -> Result<Self> {
        let full = dir.join(format!("{stem}.safetensors"));
        let half = dir.join(format!("{stem}.fp16.safetensors"));
        let path = if full.is_file() {
            full
        } else if half.is_file() {
            half
        } else {
            return Err(Error::File {
                path: full,
                message: format!(
                    "missing: the weights must be `{stem}.safetensors` or `{stem}.fp16.safetensors` \
                     (convert .bin checkpoints to safetensors first)"
                ),
            });
        };
        // SAFETY: the mapping is read-only and dropped before this function returns;
        // a weights file changed underneath a running server is an operator error we cannot guard.
        let tensors =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }.map_err(|e| {
                Error::File {
                    path: path.clone(),
                    message: format!("not a readable safetensors file: {e}"),
                }
            })?;
        let mut dtype = None;
        let mut parameters = 0;
        for (_, view) in tensors.tensors() {
            parameters += view.shape().iter().product::<usize>();
            dtype.get_or_insert(view.dtype());
        }
        let dtype = match dtype {
            Some(safetensors::Dtype::F16) => DType::F16,
            Some(safetensors::Dtype::BF16) => DType::BF16,
            Some(safetensors::Dtype::F32) => DType::F32,
            other => {
                return Err(Error::File {
                    path,
                    message: format!("weights of type {other:?}; accepted: F32, F16, BF16"),
                })
            }
        };
        Ok(WeightsFile {
            path,
            dtype,
            parameters,
        })
    }

    /// A VarBuilder over this file converting to `dtype` on `device`.
    pub(crate) fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        // SAFETY: as in `find`; the mapping lives as long as the VarBuilder that reads it.
        unsafe { VarBuilder::from_mmaped_safetensors(&[&self.path], dtype, device) }.map_err(|e| {
            Error::File {
                path: self.path.clone(),
                message: format!("cannot map the weights: {e}"),
            }
        })
    }

    /// Wraps a failure while building a network from this file (a missing tensor or a wrong
    /// shape: candle's message names the tensor).
    pub(crate) fn build_error(&self, e: candle_core::Error) -> Error {
        Error::File {
            path: self.path.clone(),
            message: format!("does not match its config: {e}"),
        }
    }
}

/// Everything in a model directory, parsed and checked, no tensors loaded.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub root: PathBuf,
    pub pipeline_class: String,
    pub text_encoder: ClipTextConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
    pub text_encoder_weights: WeightsFile,
    pub unet_weights: WeightsFile,
    pub vae_weights: WeightsFile,
}

impl ModelFiles {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::File {
                path: root.to_owned(),
                message: "not a directory; expected a diffusers-layout Stable Diffusion 2.x model \
                          (model_index.json, scheduler/, text_encoder/, tokenizer/, unet/, vae/)"
                    .into(),
            });
        }
        let index = JsonConfig::load(&root.join("model_index.json"))?;
        let pipeline_class = index.str_or("_class_name", "")?;
        if !PIPELINE_CLASSES.contains(&pipeline_class.as_str()) {
            return Err(index.error(
                "_class_name",
                format!(
                    "\"{pipeline_class}\" is not supported; accepted: {}",
                    PIPELINE_CLASSES.join(", ")
                ),
            ));
        }
        for component in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
            if index.get(component).is_none() {
                return Err(index.error(component, "missing; a Stable Diffusion pipeline needs it"));
            }
        }
        let text_encoder = ClipTextConfig::load(&root.join("text_encoder/config.json"))?;
        let unet = UNetConfig::load(&root.join("unet/config.json"))?;
        let vae = VaeConfig::load(&root.join("vae/config.json"))?;
        let scheduler = SchedulerConfig::load(&root.join("scheduler/scheduler_config.json"))?;
        // Building the model's own scheduler once checks every value it reads now, at load,
        // instead of at the first request.
        crate::scheduler::build(scheduler.default_kind()?, &scheduler, 1, 0.0)?;
        scheduler.prediction_type(PredictionType::Epsilon)?;
        let unet_path = root.join("unet/config.json");
        if unet.cross_attention_dim != text_encoder.hidden_size {
            return Err(Error::config(
                unet_path,
                "cross_attention_dim",
                format!(
                    "{} does not match the text encoder's hidden_size {}",
                    unet.cross_attention_dim, text_encoder.hidden_size
                ),
            ));
        }
        if unet.in_channels != vae.latent_channels
            && unet.in_channels != 2 * vae.latent_channels + 1
        {
            return Err(Error::config(
                unet_path,
                "in_channels",
                format!(
                    "{} does not fit the VAE's {} latent channels (expected {} for text-to-image, {} for inpainting)",
                    unet.in_channels,
                    vae.latent_channels,
                    vae.latent_channels,
                    2 * vae.latent_channels + 1
                ),
            ));
        }
        Ok(ModelFiles {
            pipeline_class,
            text_encoder_weights: WeightsFile::find(&root.join("text_encoder"), "model")?,
            unet_weights: WeightsFile::find(&root.join("unet"), "diffusion_pytorch_model")?,
            vae_weights: WeightsFile::find(&root.join("vae"), "diffusion_pytorch_model")?,
            text_encoder,
            unet,
            vae,
            scheduler,
            root: root.to_owned(),
        })
    }

    /// The image size the model was trained at (768 for SD 2.1, 512 for 2.1-base).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size * self.vae.scale_factor()
    }

    pub fn prediction_type(&self) -> PredictionType {
        // Checked in `open`.
        self.scheduler
            .prediction_type(PredictionType::Epsilon)
            .unwrap_or(PredictionType::Epsilon)
    }

    /// A human-readable summary, one `key: value` per entry (what `sie model check` prints).
    pub fn summary(&self) -> BTreeMap<&'static str, String> {
        let mut s = BTreeMap::new();
        s.insert("directory", self.root.display().to_string());
        s.insert("pipeline", self.pipeline_class.clone());
        s.insert("native_size", format!("{0}x{0}", self.native_size()));
        s.insert("prediction_type", format!("{:?}", self.prediction_type()));
        s.insert(
            "scheduler",
            self.scheduler
                .default_kind()
                .map(|k| k.to_string())
                .unwrap_or_default(),
        );
        s.insert(
            "variant",
            match (self.native_size(), self.prediction_type()) {
                (768, PredictionType::VPrediction) => {
                    "stable-diffusion-2-1 (768, v-prediction)".into()
                }
                (512, PredictionType::Epsilon)
                    if self.unet.block_out_channels == [320, 640, 1280, 1280] =>
                {
                    "stable-diffusion-2-1-base (512, epsilon)".into()
                }
                (size, p) => format!("custom SD 2.x-style model ({size}, {p:?})"),
            },
        );
        for (name, w) in [
            ("text_encoder", &self.text_encoder_weights),
            ("unet", &self.unet_weights),
            ("vae", &self.vae_weights),
        ] {
            s.insert(
                match name {
                    "text_encoder" => "text_encoder_parameters",
                    "unet" => "unet_parameters",
                    _ => "vae_parameters",
                },
                format!("{} ({:?}, {})", w.parameters, w.dtype, w.path.display()),
            );
        }
        s
    }
}

/// Which safety checker a model loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SafetyCheckerSource {
    /// The model directory's own `safety_checker/`, when it has one; else none.
    #[default]
    ModelDefault,
    /// No checker, even if the directory has one.
    Disabled,
    /// This directory's (a checker directory, or a pipeline directory with `safety_checker/`).
    Dir(PathBuf),
}

/// Options for building the networks.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype; f32 on CPU (candle's CPU kernels lack f16/bf16 convolutions).
    pub dtype: DType,
    pub safety_checker: SafetyCheckerSource,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            safety_checker: SafetyCheckerSource::ModelDefault,
        }
    }
}

/// A loaded Stable Diffusion 2.x model, ready to generate.
pub struct StableDiffusion {
    pub files: ModelFiles,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextEncoder,
    pub unet: UNet,
    pub vae: Vae,
    /// Applied after decoding when a request asks for it.
    pub safety_checker: Option<SafetyChecker>,
    pub device: Device,
    pub dtype: DType,
}

impl StableDiffusion {
    pub fn load(root: &Path, options: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::open(root)?;
        let tokenizer = ClipTokenizer::from_dir(&root.join("tokenizer"))?;
        let (device, dtype) = (&options.device, options.dtype);

        let w = &files.text_encoder_weights;
        let text_encoder = ClipTextEncoder::new(w.var_builder(dtype, device)?, &files.text_encoder)
            .map_err(|e| w.build_error(e))?;

        let w = &files.unet_weights;
        let unet =
            UNet::new(w.var_builder(dtype, device)?, &files.unet).map_err(|e| w.build_error(e))?;

        let w = &files.vae_weights;
        let vae =
            Vae::new(w.var_builder(dtype, device)?, &files.vae).map_err(|e| w.build_error(e))?;

        let checker_dir = match &options.safety_checker {
            SafetyCheckerSource::ModelDefault => root
                .join("safety_checker")
                .is_dir()
                .then(|| root.to_owned()),
            SafetyCheckerSource::Disabled => None,
            SafetyCheckerSource::Dir(dir) => Some(dir.clone()),
        };
        let safety_checker = checker_dir
            .map(|dir| SafetyChecker::load(&dir, device, dtype))
            .transpose()?;

        Ok(StableDiffusion {
            files,
            tokenizer,
            text_encoder,
            unet,
            vae,
            safety_checker,
            device: device.clone(),
            dtype,
        })
    }
}
