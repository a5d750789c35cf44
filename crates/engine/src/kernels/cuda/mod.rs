//! Our CUDA kernels: what makes the GPU path fast where candle's own ops are slow (see
//! `docs/benchmarks.md`), each entry point taking tensors `kernels/mod.rs` has matched to it
//! (a CUDA device, a dtype the kernel has).
//!
//! - `conv.rs`: convolutions through cuDNN, one plan per shape (descriptors, the algorithm
//!   cuDNN's heuristics pick, its workspace size) made once and kept, one workspace per
//!   device reused; candle would make all of them on every call.
//! - `norm.rs`: GroupNorm, with the SiLU after it when asked, as two kernels (statistics,
//!   then normalise) in the network's dtype, in place of candle's chain of f32 ops.
//! - `sdpa.rs` (with `sdpa.cpp`): attention in f16 and bf16 with heads up to 128 wide (the
//!   UNet's) as one fused kernel, cuDNN's scaled-dot-product attention, scores kept on
//!   chip in f32.
//! - `attention.rs`: attention over the whole score matrix at once (in large chunks only
//!   when it would not fit), scores from cuBLAS in f32 from half inputs, softmax straight
//!   into the network's dtype: f32, the VAE's 512-wide head, and any shape cuDNN refuses.
//!
//! The kernels in `kernels.cu` are compiled to PTX by `build.rs` and loaded once per device;
//! `sdpa.cpp` is compiled by `build.rs` with the host's C++ compiler and linked in.

/// The `cpu_fwd` of one of our CUDA ops, for its number of operands: a refusal, since
/// `kernels/mod.rs` hands these ops CUDA tensors only (candle's `CustomOp` traits have no
/// default for it).
macro_rules! cuda_only {
    (@fwd $($s:ident $l:ident),+) => {
        fn cpu_fwd(
            &self,
            $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA devices only", self.name())
        }
    };
    (1) => { cuda_only!(@fwd _s1 _l1); };
    (2) => { cuda_only!(@fwd _s1 _l1, _s2 _l2); };
    (3) => { cuda_only!(@fwd _s1 _l1, _s2 _l2, _s3 _l3); };
}

mod attention;
mod conv;
mod norm;
mod sdpa;

pub(crate) use conv::conv2d;
pub(crate) use norm::group_norm;

use candle_core::{DType, Result, Tensor};

use crate::kernels::Attention;

/// `softmax(q kᵀ * scale) v` per head, shapes as `kernels::attention` checked them: fused
/// by cuDNN where it takes the dtype, head dim and shape, else over the whole score matrix.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    match sdpa::attention(q, k, v, op)? {
        Some(out) => Ok(out),
        None => attention::attention(q, k, v, op),
    }
}

/// Bytes of scratch one [`attention`] call over `rows` sequences of `heads` heads of width
/// `head_dim` holds at its peak beyond its operands and result, by the path it takes (for
/// `kernels::attention_scratch_bytes`). cuDNN's fused kernel: none (an inference plan's
/// workspace, if any, is small, and the context keeps it). The whole-matrix path: one
/// chunk of f32 scores and its probabilities in `dtype`, the head-split copies of q, k and
/// v, and the result twice (before and after its heads are merged). A shape cuDNN refuses
/// when asked (a card older than Ampere) falls back to the whole matrix, which this cannot
/// know before planning: it counts what the dtype and head width route to.
pub(crate) fn attention_scratch_bytes(
    dtype: DType,
    rows: usize,
    heads: usize,
    n_q: usize,
    n_k: usize,
    head_dim: usize,
) -> u64 {
    if sdpa::takes(dtype, head_dim, head_dim) {
        return 0;
    }
    let size = dtype.size_in_bytes() as u64;
    let bh = (rows * heads) as u64;
    let (n_q, n_k, d) = (n_q as u64, n_k as u64, head_dim as u64);
    // As `attention::attention` cuts the queries.
    let chunk = (attention::MAX_SCORES as u64 / (bh * n_k).max(1)).clamp(1, n_q.max(1));
    bh * chunk * n_k * (4 + size) + bh * d * (3 * n_q + 2 * n_k) * size
}

/// `kernels.cu`, compiled by `build.rs`, and the name it is loaded under.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
const MODULE: &str = "sie_kernels";

/// The name of the kernel `name` of `kernels.cu` for `dtype` (`name_f32`, `name_f16`,
/// `name_bf16`), to load with `get_or_load_custom_func(_, MODULE, PTX)`.
fn kernel(name: &str, dtype: DType) -> Result<String> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("{name}: no CUDA kernel for {other:?}"),
    };
    Ok(format!("{name}_{suffix}"))
}

/// Whether a dtype is one the kernels of `kernels.cu` and cuDNN take.
pub(crate) fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Each CUDA kernel against candle's own ops on the same GPU (the portable path, which the
/// CPU tests pin to the textbook formulas), in every dtype, on shapes that cross the
/// kernels' block and chunk edges. They need a GPU: built with `cargo test --release
/// --features cuda -p sie-engine --lib --no-run` and run by tools/gpu/check.sh; without a
/// CUDA device they fail, saying so (a CPU build does not have this module).
#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::Conv2dConfig;

    use crate::kernels::{portable, Attention, Conv2d, GroupNorm};

    fn gpu() -> Device {
        Device::new_cuda(0)
            .unwrap_or_else(|e| panic!("the CUDA kernel tests need a CUDA device: {e}"))
    }

    /// The largest difference between `a` and `b` relative to `b`'s largest magnitude.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (
            a.to_dtype(DType::F64).unwrap(),
            b.to_dtype(DType::F64).unwrap(),
        );
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .max(1e-6);
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        diff / scale
    }

    fn tolerance(dtype: DType) -> f64 {
        match dtype {
            DType::F32 => 1e-4,
            DType::F16 => 5e-3,
            _ => 3e-2,
        }
    }

    const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    #[test]
    fn cudnn_convolutions_match_candles() {
        let dev = gpu();
        for dtype in DTYPES {
            for (c_in, c_out, h, w, k, stride, padding) in [
                (8, 16, 17, 13, 3, 1, 1),
                (8, 16, 17, 13, 3, 2, 1),
                (32, 8, 9, 9, 1, 1, 0),
                (4, 4, 64, 64, 3, 1, 1),
            ] {
                let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let weight = (Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev).unwrap() * 0.1)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let bias = Tensor::randn(0f32, 1., c_out, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let conv = Conv2d {
                    weight,
                    bias: Some(bias),
                    config: Conv2dConfig {
                        padding,
                        stride,
                        ..Default::default()
                    },
                };
                // Twice: the second call runs the kept plan and workspace.
                for _ in 0..2 {
                    let ours = super::conv2d(&x, &conv).unwrap();
                    let theirs = portable::conv2d(&x, &conv).unwrap();
                    assert_eq!(ours.dims(), theirs.dims());
                    let d = rel_diff(&ours, &theirs);
                    assert!(
                        d < tolerance(dtype),
                        "{dtype:?} {:?}: {d}",
                        (c_in, c_out, h, w, k, stride)
                    );
                }
            }
        }
    }

    #[test]
    fn group_norm_matches_candles_with_and_without_silu() {
        let dev = gpu();
        for dtype in DTYPES {
            // 64x64 pixels of 64 channels in 32 groups cross the 16 K-element chunk edge.
            for (b, c, h, w, groups) in
                [(2, 64, 64, 64, 32), (1, 32, 7, 5, 8), (2, 320, 12, 12, 32)]
            {
                let x = Tensor::randn(0f32, 1., (b, c, h, w), &dev)
                    .unwrap()
                    .affine(3.0, 1.5)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let norm = GroupNorm {
                    weight: Tensor::randn(0f32, 1., c, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                    bias: Tensor::randn(0f32, 1., c, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                    groups,
                    eps: 1e-6,
                };
                for silu in [false, true] {
                    let ours = super::group_norm(&x, &norm, silu).unwrap();
                    let theirs = portable::group_norm(&x, &norm, silu).unwrap();
                    let d = rel_diff(&ours, &theirs);
                    assert!(
                        d < tolerance(dtype),
                        "{dtype:?} {:?} silu {silu}: {d}",
                        (b, c, h, w)
                    );
                }
            }
            // A constant group has no variance: eps alone keeps it finite, and it
            // normalises to the bias.
            let x = Tensor::full(0.25f32, (1, 32, 4, 4), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let bias = Tensor::arange(0f32, 32., &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let norm = GroupNorm {
                weight: Tensor::ones(32, dtype, &dev).unwrap(),
                bias: bias.clone(),
                groups: 32,
                eps: 1e-6,
            };
            let out = norm.forward(&x).unwrap();
            let expected = bias
                .reshape((1, 32, 1, 1))
                .unwrap()
                .broadcast_as(out.shape())
                .unwrap();
            assert_eq!(
                rel_diff(&out, &expected),
                0.0,
                "{dtype:?}: a constant group"
            );
        }
    }

    #[test]
    fn whole_matrix_attention_matches_candles_chunked_attention() {
        let dev = gpu();
        for dtype in DTYPES {
            for (b, n_q, n_k, heads, d, spread) in [
                (2, 300, 77, 5, 64, 1.0),
                (1, 1024, 1024, 5, 64, 1.0),
                (2, 256, 256, 2, 32, 12.0),
            ] {
                let rand = |n| {
                    (Tensor::randn(0f32, 1., (b, n, heads * d), &dev).unwrap() * spread)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (q, k, v) = (rand(n_q), rand(n_k), rand(n_k));
                let op = Attention {
                    heads,
                    scale: (d as f64).powf(-0.5),
                };
                let ours = super::attention::attention(&q, &k, &v, op).unwrap();
                let theirs = portable::chunked(&q, &k, &v, op).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                assert_eq!(ours.dtype(), dtype);
                let d = rel_diff(&ours, &theirs);
                assert!(
                    d < tolerance(dtype),
                    "{dtype:?} {:?}: {d}",
                    (b, n_q, n_k, heads)
                );
            }
        }
    }

    /// q, k and v of `dtype` for `heads` heads of width `d`, drawn with standard deviation
    /// `spread` (v with 1); with `view` `Some(offset)`, each is a column slice, `offset`
    /// columns in, of a wider tensor, as a fused projection would leave them.
    fn qkv(
        dev: &Device,
        dtype: DType,
        (b, n_q, n_k, heads, d): (usize, usize, usize, usize, usize),
        spread: f64,
        view: Option<usize>,
    ) -> (Tensor, Tensor, Tensor) {
        let rand = |n, spread: f64| {
            let width = heads * d;
            let full = view.map_or(width, |offset| width + offset + 8);
            let t = (Tensor::randn(0f32, 1., (b, n, full), dev).unwrap() * spread)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            t.narrow(2, view.unwrap_or(0), width).unwrap()
        };
        (rand(n_q, spread), rand(n_k, spread), rand(n_k, 1.0))
    }

    /// cuDNN's fused attention against the whole-matrix path on the same card, f16 and bf16:
    /// the UNet's self-attention at 512 and 768 (batch 2, 5 heads of 64: 4096 and 9216
    /// tokens) and its cross-attention to 77 text tokens, then small odd shapes, large
    /// scores (which must not pass through a half), and q, k, v read by strides from wider
    /// tensors, at an aligned offset and a misaligned one (which is copied first).
    #[test]
    fn cudnn_attention_matches_the_whole_matrix_path() {
        let dev = gpu();
        for dtype in [DType::F16, DType::BF16] {
            for (shape, spread, view) in [
                ((2, 4096, 4096, 5, 64), 1.0, None),
                ((2, 9216, 9216, 5, 64), 1.0, None),
                ((2, 4096, 77, 5, 64), 1.0, None),
                ((2, 9216, 77, 5, 64), 1.0, None),
                ((3, 37, 19, 2, 40), 1.0, None),
                ((1, 1, 5, 3, 64), 1.0, None),
                ((2, 256, 256, 2, 64), 12.0, None),
                ((2, 300, 77, 5, 64), 1.0, Some(0)),
                ((2, 300, 77, 5, 64), 1.0, Some(8)),
                ((2, 300, 77, 5, 64), 1.0, Some(4)),
            ] {
                let (b, n_q, _, heads, d) = shape;
                let (q, k, v) = qkv(&dev, dtype, shape, spread, view);
                let op = Attention {
                    heads,
                    scale: (d as f64).powf(-0.5),
                };
                // Twice: the second call runs the kept plan and workspace.
                for _ in 0..2 {
                    let ours = super::sdpa::attention(&q, &k, &v, op)
                        .unwrap()
                        .unwrap_or_else(|| panic!("cuDNN has no plan for {dtype:?} {shape:?}"));
                    let theirs = super::attention::attention(&q, &k, &v, op).unwrap();
                    assert_eq!(ours.dims(), &[b, n_q, heads * d]);
                    assert_eq!(ours.dtype(), dtype);
                    let diff = rel_diff(&ours, &theirs);
                    assert!(
                        diff < tolerance(dtype),
                        "{dtype:?} {shape:?} spread {spread} view {view:?}: {diff}"
                    );
                }
            }
        }
    }

    /// f32, heads wider than 128 (the VAE's one head of 512) and head dims that are not a
    /// multiple of 8 are not cuDNN's: `sdpa::attention` declines them, and the dispatch
    /// computes them over the whole matrix.
    #[test]
    fn cudnn_attention_declines_f32_and_heads_it_cannot_take() {
        let dev = gpu();
        for (dtype, shape) in [
            (DType::F32, (1, 64, 64, 2, 64)),
            (DType::F16, (1, 64, 64, 1, 512)),
            (DType::BF16, (1, 64, 64, 2, 20)),
        ] {
            let (q, k, v) = qkv(&dev, dtype, shape, 1.0, None);
            let op = Attention {
                heads: shape.3,
                scale: 0.125,
            };
            assert!(
                super::sdpa::attention(&q, &k, &v, op).unwrap().is_none(),
                "{dtype:?} {shape:?}"
            );
            let ours = super::attention(&q, &k, &v, op).unwrap();
            let theirs = super::attention::attention(&q, &k, &v, op).unwrap();
            assert_eq!(rel_diff(&ours, &theirs), 0.0, "{dtype:?} {shape:?}");
        }
    }

    /// Not a check but the micro-benchmark of the two attention paths on the UNet's
    /// self-attention shapes (batch 2, 5 heads of 64, f16): milliseconds per call, median of
    /// 10 after a warm-up, on stdout. `kernel-tests kernels::cuda::tests::attention_timings
    /// --ignored --nocapture` on a GPU machine.
    #[test]
    #[ignore = "a timing to read, not a check; run on a GPU with --ignored --nocapture"]
    fn attention_timings() {
        let dev = gpu();
        let time = |f: &dyn Fn() -> Tensor| {
            f();
            dev.synchronize().unwrap();
            let mut ms: Vec<f64> = (0..10)
                .map(|_| {
                    let start = std::time::Instant::now();
                    f();
                    dev.synchronize().unwrap();
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            ms[ms.len() / 2]
        };
        for (name, shape) in [
            ("512 self", (2, 4096, 4096, 5, 64)),
            ("768 self", (2, 9216, 9216, 5, 64)),
            ("512 cross", (2, 4096, 77, 5, 64)),
            ("768 cross", (2, 9216, 77, 5, 64)),
        ] {
            let (q, k, v) = qkv(&dev, DType::F16, shape, 1.0, None);
            let op = Attention {
                heads: shape.3,
                scale: 0.125,
            };
            let fused = time(&|| super::sdpa::attention(&q, &k, &v, op).unwrap().unwrap());
            let whole = time(&|| super::attention::attention(&q, &k, &v, op).unwrap());
            println!(
                "attention {name} {shape:?} f16: cuDNN SDPA {fused:.3} ms, whole matrix \
                 {whole:.3} ms ({:.1}x)",
                whole / fused
            );
        }
    }
}
