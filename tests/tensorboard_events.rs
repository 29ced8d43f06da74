//! Checks the event writer against the real `tensorboard` package: whatever hist writes must
//! load through TensorBoard's own `EventAccumulator` with every tag, step and value intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hist::telemetry::tensorboard::SummaryWriter;
use serde_json::Value;

/// Runs tests/reference/read_tensorboard.py on `dir` and returns its JSON.
fn read_with_tensorboard(dir: &Path) -> Value {
    // A missing interpreter must fail loudly: skipping would hide a broken writer.
    let python = std::env::var("HIST_PYTHON").unwrap_or_else(|_| {
        panic!("HIST_PYTHON is not set; run scripts/setup.sh to create the Python venv and .cargo/config.toml")
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/read_tensorboard.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(dir)
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
