//! Attention on a CUDA device: the whole score matrix at once.
//!
//! The portable path computes attention in query chunks of 2^24 scores, which at 768x768
//! is 51 chunks of a handful of small kernels per self-attention; a large GPU holds the
//! whole matrix (3.4 GB of f32 scores at 768, batch 2), so here one chunk covers every
//! query unless the scores would pass `MAX_SCORES`. Per chunk:
//!
//! 1. scores = q kᵀ · scale, by cuBLAS from q and k in the network's dtype (tensor cores
//!    for half) straight into f32, so SD 2.1's large scores neither overflow a half nor
//!    need f32 copies of q and k (what diffusers' `upcast_attention` guards against);
//! 2. `softmax_rows` (kernels.cu) turns each row of f32 scores into probabilities in the
//!    network's dtype, in one pass of reads;
//! 3. probs v by candle's matmul in the network's dtype, as diffusers does after its
//!    softmax.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::sys as cublas;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp1, CustomOp2, DType, Layout, Result};
use candle_core::{Shape, Tensor};

use crate::kernels::portable::{merge_heads, split_heads};
use crate::kernels::Attention;

/// The most f32 scores one chunk holds (4 GiB): SD 2.1's whole matrix up to 768x768 images
/// at batch 2 (2 x 5 heads x 9216² scores); more is cut into query chunks of this size.
pub(super) const MAX_SCORES: usize = 1 << 30;

/// Threads per block of `softmax_rows`.
const SOFTMAX_THREADS: u32 = 256;

/// `softmax(q kᵀ * scale) v` per head; shapes as `kernels::attention` checked them.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    let Attention { heads, scale } = op;
    let dtype = q.dtype();
    let q = split_heads(q, heads)?.contiguous()?;
    let k = split_heads(k, heads)?.contiguous()?;
    let v = split_heads(v, heads)?.contiguous()?;
    let (bh, n_q, _) = q.dims3()?;
    let n_k = k.dim(1)?;
    let chunk = (MAX_SCORES / (bh * n_k).max(1)).clamp(1, n_q.max(1));
    let scores = Scores {
        scale: scale as f32,
    };
    let mut outs = Vec::with_capacity(n_q.div_ceil(chunk));
    let mut start = 0;
    while start < n_q {
        let len = chunk.min(n_q - start);
        let s = q.narrow(1, start, len)?.apply_op2_no_bwd(&k, &scores)?;
        let probs = s.apply_op1_no_bwd(&SoftmaxInto(dtype))?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    };
    merge_heads(&out, heads)
}

/// `q kᵀ * scale` in f32 for q (batch, n, d), whose rows may be a narrowed view, and
/// contiguous k (batch, n_k, d), of one dtype.
struct Scores {
    scale: f32,
}

impl CustomOp2 for Scores {
    fn name(&self) -> &'static str {
        "sie-attention-scores-cuda"
    }

    cuda_only!(2);

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, n, d) = lq.shape().dims3()?;
        let (_, n_k, _) = lk.shape().dims3()?;
        let (sq, sk) = (lq.stride(), lk.stride());
        if sq[2] != 1 || sq[1] != d || !lk.is_contiguous() {
            candle_core::bail!("attention scores: q rows and k must be contiguous")
        }
        let device = q.device().clone();
        // SAFETY: cuBLAS writes every element (beta = 0).
        let mut out = unsafe { device.alloc::<f32>(b * n * n_k)? };
        let gemm = Gemm {
            batch: b,
            n,
            n_k,
            d,
            q_batch_stride: sq[0],
            k_batch_stride: sk[0],
            scale: self.scale,
        };
        match q.dtype() {
            DType::F32 => {
                gemm.run::<f32>(q, lq, k, lk, &mut out, cublas::cudaDataType::CUDA_R_32F)?
            }
            DType::F16 => {
                gemm.run::<half::f16>(q, lq, k, lk, &mut out, cublas::cudaDataType::CUDA_R_16F)?
            }
            DType::BF16 => {
                gemm.run::<half::bf16>(q, lq, k, lk, &mut out, cublas::cudaDataType::CUDA_R_16BF)?
            }
            other => candle_core::bail!("attention scores: no CUDA path for {other:?}"),
        }
        let shape = Shape::from((b, n, n_k));
        Ok((CudaStorage::wrap_cuda_slice(out, device), shape))
    }
}

/// The batched product behind [`Scores`]: sizes and strides in elements.
struct Gemm {
    batch: usize,
    n: usize,
    n_k: usize,
    d: usize,
    q_batch_stride: usize,
    k_batch_stride: usize,
    scale: f32,
}

impl Gemm {
    /// Runs it on q and k of element type `T` (cuBLAS type `data_type`) into `out`.
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        out: &mut CudaSlice<f32>,
        data_type: cublas::cudaDataType,
    ) -> Result<()> {
        let device = q.device();
        let stream = device.cuda_stream();
        let qs = q.as_cuda_slice::<T>()?.slice(lq.start_offset()..);
        let ks = k.as_cuda_slice::<T>()?.slice(lk.start_offset()..);
        // The guards keep the buffers' uses recorded until the product is queued.
        let (qp, _q) = qs.device_ptr(&stream);
        let (kp, _k) = ks.device_ptr(&stream);
        let (op, _o) = out.device_ptr_mut(&stream);
        let (alpha, beta) = (self.scale, 0f32);
        let blas = device.cublas_handle();
        let Gemm { n, n_k, d, .. } = *self;
        // Column-major, as cuBLAS sees row-major memory: C (n_k x n) = (Kᵀ)ᵀ·Qᵀ, so for
        // each batch row i of the scores holds q_i · k_j for every key j.
        // SAFETY: pointers, leading dimensions and strides describe the three buffers.
        unsafe {
            cublas::cublasGemmStridedBatchedEx(
                *blas.handle(),
                cublas::cublasOperation_t::CUBLAS_OP_T,
                cublas::cublasOperation_t::CUBLAS_OP_N,
                n_k as i32,
                n as i32,
                d as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                kp as *const std::ffi::c_void,
                data_type,
                d as i32,
                self.k_batch_stride as i64,
                qp as *const std::ffi::c_void,
                data_type,
                d as i32,
                self.q_batch_stride as i64,
                &beta as *const f32 as *const std::ffi::c_void,
                op as *mut std::ffi::c_void,
                cublas::cudaDataType::CUDA_R_32F,
                n_k as i32,
                (n * n_k) as i64,
                self.batch as i32,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
            .result()
            .w()
        }
    }
}

/// The softmax of each last-dimension row of contiguous f32 scores, in the given dtype.
struct SoftmaxInto(DType);

impl CustomOp1 for SoftmaxInto {
    fn name(&self) -> &'static str {
        "sie-softmax-rows-cuda"
    }

    cuda_only!(1);

    fn cuda_fwd(&self, scores: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("softmax rows: the scores must be contiguous")
        }
        let shape = layout.shape().clone();
        let cols = shape.dims().last().copied().unwrap_or(1);
        let rows = shape.elem_count() / cols.max(1);
        let device = scores.device().clone();
        let src = scores
            .as_cuda_slice::<f32>()?
            .slice(layout.start_offset()..);
        let func = device.get_or_load_custom_func(
            &super::kernel("softmax_rows", self.0)?,
            super::MODULE,
            super::PTX,
        )?;
        let config = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (SOFTMAX_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let cols = cols as i64;
        macro_rules! run {
            ($t:ty) => {{
                // SAFETY: `softmax_rows` writes every element.
                let out = unsafe { device.alloc::<$t>(shape.elem_count())? };
                let mut launch = func.builder();
                launch.arg(&src).arg(&out).arg(&cols);
                // SAFETY: the arguments match `softmax_rows` in kernels.cu.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match self.0 {
            DType::F32 => run!(f32),
            DType::F16 => run!(half::f16),
            DType::BF16 => run!(half::bf16),
            other => candle_core::bail!("softmax rows: no CUDA kernel for {other:?}"),
        };
        Ok((out, shape))
    }
}
