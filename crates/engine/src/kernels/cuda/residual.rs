//! A layer's bias and the residual after it, added to the layer's bare product in one
//! pass on a CUDA device.
//!
//! Where a network adds a residual to a linear layer or a convolution, candle launches the
//! product, a broadcast add of the bias and then the residual's add, each a full pass over
//! the output; the transformer's `proj_out` also copies its tokens into an image between
//! the two adds. Here the product is launched without its bias (cuBLAS, cuDNN) and one
//! kernel adds bias and residual, `(y + bias) + residual` in f32 rounded once into the
//! network's dtype (in f32 the same two roundings candle makes).
//!
//! - [`bias_residual`]: the bias along the output's last axis (a linear layer) or its
//!   channel axis 1 (a convolution), the residual shaped like the output, or one value per
//!   (batch, channel) (a resnet's time embedding, broadcast over the pixels).
//! - [`tokens_to_image_residual`]: a linear layer's output over an image's tokens
//!   `(batch, pixels, channels)` plus its bias, transposed to the image
//!   `(batch, channels, pixels)` through a shared-memory tile, plus the residual image.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Threads per block of `bias_residual`, along a line.
const THREADS: u32 = 256;
/// Most blocks over the lines of `bias_residual`; a block strides over the rest.
const MAX_LINE_BLOCKS: usize = 65535;
/// The tile of `tokens_to_image_residual` (as `TILE` in kernels.cu), and its rows of threads.
const TILE: usize = 32;
const TILE_ROWS: u32 = 8;

/// Where the bias of [`bias_residual`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BiasAxis {
    /// The last axis: a linear layer's `(..., out)`.
    Last,
    /// Axis 1: a convolution's `(batch, channels, pixels...)`.
    Channels,
}

/// `y + bias + residual`, bias along `axis` of `y`, `residual` shaped like `y` or, with
/// [`BiasAxis::Channels`], `(batch, channels)` (one value per channel, over the pixels).
/// `bias` and `residual` are cast to `y`'s dtype.
pub(crate) fn bias_residual(
    y: &Tensor,
    bias: &Tensor,
    axis: BiasAxis,
    residual: &Tensor,
) -> Result<Tensor> {
    let dims = y.dims();
    let channel_axis = match axis {
        BiasAxis::Last => dims.len().saturating_sub(1),
        BiasAxis::Channels => 1,
    };
    let Some(&channels) = dims.get(channel_axis) else {
        candle_core::bail!("bias + residual: no axis {channel_axis} in {dims:?}")
    };
    let per_channel = axis == BiasAxis::Channels && residual.dims() == &dims[..2];
    if bias.elem_count() != channels || (residual.dims() != dims && !per_channel) {
        candle_core::bail!(
            "bias + residual: bias {:?} and residual {:?} do not fit an output {dims:?}",
            bias.dims(),
            residual.dims()
        )
    }
    let op = BiasResidual {
        axis,
        per_channel_residual: per_channel,
    };
    let dtype = y.dtype();
    y.contiguous()?.apply_op3_no_bwd(
        &bias.to_dtype(dtype)?.contiguous()?,
        &residual.to_dtype(dtype)?.contiguous()?,
        &op,
    )
}

/// `y` `(batch, pixels, channels)` plus `bias` `(channels)`, as the image
/// `(batch, channels, pixels...)` of `residual`'s shape, plus `residual`.
pub(crate) fn tokens_to_image_residual(
    y: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
) -> Result<Tensor> {
    let (batch, pixels, channels) = y.dims3()?;
    let image = residual.dims();
    if bias.elem_count() != channels
        || image.len() < 2
        || image[..2] != [batch, channels]
        || image[2..].iter().product::<usize>() != pixels
    {
        candle_core::bail!(
            "tokens to image: tokens {:?}, bias {:?} and image {image:?} do not fit",
            y.dims(),
            bias.dims()
        )
    }
    let dtype = y.dtype();
    y.contiguous()?.apply_op3_no_bwd(
        &bias.to_dtype(dtype)?.contiguous()?,
        &residual.to_dtype(dtype)?.contiguous()?,
        &TokensToImage,
    )
}

struct BiasResidual {
    axis: BiasAxis,
    per_channel_residual: bool,
}

impl CustomOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "sie-bias-residual-cuda"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        ly: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
        residual: &CudaStorage,
        lr: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dims = ly.shape().dims();
        let len = ly.shape().elem_count();
        // Lines of `width` contiguous elements, and how bias and residual index them.
        let (lines, width, channels, bias_per_line) = match self.axis {
            BiasAxis::Last => {
                let width = dims.last().copied().unwrap_or(1);
                (len / width.max(1), width, width, false)
            }
            BiasAxis::Channels => {
                let width: usize = dims[2..].iter().product();
                (len / width.max(1), width, dims[1], true)
            }
        };
        let config = LaunchConfig {
            grid_dim: (
                width.div_ceil(THREADS as usize).max(1) as u32,
                lines.clamp(1, MAX_LINE_BLOCKS) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let device = y.device().clone();
        let dtype = y.dtype();
        let (lines_arg, width_arg) = (lines as i64, width as i64);
        let channels_arg = i32::try_from(channels).map_err(|_| {
            candle_core::Error::Msg(format!("bias + residual: {channels} channels"))
        })?;
        let (bias_per_line, residual_per_line) = (
            i32::from(bias_per_line),
            i32::from(self.per_channel_residual),
        );
        macro_rules! run {
            ($t:ty) => {{
                let ys = y.as_cuda_slice::<$t>()?.slice(ly.start_offset()..);
                let b = bias.as_cuda_slice::<$t>()?.slice(lb.start_offset()..);
                let r = residual.as_cuda_slice::<$t>()?.slice(lr.start_offset()..);
                // SAFETY: `bias_residual` writes every element.
                let out = unsafe { device.alloc::<$t>(len)? };
                if len > 0 {
                    let func = device.get_or_load_custom_func(
                        &super::kernel("bias_residual", dtype)?,
                        super::MODULE,
                        super::PTX,
                    )?;
                    let mut launch = func.builder();
                    launch.arg(&ys).arg(&b).arg(&r).arg(&out);
                    launch.arg(&lines_arg).arg(&width_arg).arg(&channels_arg);
                    launch.arg(&bias_per_line).arg(&residual_per_line);
                    // SAFETY: the arguments match `bias_residual` in kernels.cu.
                    unsafe { launch.launch(config) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match dtype {
            DType::F32 => run!(f32),
            DType::F16 => run!(half::f16),
            DType::BF16 => run!(half::bf16),
            other => candle_core::bail!("bias + residual: no CUDA kernel for {other:?}"),
        };
        Ok((out, ly.shape().clone()))
    }
}

struct TokensToImage;

impl CustomOp3 for TokensToImage {
    fn name(&self) -> &'static str {
        "sie-tokens-to-image-residual-cuda"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        ly: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
        residual: &CudaStorage,
        lr: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (batch, pixels, channels) = ly.shape().dims3()?;
        let len = batch * pixels * channels;
        let config = LaunchConfig {
            grid_dim: (
                pixels.div_ceil(TILE).max(1) as u32,
                channels.div_ceil(TILE).max(1) as u32,
                batch.max(1) as u32,
            ),
            block_dim: (TILE as u32, TILE_ROWS, 1),
            shared_mem_bytes: 0,
        };
        let device = y.device().clone();
        let dtype = y.dtype();
        let pixels_arg = pixels as i64;
        let channels_arg = i32::try_from(channels).map_err(|_| {
            candle_core::Error::Msg(format!("tokens to image: {channels} channels"))
        })?;
        macro_rules! run {
            ($t:ty) => {{
                let ys = y.as_cuda_slice::<$t>()?.slice(ly.start_offset()..);
                let b = bias.as_cuda_slice::<$t>()?.slice(lb.start_offset()..);
                let r = residual.as_cuda_slice::<$t>()?.slice(lr.start_offset()..);
                // SAFETY: `tokens_to_image_residual` writes every element.
                let out = unsafe { device.alloc::<$t>(len)? };
                if len > 0 {
                    let func = device.get_or_load_custom_func(
                        &super::kernel("tokens_to_image_residual", dtype)?,
                        super::MODULE,
                        super::PTX,
                    )?;
                    let mut launch = func.builder();
                    launch.arg(&ys).arg(&b).arg(&r).arg(&out);
                    launch.arg(&pixels_arg).arg(&channels_arg);
                    // SAFETY: the arguments match `tokens_to_image_residual` in kernels.cu.
                    unsafe { launch.launch(config) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, device.clone())
            }};
        }
        let out = match dtype {
            DType::F32 => run!(f32),
            DType::F16 => run!(half::f16),
            DType::BF16 => run!(half::bf16),
            other => candle_core::bail!("tokens to image: no CUDA kernel for {other:?}"),
        };
        Ok((out, lr.shape().clone()))
    }
}
