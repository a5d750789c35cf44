//! Convolutions through cuDNN, with each shape's plan made once.
//!
//! A plan is what cuDNN needs to run one convolution shape: the tensor, filter and
//! convolution descriptors, the algorithm its heuristics pick for them, and that
//! algorithm's workspace size. candle's own cuDNN path makes all of these, and allocates
//! and zeroes a fresh workspace, on every call; a UNet step calls about 100 convolutions of
//! some 20 shapes, so here plans are kept per thread (cuDNN handles are not `Send`), keyed
//! by device, dtype and shape, and each thread keeps one workspace per device, grown to the
//! largest plan's need and reused. Compute is f32 (cuDNN's "pseudo-half" for half inputs,
//! with tensor-core math allowed), as PyTorch runs half convolutions.

use std::any::Any;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    sys as cudnn, ConvDescriptor, ConvForward, Cudnn, CudnnDataType, FilterDescriptor,
    TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CudaDevice, WithDType};
use candle_core::{CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::kernels::Conv2d;

/// `conv` over `xs` (batch, c_in, h, w), plus its bias per output channel.
pub(crate) fn conv2d(xs: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let c = &conv.config;
    let op = Conv {
        padding: c.padding,
        stride: c.stride,
        dilation: c.dilation,
        groups: c.groups,
    };
    let weight = conv.weight.to_dtype(xs.dtype())?.contiguous()?;
    let out = xs.contiguous()?.apply_op2_no_bwd(&weight, &op)?;
    match &conv.bias {
        Some(bias) => {
            let bias = bias.to_dtype(out.dtype())?;
            out.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)
        }
        None => Ok(out),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Conv {
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
}

/// What identifies a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    device: DeviceId,
    dtype: DType,
    input: [usize; 4],
    filter: [usize; 4],
    conv: Conv,
}

/// One shape's descriptors, algorithm and workspace size, for element type `T`.
struct Plan<T> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    algorithm: cudnn::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

thread_local! {
    /// This thread's cuDNN handle per device.
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    /// This thread's plans (each a `Plan<T>` for its key's dtype).
    static PLANS: RefCell<HashMap<Key, Box<dyn Any>>> = RefCell::new(HashMap::new());
    /// This thread's workspace per device, grown to the largest plan's need.
    static WORKSPACES: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "sie-conv2d-cudnn"
    }

    cuda_only!(2);

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, c_in, h, wd) = lx.shape().dims4()?;
        let (c_out, c_in_w, kh, kw) = lw.shape().dims4()?;
        if c_in_w * self.groups != c_in || !lx.is_contiguous() || !lw.is_contiguous() {
            candle_core::bail!(
                "conv2d: input {:?} and kernel {:?} do not fit",
                lx.dims(),
                lw.dims()
            )
        }
        let span = |size: usize, k: usize| {
            (size + 2 * self.padding).checked_sub(self.dilation * (k - 1) + 1)
        };
        let (Some(out_h), Some(out_w)) = (span(h, kh), span(wd, kw)) else {
            candle_core::bail!("conv2d: a {kh}x{kw} kernel does not fit a {h}x{wd} input")
        };
        let (out_h, out_w) = (out_h / self.stride + 1, out_w / self.stride + 1);
        let key = Key {
            device: x.device().id(),
            dtype: x.dtype(),
            input: [b, c_in, h, wd],
            filter: [c_out, c_in_w, kh, kw],
            conv: *self,
        };
        let output = [b, c_out, out_h, out_w];
        let out = match x.dtype() {
            DType::F32 => run::<f32>(key, output, x, lx, w, lw)?,
            DType::F16 => run::<half::f16>(key, output, x, lx, w, lw)?,
            DType::BF16 => run::<half::bf16>(key, output, x, lx, w, lw)?,
            other => candle_core::bail!("conv2d: no cuDNN path for {other:?}"),
        };
        Ok((out, Shape::from(&output)))
    }
}

/// Runs the convolution `key` names, making its plan on first use.
fn run<T>(
    key: Key,
    output: [usize; 4],
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
) -> Result<CudaStorage>
where
    T: CudnnDataType + CudaDType + DeviceRepr + ValidAsZeroBits + WithDType + 'static,
{
    let device = x.device().clone();
    let xs = x.as_cuda_slice::<T>()?.slice(lx.start_offset()..);
    let ws = w.as_cuda_slice::<T>()?.slice(lw.start_offset()..);
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut out = unsafe { device.alloc::<T>(output.iter().product())? };
    PLANS.with(|plans| -> Result<()> {
        let mut plans = plans.borrow_mut();
        let plan = match plans.entry(key) {
            Entry::Occupied(kept) => kept.into_mut(),
            Entry::Vacant(slot) => slot.insert(Box::new(make_plan::<T>(&device, &key, output)?)),
        };
        let plan = plan
            .downcast_ref::<Plan<T>>()
            .expect("a plan is stored under its own dtype");
        WORKSPACES.with(|spaces| -> Result<()> {
            let mut spaces = spaces.borrow_mut();
            let too_small = spaces
                .get(&key.device)
                .is_none_or(|s| s.len() < plan.workspace);
            if too_small {
                spaces.insert(key.device, device.alloc_zeros::<u8>(plan.workspace.max(1))?);
            }
            let workspace = spaces.get_mut(&key.device).expect("inserted above");
            let forward = ConvForward {
                conv: &plan.conv,
                x: &plan.x,
                w: &plan.w,
                y: &plan.y,
            };
            // SAFETY: the buffers match the plan's descriptors, made from the same key.
            unsafe {
                forward.launch(
                    plan.algorithm,
                    Some(workspace),
                    (T::one(), T::zero()),
                    &xs,
                    &ws,
                    &mut out,
                )
            }?;
            Ok(())
        })
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}

/// The descriptors of `key`'s convolution on this thread's cuDNN handle, the algorithm
/// cuDNN's heuristics rank first, and its workspace size.
fn make_plan<T: CudnnDataType>(
    device: &CudaDevice,
    key: &Key,
    output: [usize; 4],
) -> Result<Plan<T>> {
    let cudnn = HANDLES.with(|handles| -> Result<Arc<Cudnn>> {
        let mut handles = handles.borrow_mut();
        if let Some(h) = handles.get(&key.device) {
            return Ok(h.clone());
        }
        let h = Cudnn::new(device.cuda_stream())?;
        handles.insert(key.device, h.clone());
        Ok(h)
    })?;
    let i32s = |v: [usize; 4]| v.map(|d| d as i32);
    let Conv {
        padding,
        stride,
        dilation,
        groups,
    } = key.conv;
    let (p, s, d) = (padding as i32, stride as i32, dilation as i32);
    let mut conv = cudnn.create_conv2d::<f32>(
        [p, p],
        [s, s],
        [d, d],
        cudnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_group_count(groups as i32)?;
    if key.dtype != DType::F32 {
        conv.set_math_type(cudnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)?;
    }
    let nchw = cudnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let x = cudnn.create_4d_tensor::<T>(nchw, i32s(key.input))?;
    let w = cudnn.create_4d_filter::<T>(nchw, i32s(key.filter))?;
    let y = cudnn.create_4d_tensor::<T>(nchw, i32s(output))?;
    let forward = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    let algorithm = forward.pick_algorithm()?;
    let workspace = forward.get_workspace_size(algorithm)?;
    Ok(Plan {
        conv,
        x,
        w,
        y,
        algorithm,
        workspace,
    })
}
