//! Built by hand from llama.cpp's `gguf_write_out`, independently of the writer.

use agora_gguf::{GgufWriter, TensorType, Value};

use crate::common::Bytes;

#[test]
fn bytes_match_llama_cpp_layout() {
    let mut w = GgufWriter::new();
    w.push_metadata("general.architecture", "llama")
        .expect("valid");
    w.push_metadata("a.n", 7u32).expect("valid");
    w.push_metadata("a.arr", vec![1i32, -2]).expect("valid");
    w.push_metadata("a.s", vec!["x"]).expect("valid");
    w.push_metadata("a.b", false).expect("valid");
    w.add_tensor("t", TensorType::F32, &[1, 3], vec![9u8; 12])
        .expect("valid");
    w.add_tensor("q", TensorType::Q8_0, &[32], vec![5u8; 34])
        .expect("valid");
    let mut written = Vec::new();
    w.write(&mut written).expect("write");

    let mut b = Bytes::header(3, 2, 5);
    b.str("general.architecture").u32(8).str("llama");
    b.str("a.n").u32(4).u32(7);
    // array: u32 ARRAY, u32 element type, u64 count, elements
    b.str("a.arr")
        .u32(9)
        .u32(5)
        .u64(2)
        .u32(1)
        .u32((-2i32) as u32);
    b.str("a.s").u32(9).u32(8).u64(1).str("x");
    b.str("a.b").u32(7).u8(0);
    // name, u32 n_dims, dims innermost first, u32 ggml type, u64 offset from the data section
    b.tensor("t", &[3, 1], 0, 0);
    b.tensor("q", &[32], 8, 32);
    b.pad(32);
    let data_start = b.0.len();
    b.raw(&[9; 12]).pad(32).raw(&[5; 34]).pad(32);

    assert_eq!(written, b.0);
    assert_eq!(data_start % 32, 0);
    assert_eq!(written.len(), data_start + 32 + 64);
}

#[test]
fn header_only_file_is_padded() {
    let mut w = GgufWriter::new();
    w.push_metadata("k", Value::U8(1)).expect("valid");
    let mut written = Vec::new();
    w.write(&mut written).expect("write");
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(0).u8(1).pad(32);
    assert_eq!(written, b.0);
}
