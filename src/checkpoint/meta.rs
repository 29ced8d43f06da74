//! The metadata saved beside a checkpoint's tensors, and its JSON form on disk.
//!
//! meta.json is [`CheckpointMeta`]'s fields at the top level (readable by anything that
//! reads JSON), plus two keys of the store's own: `tensors` (size, CRC32C and counts of
//! the tensor file) and `exact_f64_bits` (the loss sums and Recall@1 as IEEE-754 bit
//! patterns). The bits are what is loaded: serde_json's default float parser may be one
//! ulp off, and a resumed run must continue from exactly the same sums; they also carry
//! NaN and infinities, which JSON numbers cannot.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::digest::FileDigest;

/// Version of the on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Small metadata saved as JSON beside the tensors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// Must be [`FORMAT_VERSION`]; a checkpoint from another version is not loaded.
    pub format_version: u32,
    /// Optimiser steps done; also the checkpoint's folder name.
    pub global_step: usize,
    /// 0-based epoch the next step belongs to.
    pub epoch: usize,
    /// Index of the next step within that epoch.
    pub step_in_epoch: usize,
    /// Ranks of the run that wrote it (informational: the batch plan does not depend on it).
    pub world_size: usize,
    /// Fingerprint of the resolved config ([`super::config_fingerprint`] of `config_yaml`).
    pub config_hash: String,
    /// The resolved config as YAML.
    pub config_yaml: String,
    /// What must match for a run to resume from this checkpoint.
    pub compat: Compat,
    /// Running (total, ds, ce) loss sums of the current epoch, so metrics stay exact.
    pub epoch_loss_sums: [f64; 3],
    /// Steps of the current epoch already summed into `epoch_loss_sums`.
    pub epoch_steps_done: usize,
    /// Recall@1 of the last evaluation, for keep-best; `None` before the first one.
    pub recall_at_1: Option<f64>,
    /// Anything else the caller wants to keep (floats here round-trip through serde_json's
    /// parser, which may be one ulp off; store exact values as tensors instead).
    #[serde(default)]
    pub extra: Map<String, Value>,
}

impl CheckpointMeta {
    /// Metadata of a one-rank run `step` steps into its first epoch, with no config, loss
    /// sums or evaluation: what benchmarks and tests of the store itself save.
    pub(crate) fn first_epoch(step: usize, compat: Compat) -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            global_step: step,
            epoch: 0,
            step_in_epoch: step,
            world_size: 1,
            config_hash: String::new(),
            config_yaml: String::new(),
            compat,
            epoch_loss_sums: [0.0; 3],
            epoch_steps_done: 0,
            recall_at_1: None,
            extra: Map::new(),
        }
    }
}

/// What must match between a checkpoint and the run resuming from it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compat {
    /// Classes in the training split (the size of the loss's class prototypes).
    pub train_classes: i64,
    /// Width of the embedding.
    pub embedding_dim: i64,
    /// Backbone name as the config spells it.
    pub backbone: String,
    /// Floating-point type of the parameters, as the config spells it.
    pub dtype: String,
}

/// What meta.json records about the tensor file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorsRecord {
    pub file: String,
    #[serde(flatten)]
    pub digest: FileDigest,
    pub model: usize,
    pub optim: usize,
}

const TENSORS_KEY: &str = "tensors";
const BITS_KEY: &str = "exact_f64_bits";

#[derive(Serialize, Deserialize)]
struct ExactBits {
    epoch_loss_sums: [String; 3],
    recall_at_1: Option<String>,
}

fn to_bits(x: f64) -> String {
    format!("{:016x}", x.to_bits())
}

fn from_bits(s: &str) -> Option<f64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok().map(f64::from_bits))
        .flatten()
}

/// meta.json's bytes for `meta` and its tensor file (pretty-printed: people read it).
pub(crate) fn encode(meta: &CheckpointMeta, tensors: &TensorsRecord) -> Result<Vec<u8>, String> {
    let mut object = match serde_json::to_value(meta) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err("metadata did not serialise to a JSON object".into()),
        Err(e) => return Err(format!("cannot serialise metadata: {e}")),
    };
    let bits = ExactBits {
        epoch_loss_sums: meta.epoch_loss_sums.map(to_bits),
        recall_at_1: meta.recall_at_1.map(to_bits),
    };
    let encode_err = |e: serde_json::Error| format!("cannot serialise metadata: {e}");
    object.insert(
        TENSORS_KEY.into(),
        serde_json::to_value(tensors).map_err(encode_err)?,
    );
    object.insert(
        BITS_KEY.into(),
        serde_json::to_value(bits).map_err(encode_err)?,
    );
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(object)).map_err(encode_err)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parses meta.json's bytes; the error is one line saying what is wrong.
pub(crate) fn decode(bytes: &[u8]) -> Result<(CheckpointMeta, TensorsRecord), String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("is not valid JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("is not a JSON object".into());
    };
    match object.get("format_version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "has format_version {v}, this build reads {FORMAT_VERSION}"
            ))
        }
        None => return Err("has no format_version".into()),
    }
    let tensors: TensorsRecord = take(&mut object, TENSORS_KEY)?;
    let bits: ExactBits = take(&mut object, BITS_KEY)?;
    let mut sums = [0.0; 3];
    for (slot, text) in sums.iter_mut().zip(&bits.epoch_loss_sums) {
        *slot = from_bits(text)
            .ok_or_else(|| format!("{BITS_KEY}.epoch_loss_sums has bad bits {text:?}"))?;
    }
    let recall = match &bits.recall_at_1 {
        Some(text) => Some(
            from_bits(text)
                .ok_or_else(|| format!("{BITS_KEY}.recall_at_1 has bad bits {text:?}"))?,
        ),
        None => None,
    };
    // The readable copies may be null (NaN) or an ulp off; the bits replace them.
    object.insert("epoch_loss_sums".into(), serde_json::json!([0.0, 0.0, 0.0]));
    object.insert(
        "recall_at_1".into(),
        if recall.is_some() {
            serde_json::json!(0.0)
        } else {
            Value::Null
        },
    );
    let mut meta: CheckpointMeta = serde_json::from_value(Value::Object(object))
        .map_err(|e| format!("has bad metadata: {e}"))?;
    meta.epoch_loss_sums = sums;
    meta.recall_at_1 = recall;
    Ok((meta, tensors))
}

fn take<T: serde::de::DeserializeOwned>(
    object: &mut Map<String, Value>,
    key: &str,
) -> Result<T, String> {
    let value = object
        .remove(key)
        .ok_or_else(|| format!("has no {key:?} entry"))?;
    serde_json::from_value(value).map_err(|e| format!("has a bad {key:?} entry: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            global_step: 7,
            epoch: 1,
            step_in_epoch: 3,
            world_size: 2,
            config_hash: "crc32c:00000000".into(),
            config_yaml: "a: 1\n".into(),
            compat: Compat {
                train_classes: 4,
                embedding_dim: 8,
                backbone: "small_cnn".into(),
                dtype: "f32".into(),
            },
            epoch_loss_sums: [0.1 + 0.2, f64::NAN, -f64::INFINITY],
            epoch_steps_done: 3,
            recall_at_1: Some(1.0 / 3.0),
            extra: Map::new(),
        }
    }

    fn record() -> TensorsRecord {
        TensorsRecord {
            file: "t".into(),
            digest: FileDigest::of_bytes(b"x"),
            model: 1,
            optim: 0,
        }
    }

    #[test]
    fn round_trip_is_bit_exact_even_for_nan_and_infinity() {
        let meta = sample();
        let (back, rec) = decode(&encode(&meta, &record()).unwrap()).unwrap();
        assert_eq!(rec, record());
        for (a, b) in meta.epoch_loss_sums.iter().zip(&back.epoch_loss_sums) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(
            back.recall_at_1.map(f64::to_bits),
            meta.recall_at_1.map(f64::to_bits)
        );
        assert_eq!(back.compat, meta.compat);
        assert_eq!(back.config_yaml, meta.config_yaml);
    }

    #[test]
    fn other_format_versions_are_refused_by_number() {
        let mut meta = sample();
        meta.format_version = 99;
        let err = decode(&encode(&meta, &record()).unwrap()).unwrap_err();
        assert!(err.contains("format_version 99"), "{err}");
    }
}
