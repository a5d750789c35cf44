//! The networks at SD 2.1's published sizes on random weights, one call at a time: what
//! `sie bench unet|vae|text` times.
//!
//! A [`Bench`] is one full-size network built from a published config
//! (`assets/published/`, see `tools/parity/published_configs.py` for the sources) on
//! weights drawn from candle's initialisers (`random.rs`), with its input, on the device
//! and in the dtype asked for; [`Bench::call`] runs it once and waits for the result. So a
//! figure needs no files and can be measured on any machine. The timing, the statistics and
//! the comparison with PyTorch are the CLI's; [`profile`] gives it per-block timings.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;
use crate::loader::json::FromJson;
use crate::networks::{ClipTextConfig, ClipTextEncoder, UNet, UNetConfig, Vae, VaeConfig};
use crate::random::{RandomWeights, Values};

/// Per-block timings of the networks: [`profile::start`] a recording on this thread, run the
/// calls, [`profile::finish`] it.
pub use crate::networks::profile;

/// The UNet configs of stabilityai/stable-diffusion-2-1-base and -2-1, as published.
const SD21_BASE_UNET: &str = include_str!("../assets/published/sd21-base-unet.json");
const SD21_UNET: &str = include_str!("../assets/published/sd21-unet.json");
/// The VAE and text-encoder configs of the two differ only in names and versions, so one
/// file each serves both.
const SD21_VAE: &str = include_str!("../assets/published/sd21-vae.json");
const SD21_TEXT_ENCODER: &str = include_str!("../assets/published/sd21-text-encoder.json");

/// Which published UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// stable-diffusion-2-1-base (512, epsilon).
    Sd21Base,
    /// stable-diffusion-2-1 (768, v-prediction).
    Sd21,
}

/// One network on random weights and the input of its call.
pub struct Bench {
    network: Network,
    parameters: usize,
}

/// The networks are boxed: they differ in size by kilobytes of layer descriptions.
enum Network {
    UNet {
        unet: Box<UNet>,
        sample: Tensor,
        context: Tensor,
    },
    VaeDecoder {
        vae: Box<Vae>,
        latents: Tensor,
    },
    TextEncoder {
        encoder: Box<ClipTextEncoder>,
        ids: Tensor,
    },
}

impl Bench {
    /// The UNet of `variant`; a call is one evaluation of `batch` random latents of
    /// `latent` x `latent` (the image side / 8) at timestep 999 on 77 random context tokens.
    pub fn unet(
        variant: Variant,
        latent: usize,
        batch: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let text = match variant {
            Variant::Sd21Base => SD21_BASE_UNET,
            Variant::Sd21 => SD21_UNET,
        };
        let config = UNetConfig::from_text("unet/config.json", text)?;
        let weights = RandomWeights::new(Values::Initialisers);
        let unet = Box::new(weights.build(dtype, device, |vb| UNet::new(vb, &config))?);
        let sample = randn((batch, config.in_channels, latent, latent), device, dtype)?;
        let context = randn((batch, 77, config.cross_attention_dim), device, dtype)?;
        Ok(Bench {
            network: Network::UNet {
                unet,
                sample,
                context,
            },
            parameters: parameters(weights, |_| true),
        })
    }

    /// The VAE's decoder; a call decodes `batch` random latents of `latent` x `latent`.
    /// Its parameters are the decoder's (and `post_quant_conv`'s), as the PyTorch side counts
    /// what decoding runs.
    pub fn vae_decoder(latent: usize, batch: usize, device: &Device, dtype: DType) -> Result<Self> {
        let config = VaeConfig::from_text("vae/config.json", SD21_VAE)?;
        let weights = RandomWeights::new(Values::Initialisers);
        let vae = Box::new(weights.build(dtype, device, |vb| Vae::new(vb, &config))?);
        let latents = randn(
            (batch, config.latent_channels, latent, latent),
            device,
            dtype,
        )?;
        Ok(Bench {
            network: Network::VaeDecoder { vae, latents },
            parameters: parameters(weights, |name| {
                name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
            }),
        })
    }

    /// The text encoder; a call encodes `batch` sequences of 77 arbitrary token ids.
    pub fn text_encoder(batch: usize, device: &Device, dtype: DType) -> Result<Self> {
        let config = ClipTextConfig::from_text("text_encoder/config.json", SD21_TEXT_ENCODER)?;
        let weights = RandomWeights::new(Values::Initialisers);
        let encoder =
            Box::new(weights.build(dtype, device, |vb| ClipTextEncoder::new(vb, &config))?);
        // Arbitrary token ids (a fixed xorshift sequence): the cost does not depend on them.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let ids: Vec<u32> = (0..batch * config.max_position_embeddings)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % config.vocab_size as u64) as u32
            })
            .collect();
        let ids = Tensor::from_vec(ids, (batch, config.max_position_embeddings), device)?;
        Ok(Bench {
            network: Network::TextEncoder { encoder, ids },
            parameters: parameters(weights, |_| true),
        })
    }

    /// The elements of the weights a call uses.
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    /// One call, its result read back to the CPU so a GPU has finished before it returns.
    pub fn call(&self) -> Result<()> {
        let out = match &self.network {
            Network::UNet {
                unet,
                sample,
                context,
            } => unet.forward(sample, &[999.0], context)?,
            Network::VaeDecoder { vae, latents } => vae.decode(latents)?,
            Network::TextEncoder { encoder, ids } => encoder.forward(ids)?,
        };
        out.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    }
}

/// A standard-normal input of `shape`, drawn on `device`, in `dtype`.
fn randn(shape: impl Into<Shape>, device: &Device, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1., shape, device)?.to_dtype(dtype)?)
}

/// The elements of the weights whose names `counted` accepts.
fn parameters(weights: RandomWeights, counted: impl Fn(&str) -> bool) -> usize {
    weights
        .into_shapes()
        .into_iter()
        .filter(|(name, _)| counted(name))
        .map(|(_, shape)| shape.elem_count())
        .sum()
}
