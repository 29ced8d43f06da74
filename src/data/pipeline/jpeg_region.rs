//! JPEG decoding with the system libjpeg-turbo through csrc/jpeg_region.c (built when
//! build.rs finds the library: `cfg(hist_libjpeg)`). Its output equals PIL's byte for byte,
//! and it can decode a rectangle alone: a window of whole iMCU columns around it, and the
//! rows down to its last, which is what makes the training transform fast
//! (docs/benchmarks.md).
use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use image::RgbImage;

use super::geometry::CropBox;

/// csrc/jpeg_region.c's opaque decoder.
#[repr(C)]
struct Handle {
    _private: [u8; 0],
}

extern "C" {
    fn hist_jpeg_new() -> *mut Handle;
    fn hist_jpeg_free(h: *mut Handle);
    fn hist_jpeg_message(h: *const Handle) -> *const c_char;
    fn hist_jpeg_read_header(h: *mut Handle, data: *const u8, len: usize, width: *mut u32, height: *mut u32) -> c_int;
    fn hist_jpeg_start_region(h: *mut Handle, x: u32, y: u32, w: u32, rows: u32, window_left: *mut u32, window_width: *mut u32) -> c_int;
    fn hist_jpeg_read_rows(h: *mut Handle, out: *mut u8, stride: usize) -> c_int;
    fn hist_jpeg_version() -> c_int;
}

// The shim's return codes.
const OK: c_int = 0;
const TRUNCATED: c_int = 2;
const UNSUPPORTED: c_int = 3;
const DAMAGED: c_int = 5;

/// Sides above this are refused before any pixel memory is taken (zune-jpeg's default limit).
pub const MAX_SIDE: u32 = 1 << 14;

/// Why libjpeg could not decode a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JpegError {
    /// The data ends early.
    Truncated,
    /// The colour space has no RGB conversion in libjpeg (CMYK, YCCK): use another decoder.
    Unsupported,
    /// A partial region met a corrupt scan (a segment cut short inside a complete file):
    /// decode the whole image, whose pixels there are the reference.
    Damaged,
    /// Anything else, in libjpeg's words.
    Invalid(String),
}

/// The version of libjpeg-turbo the shim was built against, e.g. "2.1.5".
pub fn version() -> String {
    // SAFETY: a constant-returning C function without arguments.
    let n = unsafe { hist_jpeg_version() };
    format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000)
}

/// A JPEG whose header has been read; it decodes once, the whole image or a region of it.
pub struct JpegFile<'a> {
    handle: NonNull<Handle>,
    width: u32,
    height: u32,
    /// The shim reads `bytes` until it is freed.
    _bytes: PhantomData<&'a [u8]>,
}

impl Drop for JpegFile<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from hist_jpeg_new and is freed only here.
        unsafe { hist_jpeg_free(self.handle.as_ptr()) }
    }
}

impl<'a> JpegFile<'a> {
    /// Reads the header of `bytes`.
    pub fn open(bytes: &'a [u8]) -> Result<JpegFile<'a>, JpegError> {
        // SAFETY: no arguments; NULL (out of memory) is handled below.
        let handle = NonNull::new(unsafe { hist_jpeg_new() }).ok_or_else(|| JpegError::Invalid("out of memory".to_string()))?;
        let mut file = JpegFile { handle, width: 0, height: 0, _bytes: PhantomData };
        let (mut width, mut height) = (0u32, 0u32);
        // SAFETY: `bytes` outlives `file` (its lifetime 'a), which frees the handle.
        let code = unsafe { hist_jpeg_read_header(handle.as_ptr(), bytes.as_ptr(), bytes.len(), &mut width, &mut height) };
        if code != OK {
            return Err(file.error(code));
        }
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(JpegError::Invalid(format!("the image is {width}x{height} pixels; sides over {MAX_SIDE} are not decoded")));
        }
        (file.width, file.height) = (width, height);
        Ok(file)
    }

    /// The image's width and height.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The pixels of `region` (which must lie inside the image), equal to the same region
    /// of the whole image's decode: an image of the region's rows and of a window of
    /// columns around it, and where the region lies in that image. Decoding stops after
    /// the region's last row.
    pub fn decode(self, region: CropBox) -> Result<(RgbImage, CropBox), JpegError> {
        let handle = self.handle.as_ptr();
        let (mut left, mut width) = (0u32, 0u32);
        // SAFETY: a live handle whose header was read; the shim checks that the region fits.
        let code = unsafe { hist_jpeg_start_region(handle, region.left, region.top, region.width, region.height, &mut left, &mut width) };
        if code != OK {
            return Err(self.error(code));
        }
        if left > region.left || width < region.left - left + region.width {
            return Err(JpegError::Invalid(format!("libjpeg's window {width} px at {left} misses the region {region:?}")));
        }
        let stride = 3 * width as usize;
        let len = stride * region.height as usize;
        let mut pixels: Vec<u8> = Vec::with_capacity(len);
        // SAFETY: `pixels` has room for `len` = region.height rows of `stride` bytes, which is
        // what the shim writes (window_width · 3 bytes per row, `stride` apart) for the rows
        // it was started on; on success it wrote every one of them, so all `len` bytes are
        // initialised before `set_len`. On an error the length stays 0.
        let code = unsafe { hist_jpeg_read_rows(handle, pixels.as_mut_ptr(), stride) };
        if code != OK {
            return Err(self.error(code));
        }
        // SAFETY: as above, the shim succeeded, so all `len` bytes are written.
        unsafe { pixels.set_len(len) };
        let image = RgbImage::from_raw(width, region.height, pixels).ok_or_else(|| JpegError::Invalid("row buffer has the wrong size".to_string()))?;
        Ok((image, CropBox { left: region.left - left, top: 0, width: region.width, height: region.height }))
    }

    /// The whole image.
    pub fn decode_all(self) -> Result<RgbImage, JpegError> {
        let (w, h) = self.dimensions();
        Ok(self.decode(CropBox::full(w, h))?.0)
    }

    fn error(&self, code: c_int) -> JpegError {
        match code {
            TRUNCATED => return JpegError::Truncated,
            UNSUPPORTED => return JpegError::Unsupported,
            DAMAGED => return JpegError::Damaged,
            _ => {}
        }
        // SAFETY: the message is a NUL-terminated buffer inside the live handle (calloc'd, so
        // empty until written); it is copied before the handle can be freed.
        let message = unsafe { CStr::from_ptr(hist_jpeg_message(self.handle.as_ptr())) };
        let message = message.to_string_lossy().trim().to_string();
        JpegError::Invalid(if message.is_empty() { format!("libjpeg failed (code {code})") } else { message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x * y) ^ (x + y)) as u8]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).expect("encode");
        bytes
    }

    #[test]
    fn header_region_and_errors() {
        let bytes = jpeg(137, 121);
        let file = JpegFile::open(&bytes).expect("open");
        assert_eq!(file.dimensions(), (137, 121));
        let whole = file.decode_all().expect("whole");
        let want = CropBox { left: 37, top: 3, width: 17, height: 9 };
        let (part, at) = JpegFile::open(&bytes).expect("open").decode(want).expect("region");
        // The window: the region and a pixel each side, columns 36..55, from the iMCU start 32.
        assert_eq!((part.dimensions(), at), ((23, 9), CropBox { left: 5, top: 0, width: 17, height: 9 }));
        assert!(part.enumerate_pixels().all(|(x, y, p)| p == whole.get_pixel(x + 32, y + 3)));
        let outside = JpegFile::open(&bytes).expect("open").decode(CropBox { left: 130, top: 0, width: 8, height: 1 });
        assert!(matches!(outside, Err(JpegError::Invalid(m)) if m.contains("does not fit")));
        assert_eq!(JpegFile::open(&bytes[..bytes.len() / 2]).expect("header").decode_all().unwrap_err(), JpegError::Truncated);
        assert!(matches!(JpegFile::open(b"\xFF\xD8\xFF\xE0garbage").err(), Some(JpegError::Truncated | JpegError::Invalid(_))));
        assert!(matches!(JpegFile::open(b"not a jpeg").err(), Some(JpegError::Invalid(m)) if m.contains("Not a JPEG")));
        assert!(version().starts_with(|c: char| c.is_ascii_digit()));
    }
}
