//! What the pipeline does to one image: the training transform (RandomResizedCrop +
//! optional horizontal flip + normalisation) or the test transform (Resize(shorter side)
//! + CenterCrop + normalisation), with every size and the input convention from the config.
use std::path::Path;

use image::RgbImage;

use super::decode::{decode_file, decode_file_region};
use super::geometry::{center_crop, random_resized_crop, shorter_side_to, CropBox};
use super::normalize::Normalizer;
use super::resample::Resampler;
use crate::config::{Backbone, BadImagePolicy, DataConfig, InputConvention};
use crate::data::streams::{self, stream_rng};
use crate::error::{HistError, Result};

/// A transform's geometric result: the resampled image, the region of it that is the
/// output, and whether to mirror it.
pub type Resampled = (RgbImage, CropBox, bool);

/// The transform of one image of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOp {
    /// Training: the crop comes from the stream keyed (seed, CROP, epoch, step, position),
    /// where `position` is the image's place in the *global* batch.
    Train {
        /// Epoch of the step.
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// Position in the global batch.
        position: usize,
        /// Mirror left-right (decided by the sampler's flip stream).
        flip: bool,
    },
    /// Evaluation: deterministic resize and centre crop.
    Test,
}

/// Sizes, convention and policies of the image pipeline (resolved from `data.*`).
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Side of the square training crop.
    pub train_crop: u32,
    /// Area fraction range of RandomResizedCrop.
    pub crop_scale: [f64; 2],
    /// Aspect ratio (w/h) range of RandomResizedCrop.
    pub crop_ratio: [f64; 2],
    /// Shorter side after the test resize.
    pub test_resize: u32,
    /// Side of the square test crop.
    pub test_crop: u32,
    /// Byte-to-float conversion of the resolved input convention.
    pub normalizer: Normalizer,
    /// The resolved input convention (never `Auto`).
    pub convention: InputConvention,
    /// Seed of the crop streams (the run's seed).
    pub seed: u64,
    /// What a bad image does to its batch.
    pub on_bad_image: BadImagePolicy,
    /// Decode threads of a loader.
    pub threads: usize,
    /// Batches a loader keeps in flight.
    pub prefetch: usize,
}

/// `auto` follows the backbone: BN-Inception's own convention for it, ImageNet's otherwise.
pub fn resolve_convention(convention: InputConvention, backbone: Backbone) -> InputConvention {
    match (convention, backbone) {
        (InputConvention::Auto, Backbone::BnInception) => InputConvention::BnInception,
        (InputConvention::Auto, _) => InputConvention::Imagenet,
        (explicit, _) => explicit,
    }
}

/// Decode threads for `data.loader_threads: 0`: this machine's cores shared among the
/// ranks on it (torchrun's LOCAL_WORLD_SIZE, which hist-launch and srun set), at least 1.
pub fn auto_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local_ranks = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    (cores / local_ranks).max(1)
}

impl PipelineSpec {
    /// The spec of `data`, for a model with `backbone`, seeded by the run's `seed`.
    pub fn from_config(data: &DataConfig, backbone: Backbone, seed: u64) -> PipelineSpec {
        let convention = resolve_convention(data.input_convention, backbone);
        PipelineSpec {
            train_crop: data.train_crop as u32,
            crop_scale: data.crop_scale,
            crop_ratio: data.crop_ratio,
            test_resize: data.test_resize as u32,
            test_crop: data.test_crop as u32,
            normalizer: Normalizer::new(convention),
            convention,
            seed,
            on_bad_image: data.on_bad_image,
            threads: if data.loader_threads == 0 { auto_threads() } else { data.loader_threads },
            prefetch: data.prefetch_batches.max(1),
        }
    }

    /// Side of the square output of `op`.
    pub fn output_side(&self, op: &ImageOp) -> u32 {
        match op {
            ImageOp::Train { .. } => self.train_crop,
            ImageOp::Test => self.test_crop,
        }
    }

    /// The training crop of a `width` × `height` image at `op`'s place in the plan.
    pub fn train_crop_box(&self, width: u32, height: u32, epoch: usize, step: usize, position: usize) -> CropBox {
        let mut rng = stream_rng(&[self.seed, streams::CROP, epoch as u64, step as u64, position as u64]);
        random_resized_crop(width, height, self.crop_scale, self.crop_ratio, &mut rng)
    }

    /// Applies `op` to `image`, writing [3, S, S] floats (S = [`Self::output_side`]) to `out`.
    pub fn apply(&self, image: &RgbImage, op: &ImageOp, resampler: &mut Resampler, out: &mut [f32]) -> std::result::Result<(), String> {
        let (resized, region, flip) = self.resample(image, op, resampler)?;
        self.normalizer.write_chw(&resized, region, flip, out);
        Ok(())
    }

    /// The geometric part of `op`: the resampled image, the region of it that is the
    /// output, and whether to mirror it.
    pub fn resample(&self, image: &RgbImage, op: &ImageOp, resampler: &mut Resampler) -> std::result::Result<Resampled, String> {
        let (w, h) = image.dimensions();
        match *op {
            ImageOp::Train { epoch, step, position, flip } => {
                let region = self.train_crop_box(w, h, epoch, step, position);
                self.train_resample(image, region, flip, resampler)
            }
            ImageOp::Test => {
                let (rw, rh) = shorter_side_to(w, h, self.test_resize);
                let resized = resampler.crop_resize(image, CropBox::full(w, h), rw, rh)?;
                Ok((resized, center_crop(rw, rh, self.test_crop), false))
            }
        }
    }

    /// [`Self::resample`] of the image in `path`. The train transform picks its crop from
    /// the header's size and decodes only that region where the decoder can (decode.rs):
    /// the same pixels as decoding the whole image and cropping, in less time.
    pub fn decode_resample(&self, path: &Path, op: &ImageOp, resampler: &mut Resampler) -> Result<Resampled> {
        let resized = match *op {
            ImageOp::Train { epoch, step, position, flip } => {
                let (image, region) = decode_file_region(path, |w, h| self.train_crop_box(w, h, epoch, step, position))?;
                self.train_resample(&image, region, flip, resampler)
            }
            ImageOp::Test => self.resample(&decode_file(path)?, op, resampler),
        };
        resized.map_err(|m| HistError::Data { path: path.to_path_buf(), message: format!("cannot resize image: {m}") })
    }

    /// `region` of `image` resized to the training crop.
    pub fn train_resample(&self, image: &RgbImage, region: CropBox, flip: bool, resampler: &mut Resampler) -> std::result::Result<Resampled, String> {
        let side = self.train_crop;
        Ok((resampler.crop_resize(image, region, side, side)?, CropBox::full(side, side), flip))
    }
}
