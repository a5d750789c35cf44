//! The loader: a diffusers-layout Stable Diffusion 2.x directory to networks on a device.
//!
//! `files.rs` finds and parses every file without touching tensors ([`ModelFiles`]);
//! [`StableDiffusion::load`] then builds the tokenizer, the networks and, unless the
//! caller says otherwise ([`SafetyCheckerSource`]), the directory's `safety_checker/` on
//! the device [`LoadOptions`] names. Every failure names the file, and the field or tensor,
//! at fault.
//!
//! The loader's two readers, `json.rs` (`JsonConfig`) and `weights.rs` (`WeightsFile`),
//! import nothing of the engine but its error type. The networks' configs, the scheduler
//! config and the safety checker read their files through them, and this module and
//! `files.rs`, which build all of those, sit above them: the dependencies run one way, so
//! no module imports one that imports it back (the old `model` <-> `safety` cycle).

mod files;
pub(crate) mod json;
pub(crate) mod original;
pub(crate) mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::networks::{ClipTextEncoder, UNet, Vae};
use crate::safety::SafetyChecker;
use crate::tokenizer::ClipTokenizer;

pub use files::ModelFiles;
pub use original::{SingleFileOptions, TokenizerSource};

/// Which safety checker a model loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SafetyCheckerSource {
    /// The model directory's own `safety_checker/` (for a single file, the `--config`
    /// directory's), when it has one; else none.
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
    /// Where the networks run; open it from a [`DeviceSpec`](crate::DeviceSpec).
    pub device: Device,
    /// Their precision; the CPU runs f32 ([`DeviceSpec::open`](crate::DeviceSpec::open)
    /// refuses other dtypes there).
    pub dtype: DType,
    pub safety_checker: SafetyCheckerSource,
    /// What a single-file checkpoint cannot say of itself (unused for a directory).
    pub single_file: SingleFileOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            safety_checker: SafetyCheckerSource::ModelDefault,
            single_file: SingleFileOptions::default(),
        }
    }
}

/// A loaded Stable Diffusion 2.x model, ready to generate.
pub struct StableDiffusion {
    pub files: ModelFiles,
    pub tokenizer: ClipTokenizer,
    text_encoder: ClipTextEncoder,
    unet: UNet,
    vae: Vae,
    /// Applied after decoding when a request asks for it.
    pub safety_checker: Option<SafetyChecker>,
    pub device: Device,
    pub dtype: DType,
}

impl StableDiffusion {
    /// Opens the directory or single file `root` ([`ModelFiles::open_with`]) and builds every network, the
    /// tokenizer and the safety checker `options` names, on `options.device`.
    pub fn load(root: &Path, options: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::open_with(root, &options.single_file)?;
        let tokenizer = match &files.tokenizer {
            TokenizerSource::Dir(dir) => ClipTokenizer::from_dir(dir)?,
            TokenizerSource::BuiltInSd2 => ClipTokenizer::sd2()?,
        };
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
            SafetyCheckerSource::ModelDefault => files.default_checker_dir(),
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

    /// How many images one UNet batch at `width` x `height` fits in the device's free memory
    /// now (at most `cap`; one on the CPU): the worker's default `--max-batch`.
    pub fn batch_fit(&self, width: usize, height: usize, cap: usize) -> Result<crate::BatchFit> {
        crate::memory::fit(
            &self.files.unet,
            self.files.vae.scale_factor(),
            self.dtype,
            &self.device,
            (width, height),
            cap,
        )
    }

    /// The device and precision the networks run on.
    pub fn runs_on(&self) -> crate::RunsOn {
        crate::RunsOn::of(&self.device, self.dtype)
    }

    /// Token ids (one sequence) to (1, seq, hidden) embeddings.
    pub fn encode_text(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        Ok(self.text_encoder.forward(&ids)?.to_dtype(self.dtype)?)
    }

    /// One UNet evaluation: `sample` (batch, in_channels, h, w) at `timestep`, conditioned on
    /// `context` (batch, tokens, cross_attention_dim); the prediction, shaped like `sample`.
    pub fn unet_forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        Ok(self.unet.forward(sample, &[timestep], context)?)
    }

    /// [`StableDiffusion::unet_forward`] with a timestep per row of `sample`: several runs at
    /// different steps evaluated as one batch.
    pub fn unet_forward_rows(
        &self,
        sample: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
    ) -> Result<Tensor> {
        Ok(self.unet.forward(sample, timesteps, context)?)
    }

    /// Latents (already divided by the VAE's `scaling_factor`) to an image in about [-1, 1].
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.vae.decode(latents)?)
    }

    /// An image (batch, 3, h, w) in [-1, 1] to the VAE's latent moments (mean, then
    /// log-variance).
    pub fn vae_encode_moments(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.vae.encode_moments(image)?)
    }
}
