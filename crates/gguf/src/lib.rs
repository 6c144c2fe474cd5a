//! The GGUF file format: a bounded reader that never panics on hostile input, and a writer.
//!
//! GGUF v2 and v3, little-endian, as llama.cpp writes and reads it. [`GgufHeader::read`] parses
//! the header from any `Read + Seek` and checks every length, count, shape and tensor extent
//! against the stream length and the caps below before allocating anything for it, so a corrupt
//! or malicious file costs at most a small multiple of its own size in memory and ends in an
//! [`Error`] naming what is wrong. [`GgufWriter`] writes v3 byte-for-byte as llama.cpp does.
//!
//! ```
//! use agora_gguf::{GgufHeader, GgufWriter, TensorType};
//!
//! let mut w = GgufWriter::new();
//! w.push_metadata("general.architecture", "llama")?;
//! w.push_metadata("llama.context_length", 4096u32)?;
//! // 2 rows of 3 f32s, row-major.
//! w.add_tensor("output.weight", TensorType::F32, &[2, 3], vec![0u8; 24])?;
//! let mut file = std::io::Cursor::new(Vec::new());
//! w.write(&mut file)?;
//!
//! let header = GgufHeader::read(&mut file)?;
//! assert_eq!(header.get_str("general.architecture")?, "llama");
//! assert_eq!(header.get_u64("llama.context_length")?, 4096);
//! let info = header.tensor("output.weight").expect("written above");
//! assert_eq!((info.dims.as_slice(), info.shape()), (&[3, 2][..], vec![2, 3]));
//! assert_eq!(header.read_tensor_data(&mut file, info)?.len(), 24);
//! # Ok::<(), agora_gguf::Error>(())
//! ```

mod error;
mod read;
mod types;
mod write;

use std::path::Path;

pub use error::{Error, Result};
pub use read::{GgufHeader, TensorInfo};
pub use types::{TensorType, Value};
pub use write::GgufWriter;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`]; must be a `U32` power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The longest string (key or value) accepted: 16 MiB.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// The longest tensor name llama.cpp accepts (`GGML_MAX_NAME - 1`).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// The most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// The most elements in one metadata array (tokenizer vocabularies are well under 1M).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// How deep arrays may nest: 2 allows an array of arrays. llama.cpp itself rejects arrays of
/// arrays, so files meant for it should not use them.
pub const MAX_ARRAY_DEPTH: usize = 2;

/// Opens the file at `path` and reads its header; the file is returned for
/// [`GgufHeader::read_tensor_data`].
pub fn open(path: impl AsRef<Path>) -> Result<(GgufHeader, std::fs::File)> {
    let mut file = std::fs::File::open(path)?;
    let header = GgufHeader::read(&mut file)?;
    Ok((header, file))
}
