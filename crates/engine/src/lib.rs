//! Stable Diffusion 2.x on candle.
//!
//! # Layout
//! Four floors, each using only the ones below it:
//! - `kernels`: the device kernels; `kernels/mod.rs` is the one place a network calls an op
//!   we have kernels for, and picks our CPU kernel (`kernels/cpu/`) or candle's ops.
//! - `networks`: the text encoder, UNet and VAE (and their blocks, layers and configs),
//!   device-agnostic.
//! - `loader`: the model directory: [`ModelFiles`] (every file, parsed and checked) and
//!   [`StableDiffusion`] (the networks, tokenizer and safety checker on a device). Its two
//!   readers, `loader::json` and `loader::weights`, import nothing but [`Error`], so the
//!   networks' configs and the safety checker read their files through them.
//! - [`pipeline`]: a request in, images out ([`pipeline::Request::run`]: text-to-image,
//!   image-to-image, inpainting).
//!
//! Beside the floors, the parts they share: [`safety`] (the checker: a network with its
//! own files, built by the loader, applied by the pipeline), [`scheduler`] and
//! [`tokenizer`] (read by the loader from the model directory, driven by the pipeline),
//! [`noise`] (PyTorch's CPU generator, so a seed gives diffusers' noise bit for bit),
//! `input` (input images prepared as diffusers' image processor prepares them, Pillow's
//! Lanczos resize included), [`output`] (PNG, JPEG, WebP), `error` ([`Error`]: every message names the file or field
//! at fault), [`device`] (where the engine runs: `cpu`, `cuda`, `cuda:N`, and in which
//! precision). And the two users of random weights (`random`): [`tiny`], which writes the
//! tiny SD 2.1-shaped model tests and demos use, and [`mod@bench`], the networks at the
//! published sizes for `sie bench`.
//!
//! # Public surface
//! What `sie`, `sie-worker` and the integration tests use, nothing more: loading and
//! checking a model, running a pipeline, encoding its images, the schedulers, noise and
//! tokenizer the parity tests check, writing tiny models, the benchmarks, the error type,
//! and `candle_core` for `Tensor`, `Device` and `DType`.

pub mod device;
mod error;
mod input;
mod kernels;
mod loader;
mod memory;
mod networks;
mod random;

pub mod bench;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod safety;
pub mod scheduler;
pub mod tiny;
pub mod tokenizer;

pub use candle_core;
pub use device::{DeviceSpec, Precision, RunsOn};
pub use error::{Error, Result};
pub use loader::{
    LoadOptions, ModelFiles, SafetyCheckerSource, SingleFileOptions, StableDiffusion,
    TokenizerSource,
};
pub use memory::BatchFit;
