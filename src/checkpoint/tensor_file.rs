//! A checkpoint's safetensors file, written from and read into tensor memory directly: one
//! copy each way, as torch.save/torch.load do, instead of staging every tensor in a byte
//! buffer first. Reading computes the CRC32C in the same pass.
//!
//! The safetensors layout (8-byte little-endian header length, JSON header naming each
//! tensor's dtype, shape and byte range, then the data in one contiguous block) is read
//! here directly; every range is checked before any byte lands in a tensor. The tensors
//! are handed out only when the whole file's checksum matches the one meta.json recorded.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::digest::{hex32, FileDigest};
use super::layout::{META_FILE, TENSORS_FILE};

/// Header of a file larger than this is not a checkpoint we wrote (names are short).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Why the file could not be loaded.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The file could not be read (permissions, I/O error).
    Io(String),
    /// The bytes are wrong: checksum, size or structure.
    Corrupt(String),
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn dtype_of(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Double => "F64",
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// The bytes of a contiguous CPU tensor.
fn bytes_of(tensor: &Tensor) -> &[u8] {
    let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
    if len == 0 {
        return &[];
    }
    // SAFETY: callers pass contiguous CPU tensors (checked in `write`), whose storage holds
    // numel × element size bytes from data_ptr; the slice lives no longer than the borrow.
    unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const u8, len) }
}

/// Writes `tensors` (contiguous, on the CPU) to `path` in the safetensors format, which
/// Python's `safetensors.torch.load_file` reads; does not sync.
pub(crate) fn write(path: &Path, tensors: &[(String, Tensor)]) -> std::io::Result<()> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        if tensor.device() != Device::Cpu || !tensor.is_contiguous() {
            return Err(invalid(format!("{name}: only contiguous CPU tensors can be written")));
        }
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| invalid(format!("{name}: unsupported kind {:?}", tensor.kind())))?;
        let len = bytes_of(tensor).len();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": tensor.size(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| invalid(e.to_string()))?;
    // The data starts 8-byte aligned, as the format recommends (padding is spaces).
    json.resize((8 + json.len()).div_ceil(8) * 8 - 8, b' ');
    let mut file = File::create(path)?;
    file.write_all(&(json.len() as u64).to_le_bytes())?;
    file.write_all(&json)?;
    for (_, tensor) in tensors {
        file.write_all(bytes_of(tensor))?;
    }
    file.flush()
}

fn kind_of(dtype: &str) -> Option<(Kind, u64)> {
    Some(match dtype {
        "F64" => (Kind::Double, 8),
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "I64" => (Kind::Int64, 8),
        "I32" => (Kind::Int, 4),
        "I16" => (Kind::Int16, 2),
        "I8" => (Kind::Int8, 1),
        "U8" => (Kind::Uint8, 1),
        "BOOL" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// A tensor's place in the file, checked against the header's promises.
struct Planned {
    name: String,
    kind: Kind,
    shape: Vec<i64>,
    start: u64,
    end: u64,
}

fn plan(header: &[u8], data_bytes: u64) -> Result<Vec<Planned>, String> {
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let mut planned = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: HeaderEntry = serde_json::from_value(value).map_err(|e| format!("header entry {name:?}: {e}"))?;
        let (kind, element) = kind_of(&entry.dtype).ok_or_else(|| format!("{name:?} has unsupported dtype {}", entry.dtype))?;
        let numel = entry.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).ok_or_else(|| format!("{name:?} has an impossible shape"))?;
        let [start, end] = entry.data_offsets;
        if end < start || end - start != numel.saturating_mul(element) {
            return Err(format!("{name:?}: byte range {start}..{end} does not hold {numel} {} values", entry.dtype));
        }
        let shape = entry.shape.iter().map(|&d| i64::try_from(d).map_err(|_| format!("{name:?} has an impossible shape"))).collect::<Result<_, _>>()?;
        planned.push(Planned { name, kind, shape, start, end });
    }
    planned.sort_by_key(|p| (p.start, p.end));
    let mut at = 0;
    for p in &planned {
        if p.start != at {
            return Err(format!("{:?} starts at byte {} of the data, expected {at}", p.name, p.start));
        }
        at = p.end;
    }
    if at != data_bytes {
        return Err(format!("the tensors cover {at} bytes of data, the file holds {data_bytes}"));
    }
    Ok(planned)
}

fn read_exact(file: &mut File, buf: &mut [u8], crc: &mut u32) -> Result<(), ReadFailure> {
    file.read_exact(buf).map_err(|e| ReadFailure::Io(format!("{TENSORS_FILE} cannot be read: {e}")))?;
    *crc = crc32c::crc32c_append(*crc, buf);
    Ok(())
}

/// What to report when the structure is wrong: a checksum mismatch if there is one (the
/// usual cause), else the structural problem itself.
fn structural(path: &Path, expected: &FileDigest, problem: String) -> ReadFailure {
    match FileDigest::of_file(path) {
        Ok(actual) => match expected.mismatch(&actual, TENSORS_FILE, META_FILE) {
            Some(why) => ReadFailure::Corrupt(why),
            None => ReadFailure::Corrupt(format!("{TENSORS_FILE} cannot be parsed: {problem}")),
        },
        Err(e) => ReadFailure::Io(format!("{TENSORS_FILE} cannot be read: {e}")),
    }
}

/// The file's tensors (on the CPU, in file order), provided its size and CRC32C are
/// `expected`.
pub(crate) fn read_verified(path: &Path, expected: &FileDigest) -> Result<Vec<(String, Tensor)>, ReadFailure> {
    let mut file = File::open(path).map_err(|e| ReadFailure::Io(format!("{TENSORS_FILE} cannot be read: {e}")))?;
    let size = file.metadata().map_err(|e| ReadFailure::Io(format!("{TENSORS_FILE} cannot be read: {e}")))?.len();
    if size != expected.bytes {
        let actual = FileDigest { bytes: size, crc32c: String::new() };
        return Err(ReadFailure::Corrupt(expected.mismatch(&actual, TENSORS_FILE, META_FILE).unwrap_or_default()));
    }
    let mut crc = 0u32;
    let mut prefix = [0u8; 8];
    if size < 8 {
        return Err(structural(path, expected, "shorter than its 8-byte header length".into()));
    }
    read_exact(&mut file, &mut prefix, &mut crc)?;
    let header_bytes = u64::from_le_bytes(prefix);
    if header_bytes > MAX_HEADER_BYTES || 8 + header_bytes > size {
        return Err(structural(path, expected, format!("header length {header_bytes} does not fit the file")));
    }
    let mut header = vec![0u8; header_bytes as usize];
    read_exact(&mut file, &mut header, &mut crc)?;
    let planned = plan(&header, size - 8 - header_bytes).map_err(|p| structural(path, expected, p))?;
    let mut tensors = Vec::with_capacity(planned.len());
    for p in planned {
        let tensor = Tensor::empty(p.shape.as_slice(), (p.kind, Device::Cpu));
        let bytes = (p.end - p.start) as usize;
        if bytes > 0 {
            // SAFETY: a fresh contiguous CPU tensor owns exactly numel × element size bytes,
            // which `plan` checked equals `bytes`; nothing else refers to it yet.
            let buf = unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, bytes) };
            read_exact(&mut file, buf, &mut crc)?;
        }
        tensors.push((p.name, tensor));
    }
    let actual = FileDigest { bytes: size, crc32c: hex32(crc) };
    if let Some(why) = expected.mismatch(&actual, TENSORS_FILE, META_FILE) {
        return Err(ReadFailure::Corrupt(why));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            ("model/b".into(), Tensor::from_slice(&[1.5f64, -2.0, 3.25]).view([3, 1])),
            ("model/a".into(), Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0]).view([5])),
            ("optim/s".into(), Tensor::from_slice(&[7i64])),
            ("optim/empty".into(), Tensor::zeros([0, 4], (Kind::Float, Device::Cpu))),
            ("optim/mask".into(), Tensor::from_slice(&[true, false, true])),
        ]
    }

    #[test]
    fn written_files_are_standard_safetensors_and_read_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.safetensors");
        let tensors = sample();
        write(&path, &tensors).expect("write");
        // An independent reader (the safetensors crate, through tch) accepts the file.
        let by_crate: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path).expect("standard").into_iter().collect();
        let expected = FileDigest::of_file(&path).expect("digest");
        let ours: BTreeMap<String, Tensor> = read_verified(&path, &expected).map_err(|e| format!("{e:?}")).expect("read").into_iter().collect();
        for (name, t) in &tensors {
            for other in [&by_crate[name], &ours[name]] {
                assert_eq!(other.size(), t.size(), "{name}");
                assert_eq!(other.kind(), t.kind(), "{name}");
                assert!(other.equal(t), "{name}");
            }
        }
        let header = u64::from_le_bytes(std::fs::read(&path).expect("read")[..8].try_into().expect("8 bytes"));
        assert_eq!((8 + header) % 8, 0, "data is 8-byte aligned");
    }

    #[test]
    fn a_wrong_checksum_or_size_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.safetensors");
        write(&path, &sample()).expect("write");
        let good = FileDigest::of_file(&path).expect("digest");
        let wrong_crc = FileDigest { bytes: good.bytes, crc32c: "00000000".into() };
        match read_verified(&path, &wrong_crc) {
            Err(ReadFailure::Corrupt(why)) => assert!(why.contains("checksum mismatch"), "{why}"),
            other => panic!("accepted a wrong checksum: {:?}", other.map(|v| v.len())),
        }
        let wrong_size = FileDigest { bytes: good.bytes + 1, crc32c: good.crc32c.clone() };
        match read_verified(&path, &wrong_size) {
            Err(ReadFailure::Corrupt(why)) => assert!(why.contains("truncated"), "{why}"),
            other => panic!("accepted a wrong size: {:?}", other.map(|v| v.len())),
        }
        // A flipped bit in the header is reported as the checksum mismatch it is.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        match read_verified(&path, &good) {
            Err(ReadFailure::Corrupt(why)) => assert!(why.contains("checksum mismatch"), "{why}"),
            other => panic!("accepted a flipped bit: {:?}", other.map(|v| v.len())),
        }
    }
}
