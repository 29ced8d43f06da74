//! Crop + resize with Pillow's antialiased bilinear filter, as torchvision does on PIL
//! images: the crop is cut out first, so pixels outside it never enter the filter, and
//! when shrinking the filter widens with the scale. `fast_image_resize` computes the same
//! coefficients as Pillow; it rounds them to 15-bit integers where Pillow keeps 22 bits,
//! so an output pixel may differ from Pillow's by one level (tests/data_pipeline.rs).
use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::geometry::CropBox;

/// A resizer with its scratch buffers; one per worker thread.
pub struct Resampler {
    resizer: Resizer,
    options: ResizeOptions,
    /// The row pass's output, reused from image to image.
    rows_done: Vec<u8>,
}

impl Default for Resampler {
    fn default() -> Self {
        Resampler::new()
    }
}

impl Resampler {
    /// A resampler using the best SIMD extensions of this CPU.
    pub fn new() -> Resampler {
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resampler { resizer: Resizer::new(), options, rows_done: Vec::new() }
    }

    /// `region` of `image` resized to `width` × `height` (a plain copy when the sizes match).
    pub fn crop_resize(&mut self, image: &RgbImage, region: CropBox, width: u32, height: u32) -> Result<RgbImage, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let source = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3).map_err(|e| text(&e))?;
        let cropped = CroppedImage::new(&source, region.left, region.top, region.width, region.height).map_err(|e| text(&e))?;
        let mut out = Image::new(width, height, PixelType::U8x3);
        if region.width != width && region.height != height {
            // Pillow resamples rows first, rounding to 8 bits in between; fast_image_resize
            // would do columns first. Two one-axis passes keep Pillow's order (and rounding).
            self.rows_done.resize(3 * width as usize * region.height as usize, 0);
            let mut rows_done = Image::from_slice_u8(width, region.height, &mut self.rows_done, PixelType::U8x3).map_err(|e| text(&e))?;
            self.resizer.resize(&cropped, &mut rows_done, &self.options).map_err(|e| text(&e))?;
            self.resizer.resize(&rows_done, &mut out, &self.options).map_err(|e| text(&e))?;
        } else {
            self.resizer.resize(&cropped, &mut out, &self.options).map_err(|e| text(&e))?;
        }
        RgbImage::from_raw(width, height, out.into_vec()).ok_or_else(|| "resized buffer has the wrong size".to_string())
    }
}
