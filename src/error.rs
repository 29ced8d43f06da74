//! The library's error type: every variant names the thing that was wrong and, where
//! there is one, the fix.
use std::path::PathBuf;

/// Errors raised by the hist library.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    /// A configuration problem (unknown key, missing field, value out of range).
    #[error("config {source_name}: {message}")]
    Config { source_name: String, message: String },

    /// A file or folder that could not be read or written.
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },

    /// A dataset that is missing, empty or malformed.
    #[error("dataset {}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// Tensors handed to a tool with the wrong names, shapes or dtypes.
    #[error("input {name}: {message}")]
    Input { name: String, message: String },

    /// A failure of the process group: rendezvous, a peer, or a collective.
    #[error("distributed: {0}")]
    Dist(String),

    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl HistError {
    /// An I/O error on `path`, keeping the OS message.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        HistError::Io { path: path.into(), message: err.to_string() }
    }

    /// A config error from `source_name` (a file path or `--set`).
    pub fn config(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        HistError::Config { source_name: source_name.into(), message: message.into() }
    }

    /// A bad-tensor error for the input called `name`.
    pub fn input(name: impl Into<String>, message: impl Into<String>) -> Self {
        HistError::Input { name: name.into(), message: message.into() }
    }
}

/// Result with [`HistError`].
pub type Result<T> = std::result::Result<T, HistError>;
