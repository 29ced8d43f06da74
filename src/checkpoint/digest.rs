//! Checksums of checkpoint files and the COMPLETE marker that chains them.
//!
//! CRC32C rather than a cryptographic hash: the threat is a torn write, a truncated copy
//! or a flipped bit, not an adversary, and CRC32C catches every burst error up to 32 bits
//! and all but 2^-32 of the rest at memory speed (SSE4.2/ARMv8 instructions), where
//! SHA-256 would add seconds per gigabyte to every save and resume. The size is checked
//! too, so truncation is reported as such.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::layout::META_FILE;

/// Size and CRC32C (8 lowercase hex digits) of a file's bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub bytes: u64,
    pub crc32c: String,
}

impl FileDigest {
    /// Digest of bytes in memory.
    pub fn of_bytes(bytes: &[u8]) -> FileDigest {
        FileDigest {
            bytes: bytes.len() as u64,
            crc32c: hex32(crc32c::crc32c(bytes)),
        }
    }

    /// Digest of a file, streamed so multi-gigabyte checkpoints need no extra memory.
    pub fn of_file(path: &Path) -> std::io::Result<FileDigest> {
        let mut file = File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut crc, mut bytes) = (0u32, 0u64);
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            bytes += n as u64;
        }
        Ok(FileDigest {
            bytes,
            crc32c: hex32(crc),
        })
    }

    /// Why `actual` (of `file`) is not `self`, in one line; `None` when they agree.
    pub fn mismatch(&self, actual: &FileDigest, file: &str, recorded_in: &str) -> Option<String> {
        if actual.bytes != self.bytes {
            let how = if actual.bytes < self.bytes {
                "truncated"
            } else {
                "too long"
            };
            return Some(format!(
                "{file} is {how}: size mismatch, {} bytes on disk, {recorded_in} says {}",
                actual.bytes, self.bytes
            ));
        }
        if actual.crc32c != self.crc32c {
            return Some(format!(
                "{file} is corrupt: checksum mismatch, crc32c {} on disk, {recorded_in} says {}",
                actual.crc32c, self.crc32c
            ));
        }
        None
    }
}

/// 8 lowercase hex digits.
pub(crate) fn hex32(value: u32) -> String {
    format!("{value:08x}")
}

const MARKER_HEADER: &str = "hist checkpoint complete";

/// Text of the COMPLETE marker for a checkpoint whose meta.json has `meta` as digest.
/// Naming meta.json's digest (not just existing) means a torn marker or a meta.json
/// changed afterwards both read as "not complete".
pub(crate) fn complete_marker(meta: &FileDigest) -> String {
    format!(
        "{MARKER_HEADER}\n{META_FILE} bytes={} crc32c={}\n",
        meta.bytes, meta.crc32c
    )
}

/// The meta.json digest named by a COMPLETE marker, or `None` if the text is not one.
pub(crate) fn parse_complete_marker(text: &str) -> Option<FileDigest> {
    let mut lines = text.lines();
    if lines.next()? != MARKER_HEADER {
        return None;
    }
    let mut fields = lines.next()?.split(' ');
    if fields.next()? != META_FILE {
        return None;
    }
    let bytes = fields.next()?.strip_prefix("bytes=")?.parse().ok()?;
    let crc = fields.next()?.strip_prefix("crc32c=")?;
    let well_formed = crc.len() == 8
        && crc
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    (well_formed && fields.next().is_none()).then(|| FileDigest {
        bytes,
        crc32c: crc.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_rejects_torn_text() {
        let d = FileDigest::of_bytes(b"{\"a\": 1}");
        let text = complete_marker(&d);
        assert_eq!(parse_complete_marker(&text), Some(d));
        for cut in 0..text.len() - 1 {
            // Any prefix short of the last field's end is rejected; the final newline is optional.
            let prefix = &text[..cut];
            if prefix.trim_end() != text.trim_end() {
                assert_eq!(parse_complete_marker(prefix), None, "{prefix:?}");
            }
        }
    }

    #[test]
    fn mismatch_names_size_before_checksum() {
        let want = FileDigest {
            bytes: 10,
            crc32c: "00000001".into(),
        };
        let short = FileDigest {
            bytes: 4,
            crc32c: "00000002".into(),
        };
        let flipped = FileDigest {
            bytes: 10,
            crc32c: "00000002".into(),
        };
        assert!(want
            .mismatch(&short, "t", "m")
            .is_some_and(|m| m.contains("truncated") && m.contains("size")));
        assert!(want
            .mismatch(&flipped, "t", "m")
            .is_some_and(|m| m.contains("checksum mismatch")));
        assert_eq!(want.mismatch(&want.clone(), "t", "m"), None);
    }
}
