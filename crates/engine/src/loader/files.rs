//! The model directory's files, found, parsed and checked, no tensors loaded.
//!
//! The directory is the contract: `model_index.json`, `scheduler/`, `text_encoder/`,
//! `tokenizer/`, `unet/`, `vae/`, each weight file either `*.safetensors` or its
//! `*.fp16.safetensors` variant. [`ModelFiles`] reads every config (through the networks'
//! and the scheduler's own parsers), checks that they fit together, and finds the weights:
//! what `sie model check` shows before anything is loaded onto a device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::json::{FromJson, JsonConfig};
use super::original::{self, Configs, SingleFileOptions, TokenizerSource};
use super::weights::WeightsFile;
use crate::error::{Error, Result};
use crate::networks::{ClipTextConfig, UNetConfig, VaeConfig};
use crate::scheduler::{PredictionType, SchedulerConfig};

/// Pipelines whose directories share SD 2.x's layout.
const PIPELINE_CLASSES: [&str; 3] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
];

/// Everything in a model directory, parsed and checked, no tensors loaded.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub root: PathBuf,
    pub pipeline_class: String,
    pub(crate) text_encoder: ClipTextConfig,
    pub(crate) unet: UNetConfig,
    pub(crate) vae: VaeConfig,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) text_encoder_weights: WeightsFile,
    pub(crate) unet_weights: WeightsFile,
    pub(crate) vae_weights: WeightsFile,
    /// Where the tokenizer is read from.
    pub tokenizer: TokenizerSource,
    /// A single file's layout and what was inferred of it (`sie model check`), and its
    /// configs as diffusers writes them (`sie model convert`); `None` for a directory.
    pub(crate) single_file: Option<SingleFile>,
}

/// What a single-file checkpoint adds to [`ModelFiles`].
#[derive(Debug, Clone)]
pub(crate) struct SingleFile {
    /// `--config DIR`, whose `safety_checker/` (if any) is the file's default checker.
    pub(crate) config_dir: Option<PathBuf>,
    pub(crate) report: Vec<(&'static str, String)>,
    pub(crate) configs: Configs,
    pub(crate) scheduler: serde_json::Value,
}

impl ModelFiles {
    /// Finds and parses every file of the directory `root`, and checks that they fit together.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, &SingleFileOptions::default())
    }

    /// [`ModelFiles::open`] for a directory; for a file, a single-file checkpoint in the
    /// original SD 2.x layout, with what the file cannot say taken from `options`.
    pub fn open_with(root: &Path, options: &SingleFileOptions) -> Result<Self> {
        if !root.is_dir() && !root.is_file() {
            return Err(Error::File {
                path: root.to_owned(),
                message: "no such file or directory; expected a diffusers-layout Stable Diffusion \
                          2.x directory (model_index.json, scheduler/, text_encoder/, tokenizer/, \
                          unet/, vae/) or a single .safetensors checkpoint in the original layout"
                    .into(),
            });
        }
        if root.is_file() {
            let opened = original::open(root, options)?;
            let [text_encoder_weights, unet_weights, vae_weights] = opened.weights;
            let files = ModelFiles {
                root: root.to_owned(),
                pipeline_class: opened.pipeline_class,
                text_encoder: opened.text_encoder,
                unet: opened.unet,
                vae: opened.vae,
                scheduler: opened.scheduler,
                text_encoder_weights,
                unet_weights,
                vae_weights,
                tokenizer: opened.tokenizer,
                single_file: Some(SingleFile {
                    config_dir: options.config.clone(),
                    report: opened.report,
                    configs: opened.configs,
                    scheduler: opened.scheduler_json,
                }),
            };
            files.check(root)?;
            return Ok(files);
        }
        if *options != SingleFileOptions::default() {
            return Err(Error::File {
                path: root.to_owned(),
                message: "--prediction-type and --config apply to a single-file checkpoint; a \
                          diffusers directory says both in its own files"
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
        let files = ModelFiles {
            pipeline_class,
            text_encoder_weights: WeightsFile::find(&root.join("text_encoder"), "model")?,
            unet_weights: WeightsFile::find(&root.join("unet"), "diffusion_pytorch_model")?,
            vae_weights: WeightsFile::find(&root.join("vae"), "diffusion_pytorch_model")?,
            text_encoder,
            unet,
            vae,
            scheduler,
            tokenizer: TokenizerSource::Dir(root.join("tokenizer")),
            single_file: None,
            root: root.to_owned(),
        };
        files.check(&root.join("unet/config.json"))?;
        Ok(files)
    }

    /// Checks that the configs fit together; `unet_path` is what errors about the UNet name.
    fn check(&self, unet_path: &Path) -> Result<()> {
        let (text_encoder, unet, vae, scheduler) =
            (&self.text_encoder, &self.unet, &self.vae, &self.scheduler);
        // Building the model's own scheduler once checks every value it reads now, at load,
        // instead of at the first request.
        crate::scheduler::build(scheduler.default_kind()?, scheduler, 1, 0.0)?;
        scheduler.prediction_type(PredictionType::Epsilon)?;
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
        Ok(())
    }

    /// The directory whose `safety_checker/` the model checks with by default: the model
    /// directory, or for a single file the `--config` directory, when it has one.
    pub(crate) fn default_checker_dir(&self) -> Option<PathBuf> {
        let dir = match &self.single_file {
            None => Some(self.root.clone()),
            Some(single) => single.config_dir.clone(),
        }?;
        dir.join("safety_checker").is_dir().then_some(dir)
    }

    /// Writes this single-file checkpoint as a diffusers directory at `out` (which must not
    /// exist): `sie model convert`.
    pub fn convert(&self, out: &Path) -> Result<()> {
        original::convert::convert(self, out)
    }

    /// The image size the model was trained at (768 for SD 2.1, 512 for 2.1-base).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size * self.vae.scale_factor()
    }

    /// Whether the UNet is an inpainting one (stable-diffusion-2-inpainting): its input is the
    /// latents, the mask and the masked image's latents, `2 * latent_channels + 1` channels.
    pub fn is_inpainting(&self) -> bool {
        self.unet.in_channels == 2 * self.vae.latent_channels + 1
    }

    /// What the UNet predicts (the scheduler config's `prediction_type`).
    pub fn prediction_type(&self) -> PredictionType {
        // Checked in `open`.
        self.scheduler
            .prediction_type(PredictionType::Epsilon)
            .unwrap_or(PredictionType::Epsilon)
    }

    /// The parameters of the text encoder, the UNet and the VAE together.
    pub fn parameters(&self) -> usize {
        self.text_encoder_weights.parameters
            + self.unet_weights.parameters
            + self.vae_weights.parameters
    }

    /// A human-readable summary, one `key: value` per entry (what `sie model check` prints).
    pub fn summary(&self) -> BTreeMap<&'static str, String> {
        let mut s = BTreeMap::new();
        s.insert("model", self.root.display().to_string());
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
                format!("{} ({:?}, {})", w.parameters, w.dtype, w.describe()),
            );
        }
        s.insert(
            "tokenizer",
            match &self.tokenizer {
                TokenizerSource::BuiltInSd2 => "SD 2.x's OpenCLIP tokenizer (built in)".into(),
                TokenizerSource::Dir(dir) if dir.join("tokenizer.json").is_file() => {
                    "tokenizer.json".into()
                }
                TokenizerSource::Dir(_) => "vocab.json and merges.txt".into(),
            },
        );
        match &self.single_file {
            Some(single) => {
                for (key, value) in &single.report {
                    s.insert(key, value.clone());
                }
            }
            None => {
                s.insert("layout", "a diffusers directory".into());
            }
        }
        s
    }
}
