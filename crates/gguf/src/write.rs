//! The writer: GGUF v3 laid out exactly as llama.cpp's `gguf_write_to_file` lays it out.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use crate::read::{align_up, check_shape};
use crate::types::ty;
use crate::{
    Error, Result, TensorInfo, TensorType, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC,
    MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};

/// Builds a GGUF v3 file in memory order: metadata and tensors are written in the order added.
///
/// Everything is validated when added, so that [`GgufHeader::read`](crate::GgufHeader::read)
/// and llama.cpp accept what [`Self::write`] produces (but see [`MAX_ARRAY_DEPTH`]).
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
    names: HashSet<String>,
    alignment: Option<u64>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a metadata entry. A `general.alignment` entry (a `U32` power of two) sets the
    /// alignment the file is written with; without one it is 32.
    pub fn push_metadata(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(Error::EmptyKey {
                index: self.metadata.len() as u64,
            });
        }
        check_len(key.len(), MAX_STRING_LEN, || {
            "the length of a metadata key".to_owned()
        })?;
        if self.keys.contains(&key) {
            return Err(Error::DuplicateKey(key));
        }
        check_value(&key, &value, 0)?;
        if key == ALIGNMENT_KEY {
            let Value::U32(a) = value else {
                return Err(Error::WrongType {
                    key,
                    expected: "u32",
                    found: value.type_name().to_owned(),
                });
            };
            if !a.is_power_of_two() {
                return Err(Error::BadAlignment(a.into()));
            }
            self.alignment = Some(a.into());
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Appends a tensor. `dims_row_major` is outermost first (as in PyTorch); it is stored
    /// reversed, innermost first, as GGUF requires. `data` must be exactly the tensor's bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: TensorType,
        dims_row_major: &[usize],
        data: impl Into<Vec<u8>>,
    ) -> Result<()> {
        let name = name.into();
        check_len(name.len(), MAX_TENSOR_NAME_LEN, || {
            format!("the length of tensor name `{name}`")
        })?;
        if self.names.contains(&name) {
            return Err(Error::DuplicateTensor(name));
        }
        if dims_row_major.len() > MAX_DIMS {
            return Err(Error::TooManyDims {
                tensor: name,
                n: dims_row_major.len() as u64,
            });
        }
        let info = TensorInfo {
            name,
            dims: dims_row_major.iter().rev().map(|&d| d as u64).collect(),
            ty,
            offset: 0,
        };
        check_shape(&info)?;
        let data = data.into();
        let expected = info.byte_len();
        if data.len() as u64 != expected {
            return Err(Error::DataLength {
                tensor: info.name,
                expected,
                found: data.len() as u64,
            });
        }
        self.names.insert(info.name.clone());
        self.tensors.push((info, data));
        Ok(())
    }

    /// Writes the file. Tensor offsets are assigned in order, each aligned, the data section
    /// starts aligned, and every tensor is zero-padded to the alignment.
    pub fn write<W: Write>(&self, mut w: W) -> Result<()> {
        let alignment = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        let overflow = || Error::Overflow {
            what: "the data section size".to_owned(),
        };

        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&value.type_id().to_le_bytes());
            put_payload(&mut head, value);
        }
        let mut offset = 0u64;
        for (info, data) in &self.tensors {
            put_str(&mut head, &info.name);
            head.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
            for d in &info.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&info.ty.ggml_id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(data.len() as u64)
                .and_then(|end| align_up(end, alignment))
                .ok_or_else(overflow)?;
        }
        let head_len = head.len() as u64;
        w.write_all(&head)?;
        drop(head);
        pad(&mut w, head_len, alignment)?;

        for (_, data) in &self.tensors {
            w.write_all(data)?;
            pad(&mut w, data.len() as u64, alignment)?;
        }
        w.flush()?;
        Ok(())
    }
}

/// Writes the zeros that take `len` up to a multiple of `alignment`.
fn pad<W: Write>(w: &mut W, len: u64, alignment: u64) -> Result<()> {
    let padding = len.next_multiple_of(alignment) - len;
    io::copy(&mut io::repeat(0).take(padding), w)?;
    Ok(())
}

fn check_len(len: usize, limit: u64, what: impl FnOnce() -> String) -> Result<()> {
    if len as u64 > limit {
        return Err(Error::TooLarge {
            what: what(),
            len: len as u64,
            limit,
        });
    }
    Ok(())
}

/// Refuses values the reader would refuse.
fn check_value(key: &str, value: &Value, depth: usize) -> Result<()> {
    match value {
        Value::String(s) => check_len(s.len(), MAX_STRING_LEN, || {
            format!("the length of a string in `{key}`")
        }),
        Value::Array(items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Error::NestingTooDeep {
                    key: key.to_owned(),
                    limit: MAX_ARRAY_DEPTH,
                });
            }
            check_len(items.len(), MAX_ARRAY_LEN, || {
                format!("the array length of `{key}`")
            })?;
            let elem_ty = items.first().map(Value::type_id);
            for item in items {
                if Some(item.type_id()) != elem_ty {
                    return Err(Error::MixedArray {
                        key: key.to_owned(),
                    });
                }
                check_value(key, item, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A value without its leading type id (arrays carry their element type inside).
fn put_payload(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_str(buf, s),
        Value::Array(items) => {
            let elem_ty = items.first().map_or(ty::STRING, Value::type_id);
            buf.extend_from_slice(&elem_ty.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_payload(buf, item);
            }
        }
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
    }
}
