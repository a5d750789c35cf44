//! Encoding generated images into the bytes a client receives.
//!
//! The pipeline hands out raw RGB; the format is chosen per request, so
//! encoding is a separate step the CLI and the worker call.

use std::io::Cursor;

use crate::error::{Error, Result};

/// Encodes `width * height * 3` RGB bytes as PNG.
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let image =
        image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec()).ok_or_else(|| {
            Error::invalid(
                "image",
                format!(
                    "{} bytes do not make a {width}x{height} RGB image",
                    rgb.len()
                ),
            )
        })?;
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::invalid("image", format!("PNG encoding failed: {e}")))?;
    Ok(bytes)
}
