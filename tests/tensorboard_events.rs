//! Checks the TensorBoard writers against the real `tensorboard` package: whatever hist
//! writes (scalars, text, images, histograms, HParams, projector files) must load through
//! TensorBoard's own loaders and plugins with every tag, step and value intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hist::config::load_config;
use hist::telemetry::hparams::SessionStatus;
use hist::telemetry::metrics::{EpochRecord, RunLogger, RETRIEVAL_GRID_TAG};
use hist::telemetry::projector::{write_projector, EmbeddingSet, ProjectorOptions};
use hist::telemetry::retrieval_grid::{
    nearest_neighbours, render_retrieval_grid, spread_queries, GridStyle, RetrievalRow,
    GRID_NEIGHBOURS, GRID_QUERIES,
};
use hist::telemetry::tensorboard::SummaryWriter;
use hist::telemetry::thumbnails::image_from_chw_u8;
use image::{Rgb, RgbImage};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// Runs tests/reference/read_tensorboard.py on `dir` and returns its JSON.
fn read_with_tensorboard(dir: &Path) -> Value {
    read_with_tensorboard_and_reference(dir, None)
}

/// As [`read_with_tensorboard`], also handing the script a reference file (histogram
/// values for numpy).
fn read_with_tensorboard_and_reference(dir: &Path, reference: Option<&Path>) -> Value {
    // A missing interpreter must fail loudly: skipping would hide a broken writer.
    let python = std::env::var("HIST_PYTHON").unwrap_or_else(|_| {
        panic!("HIST_PYTHON is not set; run scripts/setup.sh to create the Python venv and .cargo/config.toml")
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/read_tensorboard.py");
    let mut command = Command::new(&python);
    command.arg(&script).arg(dir);
    if let Some(reference) = reference {
        command.arg(reference);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {python} (re-run scripts/setup.sh?): {e}"));
    assert!(
        output.status.success(),
        "read_tensorboard.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from read_tensorboard.py: {e}\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn tensorboard_reads_back_scalars_and_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A missing sub-directory checks that `create` makes it.
    let logdir = dir.path().join("run").join("tb");

    let mut expected: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    expected.insert(
        "train/loss",
        vec![(0, 2.5), (1, 0.123456), (2, -3.5), (10, 1e-7), (1000, 0.0)],
    );
    expected.insert(
        "train/lr/trunk",
        vec![(0, 1e-4), (5, 5e-5), (7, 1e-7), (123_456_789, 3.0e-6)],
    );
    expected.insert("eval/recall@1", vec![(3, 0.6125), (6, 0.70001), (99, 1.0)]);
    let text = "config:\n\n    loss: hist\n    lr: 1e-4\n\n**ünïcödé** ✓";

    let path = {
        let mut writer = SummaryWriter::create(&logdir).expect("create writer");
        // Interleave tags as the trainer does, rather than writing one series at a time.
        let longest = expected.values().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for (tag, points) in &expected {
                if let Some(&(step, value)) = points.get(i) {
                    writer.add_scalar(tag, value, step).expect("add_scalar");
                }
            }
        }
        writer.add_text("config", text, 0).expect("add_text");
        writer.flush().expect("flush");
        writer.path().to_path_buf()
        // Dropped here: the Drop flush must not fail or duplicate anything.
    };

    assert_eq!(path.parent(), Some(logdir.as_path()));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 file name");
    assert!(
        name.starts_with("events.out.tfevents."),
        "unexpected event file name {name}"
    );

    let got = read_with_tensorboard(&logdir);
    assert_eq!(
        got["file_version"].as_f64(),
        Some(2.0),
        "file_version in {got}"
    );

    let scalars = got["scalars"].as_object().expect("scalars object");
    let mut got_tags: Vec<&str> = scalars.keys().map(String::as_str).collect();
    got_tags.sort_unstable();
    let want_tags: Vec<&str> = expected.keys().copied().collect();
    assert_eq!(got_tags, want_tags, "scalar tags");

    for (tag, points) in &expected {
        let series = scalars[*tag].as_array().expect("series array");
        assert_eq!(
            series.len(),
            points.len(),
            "number of points for {tag}: {series:?}"
        );
        for (&(step, value), got_point) in points.iter().zip(series) {
            let got_step = got_point[0].as_i64().expect("step");
            let got_value = got_point[1].as_f64().expect("value");
            assert_eq!(got_step, step, "step for {tag}");
            // Values travel as f32, so compare against the f32 rounding of what was written.
            let want = value as f32 as f64;
            let tolerance = want.abs() * 1e-6 + 1e-12;
            assert!(
                (got_value - want).abs() <= tolerance,
                "{tag} step {step}: got {got_value}, want {value}"
            );
        }
    }

    let texts = got["text"]["config"]
        .as_array()
        .expect("text entry for tag config");
    assert_eq!(texts.len(), 1, "text entries: {texts:?}");
    assert_eq!(texts[0][0].as_i64(), Some(0), "text step");
    assert_eq!(texts[0][1].as_str(), Some(text), "text content");
    // DT_STRING scalar is what the text plugin renders as a single Markdown block.
    assert_eq!(
        got["tensors"]["config"][0][1].as_i64(),
        Some(7),
        "text tensor dtype"
    );
    assert_eq!(
        got["tensors"]["config"][0][2].as_array().map(Vec::len),
        Some(0),
        "text tensor shape"
    );
}

#[test]
fn writers_in_one_directory_get_distinct_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = SummaryWriter::create(dir.path()).expect("first writer");
    let b = SummaryWriter::create(dir.path()).expect("second writer");
    assert_ne!(a.path(), b.path());
    assert!(a.path().exists() && b.path().exists());
}

/// Number of test images, images per class, and their size (non-square on purpose).
const IMAGES: usize = 40;
const PER_CLASS: usize = 5;
const IMAGE_H: i64 = 12;
const IMAGE_W: i64 = 16;

/// The flat colour of test image `i`.
fn colour_of(i: usize) -> [u8; 3] {
    [(6 * i) as u8, (255 - 6 * i) as u8, (100 + i) as u8]
}

/// The test set as the in-memory dataset stores it: uint8 [N, 3, H, W], labels, names.
fn test_images() -> (Tensor, Vec<i64>, Vec<String>) {
    let plane = (IMAGE_H * IMAGE_W) as usize;
    let mut data = Vec::with_capacity(IMAGES * 3 * plane);
    for i in 0..IMAGES {
        for channel in colour_of(i) {
            data.extend(std::iter::repeat_n(channel, plane));
        }
    }
    let images = Tensor::from_slice(&data).view([IMAGES as i64, 3, IMAGE_H, IMAGE_W]);
    let labels = (0..IMAGES).map(|i| (i / PER_CLASS) as i64).collect();
    let names = (0..IMAGES / PER_CLASS)
        .map(|c| format!("class {c}"))
        .collect();
    (images, labels, names)
}

/// Embeddings [N, 4]: classes at angles 0.7 rad apart, images of a class spread by 0.05 rad,
/// so each query's first neighbours share its class and later ones do not.
fn test_embeddings(labels: &[i64]) -> Tensor {
    let mut values = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let angle = label as f32 * 0.7 + (i % PER_CLASS) as f32 * 0.05;
        values.extend([angle.cos(), angle.sin(), 0.1 * (i % 3) as f32, 0.25]);
    }
    Tensor::from_slice(&values).view([labels.len() as i64, 4])
}

/// `n` deterministic values in [−1, 1) (a 64-bit LCG), scaled and shifted.
fn pseudo_random(n: usize, seed: u64, scale: f64, shift: f64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            shift + scale * (2.0 * unit - 1.0)
        })
        .collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex pixel data"))
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn assert_close(got: f64, want: f64, relative: f64, what: &str) {
    assert!(
        (got - want).abs() <= relative * want.abs().max(1e-300),
        "{what}: got {got}, want {want}"
    );
}

/// The first `k` other rows of `query` by cosine similarity, ties by index: a brute-force
/// reference for the grid's neighbours.
fn brute_force_neighbours(embeddings: &Tensor, query: usize, k: usize) -> Vec<usize> {
    let rows: Vec<Vec<f64>> = Vec::<Vec<f32>>::try_from(embeddings)
        .expect("rows")
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect();
    let unit = |r: &Vec<f64>| {
        let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        r.iter().map(|x| x / norm).collect::<Vec<f64>>()
    };
    let q = unit(&rows[query]);
    let mut others: Vec<(f64, usize)> = (0..rows.len())
        .filter(|&j| j != query)
        .map(|j| (unit(&rows[j]).iter().zip(&q).map(|(a, b)| a * b).sum(), j))
        .collect();
    others.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    others.into_iter().take(k).map(|(_, j)| j).collect()
}

/// Checks an `images` entry against the image that was written.
fn assert_image(entry: &Value, step: i64, want: &RgbImage, tag: &str) {
    assert_eq!(entry[0].as_i64(), Some(step), "{tag}: step");
    assert_eq!(
        entry[1].as_u64(),
        Some(u64::from(want.width())),
        "{tag}: width"
    );
    assert_eq!(
        entry[2].as_u64(),
        Some(u64::from(want.height())),
        "{tag}: height"
    );
    assert_eq!(entry[3].as_str(), Some("PNG"), "{tag}: format");
    assert_eq!(entry[4].as_str(), Some("RGB"), "{tag}: mode");
    assert_eq!(
        (entry[5].as_u64(), entry[6].as_u64()),
        (
            Some(u64::from(want.width())),
            Some(u64::from(want.height()))
        )
    );
    assert!(
        hex_bytes(entry[7].as_str().expect("pixels")) == want.as_raw().as_slice(),
        "{tag} step {step}: pixels differ"
    );
}

#[test]
fn tensorboard_reads_back_images_and_histograms() {
    let root = tempfile::tempdir().expect("temp dir");
    let run = root.path().join("run-a");
    let gradient = RgbImage::from_fn(7, 5, |x, y| {
        Rgb([30 * x as u8, 40 * y as u8, 255 - 10 * (x + y) as u8])
    });
    let inverted = RgbImage::from_fn(7, 5, |x, y| Rgb([255 - 30 * x as u8, 7, 40 * y as u8]));
    let (images, labels, _) = test_images();
    let rows = vec![
        RetrievalRow {
            query: 0,
            neighbours: vec![1, 2, 7],
        },
        RetrievalRow {
            query: 13,
            neighbours: vec![12, 30],
        },
    ];
    let grid = render_retrieval_grid(
        &rows,
        &labels,
        |i| image_from_chw_u8(&images, i),
        &GridStyle::default(),
    )
    .expect("grid");

    let mut series: BTreeMap<&str, Vec<(i64, Vec<f64>)>> = BTreeMap::new();
    series.insert(
        "eval/embedding_norm",
        vec![
            (1, pseudo_random(1000, 1, 2.0, 8.0)),
            (2, pseudo_random(1000, 2, 0.5, 8.0)),
            (5, pseudo_random(3, 3, 1e-3, -4.0)),
        ],
    );
    // Values on bucket edges (every integer of 0..=30 is one) check which bucket owns an edge.
    let mut on_edges: Vec<f64> = (0..=30).map(f64::from).collect();
    on_edges.extend([1.0, 29.0, 29.5, 30.0]);
    series.insert("debug/on_edges", vec![(7, on_edges)]);
    let constant = vec![0.25; 7];
    {
        let mut writer = SummaryWriter::create(&run).expect("create writer");
        writer
            .add_image("debug/gradient", &gradient, 0)
            .expect("image");
        writer
            .add_image("debug/gradient", &inverted, 4)
            .expect("image");
        writer
            .add_image(RETRIEVAL_GRID_TAG, &grid, 3)
            .expect("grid image");
        for (tag, points) in &series {
            for (step, values) in points {
                writer.add_histogram(tag, values, *step).expect("histogram");
            }
        }
        writer
            .add_histogram("debug/constant", &constant, 9)
            .expect("constant histogram");
        assert!(writer
            .add_histogram("debug/bad", &[1.0, f64::INFINITY], 0)
            .is_err());
        assert!(writer
            .add_image("debug/empty", &RgbImage::new(0, 3), 0)
            .is_err());
    }
    let reference: BTreeMap<&str, BTreeMap<String, &Vec<f64>>> = series
        .iter()
        .map(|(tag, points)| {
            (
                *tag,
                points.iter().map(|(s, v)| (s.to_string(), v)).collect(),
            )
        })
        .collect();
    let reference_path = root.path().join("reference.json");
    std::fs::write(
        &reference_path,
        json!({ "histograms": reference }).to_string(),
    )
    .expect("reference file");

    // The run is a sub-folder, as with `tensorboard --logdir runs/`.
    let got = read_with_tensorboard_and_reference(root.path(), Some(&reference_path));
    assert_eq!(got["run"].as_str(), Some("run-a"));

    let gradient_entries = got["images"]["debug/gradient"]
        .as_array()
        .expect("gradient images");
    assert_eq!(gradient_entries.len(), 2);
    assert_image(&gradient_entries[0], 0, &gradient, "debug/gradient");
    assert_image(&gradient_entries[1], 4, &inverted, "debug/gradient");
    let grid_entries = got["images"][RETRIEVAL_GRID_TAG]
        .as_array()
        .expect("grid images");
    assert_eq!(grid_entries.len(), 1);
    assert_image(&grid_entries[0], 3, &grid, RETRIEVAL_GRID_TAG);
    // The images dashboard's own store: [width, height, png] blobs, same PNG bytes.
    for (tag, steps, image) in [
        ("debug/gradient", vec![0, 4], &gradient),
        (RETRIEVAL_GRID_TAG, vec![3], &grid),
    ] {
        let blobs = got["image_blobs"][tag].as_array().expect("image blobs");
        let got_steps: Vec<i64> = blobs.iter().map(|b| b[0].as_i64().expect("step")).collect();
        assert_eq!(got_steps, steps, "{tag}: blob steps");
        for blob in blobs {
            assert_eq!(
                blob[1].as_u64(),
                Some(u64::from(image.width())),
                "{tag}: blob width"
            );
            assert_eq!(
                blob[2].as_u64(),
                Some(u64::from(image.height())),
                "{tag}: blob height"
            );
            assert_eq!(
                blob[3].as_bool(),
                Some(true),
                "{tag}: blob PNG equals the event's"
            );
        }
    }

    for (tag, points) in &series {
        let got_series = got["histograms"][*tag]
            .as_array()
            .expect("histogram series");
        let buckets_series = got["histogram_buckets"][*tag]
            .as_array()
            .expect("dashboard buckets");
        assert_eq!(
            got_series.len(),
            points.len(),
            "{tag}: number of histograms"
        );
        assert_eq!(
            buckets_series.len(),
            points.len(),
            "{tag}: number of dashboard histograms"
        );
        for (((step, values), h), dashboard) in points.iter().zip(got_series).zip(buckets_series) {
            let what = format!("{tag} step {step}");
            assert_eq!(h[0].as_i64(), Some(*step), "{what}: step");
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // serde_json's float parsing may be one ulp off Python's shortest repr.
            assert_close(
                h[1].as_f64().expect("min"),
                min,
                1e-15,
                &format!("{what}: min"),
            );
            assert_close(
                h[2].as_f64().expect("max"),
                max,
                1e-15,
                &format!("{what}: max"),
            );
            assert_eq!(h[3].as_f64(), Some(values.len() as f64), "{what}: num");
            assert_close(
                h[4].as_f64().expect("sum"),
                values.iter().sum(),
                1e-12,
                &what,
            );
            assert_close(
                h[5].as_f64().expect("sum_squares"),
                values.iter().map(|v| v * v).sum(),
                1e-12,
                &what,
            );
            // Independent reference: numpy.histogram(values, bins=30).
            let numpy = &got["numpy_histograms"][*tag][step.to_string()];
            let (counts, edges) = (f64s(&numpy[0]), f64s(&numpy[1]));
            assert_eq!(f64s(&h[7]), counts, "{what}: bucket counts vs numpy");
            let limits = f64s(&h[6]);
            assert_eq!(limits.len(), 30, "{what}: bucket limits");
            for (got_limit, want) in limits.iter().zip(&edges[1..]) {
                assert_close(*got_limit, *want, 1e-12, &format!("{what}: bucket limit"));
            }
            // What the dashboard draws: [left, right, count] per bucket, from min to max.
            let drawn = dashboard[1].as_array().expect("buckets");
            assert_eq!(dashboard[0].as_i64(), Some(*step), "{what}: dashboard step");
            assert_eq!(drawn.len(), 30, "{what}: dashboard buckets");
            for (i, bucket) in drawn.iter().enumerate() {
                let [left, right, count] = f64s(bucket)[..] else {
                    panic!("{what}: bucket {bucket}")
                };
                assert_close(left, edges[i], 1e-6, &format!("{what}: left edge {i}"));
                assert_close(
                    right,
                    edges[i + 1],
                    1e-6,
                    &format!("{what}: right edge {i}"),
                );
                assert_eq!(count, counts[i], "{what}: dashboard count {i}");
            }
        }
    }
    let h = &got["histograms"]["debug/constant"][0];
    assert_eq!(h[0].as_i64(), Some(9));
    assert_eq!(
        (h[1].as_f64(), h[2].as_f64(), h[3].as_f64()),
        (Some(0.25), Some(0.25), Some(7.0))
    );
    assert_eq!(
        (f64s(&h[6]), f64s(&h[7])),
        (vec![0.25], vec![7.0]),
        "all-equal values: one bucket"
    );
    assert!(
        got["histograms"].get("debug/bad").is_none(),
        "refused histogram was not written"
    );
}

#[test]
fn run_logger_outputs_load_in_tensorboard_plugins() {
    let root = tempfile::tempdir().expect("temp dir");
    let run = root.path().join("demo");
    std::fs::create_dir_all(&run).expect("run dir");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.yaml");
    let config = load_config(&demo, &["loss.alpha=0.9".to_string()]).expect("demo config");
    let (images, labels, class_names) = test_images();
    let embeddings = test_embeddings(&labels);
    let norms = embeddings.norm_scalaropt_dim(2.0, [1], false);
    let thumbnail = |i: usize| image_from_chw_u8(&images, i);
    let recall_0 = vec![(1, 0.25), (2, 0.5), (4, 0.625), (8, 0.75)];
    let recall_1 = vec![(1, 0.55), (2, 0.6), (4, 0.7), (8, 0.8)];
    let sub_options = ProjectorOptions {
        max_points: 16,
        thumbnail_side: 48,
    };
    {
        let mut logger = RunLogger::create(&run).expect("logger");
        logger.log_hparams(&config).expect("hparams");
        logger
            .epoch(&EpochRecord {
                epoch: 0,
                step: 0,
                losses: None,
                recall: recall_0.clone(),
            })
            .expect("epoch 0");
        logger.scalar("train/loss", 2.0, 10).expect("loss");
        logger
            .epoch(&EpochRecord {
                epoch: 1,
                step: 10,
                losses: Some([2.0, 1.5, 0.5]),
                recall: recall_1.clone(),
            })
            .expect("epoch 1");
        logger
            .log_histograms(10, &[("eval/embedding_norm", &norms)])
            .expect("histograms");
        logger
            .log_retrieval_grid(10, &embeddings, &labels, thumbnail)
            .expect("grid");
        let set = EmbeddingSet {
            name: "test",
            embeddings: &embeddings,
            labels: &labels,
            class_names: &class_names,
        };
        let mut sprite_source = thumbnail;
        let written = logger
            .write_projector(&set, Some(&mut sprite_source))
            .expect("projector");
        assert_eq!(written.points, (0..IMAGES).collect::<Vec<_>>());
        assert_eq!(written.sprite_grid, Some(7));
        let sub = EmbeddingSet {
            name: "test-sub",
            ..set
        };
        let written =
            write_projector(&run, &sub, None, &sub_options).expect("subsampled projector");
        assert_eq!(written.points.len(), 16);
        logger
            .end_hparams(SessionStatus::Success, 10)
            .expect("end hparams");
    }
    let got = read_with_tensorboard(root.path());
    assert_eq!(got["run"].as_str(), Some("demo"));

    // HParams, as parsed by the plugin's own metadata functions (protobuf Values print
    // as plain JSON numbers, strings and booleans).
    let start = &got["hparams"]["session_start_info"]["hparams"];
    assert_eq!(start["loss.alpha"], json!(0.9));
    assert_eq!(start["loss.tau"], json!(config.loss.tau));
    assert_eq!(start["optim.lr"], json!(config.optim.lr));
    assert_eq!(
        start["data.batch_size"],
        json!(config.data.batch_size as f64)
    );
    assert_eq!(start["model.backbone"], json!("small_cnn"));
    assert_eq!(start["data.hflip"], json!(config.data.hflip));
    assert_eq!(start["eval.ks"], json!("[1,2,4,8]"));
    assert!(
        start.get("model.pretrained").is_none(),
        "unset optional keys are left out"
    );
    let experiment = &got["hparams"]["experiment"];
    let infos = experiment["hparamInfos"].as_array().expect("hparam infos");
    assert_eq!(
        infos.len(),
        start.as_object().expect("hparams map").len(),
        "one column per value"
    );
    let tau_info = infos
        .iter()
        .find(|i| i["name"] == "loss.tau")
        .expect("loss.tau column");
    assert_eq!(tau_info["type"], "DATA_TYPE_FLOAT64");
    let metric_tags: Vec<&str> = experiment["metricInfos"]
        .as_array()
        .expect("metric infos")
        .iter()
        .map(|m| m["name"]["tag"].as_str().expect("metric tag"))
        .collect();
    assert_eq!(
        metric_tags,
        [
            "eval/recall@1",
            "eval/recall@2",
            "eval/recall@4",
            "eval/recall@8",
            "train/loss"
        ]
    );
    assert_eq!(
        got["hparams"]["session_end_info"]["status"],
        "STATUS_SUCCESS"
    );
    let steps = &got["hparams"]["steps"];
    assert_eq!(steps["_hparams_/experiment"], json!([0]));
    assert_eq!(steps["_hparams_/session_start_info"], json!([0]));
    assert_eq!(steps["_hparams_/session_end_info"], json!([10]));

    // The HParams dashboard's own answers: columns, and this run as one session group
    // with its hyper-parameters and last metric values.
    let plugin = &got["hparams_plugin"];
    let columns: Vec<&str> = plugin["experiment"]["hparamInfos"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert!(
        columns.contains(&"loss.alpha") && columns.contains(&"optim.name"),
        "columns {columns:?}"
    );
    let groups = plugin["session_groups"]["sessionGroups"]
        .as_array()
        .expect("session groups");
    assert_eq!(groups.len(), 1, "one run, one session group: {groups:?}");
    assert_eq!(groups[0]["hparams"]["loss.alpha"], json!(0.9));
    assert_eq!(groups[0]["hparams"]["model.backbone"], json!("small_cnn"));
    assert_eq!(groups[0]["sessions"][0]["status"], "STATUS_SUCCESS");
    let metric_values = groups[0]["metricValues"].as_array().expect("metric values");
    for (k, value) in &recall_1 {
        let tag = format!("eval/recall@{k}");
        let metric = metric_values
            .iter()
            .find(|m| m["name"]["tag"] == tag.as_str())
            .expect("metric value");
        assert_close(
            metric["value"].as_f64().expect("value"),
            f64::from(*value as f32),
            1e-7,
            &tag,
        );
        assert_eq!(metric["trainingStep"], json!(10), "{tag}: step");
    }

    // Histogram of the embedding norms.
    let h = &got["histograms"]["eval/embedding_norm"][0];
    let norm_values = Vec::<f64>::try_from(norms.to_kind(Kind::Double)).expect("norms");
    assert_eq!(h[0].as_i64(), Some(10));
    assert_eq!(h[3].as_f64(), Some(IMAGES as f64));
    let max_norm = norm_values
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    assert_close(h[2].as_f64().expect("max"), max_norm, 1e-15, "largest norm");

    // The retrieval grid: the same queries and neighbours as a brute-force search, and
    // outlines whose colours say whether each neighbour shares the query's class.
    let queries = spread_queries(IMAGES, GRID_QUERIES);
    let rows = nearest_neighbours(&embeddings, &queries, GRID_NEIGHBOURS).expect("neighbours");
    for row in &rows {
        assert_eq!(
            row.neighbours,
            brute_force_neighbours(&embeddings, row.query, GRID_NEIGHBOURS),
            "query {}",
            row.query
        );
    }
    let style = GridStyle::default();
    let want_grid =
        render_retrieval_grid(&rows, &labels, thumbnail, &style).expect("expected grid");
    let grid_entry = &got["images"][RETRIEVAL_GRID_TAG][0];
    assert_image(grid_entry, 10, &want_grid, RETRIEVAL_GRID_TAG);
    let pixels = hex_bytes(grid_entry[7].as_str().expect("pixels"));
    let decoded =
        RgbImage::from_raw(want_grid.width(), want_grid.height(), pixels).expect("grid size");
    let framed = style.cell + 2 * style.outline;
    let (mut correct, mut wrong) = (0, 0);
    for (r, row) in rows.iter().enumerate() {
        let top = style.gap + r as u32 * (framed + style.gap);
        for (c, &j) in row.neighbours.iter().enumerate() {
            let left = style.gap + (c as u32 + 1) * (framed + style.gap) + style.gap;
            let same = labels[j] == labels[row.query];
            let want = if same {
                Rgb([0, 190, 0])
            } else {
                Rgb([220, 0, 0])
            };
            assert_eq!(
                *decoded.get_pixel(left, top),
                want,
                "outline of neighbour {c} of query {}",
                row.query
            );
            if same {
                correct += 1
            } else {
                wrong += 1
            }
        }
    }
    assert!(
        correct > 0 && wrong > 0,
        "the grid shows both outcomes ({correct} correct, {wrong} wrong)"
    );

    // The projector, through the plugin's HTTP routes.
    let projector = &got["projector"];
    assert_eq!(projector["runs"], json!(["demo"]));
    let names: Vec<&str> = projector["config"]["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|e| e["tensorName"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["test", "test-sub"]);
    let rows_f32 = Vec::<Vec<f32>>::try_from(&embeddings).expect("embedding rows");
    let sub_points: Vec<usize> = (0..16).map(|i| i * IMAGES / 16).collect();
    for (name, points) in [
        ("test", (0..IMAGES).collect::<Vec<_>>()),
        ("test-sub", sub_points),
    ] {
        let tensor = projector["tensors"][name].as_array().expect("tensor rows");
        assert_eq!(tensor.len(), points.len(), "{name}: rows");
        for (row, &p) in tensor.iter().zip(&points) {
            let got_row: Vec<f32> = f64s(row).into_iter().map(|x| x as f32).collect();
            assert_eq!(got_row, rows_f32[p], "{name}: row of point {p}");
        }
        let metadata = projector["metadata"][name].as_str().expect("metadata");
        let mut lines = metadata.lines();
        assert_eq!(lines.next(), Some("index\tlabel\tclass"), "{name}: header");
        let want: Vec<String> = points
            .iter()
            .map(|&p| format!("{p}\t{}\tclass {}", labels[p], labels[p]))
            .collect();
        assert_eq!(lines.collect::<Vec<_>>(), want, "{name}: metadata rows");
    }
    assert!(
        projector["sprites"].get("test-sub").is_none(),
        "no sprite was asked for test-sub"
    );
    let sprite = &projector["sprites"]["test"];
    assert_eq!(sprite[0].as_str(), Some("RGB"));
    assert_eq!(
        (sprite[1].as_u64(), sprite[2].as_u64()),
        (Some(7 * 48), Some(7 * 48)),
        "7 x 7 thumbnails of 48 px"
    );
    let sheet = RgbImage::from_raw(
        7 * 48,
        7 * 48,
        hex_bytes(sprite[3].as_str().expect("sprite pixels")),
    )
    .expect("sprite");
    for i in 0..IMAGES as u32 {
        let (x, y) = ((i % 7) * 48, (i / 7) * 48);
        // 16 x 12 images fill 48 x 36 of each cell, centred: rows 6..42.
        let centre = sheet.get_pixel(x + 24, y + 24).0;
        for (got_channel, want_channel) in centre.iter().zip(colour_of(i as usize)) {
            assert!(
                got_channel.abs_diff(want_channel) <= 1,
                "sprite thumbnail {i}: {centre:?}"
            );
        }
        assert_eq!(
            sheet.get_pixel(x + 24, y + 2).0,
            [255; 3],
            "sprite thumbnail {i}: padding"
        );
    }
}

#[test]
fn a_resumed_session_replaces_what_a_crashed_one_logged_after_its_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Session 1 logs steps 1..=10 and dies; its last checkpoint was at step 5.
    {
        let mut first = SummaryWriter::create(dir.path()).expect("writer");
        first.add_session_start(0).expect("start");
        for step in 1..=10 {
            first.add_scalar("train/loss", 1.0, step).expect("scalar");
        }
        first.flush().expect("flush");
    }
    // Session 2 resumes from step 5 and logs 6..=12 with other values.
    {
        let mut second = SummaryWriter::create(dir.path()).expect("writer");
        second.add_session_start(6).expect("start");
        for step in 6..=12 {
            second.add_scalar("train/loss", 2.0, step).expect("scalar");
        }
    }
    let read = read_with_tensorboard(dir.path());
    let points: Vec<(i64, f64)> = read["scalars"]["train/loss"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| (p[0].as_i64().expect("step"), p[1].as_f64().expect("value")))
        .collect();
    let want: Vec<(i64, f64)> = (1..=12).map(|s| (s, if s <= 5 { 1.0 } else { 2.0 })).collect();
    assert_eq!(points, want);
}
