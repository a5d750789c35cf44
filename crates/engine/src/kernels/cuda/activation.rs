//! GEGLU, the UNet transformers' feed-forward gate, as one kernel on a CUDA device.
//!
//! `xs[..., :n] * gelu(xs[..., n:])` as candle's ops is a GELU over one strided half and a
//! product with the other (two launches, and the GELU's result written and read back);
//! `geglu` reads the `2n` inputs of a row once and writes its `n` outputs, in the
//! network's dtype with f32 arithmetic and candle's exact GELU (`x * normcdf(x)`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Threads per block, along a row.
const THREADS: u32 = 256;
/// Most blocks along the rows; a block strides over the rest.
const MAX_ROW_BLOCKS: usize = 65535;

/// `xs[..., :n] * gelu(xs[..., n:])` for `xs` of last dimension `2n` (checked even by
/// `kernels::geglu`).
pub(crate) fn geglu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Geglu)
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "sie-geglu-cuda"
    }

    cuda_only!(1);

    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dims = lx.shape().dims();
        let width = dims.last().copied().unwrap_or(0);
        if width % 2 != 0 || !lx.is_contiguous() {
            candle_core::bail!("geglu: a contiguous last dimension of even width, not {dims:?}")
        }
        let n = width / 2;
        let rows = lx.shape().elem_count() / width.max(1);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = n;
        }
        let device = x.device().clone();
        let dtype = x.dtype();
        let config = LaunchConfig {
            grid_dim: (
                n.div_ceil(THREADS as usize).max(1) as u32,
                rows.clamp(1, MAX_ROW_BLOCKS) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_arg, n_arg) = (rows as i64, n as i64);
        macro_rules! run {
            ($t:ty) => {{
                let xs = x.as_cuda_slice::<$t>()?.slice(lx.start_offset()..);
                // SAFETY: `geglu` writes every element.
                let out = unsafe { device.alloc::<$t>(rows * n)? };
                if rows * n > 0 {
                    let func = device.get_or_load_custom_func(
                        &super::kernel("geglu", dtype)?,
                        super::MODULE,
                        super::PTX,
                    )?;
                    let mut launch = func.builder();
                    launch.arg(&xs).arg(&out).arg(&rows_arg).arg(&n_arg);
                    // SAFETY: the arguments match `geglu` in kernels.cu.
                    unsafe { launch.launch(config) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match dtype {
            DType::F32 => run!(f32),
            DType::F16 => run!(half::f16),
            DType::BF16 => run!(half::bf16),
            other => candle_core::bail!("geglu: no CUDA kernel for {other:?}"),
        };
        Ok((out, Shape::from(out_dims)))
    }
}
