//! Small square images for the retrieval grid and the projector sprite, from either an
//! in-memory uint8 image tensor or any image a caller can produce.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

use crate::error::{HistError, Result};

/// Image `index` of a uint8 `[N, 3, H, W]` tensor (the layout of
/// [`crate::data::ImageSet::images`]) as an RGB image.
pub fn image_from_chw_u8(images: &Tensor, index: usize) -> Result<RgbImage> {
    let size = images.size();
    if images.kind() != Kind::Uint8 || size.len() != 4 || size[1] != 3 {
        return Err(HistError::input(
            "images",
            format!(
                "expected a uint8 [N, 3, H, W] tensor, got {:?} {:?}",
                images.kind(),
                size
            ),
        ));
    }
    if index as i64 >= size[0] {
        return Err(HistError::input(
            "images",
            format!("index {index} is outside the {} images", size[0]),
        ));
    }
    let (height, width) = (size[2], size[3]);
    let hwc = images
        .get(index as i64)
        .permute([1, 2, 0])
        .to_device(Device::Cpu)
        .contiguous();
    let pixels = Vec::<u8>::try_from(hwc.view([-1]))?;
    RgbImage::from_raw(width as u32, height as u32, pixels).ok_or_else(|| {
        HistError::input(
            "images",
            format!("image {index} has an impossible size {width}x{height}"),
        )
    })
}

/// `image` scaled to fit a `side` × `side` square (aspect ratio kept), centred on
/// `background`.
pub fn fit_square(image: &RgbImage, side: u32, background: Rgb<u8>) -> RgbImage {
    let mut square = RgbImage::from_pixel(side, side, background);
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 || side == 0 {
        return square;
    }
    let scale = f64::from(side) / f64::from(w.max(h));
    let new_w = ((f64::from(w) * scale).round() as u32).clamp(1, side);
    let new_h = ((f64::from(h) * scale).round() as u32).clamp(1, side);
    let scaled = if (new_w, new_h) == (w, h) {
        image.clone()
    } else {
        imageops::resize(image, new_w, new_h, FilterType::Triangle)
    };
    imageops::replace(
        &mut square,
        &scaled,
        i64::from((side - new_w) / 2),
        i64::from((side - new_h) / 2),
    );
    square
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_image_keeps_channels_and_orientation() {
        // 2 images of 2 rows x 3 columns; pixel (x, y) of image 1 has R = 10y + x.
        let mut data = vec![0u8; 2 * 3 * 2 * 3];
        for y in 0..2 {
            for x in 0..3 {
                let base = 3 * 2 * 3; // image 1
                data[base + y * 3 + x] = (10 * y + x) as u8; // R plane
                data[base + 6 + y * 3 + x] = 100; // G plane
                data[base + 12 + y * 3 + x] = 200; // B plane
            }
        }
        let t = Tensor::from_slice(&data).view([2, 3, 2, 3]);
        let img = image_from_chw_u8(&t, 1).expect("image");
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(2, 1), &Rgb([12, 100, 200]));
        assert!(image_from_chw_u8(&t, 2).is_err());
        assert!(image_from_chw_u8(&t.to_kind(Kind::Float), 0).is_err());
    }

    #[test]
    fn fit_square_centres_and_pads() {
        let wide = RgbImage::from_pixel(8, 4, Rgb([255, 0, 0]));
        let sq = fit_square(&wide, 4, Rgb([0, 0, 0]));
        assert_eq!(sq.dimensions(), (4, 4));
        // Scaled to 4x2, placed at rows 1..3.
        assert_eq!(sq.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(sq.get_pixel(2, 1), &Rgb([255, 0, 0]));
        assert_eq!(sq.get_pixel(3, 3), &Rgb([0, 0, 0]));
    }
}
