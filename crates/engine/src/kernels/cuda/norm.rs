//! GroupNorm, optionally fused with the SiLU after it, on a CUDA device.
//!
//! A group of an (batch, channels, pixels...) tensor is one contiguous run of
//! `channels / groups * pixels` elements. At SD's sizes a group is up to millions of
//! elements and there are only `batch * 32` groups, too few blocks to fill the GPU, so each
//! group is cut into chunks: `group_stats` writes every chunk's Welford statistics,
//! `group_apply` merges its group's and normalises its chunk, scales and shifts per channel
//! and applies SiLU, reading and writing the network's dtype with f32 arithmetic. candle's
//! `GroupNorm` instead makes f32 copies and runs a chain of ops.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::kernels::GroupNorm;

/// Threads per block of both kernels.
const THREADS: u32 = 256;
/// Elements each block of a group handles, at least: enough work per block to amortise it.
const CHUNK: usize = 16 * 1024;
/// Most chunks per group.
const MAX_SPLITS: usize = 64;

/// `norm` over `xs` (batch, channels, ...), then SiLU when `silu`.
pub(crate) fn group_norm(xs: &Tensor, norm: &GroupNorm, silu: bool) -> Result<Tensor> {
    let op = Fused {
        groups: norm.groups,
        eps: norm.eps as f32,
        silu,
    };
    let weight = norm.weight.to_dtype(xs.dtype())?;
    let bias = norm.bias.to_dtype(xs.dtype())?;
    xs.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

struct Fused {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "sie-group-norm-cuda"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        weight: &CudaStorage,
        lw: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dims = lx.shape().dims();
        let (batch, channels) = (dims[0], dims[1]);
        if channels % self.groups != 0 || lw.shape().elem_count() != channels {
            candle_core::bail!("group norm: {channels} channels in {} groups", self.groups)
        }
        let pixels: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let group_len = per_group * pixels;
        let groups_total = batch * self.groups;
        let splits = group_len.div_ceil(CHUNK).clamp(1, MAX_SPLITS);
        let device = x.device().clone();
        let dtype = x.dtype();
        let partial = device.alloc_zeros::<f32>(3 * groups_total * splits)?;
        let config = LaunchConfig {
            grid_dim: (groups_total as u32, splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (group_len, pixels) = (group_len as i64, pixels as i64);
        let (per_group, groups, splits_arg) = (per_group as i32, self.groups as i32, splits as i32);
        let silu = i32::from(self.silu);
        let load = |name: &str| -> Result<_> {
            device.get_or_load_custom_func(&super::kernel(name, dtype)?, super::MODULE, super::PTX)
        };
        macro_rules! run {
            ($t:ty) => {{
                let xs = x.as_cuda_slice::<$t>()?.slice(lx.start_offset()..);
                let w = weight.as_cuda_slice::<$t>()?.slice(lw.start_offset()..);
                let b = bias.as_cuda_slice::<$t>()?.slice(lb.start_offset()..);
                // SAFETY: every element is written by `group_apply` before it is read.
                let out = unsafe { device.alloc::<$t>(lx.shape().elem_count())? };
                let stats = load("group_stats")?;
                let mut launch = stats.builder();
                launch
                    .arg(&xs)
                    .arg(&partial)
                    .arg(&group_len)
                    .arg(&splits_arg);
                // SAFETY: the arguments match `group_stats` in kernels.cu.
                unsafe { launch.launch(config) }.w()?;
                let apply = load("group_apply")?;
                let mut launch = apply.builder();
                launch.arg(&xs).arg(&out).arg(&w).arg(&b).arg(&partial);
                launch
                    .arg(&group_len)
                    .arg(&pixels)
                    .arg(&per_group)
                    .arg(&groups);
                launch.arg(&splits_arg).arg(&self.eps).arg(&silu);
                // SAFETY: the arguments match `group_apply` in kernels.cu.
                unsafe { launch.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match dtype {
            DType::F32 => run!(f32),
            DType::F16 => run!(half::f16),
            DType::BF16 => run!(half::bf16),
            other => candle_core::bail!("group norm: no CUDA kernel for {other:?}"),
        };
        Ok((out, lx.shape().clone()))
    }
}
