//! A dataset's splits as the trainer and evaluation see them: decoded in memory (the
//! synthetic data) or image files streamed through the pipeline (folders and benchmarks).
use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use super::decode::decode_file;
use crate::data::datasets::{DatasetListing, QueryGallery, Sample};
use crate::data::{ImageSet, Splits};
use crate::error::{HistError, Result};

/// Image files of one split with their labels; decoded on demand by the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    /// Image file of each sample.
    pub paths: Vec<PathBuf>,
    /// Class label of each sample, 0-based and dense within the split.
    pub labels: Vec<i64>,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

impl FileSet {
    /// The files and labels of `samples`.
    pub fn new(samples: &[Sample], class_names: &[String]) -> FileSet {
        FileSet {
            paths: samples.iter().map(|s| s.path.clone()).collect(),
            labels: samples.iter().map(|s| s.label).collect(),
            class_names: class_names.to_vec(),
        }
    }
}

/// The images of one split.
#[derive(Debug)]
pub enum SplitImages {
    /// Decoded into memory (uint8, fixed size).
    Memory(ImageSet),
    /// Files decoded and transformed batch by batch.
    Files(Arc<FileSet>),
}

impl SplitImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels().len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels().is_empty()
    }

    /// Class label of every image.
    pub fn labels(&self) -> &[i64] {
        match self {
            SplitImages::Memory(set) => &set.labels,
            SplitImages::Files(files) => &files.labels,
        }
    }

    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        match self {
            SplitImages::Memory(set) => &set.class_names,
            SplitImages::Files(files) => &files.class_names,
        }
    }

    /// Number of classes (labels are 0..num_classes).
    pub fn num_classes(&self) -> usize {
        self.class_names().len()
    }

    /// Labels of the images at `indices`.
    pub fn labels_of(&self, indices: &[usize]) -> Vec<i64> {
        let labels = self.labels();
        indices.iter().map(|&i| labels[i]).collect()
    }

    /// The file of image `index`, for files.
    pub fn path(&self, index: usize) -> Option<&std::path::Path> {
        match self {
            SplitImages::Memory(_) => None,
            SplitImages::Files(files) => files.paths.get(index).map(PathBuf::as_path),
        }
    }

    /// Image `index` as 8-bit RGB before any transform (thumbnails, inspection).
    pub fn rgb_image(&self, index: usize) -> Result<RgbImage> {
        if index >= self.len() {
            return Err(HistError::input("image index", format!("{index} is outside the {} images of the split", self.len())));
        }
        match self {
            SplitImages::Memory(set) => {
                let chw = set.images.get(index as i64);
                let (h, w) = (chw.size()[1], chw.size()[2]);
                let hwc = chw.permute([1, 2, 0]).contiguous().view([-1]);
                let pixels = Vec::<u8>::try_from(hwc)?;
                RgbImage::from_raw(w as u32, h as u32, pixels)
                    .ok_or_else(|| HistError::input("images", format!("image {index} has an impossible size {w}x{h}")))
            }
            SplitImages::Files(files) => decode_file(&files.paths[index]),
        }
    }
}

impl SplitImages {
    /// Why image `index` could not be used, naming its file (it is read again to say).
    pub fn why_unreadable(&self, index: usize) -> String {
        match self.rgb_image(index) {
            Err(e) => e.to_string(),
            Ok(_) => {
                let name = self.path(index).map_or_else(|| format!("image {index}"), |p| p.display().to_string());
                format!("{name}: could not be read when its batch was loaded, but can be now (was it being written?)")
            }
        }
    }
}

/// A dataset's train and test splits and, for In-Shop, its query/gallery protocol.
#[derive(Debug)]
pub struct Dataset {
    /// Training split.
    pub train: SplitImages,
    /// Test split (classes unseen in training).
    pub test: SplitImages,
    /// In-Shop's query/gallery masks over `test`; `None` when every test image is both.
    pub query_gallery: Option<QueryGallery>,
}

impl Dataset {
    /// Splits already decoded into memory.
    pub fn in_memory(splits: Splits) -> Dataset {
        Dataset { train: SplitImages::Memory(splits.train), test: SplitImages::Memory(splits.test), query_gallery: None }
    }

    /// A listing whose images the pipeline will stream.
    pub fn streamed(listing: DatasetListing) -> Dataset {
        Dataset {
            train: SplitImages::Files(Arc::new(FileSet::new(&listing.train, &listing.train_class_names))),
            test: SplitImages::Files(Arc::new(FileSet::new(&listing.test, &listing.test_class_names))),
            query_gallery: listing.query_gallery,
        }
    }

    /// Whether images come from files through the pipeline.
    pub fn is_streamed(&self) -> bool {
        matches!(self.train, SplitImages::Files(_))
    }
}
