//! The CLIP text encoder that turns token ids into the UNet's conditioning.
//!
//! Written here rather than taken from candle-transformers because its config
//! cannot be built from `text_encoder/config.json` (private fields) and its
//! activation is fixed per preset; SD 2.x needs GELU from the file. The weight
//! names are transformers' `CLIPTextModel` names; checkpoints saved by
//! transformers 5 drop the `text_model.` prefix, so both layouts load.
//! The output is the last hidden state after the final layer norm, which is
//! what diffusers' pipeline feeds the UNet (SD 2.1's config already stops at
//! OpenCLIP's penultimate layer).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use super::config::{ClipActivation, ClipTextConfig};
use super::layers::{linear, Linear};
use crate::kernels::gelu;

/// The shape of one CLIP transformer layer; the text and the vision towers differ only here
/// and in their masks.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub layer_norm_eps: f64,
    pub activation: ClipActivation,
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, s: &LayerShape) -> candle_core::Result<Self> {
        let h = s.hidden_size;
        Ok(Attention {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: s.heads,
            head_dim: h / s.heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, n, h) = xs.dims3()?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q.forward(xs)? * scale)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        // Scores and softmax in f32 whatever the weights' dtype: softmax in half precision
        // loses mass.
        let dtype = q.dtype();
        let scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(&mask.to_dtype(DType::F32)?)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?;
        self.out.forward(&out)
    }
}

/// transformers' `CLIPEncoderLayer`: pre-norm self-attention and MLP, each added back.
#[derive(Debug)]
pub struct EncoderLayer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl EncoderLayer {
    pub fn new(vb: VarBuilder, s: &LayerShape) -> candle_core::Result<Self> {
        Ok(EncoderLayer {
            norm1: layer_norm(s.hidden_size, s.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(vb.pp("self_attn"), s)?,
            norm2: layer_norm(s.hidden_size, s.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(s.hidden_size, s.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(s.intermediate_size, s.hidden_size, vb.pp("mlp").pp("fc2"))?,
            activation: s.activation,
        })
    }

    /// `mask` is added to the attention scores: the text tower's causal mask, none for vision.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, mask)?)?;
        let hidden = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        let hidden = match self.activation {
            // transformers' "gelu" is the exact erf form.
            ClipActivation::Gelu => gelu(&hidden)?,
            ClipActivation::QuickGelu => (&hidden * candle_nn::ops::sigmoid(&(&hidden * 1.702)?)?)?,
        };
        xs + self.fc2.forward(&hidden)?
    }
}

/// transformers' `CLIPTextModel`, returning the final-layer-normed last hidden state.
#[derive(Debug)]
pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
}

impl ClipTextEncoder {
    /// Builds the encoder from `vb`, which points at the checkpoint root (with or without
    /// the `text_model.` prefix that transformers 4 writes).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let token_embedding = embedding(
            config.vocab_size,
            config.hidden_size,
            emb.pp("token_embedding"),
        )?;
        let position_embedding = embedding(
            config.max_position_embeddings,
            config.hidden_size,
            emb.pp("position_embedding"),
        )?;
        let shape = LayerShape {
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            heads: config.num_attention_heads,
            layer_norm_eps: config.layer_norm_eps,
            activation: config.activation,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), &shape))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_norm = layer_norm(
            config.hidden_size,
            config.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(ClipTextEncoder {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
        })
    }

    /// `ids`: (batch, seq) u32 token ids. Returns (batch, seq, hidden).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?.unsqueeze(0)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq, xs.dtype(), device)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, Some(&mask))?;
        }
        self.final_norm.forward(&xs)
    }
}

/// (seq, seq) with -inf above the diagonal: a token sees only itself and earlier tokens.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}
