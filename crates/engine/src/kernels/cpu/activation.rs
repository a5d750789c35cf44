//! GELU, and GEGLU (the UNet transformers' feed-forward gate), as one pass on the CPU for f32.
//!
//! diffusers computes GEGLU as `a * gelu(b)` where `a` and `b` are the two halves of one
//! projection. As tensor ops that is two strided views, a GELU over one (candle evaluates
//! `erf` one element at a time, on one thread) and a product into a third tensor; profiled
//! on the full-size UNet it took about half the feed-forward's time. CLIP's MLP pays the
//! same GELU. Here rows are split over the thread pool and each output element is read and
//! written once, with the vectorised GELU of `vector.rs`. `kernels::gelu` and
//! `kernels::geglu` send f32 here (GEGLU after checking that the last dimension is even).

use candle_core::{CpuStorage, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vector::{gelu_erf, vectorised};
use super::{f32s, Kernel, Op, Operand, Output};

/// `xs[..., :n] * gelu(xs[..., n:])` for f32 `xs` of last dimension `2n`.
pub(crate) fn geglu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Op(Geglu))
}

/// The exact (erf) GELU of every element of f32 `xs`.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Op(Gelu))
}

struct Geglu;
struct Gelu;

/// Elements per work item of [`Gelu`].
const ELEMENTS: usize = 1 << 14;

impl Kernel<1> for Gelu {
    const NAME: &'static str = "sie-gelu";

    fn run(&self, [xs]: [Operand<'_>; 1]) -> Output {
        let layout = xs.1;
        let xs = f32s(xs, Self::NAME)?;
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(ELEMENTS)
            .zip(xs.par_chunks(ELEMENTS))
            .for_each(|(out, xs)| gelu_slice(out, xs));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

vectorised! {
    fn gelu_slice(out: &mut [f32], xs: &[f32]) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = gelu_erf(x);
        }
    }
}

/// Rows per work item: enough to amortise the hand-off, small enough to balance.
const ROWS: usize = 16;

impl Kernel<1> for Geglu {
    const NAME: &'static str = "sie-geglu";

    fn run(&self, [xs]: [Operand<'_>; 1]) -> Output {
        let layout = xs.1;
        let xs = f32s(xs, Self::NAME)?;
        let mut dims = layout.shape().dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("sie-geglu needs at least one dimension")
        };
        let half = *last / 2;
        *last = half;
        let mut out = vec![0f32; xs.len() / 2];
        if half > 0 {
            out.par_chunks_mut(ROWS * half)
                .zip(xs.par_chunks(ROWS * 2 * half))
                .for_each(|(out, xs)| {
                    for (out, row) in out.chunks_exact_mut(half).zip(xs.chunks_exact(2 * half)) {
                        let (value, gate) = row.split_at(half);
                        gate_row(out, value, gate);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

vectorised! {
    fn gate_row(out: &mut [f32], value: &[f32], gate: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
            *o = v * gelu_erf(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn matches_candle_ops() -> Result<()> {
        for shape in [&[2usize, 37, 40][..], &[3, 6], &[1, 1, 2]] {
            let xs = (Tensor::randn(0f32, 1., shape, &Device::Cpu)? * 3.0)?;
            let half = shape[shape.len() - 1] / 2;
            let want =
                (xs.narrow(D::Minus1, 0, half)? * xs.narrow(D::Minus1, half, half)?.gelu_erf()?)?;
            let got = geglu(&xs)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{shape:?}: max diff {diff}");
            let diff = (gelu(&xs)? - xs.gelu_erf()?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "gelu {shape:?}: max diff {diff}");
        }
        Ok(())
    }
}
