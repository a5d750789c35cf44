//! Our CUDA kernels: what makes the GPU path fast where candle's own ops are slow (see
//! `docs/benchmarks.md`), each entry point taking tensors `kernels/mod.rs` has matched to it
//! (a CUDA device, a dtype the kernel has).
//!
//! - `conv.rs`: convolutions through cuDNN, one plan per shape (descriptors, the algorithm
//!   cuDNN's heuristics pick, its workspace size) made once and kept, one workspace per
//!   device reused; candle would make all of them on every call.
//! - `norm.rs`: GroupNorm, with the SiLU after it when asked, as two kernels (statistics,
//!   then normalise) in the network's dtype, in place of candle's chain of f32 ops.
//! - `attention.rs`: attention over the whole score matrix at once (in large chunks only
//!   when it would not fit), scores from cuBLAS in f32 from half inputs, softmax straight
//!   into the network's dtype.
//!
//! The kernels in `kernels.cu` are compiled to PTX by `build.rs` and loaded once per device.

mod attention;
mod conv;
mod norm;

pub(crate) use attention::attention;
pub(crate) use conv::conv2d;
pub(crate) use norm::group_norm;

use candle_core::{DType, Result};

/// `kernels.cu`, compiled by `build.rs`, and the name it is loaded under.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "sie_kernels";

/// The name of the kernel `name` of `kernels.cu` for `dtype` (`name_f32`, `name_f16`,
/// `name_bf16`), to load with `get_or_load_custom_func(_, MODULE, PTX)`.
fn kernel(name: &str, dtype: DType) -> Result<String> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("{name}: no CUDA kernel for {other:?}"),
    };
    Ok(format!("{name}_{suffix}"))
}

/// Whether a dtype is one the kernels of `kernels.cu` and cuDNN take.
pub(crate) fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}
