//! The bounded reader: every length, count and offset in the file is checked against the bytes
//! left in the stream and against fixed caps before anything is allocated for it.

use std::collections::HashSet;
use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};

use crate::types::ty;
use crate::{
    Error, Result, TensorType, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH,
    MAX_ARRAY_LEN, MAX_DIMS, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (fastest varying) dimension.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Relative to the start of the data section ([`GgufHeader::data_offset`]).
    pub offset: u64,
}

impl TensorInfo {
    /// The product of `dims`, or `None` on overflow. Never `None` for a header that `read` accepted.
    pub fn checked_element_count(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// Bytes of data, or `None` on overflow. Never `None` for a header that `read` accepted.
    pub fn checked_byte_len(&self) -> Option<u64> {
        let blocks = self
            .checked_element_count()?
            .div_ceil(self.ty.block_size() as u64);
        blocks.checked_mul(self.ty.block_bytes() as u64)
    }

    /// The number of elements; saturates at `u64::MAX` for dims that overflow.
    pub fn element_count(&self) -> u64 {
        self.checked_element_count().unwrap_or(u64::MAX)
    }

    /// The number of bytes of data; saturates at `u64::MAX` for dims that overflow.
    pub fn byte_len(&self) -> u64 {
        self.checked_byte_len().unwrap_or(u64::MAX)
    }

    /// The shape in row-major order (outermost first), i.e. `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }
}

/// Everything in a GGUF file before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parses and validates the header of the GGUF file in `r`, which is read from its start.
    ///
    /// Every tensor is checked to lie inside the stream, so [`Self::read_tensor_data`] on the
    /// same stream cannot run past its end.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self> {
        let file_len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        let mut src = Source {
            inner: BufReader::new(r),
            pos: 0,
            len: file_len,
        };

        let found = src.array::<4>(&"magic")?;
        if found != MAGIC {
            return Err(Error::BadMagic { found });
        }
        let version = src.u32(&"version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion(version));
        }
        let n_tensors = src.u64(&"tensor count")?;
        let n_kv = src.u64(&"metadata count")?;

        // A key is at least a u64 length and a u32 type, and a value is at least one byte.
        src.check_count(n_kv, 8 + 4 + 1, "metadata count")?;
        let mut metadata = Vec::with_capacity(to_usize(n_kv)?);
        let mut seen = HashSet::new();
        for index in 0..n_kv {
            let key = src.string(MAX_STRING_LEN, &"metadata key")?;
            if key.is_empty() {
                return Err(Error::EmptyKey { index });
            }
            if !seen.insert(key.clone()) {
                return Err(Error::DuplicateKey(key));
            }
            let ty = src.u32(&ValueOf(&key))?;
            let value = src.value(&key, ty, 0)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) => u64::from(*a),
            Some((_, other)) => {
                return Err(Error::WrongType {
                    key: ALIGNMENT_KEY.to_owned(),
                    expected: "u32",
                    found: other.type_name().to_owned(),
                })
            }
        };
        if !alignment.is_power_of_two() {
            return Err(Error::BadAlignment(alignment));
        }

        // name length u64 + n_dims u32 + type u32 + offset u64
        src.check_count(n_tensors, 8 + 4 + 4 + 8, "tensor count")?;
        let mut tensors = Vec::with_capacity(to_usize(n_tensors)?);
        let mut seen = HashSet::new();
        for _ in 0..n_tensors {
            let info = src.tensor_info()?;
            if !seen.insert(info.name.clone()) {
                return Err(Error::DuplicateTensor(info.name));
            }
            tensors.push(info);
        }

        let data_offset = align_up(src.pos, alignment).ok_or_else(|| Error::Overflow {
            what: "data section offset".to_owned(),
        })?;
        for info in &tensors {
            if info.offset % alignment != 0 {
                return Err(Error::MisalignedTensor {
                    tensor: info.name.clone(),
                    offset: info.offset,
                    alignment,
                });
            }
            tensor_range(info, data_offset, file_len)?;
        }

        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| Error::MissingKey(key.to_owned()))
    }

    fn wrong_type(key: &str, expected: &'static str, found: &Value) -> Error {
        Error::WrongType {
            key: key.to_owned(),
            expected,
            found: found.type_name().to_owned(),
        }
    }

    /// `key` as an unsigned integer (any integer type holding a non-negative value).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong_type(key, "a non-negative integer", v))
    }

    /// `key` as an `f32` (stored as F32 or F64).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32()
            .ok_or_else(|| Self::wrong_type(key, "a float", v))
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| Self::wrong_type(key, "a string", v))
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        const EXPECTED: &str = "an array of strings";
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| Self::wrong_type(key, EXPECTED, v))?;
        items
            .iter()
            .map(|item| {
                item.as_str().ok_or_else(|| Error::WrongType {
                    key: key.to_owned(),
                    expected: EXPECTED,
                    found: format!("an array of {}", item.type_name()),
                })
            })
            .collect()
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads exactly `info.byte_len()` bytes of `info`'s data from `r`, after checking again that
    /// they lie inside the stream (which need not be the one the header came from).
    pub fn read_tensor_data<R: Read + Seek>(
        &self,
        r: &mut R,
        info: &TensorInfo,
    ) -> Result<Vec<u8>> {
        let file_len = r.seek(SeekFrom::End(0))?;
        let (start, len) = tensor_range(info, self.data_offset, file_len)?;
        let mut data = vec![0u8; to_usize(len)?];
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::TensorOutOfBounds {
                    tensor: info.name.clone(),
                    end: start.saturating_add(len),
                    file_len,
                }
            } else {
                Error::Io(e)
            }
        })?;
        Ok(data)
    }
}

/// Checks that `info`'s data lies inside a file of `file_len` bytes; returns its absolute start
/// and its length.
fn tensor_range(info: &TensorInfo, data_offset: u64, file_len: u64) -> Result<(u64, u64)> {
    let overflow = || Error::Overflow {
        what: format!("the extent of tensor `{}`", info.name),
    };
    let len = info.checked_byte_len().ok_or_else(overflow)?;
    let start = data_offset.checked_add(info.offset).ok_or_else(overflow)?;
    let end = start.checked_add(len).ok_or_else(overflow)?;
    if end > file_len {
        return Err(Error::TensorOutOfBounds {
            tensor: info.name.clone(),
            end,
            file_len,
        });
    }
    Ok((start, len))
}

pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    n.checked_next_multiple_of(alignment)
}

fn to_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::Overflow {
        what: format!("{n} as a memory size"),
    })
}

/// Context for errors, formatted only when an error is built.
struct ValueOf<'a>(&'a str);

impl fmt::Display for ValueOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the value of `{}`", self.0)
    }
}

struct FieldOf<'a>(&'static str, &'a str);

impl fmt::Display for FieldOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} of tensor `{}`", self.0, self.1)
    }
}

/// A buffered stream that knows its position and length, so every read is checked first.
struct Source<R> {
    inner: BufReader<R>,
    /// Invariant: `pos <= len`.
    pos: u64,
    len: u64,
}

impl<R: Read> Source<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn truncated(&self, what: &dyn fmt::Display) -> Error {
        Error::Truncated {
            what: what.to_string(),
            offset: self.pos,
            file_len: self.len,
        }
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn fmt::Display) -> Result<()> {
        if (buf.len() as u64) > self.remaining() {
            return Err(self.truncated(what));
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            // The stream shrank after we measured it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.truncated(what)),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn fmt::Display) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn fmt::Display) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_len` bytes each fit in the rest of the file.
    fn check_count(&self, count: u64, min_len: u64, what: &'static str) -> Result<()> {
        let limit = self.remaining() / min_len;
        if count > limit {
            return Err(Error::TooLarge {
                what: format!(
                    "{what} (for the {} bytes left in the file)",
                    self.remaining()
                ),
                len: count,
                limit,
            });
        }
        Ok(())
    }

    fn string(&mut self, limit: u64, what: &dyn fmt::Display) -> Result<String> {
        let len = self.u64(what)?;
        if len > limit {
            return Err(Error::TooLarge {
                what: format!("the length of {what}"),
                len,
                limit,
            });
        }
        if len > self.remaining() {
            return Err(self.truncated(what));
        }
        let mut bytes = vec![0u8; to_usize(len)?];
        self.fill(&mut bytes, what)?;
        String::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 {
            what: what.to_string(),
        })
    }

    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<Value> {
        let what = &ValueOf(key);
        Ok(match ty {
            ty::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ty::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ty::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ty::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ty::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ty::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ty::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ty::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ty::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ty::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ty::BOOL => match self.array::<1>(what)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [byte] => {
                    return Err(Error::InvalidBool {
                        key: key.to_owned(),
                        byte,
                    })
                }
            },
            ty::STRING => Value::String(self.string(MAX_STRING_LEN, what)?),
            ty::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::NestingTooDeep {
                        key: key.to_owned(),
                        limit: MAX_ARRAY_DEPTH,
                    });
                }
                let elem_ty = self.u32(what)?;
                let min_len =
                    ty::min_encoded_len(elem_ty).ok_or_else(|| Error::UnknownValueType {
                        key: key.to_owned(),
                        ty: elem_ty,
                    })?;
                let count = self.u64(what)?;
                if count > MAX_ARRAY_LEN {
                    return Err(Error::TooLarge {
                        what: format!("the array length of {what}"),
                        len: count,
                        limit: MAX_ARRAY_LEN,
                    });
                }
                // count <= 2^24 and min_len <= 12, so this cannot overflow.
                if count * min_len > self.remaining() {
                    return Err(self.truncated(what));
                }
                let mut items = Vec::with_capacity(to_usize(count)?);
                for _ in 0..count {
                    items.push(self.value(key, elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            _ => {
                return Err(Error::UnknownValueType {
                    key: key.to_owned(),
                    ty,
                })
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string(MAX_TENSOR_NAME_LEN, &"tensor name")?;
        let n_dims = self.u32(&FieldOf("dimension count", &name))?;
        if n_dims as usize > MAX_DIMS {
            return Err(Error::TooManyDims {
                tensor: name,
                n: n_dims.into(),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&FieldOf("dimensions", &name))?);
        }
        let ty_id = self.u32(&FieldOf("type", &name))?;
        let Some(ty) = TensorType::from_ggml_id(ty_id) else {
            return Err(Error::UnknownTensorType {
                tensor: name,
                ty: ty_id,
            });
        };
        let offset = self.u64(&FieldOf("offset", &name))?;
        let info = TensorInfo {
            name,
            dims,
            ty,
            offset,
        };
        check_shape(&info)?;
        Ok(info)
    }
}

/// The shape rules llama.cpp applies: the element count fits in an `i64`, and rows (the innermost
/// dimension) are whole blocks.
pub(crate) fn check_shape(info: &TensorInfo) -> Result<()> {
    let fits = info
        .checked_element_count()
        .is_some_and(|n| i64::try_from(n).is_ok());
    if !fits {
        return Err(Error::Overflow {
            what: format!("the element count of tensor `{}`", info.name),
        });
    }
    let row = info.dims.first().copied().unwrap_or(1);
    if row % info.ty.block_size() as u64 != 0 {
        return Err(Error::BadShape {
            tensor: info.name.clone(),
            dims: info.dims.clone(),
            ty: info.ty,
        });
    }
    if info.checked_byte_len().is_none() {
        return Err(Error::Overflow {
            what: format!("the byte length of tensor `{}`", info.name),
        });
    }
    Ok(())
}
