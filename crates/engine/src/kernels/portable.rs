//! The ops in candle's own tensor operations: what runs wherever no kernel of ours does
//! (any device without one, and the dtypes and options our kernels do not take).
//!
//! Each function computes what the matching kernel computes, with candle's modules and ops
//! (`candle_nn::Conv2d`, `candle_nn::GroupNorm`, `gelu_erf`, matmul and softmax), so a
//! network gets the same result on every device up to the order of additions. They run
//! on any device candle runs on, so nothing here may assume the CPU.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::{Attention, Conv2d, GroupNorm, TimestepEmbedding};

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

/// As `kernels::bias_residual`: the bias broadcast over the rows, then the residual.
pub(crate) fn bias_residual(
    y: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    match bias {
        Some(bias) => y.broadcast_add(bias)? + residual,
        None => y + residual,
    }
}

/// As `kernels::tokens_to_image_residual`: the bias, the tokens copied into the image
/// layout of `residual` `(batch, c, h, w)`, then the residual.
pub(crate) fn tokens_to_image_residual(
    y: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    let (b, c, h, w) = residual.dims4()?;
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y.clone(),
    };
    y.reshape((b, h, w, c))?
        .permute((0, 3, 1, 2))?
        .contiguous()?
        + residual
}

/// As `kernels::timestep_embedding` (count and width already checked): each distinct row
/// on the host in f32, uploaded, repeated over the rows when there is one timestep, and
/// cast to `dtype`.
pub(crate) fn timestep_embedding(
    timesteps: &[f64],
    rows: usize,
    embedding: TimestepEmbedding,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let dim = embedding.dim;
    let half = dim / 2;
    let (ln_period, denom) = embedding.frequencies();
    let row = |timestep: f64| {
        let t = timestep as f32;
        let mut sin = Vec::with_capacity(half);
        let mut cos = Vec::with_capacity(half);
        for i in 0..half {
            let freq = (ln_period * i as f32 / denom).exp();
            let arg = t * freq;
            sin.push(arg.sin());
            cos.push(arg.cos());
        }
        if embedding.flip_sin_to_cos {
            [cos, sin].concat()
        } else {
            [sin, cos].concat()
        }
    };
    let table = match timesteps {
        [t] => Tensor::from_vec(row(*t), (1, dim), device)?.repeat((rows, 1))?,
        each => {
            let all: Vec<f32> = each.iter().flat_map(|&t| row(t)).collect();
            Tensor::from_vec(all, (rows, dim), device)?
        }
    };
    table.to_dtype(dtype)
}
