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
