//! Readers for the standard deep-metric-learning benchmarks: CUB-200-2011, CARS-196,
//! Stanford Online Products and In-Shop Clothes, with their standard class splits.
//!
//! A reader only *lists* a dataset — image paths, labels and split membership — after
//! checking its list files line by line and that every listed image exists; decoding is
//! separate ([`decode_listing`]), so a streaming image pipeline can take the listing as is.
//! Every failure is one line naming the file (and line) at fault and the fix.
//! docs/datasets.md describes each layout and its sources.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::folder::decode_set;
use super::{ImageSet, Splits};
use crate::error::Result;

mod cars;
mod cub;
mod inshop;
mod lines;
mod sop;

pub use cars::{list_cars, CARS_CLASSES, CARS_LIST, CARS_TRAIN_CLASSES};
pub use cub::{list_cub, CUB_CLASSES, CUB_IMAGES, CUB_IMAGE_DIR, CUB_LABELS, CUB_TRAIN_CLASSES};
pub use inshop::{list_inshop, INSHOP_LIST};
pub use sop::{list_sop, SOP_CLASSES, SOP_TEST_LIST, SOP_TRAIN_CLASSES, SOP_TRAIN_LIST};

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file (data.root joined with the listed relative path).
    pub path: PathBuf,
    /// Class label, 0-based and dense within the split.
    pub label: i64,
}

/// Which test images are queries and which are gallery (In-Shop's protocol); both are
/// indexed like [`DatasetListing::test`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryGallery {
    /// `query[i]`: test image i is a query.
    pub query: Vec<bool>,
    /// `gallery[i]`: test image i is in the gallery.
    pub gallery: Vec<bool>,
}

/// A benchmark's images and standard split, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetListing {
    /// Training images, in list-file order.
    pub train: Vec<Sample>,
    /// Names of the training classes, indexed by label.
    pub train_class_names: Vec<String>,
    /// Test images (unseen classes), in list-file order.
    pub test: Vec<Sample>,
    /// Names of the test classes, indexed by label.
    pub test_class_names: Vec<String>,
    /// For In-Shop, the query/gallery masks over `test`; `None` where every test image is
    /// both query and gallery (CUB, CARS, SOP).
    pub query_gallery: Option<QueryGallery>,
}

/// The benchmarks with a reader here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    /// CUB-200-2011: classes 1–100 train, 101–200 test.
    Cub,
    /// CARS-196 (from the text listing `cars_annos.txt`): classes 1–98 train, 99–196 test.
    Cars,
    /// Stanford Online Products: `Ebay_train.txt` train, `Ebay_test.txt` test.
    Sop,
    /// In-Shop Clothes: train rows train; query ∪ gallery rows test.
    InShop,
}

impl Benchmark {
    /// The name used in configs (`data.source`).
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Cub => "cub",
            Benchmark::Cars => "cars",
            Benchmark::Sop => "sop",
            Benchmark::InShop => "inshop",
        }
    }
}

/// Lists `kind` under `root` (see each reader for the layout it expects).
pub fn list_benchmark(kind: Benchmark, root: &Path) -> Result<DatasetListing> {
    match kind {
        Benchmark::Cub => list_cub(root),
        Benchmark::Cars => list_cars(root),
        Benchmark::Sop => list_sop(root),
        Benchmark::InShop => list_inshop(root),
    }
}

fn decode_split(samples: &[Sample], class_names: &[String], image_size: usize) -> Result<ImageSet> {
    let paths: Vec<&Path> = samples.iter().map(|s| s.path.as_path()).collect();
    let labels = samples.iter().map(|s| s.label).collect();
    decode_set(&paths, labels, class_names.to_vec(), image_size)
}

/// Decodes every image of `listing` into memory as the data layer's [`Splits`]: RGB,
/// shorter side resized to `image_size`, centre-cropped square (as the folder reader).
/// In-Shop's query/gallery masks are not carried: its test split is query ∪ gallery.
pub fn decode_listing(listing: &DatasetListing, image_size: usize) -> Result<Splits> {
    Ok(Splits {
        train: decode_split(&listing.train, &listing.train_class_names, image_size)?,
        test: decode_split(&listing.test, &listing.test_class_names, image_size)?,
    })
}

/// [`list_benchmark`] then [`decode_listing`].
pub fn load_benchmark(kind: Benchmark, root: &Path, image_size: usize) -> Result<Splits> {
    decode_listing(&list_benchmark(kind, root)?, image_size)
}

/// Dense 0-based labels for one split: classes ordered by `key`; `rows` keep their order.
/// A class is named by `name(key, path of its first image)`.
fn densify<K: Ord + Clone>(rows: Vec<(PathBuf, K)>, name: impl Fn(&K, &Path) -> String) -> (Vec<Sample>, Vec<String>) {
    let mut classes: BTreeMap<K, usize> = BTreeMap::new();
    for (i, (_, key)) in rows.iter().enumerate() {
        classes.entry(key.clone()).or_insert(i);
    }
    let names = classes.iter().map(|(key, &first)| name(key, &rows[first].0)).collect();
    let labels: BTreeMap<K, i64> = classes.into_keys().enumerate().map(|(label, key)| (key, label as i64)).collect();
    let samples = rows.into_iter().map(|(path, key)| Sample { label: labels[&key], path }).collect();
    (samples, names)
}

/// Fails unless the split named `split` has at least 2 classes; `file` is the list file
/// blamed and `rule` the standard split's rule.
fn check_split(file: &lines::ListFile, split: &str, samples: &[Sample], classes: usize, rule: &str) -> Result<()> {
    if classes >= 2 {
        return Ok(());
    }
    Err(file.error(format!(
        "the {split} split has {} images of {classes} classes, needs >= 2 classes ({rule}); restore the file from the dataset's archive",
        samples.len()
    )))
}
