//! Errors of DiLoCo: malformed wire data, mismatched shapes, failed training, files.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DilocoError {
    /// Bytes from a peer that do not decode; never a panic.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A delta or state whose tensors do not match the global state's.
    #[error("tensor `{name}`: {reason}")]
    Shape { name: String, reason: String },
    #[error("invalid setting: {0}")]
    Setting(String),
    /// A non-finite value where only finite ones are allowed.
    #[error("non-finite value in `{0}`")]
    NonFinite(String),
    #[error("state hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("round protocol: {0}")]
    Protocol(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Train(#[from] agora_train::TrainError),
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DilocoError>;

impl DilocoError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
