//! The networks: the CLIP text encoder, the UNet and the VAE, module for module as
//! transformers and diffusers define them, built from a `VarBuilder` under the
//! checkpoints' own tensor names.
//!
//! They are device-agnostic: they compute with candle's tensor ops and, for the ops we
//! have kernels for (convolution, GroupNorm, attention, GELU/GEGLU), with `kernels`, which
//! picks the device's kernel. So one network runs on every device, and a new device's
//! kernels change nothing here.
//!
//! - `layers.rs`: `Linear`, `Conv2d`, `GroupNorm`, the weight-holding layers.
//! - `blocks.rs`: the resnet, downsampler and upsampler the UNet and the VAE share.
//! - `clip.rs`, `unet.rs`, `vae.rs`: the three networks (`clip.rs`'s encoder layer is also
//!   the safety checker's vision tower's).
//! - `config.rs`: their configs, read from `config.json`.
//! - `profile.rs`: per-block timings, for the benchmarks.

mod blocks;
pub mod clip;
pub mod config;
pub mod layers;
pub mod profile;
mod unet;
mod vae;

pub use clip::ClipTextEncoder;
pub use config::{ClipTextConfig, UNetConfig, VaeConfig};
pub use unet::UNet;
pub use vae::Vae;
