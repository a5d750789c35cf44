//! The CLIP vision tower the safety checker embeds images with.
//!
//! transformers' `CLIPVisionModel`, module for module: a patch embedding (a
//! convolution without bias whose stride is its kernel, computed here as one
//! matrix product over the unfolded patches, which is the same sum and needs
//! no convolution kernel on any device), a class token, learned positions,
//! `pre_layrnorm` (sic: the checkpoints' own spelling), pre-norm encoder layers
//! with bidirectional attention, and `post_layernorm` applied to the class
//! token's final state, which is the pooled output the checker projects.
//! Every size comes from the `vision_config` of `safety_checker/config.json`.
//! The encoder layers are the text encoder's (`networks/clip.rs`), run without
//! the causal mask: vision attention is bidirectional.

use candle_core::{Module, Tensor};
use candle_nn::{layer_norm, LayerNorm, VarBuilder};

use super::ClipVisionConfig;
use crate::networks::clip::{EncoderLayer, LayerShape};

/// transformers' `CLIPVisionModel`, returning the pooled output.
#[derive(Debug)]
pub(crate) struct ClipVisionModel {
    /// (hidden, channels * patch * patch): the convolution's kernel, flattened.
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_norm: LayerNorm,
    config: ClipVisionConfig,
}

impl ClipVisionModel {
    /// Builds the tower from `vb`, which points at the module (`vision_model` in the checker).
    pub(crate) fn new(vb: VarBuilder, config: &ClipVisionConfig) -> candle_core::Result<Self> {
        let c = config;
        let emb = vb.pp("embeddings");
        let p = c.patch_size;
        let patch_weight = emb
            .pp("patch_embedding")
            .get((c.hidden_size, c.num_channels, p, p), "weight")?
            .reshape((c.hidden_size, c.num_channels * p * p))?;
        let class_embedding = emb.get(c.hidden_size, "class_embedding")?;
        let positions = c.num_patches() + 1;
        let position_embedding = emb
            .pp("position_embedding")
            .get((positions, c.hidden_size), "weight")?;
        let shape = LayerShape {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            heads: c.num_attention_heads,
            layer_norm_eps: c.layer_norm_eps,
            activation: c.activation,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), &shape))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ClipVisionModel {
            patch_weight,
            class_embedding,
            position_embedding,
            pre_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            layers,
            post_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            config: c.clone(),
        })
    }

    /// `pixels`: (batch, channels, image_size, image_size). Returns the pooled (batch, hidden).
    pub(crate) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = pixels.dims4()?;
        if ch != c.num_channels || h != c.image_size || w != c.image_size {
            candle_core::bail!(
                "the vision tower takes {}x{s}x{s} pixel values, got {ch}x{h}x{w}",
                c.num_channels,
                s = c.image_size
            );
        }
        let (p, g) = (c.patch_size, c.image_size / c.patch_size);
        // (b, c, g, p, g, p) -> (b, g, g, c, p, p): each patch's values in the kernel's order.
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, ch * p * p))?;
        let patch_embeds = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let class = self
            .class_embedding
            .reshape((1, 1, c.hidden_size))?
            .repeat((b, 1, 1))?;
        let mut xs = Tensor::cat(&[class, patch_embeds], 1)?
            .broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        xs = self.pre_norm.forward(&xs)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, None)?;
        }
        let pooled = xs.narrow(1, 0, 1)?.squeeze(1)?;
        self.post_norm.forward(&pooled)
    }
}
