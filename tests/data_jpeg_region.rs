//! Region decoding of the training transform (decode.rs, jpeg_region.rs, csrc/jpeg_region.c):
//! the pixels of a crop decoded alone equal those of the whole image's decode, byte for byte,
//! over many random crops of real JPEG files (written by PIL: 4:2:0, 4:2:2, 4:4:4, grey,
//! progressive, restart markers, RGB without YCbCr, odd sizes; CMYK takes the zune-jpeg
//! fallback); the decode-and-transform path gives the same network input as decoding whole;
//! and truncated or corrupt files fail with the same one-line errors as a whole decode.
//! With a build without libjpeg (HIST_NO_LIBJPEG=1) the same checks hold trivially (the
//! whole image is decoded), which keeps that path tested too.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hist::config::{BadImagePolicy, InputConvention};
use hist::data::pipeline::decode::decode_jpeg_zune;
use hist::data::pipeline::geometry::{random_resized_crop, CropBox};
use hist::data::pipeline::normalize::Normalizer;
use hist::data::pipeline::resample::Resampler;
use hist::data::pipeline::{
    decode_bytes, decode_bytes_region, decode_file, decode_file_region, jpeg_decoder, BatchPlan, LIBJPEG, FileSet, ImageJob, ImageOp,
    Loader, PipelineSpec,
};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Writes the test JPEGs with PIL (crops of scikit-learn's two sample photos) into `dir`.
const WRITE_JPEGS: &str = r#"
import os, sys
import sklearn
from PIL import Image
out = sys.argv[1]
base = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
china, flower = (Image.open(os.path.join(base, n)).convert("RGB") for n in ("china.jpg", "flower.jpg"))
def view(photo, box, size):
    return photo.crop(box).resize(size, Image.BICUBIC)
files = [
    ("420_q90_500x375.jpg", view(china, (40, 20, 600, 420), (500, 375)), dict(quality=90)),
    ("420_q75_333x251.jpg", view(flower, (0, 0, 640, 427), (333, 251)), dict(quality=75)),
    ("422_q85_301x199.jpg", view(china, (100, 40, 560, 380), (301, 199)), dict(quality=85, subsampling=1)),
    ("444_q95_375x500.jpg", view(flower, (150, 0, 470, 427), (375, 500)), dict(quality=95, subsampling=0)),
    ("grey_q90_300x200.jpg", view(china, (100, 50, 550, 350), (300, 200)).convert("L"), dict(quality=90)),
    ("grey_q80_97x61.jpg", view(flower, (200, 100, 400, 230), (97, 61)).convert("L"), dict(quality=80)),
    ("progressive_420_640x427.jpg", flower, dict(quality=90, progressive=True)),
    ("progressive_444_250x190.jpg", view(china, (0, 0, 500, 380), (250, 190)), dict(quality=92, progressive=True, subsampling=0)),
    ("restart_420_260x180.jpg", view(flower, (300, 100, 560, 280), (260, 180)), dict(quality=88, restart_marker_rows=1)),
    ("rgb_keep_200x150.jpg", view(china, (300, 200, 500, 350), (200, 150)), dict(quality=90, keep_rgb=True)),
    ("420_tiny_7x5.jpg", view(flower, (0, 0, 70, 50), (7, 5)), dict(quality=90)),
    ("420_one_1x1.jpg", view(china, (0, 0, 10, 10), (1, 1)), dict(quality=90)),
    ("420_all_21x13.jpg", view(china, (300, 100, 510, 230), (21, 13)), dict(quality=90)),
    ("422_all_19x11.jpg", view(flower, (300, 100, 490, 210), (19, 11)), dict(quality=90, subsampling=1)),
    ("progressive_all_18x17.jpg", view(china, (100, 100, 280, 270), (18, 17)), dict(quality=90, progressive=True)),
    ("cmyk_120x90.jpg", view(flower, (100, 100, 340, 280), (120, 90)).convert("CMYK"), dict(quality=90)),
]
for name, img, kw in files:
    img.save(os.path.join(out, name), **kw)
print("\n".join(name for name, _, _ in files))
"#;

/// The test JPEGs in a fresh folder, and their paths.
fn jpegs() -> (tempfile::TempDir, Vec<PathBuf>) {
    // A missing interpreter must fail loudly: skipping would hide a wrong decoder.
    let python = std::env::var("HIST_PYTHON").unwrap_or_else(|_| panic!("HIST_PYTHON is not set; run scripts/setup.sh"));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(python).arg("-c").arg(WRITE_JPEGS).arg(dir.path()).output().expect("run Python");
    assert!(out.status.success(), "writing the JPEGs failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let paths = String::from_utf8_lossy(&out.stdout).lines().map(|name| dir.path().join(name.trim())).collect();
    (dir, paths)
}

/// `region` of `image`, as its own image.
fn cut(image: &RgbImage, region: CropBox) -> RgbImage {
    image::imageops::crop_imm(image, region.left, region.top, region.width, region.height).to_image()
}

/// RandomResizedCrop boxes (default and extreme scales) plus the edges: the whole image,
/// the corners' single pixels, full-width and full-height strips, the last row and column.
fn boxes(width: u32, height: u32, seed: u64) -> Vec<CropBox> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<CropBox> = (0..150).map(|_| random_resized_crop(width, height, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng)).collect();
    out.extend((0..50).map(|_| random_resized_crop(width, height, [0.001, 0.02], [0.2, 5.0], &mut rng)));
    let (w, h) = (width, height);
    out.extend([
        CropBox::full(w, h),
        CropBox { left: 0, top: 0, width: 1, height: 1 },
        CropBox { left: w - 1, top: h - 1, width: 1, height: 1 },
        CropBox { left: w - 1, top: 0, width: 1, height: h },
        CropBox { left: 0, top: h - 1, width: w, height: 1 },
        CropBox { left: 0, top: h / 3, width: w, height: h.div_ceil(3) },
        CropBox { left: w / 2, top: 0, width: w - w / 2, height: h },
    ]);
    out
}

#[test]
fn region_decoding_equals_whole_decoding_then_cropping() {
    let (_dir, paths) = jpegs();
    let libjpeg = LIBJPEG;
    eprintln!("decoder: {}", jpeg_decoder());
    let mut checked = 0;
    for (k, path) in paths.iter().enumerate() {
        let bytes = std::fs::read(path).expect("read");
        let whole = decode_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (w, h) = whole.dimensions();
        for (i, want) in boxes(w, h, k as u64).into_iter().enumerate() {
            let mut asked = None;
            let (pixels, region) = decode_bytes_region(&bytes, |cw, ch| {
                asked = Some((cw, ch));
                want
            })
            .unwrap_or_else(|e| panic!("{} box {i} {want:?}: {e}", path.display()));
            assert_eq!(asked, Some((w, h)), "{}: the crop is chosen from the image's size", path.display());
            assert_eq!((region.width, region.height), (want.width, want.height), "{} box {i}", path.display());
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if libjpeg && !name.starts_with("cmyk") {
                // Only the box's rows were decoded, and a window of columns around it: the
                // box, a pixel each side, at least 16 pixels, from the start of an iMCU
                // (at most 16 pixels wide in these files).
                let widest = (want.width + 2).max(16) + 15;
                assert!(pixels.height() == want.height && region.top == 0 && pixels.width() <= widest.min(w), "{name} box {i} {want:?}: {:?} at {region:?}", pixels.dimensions());
            }
            let got = cut(&pixels, region);
            let expected = cut(&whole, want);
            if got != expected {
                let differ = got.as_raw().iter().zip(expected.as_raw()).filter(|(a, b)| a != b).count();
                panic!("{name} box {i} {want:?}: {differ} of {} bytes differ from the whole decode's crop", got.as_raw().len());
            }
            checked += 1;
        }
    }
    assert!(checked >= 16 * 200, "{checked} crops checked");
}

/// Every box of `width` × `height`.
fn every_box(width: u32, height: u32) -> impl Iterator<Item = CropBox> {
    (0..height).flat_map(move |top| {
        (1..=height - top).flat_map(move |h| {
            (0..width).flat_map(move |left| (1..=width - left).map(move |w| CropBox { left, top, width: w, height: h }))
        })
    })
}

// Narrow windows are where libjpeg's chroma upsampling changes (csrc/jpeg_region.c,
// MIN_WINDOW): every box of a few small images, not only the likely ones.
#[test]
fn every_region_of_small_images_decodes_exactly() {
    let (_dir, paths) = jpegs();
    let small: Vec<&PathBuf> = paths.iter().filter(|p| p.to_string_lossy().contains("_all_")).collect();
    assert_eq!(small.len(), 3);
    for path in small {
        let bytes = std::fs::read(path).expect("read");
        let whole = decode_bytes(&bytes).expect("decode");
        let mut differ = Vec::new();
        for want in every_box(whole.width(), whole.height()) {
            let (pixels, region) = decode_bytes_region(&bytes, |_, _| want).expect("region");
            if cut(&pixels, region) != cut(&whole, want) {
                differ.push(want);
            }
        }
        assert!(differ.is_empty(), "{}: {} boxes differ, e.g. {:?}", path.display(), differ.len(), &differ[..differ.len().min(5)]);
    }
}

#[test]
fn cmyk_falls_back_to_zune_jpeg() {
    let (_dir, paths) = jpegs();
    let cmyk = paths.iter().find(|p| p.to_string_lossy().contains("cmyk")).expect("the CMYK file");
    let bytes = std::fs::read(cmyk).expect("read");
    let zune = decode_jpeg_zune(&bytes).expect("zune-jpeg decodes CMYK");
    assert_eq!(decode_file(cmyk).expect("decode"), zune, "a CMYK JPEG is decoded as zune-jpeg decodes it");
    let want = CropBox { left: 10, top: 20, width: 50, height: 40 };
    let (pixels, region) = decode_file_region(cmyk, |_, _| want).expect("region");
    assert_eq!(cut(&pixels, region), cut(&zune, want));
}

fn spec(side: u32, policy: BadImagePolicy) -> PipelineSpec {
    PipelineSpec {
        train_crop: side,
        crop_scale: [0.08, 1.0],
        crop_ratio: [0.75, 4.0 / 3.0],
        test_resize: side * 8 / 7,
        test_crop: side,
        normalizer: Normalizer::new(InputConvention::Imagenet),
        convention: InputConvention::Imagenet,
        seed: 5,
        on_bad_image: policy,
        threads: 2,
        prefetch: 2,
    }
}

#[test]
fn the_train_transform_sees_the_same_pixels_as_after_a_whole_decode() {
    let (_dir, paths) = jpegs();
    let spec = spec(64, BadImagePolicy::Error);
    let mut resampler = Resampler::new();
    for path in &paths {
        let whole = decode_file(path).expect("decode");
        for position in 0..20 {
            let op = ImageOp::Train { epoch: 2, step: 3, position, flip: position % 2 == 1 };
            let (a, region_a, flip_a) = spec.decode_resample(path, &op, &mut resampler).expect("decode_resample");
            let (b, region_b, flip_b) = spec.resample(&whole, &op, &mut resampler).expect("resample");
            assert!(a == b && region_a == region_b && flip_a == flip_b, "{} position {position}", path.display());
        }
    }
}

/// Cuts, corruptions and the error each must give (`reason` in the message).
fn bad_files(dir: &Path, good: &[u8]) -> Vec<(PathBuf, &'static str)> {
    // zune-jpeg (a build without libjpeg-turbo) accepts a file cut a few bytes before its
    // end, where PIL and libjpeg-turbo report it truncated.
    let cut_at_the_end_fails = LIBJPEG;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let n = good.len();
    let sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).expect("a scan");
    let mut files = vec![
        (write("half.jpg", &good[..n / 2]), "truncated"),
        (write("header_only.jpg", &good[..sos + 20]), "truncated"),
        (write("just_soi.jpg", &good[..2]), "truncated"),
        (write("no_image.jpg", b"\xFF\xD8 not a marker segment at all \xFF\xD9"), "cannot decode image"),
        (write("not_jpeg.jpg", b"GIF89a, whatever"), "not a JPEG or PNG"),
    ];
    if cut_at_the_end_fails {
        files.push((write("all_but_eoi.jpg", &good[..n - 2]), "truncated"));
        files.push((write("all_but_eoi_and_a_byte.jpg", &good[..n - 3]), "truncated"));
    }
    files
}

#[test]
fn truncated_and_corrupt_files_fail_naming_the_file() {
    let (dir, paths) = jpegs();
    let good = paths.iter().find(|p| p.to_string_lossy().contains("420_q90")).expect("a 4:2:0 file").clone();
    let bad = bad_files(dir.path(), &std::fs::read(&good).expect("read"));
    for (path, reason) in &bad {
        // A crop at the top-left: a region decode would stop long before the missing data.
        for result in [decode_file(path).map(|_| ()), decode_file_region(path, |_, _| CropBox { left: 0, top: 0, width: 4, height: 4 }).map(|_| ())] {
            let e = result.map_or_else(|e| e.to_string(), |()| panic!("{} must fail", path.display()));
            assert!(e.contains(&path.display().to_string()) && e.contains(reason) && !e.contains('\n'), "{e}");
            assert!(e.contains("data.on_bad_image: skip"), "{e}");
        }
    }

    // Through the loader, with training crops: the first bad file in plan order is the error.
    let mut all = vec![good.clone()];
    all.extend(bad.iter().map(|(p, _)| p.clone()));
    let files = Arc::new(FileSet { labels: vec![0; all.len()], paths: all, class_names: vec!["a".to_string()] });
    let plan = |samples: Vec<usize>| {
        let jobs = samples.iter().enumerate().map(|(position, &sample)| ImageJob { sample, op: ImageOp::Train { epoch: 0, step: 0, position, flip: false } });
        Box::new(vec![BatchPlan { id: (0, 0), jobs: jobs.collect() }].into_iter())
    };
    let mut loader = Loader::new(Arc::clone(&files), Arc::new(spec(32, BadImagePolicy::Error)), plan(vec![0, 1, 2, 0])).expect("loader");
    let e = loader.next_batch().expect("a batch").expect_err("must fail").to_string();
    assert!(e.contains(&bad[0].0.display().to_string()) && e.contains("the JPEG data ends early") && !e.contains('\n'), "{e}");
    let everything: Vec<usize> = (0..files.paths.len()).collect();
    let mut loader = Loader::new(Arc::clone(&files), Arc::new(spec(32, BadImagePolicy::Skip)), plan(everything)).expect("loader");
    let batch = loader.next_batch().expect("a batch").expect("skip mode succeeds");
    assert_eq!(batch.present, [vec![true], vec![false; bad.len()]].concat());
    assert_eq!(batch.images.size(), [1, 3, 32, 32]);
}

#[test]
fn a_scan_cut_short_inside_a_complete_file_decodes_as_pil_does() {
    // Scraped image sets hold such files: the data stops mid-scan but the file still ends
    // with EOI. PIL decodes them (the missing blocks grey); only data that runs out is
    // "truncated". Both decoders, whole and by region, must give the same picture.
    let (_dir, paths) = jpegs();
    let good = paths.iter().find(|p| p.to_string_lossy().contains("420_q90")).expect("a 4:2:0 file");
    let bytes = std::fs::read(good).expect("read");
    let mut damaged = bytes[..bytes.len() * 6 / 10].to_vec();
    damaged.extend_from_slice(&[0xFF, 0xD9]);
    let whole = decode_bytes(&damaged).expect("a corrupt scan in a complete file decodes");
    let (w, h) = (whole.width(), whole.height());
    // The bottom-right corner lies in the lost part of the scan: grey, as PIL gives it.
    assert_eq!(whole.get_pixel(w - 1, h - 1).0, [128, 128, 128]);
    let zune = decode_jpeg_zune(&damaged).expect("zune-jpeg decodes it too");
    assert_eq!((zune.width(), zune.height()), (w, h));
    let corner = CropBox { left: w / 2, top: h / 2, width: w / 2, height: h / 2 };
    let (image, within) = decode_bytes_region(&damaged, |_, _| corner).expect("region");
    assert!(cut(&image, within) == cut(&whole, corner), "the region differs from the whole decode's");
}
