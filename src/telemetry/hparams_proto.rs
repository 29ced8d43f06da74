//! Hand-written prost messages for the HParams plugin: the subset of TensorBoard's
//! `tensorboard/plugins/hparams/plugin_data.proto` and `api.proto`, and of
//! `google/protobuf/struct.proto`, that hist writes.
//!
//! Field numbers and enum values are copied from those files (checked against the
//! descriptors of `tensorboard` 2.21's `plugin_data_pb2` / `api_pb2`); they are the wire
//! contract and must never be renumbered.

/// `tensorboard.hparams.HParamsPluginData`: the `content` of an hparams summary's metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamsPluginData {
    /// Plugin data version; the plugin accepts only 0.
    #[prost(int32, tag = "1")]
    pub version: i32,
    /// Which of the three hparams summaries this is.
    #[prost(oneof = "HParamsData", tags = "2, 3, 4")]
    pub data: Option<HParamsData>,
}

/// The `data` oneof of [`HParamsPluginData`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HParamsData {
    /// Declares the hyper-parameters and metrics (tag `_hparams_/experiment`).
    #[prost(message, tag = "2")]
    Experiment(Experiment),
    /// One session's hyper-parameter values (tag `_hparams_/session_start_info`).
    #[prost(message, tag = "3")]
    SessionStartInfo(SessionStartInfo),
    /// How the session ended (tag `_hparams_/session_end_info`).
    #[prost(message, tag = "4")]
    SessionEndInfo(SessionEndInfo),
}

/// `tensorboard.hparams.Experiment`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Experiment {
    /// Markdown description.
    #[prost(string, tag = "1")]
    pub description: String,
    /// Who ran it.
    #[prost(string, tag = "2")]
    pub user: String,
    /// Creation time, seconds since the Unix epoch.
    #[prost(double, tag = "3")]
    pub time_created_secs: f64,
    /// The hyper-parameters (the columns of the HParams table).
    #[prost(message, repeated, tag = "4")]
    pub hparam_infos: Vec<HParamInfo>,
    /// The metrics shown beside them (scalar tags of the session's run).
    #[prost(message, repeated, tag = "5")]
    pub metric_infos: Vec<MetricInfo>,
    /// Experiment name.
    #[prost(string, tag = "6")]
    pub name: String,
}

/// `tensorboard.hparams.HParamInfo` (without the optional domain).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HParamInfo {
    /// Key used in [`SessionStartInfo::hparams`].
    #[prost(string, tag = "1")]
    pub name: String,
    /// Column title; empty means `name`.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// Tooltip text.
    #[prost(string, tag = "3")]
    pub description: String,
    /// A `DATA_TYPE_*` value.
    #[prost(int32, tag = "4")]
    pub r#type: i32,
}

/// `tensorboard.hparams.DataType::DATA_TYPE_STRING`.
pub const DATA_TYPE_STRING: i32 = 1;
/// `tensorboard.hparams.DataType::DATA_TYPE_BOOL`.
pub const DATA_TYPE_BOOL: i32 = 2;
/// `tensorboard.hparams.DataType::DATA_TYPE_FLOAT64`.
pub const DATA_TYPE_FLOAT64: i32 = 3;

/// `tensorboard.hparams.MetricName`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricName {
    /// Run path relative to the session's run; empty for the session's own run.
    #[prost(string, tag = "1")]
    pub group: String,
    /// Scalar tag.
    #[prost(string, tag = "2")]
    pub tag: String,
}

/// `tensorboard.hparams.MetricInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricInfo {
    /// Which scalar series the metric is.
    #[prost(message, optional, tag = "1")]
    pub name: Option<MetricName>,
    /// Column title; empty means the tag.
    #[prost(string, tag = "3")]
    pub display_name: String,
    /// Tooltip text.
    #[prost(string, tag = "4")]
    pub description: String,
    /// A `DatasetType` value; 0 is unknown.
    #[prost(int32, tag = "5")]
    pub dataset_type: i32,
}

/// `tensorboard.hparams.SessionStartInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionStartInfo {
    /// Hyper-parameter values by name.
    #[prost(btree_map = "string, message", tag = "1")]
    pub hparams: std::collections::BTreeMap<String, ProtoValue>,
    /// Where the trained model lives.
    #[prost(string, tag = "2")]
    pub model_uri: String,
    /// A URL to follow the session.
    #[prost(string, tag = "3")]
    pub monitor_url: String,
    /// Sessions sharing a group name are aggregated; empty means the run name.
    #[prost(string, tag = "4")]
    pub group_name: String,
    /// Start time, seconds since the Unix epoch.
    #[prost(double, tag = "5")]
    pub start_time_secs: f64,
}

/// `tensorboard.hparams.SessionEndInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEndInfo {
    /// A `tensorboard.hparams.Status` value.
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// End time, seconds since the Unix epoch.
    #[prost(double, tag = "2")]
    pub end_time_secs: f64,
}

/// `google.protobuf.Value`, without the struct and list kinds hist never writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoValue {
    /// The value.
    #[prost(oneof = "ProtoValueKind", tags = "2, 3, 4")]
    pub kind: Option<ProtoValueKind>,
}

/// The `kind` oneof of [`ProtoValue`] (`number_value`, `string_value`, `bool_value`).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ProtoValueKind {
    /// A double.
    #[prost(double, tag = "2")]
    Number(f64),
    /// A UTF-8 string.
    #[prost(string, tag = "3")]
    Text(String),
    /// A boolean.
    #[prost(bool, tag = "4")]
    Bool(bool),
}
