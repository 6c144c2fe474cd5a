use std::io::Cursor;

use agora_gguf::{GgufWriter, TensorType, Value};

use crate::common::{every_value, read, sample_file, sample_tensors, tensor_bytes};

#[test]
fn every_value_and_tensor_comes_back() {
    let bytes = sample_file();
    let header = read(&bytes).expect("sample file reads");

    assert_eq!(header.version, 3);
    assert_eq!(header.alignment, 32);
    assert_eq!(header.metadata, every_value());
    assert_eq!(header.data_offset % 32, 0);

    let expected = sample_tensors();
    assert_eq!(header.tensors.len(), expected.len());
    let mut next_offset = 0;
    for (i, (info, (name, ty, dims))) in header.tensors.iter().zip(expected).enumerate() {
        assert_eq!(info.name, name);
        assert_eq!(info.ty, ty);
        assert_eq!(info.shape(), dims);
        let reversed: Vec<u64> = dims.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(info.dims, reversed);
        // Contiguous and aligned, as llama.cpp requires.
        assert_eq!(info.offset, next_offset, "{name}");
        assert_eq!(info.offset % 32, 0);
        next_offset = (info.offset + info.byte_len()).next_multiple_of(32);

        let data = header
            .read_tensor_data(&mut Cursor::new(&bytes), info)
            .expect("tensor data reads");
        assert_eq!(data, tensor_bytes(ty, &dims, i as u8), "{name}");
        assert_eq!(header.tensor(name), Some(info));
    }
    // Every tensor, the last included, is padded.
    assert_eq!(bytes.len() as u64, header.data_offset + next_offset);
}

#[test]
fn typed_getters() {
    let header = read(&sample_file()).expect("sample file reads");
    assert_eq!(header.get_str("general.architecture").ok(), Some("llama"));
    assert_eq!(header.get_u64("t.u8").ok(), Some(200));
    assert_eq!(header.get_u64("t.u64").ok(), Some(u64::MAX));
    assert_eq!(header.get_f32("t.f32").ok(), Some(1.5e-5));
    assert_eq!(
        header.get_f32("t.f64").ok(),
        Some(std::f64::consts::PI as f32)
    );
    assert_eq!(
        header.get_str_array("t.tokens").ok(),
        Some(vec!["<s>", "</s>", "▁the", ""])
    );
    assert_eq!(header.get_str_array("t.empty").ok(), Some(vec![]));
    assert_eq!(header.get("t.bool").and_then(Value::as_bool), Some(true));
    assert_eq!(header.get("t.i8").and_then(Value::as_u64), None);
    assert_eq!(header.get("t.i8").and_then(Value::as_i64), Some(-100));
    assert_eq!(
        header
            .get("t.types")
            .and_then(Value::as_array)
            .map(<[_]>::len),
        Some(4)
    );
    assert_eq!(header.get("nope"), None);
    assert_eq!(header.tensor("nope"), None);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = GgufWriter::new();
    w.push_metadata("general.alignment", 64u32).expect("valid");
    w.add_tensor("a", TensorType::F32, &[3], vec![1u8; 12])
        .expect("valid");
    w.add_tensor("b", TensorType::Q8_0, &[32], vec![2u8; 34])
        .expect("valid");
    let mut bytes = Vec::new();
    w.write(&mut bytes).expect("write");

    let header = read(&bytes).expect("reads");
    assert_eq!(header.alignment, 64);
    assert_eq!(header.data_offset % 64, 0);
    assert_eq!(header.tensors[1].offset, 64);
    assert_eq!(bytes.len() as u64, header.data_offset + 128);
    let b = header
        .read_tensor_data(&mut Cursor::new(&bytes), &header.tensors[1])
        .expect("reads");
    assert_eq!(b, vec![2u8; 34]);
}

#[test]
fn empty_file_round_trips() {
    let mut bytes = Vec::new();
    GgufWriter::new().write(&mut bytes).expect("write");
    assert_eq!(bytes.len(), 32);
    let header = read(&bytes).expect("reads");
    assert!(header.metadata.is_empty() && header.tensors.is_empty());
    assert_eq!(header.data_offset, 32);
}

#[test]
fn open_reads_a_file_on_disk() {
    let path = std::env::temp_dir().join(format!("agora-gguf-open-{}.gguf", std::process::id()));
    std::fs::write(&path, sample_file()).expect("write temp file");
    let (header, mut file) = agora_gguf::open(&path).expect("open");
    let info = header.tensor("output.weight").expect("present").clone();
    let data = header.read_tensor_data(&mut file, &info).expect("reads");
    assert_eq!(data.len(), 2 * 210);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn tensor_type_table() {
    for ty in TensorType::ALL {
        assert_eq!(TensorType::from_ggml_id(ty.ggml_id()), Some(ty));
    }
    let ids: Vec<u32> = TensorType::ALL.iter().map(|t| t.ggml_id()).collect();
    assert_eq!(ids, [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30]);
    assert_eq!(TensorType::from_ggml_id(4), None);
    assert_eq!(TensorType::from_ggml_id(16), None);
    assert_eq!(TensorType::Q4K.name(), "Q4_K");
    assert_eq!(TensorType::BF16.to_string(), "BF16");
    assert_eq!(
        (TensorType::Q8K.block_size(), TensorType::Q8K.block_bytes()),
        (256, 292)
    );
    assert_eq!(
        (
            TensorType::Q5_1.block_size(),
            TensorType::Q5_1.block_bytes()
        ),
        (32, 24)
    );
}
