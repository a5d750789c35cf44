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
//! - `activation.rs`: GEGLU in one pass (read `2n`, write `n`) instead of candle's GELU
//!   over a strided half and a product.
//! - `residual.rs`: a layer's bias and the residual after it added to the bare product
//!   (cuBLAS, cuDNN) in one pass, and the transformer's `proj_out`, whose tokens are also
//!   transposed into the image on the way.
//! - `timestep.rs`: the UNet's sinusoidal timestep embedding as one launch, the timesteps
//!   passed by value.
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

mod activation;
mod attention;
mod conv;
mod norm;
mod residual;
mod sdpa;
mod timestep;

pub(crate) use activation::geglu;
pub(crate) use conv::conv2d;
pub(crate) use norm::group_norm;
pub(crate) use residual::{bias_residual, tokens_to_image_residual, BiasAxis};
pub(crate) use timestep::{timestep_embedding, MAX_TIMESTEPS};

use candle_core::{DType, Result, Tensor};

use crate::kernels::Attention;

/// `softmax(q kᵀ * scale) v` per head, shapes as `kernels::attention` checked them: fused
/// by cuDNN where it takes the dtype, head dim and shape, else over the whole score matrix.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    match sdpa::attention(q, k, v, op)? {
        sdpa::Outcome::Ran(out) => Ok(out),
        sdpa::Outcome::Declined(reason) => {
            if let Some(reason) = reason {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        %reason,
                        "cuDNN has no attention plan for a shape; it and any other shape cuDNN \
                         refuses run on the whole-matrix path"
                    )
                });
            }
            attention::attention(q, k, v, op)
        }
    }
}

/// Bytes of scratch one [`attention`] call over `rows` sequences of `heads` heads of width
/// `head_dim` holds at its peak beyond its operands and result, by the path it takes (for
/// `kernels::attention_scratch_bytes`). cuDNN's fused kernel needs next to none (an
/// inference plan's workspace, if any, is small, and the context keeps it), but whether
/// cuDNN takes a shape is only known once it is asked, at the first step, and a refusal
/// falls back to the whole-matrix path; a batch planned on the fused kernel's nothing would
/// not fit then, so this counts the whole-matrix path's: one chunk of f32 scores and its
/// probabilities in `dtype`, the head-split copies of q, k and v, and the result twice
/// (before and after its heads are merged).
pub(crate) fn attention_scratch_bytes(
    dtype: DType,
    rows: usize,
    heads: usize,
    n_q: usize,
    n_k: usize,
    head_dim: usize,
) -> u64 {
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

    use crate::kernels::{portable, Attention, Conv2d, GroupNorm, TimestepEmbedding};

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

    /// Standard normal values of `shape` times `scale`, in `dtype`.
    fn randn(dev: &Device, dtype: DType, shape: &[usize], scale: f64) -> Tensor {
        (Tensor::randn(0f32, 1., shape, dev).unwrap() * scale)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// One kernel against candle's GELU over one strided half and product with the other:
    /// widths that are not a multiple of the block (nor even of a warp), one row, more rows
    /// than the grid has blocks, and values far enough out (spread 3) that GELU's tails show.
    #[test]
    fn geglu_matches_candles() {
        let dev = gpu();
        for dtype in DTYPES {
            for shape in [
                &[2usize, 77, 2 * 1280][..],
                &[3, 5, 2 * 7],
                &[1, 2],
                &[70_001, 2 * 3],
                &[2, 2, 9, 2 * 257],
            ] {
                let xs = randn(&dev, dtype, shape, 3.0);
                let ours = super::geglu(&xs).unwrap();
                let theirs = portable::geglu(&xs).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                assert_eq!(ours.dtype(), dtype);
                let d = rel_diff(&ours, &theirs);
                assert!(d < tolerance(dtype), "{dtype:?} {shape:?}: {d}");
            }
            // Through the dispatch, from a strided view (copied first).
            let wide = randn(&dev, dtype, &[4, 2 * 33 + 5], 1.0);
            let view = wide.narrow(1, 5, 2 * 33).unwrap();
            let d = rel_diff(
                &crate::kernels::geglu(&view).unwrap(),
                &portable::geglu(&view).unwrap(),
            );
            assert!(d < tolerance(dtype), "{dtype:?} strided: {d}");
        }
    }

    /// A linear layer's bias along the last axis plus a residual, one kernel against
    /// candle's two adds: odd widths, one element, more rows than the grid has blocks.
    #[test]
    fn linear_bias_residual_matches_candles() {
        let dev = gpu();
        for dtype in DTYPES {
            for shape in [
                &[2usize, 4096, 320][..],
                &[3, 7, 45],
                &[1, 1],
                &[70_001, 3],
                &[2, 77, 1025],
            ] {
                let y = randn(&dev, dtype, shape, 2.0);
                let bias = randn(&dev, dtype, &[shape[shape.len() - 1]], 1.0);
                let residual = randn(&dev, dtype, shape, 1.0);
                let ours =
                    super::bias_residual(&y, &bias, super::BiasAxis::Last, &residual).unwrap();
                let theirs = portable::bias_residual(&y, Some(&bias), &residual).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                let d = rel_diff(&ours, &theirs);
                assert!(d < tolerance(dtype), "{dtype:?} {shape:?}: {d}");
            }
        }
    }

    /// A convolution through `Conv2d::forward_add` (cuDNN without the bias, then one kernel
    /// adding bias and residual) against the convolution and candle's add, for a residual
    /// shaped like the output (a resnet's skip) and one per (batch, channel) (its time
    /// embedding), on odd sizes; and without a bias, which takes the composed path.
    #[test]
    fn convolution_plus_residual_matches_candles() {
        let dev = gpu();
        for dtype in DTYPES {
            for (b, c_in, c_out, h, w) in [(2, 8, 16, 17, 13), (1, 3, 5, 1, 1), (3, 32, 40, 9, 7)] {
                let x = randn(&dev, dtype, &[b, c_in, h, w], 1.0);
                let conv = Conv2d {
                    weight: randn(&dev, dtype, &[c_out, c_in, 3, 3], 0.1),
                    bias: Some(randn(&dev, dtype, &[c_out], 1.0)),
                    config: Conv2dConfig {
                        padding: 1,
                        ..Default::default()
                    },
                };
                let bare = Conv2d {
                    bias: None,
                    ..conv.clone()
                };
                for residual in [
                    randn(&dev, dtype, &[b, c_out, h, w], 1.0),
                    randn(&dev, dtype, &[b, c_out], 1.0),
                ] {
                    for (conv, name) in [(&conv, "bias"), (&bare, "no bias")] {
                        let out = conv.forward(&x).unwrap();
                        let theirs = if residual.rank() == 2 {
                            let per_channel = residual.unsqueeze(2).unwrap().unsqueeze(3).unwrap();
                            out.broadcast_add(&per_channel).unwrap()
                        } else {
                            (out + &residual).unwrap()
                        };
                        let ours = conv.forward_add(&x, &residual).unwrap();
                        assert_eq!(ours.dims(), theirs.dims());
                        let d = rel_diff(&ours, &theirs);
                        assert!(
                            d < tolerance(dtype),
                            "{dtype:?} {:?} residual {:?} {name}: {d}",
                            (b, c_in, c_out, h, w),
                            residual.dims()
                        );
                    }
                }
            }
        }
    }

    /// proj_out's tokens `(batch, pixels, channels)` plus bias, transposed into the image
    /// and added to the residual, one tiled kernel against candle's add, copy and add:
    /// pixel and channel counts on and off the 32-wide tile, one pixel, one channel.
    #[test]
    fn tokens_to_image_residual_matches_candles() {
        let dev = gpu();
        for dtype in DTYPES {
            for (b, c, h, w) in [
                (2, 320, 64, 64),
                (2, 1280, 8, 8),
                (3, 45, 7, 9),
                (1, 1, 1, 1),
                (1, 33, 1, 31),
            ] {
                let y = randn(&dev, dtype, &[b, h * w, c], 2.0);
                let bias = randn(&dev, dtype, &[c], 1.0);
                let residual = randn(&dev, dtype, &[b, c, h, w], 1.0);
                let ours = super::tokens_to_image_residual(&y, &bias, &residual).unwrap();
                let theirs =
                    portable::tokens_to_image_residual(&y, Some(&bias), &residual).unwrap();
                assert_eq!(ours.dims(), &[b, c, h, w]);
                let d = rel_diff(&ours, &theirs);
                assert!(d < tolerance(dtype), "{dtype:?} {:?}: {d}", (b, c, h, w));
            }
        }
    }

    /// The embedding kernel against the host's rows uploaded (the portable path, on the
    /// GPU): SD 2.1's width and an odd half-width, one timestep for all rows (also for more
    /// rows than a launch takes distinct timesteps) and one per row,
    /// both orders and shifts, timesteps up to 999 (where an argument's rounding shows).
    /// The kernel's f64 exp, sin and cos round to what the host's libm gives, but for the
    /// rare frequency a host `expf` rounds the other way: one unit in its last place, times
    /// a timestep near 1000, is about 6e-5 in the argument, under f32's tolerance.
    #[test]
    fn timestep_embedding_matches_the_hosts() {
        let dev = gpu();
        for dtype in DTYPES {
            for (dim, flip_sin_to_cos, freq_shift) in [
                (320, true, 0.0),
                (6, false, 1.0),
                (2, true, 0.0),
                (1282, false, 0.0),
            ] {
                let embedding = TimestepEmbedding {
                    dim,
                    flip_sin_to_cos,
                    freq_shift,
                };
                for (timesteps, rows) in [
                    (&[999.0][..], 2),
                    (&[1.0][..], 1),
                    (&[0.0, 981.0, 500.5][..], 3),
                    (&[999.0, 979.0, 959.0, 1.0, 0.0][..], 5),
                    (&[981.0][..], 300),
                ] {
                    let ours =
                        super::timestep_embedding(timesteps, rows, embedding, dtype, &dev).unwrap();
                    let theirs =
                        portable::timestep_embedding(timesteps, rows, embedding, dtype, &dev)
                            .unwrap();
                    assert_eq!(ours.dims(), &[rows, dim]);
                    assert_eq!(ours.dtype(), dtype);
                    let d = rel_diff(&ours, &theirs);
                    assert!(d < tolerance(dtype), "{dtype:?} {dim} {timesteps:?}: {d}");
                }
                // More distinct timesteps than one launch takes: the dispatch's host path.
                let many: Vec<f64> = (0..300).map(f64::from).collect();
                let table =
                    crate::kernels::timestep_embedding(&many, 300, embedding, dtype, &dev).unwrap();
                assert_eq!(table.dims(), &[300, dim]);
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
                    let ours = match super::sdpa::attention(&q, &k, &v, op).unwrap() {
                        super::sdpa::Outcome::Ran(out) => out,
                        super::sdpa::Outcome::Declined(reason) => {
                            panic!("cuDNN declined {dtype:?} {shape:?}: {reason:?}")
                        }
                    };
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
                matches!(
                    super::sdpa::attention(&q, &k, &v, op).unwrap(),
                    super::sdpa::Outcome::Declined(None)
                ),
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
            let fused = time(&|| match super::sdpa::attention(&q, &k, &v, op).unwrap() {
                super::sdpa::Outcome::Ran(out) => out,
                super::sdpa::Outcome::Declined(reason) => panic!("cuDNN declined: {reason:?}"),
            });
            let whole = time(&|| super::attention::attention(&q, &k, &v, op).unwrap());
            println!(
                "attention {name} {shape:?} f16: cuDNN SDPA {fused:.3} ms, whole matrix \
                 {whole:.3} ms ({:.1}x)",
                whole / fused
            );
        }
    }
}
