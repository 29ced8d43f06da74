//! The folder reader on real JPEG and PNG files written here, and its one-line errors.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hist::config::FolderConfig;
use hist::data::folder::load_folder;
use hist::data::Splits;
use image::{Rgb, RgbImage};
use tch::Kind;

/// Writes an image of `w`×`h` whose red channel encodes the class and green the index;
/// the format follows the extension.
fn write_image(path: &Path, w: u32, h: u32, class: u8, index: u8) {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([class.wrapping_mul(40), index.wrapping_mul(30), ((x + y) % 256) as u8]));
    img.save(path).expect("write image");
}

/// `classes` folders, each with `per_class` images alternating JPEG and PNG in mixed-case
/// extensions, plus files that must be ignored: a text file, a hidden "image", a nested
/// folder, a hidden class folder and a stray file at the root.
fn make_tree(root: &Path, classes: usize, per_class: usize) {
    const EXTS: [&str; 4] = ["jpg", "PNG", "JPEG", "png"];
    for c in 0..classes {
        let dir = root.join(format!("class_{c:02}"));
        std::fs::create_dir_all(dir.join("nested")).expect("mkdir");
        for i in 0..per_class {
            let path = dir.join(format!("img_{i}.{}", EXTS[i % EXTS.len()]));
            write_image(&path, 40 + 8 * i as u32, 30, c as u8, i as u8);
        }
        write_image(&dir.join("nested").join("deep.png"), 8, 8, 0, 0);
        std::fs::write(dir.join("notes.txt"), "not an image").expect("write");
        std::fs::write(dir.join(".hidden.jpg"), "junk").expect("write");
    }
    std::fs::create_dir_all(root.join(".cache")).expect("mkdir");
    std::fs::write(root.join("README.png"), "not a class").expect("write");
}

fn cfg(fraction: f64, seed: u64) -> FolderConfig {
    FolderConfig { train_fraction: fraction, split_seed: seed }
}

fn load(root: &Path, fraction: f64, seed: u64) -> Splits {
    load_folder(root, &cfg(fraction, seed), 24).expect("load")
}

/// Mean of channel `ch` of image `i` of `images`.
fn channel_mean(images: &tch::Tensor, i: i64, ch: i64) -> f64 {
    images.get(i).get(ch).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

#[test]
fn reads_counts_labels_and_a_seeded_disjoint_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(tmp.path(), 6, 3);
    let s = load(tmp.path(), 0.5, 1);
    assert_eq!((s.train.num_classes(), s.test.num_classes()), (3, 3));
    assert_eq!((s.train.len(), s.test.len()), (9, 9));
    assert_eq!(s.train.images.size(), [9, 3, 24, 24]);
    assert_eq!(s.train.images.kind(), Kind::Uint8);
    assert_eq!(s.train.labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    let mut names: Vec<String> = s.train.class_names.iter().chain(&s.test.class_names).cloned().collect();
    names.sort();
    assert_eq!(names, (0..6).map(|c| format!("class_{c:02}")).collect::<Vec<_>>(), "every class once");
    for set in [&s.train, &s.test] {
        assert!(set.class_names.windows(2).all(|w| w[0] < w[1]), "labels follow name order");
        // The red channel encodes the class (flat, so it survives JPEG).
        for (i, &label) in set.labels.iter().enumerate() {
            let class: f64 = set.class_names[label as usize][6..].parse().expect("class number");
            let red = channel_mean(&set.images, i as i64, 0);
            assert!((red - 40.0 * class).abs() < 6.0, "image {i} of {}: red {red}", set.class_names[label as usize]);
        }
    }
}

#[test]
fn the_split_is_deterministic_and_follows_the_seed_and_fraction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(tmp.path(), 10, 2);
    let a = load(tmp.path(), 0.7, 3);
    let b = load(tmp.path(), 0.7, 3);
    assert_eq!(a.train.class_names, b.train.class_names);
    assert!(a.train.images.equal(&b.train.images) && a.test.images.equal(&b.test.images));
    assert_eq!((a.train.num_classes(), a.test.num_classes()), (7, 3));
    let splits: HashSet<Vec<String>> = (0..8).map(|seed| load(tmp.path(), 0.5, seed).train.class_names).collect();
    assert!(splits.len() > 1, "split_seed changes the split");
}

#[test]
fn resizes_the_shorter_side_and_centre_crops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(tmp.path(), 4, 1);
    // A wide image: red | green | blue thirds. The centre crop keeps only green.
    let wide = RgbImage::from_fn(90, 30, |x, _| match x / 30 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    });
    wide.save(tmp.path().join("class_00").join("wide.png")).expect("write");
    let s = load(tmp.path(), 0.5, 0);
    let set = if s.train.class_names.contains(&"class_00".to_string()) { &s.train } else { &s.test };
    // class_00 sorts first; its files are img_0.jpg then wide.png.
    assert_eq!(set.class_names[0], "class_00");
    let (r, g, b) = (channel_mean(&set.images, 1, 0), channel_mean(&set.images, 1, 1), channel_mean(&set.images, 1, 2));
    assert!(g > 240.0 && r < 15.0 && b < 15.0, "crop is not the centre third: rgb {r} {g} {b}");
}

#[test]
fn reads_grey_rgba_and_misnamed_files_as_rgb() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(tmp.path(), 4, 1);
    let dir = tmp.path().join("class_01");
    image::GrayImage::from_pixel(20, 20, image::Luma([100])).save(dir.join("grey.png")).expect("write");
    image::RgbaImage::from_pixel(20, 20, image::Rgba([10, 20, 30, 128])).save(dir.join("rgba.png")).expect("write");
    // PNG bytes behind a .jpg name: decoded by content, not by extension.
    let png = tmp.path().join("tmp.png");
    image::RgbImage::from_pixel(20, 20, Rgb([50, 60, 70])).save(&png).expect("write");
    std::fs::rename(&png, dir.join("z_misnamed.jpg")).expect("rename");
    let s = load(tmp.path(), 0.5, 0);
    let set = if s.train.class_names.contains(&"class_01".to_string()) { &s.train } else { &s.test };
    let label = set.class_names.iter().position(|n| n == "class_01").expect("class_01") as i64;
    let idx: Vec<i64> = (0..set.len() as i64).filter(|&i| set.labels[i as usize] == label).collect();
    // Sorted: grey.png, img_0.jpg, rgba.png, z_misnamed.jpg.
    assert_eq!(idx.len(), 4);
    let rgb = |i: i64| [0, 1, 2].map(|c| channel_mean(&set.images, i, c).round());
    assert_eq!(rgb(idx[0]), [100.0; 3]);
    assert_eq!(rgb(idx[2]), [10.0, 20.0, 30.0]);
    assert_eq!(rgb(idx[3]), [50.0, 60.0, 70.0]);
}

/// The error of loading `root`, checked to be one line naming `path`.
fn error_naming(root: &Path, fraction: f64, path: &Path) -> String {
    let err = load_folder(root, &cfg(fraction, 0), 16).expect_err("must fail").to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&path.display().to_string()), "{err:?} does not name {}", path.display());
    err
}

fn tree(classes: usize, per_class: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    make_tree(&root, classes, per_class);
    (tmp, root)
}

#[test]
fn missing_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    let err = error_naming(&missing, 0.5, &missing);
    assert!(err.contains("does not exist") && err.contains("data.root"), "{err}");
}

#[test]
fn root_is_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("file.png");
    std::fs::write(&file, "x").expect("write");
    assert!(error_naming(&file, 0.5, &file).contains("is not a directory"));
}

#[test]
fn root_without_class_folders() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = error_naming(tmp.path(), 0.5, tmp.path());
    assert!(err.contains("has no class sub-folders"), "{err}");
    // Images right in the root: the user pointed at one class folder.
    write_image(&tmp.path().join("a.png"), 8, 8, 0, 0);
    let err = error_naming(tmp.path(), 0.5, tmp.path());
    assert!(err.contains("1 images lie directly in it"), "{err}");
}

#[test]
fn empty_class_folder() {
    let (_tmp, root) = tree(4, 2);
    let empty = root.join("zz_empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join("readme.txt"), "no images here").expect("write");
    let err = error_naming(&root, 0.5, &empty);
    assert!(err.contains("no .jpg/.jpeg/.png images"), "{err}");
}

#[test]
fn corrupt_jpeg() {
    let (_tmp, root) = tree(4, 2);
    let bad = root.join("class_01").join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not a jpeg").expect("write");
    assert!(error_naming(&root, 0.5, &bad).contains("cannot decode image"));
}

#[test]
fn truncated_png() {
    let (_tmp, root) = tree(4, 2);
    let good = root.join("class_02").join("img_1.PNG");
    let bytes = std::fs::read(&good).expect("read");
    let bad = root.join("class_02").join("truncated.png");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).expect("write");
    assert!(error_naming(&root, 0.5, &bad).contains("cannot decode image"));
}

#[test]
fn the_first_bad_file_in_order_is_reported_whatever_the_threads() {
    let (_tmp, root) = tree(4, 6);
    let train = load_folder(&root, &cfg(0.5, 0), 16).expect("load").train.class_names;
    // The last file of the first train class and the first of the second: with several
    // decoding threads they fall in different chunks, and the later one fails first.
    let early = root.join(&train[0]).join("img_5.PNG");
    let late = root.join(&train[1]).join("img_0.jpg");
    std::fs::write(&early, "bad").expect("write");
    std::fs::write(&late, "bad").expect("write");
    for _ in 0..3 {
        error_naming(&root, 0.5, &early);
    }
}

#[test]
fn too_few_classes_to_split() {
    let (_tmp, root) = tree(3, 2);
    let err = error_naming(&root, 0.5, &root);
    assert!(err.contains("3 classes") && err.contains("each side needs >= 2 classes"), "{err}");
    let (_tmp, root) = tree(6, 2);
    let err = error_naming(&root, 0.9, &root);
    assert!(err.contains("5 train / 1 test"), "{err}");
}

