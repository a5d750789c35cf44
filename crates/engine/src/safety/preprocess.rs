//! The safety checker's image preprocessing, as transformers' `CLIPImageProcessor` does it.
//!
//! The reference is the processor's PIL backend (the one transformers uses
//! when torchvision is absent, and the one that has always produced the
//! checker's inputs): the uint8 RGB image is resized by Pillow (bicubic by
//! default) so its shortest side is `size.shortest_edge`, centre-cropped to
//! `crop_size` (zero-padded where the image is smaller), rescaled by
//! `rescale_factor` in f64 then stored as f32, and normalised with the mean
//! and std in f32. Pillow's resampler is reproduced exactly: two separable
//! passes (in Pillow 13's order) whose filter support widens by the scale when
//! downsampling, weights in 22-bit fixed point, and the intermediate image
//! rounded and clipped to uint8 between the passes. That is what brings the
//! pixel values to within float rounding of transformers'; a float resampler
//! would differ by whole uint8 steps. Every value comes from
//! `preprocessor_config.json`, with the processor's own defaults.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::loader::json::{FromJson, JsonConfig};

/// CLIP's normalisation, `CLIPImageProcessor`'s defaults.
const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A Pillow resampling filter (`PIL.Image.Resampling`'s numbering, as configs store it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resample {
    Bilinear,
    Bicubic,
}

impl Resample {
    /// Half the filter's width at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            // Keys' cubic with a = -0.5, as Pillow defines it.
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// How the shorter side (or both sides) are resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResizeTo {
    /// The shortest side becomes this, the other keeps the aspect ratio (truncated).
    ShortestEdge(usize),
    /// Exactly this (height, width).
    Exact(usize, usize),
}

/// `preprocessor_config.json` (transformers' `CLIPImageProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreprocessorConfig {
    pub(crate) resize: Option<ResizeTo>,
    pub(crate) resample: Resample,
    /// (height, width), when cropping.
    pub(crate) crop: Option<(usize, usize)>,
    pub(crate) rescale_factor: Option<f64>,
    /// (mean, std) per channel, when normalising.
    pub(crate) normalize: Option<([f64; 3], [f64; 3])>,
}

impl Default for PreprocessorConfig {
    /// `CLIPImageProcessor()`'s defaults: shortest side 224, bicubic, crop 224, 1/255, CLIP's mean and std.
    fn default() -> Self {
        PreprocessorConfig {
            resize: Some(ResizeTo::ShortestEdge(224)),
            resample: Resample::Bicubic,
            crop: Some((224, 224)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }
}

impl FromJson for PreprocessorConfig {
    /// Absent keys take `CLIPImageProcessor`'s defaults.
    fn from_config(c: &JsonConfig) -> Result<Self> {
        let defaults = PreprocessorConfig::default();
        let resize = if c.bool_or("do_resize", true)? {
            Some(match c.get("size") {
                None => ResizeTo::ShortestEdge(224),
                // Old feature-extractor files store a bare integer: the shortest edge for CLIP.
                Some(Value::Number(_)) => ResizeTo::ShortestEdge(positive(c, "size")?),
                Some(Value::Object(map)) => {
                    let get = |k: &str| map.get(k).and_then(Value::as_u64).map(|v| v as usize);
                    match (get("shortest_edge"), get("height"), get("width")) {
                        (Some(s), _, _) if s > 0 => ResizeTo::ShortestEdge(s),
                        (None, Some(h), Some(w)) if h > 0 && w > 0 => ResizeTo::Exact(h, w),
                        _ => return Err(c.error(
                            "size",
                            "expected {\"shortest_edge\": N} or {\"height\": H, \"width\": W} with positive integers",
                        )),
                    }
                }
                Some(v) => {
                    return Err(c.error(
                        "size",
                        format!("expected an integer or an object, found {v}"),
                    ))
                }
            })
        } else {
            None
        };
        let resample = match c.get("resample") {
            None => defaults.resample,
            Some(v) => match v.as_u64() {
                Some(2) => Resample::Bilinear,
                Some(3) => Resample::Bicubic,
                _ => {
                    return Err(c.error(
                        "resample",
                        format!("{v} is not supported; accepted: 2 (bilinear), 3 (bicubic)"),
                    ))
                }
            },
        };
        let crop = if c.bool_or("do_center_crop", true)? {
            Some(match c.get("crop_size") {
                None => (224, 224),
                Some(Value::Number(_)) => {
                    let s = positive(c, "crop_size")?;
                    (s, s)
                }
                Some(Value::Object(map)) => {
                    let get = |k: &str| map.get(k).and_then(Value::as_u64).map(|v| v as usize);
                    match (get("height"), get("width")) {
                        (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
                        _ => {
                            return Err(c.error(
                                "crop_size",
                                "expected {\"height\": H, \"width\": W} with positive integers",
                            ))
                        }
                    }
                }
                Some(v) => {
                    return Err(c.error(
                        "crop_size",
                        format!("expected an integer or an object, found {v}"),
                    ))
                }
            })
        } else {
            None
        };
        let rescale_factor = if c.bool_or("do_rescale", true)? {
            Some(c.f64_or("rescale_factor", 1.0 / 255.0)?)
        } else {
            None
        };
        let normalize = if c.bool_or("do_normalize", true)? {
            Some((
                three(c, "image_mean", CLIP_MEAN)?,
                three(c, "image_std", CLIP_STD)?,
            ))
        } else {
            None
        };
        if let Some((_, std)) = normalize {
            if std.contains(&0.0) {
                return Err(c.error("image_std", "a standard deviation of 0 divides by zero"));
            }
        }
        Ok(PreprocessorConfig {
            resize,
            resample,
            crop,
            rescale_factor,
            normalize,
        })
    }
}

impl PreprocessorConfig {
    /// The (height, width) of what [`preprocess`](Self::preprocess) returns for a `height x width` image.
    pub(crate) fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let (h, w) = match self.resize {
            Some(to) => resized_size(to, height, width),
            None => (height, width),
        };
        self.crop.unwrap_or((h, w))
    }

    /// `width * height * 3` RGB bytes to (3, H, W) pixel values, channel-first, row-major.
    pub(crate) fn preprocess(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(Error::invalid(
                "image",
                format!(
                    "{} bytes do not make a {width}x{height} RGB image",
                    rgb.len()
                ),
            ));
        }
        let (mut image, mut w, mut h) = (rgb.to_vec(), width, height);
        if let Some(to) = self.resize {
            let (nh, nw) = resized_size(to, h, w);
            image = resize_rgb(&image, w, h, nw, nh, self.resample);
            (w, h) = (nw, nh);
        }
        if let Some((ch, cw)) = self.crop {
            image = center_crop_rgb(&image, w, h, cw, ch);
            (w, h) = (cw, ch);
        }
        let mut out = vec![0f32; 3 * w * h];
        let norm = self.normalize.map(|(mean, std)| {
            (
                mean.map(|m| m as f32), // numpy casts mean and std to the image's float32
                std.map(|s| s as f32),
            )
        });
        for (i, px) in image.chunks_exact(3).enumerate() {
            for c in 0..3 {
                // Rescaling multiplies in f64 then stores f32; without it the bytes become f32.
                let mut v = match self.rescale_factor {
                    Some(f) => (px[c] as f64 * f) as f32,
                    None => px[c] as f32,
                };
                if let Some((mean, std)) = &norm {
                    v = (v - mean[c]) / std[c];
                }
                out[c * w * h + i] = v;
            }
        }
        Ok(out)
    }
}

fn positive(c: &JsonConfig, key: &str) -> Result<usize> {
    match c.usize_or(key, 0)? {
        0 => Err(c.error(key, "must be a positive integer")),
        n => Ok(n),
    }
}

fn three(c: &JsonConfig, key: &str, default: [f64; 3]) -> Result<[f64; 3]> {
    match c.get(key) {
        None => Ok(default),
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, v) in out.iter_mut().zip(items) {
                *o = v
                    .as_f64()
                    .ok_or_else(|| c.error(key, format!("expected numbers, found {v}")))?;
            }
            Ok(out)
        }
        Some(v) if v.is_number() => Ok([v.as_f64().unwrap_or_default(); 3]),
        Some(v) => Err(c.error(
            key,
            format!("expected a number or a list of 3 numbers (one per RGB channel), found {v}"),
        )),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes
/// `size` and the long side `int(size * long / short)`, in Python's float arithmetic.
fn resized_size(to: ResizeTo, height: usize, width: usize) -> (usize, usize) {
    match to {
        ResizeTo::Exact(h, w) => (h, w),
        ResizeTo::ShortestEdge(size) => {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            let new_long = (size as f64 * long as f64 / short as f64) as usize;
            if width <= height {
                (new_long, size)
            } else {
                (size, new_long)
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images: 32 bits less 8 for the value, 2 for the sign
/// and overflow headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass's filter: for each output index, the first input index, how many inputs it reads,
/// and its fixed-point weights (`ksize` slots per output, unused ones 0).
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` over the whole input range.
fn coefficients(in_size: usize, out_size: usize, filter: Resample) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    // Downsampling widens the filter so every input pixel contributes; upsampling keeps it.
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero, then the range is clipped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            *slot = w;
            total += w;
        }
        for (x, &w) in k.iter().enumerate().take(count) {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: rounds (the accumulator starts at one half) and clamps to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize` of an RGB image, as Pillow 13's `ImagingResampleInner` runs it: two
/// separable passes through a uint8 intermediate. The horizontal pass goes first (over only the
/// rows the vertical pass reads) unless the height shrinks by more than twice as many pixels as
/// the width, then the vertical one does; the order changes the rounding of the intermediate, so
/// it is part of the result. A pass whose size is unchanged is skipped.
pub(crate) fn resize_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: Resample,
) -> Vec<u8> {
    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    let shrink_y = height as i64 - out_height as i64;
    let shrink_x = width as i64 - out_width as i64;
    let horizontal_first = !(shrink_y > 0 && shrink_y > shrink_x * 2);
    if horizontal_first {
        let mut image = rgb.to_vec();
        let vert = coefficients(height, out_height, filter);
        let mut vert_bounds = vert.bounds.clone();
        if need_horizontal {
            // Only the rows some output row reads, and the vertical bounds shifted to them.
            let first = vert.bounds[0].0;
            let (last_min, last_count) = vert.bounds[out_height - 1];
            let rows = first..last_min + last_count;
            let horiz = coefficients(width, out_width, filter);
            image = horizontal_pass(rgb, width, rows, out_width, &horiz);
            for b in &mut vert_bounds {
                b.0 -= first;
            }
        }
        if need_vertical {
            let w = if need_horizontal { out_width } else { width };
            let vert = Coefficients {
                bounds: vert_bounds,
                ..vert
            };
            image = vertical_pass(&image, w, out_height, &vert);
        }
        image
    } else {
        let vert = coefficients(height, out_height, filter);
        let mut image = vertical_pass(rgb, width, out_height, &vert);
        if need_horizontal {
            let horiz = coefficients(width, out_width, filter);
            image = horizontal_pass(&image, width, 0..out_height, out_width, &horiz);
        }
        image
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc` over `rows` of a `width`-wide RGB image.
fn horizontal_pass(
    rgb: &[u8],
    width: usize,
    rows: std::ops::Range<usize>,
    out_width: usize,
    c: &Coefficients,
) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows.len() * out_width * 3];
    for (oy, y) in rows.enumerate() {
        let row = &rgb[y * width * 3..(y + 1) * width * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
            let mut acc = [half; 3];
            for (x, &kw) in k.iter().enumerate() {
                let px = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += px[ch] as i32 * kw;
                }
            }
            let o = (oy * out_width + xx) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc` of a `width`-wide RGB image to `out_height` rows.
fn vertical_pass(rgb: &[u8], width: usize, out_height: usize, c: &Coefficients) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_height * width * 3];
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
        for xx in 0..width {
            let mut acc = [half; 3];
            for (y, &kw) in k.iter().enumerate() {
                let o = ((ymin + y) * width + xx) * 3;
                for ch in 0..3 {
                    acc[ch] += rgb[o + ch] as i32 * kw;
                }
            }
            let o = (yy * width + xx) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// transformers' `center_crop`: the `crop_width x crop_height` window around the centre, the
/// image zero-padded (the larger half after) along a side where it is smaller than the crop.
pub(crate) fn center_crop_rgb(
    rgb: &[u8],
    width: usize,
    height: usize,
    crop_width: usize,
    crop_height: usize,
) -> Vec<u8> {
    // Where the image is at least the crop, the crop starts at `(size - crop) // 2`; where it is
    // smaller, transformers pads it to the crop with `ceil((crop - size) / 2)` zeros before, so
    // the crop's origin lies that far before the image's.
    let origin = |size: usize, crop: usize| -> i64 {
        if size >= crop {
            ((size - crop) / 2) as i64
        } else {
            -(((crop - size) as i64 + 1) / 2)
        }
    };
    let (top, left) = (origin(height, crop_height), origin(width, crop_width));
    let mut out = vec![0u8; crop_width * crop_height * 3];
    for y in 0..crop_height {
        let sy = top + y as i64;
        if sy < 0 || sy >= height as i64 {
            continue;
        }
        for x in 0..crop_width {
            let sx = left + x as i64;
            if sx < 0 || sx >= width as i64 {
                continue;
            }
            let s = (sy as usize * width + sx as usize) * 3;
            let o = (y * crop_width + x) * 3;
            out[o..o + 3].copy_from_slice(&rgb[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_sizes_truncate_like_python() {
        assert_eq!(
            resized_size(ResizeTo::ShortestEdge(224), 48, 64),
            (224, 298)
        );
        assert_eq!(
            resized_size(ResizeTo::ShortestEdge(224), 64, 48),
            (298, 224)
        );
        assert_eq!(
            resized_size(ResizeTo::ShortestEdge(224), 512, 512),
            (224, 224)
        );
    }

    #[test]
    fn a_uniform_image_stays_uniform() {
        let rgb = vec![77u8; 30 * 20 * 3];
        for (w, h) in [(7, 5), (90, 61)] {
            let out = resize_rgb(&rgb, 30, 20, w, h, Resample::Bicubic);
            assert!(out.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn crop_pads_a_small_image_with_zeros() {
        let rgb = vec![9u8; 2 * 2 * 3];
        let out = center_crop_rgb(&rgb, 2, 2, 4, 4);
        let ones: Vec<usize> = (0..16).filter(|i| out[i * 3] == 9).collect();
        assert_eq!(ones, vec![5, 6, 9, 10]);
        // Taller crop than image, narrower than image: 2 zero rows before, 1 after (as
        // transformers pads), and the middle 4 of 5 columns, starting at (5 - 4) // 2 = 0.
        let rgb = vec![9u8; 5 * 3 * 3];
        let out = center_crop_rgb(&rgb, 5, 3, 4, 6);
        let rows: Vec<bool> = (0..6).map(|y| out[y * 4 * 3] == 9).collect();
        assert_eq!(rows, [false, false, true, true, true, false]);
    }
}
