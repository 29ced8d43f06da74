//! Reader for a user's labelled folders: one sub-folder of JPEG/PNG images per class.
//!
//! Classes are the non-hidden sub-folders of the root, sorted by name; a class's images
//! are its non-hidden `*.jpg`, `*.jpeg` and `*.png` files (any letter case), sorted by
//! name; anything else is ignored. Training streams the listed files through the image
//! pipeline (`data::pipeline`); [`load_folder`] instead decodes every image into memory as
//! RGB (alpha dropped), shorter side resized to `image_size` (triangle filter) and
//! centre-cropped to a square.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::ImageReader;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::datasets::{decode_listing, DatasetListing, Sample};
use super::{ImageSet, Splits};
use crate::config::FolderConfig;
use crate::error::{HistError, Result};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Most threads used for decoding; beyond this, reading files is the bottleneck anyway.
const MAX_DECODE_THREADS: usize = 8;

/// One class folder: its name and its image files.
type ClassFiles = (String, Vec<PathBuf>);

pub(crate) fn data_error(path: &Path, message: impl Into<String>) -> HistError {
    HistError::Data { path: path.to_path_buf(), message: message.into() }
}

/// An OS error as one line, without the "(os error N)" suffix that adds nothing here.
pub(crate) fn os_reason(e: &io::Error) -> String {
    let text = e.to_string();
    text.split(" (os error").next().unwrap_or(&text).to_string()
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The non-hidden entries of `dir`, sorted by path (so by name: they share the parent).
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let cannot = |e: io::Error| data_error(dir, format!("cannot list folder: {}; check its permissions", os_reason(&e)));
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        if !is_hidden(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The class folders of `root` (sorted by name) and each one's image files (sorted).
fn scan(root: &Path) -> Result<Vec<ClassFiles>> {
    match fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(data_error(root, "does not exist; set data.root to a folder with one sub-folder per class"));
        }
        Err(e) => return Err(data_error(root, format!("cannot be read: {}; check its permissions", os_reason(&e)))),
        Ok(m) if !m.is_dir() => {
            return Err(data_error(root, "is not a directory; data.root must be a folder with one sub-folder per class"));
        }
        Ok(_) => {}
    }
    let entries = sorted_entries(root)?;
    let mut classes = Vec::new();
    for dir in entries.iter().filter(|p| p.is_dir()) {
        let images: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
        if images.is_empty() {
            return Err(data_error(dir, "class folder has no .jpg/.jpeg/.png images; add images or remove the folder"));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        classes.push((name, images));
    }
    if classes.is_empty() {
        // Pointing data.root at a single class folder is the likely mistake; say so.
        let loose = entries.iter().filter(|p| p.is_file() && is_image(p)).count();
        let hint = if loose > 0 { format!(" ({loose} images lie directly in it)") } else { String::new() };
        return Err(data_error(
            root,
            format!("has no class sub-folders{hint}; put each class's images in a sub-folder of its own"),
        ));
    }
    Ok(classes)
}

/// Decodes `path` (format sniffed from the bytes, so a PNG named .jpg still loads),
/// resizes its shorter side to `size`, centre-crops size × size and returns RGB as CHW.
fn load_image(path: &Path, size: u32) -> Result<Vec<u8>> {
    let undecodable = |reason: String| {
        let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
        data_error(path, format!("cannot decode image: {reason}; fix or remove the file"))
    };
    let reader = ImageReader::open(path).map_err(|e| data_error(path, format!("cannot read: {}", os_reason(&e))))?;
    let reader = reader.with_guessed_format().map_err(|e| undecodable(os_reason(&e)))?;
    let img = reader.decode().map_err(|e| undecodable(e.to_string()))?;
    // Convert first: resizing 8-bit RGB is cheaper than 16-bit or RGBA.
    let mut img = image::DynamicImage::ImageRgb8(img.to_rgb8()).resize_to_fill(size, size, FilterType::Triangle);
    if (img.width(), img.height()) != (size, size) {
        // resize_to_fill rounds; never let an off-by-one reach the tensor layout.
        img = img.resize_exact(size, size, FilterType::Triangle);
    }
    let rgb = img.to_rgb8();
    let s = size as usize;
    let mut chw = vec![0u8; 3 * s * s];
    for (x, y, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            chw[c * s * s + y as usize * s + x as usize] = p[c];
        }
    }
    Ok(chw)
}

/// Decodes `paths` in order into one CHW buffer, on a few threads over contiguous chunks.
/// The error reported is that of the first bad file in `paths` order.
fn load_all(paths: &[&Path], size: usize) -> Result<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DECODE_THREADS);
    let chunk = paths.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut buf = Vec::with_capacity(part.len() * 3 * size * size);
                    for path in part {
                        buf.extend(load_image(path, size as u32)?);
                    }
                    Ok(buf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut data = Vec::with_capacity(paths.len() * 3 * size * size);
    for part in parts {
        data.extend(part?);
    }
    Ok(data)
}

/// Decodes `paths` (see [`load_image`]) into an [`ImageSet`] with the given labels and
/// class names; `labels[i]` belongs to `paths[i]`. Shared with the benchmark readers.
pub(crate) fn decode_set(paths: &[&Path], labels: Vec<i64>, class_names: Vec<String>, size: usize) -> Result<ImageSet> {
    debug_assert_eq!(paths.len(), labels.len());
    let data = load_all(paths, size)?;
    let images = Tensor::from_slice(&data).view([labels.len() as i64, 3, size as i64, size as i64]);
    Ok(ImageSet { images, labels, class_names })
}

/// The samples of `classes` (labels in the given order) and their names.
fn samples_of(classes: &[&ClassFiles]) -> (Vec<Sample>, Vec<String>) {
    let mut samples = Vec::new();
    for (label, (_, images)) in classes.iter().enumerate() {
        samples.extend(images.iter().map(|path| Sample { path: path.clone(), label: label as i64 }));
    }
    (samples, classes.iter().map(|(n, _)| n.clone()).collect())
}

/// Lists `root` and splits its classes into disjoint train and test classes: the sorted
/// classes are shuffled with ChaCha8 seeded by `cfg.split_seed`, the first
/// round(classes × `cfg.train_fraction`) train and the rest test; each side needs at least
/// 2 classes. Within a split, labels follow folder-name order. Nothing is decoded.
pub fn list_folder(root: &Path, cfg: &FolderConfig) -> Result<DatasetListing> {
    let classes = scan(root)?;
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.split_seed));
    let wanted = classes.len() as f64 * cfg.train_fraction;
    // NaN or a negative fraction become 0 train classes and fail the check below.
    let n_train = if wanted.is_finite() && wanted > 0.0 { (wanted.round() as usize).min(classes.len()) } else { 0 };
    if n_train < 2 || classes.len() - n_train < 2 {
        return Err(data_error(
            root,
            format!(
                "{} classes split {n_train} train / {} test by data.folder.train_fraction {}; each side needs >= 2 classes (add class folders or change the fraction)",
                classes.len(),
                classes.len() - n_train,
                cfg.train_fraction
            ),
        ));
    }
    let (mut train_idx, mut test_idx) = (order[..n_train].to_vec(), order[n_train..].to_vec());
    // Labels follow folder-name order within each split, so they are readable.
    train_idx.sort_unstable();
    test_idx.sort_unstable();
    let pick = |idx: &[usize]| idx.iter().map(|&i| &classes[i]).collect::<Vec<_>>();
    let (train, train_class_names) = samples_of(&pick(&train_idx));
    let (test, test_class_names) = samples_of(&pick(&test_idx));
    Ok(DatasetListing { train, train_class_names, test, test_class_names, query_gallery: None })
}

/// [`list_folder`], then every image decoded into memory: RGB, shorter side resized to
/// `image_size` (triangle filter), centre-cropped square.
pub fn load_folder(root: &Path, cfg: &FolderConfig, image_size: usize) -> Result<Splits> {
    decode_listing(&list_folder(root, cfg)?, image_size)
}
