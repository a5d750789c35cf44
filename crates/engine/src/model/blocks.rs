//! The building blocks shared by the UNet and the VAE, as diffusers defines them.
//!
//! Each type mirrors one diffusers module and loads the checkpoint's own
//! weight names (`norm1`, `conv1`, `time_emb_proj`, `to_q`, ...), so a
//! published SD 2.x checkpoint and the tiny model load through the same code.
//! We write these instead of using candle-transformers' Stable Diffusion
//! blocks because those differ from diffusers where it shows in the output:
//! their GEGLU uses the tanh approximation of GELU where diffusers uses the
//! exact one, and their attention builds the whole score matrix at once (ours is
//! in `attention.rs`).

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::conv::{conv2d, Conv2d};
use super::norm::{group_norm, GroupNorm};
use super::profile;

/// diffusers' `ResnetBlock2D` with the SD settings: GroupNorm, SiLU, 3x3 convolutions,
/// an optional time-embedding projection added between them, and a 1x1 shortcut when
/// the width changes.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// How a [`ResnetBlock`] is shaped.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding, or `None` for the VAE's resnets, which have none.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, c: ResnetConfig) -> candle_core::Result<Self> {
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(ResnetBlock {
            norm1: group_norm(c.groups, c.in_channels, c.eps, vb.pp("norm1"))?,
            conv1: conv2d(c.in_channels, c.out_channels, 3, conv3, vb.pp("conv1"))?,
            time_emb_proj: c
                .temb_channels
                .map(|t| candle_nn::linear(t, c.out_channels, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: group_norm(c.groups, c.out_channels, c.eps, vb.pp("norm2"))?,
            conv2: conv2d(c.out_channels, c.out_channels, 3, conv3, vb.pp("conv2"))?,
            shortcut: (c.in_channels != c.out_channels)
                .then(|| {
                    conv2d(
                        c.in_channels,
                        c.out_channels,
                        1,
                        Default::default(),
                        vb.pp("conv_shortcut"),
                    )
                })
                .transpose()?,
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// `temb` is the SiLU-free time embedding (batch, temb_channels), or `None` in the VAE.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let norm = |n: &GroupNorm, xs: &Tensor| {
            profile::time(|| "resnet/group-norm+silu".into(), || n.forward_silu(xs))
        };
        let conv =
            |c: &Conv2d, xs: &Tensor| profile::time(|| "resnet/conv".into(), || c.forward(xs));
        let h = conv(&self.conv1, &norm(&self.norm1, xs)?)?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj.forward(&candle_nn::ops::silu(temb)?)?;
                h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?
            }
            _ => h,
        };
        let h = conv(&self.conv2, &norm(&self.norm2, &h)?)?;
        let skip = match &self.shortcut {
            Some(c) => conv(c, xs)?,
            None => xs.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a convolution: stride 2. With `padding == 0` (the VAE
/// encoder) diffusers pads one zero column on the right and one row at the bottom first.
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
    padding: usize,
}

impl Downsample {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride: 2,
            ..Default::default()
        };
        Ok(Downsample {
            conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
            padding,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.padding == 0 {
            let xs = xs
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour to `size` (twice the input
/// unless a skip connection asks for an odd size), then a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Upsample {
            conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
        })
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (h, w) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&xs.upsample_nearest2d(h, w)?)
    }
}
