//! `hist bench-decode`: throughput of the image pipeline on a folder of JPEG/PNG files,
//! as one JSON line on stdout. scripts/bench_decode.py runs it beside PIL + torchvision
//! and writes docs/benchmarks.md.
//!
//! The loader measurement is what training does: every image of the folder, `passes`
//! times, through the train transform (RandomResizedCrop to `crop` + flip + ImageNet
//! normalisation) into f32 batches of `batch`, on `threads` decode threads; `img_per_s`
//! times from starting the loader to receiving the last batch, `steady_img_per_s` from
//! the first batch to the last (start-up left out). With `--components`, one thread
//! also times each stage alone over one pass: reading the file, decoding as the train
//! transform does (only the crop's region where the decoder can), decoding whole images
//! (for comparison), crop + resize, normalisation. `decoder` names the JPEG decoder.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::config::{BadImagePolicy, InputConvention};
use crate::data::pipeline::normalize::Normalizer;
use crate::data::pipeline::resample::Resampler;
use crate::data::pipeline::{decode_bytes, decode_bytes_region, jpeg_decoder, BatchPlan, FileSet, ImageJob, ImageOp, Loader, PipelineSpec};
use crate::error::{HistError, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Folder of images (every .jpg/.jpeg/.png directly in it).
    pub dir: PathBuf,
    /// Decode threads of the loader.
    pub threads: usize,
    /// Images per batch.
    pub batch: usize,
    /// Passes over the folder.
    pub passes: usize,
    /// Side of the training crop.
    pub crop: u32,
    /// Also time each stage alone on one thread.
    pub components: bool,
}

/// Runs the benchmark and prints its JSON report.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.threads == 0 || args.batch == 0 || args.passes == 0 {
        return Err(HistError::config("bench-decode", "--threads, --batch and --passes must be >= 1"));
    }
    let files = Arc::new(list_images(&args.dir)?);
    let spec = PipelineSpec {
        train_crop: args.crop,
        crop_scale: [0.08, 1.0],
        crop_ratio: [0.75, 4.0 / 3.0],
        test_resize: args.crop * 8 / 7,
        test_crop: args.crop,
        normalizer: Normalizer::new(InputConvention::Imagenet),
        convention: InputConvention::Imagenet,
        seed: 0,
        on_bad_image: BadImagePolicy::Error,
        threads: args.threads,
        prefetch: (2 * args.threads).max(2),
    };
    // Only the pipeline's own threads should work; libtorch's pool stays at one.
    tch::set_num_threads(1);
    let timing = time_loader(&files, &spec, args)?;
    let mut report = json!({
        "decoder": jpeg_decoder(),
        "threads": args.threads,
        "batch": args.batch,
        "files": files.paths.len(),
        "images": timing.images,
        "seconds": timing.seconds,
        "img_per_s": timing.images as f64 / timing.seconds,
        "steady_img_per_s": timing.after_first as f64 / timing.after_first_seconds,
    });
    if args.components {
        report["components_ms"] = time_components(&files, &spec)?;
    }
    println!("{report}");
    Ok(())
}

fn list_images(dir: &Path) -> Result<FileSet> {
    let entries = std::fs::read_dir(dir).map_err(|e| HistError::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| ["jpg", "jpeg", "png"].contains(&x.to_lowercase().as_str())))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(HistError::Data { path: dir.to_path_buf(), message: "has no .jpg/.jpeg/.png files to time".to_string() });
    }
    let labels = vec![0; paths.len()];
    Ok(FileSet { paths, labels, class_names: vec!["all".to_string()] })
}

/// What a loader delivered and when.
struct LoaderTiming {
    /// Images in all batches, and seconds from starting the loader to the last batch.
    images: usize,
    seconds: f64,
    /// Images after the first batch, and seconds from the first batch to the last.
    after_first: usize,
    after_first_seconds: f64,
}

/// Times a loader over `passes` passes of the folder.
fn time_loader(files: &Arc<FileSet>, spec: &PipelineSpec, args: &BenchArgs) -> Result<LoaderTiming> {
    let n = files.paths.len();
    let (batch, passes) = (args.batch, args.passes);
    let plan = (0..passes).flat_map(move |pass| {
        (0..n.div_ceil(batch)).map(move |b| BatchPlan {
            id: (pass, b),
            jobs: (b * batch..((b + 1) * batch).min(n))
                .map(|i| ImageJob { sample: i, op: ImageOp::Train { epoch: pass, step: b, position: i - b * batch, flip: i % 2 == 0 } })
                .collect(),
        })
    });
    let start = Instant::now();
    let mut loader = Loader::new(Arc::clone(files), Arc::new(spec.clone()), Box::new(plan))?;
    let (mut images, mut first) = (0, None);
    while let Some(batch) = loader.next_batch() {
        images += batch?.images.size()[0] as usize;
        first.get_or_insert((images, Instant::now()));
    }
    let seconds = start.elapsed().as_secs_f64();
    let (first_images, first_at) = first.unwrap_or((images, Instant::now()));
    let after_first_seconds = first_at.elapsed().as_secs_f64().max(1e-9);
    Ok(LoaderTiming { images, seconds, after_first: images - first_images, after_first_seconds })
}

/// Mean milliseconds per image of each stage, on this thread, over one pass.
fn time_components(files: &FileSet, spec: &PipelineSpec) -> Result<serde_json::Value> {
    let n = files.paths.len();
    let t = Instant::now();
    let bytes: Vec<Vec<u8>> = files.paths.iter().map(|p| std::fs::read(p).map_err(|e| HistError::io(p, e))).collect::<Result<_>>()?;
    let read = t.elapsed().as_secs_f64();
    let bad = |i: usize| move |m: String| HistError::Data { path: files.paths[i].clone(), message: m };
    // The crops of ImageOp::Train { epoch: 0, step: 0, position: i, flip: i % 2 == 0 }.
    let t = Instant::now();
    let mut regions = Vec::with_capacity(n);
    for (i, b) in bytes.iter().enumerate() {
        regions.push(decode_bytes_region(b, |w, h| spec.train_crop_box(w, h, 0, 0, i)).map_err(bad(i))?);
    }
    let decode = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (i, b) in bytes.iter().enumerate() {
        decode_bytes(b).map_err(bad(i))?;
    }
    let decode_whole = t.elapsed().as_secs_f64();
    let mut resampler = Resampler::new();
    let (side, mut resized) = (spec.train_crop, Vec::with_capacity(n));
    let t = Instant::now();
    for (i, (image, region)) in regions.iter().enumerate() {
        resized.push(spec.train_resample(image, *region, i % 2 == 0, &mut resampler).map_err(bad(i))?);
    }
    let resample = t.elapsed().as_secs_f64();
    let mut out = vec![0f32; 3 * side as usize * side as usize];
    let t = Instant::now();
    for (img, region, flip) in &resized {
        spec.normalizer.write_chw(img, *region, *flip, &mut out);
    }
    let normalize = t.elapsed().as_secs_f64();
    let ms = |s: f64| 1e3 * s / n as f64;
    Ok(json!({"read": ms(read), "decode": ms(decode), "decode_whole": ms(decode_whole), "resample": ms(resample), "normalize": ms(normalize)}))
}
