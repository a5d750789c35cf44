//! The device kernels: the one place a network runs one of the ops we have kernels for.
//!
//! Each op is here once, as what every implementation of it takes: `Conv2d` and
//! `GroupNorm` (their weights and options, called through `Module::forward`; a convolution
//! with a residual after it through `Conv2d::forward_add`), and the functions `attention`
//! (with its `Attention` shape), `gelu`, `geglu`, `bias_residual` and
//! `tokens_to_image_residual` (a linear layer's bias and the residual after it) and
//! `timestep_embedding` (with its `TimestepEmbedding` options). Each matches the
//! operands' device, and the dtypes and options a kernel takes, to an implementation:
//! `cpu/` holds our CPU kernels, `portable.rs` candle's own ops, which run everywhere else.
//! The networks call these and never see the device; this is candle-nn's pattern for fused
//! ops (one plain call, one kernel per device behind it), kept in one file so what runs
//! where can be read at a glance.
//!
//! A device's kernels are a folder beside `cpu/` (`cuda/`, with the `cuda` feature: cuDNN
//! convolutions with kept plans, a fused GroupNorm, cuDNN's fused attention for half
//! precision and whole-matrix attention for the rest, one-pass GEGLU, bias + residual and
//! timestep embedding) and an arm in
//! each `match` naming the device and what its kernel takes, above the portable fallback;
//! the networks do not change. The arms look only at device,
//! dtype and options, so the fallback stays right for any device candle runs on.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod portable;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::Conv2dConfig;

/// A 2-D convolution: weight `[c_out, c_in / groups, kh, kw]`, bias `[c_out]`, options.
/// Our CPU kernel takes f32 without groups or dilation.
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) config: Conv2dConfig,
}

impl Module for Conv2d {
    /// `xs` is (batch, c_in, h, w).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        match xs.device() {
            Device::Cpu
                if xs.dtype() == DType::F32
                    && self.weight.dtype() == DType::F32
                    && c.groups == 1
                    && c.dilation == 1 =>
            {
                cpu::im2col_gemm(xs, self)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(_) if cuda::supports(xs.dtype()) => cuda::conv2d(xs, self),
            _ => portable::conv2d(xs, self),
        }
    }
}

impl Conv2d {
    /// `self.forward(xs) + residual`: `residual` shaped like the output (a resnet's skip),
    /// or `(batch, c_out)`, one value per channel added over the pixels (a resnet's time
    /// embedding). On CUDA the convolution runs without its bias and one kernel adds the
    /// bias and the residual; elsewhere it is the convolution, then candle's add.
    pub(crate) fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match (xs.device(), &self.bias) {
            #[cfg(feature = "cuda")]
            (Device::Cuda(_), Some(bias))
                if cuda::supports(xs.dtype()) && residual.dtype() == xs.dtype() =>
            {
                let bare = Conv2d {
                    bias: None,
                    ..self.clone()
                };
                let y = cuda::conv2d(xs, &bare)?;
                let bias = bias.to_dtype(y.dtype())?;
                cuda::bias_residual(&y, &bias, cuda::BiasAxis::Channels, residual)
            }
            _ => {
                let out = self.forward(xs)?;
                if residual.rank() == 2 {
                    out.broadcast_add(&residual.unsqueeze(2)?.unsqueeze(3)?)
                } else {
                    out + residual
                }
            }
        }
    }
}

/// diffusers' `nn.GroupNorm`: `groups` groups of channels, each normalised with `eps`, then
/// scaled by `weight` and shifted by `bias` (channels). Our CPU kernel takes f32 of rank 3
/// or more.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) groups: usize,
    pub(crate) eps: f64,
}

impl GroupNorm {
    /// `silu(group_norm(xs))`, as every resnet and the output stage compute it.
    pub(crate) fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        match xs.device() {
            Device::Cpu
                if xs.dtype() == DType::F32
                    && self.weight.dtype() == DType::F32
                    && xs.rank() >= 3 =>
            {
                cpu::fused(xs, self, silu)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(_) if cuda::supports(xs.dtype()) && xs.rank() >= 3 => {
                cuda::group_norm(xs, self, silu)
            }
            _ => portable::group_norm(xs, self, silu),
        }
    }
}

impl Module for GroupNorm {
    /// `xs` is (batch, channels, ...).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }
}

/// Multi-head scaled dot-product attention: `heads` heads share the width, scores are
/// scaled by `scale`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attention {
    pub(crate) heads: usize,
    pub(crate) scale: f64,
}

/// `softmax(q kᵀ * scale) v` per head. `q` is `(batch, n_q, heads * d)`, `k` is
/// `(batch, n_k, heads * d)` and `v` is `(batch, n_k, heads * d_v)`; the result is
/// `(batch, n_q, heads * d_v)` in `q`'s dtype, with scores and softmax in f32 on every
/// path. Our CPU kernel takes q, k and v of one dtype among f32, f16 and bf16.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    let heads = op.heads;
    let (b, _, c_qk) = q.dims3()?;
    let (bk, n_k, c_k) = k.dims3()?;
    let (bv, n_v, c_v) = v.dims3()?;
    if bk != b || bv != b || c_k != c_qk || n_v != n_k {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if heads == 0 || c_qk % heads != 0 || c_v % heads != 0 || n_k == 0 {
        candle_core::bail!(
            "attention: {heads} heads cannot split q/k width {c_qk} and v width {c_v} over {n_k} keys"
        )
    }
    let same_dtype = k.dtype() == q.dtype() && v.dtype() == q.dtype();
    match q.device() {
        Device::Cpu if same_dtype && matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16) => {
            cpu::tiled(q, k, v, op)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if same_dtype && cuda::supports(q.dtype()) => cuda::attention(q, k, v, op),
        _ => portable::chunked(q, k, v, op),
    }
}

/// Bytes of scratch one [`attention`] call over `rows` sequences of `heads` heads of width
/// `head_dim` holds at its peak beyond its inputs and output, by the path it takes on
/// `device` for `dtype`: what the batch planner (`memory.rs`) counts for attention.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn attention_scratch_bytes(
    device: &Device,
    dtype: DType,
    rows: usize,
    heads: usize,
    n_q: usize,
    n_k: usize,
    head_dim: usize,
) -> u64 {
    let scores = (rows * heads * n_q * n_k) as u64;
    match device {
        // Tiles of one thread's queries and keys: nothing that grows with the image.
        Device::Cpu => 0,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if cuda::supports(dtype) => {
            cuda::attention_scratch_bytes(dtype, rows, heads, n_q, n_k, head_dim)
        }
        // f32 scores and the probabilities in the model's dtype, one chunk at a time.
        _ => scores.min(portable::MAX_SCORES as u64) * (4 + dtype.size_in_bytes() as u64),
    }
}

/// The exact (erf) GELU of every element. Our CPU kernel takes f32.
pub(crate) fn gelu(xs: &Tensor) -> Result<Tensor> {
    match xs.device() {
        Device::Cpu if xs.dtype() == DType::F32 => cpu::gelu(xs),
        _ => portable::gelu(xs),
    }
}

/// GEGLU's gate: `xs[..., :n] * gelu(xs[..., n:])` for `xs` of last dimension `2n`. Our
/// CPU kernel takes f32.
pub(crate) fn geglu(xs: &Tensor) -> Result<Tensor> {
    let width = xs.dim(D::Minus1)?;
    if width % 2 != 0 {
        candle_core::bail!("geglu: the last dimension ({width}) is not even")
    }
    match xs.device() {
        Device::Cpu if xs.dtype() == DType::F32 => cpu::geglu(xs),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if cuda::supports(xs.dtype()) => cuda::geglu(xs),
        _ => portable::geglu(xs),
    }
}

/// Whether the fused CUDA kernels take `y`, its `bias` and the `residual`: a dtype they have,
/// the same for all three.
#[cfg(feature = "cuda")]
fn cuda_fusable(y: &Tensor, bias: &Tensor, residual: &Tensor) -> bool {
    cuda::supports(y.dtype()) && bias.dtype() == y.dtype() && residual.dtype() == y.dtype()
}

/// A linear layer's bare product `y` `(..., out)` plus its `bias` `(out)`, plus `residual`
/// shaped like `y`: `(y + bias) + residual`, what a linear layer with a residual after it
/// computes. On CUDA one kernel adds both (the product came from cuBLAS without the bias);
/// elsewhere candle's two adds, in that order.
pub(crate) fn bias_residual(
    y: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    match (y.device(), bias) {
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), Some(bias)) if cuda_fusable(y, bias, residual) => {
            cuda::bias_residual(y, bias, cuda::BiasAxis::Last, residual)
        }
        _ => portable::bias_residual(y, bias, residual),
    }
}

/// A linear layer's bare product over an image's tokens, `y` `(batch, h * w, c)`, plus its
/// `bias` `(c)`, as the image `(batch, c, h, w)`, plus `residual` (that image): the
/// transformer's `proj_out` and the skip around it. On CUDA one kernel adds the bias,
/// transposes and adds the residual; elsewhere candle's add, copy into the image and add.
pub(crate) fn tokens_to_image_residual(
    y: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Tensor> {
    match (y.device(), bias) {
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), Some(bias)) if cuda_fusable(y, bias, residual) => {
            cuda::tokens_to_image_residual(y, bias, residual)
        }
        _ => portable::tokens_to_image_residual(y, bias, residual),
    }
}

/// diffusers' `get_timestep_embedding` as the UNet configures it: `dim` sinusoids (an even
/// width), at frequencies `exp(-ln(10000) * i / (dim / 2 - freq_shift))`, cosines first
/// when `flip_sin_to_cos`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimestepEmbedding {
    pub(crate) dim: usize,
    pub(crate) flip_sin_to_cos: bool,
    pub(crate) freq_shift: f64,
}

impl TimestepEmbedding {
    /// `-ln(10000)` and `dim / 2 - freq_shift` in f32, as torch forms them: frequency `i`
    /// is `exp(ln_period * i / denom)`, the product and quotient in f32.
    pub(crate) fn frequencies(&self) -> (f32, f32) {
        let ln_period = -(10000f64.ln()) as f32;
        let denom = ((self.dim / 2) as f64 - self.freq_shift) as f32;
        (ln_period, denom)
    }
}

/// The embedding of each row's timestep, `(rows, dim)` in `dtype` on `device`: one
/// timestep for every row, or one per row (runs at different steps in one batch). Computed
/// in f32 as torch does. On CUDA one kernel writes it; elsewhere it is computed on the host
/// and uploaded.
pub(crate) fn timestep_embedding(
    timesteps: &[f64],
    rows: usize,
    embedding: TimestepEmbedding,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if timesteps.len() != 1 && timesteps.len() != rows {
        candle_core::bail!(
            "{} timesteps for a batch of {rows}: give one, or one per row",
            timesteps.len()
        )
    }
    if embedding.dim % 2 != 0 {
        candle_core::bail!(
            "timestep embedding: the width {} is not even",
            embedding.dim
        )
    }
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(_)
            if cuda::supports(dtype) && rows > 0 && timesteps.len() <= cuda::MAX_TIMESTEPS =>
        {
            cuda::timestep_embedding(timesteps, rows, embedding, dtype, device)
        }
        _ => portable::timestep_embedding(timesteps, rows, embedding, dtype, device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portable::{merge_heads, split_heads};

    /// The textbook formula on the whole score matrix, in f64.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let (q, k, v) = (
            split_heads(&q.to_dtype(DType::F64)?, heads)?,
            split_heads(&k.to_dtype(DType::F64)?, heads)?,
            split_heads(&v.to_dtype(DType::F64)?, heads)?,
        );
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
            .exp()?;
        let probs = scores.broadcast_div(&scores.sum_keepdim(D::Minus1)?)?;
        merge_heads(&probs.matmul(&v)?, heads)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()
    }

    /// Both attention paths, the CPU kernel and the portable one, on shapes that cross tile
    /// edges on both axes, several heads, d != d_v, one key, and scores large enough (up to
    /// about 150) that a softmax without the running maximum would overflow; f32 scores of
    /// that size carry errors near 1e-5 of their own, hence the looser tolerance there.
    #[test]
    fn attention_matches_the_formula() -> Result<()> {
        let dev = Device::Cpu;
        for &(b, n_q, n_k, heads, d, d_v, spread, tolerance) in &[
            (2, 300, 77, 5, 8, 8, 1.0, 1e-5),
            (1, 129, 513, 2, 16, 12, 1.0, 1e-5),
            (2, 64, 1, 3, 4, 4, 1.0, 1e-5),
            (1, 260, 600, 1, 32, 32, 6.0, 2e-4),
        ] {
            let q = Tensor::randn(0f32, spread, (b, n_q, heads * d), &dev)?;
            let k = Tensor::randn(0f32, spread, (b, n_k, heads * d), &dev)?;
            let v = Tensor::randn(0f32, 1., (b, n_k, heads * d_v), &dev)?;
            let scale = (d as f64).powf(-0.5);
            let want = reference(&q, &k, &v, heads, scale)?;
            let op = Attention { heads, scale };
            let got = attention(&q, &k, &v, op)?;
            assert_eq!(got.dims(), &[b, n_q, heads * d_v]);
            let diff = max_diff(&want, &got)?;
            assert!(
                diff < tolerance,
                "{:?}: max diff {diff}",
                (b, n_q, n_k, heads)
            );
            let portable = portable::chunked(&q, &k, &v, op)?;
            let diff = max_diff(&want, &portable)?;
            assert!(
                diff < tolerance,
                "portable {:?}: max diff {diff}",
                (b, n_q, n_k)
            );
        }
        Ok(())
    }

    /// f16 and bf16 in, the same dtype out, computed in f32: as close to the f64 formula on
    /// the rounded inputs as the output's own rounding allows.
    #[test]
    fn half_dtypes_compute_in_f32() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, tolerance) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
            let q = Tensor::randn(0f32, 1., (2, 150, 2 * 16), &dev)?.to_dtype(dtype)?;
            let k = Tensor::randn(0f32, 1., (2, 270, 2 * 16), &dev)?.to_dtype(dtype)?;
            let v = Tensor::randn(0f32, 1., (2, 270, 2 * 16), &dev)?.to_dtype(dtype)?;
            let op = Attention {
                heads: 2,
                scale: 0.25,
            };
            let got = attention(&q, &k, &v, op)?;
            assert_eq!(got.dtype(), dtype);
            let diff = max_diff(&reference(&q, &k, &v, 2, 0.25)?, &got)?;
            assert!(diff < tolerance, "{dtype:?}: max diff {diff}");
        }
        Ok(())
    }

    #[test]
    fn mismatched_attention_shapes_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 4, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 5, 8), DType::F32, &dev)?;
        let v = Tensor::zeros((1, 6, 8), DType::F32, &dev)?;
        let op = |heads| Attention { heads, scale: 1.0 };
        assert!(attention(&q, &k, &v, op(2)).is_err());
        assert!(attention(&q, &k, &k, op(3)).is_err());
        Ok(())
    }

    /// Off CUDA the fused ops are candle's adds in the order the networks made them before
    /// (the parity tests depend on it): bit for bit the same results.
    #[test]
    fn residual_ops_off_cuda_are_the_adds_they_replace() -> Result<()> {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 1., (2, 6, 5), &dev)?;
        let bias = Tensor::randn(0f32, 1., 5, &dev)?;
        let residual = Tensor::randn(0f32, 1., (2, 6, 5), &dev)?;
        let want = (y.broadcast_add(&bias)? + &residual)?;
        assert_eq!(
            max_diff(&bias_residual(&y, Some(&bias), &residual)?, &want)?,
            0.0
        );
        let image = Tensor::randn(0f32, 1., (2, 5, 2, 3), &dev)?;
        let want = (y
            .broadcast_add(&bias)?
            .reshape((2, 2, 3, 5))?
            .permute((0, 3, 1, 2))?
            .contiguous()?
            + &image)?;
        let got = tokens_to_image_residual(&y, Some(&bias), &image)?;
        assert_eq!(max_diff(&got, &want)?, 0.0);
        let conv = Conv2d {
            weight: Tensor::randn(0f32, 1., (5, 3, 3, 3), &dev)?,
            bias: Some(bias),
            config: Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        };
        let xs = Tensor::randn(0f32, 1., (2, 3, 2, 3), &dev)?;
        let want = (&image + conv.forward(&xs)?)?;
        assert_eq!(max_diff(&conv.forward_add(&xs, &image)?, &want)?, 0.0);
        let per_channel = Tensor::randn(0f32, 1., (2, 5), &dev)?;
        let want = conv
            .forward(&xs)?
            .broadcast_add(&per_channel.reshape((2, 5, 1, 1))?)?;
        let got = conv.forward_add(&xs, &per_channel)?;
        assert_eq!(max_diff(&got, &want)?, 0.0);
        Ok(())
    }

    /// One timestep for every row is that row repeated; a count that is neither one nor
    /// one per row, or an odd width, is refused.
    #[test]
    fn timestep_embedding_takes_one_timestep_or_one_per_row() -> Result<()> {
        let dev = Device::Cpu;
        let embedding = TimestepEmbedding {
            dim: 8,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        };
        let one = timestep_embedding(&[981.0], 3, embedding, DType::F32, &dev)?;
        let each = timestep_embedding(&[981.0; 3], 3, embedding, DType::F32, &dev)?;
        assert_eq!(one.dims(), &[3, 8]);
        assert_eq!(max_diff(&one, &each)?, 0.0);
        // Cosines first: at timestep 0 the first half is 1, the second 0.
        let zero = timestep_embedding(&[0.0], 1, embedding, DType::F32, &dev)?;
        assert_eq!(
            zero.flatten_all()?.to_vec1::<f32>()?,
            [1., 1., 1., 1., 0., 0., 0., 0.]
        );
        assert!(timestep_embedding(&[1.0, 2.0], 3, embedding, DType::F32, &dev).is_err());
        let odd = TimestepEmbedding {
            dim: 7,
            ..embedding
        };
        assert!(timestep_embedding(&[1.0], 1, odd, DType::F32, &dev).is_err());
        Ok(())
    }

    /// Every path refuses an odd width, and the CPU kernel and the portable ops agree.
    #[test]
    fn geglu_paths_agree_and_refuse_an_odd_width() -> Result<()> {
        let dev = Device::Cpu;
        assert!(geglu(&Tensor::zeros((2, 3), DType::F32, &dev)?).is_err());
        assert!(geglu(&Tensor::zeros((2, 3), DType::F64, &dev)?).is_err());
        let xs = (Tensor::randn(0f32, 1., (3, 5, 8), &dev)? * 3.0)?;
        let diff = (geglu(&xs)? - portable::geglu(&xs)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }
}
