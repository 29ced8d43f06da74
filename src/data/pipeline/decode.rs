//! One image file to 8-bit RGB. JPEG goes straight to zune-jpeg (SIMD, pure Rust; the
//! fastest maintained decoder we measured, docs/benchmarks.md), PNG to the `image` crate.
//! The format is sniffed from the first bytes, so a PNG named .jpg still loads. As PIL's
//! `convert("RGB")`: grey is replicated, alpha dropped, EXIF orientation not applied.
//!
//! A truncated JPEG is an error (PIL raises "image file is truncated"), not the grey-filled
//! picture a lenient decoder returns. So a JPEG is decoded strictly first; when the strict
//! decoder objects to anything but missing data (stray bytes between markers and the like,
//! which libjpeg only warns about), it is decoded again leniently.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::RgbImage;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::JpegDecoder;

use crate::data::folder::os_reason;
use crate::error::{HistError, Result};

const JPEG_MAGIC: [u8; 2] = [0xFF, 0xD8];
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// What to tell the user to do about a file that cannot be used.
const FIX: &str = "fix or remove the file, or set data.on_bad_image: skip to leave it out";

/// Reads and decodes `path`; an error names the file, says what is wrong and the fix.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path)
        .map_err(|e| HistError::Data { path: path.to_path_buf(), message: format!("cannot read: {}; {FIX}", os_reason(&e)) })?;
    decode_bytes(&bytes).map_err(|reason| {
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        HistError::Data { path: path.to_path_buf(), message: format!("cannot decode image: {reason}; {FIX}") }
    })
}

/// Decodes a JPEG or PNG held in memory; the error is the reason alone.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    // A decoder bug on hostile bytes must become this file's error, not a dead worker.
    catch_unwind(AssertUnwindSafe(|| {
        if bytes.starts_with(&JPEG_MAGIC) {
            decode_jpeg(bytes)
        } else if bytes.starts_with(&PNG_MAGIC) {
            decode_png(bytes)
        } else if bytes.is_empty() {
            Err("the file is empty".to_string())
        } else {
            Err("not a JPEG or PNG file (unrecognised first bytes)".to_string())
        }
    }))
    .unwrap_or_else(|_| Err("the decoder failed on this file's data".to_string()))
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    match jpeg_with(bytes, true) {
        Ok(img) => Ok(img),
        Err(e) if is_truncation(&e) => Err("the JPEG data ends early (truncated file)".to_string()),
        Err(_) => jpeg_with(bytes, false).map_err(|e| format!("{e:?}")),
    }
}

fn jpeg_with(bytes: &[u8], strict: bool) -> std::result::Result<RgbImage, DecodeErrors> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB).set_strict_mode(strict);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode()?;
    let info = decoder.info().ok_or(DecodeErrors::FormatStatic("no image header"))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if decoder.output_colorspace() != Some(ColorSpace::RGB) {
        return Err(DecodeErrors::Format(format!("unsupported colour space {:?}", decoder.output_colorspace())));
    }
    RgbImage::from_raw(w, h, pixels).ok_or(DecodeErrors::FormatStatic("decoded size does not match the header"))
}

/// Whether the strict decoder stopped because the data ran out.
fn is_truncation(e: &DecodeErrors) -> bool {
    match e {
        DecodeErrors::ExhaustedData => true,
        DecodeErrors::FormatStatic(m) => m.contains("Premature end"),
        DecodeErrors::IoErrors(_) => true,
        _ => false,
    }
}

fn decode_png(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_empty_bytes_are_reasons() {
        assert!(decode_bytes(b"").unwrap_err().contains("empty"));
        assert!(decode_bytes(b"GIF89a....").unwrap_err().contains("not a JPEG or PNG"));
        assert!(decode_bytes(&[0xFF, 0xD8, 0xFF, 0x00]).is_err());
    }
}
