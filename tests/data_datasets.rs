//! The benchmark readers (CUB-200-2011, CARS-196, Stanford Online Products, In-Shop) on
//! tiny fake trees of real JPEG files written here: counts, dense per-split labels, the
//! standard class boundaries, In-Shop's query/gallery masks, and one-line errors that
//! name the file and line at fault.
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use hist::config::{load_config_str, ConfigSource, DataSource};
use hist::data::datasets::{
    decode_listing, list_benchmark, list_cars, list_cub, list_inshop, list_sop, Benchmark, DatasetListing, Sample,
};
use hist::HistError;
use image::{ImageFormat, Rgb, RgbImage};
use tch::Kind;

/// The red value of `class`'s images.
fn red_of(class: u32) -> u8 {
    (class * 37 % 200 + 20) as u8
}

/// Writes a small JPEG whose red channel encodes `class` (flat, so it survives JPEG).
fn write_jpeg(path: &Path, class: u32) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let red = red_of(class);
    let img = RgbImage::from_fn(20, 14, |x, _| Rgb([red, 90, (x * 10) as u8]));
    img.save_with_format(path, ImageFormat::Jpeg).expect("write jpeg");
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, text).expect("write list");
}

/// The error of a listing that must fail, checked to be one `Data` line.
fn error(result: hist::Result<DatasetListing>) -> String {
    let e = result.expect_err("the listing should fail");
    assert!(matches!(e, HistError::Data { .. }), "{e:?}");
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

fn labels(samples: &[Sample]) -> Vec<i64> {
    samples.iter().map(|s| s.label).collect()
}

fn names(samples: &[Sample], root: &Path) -> Vec<String> {
    samples.iter().map(|s| s.path.strip_prefix(root).expect("under root").to_string_lossy().into_owned()).collect()
}

// ---------------------------------------------------------------- CUB-200-2011

/// CUB classes straddling the 100/101 boundary and touching both ends of 1..=200.
const CUB_CLASSES: [u32; 4] = [1, 100, 101, 200];

fn cub_folder(class: u32) -> String {
    format!("{class:03}.Bird_{class}")
}

/// Two images per class; image ids interleave classes, and image_class_labels.txt lists
/// them in reverse order (ids must be matched, not lines). Returns images.txt's rows.
fn make_cub(root: &Path) -> Vec<(u32, String, u32)> {
    let mut rows = Vec::new();
    for i in 0..2 {
        for &c in &CUB_CLASSES {
            let id = rows.len() as u32 + 1;
            let rel = format!("{}/{}_{i}.jpg", cub_folder(c), cub_folder(c));
            write_jpeg(&root.join("images").join(&rel), c);
            rows.push((id, rel, c));
        }
    }
    let mut images = String::new();
    let mut classes = String::new();
    for (id, rel, _) in &rows {
        writeln!(images, "{id} {rel}").unwrap();
    }
    for (id, _, c) in rows.iter().rev() {
        writeln!(classes, "{id} {c}").unwrap();
    }
    write(&root.join("images.txt"), &images);
    write(&root.join("image_class_labels.txt"), &classes);
    rows
}

#[test]
fn cub_lists_the_standard_class_split_with_dense_labels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    make_cub(root);
    let l = list_cub(root).expect("list");
    assert_eq!((l.train.len(), l.test.len()), (4, 4));
    // Classes 1 and 100 train (labels 0, 1); 101 and 200 test (labels 0, 1); images.txt order.
    assert_eq!(labels(&l.train), vec![0, 1, 0, 1]);
    assert_eq!(labels(&l.test), vec![0, 1, 0, 1]);
    assert_eq!(l.train_class_names, vec![cub_folder(1), cub_folder(100)]);
    assert_eq!(l.test_class_names, vec![cub_folder(101), cub_folder(200)]);
    assert_eq!(names(&l.train, root)[1], format!("images/{}/{}_0.jpg", cub_folder(100), cub_folder(100)));
    assert!(l.query_gallery.is_none());
    assert_eq!(list_benchmark(Benchmark::Cub, root).expect("list"), l);
}

#[test]
fn cub_decodes_into_splits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let l = list_cub(tmp.path()).expect("list");
    let s = decode_listing(&l, 16).expect("decode");
    assert_eq!(s.train.images.size(), [4, 3, 16, 16]);
    assert_eq!(s.test.images.size(), [4, 3, 16, 16]);
    assert_eq!(s.train.images.kind(), Kind::Uint8);
    assert_eq!(s.test.labels, labels(&l.test));
    assert_eq!(s.test.class_names, l.test_class_names);
    // Test image 1 is class 200: its red channel says so.
    let red = s.test.images.get(1).get(0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let want = f64::from(red_of(200));
    assert!((red - want).abs() < 6.0, "red {red}, want {want}");
}

#[test]
fn cub_missing_root_and_missing_list_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gone = tmp.path().join("nowhere");
    let e = error(list_cub(&gone));
    assert!(e.contains(&gone.display().to_string()) && e.contains("does not exist"), "{e}");

    make_cub(tmp.path());
    fs::remove_file(tmp.path().join("image_class_labels.txt")).expect("rm");
    let e = error(list_cub(tmp.path()));
    let path = tmp.path().join("image_class_labels.txt");
    assert!(e.contains(&path.display().to_string()) && e.contains("does not exist"), "{e}");
    assert!(e.contains("CUB_200_2011"), "says what data.root should be: {e}");
}

#[test]
fn cub_malformed_line_names_file_line_and_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let path = tmp.path().join("images.txt");
    let mut text = fs::read_to_string(&path).expect("read");
    text = text.replacen("3 ", "three ", 1);
    write(&path, &text);
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&format!("{}: line 3:", path.display())), "{e}");
    assert!(e.contains("three") && e.contains("<image_id> <relative path>"), "{e}");

    // A long offending line is cut short.
    write(&path, &format!("1 a.jpg\n{}\n", "x".repeat(500)));
    let e = error(list_cub(tmp.path()));
    assert!(e.contains("line 2:") && e.contains('…') && e.len() < 400, "{e}");
}

#[test]
fn cub_ids_must_match_between_the_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let labels_path = tmp.path().join("image_class_labels.txt");
    let original = fs::read_to_string(&labels_path).expect("read");

    // An id that images.txt does not list.
    write(&labels_path, &format!("{original}999 5\n"));
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&format!("{}: line 9:", labels_path.display())) && e.contains("999"), "{e}");

    // An image without a class: blamed on its images.txt line.
    let without_first: String = original.lines().filter(|l| !l.starts_with("1 ")).map(|l| format!("{l}\n")).collect();
    write(&labels_path, &without_first);
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&format!("{}: line 1:", tmp.path().join("images.txt").display())), "{e}");
    assert!(e.contains("image id 1 has no class"), "{e}");

    // A duplicate id in images.txt.
    write(&labels_path, &original);
    let images_path = tmp.path().join("images.txt");
    let images = fs::read_to_string(&images_path).expect("read");
    write(&images_path, &format!("{images}2 again.jpg\n"));
    let e = error(list_cub(tmp.path()));
    assert!(e.contains("line 9:") && e.contains("listed twice (first on line 2)"), "{e}");
}

#[test]
fn cub_class_out_of_range() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let path = tmp.path().join("image_class_labels.txt");
    let text = fs::read_to_string(&path).expect("read").replace(" 200\n", " 201\n");
    write(&path, &text);
    let e = error(list_cub(tmp.path()));
    // Reverse order: ids 8 and 4 (class 200) are on lines 1 and 5.
    assert!(e.contains(&format!("{}: line 1:", path.display())) && e.contains("class 201"), "{e}");
    assert!(e.contains("1..=200"), "{e}");
}

#[test]
fn cub_listed_image_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows = make_cub(tmp.path());
    let (_, rel, _) = &rows[5];
    let image = tmp.path().join("images").join(rel);
    fs::remove_file(&image).expect("rm");
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&format!("{}: line 6:", tmp.path().join("images.txt").display())), "{e}");
    assert!(e.contains(&image.display().to_string()) && e.contains("does not exist"), "{e}");
}

#[test]
fn cub_empty_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    // Every image in a train class: no test class left.
    let path = tmp.path().join("image_class_labels.txt");
    let text = fs::read_to_string(&path).expect("read").replace(" 101\n", " 2\n").replace(" 200\n", " 3\n");
    write(&path, &text);
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&path.display().to_string()) && e.contains("test split has 0 images of 0 classes"), "{e}");
}

#[test]
fn list_files_must_be_utf8() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let path = tmp.path().join("images.txt");
    fs::write(&path, b"1 a.jpg\n2 b\xff.jpg\n").expect("write");
    let e = error(list_cub(tmp.path()));
    assert!(e.contains(&format!("{}: line 2:", path.display())) && e.contains("UTF-8"), "{e}");
}

// ---------------------------------------------------------------- CARS-196

const CARS_CLASSES: [u32; 4] = [1, 98, 99, 196];

/// Two images per class, classes interleaved; the list has CRLF endings and a blank line.
fn make_cars(root: &Path) -> Vec<(String, u32)> {
    let mut rows = Vec::new();
    for i in 0..2 {
        for &c in &CARS_CLASSES {
            let rel = format!("car_ims/{:06}.jpg", rows.len() + 1);
            write_jpeg(&root.join(&rel), c + i);
            rows.push((rel, c));
        }
    }
    let mut text = String::new();
    for (rel, c) in &rows {
        write!(text, "{rel} {c}\r\n").unwrap();
    }
    text.push_str("\r\n");
    write(&root.join("cars_annos.txt"), &text);
    rows
}

#[test]
fn cars_lists_the_standard_class_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cars(tmp.path());
    let l = list_cars(tmp.path()).expect("list");
    assert_eq!((l.train.len(), l.test.len()), (4, 4));
    assert_eq!(labels(&l.train), vec![0, 1, 0, 1]);
    assert_eq!(labels(&l.test), vec![0, 1, 0, 1]);
    assert_eq!(l.train_class_names, vec!["1", "98"]);
    assert_eq!(l.test_class_names, vec!["99", "196"]);
    assert_eq!(names(&l.test, tmp.path()), vec!["car_ims/000003.jpg", "car_ims/000004.jpg", "car_ims/000007.jpg", "car_ims/000008.jpg"]);
    assert_eq!(list_benchmark(Benchmark::Cars, tmp.path()).expect("list"), l);
}

#[test]
fn cars_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let list = root.join("cars_annos.txt");
    // Missing list file: the message points at the conversion snippet.
    let e = error(list_cars(root));
    assert!(e.contains(&list.display().to_string()) && e.contains("docs/datasets.md"), "{e}");

    make_cars(root);
    let good = fs::read_to_string(&list).expect("read");
    // Malformed: no class.
    write(&list, &good.replacen("car_ims/000002.jpg 98", "car_ims/000002.jpg", 1));
    let e = error(list_cars(root));
    assert!(e.contains(&format!("{}: line 2:", list.display())) && e.contains("car_ims/000002.jpg"), "{e}");
    // Class out of range.
    write(&list, &good.replacen("car_ims/000004.jpg 196", "car_ims/000004.jpg 197", 1));
    let e = error(list_cars(root));
    assert!(e.contains("line 4:") && e.contains("class 197") && e.contains("1..=196"), "{e}");
    // Listed image missing.
    write(&list, &good);
    fs::remove_file(root.join("car_ims/000007.jpg")).expect("rm");
    let e = error(list_cars(root));
    assert!(e.contains("line 7:") && e.contains(&root.join("car_ims/000007.jpg").display().to_string()), "{e}");
    // Empty split: only train classes listed.
    write(&list, "car_ims/000001.jpg 1\ncar_ims/000002.jpg 98\n");
    let e = error(list_cars(root));
    assert!(e.contains(&list.display().to_string()) && e.contains("test split has 0 images"), "{e}");
}

// ---------------------------------------------------------------- Stanford Online Products

const SOP_HEADER: &str = "image_id class_id super_class_id path";

/// Train classes 1 and 11318, test 11319 and 22634; two images each, under
/// `<super>_final/` with upper-case `.JPG` as in the archive.
fn make_sop(root: &Path) {
    let mut id = 0;
    for (file, classes) in [("Ebay_train.txt", [1u32, 11_318]), ("Ebay_test.txt", [11_319, 22_634])] {
        let mut text = format!("{SOP_HEADER}\n");
        for i in 0..2 {
            for (s, &c) in classes.iter().enumerate() {
                id += 1;
                let sup = if s == 0 { 1 } else { 12 };
                let folder = if s == 0 { "bicycle_final" } else { "toaster_final" };
                let rel = format!("{folder}/{c}_{i}.JPG");
                write_jpeg(&root.join(&rel), c);
                writeln!(text, "{id} {c} {sup} {rel}").unwrap();
            }
        }
        write(&root.join(file), &text);
    }
}

#[test]
fn sop_lists_train_and_test_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_sop(tmp.path());
    let l = list_sop(tmp.path()).expect("list");
    assert_eq!((l.train.len(), l.test.len()), (4, 4));
    assert_eq!(labels(&l.train), vec![0, 1, 0, 1]);
    assert_eq!(labels(&l.test), vec![0, 1, 0, 1]);
    assert_eq!(l.train_class_names, vec!["1", "11318"]);
    assert_eq!(l.test_class_names, vec!["11319", "22634"]);
    assert_eq!(names(&l.train, tmp.path())[1], "toaster_final/11318_0.JPG");
    assert_eq!(list_benchmark(Benchmark::Sop, tmp.path()).expect("list"), l);
}

#[test]
fn sop_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    make_sop(root);
    let train = root.join("Ebay_train.txt");
    let test = root.join("Ebay_test.txt");
    let good = fs::read_to_string(&train).expect("read");

    // Missing list file.
    fs::rename(&test, root.join("moved.txt")).expect("mv");
    let e = error(list_sop(root));
    assert!(e.contains(&test.display().to_string()) && e.contains("does not exist"), "{e}");
    fs::rename(root.join("moved.txt"), &test).expect("mv");
    // Wrong header.
    write(&train, &good.replacen("super_class_id", "superclass", 1));
    let e = error(list_sop(root));
    assert!(e.contains(&format!("{}: line 1:", train.display())) && e.contains(SOP_HEADER), "{e}");
    // Malformed row (no path).
    write(&train, &good.replacen("2 11318 12 toaster_final/11318_0.JPG", "2 11318 12", 1));
    let e = error(list_sop(root));
    assert!(e.contains("line 3:") && e.contains("\"2 11318 12\""), "{e}");
    // A test class in the train file.
    write(&train, &good.replacen("2 11318 12", "2 11319 12", 1));
    let e = error(list_sop(root));
    assert!(e.contains("line 3:") && e.contains("class 11319") && e.contains("1..=11318"), "{e}");
    // Super class out of range.
    write(&train, &good.replacen("2 11318 12", "2 11318 13", 1));
    let e = error(list_sop(root));
    assert!(e.contains("line 3:") && e.contains("super class 13"), "{e}");
    // Listed image missing (in the test file).
    write(&train, &good);
    fs::remove_file(root.join("bicycle_final/11319_1.JPG")).expect("rm");
    let e = error(list_sop(root));
    assert!(e.contains(&format!("{}: line 4:", test.display())) && e.contains("11319_1.JPG"), "{e}");
    write_jpeg(&root.join("bicycle_final/11319_1.JPG"), 11_319);
    // Empty split: header only.
    write(&train, &format!("{SOP_HEADER}\n"));
    let e = error(list_sop(root));
    assert!(e.contains(&train.display().to_string()) && e.contains("train split has 0 images"), "{e}");
}

#[test]
fn sop_scale_listing_is_fast() {
    // 60k rows (about half of the real train file) over 6 image files: parsing, label
    // densifying and the existence checks stay linear.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for c in 0..6 {
        write_jpeg(&root.join(format!("mug_final/{c}.JPG")), c);
    }
    let mut train = format!("{SOP_HEADER}\n");
    let mut test = format!("{SOP_HEADER}\n");
    for i in 0..60_000u32 {
        let c = i % 11_318 + 1;
        writeln!(train, "{} {c} 8 mug_final/{}.JPG", i + 1, i % 3).unwrap();
        writeln!(test, "{} {} 8 mug_final/{}.JPG", i + 60_001, i % 11_316 + 11_319, 3 + i % 3).unwrap();
    }
    write(&root.join("Ebay_train.txt"), &train);
    write(&root.join("Ebay_test.txt"), &test);
    let start = std::time::Instant::now();
    let l = list_sop(root).expect("list");
    let took = start.elapsed();
    assert_eq!((l.train.len(), l.train_class_names.len()), (60_000, 11_318));
    assert_eq!((l.test.len(), l.test_class_names.len()), (60_000, 11_316));
    assert!(took.as_secs_f64() < 10.0, "listing 120k rows took {took:?}");
}

// ---------------------------------------------------------------- In-Shop Clothes

/// (image path, item id, status) rows: train items 1 and 7; test items 2 and 5 with
/// query and gallery images each.
fn inshop_rows() -> Vec<(String, &'static str, &'static str)> {
    let rows = [
        ("id_00000001", "01_1_front", "train"),
        ("id_00000002", "02_1_front", "query"),
        ("id_00000007", "01_2_side", "train"),
        ("id_00000002", "02_2_side", "gallery"),
        ("id_00000005", "01_1_front", "gallery"),
        ("id_00000001", "01_3_back", "train"),
        ("id_00000005", "01_4_full", "query"),
        ("id_00000002", "02_3_back", "gallery"),
        ("id_00000007", "01_7_additional", "train"),
    ];
    rows.iter().map(|&(item, file, status)| (format!("img/WOMEN/Dresses/{item}/{file}.jpg"), item, status)).collect()
}

/// The archive's layout: Eval/list_eval_partition.txt and Img/img/…; the list's columns
/// are padded with runs of spaces as in the real file.
fn make_inshop(root: &Path, image_base: &Path, list: &Path) {
    let rows = inshop_rows();
    let mut text = format!("{}\nimage_name item_id evaluation_status\n", rows.len());
    for (i, (path, item, status)) in rows.iter().enumerate() {
        write_jpeg(&image_base.join(path), i as u32);
        writeln!(text, "{path:<60}{item:<16}{status}").unwrap();
    }
    write(list, &text);
    assert!(list.starts_with(root));
}

fn archive_inshop(root: &Path) -> PathBuf {
    let list = root.join("Eval/list_eval_partition.txt");
    make_inshop(root, &root.join("Img"), &list);
    list
}

#[test]
fn inshop_lists_train_and_query_gallery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    archive_inshop(root);
    let l = list_inshop(root).expect("list");
    assert_eq!((l.train.len(), l.test.len()), (4, 5));
    // Train items 1 → 0, 7 → 1; test items 2 → 0, 5 → 1 (sorted ids, file order kept).
    assert_eq!(labels(&l.train), vec![0, 1, 0, 1]);
    assert_eq!(labels(&l.test), vec![0, 0, 1, 1, 0]);
    assert_eq!(l.train_class_names, vec!["id_00000001", "id_00000007"]);
    assert_eq!(l.test_class_names, vec!["id_00000002", "id_00000005"]);
    let qg = l.query_gallery.as_ref().expect("masks");
    assert_eq!(qg.query, vec![true, false, false, true, false]);
    assert_eq!(qg.gallery, vec![false, true, true, false, true]);
    assert_eq!(names(&l.test, root)[0], "Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg");
    assert_eq!(list_benchmark(Benchmark::InShop, root).expect("list"), l);

    // The flat layout: the list and img/ directly in data.root.
    let flat = tmp.path().join("flat");
    make_inshop(&flat, &flat, &flat.join("list_eval_partition.txt"));
    let f = list_inshop(&flat).expect("list");
    assert_eq!((labels(&f.train), labels(&f.test)), (labels(&l.train), labels(&l.test)));
    assert_eq!(names(&f.test, &flat)[0], "img/WOMEN/Dresses/id_00000002/02_1_front.jpg");
}

#[test]
fn inshop_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // Missing list file: both places are named.
    let e = error(list_inshop(root));
    assert!(e.contains(&root.join("list_eval_partition.txt").display().to_string()) && e.contains("Eval/"), "{e}");

    let list = archive_inshop(root);
    let good = fs::read_to_string(&list).expect("read");
    let set = |text: String| write(&list, &text);
    // Bad count line.
    set(good.replacen("9\n", "nine\n", 1));
    let e = error(list_inshop(root));
    assert!(e.contains(&format!("{}: line 1:", list.display())) && e.contains("nine"), "{e}");
    // Count that disagrees with the rows.
    set(good.replacen("9\n", "10\n", 1));
    let e = error(list_inshop(root));
    assert!(e.contains("line 1:") && e.contains("says 10 images but 9 rows follow"), "{e}");
    // Wrong header.
    set(good.replacen("evaluation_status", "status", 1));
    let e = error(list_inshop(root));
    assert!(e.contains("line 2:") && e.contains("image_name item_id evaluation_status"), "{e}");
    // Unknown status.
    set(good.replacen("gallery", "val", 1));
    let e = error(list_inshop(root));
    assert!(e.contains("line 6:") && e.contains("status \"val\" is not train, query or gallery"), "{e}");
    // A test item that is also a train item.
    set(good.replacen("id_00000005 ", "id_00000007 ", 1));
    let e = error(list_inshop(root));
    assert!(e.contains("line 7:") && e.contains("id_00000007") && e.contains("(line 5)"), "{e}");
    // Listed image missing.
    set(good.clone());
    let missing = root.join("Img/img/WOMEN/Dresses/id_00000005/01_4_full.jpg");
    fs::remove_file(&missing).expect("rm");
    let e = error(list_inshop(root));
    assert!(e.contains("line 9:") && e.contains(&missing.display().to_string()), "{e}");
    write_jpeg(&missing, 0);
    // No query rows.
    set(good.replace("query", "gallery"));
    let e = error(list_inshop(root));
    assert!(e.contains(&list.display().to_string()) && e.contains("no query rows"), "{e}");
    // Empty train split.
    let no_train: String = good.lines().filter(|l| !l.ends_with("train")).map(|l| format!("{l}\n")).collect();
    set(no_train.replacen("9\n", "5\n", 1));
    let e = error(list_inshop(root));
    assert!(e.contains("train split has 0 images"), "{e}");
}

#[test]
fn a_config_loads_a_benchmark_and_requires_its_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_cub(tmp.path());
    let yaml = format!(
        "data: {{source: cub, root: {:?}, batch_size: 4, ipc: 2, image_size: 16}}\ntrain: {{epochs: 1}}\n",
        tmp.path().display().to_string()
    );
    let cfg = load_config_str(&yaml, ConfigSource::Embedded("test"), &[]).expect("config");
    let s = hist::train::trainer::load_data(&cfg).expect("load");
    assert_eq!((s.train.len(), s.test.len(), s.train.num_classes()), (4, 4, 2));

    let e = load_config_str("data: {source: sop, batch_size: 4, ipc: 2}\ntrain: {epochs: 1}\n", ConfigSource::Embedded("test"), &[])
        .expect_err("no root");
    assert!(e.to_string().contains("data.root is required when data.source is sop"), "{e}");
}

#[test]
fn config_names_the_benchmarks() {
    for (name, source) in
        [("cub", DataSource::Cub), ("cars", DataSource::Cars), ("sop", DataSource::Sop), ("inshop", DataSource::Inshop)]
    {
        let parsed: DataSource = serde_json::from_str(&format!("\"{name}\"")).expect("parse");
        assert_eq!(parsed, source);
    }
    assert_eq!(Benchmark::InShop.name(), "inshop");
}
