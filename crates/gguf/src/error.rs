//! Everything that can go wrong reading or writing a GGUF file.

use crate::TensorType;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a GGUF file was rejected, or why a write was refused. Each variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("not a GGUF file: magic is \"{}\", expected \"GGUF\"", found.escape_ascii())]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {0} (supported: 2 and 3, little-endian)")]
    UnsupportedVersion(u32),

    #[error(
        "truncated: {what} at offset {offset} runs past the end of the file ({file_len} bytes)"
    )]
    Truncated {
        what: String,
        offset: u64,
        file_len: u64,
    },

    #[error("{what} is {len}, over the limit of {limit}")]
    TooLarge { what: String, len: u64, limit: u64 },

    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },

    #[error("metadata key #{index} is empty")]
    EmptyKey { index: u64 },

    #[error("metadata key `{0}` appears twice")]
    DuplicateKey(String),

    #[error("metadata key `{key}` has unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },

    #[error("metadata key `{key}` has a bool byte of {byte}, expected 0 or 1")]
    InvalidBool { key: String, byte: u8 },

    #[error("metadata key `{key}` nests arrays deeper than {limit}")]
    NestingTooDeep { key: String, limit: usize },

    #[error("metadata key `{key}` is an array whose elements are not all of one type")]
    MixedArray { key: String },

    #[error("general.alignment is {0}, expected a nonzero power of two")]
    BadAlignment(u64),

    #[error("tensor `{0}` appears twice")]
    DuplicateTensor(String),

    #[error("tensor `{tensor}` has unknown ggml type {ty}")]
    UnknownTensorType { tensor: String, ty: u32 },

    #[error("tensor `{tensor}` has {n} dimensions, at most 4 are allowed")]
    TooManyDims { tensor: String, n: u64 },

    #[error(
        "tensor `{tensor}` of type {ty} has shape {dims:?} (innermost first) whose innermost \
         dimension is not a multiple of the block size {}", ty.block_size()
    )]
    BadShape {
        tensor: String,
        dims: Vec<u64>,
        ty: TensorType,
    },

    #[error("arithmetic overflow computing {what}")]
    Overflow { what: String },

    #[error("tensor `{tensor}` at offset {offset} is not aligned to {alignment} bytes")]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error("tensor `{tensor}` ends at byte {end}, past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        end: u64,
        file_len: u64,
    },

    #[error("tensor `{tensor}` needs {expected} bytes of data, got {found}")]
    DataLength {
        tensor: String,
        expected: u64,
        found: u64,
    },

    #[error("metadata key `{0}` is missing")]
    MissingKey(String),

    #[error("metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
