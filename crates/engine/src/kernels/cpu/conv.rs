//! Convolution on the CPU for f32: im2col in NCHW order, one GEMM per band of output rows.
//!
//! candle 0.11's CPU convolution transposes the whole input to NHWC on one thread,
//! copies the whole kernel into a new layout on every call, and multiplies in tiles of
//! 512 output pixels gathered with scattered writes; profiled on the full-size UNet it
//! spent as much time moving data as multiplying. This kernel is the classic im2col in
//! NCHW order: for a band of output rows, each (input channel, kernel row, kernel column)
//! becomes one row of a column matrix, filled with straight copies of shifted input rows;
//! then one large GEMM, `weight [c_out, c_in*kh*kw] x columns [c_in*kh*kw, pixels]`, writes
//! the band of the NCHW output in place. The weight needs no copy (OIHW is already that
//! matrix), and a 1x1 convolution needs no columns at all. Bands are sized so the column
//! matrix stays under 64 MB (the VAE's last layers would otherwise need gigabytes).
//!
//! The sums are the same as candle's up to the order of additions (about 1e-6 relative).
//! `kernels::conv2d` sends only ungrouped, undilated f32 convolutions here.

use candle_core::{CpuStorage, Result, Shape, Tensor};

use super::{f32s, Kernel, Op, Operand, Output};
use crate::kernels::Conv2d;

/// Floats in one band's column matrix (64 MB).
const MAX_COLUMNS: usize = 1 << 24;

/// `conv` over `xs` (batch, c_in, h, w), plus its bias per output channel; f32, no groups
/// or dilation.
pub(crate) fn im2col_gemm(xs: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let kernel = Im2ColGemm {
        stride: conv.config.stride,
        padding: conv.config.padding,
    };
    let out = xs
        .contiguous()?
        .apply_op2_no_bwd(&conv.weight.contiguous()?, &Op(kernel))?;
    match &conv.bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
        None => Ok(out),
    }
}

/// The CPU kernel (see the module doc); both operands contiguous, f32.
struct Im2ColGemm {
    stride: usize,
    padding: usize,
}

impl Kernel<2> for Im2ColGemm {
    const NAME: &'static str = "sie-conv2d-im2col";

    fn run(&self, [x, w]: [Operand<'_>; 2]) -> Output {
        let (l1, l2) = (x.1, w.1);
        let (x, w) = (f32s(x, Self::NAME)?, f32s(w, Self::NAME)?);
        let (b, c_in, h, wd) = l1.shape().dims4()?;
        let (c_out, c_in_w, kh, kw) = l2.shape().dims4()?;
        if c_in != c_in_w {
            candle_core::bail!("conv2d: input has {c_in} channels, the kernel expects {c_in_w}")
        }
        let (s, p) = (self.stride, self.padding);
        if h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!("conv2d: a {kh}x{kw} kernel does not fit a {h}x{wd} input")
        }
        let out_h = (h + 2 * p - kh) / s + 1;
        let out_w = (wd + 2 * p - kw) / s + 1;
        let k_size = c_in * kh * kw;
        let plane = out_h * out_w;
        let mut out = vec![0f32; b * c_out * plane];
        let rows_per_band = (MAX_COLUMNS / (k_size * out_w).max(1)).clamp(1, out_h);
        let one_by_one = kh == 1 && kw == 1 && s == 1 && p == 0;
        let mut columns = if one_by_one {
            Vec::new()
        } else {
            vec![0f32; k_size * rows_per_band * out_w]
        };
        let threads = candle_core::utils::get_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        for bi in 0..b {
            let x = &x[bi * c_in * h * wd..(bi + 1) * c_in * h * wd];
            let out = &mut out[bi * c_out * plane..(bi + 1) * c_out * plane];
            let mut y0 = 0;
            while y0 < out_h {
                let y1 = (y0 + rows_per_band).min(out_h);
                let n = (y1 - y0) * out_w;
                let rhs: &[f32] = if one_by_one {
                    // The input band itself is the column matrix: [c_in, n] with row stride h*w.
                    &x[y0 * out_w..]
                } else {
                    fill_columns(
                        x,
                        (c_in, h, wd),
                        (kh, kw),
                        (s, p),
                        (y0, y1, out_w),
                        &mut columns,
                    );
                    &columns
                };
                let rhs_rs = if one_by_one {
                    (h * wd) as isize
                } else {
                    n as isize
                };
                // SAFETY: the pointers and strides describe in-bounds matrices: `out` holds
                // c_out rows of `plane` floats and this band starts at y0*out_w with n
                // columns; `w` is [c_out, k_size] row-major; `rhs` is [k_size, n] with
                // row stride `rhs_rs` (for 1x1, rows of the input planes, which are at
                // least y0*out_w + n long since out = in for a 1x1 stride-1 convolution).
                unsafe {
                    gemm::gemm(
                        c_out,
                        n,
                        k_size,
                        out.as_mut_ptr().add(y0 * out_w),
                        1,
                        plane as isize,
                        false,
                        w.as_ptr(),
                        1,
                        k_size as isize,
                        rhs.as_ptr(),
                        1,
                        rhs_rs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
                y0 = y1;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, out_h, out_w))))
    }
}

/// Fills `columns` ([c_in*kh*kw, (y1-y0)*out_w], row-major) for output rows `y0..y1`:
/// row `(ci, ky, kx)` holds, for every output pixel of the band, the input pixel under
/// kernel tap `(ky, kx)` of channel `ci`, or 0 where that falls in the padding.
fn fill_columns(
    x: &[f32],
    (c_in, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    (s, p): (usize, usize),
    (y0, y1, out_w): (usize, usize, usize),
    columns: &mut [f32],
) {
    let n = (y1 - y0) * out_w;
    for ci in 0..c_in {
        let channel = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut columns[((ci * kh + ky) * kw + kx) * n..][..n];
                // Output columns whose input column lands inside the image: ox in lo..hi.
                let lo = p.saturating_sub(kx).div_ceil(s).min(out_w);
                let hi = if w + p > kx {
                    ((w + p - kx - 1) / s + 1).min(out_w)
                } else {
                    0
                }
                .max(lo);
                for oy in y0..y1 {
                    let dst = &mut row[(oy - y0) * out_w..][..out_w];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || lo == hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &channel[iy as usize * w..][..w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let ix0 = lo * s + kx - p;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (j, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[ix0 + j * s];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::Conv2dConfig;

    /// Our kernel against candle's convolution on random data, for the shapes SD uses:
    /// 3x3 padding 1, 3x3 stride 2 (downsampling), 1x1, odd sizes, bands smaller than
    /// the image.
    #[test]
    fn matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for &(b, c_in, c_out, h, w, k, stride, padding) in &[
            (2, 4, 8, 9, 7, 3, 1, 1),
            (1, 5, 3, 8, 8, 3, 2, 1),
            (2, 6, 4, 5, 11, 1, 1, 0),
            (1, 3, 2, 6, 6, 3, 1, 0),
            (1, 2, 3, 7, 5, 3, 2, 0),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c_in, h, w), &dev)?;
            let weight = Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1., c_out, &dev)?;
            let config = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let want =
                candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), config).forward(&x)?;
            let conv = Conv2d {
                weight,
                bias: Some(bias),
                config,
            };
            let got = im2col_gemm(&x, &conv)?;
            assert_eq!(want.dims(), got.dims());
            let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-4,
                "{:?}: max diff {diff}",
                (b, c_in, c_out, h, w, k, stride, padding)
            );
        }
        Ok(())
    }

    /// Large layers are done in bands of output rows: two bands' columns are exactly the
    /// matching slices of the whole image's.
    #[test]
    fn bands_are_slices_of_the_whole() -> Result<()> {
        let (c_in, h, w) = (2, 5, 4);
        let x: Vec<f32> = (0..c_in * h * w).map(|v| v as f32).collect();
        let (kh, kw, s, p) = (3, 3, 1, 1);
        let k_size = c_in * kh * kw;
        let mut whole = vec![0f32; k_size * h * w];
        fill_columns(&x, (c_in, h, w), (kh, kw), (s, p), (0, h, w), &mut whole);
        for (y0, y1) in [(0, 2), (2, 5)] {
            let n = (y1 - y0) * w;
            let mut band = vec![0f32; k_size * n];
            fill_columns(&x, (c_in, h, w), (kh, kw), (s, p), (y0, y1, w), &mut band);
            for row in 0..k_size {
                assert_eq!(band[row * n..][..n], whole[row * h * w + y0 * w..][..n]);
            }
        }
        Ok(())
    }
}
