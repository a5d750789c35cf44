//! Input images for image-to-image and inpainting, prepared as diffusers' `VaeImageProcessor`
//! prepares a PIL image.
//!
//! Decoding (PNG, JPEG, WebP, EXIF orientation, alpha and grayscale) happens at the service's
//! edge, which hands the engine RGB pixels: [`RgbImage`]. What is left is the part that
//! decides the numbers the VAE sees, so it is written to match Pillow bit for bit: the
//! resize to the output size is Pillow's Lanczos (`Image.resize(size, LANCZOS)`, the
//! processor's default `resample`), as Pillow 13 does it: two separable passes with
//! coefficients in 22-bit fixed point and 8-bit intermediates, horizontal first unless the
//! height shrinks much more than the width (earlier Pillows always went horizontal first,
//! so their resized images can differ by a few levels); a mask becomes grayscale as Pillow's
//! `convert("L")` does (ITU-R 601-2 weights in 16-bit fixed point), after the resize, as the
//! processor orders them; then bytes become floats (`/ 255` in float32), an image is moved to
//! [-1, 1] and a mask is binarised at 0.5. Pillow's resize of an image to its own size is a
//! copy, and so is ours.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Decoded RGB pixels, `width * height * 3` bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Pixels as decoded; refused if the byte count does not match the size.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 || pixels.len() != width * height * 3 {
            return Err(Error::invalid(
                "image",
                format!(
                    "{} bytes do not make a {width}x{height} RGB image",
                    pixels.len()
                ),
            ));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Pillow's `resize((width, height), Image.LANCZOS)`.
    pub fn resized(&self, width: usize, height: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: resize_lanczos(&self.pixels, 3, (self.width, self.height), (width, height)),
        }
    }

    /// Pillow's `convert("L")`: one byte per pixel.
    fn luma(&self) -> Vec<u8> {
        self.pixels
            .chunks_exact(3)
            .map(|p| {
                let l = p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000;
                (l >> 16) as u8
            })
            .collect()
    }

    /// The processor's image: resized to `width` x `height`, then (1, 3, height, width)
    /// float32 in [-1, 1] (`2 * (byte / 255) - 1`).
    pub(crate) fn to_image_tensor(
        &self,
        width: usize,
        height: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let resized = self.resized(width, height);
        let plane = width * height;
        let mut chw = vec![0f32; 3 * plane];
        for (i, p) in resized.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = 2.0 * (p[c] as f32 / 255.0) - 1.0;
            }
        }
        Ok(Tensor::from_vec(chw, (1, 3, height, width), device)?)
    }

    /// The mask processor's mask: resized to `width` x `height`, made grayscale, then
    /// (1, 1, height, width) float32 of 0 (keep) and 1 (repaint): `byte / 255 >= 0.5`.
    pub(crate) fn to_mask_tensor(
        &self,
        width: usize,
        height: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let luma = self.resized(width, height).luma();
        let binary: Vec<f32> = luma
            .into_iter()
            .map(|l| if l as f32 / 255.0 < 0.5 { 0.0 } else { 1.0 })
            .collect();
        Ok(Tensor::from_vec(binary, (1, 1, height, width), device)?)
    }
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's Lanczos: a sinc windowed by a sinc three times as wide.
fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One axis's resampling: for each output position, the first input position it reads and
/// its fixed-point weights (`precompute_coeffs` then `normalize_coeffs_8bpc`).
struct Axis {
    taps: Vec<(usize, Vec<i32>)>,
}

impl Axis {
    fn new(in_size: usize, out_size: usize) -> Axis {
        const SUPPORT: f64 = 3.0;
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        let taps = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C's (int) truncates toward zero; the clamps make that the same as floor.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let ss = 1.0 / filter_scale;
                let raw: Vec<f64> = (xmin..xmax)
                    .map(|x| lanczos((x as f64 - center + 0.5) * ss))
                    .collect();
                let total: f64 = raw.iter().sum();
                let weights = raw
                    .into_iter()
                    .map(|w| {
                        let w = if total != 0.0 { w / total } else { w };
                        let fixed = w * (1u32 << PRECISION_BITS) as f64;
                        if w < 0.0 {
                            (fixed - 0.5) as i32
                        } else {
                            (fixed + 0.5) as i32
                        }
                    })
                    .collect();
                (xmin, weights)
            })
            .collect();
        Axis { taps }
    }

    /// The range of input positions any output reads.
    fn span(&self) -> (usize, usize) {
        let first = self.taps.first().map_or(0, |(start, _)| *start);
        let last = self
            .taps
            .last()
            .map_or(0, |(start, weights)| start + weights.len());
        (first, last)
    }
}

/// Pillow's `clip8`: a fixed-point sum (with its rounding half already added) to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResample` (13.0) for 8-bit images of `channels` interleaved channels:
/// two separable passes, each rounded to bytes; horizontal first (over only the rows the
/// vertical pass reads), unless the height shrinks by more than twice as many pixels as
/// the width, when the vertical pass goes first.
fn resize_lanczos(
    pixels: &[u8],
    channels: usize,
    (in_w, in_h): (usize, usize),
    (out_w, out_h): (usize, usize),
) -> Vec<u8> {
    if (in_w, in_h) == (out_w, out_h) {
        return pixels.to_vec();
    }
    let shrink_h = in_h as i64 - out_h as i64;
    let shrink_w = in_w as i64 - out_w as i64;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    let plane = Plane {
        pixels: pixels.to_vec(),
        width: in_w,
        height: in_h,
        channels,
    };
    let horizontal = |p: Plane| {
        if p.width == out_w {
            p
        } else {
            p.resample_rows(&Axis::new(in_w, out_w))
        }
    };
    let vertical = |p: Plane| {
        if p.height == out_h {
            p
        } else {
            p.resample_columns(&Axis::new(in_h, out_h))
        }
    };
    if vertical_first {
        horizontal(vertical(plane)).pixels
    } else if in_h != out_h {
        // Only the rows the vertical pass reads are resampled horizontally.
        let axis = Axis::new(in_h, out_h);
        let (first, last) = axis.span();
        let stride = in_w * channels;
        let rows = Plane {
            pixels: pixels[first * stride..last * stride].to_vec(),
            height: last - first,
            ..plane
        };
        horizontal(rows).resample_columns_from(&axis, first).pixels
    } else {
        horizontal(plane).pixels
    }
}

/// An 8-bit image in the middle of a resize.
struct Plane {
    pixels: Vec<u8>,
    width: usize,
    height: usize,
    channels: usize,
}

impl Plane {
    /// The horizontal pass: every row to `axis`'s output width.
    fn resample_rows(self, axis: &Axis) -> Plane {
        let c = self.channels;
        let out_w = axis.taps.len();
        let half = 1i64 << (PRECISION_BITS - 1);
        let mut out = vec![0u8; self.height * out_w * c];
        for (src, row) in self
            .pixels
            .chunks_exact(self.width * c)
            .zip(out.chunks_exact_mut(out_w * c))
        {
            for (xx, (start, weights)) in axis.taps.iter().enumerate() {
                for ch in 0..c {
                    let mut sum = half;
                    for (k, w) in weights.iter().enumerate() {
                        sum += src[(start + k) * c + ch] as i64 * *w as i64;
                    }
                    row[xx * c + ch] = clip8(sum);
                }
            }
        }
        Plane {
            pixels: out,
            width: out_w,
            ..self
        }
    }

    /// The vertical pass over all rows.
    fn resample_columns(self, axis: &Axis) -> Plane {
        self.resample_columns_from(axis, 0)
    }

    /// The vertical pass, where this plane's first row is the input's row `first_row`.
    fn resample_columns_from(self, axis: &Axis, first_row: usize) -> Plane {
        let stride = self.width * self.channels;
        let out_h = axis.taps.len();
        let half = 1i64 << (PRECISION_BITS - 1);
        let mut out = vec![0u8; out_h * stride];
        for (dst, (start, weights)) in out.chunks_exact_mut(stride).zip(&axis.taps) {
            for (i, d) in dst.iter_mut().enumerate() {
                let mut sum = half;
                for (k, w) in weights.iter().enumerate() {
                    sum += self.pixels[(start + k - first_row) * stride + i] as i64 * *w as i64;
                }
                *d = clip8(sum);
            }
        }
        Plane {
            pixels: out,
            height: out_h,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_to_the_same_size_is_a_copy() {
        let img = RgbImage::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(img.resized(2, 1), img);
    }

    #[test]
    fn a_flat_image_stays_flat_at_any_size() {
        // The weights of every output sum to one in fixed point, so a constant survives.
        let img = RgbImage::new(13, 7, [200u8, 17, 90].repeat(13 * 7)).unwrap();
        for (w, h) in [(5, 3), (40, 21), (13, 20), (6, 7)] {
            let r = img.resized(w, h);
            assert!(
                r.pixels().chunks_exact(3).all(|p| p == [200, 17, 90]),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn pixel_counts_are_checked() {
        let err = RgbImage::new(2, 2, vec![0; 11]).unwrap_err().to_string();
        assert!(err.contains("2x2"), "{err}");
    }

    #[test]
    fn luma_uses_pillows_weights() {
        let img = RgbImage::new(3, 1, vec![255, 0, 0, 0, 255, 0, 0, 0, 255]).unwrap();
        // Pillow: L of pure red, green, blue is 76, 150, 29.
        assert_eq!(img.luma(), vec![76, 150, 29]);
    }
}
