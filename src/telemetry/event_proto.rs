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
    #[prost(oneof = "EventWhat", tags = "3, 5, 7")]
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
    /// A session event; START marks where a (re)started session takes over.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionStatus`: 1 = START, 2 = STOP, 3 = CHECKPOINT.
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// Checkpoint the session relates to, if any.
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    /// Free text.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

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
    #[prost(oneof = "SummaryValueKind", tags = "2, 4, 5, 8")]
    pub value: Option<SummaryValueKind>,
}

/// The `value` oneof of [`SummaryValue`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum SummaryValueKind {
    /// Legacy scalar, which the scalar dashboard still reads directly.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image, shown by the images dashboard.
    #[prost(message, tag = "4")]
    Image(SummaryImage),
    /// A bucketed distribution, shown by the histograms and distributions dashboards.
    #[prost(message, tag = "5")]
    Histo(HistogramProto),
    /// A tensor, interpreted by the plugin named in the metadata.
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryImage {
    /// Height in pixels.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Width in pixels.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The image as a PNG (or JPEG/GIF) file.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.HistogramProto`: bucket `i` counts the values in
/// `[bucket_limit[i - 1], bucket_limit[i])`, the first bucket starting at `min`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramProto {
    /// Smallest value.
    #[prost(double, tag = "1")]
    pub min: f64,
    /// Largest value.
    #[prost(double, tag = "2")]
    pub max: f64,
    /// Number of values.
    #[prost(double, tag = "3")]
    pub num: f64,
    /// Sum of the values.
    #[prost(double, tag = "4")]
    pub sum: f64,
    /// Sum of the squared values.
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    /// Right edge of every bucket.
    #[prost(double, repeated, tag = "6")]
    pub bucket_limit: Vec<f64>,
    /// Count of every bucket.
    #[prost(double, repeated, tag = "7")]
    pub bucket: Vec<f64>,
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

/// `tensorflow.DataType::DT_FLOAT`.
pub const DT_FLOAT: i32 = 1;

/// `tensorflow.DataType::DT_STRING`.
pub const DT_STRING: i32 = 7;

/// `tensorflow.TensorProto`: string tensors, and empty tensors of any type.
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
