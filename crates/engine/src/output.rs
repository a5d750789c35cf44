//! Encoding generated images into the bytes a client receives.
//!
//! The pipeline hands out raw RGB; the format is chosen per request, so
//! encoding is a separate step the CLI and the worker call. Three formats,
//! each with one fixed setting so a request names only the format: PNG
//! (lossless, the default), JPEG at quality 95 (what image services commonly
//! default to for photographs), and lossless WebP (the `image` crate's WebP
//! encoder writes only the lossless variant). Base64 for transport is the
//! service's job, not the engine's.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};

/// The JPEG quality every request gets.
const JPEG_QUALITY: u8 = 95;

/// An output encoding (`sie-vocab` owns the names and their MIME types).
pub use sie_vocab::ImageFormat;

/// Encodes `width * height * 3` RGB bytes in `format`.
pub fn encode(rgb: &[u8], width: usize, height: usize, format: ImageFormat) -> Result<Vec<u8>> {
    if rgb.len() != width * height * 3 || width == 0 || height == 0 {
        return Err(Error::invalid(
            "image",
            format!(
                "{} bytes do not make a {width}x{height} RGB image",
                rgb.len()
            ),
        ));
    }
    let (w, h) = (width as u32, height as u32);
    let mut bytes = Vec::new();
    let sink = Cursor::new(&mut bytes);
    let encoded = match format {
        ImageFormat::Png => PngEncoder::new(sink).write_image(rgb, w, h, ExtendedColorType::Rgb8),
        ImageFormat::Jpeg => JpegEncoder::new_with_quality(sink, JPEG_QUALITY).write_image(
            rgb,
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
        ImageFormat::Webp => {
            WebPEncoder::new_lossless(sink).write_image(rgb, w, h, ExtendedColorType::Rgb8)
        }
    };
    encoded.map_err(|e| Error::invalid("image", format!("{format} encoding failed: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> Vec<u8> {
        (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [(x * 7) as u8, (y * 5) as u8, 128]))
            .collect()
    }

    #[test]
    fn every_format_decodes_to_the_right_size() {
        let (w, h) = (37, 21);
        let rgb = gradient(w, h);
        for (format, expected) in [
            (ImageFormat::Png, image::ImageFormat::Png),
            (ImageFormat::Jpeg, image::ImageFormat::Jpeg),
            (ImageFormat::Webp, image::ImageFormat::WebP),
        ] {
            let bytes = encode(&rgb, w, h, format).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), expected, "{format}");
            let decoded = image::load_from_memory_with_format(&bytes, expected)
                .unwrap()
                .to_rgb8();
            assert_eq!((decoded.width(), decoded.height()), (w as u32, h as u32));
            if format != ImageFormat::Jpeg {
                // PNG and WebP are lossless.
                assert_eq!(decoded.into_raw(), rgb, "{format}");
            }
        }
    }

    #[test]
    fn a_wrong_buffer_size_is_refused() {
        assert!(encode(&[0; 10], 2, 2, ImageFormat::Png).is_err());
    }
}
