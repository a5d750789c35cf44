//! GroupNorm, optionally followed by SiLU, in one pass on the CPU for f32.
//!
//! Every resnet in the UNet and the VAE normalises and then applies SiLU, twice. candle's
//! GroupNorm is a chain of tensor ops (mean, subtract, square, mean, add, sqrt, divide,
//! scale, shift), each a full pass over the activation with a fresh allocation, several of
//! them single-threaded, and SiLU is one more pass calling libm's `exp` per element. Here
//! each (batch entry, group) is one work item: two reading passes for the mean and the
//! variance (sums in f64 over f32 lanes, so the VAE's 2-million-element groups lose
//! nothing), then one writing pass that scales, shifts and, when asked, applies SiLU with
//! the vectorised `exp` of `vector.rs`. `kernels::group_norm` sends f32 inputs of rank 3 or
//! more here.

use candle_core::{CpuStorage, Result, Tensor};
use rayon::prelude::*;

use super::vector::{silu, vectorised};
use super::{f32s, Kernel, Op, Operand, Output};
use crate::kernels::GroupNorm;

/// `norm` over `xs` (batch, channels, ...), then SiLU when `silu`; f32.
pub(crate) fn fused(xs: &Tensor, norm: &GroupNorm, silu: bool) -> Result<Tensor> {
    let kernel = Fused {
        groups: norm.groups,
        eps: norm.eps,
        silu,
    };
    xs.contiguous()?.apply_op3_no_bwd(
        &norm.weight.contiguous()?,
        &norm.bias.contiguous()?,
        &Op(kernel),
    )
}

/// The CPU kernel: `x` is `(batch, channels, ...)`, contiguous f32.
struct Fused {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl Kernel<3> for Fused {
    const NAME: &'static str = "sie-group-norm";

    fn run(&self, [x, weight, bias]: [Operand<'_>; 3]) -> Output {
        let l1 = x.1;
        let (x, weight, bias) = (
            f32s(x, Self::NAME)?,
            f32s(weight, Self::NAME)?,
            f32s(bias, Self::NAME)?,
        );
        let dims = l1.shape().dims();
        let channels = dims[1];
        if channels % self.groups != 0 || weight.len() != channels || bias.len() != channels {
            candle_core::bail!(
                "group norm: {channels} channels, {} groups, {} weights, {} biases",
                self.groups,
                weight.len(),
                bias.len()
            )
        }
        let pixels: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let group_len = per_group * pixels;
        let mut out = vec![0f32; x.len()];
        if group_len > 0 {
            out.par_chunks_mut(group_len)
                .zip(x.par_chunks(group_len))
                .enumerate()
                .for_each(|(i, (out, x))| {
                    let first = (i % self.groups) * per_group;
                    let mean = (sum(x) / group_len as f64) as f32;
                    let var = sum_squared_deviation(x, mean) / group_len as f64;
                    let inv_std = (1.0 / (var + self.eps).sqrt()) as f32;
                    for (c, (out, x)) in out
                        .chunks_exact_mut(pixels)
                        .zip(x.chunks_exact(pixels))
                        .enumerate()
                    {
                        let scale = weight[first + c] * inv_std;
                        let shift = bias[first + c] - mean * scale;
                        affine(out, x, scale, shift, self.silu);
                    }
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Floats summed per lane before each lane's total moves into f64.
const BLOCK: usize = 4096;
const LANES: usize = 16;

/// The sum of `f(x)` over `xs`: f32 lanes within blocks of 4096, f64 across blocks.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(BLOCK) {
        let mut lanes = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, &x) in lanes.iter_mut().zip(chunk) {
                *acc += f(x);
            }
        }
        let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
        total += lanes.iter().map(|&x| x as f64).sum::<f64>() + rest as f64;
    }
    total
}

vectorised! {
    fn sum(xs: &[f32]) -> f64 {
        lane_sum(xs, |x| x)
    }
}

vectorised! {
    /// The sum of `(x - mean)^2` over `xs`.
    fn sum_squared_deviation(xs: &[f32], mean: f32) -> f64 {
        lane_sum(xs, |x| (x - mean) * (x - mean))
    }
}

vectorised! {
    /// `out = x * scale + shift`, then SiLU when `with_silu`.
    fn affine(out: &mut [f32], x: &[f32], scale: f32, shift: f32, with_silu: bool) {
        if with_silu {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = silu(x * scale + shift);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = x * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// Against candle's GroupNorm (and candle's SiLU after it), on shapes with one and
    /// several channels per group, a flat (batch, channels, length) input, values far from
    /// zero (where a one-pass variance would cancel), and a group larger than one block.
    #[test]
    fn matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for &(shape, groups, offset) in &[
            (&[2usize, 8, 5, 7][..], 4usize, 0f32),
            (&[1, 6, 3, 3][..], 6, 0.0),
            (&[2, 4, 9][..], 2, 0.0),
            (&[1, 4, 40, 41][..], 2, 100.0),
        ] {
            let channels = shape[1];
            let x = (Tensor::randn(0f32, 1., shape, &dev)? + offset as f64)?;
            let weight = Tensor::randn(0f32, 1., channels, &dev)?;
            let bias = Tensor::randn(0f32, 1., channels, &dev)?;
            let want =
                candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, 1e-6)?
                    .forward(&x)?;
            let norm = GroupNorm {
                weight,
                bias,
                groups,
                eps: 1e-6,
            };
            for (silu, want) in [(false, want.clone()), (true, candle_nn::ops::silu(&want)?)] {
                let got = fused(&x, &norm, silu)?;
                assert_eq!(got.dims(), shape);
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 2e-4, "{shape:?}/{groups}: max diff {diff}");
            }
        }
        Ok(())
    }
}
