//! Fused attention through cuDNN's scaled-dot-product attention: softmax(q kᵀ · scale) v in
//! one kernel per call, for f16 and bf16 with head dims up to 128.
//!
//! The whole-matrix path (`attention.rs`) writes every f32 score to memory and reads it back
//! twice: 3.4 GB per self-attention at 768 (batch 2), four launches and three head
//! transposes around them. A fused kernel keeps each tile of scores on chip (flash
//! attention's online softmax, as our CPU kernel does), so attention costs its reads of q,
//! k, v and one write of o; this is what PyTorch's SDPA runs on Hopper. cuDNN's is reached
//! through its frontend, a header-only C++ graph API, so `sdpa.cpp` wraps it in a few C
//! calls (built by `build.rs` with the host compiler) and this file is their safe side:
//!
//! - q, k and v go to cuDNN where the projections wrote them, (batch, rows, heads · d) read
//!   as [batch, heads, rows, d] by strides, and o comes back already in (batch, rows,
//!   heads · d_v): no split or merge of heads.
//! - One context (a cuDNN handle on candle's stream, and its plans) per thread and device,
//!   as `conv.rs` keeps its cuDNN handles; `sdpa.cpp` plans each shape once per context.
//! - The workspace is allocated here, through candle's allocator, and kept per context,
//!   grown to the largest plan's need: cudarc tracks its uses by events like any other
//!   buffer, and the shim allocates nothing.
//! - A shape cuDNN has no plan for (an older card, an older cuDNN) is not an error: the
//!   caller falls back to the whole-matrix path, and the first refusal is logged with
//!   cuDNN's reason.
//!
//! Numerics: scores, softmax and the accumulation of probs · v are f32 inside the kernel
//! (the graph's intermediate and compute types); only o is rounded to the network's dtype.
//! Scores never pass through a half, which is what SD 2.1's `upcast_attention` asks for.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::kernels::Attention;

/// The largest head dim taken: every cuDNN 9 plans up to 128 on Ampere and newer (the
/// UNet's heads are 64; the VAE's one 512-wide head stays on the whole-matrix path).
const MAX_HEAD_DIM: usize = 128;

/// Elements per 16 bytes of a half: cuDNN's kernels load q, k and v in 16-byte vectors (and
/// by TMA on Hopper), so base addresses and strides must be multiples of this.
const ALIGN: usize = 8;

/// What [`attention`] did.
pub(crate) enum Outcome {
    /// cuDNN's kernel computed it.
    Ran(Tensor),
    /// Not taken, so the caller computes it another way: the dtype or head dim is not this
    /// path's (`None`), or cuDNN has no plan for the shape (its reason).
    Declined(Option<String>),
}

/// `softmax(q kᵀ * scale) v` per head through cuDNN, for operands as `kernels::attention`
/// checked them, or declined when this path does not take them.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Outcome> {
    let dtype = q.dtype();
    let (_, _, c_qk) = q.dims3()?;
    let (_, _, c_v) = v.dims3()?;
    if !takes(dtype, c_qk / op.heads, c_v / op.heads) {
        return Ok(Outcome::Declined(None));
    }
    let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
    let sdpa = Sdpa {
        heads: op.heads,
        scale: op.scale as f32,
    };
    let shape = sdpa.describe(dtype, q.layout(), k.layout(), v.layout())?;
    let device = q.device().as_cuda_device()?;
    if let Some(reason) = with_context(device, |ctx| ctx.refusal(&shape))? {
        tracing::debug!(?shape, %reason, "cuDNN has no attention plan for this shape");
        return Ok(Outcome::Declined(Some(reason)));
    }
    Ok(Outcome::Ran(q.apply_op3_no_bwd(&k, &v, &sdpa)?))
}

/// Whether this path takes attention in `dtype` with heads of widths `d_qk` (q and k) and
/// `d_v` (v), before cuDNN is asked about the rest of the shape.
pub(crate) fn takes(dtype: DType, d_qk: usize, d_v: usize) -> bool {
    let head_dim_ok = |d: usize| d % ALIGN == 0 && (ALIGN..=MAX_HEAD_DIM).contains(&d);
    matches!(dtype, DType::F16 | DType::BF16) && head_dim_ok(d_qk) && head_dim_ok(d_v)
}

/// `t` if cuDNN can read it where it is (last dimension contiguous, start and strides on
/// 16 bytes), else a fresh contiguous copy, which always can (its rows are heads · d wide,
/// d a multiple of 8).
fn aligned(t: &Tensor) -> Result<Tensor> {
    let l = t.layout();
    let s = l.stride();
    if s[2] == 1 && s[0] % ALIGN == 0 && s[1] % ALIGN == 0 && l.start_offset() % ALIGN == 0 {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}

/// The op: heads and scale; shapes and strides come from the operands' layouts.
struct Sdpa {
    heads: usize,
    scale: f32,
}

impl Sdpa {
    /// The cuDNN shape of q, k, v of `dtype` laid out as given (already [`aligned`]), with o
    /// contiguous (batch, s_q, heads · d_v).
    fn describe(&self, dtype: DType, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<SdpaShape> {
        let (b, s_q, c_qk) = lq.shape().dims3()?;
        let (_, s_kv, _) = lk.shape().dims3()?;
        let (_, _, c_v) = lv.shape().dims3()?;
        let h = self.heads;
        let (d_qk, d_v) = (c_qk / h, c_v / h);
        // [batch, head, row] strides of a (batch, rows, heads · d) tensor: head i is the
        // columns i·d.., so its stride is d.
        let strides = |l: &Layout, d: usize| -> Result<[i64; 3]> {
            let s = l.stride();
            if s[2] != 1 {
                candle_core::bail!("cuDNN attention: the last dimension must be contiguous")
            }
            Ok([s[0] as i64, d as i64, s[1] as i64])
        };
        Ok(SdpaShape {
            dtype: match dtype {
                DType::F16 => SIE_SDPA_F16,
                DType::BF16 => SIE_SDPA_BF16,
                other => candle_core::bail!("cuDNN attention: no path for {other:?}"),
            },
            scale: self.scale,
            batch: b as i64,
            heads: h as i64,
            s_q: s_q as i64,
            s_kv: s_kv as i64,
            d_qk: d_qk as i64,
            d_v: d_v as i64,
            q_stride: strides(lq, d_qk)?,
            k_stride: strides(lk, d_qk)?,
            v_stride: strides(lv, d_v)?,
            o_stride: [(s_q * h * d_v) as i64, d_v as i64, (h * d_v) as i64],
        })
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "sie-attention-cudnn-sdpa"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let shape = self.describe(q.dtype(), lq, lk, lv)?;
        let out = match q.dtype() {
            DType::F16 => run::<half::f16>(&shape, q, lq, k, lk, v, lv)?,
            DType::BF16 => run::<half::bf16>(&shape, q, lq, k, lk, v, lv)?,
            other => candle_core::bail!("cuDNN attention: no path for {other:?}"),
        };
        let (b, s_q, _) = lq.shape().dims3()?;
        let out_shape = Shape::from((b, s_q, (shape.heads * shape.d_v) as usize));
        Ok((out, out_shape))
    }
}

/// Queues `shape`'s attention on q, k, v of element type `T` into a new o.
fn run<T: CudaDType + DeviceRepr>(
    shape: &SdpaShape,
    q: &CudaStorage,
    lq: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
) -> Result<CudaStorage> {
    let device = q.device().clone();
    let stream = device.cuda_stream();
    let qs = q.as_cuda_slice::<T>()?.slice(lq.start_offset()..);
    let ks = k.as_cuda_slice::<T>()?.slice(lk.start_offset()..);
    let vs = v.as_cuda_slice::<T>()?.slice(lv.start_offset()..);
    let len = (shape.batch * shape.s_q * shape.heads * shape.d_v) as usize;
    // SAFETY: the attention writes every element of o.
    let mut out = unsafe { device.alloc::<T>(len)? };
    {
        // The guards keep the buffers' uses recorded until the kernel is queued.
        let (qp, _q) = qs.device_ptr(&stream);
        let (kp, _k) = ks.device_ptr(&stream);
        let (vp, _v) = vs.device_ptr(&stream);
        let (op, _o) = out.device_ptr_mut(&stream);
        // SAFETY: the pointers are q, k and v from their layouts' starts and a fresh o, on
        // the context's stream, laid out as `shape` says (made from the same layouts).
        with_context(&device, |ctx| unsafe { ctx.forward(shape, qp, kp, vp, op) })?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}

thread_local! {
    /// This thread's cuDNN attention context per device.
    static CONTEXTS: RefCell<HashMap<DeviceId, Context>> = RefCell::new(HashMap::new());
}

/// `f` on this thread's context for `device`, made on first use, with the device's CUDA
/// context current (cuDNN calls run in whatever context the thread has).
fn with_context<R>(device: &CudaDevice, f: impl FnOnce(&mut Context) -> Result<R>) -> Result<R> {
    let stream = device.cuda_stream();
    stream.context().bind_to_thread().w()?;
    CONTEXTS.with(|contexts| {
        let mut contexts = contexts.borrow_mut();
        let ctx = match contexts.entry(device.id()) {
            Entry::Occupied(kept) => kept.into_mut(),
            Entry::Vacant(slot) => slot.insert(Context::new(stream)?),
        };
        f(ctx)
    })
}

/// One `sdpa.cpp` context (a cuDNN handle on `stream` and its plans), and the workspace its
/// runs share.
struct Context {
    raw: NonNull<RawContext>,
    workspace: Option<CudaSlice<u8>>,
    /// The stream the handle runs on; kept so that it, and the CUDA context, outlive the
    /// handle (fields drop after `Drop::drop` destroys it).
    stream: Arc<CudaStream>,
}

impl Context {
    fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: the stream is live (we hold it) and its CUDA context is current.
        let code = unsafe { sie_sdpa_create(stream.cu_stream() as *mut c_void, &mut raw) };
        check(code, "creating a cuDNN handle for attention")?;
        let raw = NonNull::new(raw).expect("sie_sdpa_create returned OK with a context");
        Ok(Context {
            raw,
            workspace: None,
            stream,
        })
    }

    /// The plan for `shape` (made on first use), or why cuDNN has none.
    fn plan(&mut self, shape: &SdpaShape) -> Result<std::result::Result<Plan, String>> {
        let mut plan = std::ptr::null();
        let mut workspace = 0i64;
        // SAFETY: a live context and valid out-pointers; the plan stays valid while the
        // context lives, and is used only by `forward` on this same context.
        let code = unsafe { sie_sdpa_plan(self.raw.as_ptr(), shape, &mut plan, &mut workspace) };
        match code {
            SIE_SDPA_UNSUPPORTED => Ok(Err(last_error())),
            code => {
                check(code, "planning cuDNN attention")?;
                Ok(Ok(Plan {
                    raw: plan,
                    workspace: workspace as usize,
                }))
            }
        }
    }

    /// Why cuDNN has no plan for `shape`, or `None` when it has one (made now if new).
    fn refusal(&mut self, shape: &SdpaShape) -> Result<Option<String>> {
        Ok(self.plan(shape)?.err())
    }

    /// Queues o = attention(q, k, v) for `shape` on the context's stream, growing the
    /// workspace if its plan needs more.
    ///
    /// # Safety
    /// q, k, v and o are device pointers on this context's device, laid out as `shape`
    /// says, and stay allocated until the stream has run the kernel.
    unsafe fn forward(&mut self, shape: &SdpaShape, q: u64, k: u64, v: u64, o: u64) -> Result<()> {
        let plan = match self.plan(shape)? {
            Ok(plan) => plan,
            Err(reason) => candle_core::bail!("cuDNN attention: no plan for {shape:?}: {reason}"),
        };
        let stream = self.stream.clone();
        if self.workspace.as_ref().map_or(0, |w| w.len()) < plan.workspace {
            // SAFETY: cuDNN uses its workspace as scratch, never reading what it did not
            // write.
            self.workspace = Some(unsafe { stream.alloc::<u8>(plan.workspace) }.w()?);
        }
        let (ws, _ws) = match self.workspace.as_mut() {
            Some(w) => {
                let (p, guard) = w.device_ptr_mut(&stream);
                (p as *mut c_void, Some(guard))
            }
            None => (std::ptr::null_mut(), None),
        };
        // SAFETY: the plan is this context's; the caller vouches for q, k, v and o, and the
        // workspace holds at least the plan's bytes.
        let code = unsafe {
            sie_sdpa_run(
                self.raw.as_ptr(),
                plan.raw,
                q as *const c_void,
                k as *const c_void,
                v as *const c_void,
                o as *mut c_void,
                ws,
            )
        };
        check(code, "running cuDNN attention")
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // Runs still queued use the handle's plans: let them finish first (a failure here
        // means the device is gone, and there is nothing left to wait for). The workspace
        // is freed after this by cudarc, ordered on the same stream.
        let _ = self.stream.synchronize();
        // SAFETY: the context was made by `sie_sdpa_create` and is destroyed once.
        unsafe { sie_sdpa_destroy(self.raw.as_ptr()) };
    }
}

/// A plan `sdpa.cpp` made, owned by its context.
struct Plan {
    raw: *const RawPlan,
    workspace: usize,
}

/// `Ok` for `SIE_SDPA_OK`, else an error saying what was being done and what the shim said.
fn check(code: c_int, doing: &str) -> Result<()> {
    if code == SIE_SDPA_OK {
        Ok(())
    } else {
        candle_core::bail!("{doing}: {}", last_error())
    }
}

/// The message of this thread's last failed shim call.
fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated string valid until its next call on this
    // thread, copied here at once.
    unsafe { CStr::from_ptr(sie_sdpa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

// The C API of `sdpa.cpp`; codes, dtypes and `SdpaShape` mirror its definitions.

const SIE_SDPA_OK: c_int = 0;
const SIE_SDPA_UNSUPPORTED: c_int = 2;
const SIE_SDPA_F16: i32 = 0;
const SIE_SDPA_BF16: i32 = 1;

/// `SieSdpaShape`: each tensor is [batch, heads, rows, head dim], the head dim contiguous,
/// with its other three strides in elements (batch, head, row).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SdpaShape {
    dtype: i32,
    scale: f32,
    batch: i64,
    heads: i64,
    s_q: i64,
    s_kv: i64,
    d_qk: i64,
    d_v: i64,
    q_stride: [i64; 3],
    k_stride: [i64; 3],
    v_stride: [i64; 3],
    o_stride: [i64; 3],
}

/// `SieSdpa`, opaque.
#[repr(C)]
struct RawContext {
    _opaque: [u8; 0],
}

/// `SieSdpaPlan`, opaque.
#[repr(C)]
struct RawPlan {
    _opaque: [u8; 0],
}

extern "C" {
    fn sie_sdpa_create(stream: *mut c_void, out: *mut *mut RawContext) -> c_int;
    fn sie_sdpa_destroy(ctx: *mut RawContext);
    fn sie_sdpa_plan(
        ctx: *mut RawContext,
        shape: *const SdpaShape,
        plan: *mut *const RawPlan,
        workspace: *mut i64,
    ) -> c_int;
    fn sie_sdpa_run(
        ctx: *mut RawContext,
        plan: *const RawPlan,
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        o: *mut c_void,
        workspace: *mut c_void,
    ) -> c_int;
    fn sie_sdpa_last_error() -> *const std::ffi::c_char;
}
