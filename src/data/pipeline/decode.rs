//! One image file to 8-bit RGB, whole or only the part a crop needs. The format is sniffed
//! from the first bytes, so a PNG named .jpg still loads. As PIL's `convert("RGB")`: grey
//! is replicated, alpha dropped, EXIF orientation not applied.
//!
//! JPEG: the system libjpeg-turbo when the build found it (`cfg(hist_libjpeg)`, build.rs;
//! jpeg_region.rs), which is PIL's own decoder and can decode a region alone; zune-jpeg
//! (SIMD, pure Rust) otherwise, and for the colour spaces libjpeg cannot give as RGB
//! (CMYK, YCCK). PNG: the `image` crate.
//!
//! A truncated JPEG is an error (PIL raises "image file is truncated"), not the grey-filled
//! picture a lenient decoder returns. libjpeg-turbo reports the early end as a warning,
//! which the shim makes an error; a scan cut short inside a file that ends properly (a
//! corrupt scan) decodes with grey blocks, as in PIL. zune-jpeg decodes strictly first; when the strict decoder
//! objects to anything but missing data (stray bytes between markers and the like, which
//! libjpeg only warns about), it decodes again leniently.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::RgbImage;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::JpegDecoder;

use super::geometry::CropBox;
#[cfg(hist_libjpeg)]
use super::jpeg_region::{JpegError, JpegFile};
use crate::data::folder::os_reason;
use crate::error::{HistError, Result};

const JPEG_MAGIC: [u8; 2] = [0xFF, 0xD8];
/// The EOI marker that ends a complete JPEG.
const JPEG_END: [u8; 2] = [0xFF, 0xD9];
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
const TRUNCATED: &str = "the JPEG data ends early (truncated file)";

/// What to tell the user to do about a file that cannot be used.
const FIX: &str = "fix or remove the file, or set data.on_bad_image: skip to leave it out";

/// Whether this build decodes JPEG with the system libjpeg-turbo (regions and all).
pub const LIBJPEG: bool = cfg!(hist_libjpeg);

/// Which JPEG decoder this build uses, for reports.
pub fn jpeg_decoder() -> String {
    #[cfg(hist_libjpeg)]
    return format!("libjpeg-turbo {}, system library, region decoding", super::jpeg_region::version());
    #[cfg(not(hist_libjpeg))]
    return "zune-jpeg, whole images (libjpeg-turbo not built in)".to_string();
}

/// Reads and decodes `path`; an error names the file, says what is wrong and the fix.
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = read_file(path)?;
    decode_bytes(&bytes).map_err(|reason| undecodable(path, &reason))
}

/// Reads `path` and decodes at least the box that `choose` picks from the image's width and
/// height; returns the pixels and where that box lies in them. With libjpeg-turbo only the
/// box's rows and a window of columns around it are decoded; otherwise the whole image.
/// Errors as [`decode_file`].
pub fn decode_file_region(path: &Path, choose: impl FnOnce(u32, u32) -> CropBox) -> Result<(RgbImage, CropBox)> {
    let bytes = read_file(path)?;
    decode_bytes_region(&bytes, choose).map_err(|reason| undecodable(path, &reason))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| HistError::Data { path: path.to_path_buf(), message: format!("cannot read: {}; {FIX}", os_reason(&e)) })
}

fn undecodable(path: &Path, reason: &str) -> HistError {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    HistError::Data { path: path.to_path_buf(), message: format!("cannot decode image: {reason}; {FIX}") }
}

/// Decodes a JPEG or PNG held in memory; the error is the reason alone.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    guarded(|| decode_whole(bytes))
}

/// [`decode_file_region`] on bytes held in memory; the error is the reason alone.
pub fn decode_bytes_region(bytes: &[u8], choose: impl FnOnce(u32, u32) -> CropBox) -> std::result::Result<(RgbImage, CropBox), String> {
    guarded(|| {
        // Region decoding stops after the box's last row, so data missing further down would
        // go unnoticed; a file that does not end with EOI is decoded whole, which reports it.
        #[cfg(hist_libjpeg)]
        if bytes.starts_with(&JPEG_MAGIC) && bytes.ends_with(&JPEG_END) {
            match JpegFile::open(bytes) {
                Err(JpegError::Unsupported) => {} // whole, by zune-jpeg, below
                Err(e) => return Err(libjpeg_reason(e)),
                Ok(file) => {
                    let (w, h) = file.dimensions();
                    let region = choose(w, h);
                    match file.decode(region) {
                        // Whole, below, then the same region of it.
                        Err(JpegError::Damaged) => {
                            let image = decode_whole(bytes)?;
                            return Ok((image, region));
                        }
                        other => return other.map_err(libjpeg_reason),
                    }
                }
            }
        }
        let image = decode_whole(bytes)?;
        let region = choose(image.width(), image.height());
        Ok((image, region))
    })
}

/// Runs a decoder: a decoder bug on hostile bytes must become this file's error, not a dead worker.
fn guarded<T>(decode: impl FnOnce() -> std::result::Result<T, String>) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|_| Err("the decoder failed on this file's data".to_string()))
}

fn decode_whole(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    if bytes.starts_with(&JPEG_MAGIC) {
        decode_jpeg(bytes)
    } else if bytes.starts_with(&PNG_MAGIC) {
        decode_png(bytes)
    } else if bytes.is_empty() {
        Err("the file is empty".to_string())
    } else {
        Err("not a JPEG or PNG file (unrecognised first bytes)".to_string())
    }
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    #[cfg(hist_libjpeg)]
    match JpegFile::open(bytes).and_then(JpegFile::decode_all) {
        Err(JpegError::Unsupported) => {} // zune-jpeg, below
        decoded => return decoded.map_err(libjpeg_reason),
    }
    decode_jpeg_zune(bytes)
}

#[cfg(hist_libjpeg)]
fn libjpeg_reason(e: JpegError) -> String {
    match e {
        JpegError::Truncated => TRUNCATED.to_string(),
        JpegError::Unsupported => "a colour space libjpeg cannot convert to RGB".to_string(),
        JpegError::Damaged => "a corrupt scan (internal: a whole decode should have taken over)".to_string(),
        JpegError::Invalid(message) => message,
    }
}

/// A JPEG by zune-jpeg alone: strictly, then leniently unless the data ran out (a file
/// that ends with EOI but whose scan stops short, a corrupt scan, is decoded as PIL does).
pub fn decode_jpeg_zune(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    guarded(|| match jpeg_with(bytes, true) {
        Ok(img) => Ok(img),
        Err(e) if is_truncation(&e) && !bytes.ends_with(&JPEG_END) => Err(TRUNCATED.to_string()),
        Err(_) => jpeg_with(bytes, false).map_err(|e| format!("{e:?}")),
    })
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

/// PNG to RGB8 as PIL's `convert("RGB")`: 16-bit colour keeps each sample's high byte
/// (PIL's `RGB;16B` unpacking, where `image` would round v/257). 16-bit grey is the
/// exception: PIL opens it as `I;16` and `convert("RGB")` clips every value above 255 to
/// white, so it is scaled (v/257, rounded) instead (docs/datasets.md).
fn decode_png(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use image::DynamicImage;
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    let high = |v: u16| (v >> 8) as u8;
    Ok(match img {
        DynamicImage::ImageRgb16(p) => RgbImage::from_fn(p.width(), p.height(), |x, y| image::Rgb(p.get_pixel(x, y).0.map(high))),
        DynamicImage::ImageRgba16(p) => RgbImage::from_fn(p.width(), p.height(), |x, y| {
            let [r, g, b, _] = p.get_pixel(x, y).0;
            image::Rgb([high(r), high(g), high(b)])
        }),
        DynamicImage::ImageLumaA16(p) => RgbImage::from_fn(p.width(), p.height(), |x, y| image::Rgb([high(p.get_pixel(x, y).0[0]); 3])),
        other => other.to_rgb8(),
    })
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

    #[test]
    fn sixteen_bit_colour_pngs_keep_the_high_byte_as_pil_does() {
        // 0x00FF and 0x80FF: the high byte gives 0 and 128 (PIL), rounding v/257 gives 1 and 129.
        let samples = [0x00FFu16, 0x80FF, 0xFFFF, 0x1234, 0x0000, 0x7F80];
        let encode = |img: image::DynamicImage| {
            let mut bytes = std::io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, image::ImageFormat::Png).expect("encode");
            bytes.into_inner()
        };
        let rgb = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(2, 1, samples.to_vec()).expect("rgb16");
        let got = decode_bytes(&encode(image::DynamicImage::ImageRgb16(rgb))).expect("decode");
        assert_eq!(got.into_raw(), samples.map(|v| (v >> 8) as u8).to_vec());
        let rgba = image::ImageBuffer::<image::Rgba<u16>, _>::from_raw(1, 1, vec![0x00FF, 0x80FF, 0xFFFF, 0x0001]).expect("rgba16");
        let got = decode_bytes(&encode(image::DynamicImage::ImageRgba16(rgba))).expect("decode");
        assert_eq!(got.into_raw(), vec![0, 0x80, 0xFF]);
        let grey_alpha = image::ImageBuffer::<image::LumaA<u16>, _>::from_raw(1, 1, vec![0x80FF, 0x1234]).expect("la16");
        let got = decode_bytes(&encode(image::DynamicImage::ImageLumaA16(grey_alpha))).expect("decode");
        assert_eq!(got.into_raw(), vec![0x80; 3]);
    }
}
