//! diffusers' `AutoencoderKL` as SD uses it: the encoder to latent moments and the decoder
//! back to pixels, with the checkpoint's own weight names.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::blocks::{Downsample, ResnetBlock, ResnetConfig, Upsample};
use super::config::VaeConfig;
use super::layers::{conv2d, group_norm, linear, Conv2d, GroupNorm, Linear};
use super::profile;
use crate::kernels::{attention, Attention};

/// The VAE's resnets and attention use eps 1e-6 (diffusers' `Encoder`/`Decoder` defaults).
const EPS: f64 = 1e-6;

/// diffusers' single-head `Attention` with its own GroupNorm and a residual connection,
/// as in the VAE's mid block.
#[derive(Debug)]
struct SelfAttention {
    norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SelfAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        Ok(SelfAttention {
            norm: group_norm(groups, channels, EPS, vb.pp("group_norm"))?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp("0"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let shape = Attention {
            heads: 1,
            scale: (c as f64).powf(-0.5),
        };
        let out = attention(&q, &k, &v, shape)?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + xs
    }
}

#[derive(Debug)]
struct MidBlock {
    resnet_in: ResnetBlock,
    attention: SelfAttention,
    resnet_out: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        let resnet = |vb| ResnetBlock::new(vb, resnet_config(channels, channels, groups));
        Ok(MidBlock {
            resnet_in: resnet(vb.pp("resnets").pp(0))?,
            attention: SelfAttention::new(vb.pp("attentions").pp(0), channels, groups)?,
            resnet_out: resnet(vb.pp("resnets").pp(1))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.resnet_in.forward(xs, None)?;
        let h = self.attention.forward(&h)?;
        self.resnet_out.forward(&h, None)
    }
}

fn resnet_config(in_channels: usize, out_channels: usize, groups: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups,
        eps: EPS,
        output_scale_factor: 1.0,
    }
}

#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

/// The SD VAE.
#[derive(Debug)]
pub struct Vae {
    enc_conv_in: Conv2d,
    enc_levels: Vec<Level>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_levels: Vec<Level>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl Vae {
    pub fn new(vb: VarBuilder, c: &VaeConfig) -> candle_core::Result<Self> {
        let widths = &c.block_out_channels;
        let n = widths.len();
        let groups = c.norm_num_groups;
        let latent = c.latent_channels;
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");

        let mut enc_levels = Vec::with_capacity(n);
        for i in 0..n {
            let vb = enc.pp("down_blocks").pp(i);
            let in_channels = if i == 0 { widths[0] } else { widths[i - 1] };
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let from = if j == 0 { in_channels } else { widths[i] };
                    ResnetBlock::new(
                        vb.pp("resnets").pp(j),
                        resnet_config(from, widths[i], groups),
                    )
                })
                .collect::<candle_core::Result<_>>()?;
            let down = (i + 1 < n)
                .then(|| Downsample::new(vb.pp("downsamplers").pp(0), widths[i], 0))
                .transpose()?;
            enc_levels.push(Level {
                resnets,
                down,
                up: None,
            });
        }

        let last = widths[n - 1];
        let mut dec_levels = Vec::with_capacity(n);
        for i in 0..n {
            let level = n - 1 - i;
            let vb = dec.pp("up_blocks").pp(i);
            let prev = if i == 0 { last } else { widths[level + 1] };
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    let from = if j == 0 { prev } else { widths[level] };
                    ResnetBlock::new(
                        vb.pp("resnets").pp(j),
                        resnet_config(from, widths[level], groups),
                    )
                })
                .collect::<candle_core::Result<_>>()?;
            let up = (i + 1 < n)
                .then(|| Upsample::new(vb.pp("upsamplers").pp(0), widths[level]))
                .transpose()?;
            dec_levels.push(Level {
                resnets,
                down: None,
                up,
            });
        }

        let one = Conv2dConfig::default();
        Ok(Vae {
            enc_conv_in: conv2d(c.in_channels, widths[0], 3, conv3, enc.pp("conv_in"))?,
            enc_levels,
            enc_mid: MidBlock::new(enc.pp("mid_block"), last, groups)?,
            enc_norm_out: group_norm(groups, last, EPS, enc.pp("conv_norm_out"))?,
            enc_conv_out: conv2d(last, 2 * latent, 3, conv3, enc.pp("conv_out"))?,
            quant_conv: c
                .use_quant_conv
                .then(|| conv2d(2 * latent, 2 * latent, 1, one, vb.pp("quant_conv")))
                .transpose()?,
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| conv2d(latent, latent, 1, one, vb.pp("post_quant_conv")))
                .transpose()?,
            dec_conv_in: conv2d(latent, last, 3, conv3, dec.pp("conv_in"))?,
            dec_mid: MidBlock::new(dec.pp("mid_block"), last, groups)?,
            dec_levels,
            dec_norm_out: group_norm(groups, widths[0], EPS, dec.pp("conv_norm_out"))?,
            dec_conv_out: conv2d(widths[0], c.out_channels, 3, conv3, dec.pp("conv_out"))?,
        })
    }

    /// Image (batch, 3, h, w) in [-1, 1] to the latent distribution's moments
    /// (batch, 2 * latent_channels, h / 8, w / 8): mean, then log-variance.
    pub fn encode_moments(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.enc_conv_in.forward(xs)?;
        for level in &self.enc_levels {
            for resnet in &level.resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(down) = &level.down {
                h = down.forward(&h)?;
            }
        }
        let h = self.enc_mid.forward(&h)?;
        let h = self.enc_norm_out.forward_silu(&h)?;
        let h = self.enc_conv_out.forward(&h)?;
        match &self.quant_conv {
            Some(conv) => conv.forward(&h),
            None => Ok(h),
        }
    }

    /// Latents (already divided by `scaling_factor`) to an image in about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(z)?,
            None => z.clone(),
        };
        let mut h = profile::time(|| "conv_in".into(), || self.dec_conv_in.forward(&z))?;
        h = profile::time(|| "mid".into(), || self.dec_mid.forward(&h))?;
        for (i, level) in self.dec_levels.iter().enumerate() {
            for resnet in &level.resnets {
                h = profile::time(|| format!("up.{i}.resnets"), || resnet.forward(&h, None))?;
            }
            if let Some(up) = &level.up {
                h = profile::time(|| format!("up.{i}.upsample"), || up.forward(&h, None))?;
            }
        }
        profile::time(
            || "out".into(),
            || {
                self.dec_conv_out
                    .forward(&self.dec_norm_out.forward_silu(&h)?)
            },
        )
    }
}
