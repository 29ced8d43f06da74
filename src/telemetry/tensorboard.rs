//! TensorBoard event-file writer (TFRecord framing, Event/Summary protobufs).
//!
//! Scalars, text, images (PNG), histograms and the HParams dashboard's summaries. Owning
//! the few protobuf messages (see `event_proto`, `hparams_proto`) keeps the dependency tree
//! to `prost` and `crc32c` instead of an old `protobuf` runtime and a second image crate.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use prost::Message;

use super::event_proto::{
    Event, EventWhat, PluginData, SessionLog, Summary, SummaryImage, SummaryMetadata,
    SummaryValue, SummaryValueKind, TensorProto, TensorShapeProto, DT_STRING, SESSION_START,
};
use super::histogram::{bucket_values, DEFAULT_BUCKETS};
use super::hparams::{self, HParamValue, SessionStatus};
use crate::error::{HistError, Result};

/// Distinguishes writers created by one process within the same second, which would
/// otherwise get the same file name.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The version string TensorBoard checks in the first record of every event file.
const FILE_VERSION: &str = "brain.Event:2";

/// Appends summaries to one `events.out.tfevents.*` file that TensorBoard can read.
///
/// Writes are buffered; call [`SummaryWriter::flush`] to make them visible to a running
/// TensorBoard. The buffer is also flushed when the writer is dropped.
pub struct SummaryWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl SummaryWriter {
    /// Creates a new event file in `dir`, creating `dir` if it does not exist.
    ///
    /// The file is named `events.out.tfevents.<unix secs>.<hostname>.<pid>.<counter>`, the
    /// pattern TensorBoard scans for, and starts with the file-version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| HistError::io(dir, e))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let counter = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}.{counter}",
            hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        // `create_new` so an unexpected name clash never truncates another run's events.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| HistError::io(&path, e))?;
        let mut writer = SummaryWriter {
            path,
            out: BufWriter::new(file),
        };
        let header = Event {
            wall_time: wall_time(),
            step: 0,
            what: Some(EventWhat::FileVersion(FILE_VERSION.to_string())),
        };
        writer.write_event(&header)?;
        // A file holding just the header lets TensorBoard list the run before any data.
        writer.flush()?;
        Ok(writer)
    }

    /// Path of the event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `value` for the series `tag` at `step`.
    ///
    /// Stored as a legacy `simple_value` (an `f32`), which the scalar dashboard reads
    /// directly, so precision beyond `f32` is lost.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        let value = SummaryValue {
            tag: tag.to_string(),
            metadata: None,
            value: Some(SummaryValueKind::SimpleValue(value as f32)),
        };
        self.write_summary(value, step)
    }

    /// Records `text` (rendered as Markdown by TensorBoard) under `tag` at `step`.
    ///
    /// Written the way the text plugin expects: a scalar `DT_STRING` tensor whose metadata
    /// names the `"text"` plugin.
    pub fn add_text(&mut self, tag: &str, text: &str, step: i64) -> Result<()> {
        let value = SummaryValue {
            tag: tag.to_string(),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".to_string(),
                    // Empty content is the text plugin's version-0 data.
                    content: Vec::new(),
                }),
            }),
            value: Some(SummaryValueKind::Tensor(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto { dim: Vec::new() }),
                string_val: vec![text.as_bytes().to_vec()],
            })),
        };
        self.write_summary(value, step)
    }

    /// Records `image` under `tag` at `step`, PNG-encoded, for the images dashboard.
    pub fn add_image(&mut self, tag: &str, image: &RgbImage, step: i64) -> Result<()> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(HistError::input(
                tag,
                format!("image is {width}x{height}; it needs at least one pixel"),
            ));
        }
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| HistError::input(tag, format!("PNG encoding failed: {e}")))?;
        let value = SummaryValue {
            tag: tag.to_string(),
            metadata: None,
            value: Some(SummaryValueKind::Image(SummaryImage {
                height: height as i32,
                width: width as i32,
                colorspace: 3,
                encoded_image_string: png,
            })),
        };
        self.write_summary(value, step)
    }

    /// Records the distribution of `values` under `tag` at `step` for the histograms and
    /// distributions dashboards: [`DEFAULT_BUCKETS`] equal-width buckets from the smallest
    /// to the largest value. Empty input and NaN/infinite values are refused.
    pub fn add_histogram(&mut self, tag: &str, values: &[f64], step: i64) -> Result<()> {
        let histogram = bucket_values(tag, values, DEFAULT_BUCKETS)?;
        let value = SummaryValue {
            tag: tag.to_string(),
            metadata: None,
            value: Some(SummaryValueKind::Histo(histogram)),
        };
        self.write_summary(value, step)
    }

    /// Declares this run as one HParams session: writes the experiment (a column per
    /// hyper-parameter and per metric; `metrics` are scalar tags of this run, e.g.
    /// `eval/recall@1`) and the session's values, at step 0. Names must be unique.
    pub fn add_hparams(
        &mut self,
        hparams: &[(String, HParamValue)],
        metrics: &[&str],
    ) -> Result<()> {
        let mut names: Vec<&str> = hparams.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(HistError::input(
                "hparams",
                format!("{} is given twice; names must be unique", pair[0]),
            ));
        }
        let now = wall_time();
        self.write_summary(hparams::experiment_summary(hparams, metrics, now), 0)?;
        self.write_summary(hparams::session_start_summary(hparams, now), 0)?;
        self.flush()
    }

    /// Ends the HParams session started by [`SummaryWriter::add_hparams`] with `status`,
    /// recorded at `step`. TensorBoard reads each hparams tag's first record in a run (all
    /// its event files together), so a later end record of the same run is ignored.
    pub fn end_hparams_session(&mut self, status: SessionStatus, step: i64) -> Result<()> {
        self.write_summary(hparams::session_end_summary(status, wall_time()), step)?;
        self.flush()
    }

    /// Marks the start of a session that continues the run from `step` on (a fresh run: 0).
    /// TensorBoard takes the first START of a run as its beginning and, at every later
    /// one, drops the events it read with a step ≥ `step`: what a crashed session logged
    /// after its last checkpoint, which the resumed session logs again.
    pub fn add_session_start(&mut self, step: i64) -> Result<()> {
        let event = Event {
            wall_time: wall_time(),
            step,
            what: Some(EventWhat::SessionLog(SessionLog { status: SESSION_START, checkpoint_path: String::new(), msg: String::new() })),
        };
        self.write_event(&event)?;
        self.flush()
    }

    /// Pushes buffered records to the file so a running TensorBoard sees them.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| HistError::io(&self.path, e))
    }

    fn write_summary(&mut self, value: SummaryValue, step: i64) -> Result<()> {
        let event = Event {
            wall_time: wall_time(),
            step,
            what: Some(EventWhat::Summary(Summary { value: vec![value] })),
        };
        self.write_event(&event)
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        let record = frame_record(&event.encode_to_vec());
        self.out
            .write_all(&record)
            .map_err(|e| HistError::io(&self.path, e))
    }
}

impl Drop for SummaryWriter {
    fn drop(&mut self) {
        // Nothing useful can be done with an error while dropping; flushing is best effort.
        let _ = self.out.flush();
    }
}

/// Frames `data` as one TFRecord: length, CRC of the length, data, CRC of the data.
fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&len);
    record.extend_from_slice(&masked_crc(&len).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc(data).to_le_bytes());
    record
}

/// TFRecord's masked CRC32C; the mask keeps a CRC of data that itself contains CRCs from
/// being degenerate.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name; TensorBoard only needs it to keep files from
/// different machines writing to one shared directory apart.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") == 0, so the masked value is exactly the mask delta.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        // Expected value from TensorBoard's own `masked_crc32c` on the CRC-32C check input.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn record_layout() {
        let record = frame_record(b"abc");
        assert_eq!(record.len(), 3 + 16);
        assert_eq!(&record[..8], &3u64.to_le_bytes());
        assert_eq!(&record[12..15], b"abc");
    }
}
