//! The folder reader on real JPEG and PNG files written here, and its one-line errors.
use std::path::Path;

use hist::config::FolderConfig;
use hist::data::folder::load_folder;
use image::{Rgb, RgbImage};

/// Writes an image of `w`×`h` whose colour encodes (class, index) as JPEG or PNG.
fn write_image(path: &Path, w: u32, h: u32, class: u8, index: u8) {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([class.wrapping_mul(40), index.wrapping_mul(30), ((x + y) % 256) as u8]));
    img.save(path).expect("write image");
}

/// `classes` folders, each with `per_class` images alternating JPEG and PNG (plus a
/// non-image file and a hidden file that must be ignored).
fn make_tree(root: &Path, classes: usize, per_class: usize) {
    for c in 0..classes {
        let dir = root.join(format!("class_{c:02}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..per_class {
            let ext = if i % 2 == 0 { "jpg" } else { "PNG" };
            write_image(&dir.join(format!("img_{i}.{ext}")), 40 + 8 * i as u32, 30, c as u8, i as u8);
        }
        std::fs::write(dir.join("notes.txt"), "not an image").expect("write");
        std::fs::write(dir.join(".hidden.jpg"), "junk").expect("write");
    }
}

fn cfg(fraction: f64, seed: u64) -> FolderConfig {
    FolderConfig { train_fraction: fraction, split_seed: seed }
}

#[test]
fn reads_counts_labels_and_a_seeded_disjoint_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(tmp.path(), 6, 3);
    let s = load_folder(tmp.path(), &cfg(0.5, 1), 24).expect("load");
    assert_eq!(s.train.num_classes(), 3);
    assert_eq!(s.test.num_classes(), 3);
    assert_eq!(s.train.len(), 9);
    assert_eq!(s.test.len(), 9);
    assert_eq!(s.train.images.size(), [9, 3, 24, 24]);
    assert_eq!(s.train.labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    for name in &s.test.class_names {
        assert!(!s.train.class_names.contains(name), "{name} in both splits");
    }
    let again = load_folder(tmp.path(), &cfg(0.5, 1), 24).expect("load");
    assert_eq!(s.train.class_names, again.train.class_names, "split is deterministic");
    assert!(s.train.images.equal(&again.train.images));
    let splits: std::collections::HashSet<Vec<String>> = (0..8)
        .map(|seed| load_folder(tmp.path(), &cfg(0.5, seed), 24).expect("load").train.class_names)
        .collect();
    assert!(splits.len() > 1, "split_seed changes the split");
    // The red channel encodes the class: class_03 → 120 everywhere (PNG is lossless).
    let idx = s.train.class_names.iter().position(|n| n == "class_03");
    if let Some(label) = idx {
        let first = s.train.labels.iter().position(|&l| l == label as i64).expect("image") as i64;
        let red = s.train.images.get(first).get(0).to_kind(tch::Kind::Float).mean(tch::Kind::Float).double_value(&[]);
        assert!((red - 120.0).abs() < 6.0, "red {red}");
    }
}

fn assert_error(root: &Path, fraction: f64, needles: &[&str]) {
    let err = load_folder(root, &cfg(fraction, 0), 16).expect_err("must fail").to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
}

#[test]
fn malformed_trees_name_the_offending_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    assert_error(&missing, 0.5, &[&missing.display().to_string(), "does not exist"]);

    let file = tmp.path().join("file");
    std::fs::write(&file, "x").expect("write");
    assert_error(&file, 0.5, &["is not a directory"]);

    let empty_root = tmp.path().join("empty");
    std::fs::create_dir_all(&empty_root).expect("mkdir");
    assert_error(&empty_root, 0.5, &["has no class sub-folders"]);

    let with_empty_class = tmp.path().join("with_empty_class");
    make_tree(&with_empty_class, 4, 2);
    std::fs::create_dir_all(with_empty_class.join("zz_empty")).expect("mkdir");
    assert_error(&with_empty_class, 0.5, &["zz_empty", "no .jpg/.jpeg/.png images"]);

    let corrupt = tmp.path().join("corrupt");
    make_tree(&corrupt, 4, 2);
    let bad = corrupt.join("class_01").join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not a jpeg").expect("write");
    assert_error(&corrupt, 0.5, &[&bad.display().to_string(), "cannot decode image"]);

    let few = tmp.path().join("few");
    make_tree(&few, 3, 2);
    assert_error(&few, 0.5, &["3 classes", "each side needs >= 2 classes"]);
}
