//! The ops in candle's own tensor operations: what runs wherever no kernel of ours does
//! (any device without one, and the dtypes and options our kernels do not take).
//!
//! Each function computes what the matching kernel computes, with candle's modules and ops
//! (`candle_nn::Conv2d`, `candle_nn::GroupNorm`, `gelu_erf`, matmul and softmax), so a
//! network gets the same result on every device up to the order of additions. They run
//! on any device candle runs on, so nothing here may assume the CPU.

use candle_core::{DType, Module, Result, Tensor, D};

use super::{Attention, Conv2d, GroupNorm};

/// `conv` over `xs`, through `candle_nn::Conv2d`.
pub(crate) fn conv2d(xs: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    candle_nn::Conv2d::new(conv.weight.clone(), conv.bias.clone(), conv.config).forward(xs)
}

/// `norm` over `xs`, then SiLU when `silu`, through `candle_nn::GroupNorm` and candle's SiLU.
pub(crate) fn group_norm(xs: &Tensor, norm: &GroupNorm, silu: bool) -> Result<Tensor> {
    let (weight, bias) = (norm.weight.clone(), norm.bias.clone());
    let channels = weight.dims1()?;
    let normed =
        candle_nn::GroupNorm::new(weight, bias, channels, norm.groups, norm.eps)?.forward(xs)?;
    if silu {
        candle_nn::ops::silu(&normed)
    } else {
        Ok(normed)
    }
}

/// As `kernels::attention` (shapes already checked): heads split into the batch, queries in
/// chunks so one chunk's scores stay under 2^24 elements (64 MB in f32), scores and softmax
/// in f32.
/// The most f32 scores one chunk of [`chunked`] holds.
pub(crate) const MAX_SCORES: usize = 1 << 24;

pub(crate) fn chunked(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    let Attention { heads, scale } = op;
    let dtype = q.dtype();
    let q = split_heads(q, heads)?;
    let k_t = split_heads(&k.to_dtype(DType::F32)?, heads)?
        .t()?
        .contiguous()?;
    let v = split_heads(&v.to_dtype(DType::F32)?, heads)?;
    let (bh, n_q, _) = q.dims3()?;
    let n_k = k_t.dim(2)?;
    let chunk = (MAX_SCORES / (bh * n_k).max(1)).clamp(1, n_q.max(1));
    let mut outs = Vec::with_capacity(n_q.div_ceil(chunk));
    let mut start = 0;
    while start < n_q {
        let len = chunk.min(n_q - start);
        let q_chunk = q.narrow(1, start, len)?.to_dtype(DType::F32)?;
        let scores = (q_chunk.matmul(&k_t)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = Tensor::cat(&outs, 1)?;
    merge_heads(&out, heads)?.to_dtype(dtype)
}

/// (batch, seq, heads * head_dim) -> (batch * heads, seq, head_dim).
pub(crate) fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = xs.dims3()?;
    xs.reshape((b, n, heads, c / heads))?
        .transpose(1, 2)?
        .reshape((b * heads, n, c / heads))
}

/// (batch * heads, seq, head_dim) -> (batch, seq, heads * head_dim).
pub(crate) fn merge_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, n, d) = xs.dims3()?;
    xs.reshape((bh / heads, heads, n, d))?
        .transpose(1, 2)?
        .reshape((bh / heads, n, heads * d))
}

/// As `kernels::gelu`: candle's exact (erf) GELU.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// As `kernels::geglu` (width already checked): the first half times the GELU of the second.
pub(crate) fn geglu(xs: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    xs.narrow(D::Minus1, 0, half)? * xs.narrow(D::Minus1, half, half)?.gelu_erf()?
}
