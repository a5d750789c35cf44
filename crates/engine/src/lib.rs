//! Stable Diffusion 2.x on candle.
//!
//! # Layout
//! - [`error`]: the one error type; every message names the file or field at fault.
//! - [`json_config`]: typed, error-naming reads of diffusers JSON config files.
//! - [`model`]: the model directory: configs, weights, text encoder, UNet, VAE.
//! - [`noise`]: PyTorch's CPU generator, so a seed gives diffusers' noise bit for bit.
//! - [`output`]: encodes generated images (PNG, JPEG, WebP).
//! - [`pipeline`]: text-to-image, in diffusers' order of operations.
//! - [`safety`]: the safety checker (CLIP vision tower, concept scores, CLIP preprocessing).
//! - [`scheduler`]: the diffusers schedulers, rewritten, built from `scheduler_config.json`.
//! - [`tiny`]: writes the tiny random-weight SD 2.1-shaped model that tests and demos use.
//! - [`tokenizer`]: CLIP's byte-level BPE, as transformers' CLIPTokenizer does it.

pub mod error;
pub mod json_config;
pub mod model;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod safety;
pub mod scheduler;
pub mod tiny;
pub mod tokenizer;

pub use candle_core;
pub use candle_nn;
pub use error::{Error, Result};
