//! A save that fails at any step of the protocol (as a full disk would make it) leaves the
//! earlier checkpoint loadable, nothing of its own under a checkpoint's name, and an error
//! naming the file.
use tch::{Device, Kind, Tensor};

use super::durable::fail_next;
use super::layout::temp_entries;
use super::{CheckpointMeta, CheckpointStore, CheckpointTensors, Compat};

fn meta(step: usize) -> CheckpointMeta {
    let compat = Compat {
        train_classes: 2,
        embedding_dim: 3,
        backbone: "small_cnn".into(),
        dtype: "f32".into(),
    };
    CheckpointMeta::first_epoch(step, compat)
}

fn tensors(value: f64) -> CheckpointTensors {
    let w = Tensor::full([2, 3], value, (Kind::Float, Device::Cpu));
    CheckpointTensors {
        model: vec![("w".into(), w)],
        optim: vec![],
    }
}

#[test]
fn every_failure_point_keeps_the_previous_checkpoint() {
    for (stage, file) in [
        ("tensors", "tensors.safetensors"),
        ("meta", "meta.json"),
        ("publish", "step-000000002"),
        ("complete", "COMPLETE"),
    ] {
        let run = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(run.path(), 3);
        let first = store.save(&meta(1), &tensors(1.0)).unwrap();
        fail_next(stage);
        let err = store.save(&meta(2), &tensors(2.0)).unwrap_err().to_string();
        assert!(
            err.contains(file) && err.contains("No space left"),
            "{stage}: {err}"
        );
        assert_eq!(store.list().unwrap(), vec![first.clone()], "{stage}");
        assert!(
            temp_entries(store.root()).unwrap().is_empty(),
            "{stage}: scratch left behind"
        );
        let loaded = store.load_latest().unwrap().unwrap();
        assert_eq!(
            (loaded.path, loaded.meta.global_step, loaded.skipped.len()),
            (first, 1, 0),
            "{stage}"
        );
    }
}

/// A store (in a temporary folder, kept alive by the first value) holding a checkpoint of
/// step 5 whose tensors are 1.0, and that checkpoint's folder.
fn saved_step_5() -> (tempfile::TempDir, CheckpointStore, std::path::PathBuf) {
    let run = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(run.path(), 3);
    let path = store.save(&meta(5), &tensors(1.0)).unwrap();
    (run, store, path)
}

#[test]
fn failed_replacement_of_the_same_step_restores_the_old_one() {
    let (_run, store, path) = saved_step_5();
    fail_next("publish");
    assert!(store.save(&meta(5), &tensors(2.0)).is_err());
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.path, path);
    assert_eq!(loaded.tensors.model[0].1.double_value(&[0, 0]), 1.0);
    // And a successful replacement takes the new tensors.
    store.save(&meta(5), &tensors(2.0)).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.tensors.model[0].1.double_value(&[0, 0]), 2.0);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn replacement_without_an_atomic_exchange_still_replaces() {
    let (_run, store, path) = saved_step_5();
    fail_next("exchange");
    assert_eq!(store.save(&meta(5), &tensors(2.0)).unwrap(), path);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!((loaded.tensors.model[0].1.double_value(&[0, 0]), loaded.skipped.len()), (2.0, 0));
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(temp_entries(store.root()).unwrap().is_empty(), "scratch left behind");
}

#[test]
fn an_exchanged_replacement_leaves_no_scratch_and_the_new_tensors() {
    let (_run, store, path) = saved_step_5();
    assert_eq!(store.save(&meta(5), &tensors(3.0)).unwrap(), path);
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.tensors.model[0].1.double_value(&[0, 0]), 3.0);
    assert!(temp_entries(store.root()).unwrap().is_empty(), "scratch left behind");
}
