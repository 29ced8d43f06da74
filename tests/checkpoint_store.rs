//! The checkpoint store on real files: round trip, retention, corruption, interrupted
//! writers, failed writes, compatibility checks. docs/checkpoints.md describes the format.
use std::fs;
use std::path::{Path, PathBuf};

use hist::checkpoint::{
    check_compat, config_fingerprint, CheckpointMeta, CheckpointStore, CheckpointTensors, Compat,
    FORMAT_VERSION,
};
use tch::{Device, Kind, Tensor};

fn compat() -> Compat {
    Compat {
        train_classes: 100,
        embedding_dim: 128,
        backbone: "small_cnn".into(),
        dtype: "f32".into(),
    }
}

fn meta(step: usize, recall: Option<f64>) -> CheckpointMeta {
    let yaml = format!("seed: 1\nsteps: {step}\n");
    let mut extra = serde_json::Map::new();
    extra.insert("note".into(), serde_json::json!("hello"));
    CheckpointMeta {
        format_version: FORMAT_VERSION,
        global_step: step,
        epoch: step / 4,
        step_in_epoch: step % 4,
        world_size: 2,
        config_hash: config_fingerprint(&yaml),
        config_yaml: yaml,
        compat: compat(),
        epoch_loss_sums: [0.1 + 0.2, 1.0 / 3.0, 2.0f64.sqrt() * step as f64],
        epoch_steps_done: step % 4,
        recall_at_1: recall,
        extra,
    }
}

/// f32 model variables (with a NaN and a -0.0, which only a bit-exact store keeps), an
/// f64 buffer, and Adam-like optimiser state with a 0-d f64 step.
fn tensors(seed: i64) -> CheckpointTensors {
    tch::manual_seed(seed);
    let weight = Tensor::randn([8, 3, 3, 3], (Kind::Float, Device::Cpu));
    let _ = weight.get(0).get(0).get(0).get(0).fill_(f64::NAN);
    let _ = weight.get(0).get(0).get(0).get(1).fill_(-0.0);
    let model = vec![
        ("backbone.unit0.conv.weight".to_string(), weight),
        (
            "backbone.unit0.bn.running_mean".to_string(),
            Tensor::randn([8], (Kind::Double, Device::Cpu)),
        ),
        (
            "head.proj.weight".to_string(),
            Tensor::randn([16, 8], (Kind::Float, Device::Cpu)),
        ),
        (
            "loss.prototypes".to_string(),
            Tensor::randn([5, 16], (Kind::Double, Device::Cpu)),
        ),
    ];
    let optim = vec![
        (
            "head.proj.weight.exp_avg".to_string(),
            Tensor::randn([16, 8], (Kind::Float, Device::Cpu)),
        ),
        (
            "head.proj.weight.exp_avg_sq".to_string(),
            Tensor::rand([16, 8], (Kind::Float, Device::Cpu)),
        ),
        (
            "head.proj.weight.step".to_string(),
            Tensor::scalar_tensor(seed as f64, (Kind::Double, Device::Cpu)),
        ),
    ];
    CheckpointTensors { model, optim }
}

fn raw(t: &Tensor) -> Vec<u8> {
    let n = t.numel();
    let mut bytes = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, n).unwrap();
    bytes
}

fn assert_same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    let mut a: Vec<&(String, Tensor)> = a.iter().collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.into_iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!((ta.kind(), ta.size()), (tb.kind(), tb.size()), "{na}");
        assert_eq!(raw(ta), raw(tb), "{na} differs");
    }
}

fn step_dir(store: &CheckpointStore, step: usize) -> PathBuf {
    store.root().join(format!("step-{step:09}"))
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The tensor names in a safetensors file's header, read as any other reader would.
fn header_names(file: &Path) -> Vec<String> {
    let bytes = fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    names
}

fn two_checkpoints(run: &Path) -> (CheckpointStore, PathBuf, PathBuf) {
    let store = CheckpointStore::new(run, 5);
    let first = store.save(&meta(1, Some(0.5)), &tensors(1)).unwrap();
    let second = store.save(&meta(2, Some(0.4)), &tensors(2)).unwrap();
    (store, first, second)
}

#[test]
fn round_trip_is_bit_identical() {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 2);
    assert!(store.load_latest().unwrap().is_none(), "no checkpoints yet");
    let (m, t) = (meta(7, Some(0.625)), tensors(7));
    let path = store.save(&m, &t).unwrap();
    assert_eq!(path, step_dir(&store, 7));

    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, path);
    assert_eq!(loaded.meta, m);
    for (a, b) in m.epoch_loss_sums.iter().zip(&loaded.meta.epoch_loss_sums) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
    assert!(loaded.skipped.is_empty());
    assert_same_tensors(&t.model, &loaded.tensors.model);
    assert_same_tensors(&t.optim, &loaded.tensors.optim);

    // Plain safetensors with role-prefixed names, as Python's safetensors would list them.
    assert_eq!(
        header_names(&path.join("tensors.safetensors")),
        vec![
            "model/backbone.unit0.bn.running_mean",
            "model/backbone.unit0.conv.weight",
            "model/head.proj.weight",
            "model/loss.prototypes",
            "optim/head.proj.weight.exp_avg",
            "optim/head.proj.weight.exp_avg_sq",
            "optim/head.proj.weight.step",
        ]
    );
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(path.join("meta.json")).unwrap()).unwrap();
    assert_eq!(json["global_step"], 7);
    assert_eq!(json["compat"]["train_classes"], 100);
}

#[test]
fn nan_loss_sums_survive_exactly() {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 1);
    let mut m = meta(3, Some(f64::NAN));
    m.epoch_loss_sums = [f64::NAN, f64::INFINITY, -0.0];
    store.save(&m, &tensors(3)).unwrap();
    let got = store.load_latest().unwrap().unwrap().meta;
    let bits = |x: &[f64; 3]| x.map(f64::to_bits);
    assert_eq!(bits(&got.epoch_loss_sums), bits(&m.epoch_loss_sums));
    assert!(got.recall_at_1.is_some_and(f64::is_nan));
    assert_eq!(store.best().unwrap(), None, "NaN is never the best");
}

#[test]
fn retention_keeps_the_newest_and_the_best() {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 2);
    let recalls = [0.10, 0.70, 0.90, 0.30, 0.90, 0.20];
    for (i, r) in recalls.iter().enumerate() {
        store
            .save(&meta(i + 1, Some(*r)), &tensors(i as i64))
            .unwrap();
    }
    // 0.90 at steps 3 and 5: the newer wins; 5 and 6 are also the two newest.
    assert_eq!(
        names(&store.list().unwrap()),
        vec!["step-000000006", "step-000000005"]
    );
    assert_eq!(store.best().unwrap(), Some(step_dir(&store, 5)));

    // A better one that then falls out of the newest two is still kept.
    store.save(&meta(7, Some(0.95)), &tensors(7)).unwrap();
    store.save(&meta(8, Some(0.10)), &tensors(8)).unwrap();
    store.save(&meta(9, Some(0.10)), &tensors(9)).unwrap();
    assert_eq!(
        names(&store.list().unwrap()),
        vec!["step-000000009", "step-000000008", "step-000000007"]
    );
    let best = store.best().unwrap().unwrap();
    assert_eq!(best, step_dir(&store, 7));
    assert_eq!(
        fs::read_link(store.root().join("best")).unwrap(),
        PathBuf::from("step-000000007")
    );
    let via_link = CheckpointStore::load_dir(&store.root().join("best")).unwrap();
    assert_eq!((via_link.path, via_link.meta.global_step), (best, 7));
}

#[test]
fn truncated_latest_falls_back_with_a_reason() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    let file = second.join("tensors.safetensors");
    let len = fs::metadata(&file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, first);
    assert_eq!(loaded.skipped.len(), 1);
    let (path, reason) = &loaded.skipped[0];
    assert_eq!(path, &second);
    assert!(
        reason.contains("tensors.safetensors") && reason.contains("size mismatch"),
        "{reason}"
    );
    assert_eq!(store.latest_valid().unwrap().unwrap().0, first);
}

#[test]
fn bit_flipped_latest_falls_back_with_a_reason() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    let file = second.join("tensors.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&file, bytes).unwrap();

    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, first);
    let (path, reason) = &loaded.skipped[0];
    assert_eq!(path, &second);
    assert!(reason.contains("checksum mismatch"), "{reason}");
    let err = store.load(&second).unwrap_err().to_string();
    assert!(
        err.contains("step-000000002") && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn edited_metadata_is_caught_by_the_complete_marker() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    let text = fs::read_to_string(second.join("meta.json")).unwrap();
    fs::write(
        second.join("meta.json"),
        text.replace("\"epoch_steps_done\": 2", "\"epoch_steps_done\": 3"),
    )
    .unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, first);
    assert!(
        loaded.skipped[0].1.contains("meta.json"),
        "{}",
        loaded.skipped[0].1
    );
}

#[test]
fn all_corrupt_is_an_error_naming_the_folder() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    for dir in [&first, &second] {
        fs::write(dir.join("tensors.safetensors"), b"garbage").unwrap();
    }
    let err = store.load_latest().unwrap_err().to_string();
    assert!(err.contains(&store.root().display().to_string()), "{err}");
    assert!(err.contains("all 2 checkpoints are unusable"), "{err}");
    assert!(
        err.contains("step-000000001") && err.contains("step-000000002"),
        "{err}"
    );
    assert!(store.latest_valid().is_err());
}

#[test]
fn missing_complete_is_skipped_with_a_reason() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    fs::remove_file(second.join("COMPLETE")).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, first);
    assert!(
        loaded.skipped[0].1.contains("COMPLETE is missing"),
        "{}",
        loaded.skipped[0].1
    );

    // Only interrupted checkpoints: nothing finished to resume from, so a fresh start.
    fs::remove_file(first.join("COMPLETE")).unwrap();
    assert!(store.load_latest().unwrap().is_none());
}

#[test]
fn killed_writer_leftovers_are_never_loaded_and_are_cleaned_up() {
    let run = tempfile::tempdir().unwrap();
    let (store, first, second) = two_checkpoints(run.path());
    let root = store.root().to_path_buf();
    // Killed while staging step 4: a scratch folder with a partial tensor file; it even
    // has a COMPLETE copied in, which must not matter.
    let scratch = root.join(".tmp-step-000000004-4242-0");
    fs::create_dir(&scratch).unwrap();
    let full = fs::read(second.join("tensors.safetensors")).unwrap();
    fs::write(scratch.join("tensors.safetensors"), &full[..full.len() / 3]).unwrap();
    fs::copy(second.join("COMPLETE"), scratch.join("COMPLETE")).unwrap();
    // Killed between the rename and the marker of step 3.
    let renamed = root.join("step-000000003");
    fs::create_dir(&renamed).unwrap();
    fs::copy(
        second.join("tensors.safetensors"),
        renamed.join("tensors.safetensors"),
    )
    .unwrap();
    fs::copy(second.join("meta.json"), renamed.join("meta.json")).unwrap();

    assert_eq!(
        names(&store.list().unwrap()),
        vec!["step-000000003", "step-000000002", "step-000000001"]
    );
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, second);
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].0, renamed);

    // The next save clears the scratch and the unfinished folder.
    store.save(&meta(5, None), &tensors(5)).unwrap();
    assert!(!scratch.exists() && !renamed.exists());
    assert_eq!(
        names(&store.list().unwrap()),
        vec!["step-000000005", "step-000000002", "step-000000001"]
    );
    let _ = first;
}

#[test]
fn failed_write_keeps_the_previous_checkpoint_and_names_the_file() {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 1);
    let first = store.save(&meta(1, Some(0.3)), &tensors(1)).unwrap();
    // safetensors has no complex dtype: the tensor file cannot be written.
    let mut bad = tensors(2);
    bad.optim.push((
        "z".into(),
        Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu)),
    ));
    let err = store
        .save(&meta(2, Some(0.9)), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensors.safetensors") && err.contains("cannot write"),
        "{err}"
    );
    assert_eq!(store.list().unwrap(), vec![first.clone()]);
    assert_eq!(
        fs::read_dir(store.root()).unwrap().count(),
        2,
        "only step-000000001 and best"
    );
    assert_eq!(store.load_latest().unwrap().unwrap().path, first);

    // A run directory that cannot hold folders (its path runs through a regular file).
    let file = run.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = CheckpointStore::new(&file, 1)
        .save(&meta(1, None), &tensors(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not-a-dir"), "{err}");
}

#[test]
fn duplicate_names_are_refused() {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 1);
    let mut t = tensors(1);
    let again = t.model[0].1.copy();
    t.model.push((t.model[0].0.clone(), again));
    let err = store.save(&meta(1, None), &t).unwrap_err().to_string();
    assert!(
        err.contains("duplicate") && err.contains("model/backbone.unit0.conv.weight"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn check_compat_names_every_mismatch() {
    let m = meta(100, None);
    assert!(check_compat(&m, &compat()).is_ok());
    let now = Compat {
        train_classes: 98,
        embedding_dim: 512,
        backbone: "resnet50".into(),
        dtype: "f64".into(),
    };
    let err = check_compat(&m, &now).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    for part in [
        "checkpoint step-000000100",
        "100 training classes, this config has 98",
        "embedding_dim 128, this config has 512",
        "backbone small_cnn, this config has resnet50",
        "dtype f32, this config has f64",
    ] {
        assert!(err.contains(part), "missing {part:?} in {err}");
    }
    let only_dim = Compat {
        embedding_dim: 64,
        ..compat()
    };
    let err = check_compat(&m, &only_dim).unwrap_err().to_string();
    assert!(
        err.contains("embedding_dim 128, this config has 64") && !err.contains("backbone"),
        "{err}"
    );
}

#[test]
fn errors_are_one_line_and_name_the_place() {
    let run = tempfile::tempdir().unwrap();
    let (store, _, second) = two_checkpoints(run.path());
    let missing = store.root().join("step-000000099");
    let err = store.load(&missing).unwrap_err().to_string();
    assert!(
        err.contains("step-000000099") && err.contains("no such checkpoint folder"),
        "{err}"
    );
    fs::write(second.join("meta.json"), b"{").unwrap();
    let mut all = vec![err, store.load(&second).unwrap_err().to_string()];
    fs::remove_file(second.join("COMPLETE")).unwrap();
    all.push(store.load(&second).unwrap_err().to_string());
    for err in &all {
        eprintln!("{err}");
        assert!(!err.contains('\n') && err.contains("step-0000000"), "{err}");
    }
}
