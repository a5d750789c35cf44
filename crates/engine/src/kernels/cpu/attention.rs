//! Multi-head scaled dot-product attention on the CPU that never holds the whole score matrix.
//!
//! At 768x768 the UNet's first level attends over 9216 tokens: one head's score matrix is
//! 340 MB in f32, and a guided step has ten such heads per layer. This is a tiled,
//! online-softmax kernel (the flash-attention recurrence): for a tile of queries it walks
//! the keys a tile at a time, keeping per query the running maximum `m`, the running sum
//! `l` of `exp(s - m)` and the unnormalised output, rescaled whenever `m` grows. The only
//! score memory is one tile per thread, and the exponentials, most of the softmax's time,
//! run on the CPU's widest vector unit (`vector.rs`). Scores, softmax and sums are f32
//! whatever the model's dtype (diffusers upcasts attention for SD 2.1 in f16 for the same
//! reason), but Q, K and V are read in their own dtype: f16/bf16 tiles are widened one tile
//! at a time, never as whole f32 copies.
//!
//! Tensors stay token-major, `(batch, tokens, heads * head_dim)`, as the projections make
//! them and the output projection wants them: the kernel reads each head with strides, so
//! the split-heads/merge-heads copies a batched matmul needs are gone too.
//! `kernels::attention` checks the shapes and sends q, k and v of one of f32, f16, bf16 here.

use candle_core::{CpuStorage, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

use super::vector::{exp, vectorised};
use super::{contiguous, Kernel, Op, Operand, Output};
use crate::kernels::Attention;

/// Most queries per tile (one work item for the thread pool). Fewer when that would leave
/// threads idle; measured on the full-size UNet at 768x768, 512 x 512 tiles ran the kernel
/// 15% faster than 128 x 256 (less repacking of each key tile, longer multiplications).
const MAX_TILE_Q: usize = 512;
/// Keys per tile: a 512 x 512 f32 score tile is 1 MB, about one core's L2.
const TILE_K: usize = 512;

/// `softmax(q kᵀ * scale) v` per head, as `kernels::attention` documents; q, k, v of one dtype.
pub(crate) fn tiled(q: &Tensor, k: &Tensor, v: &Tensor, op: Attention) -> Result<Tensor> {
    let kernel = Tiled {
        heads: op.heads,
        scale: op.scale as f32,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &Op(kernel))
}

/// The kernel; operands contiguous, all of one dtype (checked by `kernels::attention`).
struct Tiled {
    heads: usize,
    scale: f32,
}

impl Kernel<3> for Tiled {
    const NAME: &'static str = "sie-attention-tiled";

    fn run(&self, [(s1, l1), (s2, l2), (s3, l3)]: [Operand<'_>; 3]) -> Output {
        let (b, n_q, c_qk) = l1.shape().dims3()?;
        let (_, n_k, _) = l2.shape().dims3()?;
        let (_, _, c_v) = l3.shape().dims3()?;
        let dims = Dims {
            b,
            n_q,
            n_k,
            heads: self.heads,
            d: c_qk / self.heads,
            d_v: c_v / self.heads,
        };
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => CpuStorage::F32(run(
                contiguous(q, l1, Self::NAME)?,
                contiguous(k, l2, Self::NAME)?,
                contiguous(v, l3, Self::NAME)?,
                dims,
                self.scale,
            )),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => CpuStorage::F16(run(
                contiguous(q, l1, Self::NAME)?,
                contiguous(k, l2, Self::NAME)?,
                contiguous(v, l3, Self::NAME)?,
                dims,
                self.scale,
            )),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(run(
                    contiguous(q, l1, Self::NAME)?,
                    contiguous(k, l2, Self::NAME)?,
                    contiguous(v, l3, Self::NAME)?,
                    dims,
                    self.scale,
                ))
            }
            _ => {
                candle_core::bail!("sie-attention-tiled: q, k and v must be one of f32, f16, bf16")
            }
        };
        Ok((out, Shape::from((b, n_q, c_v))))
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n_q: usize,
    n_k: usize,
    heads: usize,
    d: usize,
    d_v: usize,
}

/// A dtype the kernel reads and writes; it computes in f32.
trait Element: WithDType + Send + Sync {
    /// Rows `rows` of the `width`-wide columns starting at `col` of a row-major matrix with
    /// row stride `stride`, as f32: the matrix itself for f32 (returned with its stride), a
    /// widened copy in `buf` otherwise (returned with stride `width`).
    fn f32_rows<'a>(
        data: &'a [Self],
        rows: std::ops::Range<usize>,
        stride: usize,
        col: usize,
        width: usize,
        buf: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize) {
        buf.clear();
        for r in rows {
            let row = &data[r * stride + col..][..width];
            buf.extend(row.iter().map(|x| x.to_f64() as f32));
        }
        (buf, width)
    }
}

impl Element for f16 {}
impl Element for bf16 {}
impl Element for f32 {
    fn f32_rows<'a>(
        data: &'a [f32],
        rows: std::ops::Range<usize>,
        stride: usize,
        col: usize,
        _width: usize,
        _buf: &'a mut Vec<f32>,
    ) -> (&'a [f32], usize) {
        (&data[rows.start * stride + col..], stride)
    }
}

fn run<T: Element>(q: &[T], k: &[T], v: &[T], dims: Dims, scale: f32) -> Vec<T> {
    let Dims {
        b,
        n_q,
        n_k,
        heads,
        d,
        d_v,
    } = dims;
    let (c_qk, c_v) = (heads * d, heads * d_v);
    let mut out = vec![T::from_f64(0.0); b * n_q * c_v];
    if out.is_empty() {
        return out;
    }
    // One work item is a tile of queries of one batch entry, all heads: its output rows are
    // one contiguous slice. Tiles shrink until every thread has a few.
    let threads = rayon::current_num_threads();
    let mut tile_q = MAX_TILE_Q;
    while tile_q > 32 && b * n_q.div_ceil(tile_q) < 4 * threads {
        tile_q /= 2;
    }
    out.par_chunks_mut(n_q * c_v)
        .enumerate()
        .for_each(|(bi, out_b)| {
            let q = &q[bi * n_q * c_qk..][..n_q * c_qk];
            let k = &k[bi * n_k * c_qk..][..n_k * c_qk];
            let v = &v[bi * n_k * c_v..][..n_k * c_v];
            out_b
                .par_chunks_mut(tile_q * c_v)
                .enumerate()
                .for_each(|(t, out_tile)| {
                    let q0 = t * tile_q;
                    let rows = out_tile.len() / c_v;
                    let mut scratch = Scratch::new(rows, d_v);
                    for h in 0..heads {
                        let (q_tile, q_stride) =
                            T::f32_rows(q, q0..q0 + rows, c_qk, h * d, d, &mut scratch.q);
                        let q_tile = q_tile.as_ptr();
                        scratch.start();
                        let mut k0 = 0;
                        while k0 < n_k {
                            let keys = TILE_K.min(n_k - k0);
                            let (k_tile, k_stride) =
                                T::f32_rows(k, k0..k0 + keys, c_qk, h * d, d, &mut scratch.k);
                            let (v_tile, v_stride) =
                                T::f32_rows(v, k0..k0 + keys, c_v, h * d_v, d_v, &mut scratch.v);
                            let scores = &mut scratch.scores[..rows * keys];
                            // SAFETY: `scores` is rows x keys (row stride keys); the q tile is
                            // rows x d with row stride q_stride, inside `q` (or the widened
                            // copy); the k tile read transposed is d x keys: element (i, j) at
                            // j*k_stride + i, inside `k` (or its copy).
                            unsafe {
                                gemm::gemm(
                                    rows,
                                    keys,
                                    d,
                                    scores.as_mut_ptr(),
                                    1,
                                    keys as isize,
                                    false,
                                    q_tile,
                                    1,
                                    q_stride as isize,
                                    k_tile.as_ptr(),
                                    k_stride as isize,
                                    1,
                                    0.0,
                                    scale,
                                    false,
                                    false,
                                    false,
                                    gemm::Parallelism::None,
                                );
                            }
                            softmax_tile(
                                scores,
                                keys,
                                &mut scratch.max[..rows],
                                &mut scratch.sum[..rows],
                                &mut scratch.correction[..rows],
                            );
                            let first = k0 == 0;
                            if !first {
                                for (row, &c) in scratch
                                    .acc
                                    .chunks_exact_mut(d_v)
                                    .zip(&scratch.correction[..rows])
                                {
                                    if c != 1.0 {
                                        row.iter_mut().for_each(|x| *x *= c);
                                    }
                                }
                            }
                            // SAFETY: `acc` is rows x d_v (row stride d_v); the probabilities
                            // are rows x keys; the v tile is keys x d_v with row stride
                            // v_stride, inside `v` (or its copy).
                            unsafe {
                                gemm::gemm(
                                    rows,
                                    d_v,
                                    keys,
                                    scratch.acc.as_mut_ptr(),
                                    1,
                                    d_v as isize,
                                    !first,
                                    scores.as_ptr(),
                                    1,
                                    keys as isize,
                                    v_tile.as_ptr(),
                                    1,
                                    v_stride as isize,
                                    1.0,
                                    1.0,
                                    false,
                                    false,
                                    false,
                                    gemm::Parallelism::None,
                                );
                            }
                            k0 += keys;
                        }
                        for ((acc, &l), dst) in scratch
                            .acc
                            .chunks_exact(d_v)
                            .zip(&scratch.sum[..rows])
                            .zip(out_tile.chunks_exact_mut(c_v))
                        {
                            let inv = 1.0 / l;
                            for (o, &a) in dst[h * d_v..][..d_v].iter_mut().zip(acc) {
                                *o = T::from_f64((a * inv) as f64);
                            }
                        }
                    }
                });
        });
    out
}

/// One work item's buffers.
struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    correction: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize, d_v: usize) -> Self {
        Scratch {
            scores: vec![0.0; rows * TILE_K],
            acc: vec![0.0; rows * d_v],
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            correction: vec![0.0; rows],
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Resets the running maxima and sums for the next head.
    fn start(&mut self) {
        self.max.fill(f32::NEG_INFINITY);
        self.sum.fill(0.0);
    }
}

vectorised! {
/// For each row of `scores` (`width` wide): the new maximum `m' = max(m, max(row))`, the
/// row replaced by `exp(s - m')`, the correction `exp(m - m')` for what was summed before,
/// and the running sum `l = l * correction + sum(row)`.
fn softmax_tile(
    scores: &mut [f32],
    width: usize,
    max: &mut [f32],
    sum: &mut [f32],
    correction: &mut [f32],
) {
    const LANES: usize = 16;
    for (r, row) in scores.chunks_exact_mut(width).enumerate() {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (m, &x) in lanes.iter_mut().zip(chunk) {
                *m = if x > *m { x } else { *m };
            }
        }
        let row_max = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        let old = max[r];
        let new = if row_max > old { row_max } else { old };
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (acc, x) in sums.iter_mut().zip(chunk) {
                *x = exp(*x - new);
                *acc += *x;
            }
        }
        let mut total: f32 = 0.0;
        for x in chunks.into_remainder() {
            *x = exp(*x - new);
            total += *x;
        }
        total += sums.iter().sum::<f32>();
        let c = if old == f32::NEG_INFINITY {
            0.0
        } else {
            exp(old - new)
        };
        correction[r] = c;
        sum[r] = sum[r] * c + total;
        max[r] = new;
    }
}
}
