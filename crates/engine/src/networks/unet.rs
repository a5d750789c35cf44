//! diffusers' `UNet2DConditionModel` in the configuration of SD 1.x/2.x.
//!
//! The structure follows diffusers module for module, so the checkpoint's
//! names load unchanged: `conv_in`, `time_embedding`, `down_blocks.{i}` with
//! `resnets`, `attentions` and `downsamplers`, `mid_block`, `up_blocks.{i}`
//! with `upsamplers`, `conv_norm_out`, `conv_out`. Every width, head count
//! and block type comes from [`UNetConfig`].

use candle_core::{Module, Tensor};
use candle_nn::{layer_norm, Conv2dConfig, LayerNorm, VarBuilder};

use super::blocks::{Downsample, ResnetBlock, ResnetConfig, Upsample};
use super::config::UNetConfig;
use super::layers::{conv2d, group_norm, linear, linear_no_bias, Conv2d, GroupNorm, Linear};
use super::profile;
use crate::kernels::{attention, geglu, timestep_embedding, Attention, TimestepEmbedding};

/// diffusers' `Attention` as used inside the transformer blocks: no bias on q/k/v, a biased
/// output projection, keys and values from the context for cross-attention, and the block's
/// residual added with the output projection's bias.
#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    shape: Attention,
}

impl CrossAttention {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> candle_core::Result<Self> {
        let head_dim = dim / heads;
        Ok(CrossAttention {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            shape: Attention {
                heads,
                scale: (head_dim as f64).powf(-0.5),
            },
        })
    }

    /// The attention of `xs` (to `context`, or to itself), plus `residual`.
    fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let out = profile::time(
            || "transformer/attention kernel".into(),
            || attention(&q, &k, &v, self.shape),
        )?;
        self.to_out.forward_residual(&out, residual)
    }
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward,
/// each pre-normed with LayerNorm and added back.
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> candle_core::Result<Self> {
        let ff_inner = 4 * dim;
        Ok(TransformerBlock {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: linear(dim, 2 * ff_inner, vb.pp("ff").pp("net").pp("0").pp("proj"))?,
            ff_out: linear(ff_inner, dim, vb.pp("ff").pp("net").pp("2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let xs = profile::time(
            || "transformer/self-attention".into(),
            || self.attn1.forward(&self.norm1.forward(xs)?, None, xs),
        )?;
        let xs = profile::time(
            || "transformer/cross-attention".into(),
            || {
                self.attn2
                    .forward(&self.norm2.forward(&xs)?, Some(context), &xs)
            },
        )?;
        profile::time(
            || "transformer/feed-forward".into(),
            || {
                // GEGLU: the projection's first half gated by the exact (erf) GELU of its
                // second half.
                let h = self.ff_proj.forward(&self.norm3.forward(&xs)?)?;
                self.ff_out.forward_residual(&geglu(&h)?, &xs)
            },
        )
    }
}

/// diffusers' `Transformer2DModel`: GroupNorm, projection in (linear or 1x1 conv),
/// transformer blocks over the flattened pixels, projection out, plus the input.
#[derive(Debug)]
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

/// SD 2.x projects with linear layers, SD 1.x with 1x1 convolutions (`use_linear_projection`).
#[derive(Debug)]
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn new(vb: VarBuilder, linear_proj: bool, from: usize, to: usize) -> candle_core::Result<Self> {
        Ok(if linear_proj {
            Projection::Linear(linear(from, to, vb)?)
        } else {
            Projection::Conv(conv2d(from, to, 1, Conv2dConfig::default(), vb)?)
        })
    }
}

impl SpatialTransformer {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        c: &UNetConfig,
    ) -> candle_core::Result<Self> {
        Ok(SpatialTransformer {
            norm: group_norm(c.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(
                vb.pp("proj_in"),
                c.use_linear_projection,
                channels,
                channels,
            )?,
            blocks: (0..layers)
                .map(|i| {
                    TransformerBlock::new(
                        vb.pp("transformer_blocks").pp(i),
                        channels,
                        c.cross_attention_dim,
                        heads,
                    )
                })
                .collect::<candle_core::Result<_>>()?,
            proj_out: Projection::new(
                vb.pp("proj_out"),
                c.use_linear_projection,
                channels,
                channels,
            )?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: &Tensor| -> candle_core::Result<Tensor> {
            let c = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
        };
        let mut tokens = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(&normed)?)?,
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        match &self.proj_out {
            // The projection's bias, the copy into the image layout and the skip in one.
            Projection::Linear(l) => l.forward_to_image_residual(&tokens, xs),
            Projection::Conv(conv) => {
                let image = tokens.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
                conv.forward_add(&image.contiguous()?, xs)
            }
        }
    }
}

/// One level of the down path: resnets, each followed by a transformer when the level has
/// cross-attention, then an optional downsampler.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample>,
}

/// One level of the up path: resnets fed with the matching skip connections, transformers as
/// on the down path, then an optional upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample>,
}

#[derive(Debug)]
struct MidBlock {
    resnet_in: ResnetBlock,
    attention: SpatialTransformer,
    resnet_out: ResnetBlock,
}

/// The SD 1.x/2.x UNet.
#[derive(Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
}

impl UNet {
    pub fn new(vb: VarBuilder, c: &UNetConfig) -> candle_core::Result<Self> {
        let widths = &c.block_out_channels;
        let n = widths.len();
        let temb = 4 * widths[0];
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let resnet = |vb: VarBuilder, in_channels, out_channels, scale| {
            ResnetBlock::new(
                vb,
                ResnetConfig {
                    in_channels,
                    out_channels,
                    temb_channels: Some(temb),
                    groups: c.norm_num_groups,
                    eps: c.norm_eps,
                    output_scale_factor: scale,
                },
            )
        };
        let transformer = |vb: VarBuilder, channels: usize, heads: usize| {
            SpatialTransformer::new(vb, channels, heads, c.transformer_layers_per_block, c)
        };

        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("down_blocks").pp(i);
            let in_channels = if i == 0 { widths[0] } else { widths[i - 1] };
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let from = if j == 0 { in_channels } else { widths[i] };
                resnets.push(resnet(vb.pp("resnets").pp(j), from, widths[i], 1.0)?);
                if c.cross_attention[i] {
                    attentions.push(transformer(
                        vb.pp("attentions").pp(j),
                        widths[i],
                        c.attention_heads[i],
                    )?);
                }
            }
            let downsampler = (i + 1 < n)
                .then(|| {
                    Downsample::new(vb.pp("downsamplers").pp(0), widths[i], c.downsample_padding)
                })
                .transpose()?;
            down.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
        }

        let last = widths[n - 1];
        let vb_mid = vb.pp("mid_block");
        let mid = MidBlock {
            resnet_in: resnet(
                vb_mid.pp("resnets").pp(0),
                last,
                last,
                c.mid_block_scale_factor,
            )?,
            attention: transformer(
                vb_mid.pp("attentions").pp(0),
                last,
                c.attention_heads[n - 1],
            )?,
            resnet_out: resnet(
                vb_mid.pp("resnets").pp(1),
                last,
                last,
                c.mid_block_scale_factor,
            )?,
        };

        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            // Up level i mirrors down level n - 1 - i.
            let level = n - 1 - i;
            let vb = vb.pp("up_blocks").pp(i);
            let out_channels = widths[level];
            let prev_out = if i == 0 { last } else { widths[level + 1] };
            let skip_in = widths[level.saturating_sub(1)];
            let layers = c.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 {
                    skip_in
                } else {
                    out_channels
                };
                let from = if j == 0 { prev_out } else { out_channels };
                resnets.push(resnet(
                    vb.pp("resnets").pp(j),
                    from + skip,
                    out_channels,
                    1.0,
                )?);
                if c.cross_attention[level] {
                    attentions.push(transformer(
                        vb.pp("attentions").pp(j),
                        out_channels,
                        c.attention_heads[level],
                    )?);
                }
            }
            let upsampler = (i + 1 < n)
                .then(|| Upsample::new(vb.pp("upsamplers").pp(0), out_channels))
                .transpose()?;
            up.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        Ok(UNet {
            conv_in: conv2d(c.in_channels, widths[0], 3, conv3, vb.pp("conv_in"))?,
            time_linear_1: linear(widths[0], temb, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding").pp("linear_2"))?,
            down,
            mid,
            up,
            norm_out: group_norm(
                c.norm_num_groups,
                widths[0],
                c.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv2d(widths[0], c.out_channels, 3, conv3, vb.pp("conv_out"))?,
            config: c.clone(),
        })
    }

    /// diffusers' `get_timestep_embedding` as this UNet configures it (`time_proj`).
    fn time_proj(&self) -> TimestepEmbedding {
        TimestepEmbedding {
            dim: self.config.block_out_channels[0],
            flip_sin_to_cos: self.config.flip_sin_to_cos,
            freq_shift: self.config.freq_shift,
        }
    }

    /// One denoising evaluation: `xs` (batch, in_channels, h, w) at `timesteps` (one for
    /// every row, or one per row), conditioned on `context` (batch, tokens,
    /// cross_attention_dim). Returns the prediction, shaped like `xs`.
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, _, _, _) = xs.dims4()?;
        let dtype = xs.dtype();
        let t_emb = timestep_embedding(timesteps, b, self.time_proj(), dtype, xs.device())?;
        let temb = self
            .time_linear_2
            .forward(&candle_nn::ops::silu(&self.time_linear_1.forward(&t_emb)?)?)?;
        let xs = if self.config.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };

        let mut h = profile::time(|| "conv_in".into(), || self.conv_in.forward(&xs))?;
        let mut skips = vec![h.clone()];
        for (i, block) in self.down.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = profile::time(
                    || format!("down.{i}.resnets"),
                    || resnet.forward(&h, Some(&temb)),
                )?;
                if let Some(attn) = block.attentions.get(j) {
                    h = profile::time(
                        || format!("down.{i}.transformers"),
                        || attn.forward(&h, context),
                    )?;
                }
                skips.push(h.clone());
            }
            if let Some(down) = &block.downsampler {
                h = profile::time(|| format!("down.{i}.downsample"), || down.forward(&h))?;
                skips.push(h.clone());
            }
        }

        h = profile::time(
            || "mid.resnets".into(),
            || self.mid.resnet_in.forward(&h, Some(&temb)),
        )?;
        h = profile::time(
            || "mid.transformer".into(),
            || self.mid.attention.forward(&h, context),
        )?;
        h = profile::time(
            || "mid.resnets".into(),
            || self.mid.resnet_out.forward(&h, Some(&temb)),
        )?;

        for (i, block) in self.up.iter().enumerate() {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections ran out".into())
                })?;
                h = profile::time(
                    || format!("up.{i}.resnets"),
                    || resnet.forward(&Tensor::cat(&[&h, &skip], 1)?, Some(&temb)),
                )?;
                if let Some(attn) = block.attentions.get(j) {
                    h = profile::time(
                        || format!("up.{i}.transformers"),
                        || attn.forward(&h, context),
                    )?;
                }
            }
            if let Some(up) = &block.upsampler {
                // Upsample to the size of the next skip connection, which differs from twice
                // ours when the latent size is not a multiple of 2^(levels - 1).
                let size = skips.last().map(|s| (s.dim(2), s.dim(3)));
                let size = match size {
                    Some((Ok(h), Ok(w))) => Some((h, w)),
                    _ => None,
                };
                h = profile::time(|| format!("up.{i}.upsample"), || up.forward(&h, size))?;
            }
        }

        profile::time(
            || "out".into(),
            || {
                self.conv_out
                    .forward(&self.norm_out.forward_silu(&h)?)?
                    .to_dtype(dtype)
            },
        )
    }
}
