//! The HParams dashboard's three summaries (experiment, session start, session end), built
//! as TensorBoard's own `tensorboard.plugins.hparams.summary` builds them, and the
//! flattening of a nested config into dotted hyper-parameter names.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::Value;

use super::event_proto::{
    PluginData, SummaryMetadata, SummaryValue, SummaryValueKind, TensorProto, TensorShapeDim,
    TensorShapeProto, DT_FLOAT,
};
use super::hparams_proto::{
    Experiment, HParamInfo, HParamsData, HParamsPluginData, MetricInfo, MetricName, ProtoValue,
    ProtoValueKind, SessionEndInfo, SessionStartInfo, DATA_TYPE_BOOL, DATA_TYPE_FLOAT64,
    DATA_TYPE_STRING,
};

/// Plugin name TensorBoard routes these summaries by.
const PLUGIN_NAME: &str = "hparams";
/// The only plugin data version the HParams plugin accepts.
const PLUGIN_DATA_VERSION: i32 = 0;
/// Tag of the summary declaring hyper-parameters and metrics.
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
/// Tag of the summary holding one session's hyper-parameter values.
pub const SESSION_START_INFO_TAG: &str = "_hparams_/session_start_info";
/// Tag of the summary holding how the session ended.
pub const SESSION_END_INFO_TAG: &str = "_hparams_/session_end_info";

/// One hyper-parameter value, in the three types the HParams dashboard knows.
#[derive(Debug, Clone, PartialEq)]
pub enum HParamValue {
    /// Integers and floats (shown and filtered as numbers).
    Number(f64),
    /// Strings (enums, paths, lists written out).
    Text(String),
    /// Booleans.
    Bool(bool),
}

impl HParamValue {
    fn data_type(&self) -> i32 {
        match self {
            HParamValue::Number(_) => DATA_TYPE_FLOAT64,
            HParamValue::Text(_) => DATA_TYPE_STRING,
            HParamValue::Bool(_) => DATA_TYPE_BOOL,
        }
    }

    fn to_proto(&self) -> ProtoValue {
        let kind = match self {
            HParamValue::Number(x) => ProtoValueKind::Number(*x),
            HParamValue::Text(s) => ProtoValueKind::Text(s.clone()),
            HParamValue::Bool(b) => ProtoValueKind::Bool(*b),
        };
        ProtoValue { kind: Some(kind) }
    }
}

/// How a training session ended (`tensorboard.hparams.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Finished normally.
    Success,
    /// Stopped by an error.
    Failure,
    /// Still running (e.g. stopped by a signal, to be resumed).
    Running,
}

impl SessionStatus {
    fn to_proto(self) -> i32 {
        match self {
            SessionStatus::Success => 1,
            SessionStatus::Failure => 2,
            SessionStatus::Running => 3,
        }
    }
}

/// Flattens a JSON tree (e.g. a serialized config) into dotted names:
/// `{"loss": {"tau": 32}}` gives `loss.tau = 32`. Numbers become [`HParamValue::Number`],
/// strings and booleans keep their type, arrays are written out as their JSON text, and
/// nulls (unset optional keys) are left out. Sorted by name.
pub fn flatten_hparams(tree: &Value) -> Vec<(String, HParamValue)> {
    let mut out = Vec::new();
    flatten_into(tree, String::new(), &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn flatten_into(value: &Value, name: String, out: &mut Vec<(String, HParamValue)>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((name, HParamValue::Bool(*b))),
        Value::Number(n) => {
            // serde_json numbers always convert to f64 (large integers lose digits only
            // past 2^53, far beyond any hyper-parameter).
            if let Some(x) = n.as_f64() {
                out.push((name, HParamValue::Number(x)));
            }
        }
        Value::String(s) => out.push((name, HParamValue::Text(s.clone()))),
        Value::Array(_) => out.push((name, HParamValue::Text(value.to_string()))),
        Value::Object(map) => {
            for (key, child) in map {
                let child_name = if name.is_empty() {
                    key.clone()
                } else {
                    format!("{name}.{key}")
                };
                flatten_into(child, child_name, out);
            }
        }
    }
}

/// The `_hparams_/experiment` summary: one column per hyper-parameter (typed by its value)
/// and one per metric, a scalar tag of the same run.
pub(crate) fn experiment_summary(
    hparams: &[(String, HParamValue)],
    metrics: &[&str],
    time_created_secs: f64,
) -> SummaryValue {
    let experiment = Experiment {
        time_created_secs,
        hparam_infos: hparams
            .iter()
            .map(|(name, value)| HParamInfo {
                name: name.clone(),
                r#type: value.data_type(),
                ..HParamInfo::default()
            })
            .collect(),
        metric_infos: metrics
            .iter()
            .map(|tag| MetricInfo {
                // An empty group means "in the session's own run", where hist logs them.
                name: Some(MetricName {
                    group: String::new(),
                    tag: tag.to_string(),
                }),
                ..MetricInfo::default()
            })
            .collect(),
        ..Experiment::default()
    };
    summary_value(EXPERIMENT_TAG, HParamsData::Experiment(experiment))
}

/// The `_hparams_/session_start_info` summary with this run's values.
pub(crate) fn session_start_summary(
    hparams: &[(String, HParamValue)],
    start_time_secs: f64,
) -> SummaryValue {
    let values: BTreeMap<String, ProtoValue> = hparams
        .iter()
        .map(|(name, value)| (name.clone(), value.to_proto()))
        .collect();
    let info = SessionStartInfo {
        hparams: values,
        start_time_secs,
        ..SessionStartInfo::default()
    };
    summary_value(SESSION_START_INFO_TAG, HParamsData::SessionStartInfo(info))
}

/// The `_hparams_/session_end_info` summary.
pub(crate) fn session_end_summary(status: SessionStatus, end_time_secs: f64) -> SummaryValue {
    let info = SessionEndInfo {
        status: status.to_proto(),
        end_time_secs,
    };
    summary_value(SESSION_END_INFO_TAG, HParamsData::SessionEndInfo(info))
}

/// Wraps plugin data the way `tensorboard.plugins.hparams.summary._summary` does: the data
/// lives in the metadata, the value is the plugin's `NULL_TENSOR` (an empty float vector).
fn summary_value(tag: &str, data: HParamsData) -> SummaryValue {
    let content = HParamsPluginData {
        version: PLUGIN_DATA_VERSION,
        data: Some(data),
    };
    SummaryValue {
        tag: tag.to_string(),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: PLUGIN_NAME.to_string(),
                content: content.encode_to_vec(),
            }),
        }),
        value: Some(SummaryValueKind::Tensor(null_tensor())),
    }
}

/// `tensorboard.plugins.hparams.metadata.NULL_TENSOR`: dtype float, shape [0], no values.
fn null_tensor() -> TensorProto {
    TensorProto {
        dtype: DT_FLOAT,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![TensorShapeDim { size: 0 }],
        }),
        string_val: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_tensor_matches_tensorboard_bytes() {
        // `metadata.NULL_TENSOR.SerializeToString()` in tensorboard 2.21.
        assert_eq!(null_tensor().encode_to_vec(), b"\x08\x01\x12\x02\x12\x00");
    }

    #[test]
    fn flattening_uses_dotted_names_and_keeps_types() {
        let tree = serde_json::json!({
            "name": "demo",
            "loss": {"tau": 32, "alpha": 1.1},
            "data": {"hflip": true, "root": null, "sizes": [1, 2]},
        });
        let flat = flatten_hparams(&tree);
        let expected = vec![
            ("data.hflip".to_string(), HParamValue::Bool(true)),
            (
                "data.sizes".to_string(),
                HParamValue::Text("[1,2]".to_string()),
            ),
            ("loss.alpha".to_string(), HParamValue::Number(1.1)),
            ("loss.tau".to_string(), HParamValue::Number(32.0)),
            ("name".to_string(), HParamValue::Text("demo".to_string())),
        ];
        assert_eq!(flat, expected);
    }
}
