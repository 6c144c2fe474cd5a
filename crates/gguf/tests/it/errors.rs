use std::io::Cursor;

use agora_gguf::{Error, GgufWriter, TensorType, Value};

use crate::common::{read, sample_file, Bytes};

/// A file with one metadata entry written by `kv` and no tensors.
fn one_kv(kv: impl FnOnce(&mut Bytes)) -> Vec<u8> {
    let mut b = Bytes::header(3, 0, 1);
    kv(&mut b);
    b.0
}

/// A file with one tensor info and `data_len` bytes of data after the aligned header.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("t", dims, ty, offset).pad(32);
    b.0.resize(b.0.len() + data_len, 0);
    b.0
}

fn err(bytes: &[u8]) -> Error {
    match read(bytes) {
        Ok(h) => panic!("expected an error, read {h:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_magic() {
    let mut bytes = sample_file();
    bytes[3] = b'X';
    assert!(matches!(err(&bytes), Error::BadMagic { found } if &found == b"GGUX"));
    assert!(matches!(
        err(b"\x7fELF\x02\x01\x01\x00"),
        Error::BadMagic { .. }
    ));
}

#[test]
fn unsupported_versions() {
    for version in [0u32, 1, 4, 3u32.swap_bytes()] {
        let mut bytes = sample_file();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        assert!(
            matches!(err(&bytes), Error::UnsupportedVersion(v) if v == version),
            "{version}"
        );
    }
    // v2 has the same layout as v3.
    let mut bytes = sample_file();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(read(&bytes).expect("v2 reads").version, 2);
}

#[test]
fn unknown_tensor_type() {
    let e = err(&one_tensor(&[4], 4, 0, 64));
    assert!(
        matches!(&e, Error::UnknownTensorType { tensor, ty: 4 } if tensor == "t"),
        "{e}"
    );
    let e = err(&one_tensor(&[4], 1000, 0, 64));
    assert!(matches!(e, Error::UnknownTensorType { ty: 1000, .. }));
}

#[test]
fn tensor_past_the_end() {
    // 8 f32s need 32 bytes; only 16 are there.
    let bytes = one_tensor(&[8], 0, 0, 16);
    let e = err(&bytes);
    assert!(
        matches!(&e, Error::TensorOutOfBounds { tensor, end: 96, file_len: 80 } if tensor == "t"),
        "{e}"
    );
    // An offset far past the end, and one that overflows.
    assert!(matches!(
        err(&one_tensor(&[8], 0, 1 << 40, 64)),
        Error::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        err(&one_tensor(&[8], 0, u64::MAX - 31, 64)),
        Error::Overflow { .. }
    ));
    assert!(matches!(
        err(&one_tensor(&[8], 0, 32, 32)),
        Error::TensorOutOfBounds { .. }
    ));
    assert!(read(&one_tensor(&[8], 0, 0, 32)).is_ok());
}

#[test]
fn read_tensor_data_checks_the_stream_it_is_given() {
    let bytes = sample_file();
    let header = read(&bytes).expect("reads");
    let last = header.tensors.last().expect("has tensors");
    let short = &bytes[..header.data_offset as usize];
    let e = header
        .read_tensor_data(&mut Cursor::new(short), last)
        .expect_err("stream too short");
    assert!(matches!(e, Error::TensorOutOfBounds { .. }), "{e}");
}

#[test]
fn huge_string_lengths() {
    let e = err(&one_kv(|b| {
        b.u64(u64::MAX).raw(&[0; 8]);
    }));
    assert!(
        matches!(e, Error::TooLarge { len: u64::MAX, limit, .. } if limit == 16 << 20),
        "{e}"
    );
    let e = err(&one_kv(|b| {
        b.str("k").u32(8).u64(1 << 40);
    }));
    assert!(
        matches!(e, Error::TooLarge { len, .. } if len == 1 << 40),
        "{e}"
    );
    // Under the cap but longer than the file.
    let e = err(&one_kv(|b| {
        b.str("k").u32(8).u64(1000).raw(b"short");
    }));
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // Tensor names are capped at 63 bytes, as in llama.cpp.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor(&"x".repeat(64), &[1], 0, 0).pad(32).u32(0);
    assert!(matches!(
        err(&b.0),
        Error::TooLarge {
            len: 64,
            limit: 63,
            ..
        }
    ));
}

#[test]
fn huge_counts() {
    let b = Bytes::header(3, 0, u64::MAX);
    assert!(matches!(
        err(&b.0),
        Error::TooLarge {
            len: u64::MAX,
            limit: 0,
            ..
        }
    ));
    let b = Bytes::header(3, u64::MAX, 0);
    assert!(matches!(err(&b.0), Error::TooLarge { len: u64::MAX, .. }));
    let e = err(&one_kv(|b| {
        b.str("k").u32(9).u32(0).u64(u64::MAX);
    }));
    assert!(
        matches!(e, Error::TooLarge { len: u64::MAX, limit, .. } if limit == 1 << 24),
        "{e}"
    );
    // Under the cap but more elements than bytes left.
    let e = err(&one_kv(|b| {
        b.str("k").u32(9).u32(10).u64(1000).u64(1);
    }));
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn bad_values() {
    let e = err(&one_kv(|b| {
        b.str("k").u32(13).u8(0);
    }));
    assert!(
        matches!(&e, Error::UnknownValueType { key, ty: 13 } if key == "k"),
        "{e}"
    );
    let e = err(&one_kv(|b| {
        b.str("k").u32(9).u32(99).u64(0);
    }));
    assert!(matches!(e, Error::UnknownValueType { ty: 99, .. }), "{e}");
    let e = err(&one_kv(|b| {
        b.str("k").u32(7).u8(2);
    }));
    assert!(matches!(e, Error::InvalidBool { byte: 2, .. }), "{e}");
    let e = err(&one_kv(|b| {
        b.u64(2).raw(&[0xff, 0xfe]).u32(0).u8(0);
    }));
    assert!(
        matches!(&e, Error::InvalidUtf8 { what } if what == "metadata key"),
        "{e}"
    );
    let e = err(&one_kv(|b| {
        b.str("k").u32(8).u64(1).u8(0x80);
    }));
    assert!(matches!(e, Error::InvalidUtf8 { .. }), "{e}");
    // Array of array of array.
    let e = err(&one_kv(|b| {
        b.str("k").u32(9).u32(9).u64(1).u32(9).u64(1).u32(0).u64(0);
    }));
    assert!(matches!(e, Error::NestingTooDeep { limit: 2, .. }), "{e}");
    let e = err(&one_kv(|b| {
        b.str("").u32(0).u8(0);
    }));
    assert!(matches!(e, Error::EmptyKey { index: 0 }), "{e}");
}

#[test]
fn duplicates() {
    let mut b = Bytes::header(3, 0, 2);
    b.str("k").u32(0).u8(1).str("k").u32(0).u8(2);
    assert!(matches!(err(&b.0), Error::DuplicateKey(k) if k == "k"));

    let mut b = Bytes::header(3, 2, 0);
    b.tensor("t", &[1], 0, 0).tensor("t", &[1], 0, 32).pad(32);
    b.0.resize(b.0.len() + 64, 0);
    assert!(matches!(err(&b.0), Error::DuplicateTensor(t) if t == "t"));
}

#[test]
fn bad_alignment() {
    let e = err(&one_kv(|b| {
        b.str("general.alignment").u32(10).u64(32);
    }));
    assert!(
        matches!(&e, Error::WrongType { expected: "u32", found, .. } if found == "u64"),
        "{e}"
    );
    for a in [0u32, 48] {
        let e = err(&one_kv(|b| {
            b.str("general.alignment").u32(4).u32(a);
        }));
        assert!(
            matches!(e, Error::BadAlignment(x) if x == u64::from(a)),
            "{e}"
        );
    }
}

#[test]
fn bad_tensor_infos() {
    let e = err(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 64));
    assert!(matches!(e, Error::TooManyDims { n: 5, .. }), "{e}");
    let e = err(&one_tensor(&[8], 0, 4, 64));
    assert!(
        matches!(
            e,
            Error::MisalignedTensor {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
    // Q4_0 rows must be whole 32-element blocks.
    let e = err(&one_tensor(&[16, 2], 2, 0, 64));
    assert!(
        matches!(
            e,
            Error::BadShape {
                ty: TensorType::Q4_0,
                ..
            }
        ),
        "{e}"
    );
    let e = err(&one_tensor(&[u64::MAX, 2], 0, 0, 64));
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    let e = err(&one_tensor(&[1 << 62, 2], 0, 0, 64));
    assert!(matches!(e, Error::Overflow { .. }), "{e}");
    // Zero-sized and 0-d tensors are fine.
    assert!(read(&one_tensor(&[0, 7], 0, 0, 0)).is_ok());
    assert!(read(&one_tensor(&[], 0, 0, 4)).is_ok());
}

#[test]
fn typed_getter_errors() {
    let header = read(&sample_file()).expect("reads");
    assert!(matches!(header.get_u64("missing"), Err(Error::MissingKey(k)) if k == "missing"));
    let e = header.get_u64("t.string").expect_err("a string");
    assert!(
        matches!(&e, Error::WrongType { key, found, .. } if key == "t.string" && found == "string")
    );
    assert_eq!(
        e.to_string(),
        "metadata key `t.string` is string, expected a non-negative integer"
    );
    assert!(matches!(
        header.get_u64("t.i64"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        header.get_f32("t.u32"),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        header.get_str("t.tokens"),
        Err(Error::WrongType { .. })
    ));
    let e = header.get_str_array("t.types").expect_err("an i32 array");
    assert!(
        matches!(&e, Error::WrongType { found, .. } if found == "an array of i32"),
        "{e}"
    );
}

#[test]
fn writer_refusals() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("t", TensorType::F32, &[2, 3], vec![0u8; 23])
        .expect_err("wrong length");
    assert!(
        matches!(
            e,
            Error::DataLength {
                expected: 24,
                found: 23,
                ..
            }
        ),
        "{e}"
    );
    let e = w
        .add_tensor("t", TensorType::Q4K, &[256, 128], vec![])
        .expect_err("row not whole blocks");
    assert!(matches!(e, Error::BadShape { .. }), "{e}");
    let e = w
        .add_tensor("t", TensorType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4])
        .expect_err("5 dims");
    assert!(matches!(e, Error::TooManyDims { n: 5, .. }), "{e}");
    let e = w
        .add_tensor("x".repeat(64), TensorType::F32, &[1], vec![0u8; 4])
        .expect_err("long name");
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    w.add_tensor("t", TensorType::Q4K, &[2, 256], vec![0u8; 288])
        .expect("valid");
    let e = w
        .add_tensor("t", TensorType::F32, &[1], vec![0u8; 4])
        .expect_err("duplicate");
    assert!(matches!(e, Error::DuplicateTensor(_)), "{e}");

    w.push_metadata("k", 1u8).expect("valid");
    assert!(matches!(
        w.push_metadata("k", 2u8),
        Err(Error::DuplicateKey(_))
    ));
    assert!(matches!(
        w.push_metadata("", 2u8),
        Err(Error::EmptyKey { .. })
    ));
    let mixed = Value::Array(vec![1u8.into(), 1u16.into()]);
    assert!(matches!(
        w.push_metadata("m", mixed),
        Err(Error::MixedArray { .. })
    ));
    let deep = Value::Array(vec![Value::Array(vec![Value::Array(vec![])])]);
    assert!(matches!(
        w.push_metadata("d", deep),
        Err(Error::NestingTooDeep { .. })
    ));
    assert!(matches!(
        w.push_metadata("general.alignment", 32u64),
        Err(Error::WrongType { .. })
    ));
    assert!(matches!(
        w.push_metadata("general.alignment", 24u32),
        Err(Error::BadAlignment(24))
    ));
    // Refused entries left nothing behind.
    let mut bytes = Vec::new();
    w.write(&mut bytes).expect("write");
    let header = read(&bytes).expect("reads");
    assert_eq!(header.metadata, vec![("k".to_owned(), Value::U8(1))]);
    assert_eq!(header.tensors.len(), 1);
}
