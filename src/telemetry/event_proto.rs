//! Hand-written prost messages for the subset of TensorFlow's `event.proto`, `summary.proto`,
//! `tensor.proto` and `tensor_shape.proto` that the event writer emits.
//!
//! Field numbers are copied from the TensorFlow/TensorBoard `.proto` files; they are the
//! wire contract, so they must never be renumbered. Writing the structs by hand avoids a
//! `protoc` dependency and a build script for a handful of stable messages.

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch, as a double (TensorBoard's x axis for "relative"/"wall").
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global step the record belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the record carries; only the variants the writer emits are modelled.
    #[prost(oneof = "EventWhat", tags = "3, 5")]
    pub what: Option<EventWhat>,
}

/// The `what` oneof of [`Event`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// File format marker; TensorBoard expects `"brain.Event:2"` in the first record.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// A batch of summary values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`: values recorded at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The recorded values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: one tagged value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// Series name shown in TensorBoard (e.g. `train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Tells TensorBoard which plugin owns a tensor value.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The payload.
    #[prost(oneof = "SummaryValueKind", tags = "2, 8")]
    pub value: Option<SummaryValueKind>,
}

/// The `value` oneof of [`SummaryValue`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SummaryValueKind {
    /// Legacy scalar, which the scalar dashboard still reads directly.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// A tensor, interpreted by the plugin named in the metadata.
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// Owning plugin and its private content.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// Plugin name, e.g. `"text"`.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// Plugin-specific serialized proto; empty means version 0 for the text plugin.
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.DataType::DT_STRING`.
pub const DT_STRING: i32 = 7;

/// `tensorflow.TensorProto`, string tensors only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Element type (`tensorflow.DataType` enum value).
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Shape; no dims means a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// Elements of a `DT_STRING` tensor.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorShapeDim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeDim {
    /// Extent of the dimension.
    #[prost(int64, tag = "1")]
    pub size: i64,
}
