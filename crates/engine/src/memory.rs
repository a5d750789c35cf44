//! How many images one UNet batch can hold in a GPU's free memory: the default of the
//! worker's `--max-batch`.
//!
//! Weights are already loaded when this runs, so what is left to plan for is activations.
//! A guided image is two UNet rows; at its peak a row holds the down path's skip tensors
//! (every level's outputs, kept until the up path consumes them), the working tensors of the
//! widest block (projections, the GEGLU's 8x-wide hidden layer, a resnet's temporaries) and
//! whatever scratch its attention kernel needs, which only the kernels know
//! (`kernels::attention_scratch_bytes`: nothing for the CPU's tiled attention; on a GPU the
//! whole-matrix path's score chunk, counted even where cuDNN's fused kernel will run, since
//! a refusal only shows at the first step; the chunk is capped, so it is shared across the
//! batch rather than growing with it). The estimate is deliberately generous (a safety factor, and a
//! tenth of the free memory left alone for the VAE decode and allocator slack): a batch that
//! does not fit fails every task in it, while one image fewer costs a little throughput.
//!
//! On the CPU there is no device memory to read and batching buys little (the arithmetic,
//! not launches, sets the pace), so the default there is one image at a time.

use candle_core::{DType, Device};

use crate::error::Result;
use crate::kernels;
use crate::networks::UNetConfig;

/// How the default batch size was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFit {
    /// Images per UNet batch.
    pub images: usize,
    /// The device's free memory after loading, when it could be read (a GPU).
    pub free_bytes: Option<u64>,
    /// Estimated memory of one more image (two UNet rows).
    pub per_image_bytes: u64,
    /// Estimated memory the batch needs whatever its size (capped attention scratch).
    pub shared_bytes: u64,
}

/// The share of free memory batches may use; the rest is left for the VAE decode, the text
/// encoder, and the allocator's own slack.
const USABLE: f64 = 0.9;
/// Headroom on the activation estimate, which counts the large tensors only.
const SAFETY: f64 = 1.5;

/// Elements of activations one UNet row holds at its peak at latent size `h` x `w`,
/// attention scratch aside.
fn row_elements(unet: &UNetConfig, h: usize, w: usize) -> u64 {
    let mut skips = 0u64;
    let mut widest = 0u64;
    for (level, &channels) in unet.block_out_channels.iter().enumerate() {
        let pixels = ((h >> level) * (w >> level)) as u64;
        let features = channels as u64 * pixels;
        // Each resnet (and its attention) output, and the downsampler's, wait for the up path.
        skips += (unet.layers_per_block as u64 + 1) * features;
        // A transformer block at this level: q, k, v, the attention output and the residual
        // (5 widths), and the GEGLU's 8x-wide projection with its 4x-wide product (12).
        let working = if unet.cross_attention[level] { 17 } else { 6 } * features;
        widest = widest.max(working);
    }
    skips + widest
}

/// The default batch for `unet` at image size `width` x `height` (pixels; latents are
/// 1/`scale` of it) in `dtype` on `device`, after loading: how many images fit in the free
/// memory, at least 1 and at most `cap`.
pub(crate) fn fit(
    unet: &UNetConfig,
    scale: usize,
    dtype: DType,
    device: &Device,
    (width, height): (usize, usize),
    cap: usize,
) -> Result<BatchFit> {
    let (h, w) = (height / scale, width / scale);
    let per_row = row_elements(unet, h, w) as f64 * dtype.size_in_bytes() as f64 * SAFETY;
    let heads = unet.attention_heads[0];
    let head_dim = unet.block_out_channels[0] / heads.max(1);
    let tokens = h * w;
    let scratch = |rows: usize| {
        kernels::attention_scratch_bytes(device, dtype, rows, heads, tokens, tokens, head_dim)
    };
    // Scratch that grows with the batch counts per image; what the kernel caps is shared.
    let (one, two) = (scratch(2), scratch(4));
    let per_image_scratch = two.saturating_sub(one);
    let shared = one.saturating_sub(per_image_scratch);
    let per_image = (2.0 * per_row) as u64 + per_image_scratch;
    let Some(free) = free_bytes(device)? else {
        return Ok(BatchFit {
            images: 1,
            free_bytes: None,
            per_image_bytes: per_image,
            shared_bytes: shared,
        });
    };
    let usable = (free as f64 * USABLE) as u64;
    let images = usable
        .saturating_sub(shared)
        .checked_div(per_image.max(1))
        .unwrap_or(0) as usize;
    Ok(BatchFit {
        images: images.clamp(1, cap.max(1)),
        free_bytes: Some(free),
        per_image_bytes: per_image,
        shared_bytes: shared,
    })
}

/// The device's free memory now, when it can be read (a GPU); `None` on the CPU.
fn free_bytes(device: &Device) -> Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => {
            let (free, _total) = gpu.cuda_stream().context().mem_get_info().map_err(|e| {
                crate::Error::Device(format!("cannot read the GPU's free memory: {e}"))
            })?;
            Ok(Some(free as u64))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::json::FromJson;

    fn published(name: &str) -> UNetConfig {
        let text = match name {
            "sd21" => include_str!("../assets/published/sd21-unet.json"),
            _ => include_str!("../assets/published/sd21-base-unet.json"),
        };
        UNetConfig::from_text(name, text).unwrap()
    }

    #[test]
    fn the_cpu_runs_one_image_at_a_time() {
        let fit = fit(
            &published("sd21"),
            8,
            DType::F32,
            &Device::Cpu,
            (768, 768),
            64,
        )
        .unwrap();
        assert_eq!((fit.images, fit.free_bytes), (1, None));
        assert!(fit.per_image_bytes > 0);
    }

    #[test]
    fn activations_grow_with_the_image_and_the_dtype() {
        let unet = published("sd21");
        let at = |size: usize, dtype: DType| {
            fit(&unet, 8, dtype, &Device::Cpu, (size, size), 64)
                .unwrap()
                .per_image_bytes
        };
        // 768 has 2.25x the pixels of 512; f32 twice the bytes of f16.
        let ratio = at(768, DType::F16) as f64 / at(512, DType::F16) as f64;
        assert!((2.2..2.3).contains(&ratio), "{ratio}");
        assert_eq!(at(512, DType::F32), 2 * at(512, DType::F16));
        // SD 2.1 at 768 in f16: the skip tensors and the top level's transformer block are a
        // few hundred MB per image (times the safety factor), not GBs and not KBs.
        let mb = at(768, DType::F16) as f64 / 1e6;
        assert!((200.0..1000.0).contains(&mb), "{mb} MB");
    }
}
