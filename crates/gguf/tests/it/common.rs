use std::io::Cursor;

use agora_gguf::{GgufHeader, GgufWriter, Result, TensorType, Value};

pub fn read(bytes: &[u8]) -> Result<GgufHeader> {
    GgufHeader::read(&mut Cursor::new(bytes))
}

/// Little-endian byte builder for hand-made files.
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// Magic, version, tensor count and kv count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = Self::default();
        b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A tensor info: name, n_dims, dims (innermost first), ggml type, offset.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zeros up to the next multiple of `alignment`.
    pub fn pad(&mut self, alignment: usize) -> &mut Self {
        let len = self.0.len().next_multiple_of(alignment);
        self.0.resize(len, 0);
        self
    }
}

/// Every value type, including arrays of strings, of numbers, of bools, empty, and nested.
pub fn every_value() -> Vec<(String, Value)> {
    let kvs: Vec<(&str, Value)> = vec![
        ("general.architecture", "llama".into()),
        ("t.u8", 200u8.into()),
        ("t.i8", (-100i8).into()),
        ("t.u16", 60_000u16.into()),
        ("t.i16", (-30_000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", 1.5e-5f32.into()),
        ("t.bool", true.into()),
        ("t.string", "héllo\n\0wörld".into()),
        ("t.empty_string", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::PI.into()),
        ("t.tokens", vec!["<s>", "</s>", "▁the", ""].into()),
        ("t.scores", vec![0.0f32, -1.25, 3.5].into()),
        ("t.types", vec![1i32, 2, 3, -4].into()),
        ("t.flags", vec![true, false, true].into()),
        ("t.bytes", vec![0u8, 255, 7].into()),
        ("t.u64s", vec![u64::MAX, 0].into()),
        ("t.empty", Value::Array(vec![])),
        (
            "t.nested_strings",
            Value::Array(vec![
                vec!["a", "bc"].into(),
                vec!["def"].into(),
                Value::Array(vec![]),
            ]),
        ),
        (
            "t.nested_numbers",
            Value::Array(vec![vec![1.0f64, 2.0].into(), vec![-3.0f64].into()]),
        ),
    ];
    kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// (name, type, row-major dims) of the sample tensors.
pub fn sample_tensors() -> Vec<(&'static str, TensorType, Vec<usize>)> {
    vec![
        ("token_embd.weight", TensorType::F32, vec![2, 3]),
        ("blk.0.attn_q.weight", TensorType::F16, vec![4, 8]),
        ("blk.0.attn_k.weight", TensorType::BF16, vec![3]),
        ("blk.0.ffn_up.weight", TensorType::Q4_0, vec![2, 64]),
        ("blk.0.ffn_gate.weight", TensorType::Q8_0, vec![1, 1, 32]),
        ("blk.0.ffn_down.weight", TensorType::Q4K, vec![1, 256]),
        ("output.weight", TensorType::Q6K, vec![2, 1, 1, 256]),
        ("scalar", TensorType::F32, vec![]),
    ]
}

/// Deterministic bytes of the right length for a tensor.
pub fn tensor_bytes(ty: TensorType, dims: &[usize], seed: u8) -> Vec<u8> {
    let elements: usize = dims.iter().product();
    let len = elements / ty.block_size() * ty.block_bytes();
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in every_value() {
        w.push_metadata(k, v).expect("valid metadata");
    }
    for (i, (name, ty, dims)) in sample_tensors().into_iter().enumerate() {
        let data = tensor_bytes(ty, &dims, i as u8);
        w.add_tensor(name, ty, &dims, data).expect("valid tensor");
    }
    w
}

pub fn sample_file() -> Vec<u8> {
    let mut out = Vec::new();
    sample_writer().write(&mut out).expect("write to a Vec");
    out
}
