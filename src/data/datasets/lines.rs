//! Reading the benchmarks' list files: whole-file reads, numbered lines, and one-line
//! errors that name the file, the line and the offending text.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::data::folder::{data_error, os_reason};
use crate::error::{HistError, Result};

/// Longest excerpt of an offending line quoted in an error, in characters.
const EXCERPT_CHARS: usize = 60;

/// Checks that `root` is an existing folder; `what` says what it should be.
pub(super) fn check_root(root: &Path, what: &str) -> Result<()> {
    match fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(data_error(root, format!("does not exist; set data.root to {what}")))
        }
        Err(e) => Err(data_error(root, format!("cannot be read: {}; check its permissions", os_reason(&e)))),
        Ok(m) if !m.is_dir() => Err(data_error(root, format!("is not a directory; set data.root to {what}"))),
        Ok(_) => Ok(()),
    }
}

/// A list file read whole into memory.
pub(super) struct ListFile {
    pub path: PathBuf,
    text: String,
}

impl ListFile {
    /// Reads `path`; a missing file is reported with `hint` (where it should be).
    pub fn read(path: &Path, hint: &str) -> Result<ListFile> {
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => data_error(path, format!("list file does not exist; {hint}")),
            _ => data_error(path, format!("cannot read list file: {}; check its permissions", os_reason(&e))),
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count();
            data_error(
                path,
                format!("line {line}: is not UTF-8 text; restore the file from the dataset's archive"),
            )
        })?;
        Ok(ListFile { path: path.to_path_buf(), text })
    }

    /// Every line with its 1-based number, without the line ending or a leading BOM.
    pub fn numbered(&self) -> impl Iterator<Item = (usize, &str)> {
        let text = self.text.strip_prefix('\u{feff}').unwrap_or(&self.text);
        text.lines().enumerate().map(|(i, l)| (i + 1, l))
    }

    /// The lines that are not blank, with their 1-based numbers.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &str)> {
        self.numbered().filter(|(_, l)| !l.trim().is_empty())
    }

    /// An error about the whole file.
    pub fn error(&self, message: impl Into<String>) -> HistError {
        data_error(&self.path, message)
    }

    /// An error about line `line`.
    pub fn line_error(&self, line: usize, message: impl std::fmt::Display) -> HistError {
        data_error(&self.path, format!("line {line}: {message}"))
    }

    /// "line N: expected `format`, got "text"; fix the line or restore the file".
    pub fn malformed(&self, line: usize, format: &str, text: &str) -> HistError {
        self.line_error(
            line,
            format!(
                "expected \"{format}\", got {}; fix the line or restore the file from the dataset's archive",
                excerpt(text)
            ),
        )
    }

    /// Checks that the image `image` listed on `line` is an existing file.
    pub fn check_image(&self, line: usize, image: &Path) -> Result<()> {
        match fs::metadata(image) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(self.line_error(line, format!("listed image {} is not a file; restore it from the dataset's archive", image.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.line_error(
                line,
                format!(
                    "listed image {} does not exist; restore it from the dataset's archive, or set data.root to the folder the list's paths are relative to",
                    image.display()
                ),
            )),
            Err(e) => Err(self.line_error(line, format!("listed image {} cannot be read: {}", image.display(), os_reason(&e)))),
        }
    }
}

/// `text` quoted, runs of whitespace (column padding) shown as one space, other control
/// characters escaped, cut to [`EXCERPT_CHARS`] characters.
pub(super) fn excerpt(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = text.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// The first `N` whitespace-separated fields of `line` and the rest of it, trimmed and
/// non-empty (a path that may hold spaces); `None` when there are fewer fields.
pub(super) fn head_and_rest<const N: usize>(line: &str) -> Option<([&str; N], &str)> {
    let mut fields = [""; N];
    let mut rest = line.trim_start();
    for field in fields.iter_mut() {
        let end = rest.find(char::is_whitespace)?;
        *field = &rest[..end];
        rest = rest[end..].trim_start();
    }
    let rest = rest.trim_end();
    (!rest.is_empty()).then_some((fields, rest))
}

/// Exactly `N` whitespace-separated fields of `line`, or `None`.
pub(super) fn exactly<const N: usize>(line: &str) -> Option<[&str; N]> {
    let mut it = line.split_whitespace();
    let mut fields = [""; N];
    for field in fields.iter_mut() {
        *field = it.next()?;
    }
    it.next().is_none().then_some(fields)
}

/// A positive decimal integer (no sign), or `None`.
pub(super) fn positive_int(field: &str) -> Option<u64> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok().filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_excerpts() {
        assert_eq!(head_and_rest::<1>("12  a b/c.jpg "), Some((["12"], "a b/c.jpg")));
        assert_eq!(head_and_rest::<3>("1 2 3 p"), Some((["1", "2", "3"], "p")));
        assert_eq!(head_and_rest::<1>("12"), None);
        assert_eq!(head_and_rest::<1>("12   "), None);
        assert_eq!(exactly::<2>(" 1\t2 "), Some(["1", "2"]));
        assert_eq!(exactly::<2>("1 2 3"), None);
        assert_eq!(exactly::<2>("1"), None);
        assert_eq!(positive_int("007"), Some(7));
        assert_eq!(positive_int("0"), None);
        assert_eq!(positive_int("+7"), None);
        assert_eq!(positive_int("-7"), None);
        assert_eq!(positive_int("7a"), None);
        assert_eq!(positive_int("99999999999999999999999"), None);
        let long = "x".repeat(200);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 3, "{e}");
        assert_eq!(excerpt(" a \t  b\u{7}"), "\"a b\\u{7}\"");
    }
}
