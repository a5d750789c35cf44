//! The building blocks shared by the UNet and the VAE, as diffusers defines them.
//!
//! Each type mirrors one diffusers module and loads the checkpoint's own
//! weight names (`norm1`, `conv1`, `time_emb_proj`, `to_q`, ...), so a
//! published SD 2.x checkpoint and the tiny model load through the same code.
//! We write these instead of using candle-transformers' Stable Diffusion
//! blocks because those differ from diffusers where it shows in the output:
//! their GEGLU uses the tanh approximation of GELU where diffusers uses the
//! exact one, and their attention builds the whole score matrix at once (ours is
//! `kernels::attention`).

use candle_core::{Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::layers::{conv2d, group_norm, linear, Conv2d, GroupNorm, Linear};
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
                .map(|t| linear(t, c.out_channels, vb.pp("time_emb_proj")))
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
        // A convolution and what is added to its output (the time embedding, one value per
        // channel; the skip) in one `forward_add`: one kernel for bias and addend on CUDA.
        let conv_add = |c: &Conv2d, xs: &Tensor, addend: &Tensor| {
            profile::time(|| "resnet/conv".into(), || c.forward_add(xs, addend))
        };
        let normed = norm(&self.norm1, xs)?;
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => {
                let t = proj.forward(&candle_nn::ops::silu(temb)?)?;
                conv_add(&self.conv1, &normed, &t)?
            }
            _ => conv(&self.conv1, &normed)?,
        };
        let skip = match &self.shortcut {
            Some(c) => conv(c, xs)?,
            None => xs.clone(),
        };
        let out = conv_add(&self.conv2, &norm(&self.norm2, &h)?, &skip)?;
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
///
/// At twice the size, the upsampled image repeats each pixel in a 2x2 square, so each
/// output pixel's 3x3 window covers only 2x2 distinct input pixels, which ones depending on
/// the output pixel's row and column parity. The same result therefore comes from four 2x2
/// convolutions of the input itself, one per parity, whose kernels sum the 3x3 taps that
/// land on the same input pixel (computed once, at load): 16 multiplications per output
/// pixel and channel pair instead of 36, and no upsampled copy. Sums differ from the
/// direct form only in the order of additions.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
    /// Index `2 * row parity + column parity`.
    parity: [Conv2d; 4],
}

impl Upsample {
    pub fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = conv2d(channels, channels, 3, cfg, vb.pp("conv"))?;
        let parity = parity_kernels(&conv.weight)?.map(|weight| Conv2d {
            weight,
            bias: conv.bias.clone(),
            config: Conv2dConfig::default(),
        });
        Ok(Upsample { conv, parity })
    }

    pub fn forward(
        &self,
        xs: &Tensor,
        size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        match size {
            Some(size) if size != (2 * h, 2 * w) => {
                self.conv.forward(&xs.upsample_nearest2d(size.0, size.1)?)
            }
            _ => {
                // Input row i sits at padded row i + 1; output row 2i + p reads input rows
                // i - 1, i (p = 0) or i, i + 1 (p = 1): padded rows from p, and the same for
                // columns.
                let padded = xs.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
                let mut rows = Vec::with_capacity(2);
                for py in 0..2 {
                    let window = padded.narrow(2, py, h + 1)?;
                    let columns = (0..2)
                        .map(|px| self.parity[2 * py + px].forward(&window.narrow(3, px, w + 1)?))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    // (b, c, h, w, column parity) -> columns 2j + px.
                    rows.push(Tensor::stack(&columns, 4)?.reshape((b, c, h, 2 * w))?);
                }
                // (b, c, h, row parity, 2w) -> rows 2i + py.
                Tensor::stack(&rows, 3)?.reshape((b, c, 2 * h, 2 * w))
            }
        }
    }
}

/// The four 2x2 kernels of [`Upsample`] from a `[out, in, 3, 3]` kernel: along each axis,
/// parity 0 reads the previous input pixel with tap 0 and its own with taps 1 and 2;
/// parity 1 its own with taps 0 and 1 and the next with tap 2. Summed in f32.
fn parity_kernels(weight: &Tensor) -> candle_core::Result<[Tensor; 4]> {
    const TAPS: [[(usize, usize); 2]; 2] = [[(0, 1), (1, 2)], [(0, 2), (2, 1)]];
    let dtype = weight.dtype();
    let w = weight.to_dtype(candle_core::DType::F32)?;
    let fold = |t: &Tensor, dim: usize, parity: usize| -> candle_core::Result<Tensor> {
        let [(a, a_len), (b, b_len)] = TAPS[parity];
        Tensor::cat(
            &[
                t.narrow(dim, a, a_len)?.sum_keepdim(dim)?,
                t.narrow(dim, b, b_len)?.sum_keepdim(dim)?,
            ],
            dim,
        )
    };
    let mut kernels = Vec::with_capacity(4);
    for py in 0..2 {
        let rows = fold(&w, 2, py)?;
        for px in 0..2 {
            kernels.push(fold(&rows, 3, px)?.to_dtype(dtype)?.contiguous()?);
        }
    }
    kernels
        .try_into()
        .map_err(|_| candle_core::Error::Msg("four parity kernels".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// The four parity convolutions give what upsampling and the 3x3 convolution give, on
    /// square and non-square inputs, and an odd target size takes the direct path.
    #[test]
    fn upsample_by_parity_matches_the_direct_form() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let channels = 3;
        let weight = Tensor::randn(0f32, 1., (channels, channels, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1., channels, &dev)?;
        let tensors = HashMap::from([
            ("conv.weight".to_string(), weight.clone()),
            ("conv.bias".to_string(), bias.clone()),
        ]);
        let up = Upsample::new(
            VarBuilder::from_tensors(tensors, DType::F32, &dev),
            channels,
        )?;
        let direct = candle_nn::Conv2d::new(
            weight,
            Some(bias),
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        for (h, w, size) in [
            (4, 4, None),
            (3, 5, None),
            (2, 3, Some((4, 6))),
            (3, 3, Some((5, 5))),
        ] {
            let x = Tensor::randn(0f32, 1., (2, channels, h, w), &dev)?;
            let (th, tw) = size.unwrap_or((2 * h, 2 * w));
            let want = direct.forward(&x.upsample_nearest2d(th, tw)?)?;
            let got = up.forward(&x, size)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{:?}: max diff {diff}", (h, w, size));
        }
        Ok(())
    }
}
