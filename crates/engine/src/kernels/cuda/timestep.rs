//! diffusers' sinusoidal timestep embedding, written on a CUDA device by one kernel.
//!
//! The portable path computes the rows on the host and uploads them, then repeats one row
//! over the batch and casts to the network's dtype: an upload and a launch per row and
//! the cast, every step. Here the timesteps travel as the kernel's parameter (by value, up
//! to [`MAX_TIMESTEPS`] of them) and one launch writes every row in the network's dtype.
//! Exponent in f32 as torch forms it; `exp`, `sin` and `cos` in f64, rounded, so the values
//! are the host's.
//!
//! A captured CUDA graph would keep the parameter it was captured with: one that replays
//! the UNet at a new timestep must update this kernel's parameter (or leave it out).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Device, Result, Storage, Tensor};

use crate::kernels::TimestepEmbedding;

/// The most distinct timesteps one launch takes (as `MAX_TIMESTEPS` in kernels.cu); more
/// rows at distinct steps take the portable path.
pub(crate) const MAX_TIMESTEPS: usize = 256;
/// Threads per block (one block per row).
const THREADS: u32 = 128;

/// `(rows, embedding.dim)` in `dtype`, row `r` the embedding of `timesteps[0]` when there
/// is one, else of `timesteps[r]` (`kernels::timestep_embedding` checked the count, that
/// there are at most [`MAX_TIMESTEPS`] and that the width is even).
pub(crate) fn timestep_embedding(
    timesteps: &[f64],
    rows: usize,
    embedding: TimestepEmbedding,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let cuda = device.as_cuda_device()?;
    let mut ts = [0f32; MAX_TIMESTEPS];
    for (slot, &t) in ts.iter_mut().zip(timesteps) {
        *slot = t as f32;
    }
    let (ln_period, denom) = embedding.frequencies();
    let count = timesteps.len() as i32;
    let half = (embedding.dim / 2) as i32;
    let flip = i32::from(embedding.flip_sin_to_cos);
    let config = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let len = rows * embedding.dim;
    macro_rules! run {
        ($t:ty) => {{
            // SAFETY: `timestep_embedding` writes every element.
            let out = unsafe { cuda.alloc::<$t>(len)? };
            if len > 0 {
                let func = cuda.get_or_load_custom_func(
                    &super::kernel("timestep_embedding", dtype)?,
                    super::MODULE,
                    super::PTX,
                )?;
                let mut launch = func.builder();
                launch.arg(&ts).arg(&count).arg(&out).arg(&half);
                launch.arg(&ln_period).arg(&denom).arg(&flip);
                // SAFETY: the arguments match `timestep_embedding` in kernels.cu (`ts` is
                // its `Timesteps`, MAX_TIMESTEPS floats by value).
                unsafe { launch.launch(config) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, cuda.clone())
        }};
    }
    let storage = match dtype {
        DType::F32 => run!(f32),
        DType::F16 => run!(half::f16),
        DType::BF16 => run!(half::bf16),
        other => candle_core::bail!("timestep embedding: no CUDA kernel for {other:?}"),
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (rows, embedding.dim),
        BackpropOp::none(),
        false,
    ))
}
