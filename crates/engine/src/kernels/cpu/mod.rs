//! Our CPU kernels: the ops where candle's CPU code was the bottleneck, each one candle
//! `CustomOp` whose `cpu_fwd` does the work.
//!
//! One file per op (`conv.rs`, `norm.rs`, `attention.rs`, `activation.rs`) and the vector
//! loops they share (`vector.rs`). Each file's entry point takes tensors that
//! `kernels/mod.rs` has already matched to it (the CPU, a dtype the kernel has); nothing
//! outside `kernels` calls them, so the networks never see which device ran an op.

mod activation;
mod attention;
mod conv;
mod norm;
mod vector;

pub(crate) use activation::{geglu, gelu};
pub(crate) use attention::tiled;
pub(crate) use conv::im2col_gemm;
pub(crate) use norm::fused;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape};

/// One operand of a CPU kernel, as candle hands it over: its storage and layout.
type Operand<'a> = (&'a CpuStorage, &'a Layout);

/// What a kernel answers: the output's storage and shape.
type Output = Result<(CpuStorage, Shape)>;

/// A CPU kernel over `N` operands. Each kernel writes only its name and this one function;
/// [`Op`] makes it the `CustomOp1/2/3` candle applies, so candle's per-arity signatures are
/// written here once.
trait Kernel<const N: usize>: Send + Sync {
    const NAME: &'static str;
    fn run(&self, operands: [Operand<'_>; N]) -> Output;
}

/// A [`Kernel`] as an op candle applies with `apply_op{1,2,3}_no_bwd`.
struct Op<K>(K);

impl<K: Kernel<1>> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Output {
        self.0.run([(s1, l1)])
    }
}

impl<K: Kernel<2>> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Output {
        self.0.run([(s1, l1), (s2, l2)])
    }
}

impl<K: Kernel<3>> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Output {
        self.0.run([(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// The f32 elements of a contiguous operand (`op` names the kernel in errors).
fn f32s<'a>((storage, layout): Operand<'a>, op: &str) -> Result<&'a [f32]> {
    contiguous(storage.as_slice::<f32>()?, layout, op)
}

/// The elements of a contiguous operand of our CPU kernels (`op` names the kernel in the
/// error; callers make their operands contiguous first, so this is a guard).
fn contiguous<'a, T>(
    data: &'a [T],
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op} needs contiguous operands"),
    }
}
