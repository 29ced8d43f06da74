//! Reader for a user's labelled folders: one sub-folder of JPEG/PNG images per class.
use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::{ImageSet, Splits};
use crate::config::FolderConfig;
use crate::error::{HistError, Result};

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

fn data_error(path: &Path, message: impl Into<String>) -> HistError {
    HistError::Data { path: path.to_path_buf(), message: message.into() }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| data_error(dir, format!("cannot list: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| data_error(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        if !is_hidden(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The class folders of `root` (sorted by name) and each one's image files (sorted).
fn scan(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    if !root.exists() {
        return Err(data_error(root, "does not exist; set data.root to a folder with one sub-folder per class"));
    }
    if !root.is_dir() {
        return Err(data_error(root, "is not a directory; data.root must be a folder with one sub-folder per class"));
    }
    let mut classes = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let images: Vec<PathBuf> = sorted_entries(&dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
        if images.is_empty() {
            return Err(data_error(&dir, "class folder has no .jpg/.jpeg/.png images; add images or remove the folder"));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        classes.push((name, images));
    }
    if classes.is_empty() {
        return Err(data_error(root, "has no class sub-folders; put each class's images in a sub-folder of its own"));
    }
    Ok(classes)
}

/// Decodes `path`, resizes its shorter side to `size` and centre-crops size × size (RGB).
fn load_image(path: &Path, size: u32) -> Result<Vec<u8>> {
    let img = image::open(path).map_err(|e| {
        let reason = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        data_error(path, format!("cannot decode image: {reason}; fix or remove the file"))
    })?;
    let (w, h) = (img.width().max(1), img.height().max(1));
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(size), ((h as f64 * scale).round() as u32).max(size));
    let resized = img.resize_exact(nw, nh, FilterType::Triangle).to_rgb8();
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let cropped = image::imageops::crop_imm(&resized, x0, y0, size, size).to_image();
    let s = size as usize;
    let mut chw = vec![0u8; 3 * s * s];
    for (x, y, p) in cropped.enumerate_pixels() {
        for c in 0..3 {
            chw[c * s * s + y as usize * s + x as usize] = p[c];
        }
    }
    Ok(chw)
}

fn build_set(classes: &[&(String, Vec<PathBuf>)], size: usize) -> Result<ImageSet> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for (label, (_, images)) in classes.iter().enumerate() {
        for path in images {
            data.extend(load_image(path, size as u32)?);
            labels.push(label as i64);
        }
    }
    let images = Tensor::from_slice(&data).view([labels.len() as i64, 3, size as i64, size as i64]);
    Ok(ImageSet { images, labels, class_names: classes.iter().map(|(n, _)| n.clone()).collect() })
}

/// Loads `root` and splits its classes (seeded by `cfg.split_seed`) into disjoint train
/// and test classes by `cfg.train_fraction`; each side needs at least 2 classes.
pub fn load_folder(root: &Path, cfg: &FolderConfig, image_size: usize) -> Result<Splits> {
    let classes = scan(root)?;
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.split_seed));
    let n_train = ((classes.len() as f64) * cfg.train_fraction).round() as usize;
    if n_train < 2 || classes.len() - n_train < 2 {
        return Err(data_error(
            root,
            format!(
                "{} classes split {n_train} train / {} test by data.folder.train_fraction {}; each side needs >= 2 classes",
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
    Ok(Splits { train: build_set(&pick(&train_idx), image_size)?, test: build_set(&pick(&test_idx), image_size)? })
}
