//! GGUF in and out: the configuration, weights, vocabulary and chat template of a model in
//! one file, as llama.cpp reads and writes it.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use agora_gguf::{GgufHeader, GgufWriter, TensorType, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use crate::config::{LlamaConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::llama::Linear;
use crate::tokenizer::TextTokenizer;
use crate::weights::{check_shape, WeightSource};

/// The GGUF name of a weight known by its Hugging Face name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let module = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{module}.{suffix}"))
}

pub(crate) fn ggml_dtype(ty: TensorType) -> GgmlDType {
    match ty {
        TensorType::F32 => GgmlDType::F32,
        TensorType::F16 => GgmlDType::F16,
        TensorType::BF16 => GgmlDType::BF16,
        TensorType::Q4_0 => GgmlDType::Q4_0,
        TensorType::Q4_1 => GgmlDType::Q4_1,
        TensorType::Q5_0 => GgmlDType::Q5_0,
        TensorType::Q5_1 => GgmlDType::Q5_1,
        TensorType::Q8_0 => GgmlDType::Q8_0,
        TensorType::Q8_1 => GgmlDType::Q8_1,
        TensorType::Q2K => GgmlDType::Q2K,
        TensorType::Q3K => GgmlDType::Q3K,
        TensorType::Q4K => GgmlDType::Q4K,
        TensorType::Q5K => GgmlDType::Q5K,
        TensorType::Q6K => GgmlDType::Q6K,
        TensorType::Q8K => GgmlDType::Q8K,
    }
}

/// Runtime configuration from GGUF metadata.
pub fn config_from_gguf(h: &GgufHeader) -> Result<LlamaConfig> {
    let arch = h.get_str("general.architecture")?.to_string();
    let rope_style = match arch.as_str() {
        "llama" | "mistral" => RopeStyle::Interleaved,
        "qwen2" => RopeStyle::Half,
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF architecture `{other}` (llama, mistral, qwen2)"
            )))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let usize_key = |k: &str| -> Result<usize> { Ok(h.get_u64(&key(k))? as usize) };
    let num_heads = usize_key("attention.head_count")?;
    let hidden_size = usize_key("embedding_length")?;
    let num_kv_heads = if h.get(&key("attention.head_count_kv")).is_some() {
        usize_key("attention.head_count_kv")?
    } else {
        num_heads
    };
    let head_dim = if h.get(&key("attention.key_length")).is_some() {
        usize_key("attention.key_length")?
    } else {
        hidden_size.checked_div(num_heads).unwrap_or(0)
    };
    let embd = h
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingWeight("token_embd.weight".into()))?;
    let vocab_size = embd.shape().first().copied().unwrap_or(0);
    let rope_theta = match h.get(&key("rope.freq_base")) {
        Some(_) => h.get_f32(&key("rope.freq_base"))? as f64,
        None => 10_000.0,
    };
    let id = |k: &str| -> Result<Option<u32>> {
        Ok(match h.get(k) {
            Some(_) => Some(h.get_u64(k)? as u32),
            None => None,
        })
    };
    let cfg = LlamaConfig {
        architecture: if arch == "mistral" {
            "llama".into()
        } else {
            arch.clone()
        },
        vocab_size,
        hidden_size,
        intermediate_size: usize_key("feed_forward_length")?,
        num_layers: usize_key("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: h.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
        rope_theta,
        rope_style,
        rope_freq_factors: None,
        max_seq_len: usize_key("context_length")?,
        tie_word_embeddings: h.tensor("output.weight").is_none(),
        attention_bias: h.tensor("blk.0.attn_q.bias").is_some(),
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: id("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Llama 3.1 rotary frequency divisors, stored as the F32 tensor `rope_freqs.weight`.
pub fn rope_freq_factors(h: &GgufHeader, file: &mut File) -> Result<Option<Vec<f32>>> {
    let Some(info) = h.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    if info.ty != TensorType::F32 || info.dims.len() != 1 {
        return Err(ModelError::Unsupported(format!(
            "rope_freqs.weight of type {} with {} dims (F32 vector expected)",
            info.ty.name(),
            info.dims.len()
        )));
    }
    let bytes = h.read_tensor_data(file, info)?;
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// The tokenizer embedded in GGUF metadata (`gpt2`, i.e. byte-level BPE).
pub fn tokenizer_from_gguf(h: &GgufHeader) -> Result<TextTokenizer> {
    let model = h.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "GGUF tokenizer model `{model}` (only `gpt2` byte-level BPE)"
        )));
    }
    let tokens: Vec<String> = h
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(String::from)
        .collect();
    let merges = match h.get("tokenizer.ggml.merges") {
        Some(_) => h
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(String::from)
            .collect(),
        None => vec![],
    };
    let types: Vec<i32> = match h.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(values) => values
            .iter()
            .map(|v| v.as_i64().unwrap_or(1) as i32)
            .collect(),
        None => vec![],
    };
    TextTokenizer::from_bpe_parts(&tokens, &types, &merges)
}

/// Weights read on demand from an open GGUF file.
pub struct GgufSource {
    header: GgufHeader,
    file: File,
    device: Device,
    embedding: Option<Arc<QTensor>>,
}

impl GgufSource {
    pub fn new(header: GgufHeader, file: File, device: Device) -> Self {
        Self {
            header,
            file,
            device,
            embedding: None,
        }
    }

    fn qtensor(&mut self, hf: &str, shape: &[usize]) -> Result<QTensor> {
        let name = gguf_name(hf).ok_or_else(|| ModelError::MissingWeight(hf.to_string()))?;
        let info = self
            .header
            .tensor(&name)
            .ok_or_else(|| ModelError::MissingWeight(name.clone()))?
            .clone();
        if info.shape() != shape {
            return Err(ModelError::WeightShape {
                name,
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        let bytes = self.header.read_tensor_data(&mut self.file, &info)?;
        Ok(qtensor_from_ggml(
            ggml_dtype(info.ty),
            &bytes,
            info.shape(),
            &self.device,
        )?)
    }

    fn dense(&mut self, hf: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.qtensor(hf, shape)?.dequantize(&self.device)?;
        check_shape(hf, &t, shape)?;
        Ok(t)
    }
}

impl WeightSource for GgufSource {
    fn device(&self) -> Device {
        self.device.clone()
    }

    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.qtensor(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.dense(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Linear::new(QMatMul::from_qtensor(w)?, b)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        self.dense(name, &[len])
    }

    fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<Tensor> {
        let q = Arc::new(self.qtensor(name, &[vocab, hidden])?);
        let dense = q.dequantize(&self.device)?;
        self.embedding = Some(q);
        Ok(dense)
    }

    fn tied_head(&mut self, embedding: &Tensor) -> Result<Linear> {
        // Keep the head quantized, as llama.cpp does, rather than the dequantized table.
        Ok(match &self.embedding {
            Some(q) => Linear::new(QMatMul::from_arc(q.clone())?, None)?,
            None => Linear::new(QMatMul::Tensor(embedding.clone()), None)?,
        })
    }
}

/// What goes into an exported GGUF.
pub struct GgufExport<'a> {
    pub name: &'a str,
    pub config: &'a LlamaConfig,
    /// f32 weights by Hugging Face name, in the Hugging Face (half-rotation) layout.
    pub tensors: &'a HashMap<String, Tensor>,
    pub tokenizer: &'a TextTokenizer,
    pub chat_template: Option<&'a str>,
    /// Type of the matrices; norms and biases stay F32.
    pub matrix_type: TensorType,
}

/// llama.cpp's `llama` architecture expects q/k rows permuted for interleaved rotary pairs.
fn permute_for_interleaved(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let mut shape = vec![heads, 2, rows / heads / 2];
    shape.extend_from_slice(&dims[1..]);
    Ok(w.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

pub fn write_gguf(path: &Path, export: &GgufExport) -> Result<()> {
    let cfg = export.config;
    if cfg.rope_style != RopeStyle::Half {
        return Err(ModelError::Unsupported(
            "exporting a model loaded in the interleaved rotary layout".into(),
        ));
    }
    // Qwen2 keeps the half-rotation layout; everything else is written as `llama`.
    let arch = if cfg.architecture == "qwen2" {
        "qwen2"
    } else {
        "llama"
    };
    let mut w = GgufWriter::new();
    let key = |k: &str| format!("{arch}.{k}");
    w.push_metadata("general.architecture", Value::String(arch.into()))?;
    w.push_metadata("general.name", Value::String(export.name.into()))?;
    w.push_metadata("general.alignment", Value::U32(32))?;
    w.push_metadata(
        "general.file_type",
        Value::U32(match export.matrix_type {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 7,
            _ => 0,
        }),
    )?;
    let u32v = |v: usize| Value::U32(v as u32);
    w.push_metadata(key("context_length"), u32v(cfg.max_seq_len))?;
    w.push_metadata(key("embedding_length"), u32v(cfg.hidden_size))?;
    w.push_metadata(key("block_count"), u32v(cfg.num_layers))?;
    w.push_metadata(key("feed_forward_length"), u32v(cfg.intermediate_size))?;
    w.push_metadata(key("attention.head_count"), u32v(cfg.num_heads))?;
    w.push_metadata(key("attention.head_count_kv"), u32v(cfg.num_kv_heads))?;
    w.push_metadata(key("attention.key_length"), u32v(cfg.head_dim))?;
    w.push_metadata(key("attention.value_length"), u32v(cfg.head_dim))?;
    w.push_metadata(
        key("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_norm_eps as f32),
    )?;
    w.push_metadata(key("rope.freq_base"), Value::F32(cfg.rope_theta as f32))?;
    w.push_metadata(key("rope.dimension_count"), u32v(cfg.head_dim))?;
    w.push_metadata(key("vocab_size"), u32v(cfg.vocab_size))?;

    let (mut tokens, mut types): (Vec<String>, Vec<i32>) =
        export.tokenizer.vocab_by_id()?.into_iter().unzip();
    // llama.cpp wants one vocabulary entry per embedding row.
    while tokens.len() < cfg.vocab_size {
        tokens.push(format!("[PAD{}]", tokens.len()));
        types.push(5);
    }
    w.push_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    w.push_metadata("tokenizer.ggml.pre", Value::String("gpt-2".into()))?;
    w.push_metadata(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    )?;
    w.push_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    )?;
    w.push_metadata(
        "tokenizer.ggml.merges",
        Value::Array(
            export
                .tokenizer
                .bpe_merges()?
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
    )?;
    if let Some(bos) = cfg.bos_token_id {
        w.push_metadata("tokenizer.ggml.bos_token_id", Value::U32(bos))?;
    }
    if let Some(&eos) = cfg.eos_token_ids.first() {
        w.push_metadata("tokenizer.ggml.eos_token_id", Value::U32(eos))?;
    }
    w.push_metadata("tokenizer.ggml.add_bos_token", Value::Bool(false))?;
    if let Some(t) = export.chat_template {
        w.push_metadata("tokenizer.chat_template", Value::String(t.into()))?;
    }

    if let Some(factors) = &cfg.rope_freq_factors {
        let bytes: Vec<u8> = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        w.add_tensor(
            "rope_freqs.weight",
            TensorType::F32,
            &[factors.len()],
            bytes,
        )?;
    }
    let mut names: Vec<&String> = export.tensors.keys().collect();
    names.sort_by_key(|n| tensor_order(n));
    for hf in names {
        let gguf = gguf_name(hf)
            .ok_or_else(|| ModelError::Unsupported(format!("no GGUF name for weight `{hf}`")))?;
        let mut t = export.tensors[hf].to_dtype(candle_core::DType::F32)?;
        if arch == "llama" {
            if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
                t = permute_for_interleaved(&t, cfg.num_heads)?;
            } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
                t = permute_for_interleaved(&t, cfg.num_kv_heads)?;
            }
        }
        let ty = matrix_type_for(&t, export.matrix_type)?;
        let q = QTensor::quantize(&t, ggml_dtype(ty))?;
        w.add_tensor(&gguf, ty, t.dims(), q.data()?.into_owned())?;
    }
    let file = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = BufWriter::new(file);
    w.write(&mut out)?;
    use std::io::Write;
    out.flush().map_err(|e| ModelError::io(path, e))?;
    Ok(())
}

/// The type a tensor is stored with: the requested one when its rows are whole blocks;
/// for K-quants over rows that are not (896 = 3.5 x 256), Q8_0 as llama.cpp falls back;
/// vectors and anything else F32.
fn matrix_type_for(t: &Tensor, wanted: TensorType) -> Result<TensorType> {
    if t.rank() != 2 {
        return Ok(TensorType::F32);
    }
    let cols = t.dim(1)?;
    Ok(if cols.is_multiple_of(wanted.block_size()) {
        wanted
    } else if wanted.block_size() > 32 && cols.is_multiple_of(32) {
        TensorType::Q8_0
    } else {
        TensorType::F32
    })
}

/// Writes tensors in model order (embedding, layers in order, then the head), as llama.cpp does.
fn tensor_order(hf: &str) -> (usize, usize, String) {
    if hf.starts_with("model.embed_tokens") {
        return (0, 0, hf.into());
    }
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let layer = rest
            .split('.')
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        return (1, layer, hf.into());
    }
    (2, 0, hf.into())
}

/// Open a GGUF file and read its header.
pub fn open(path: &Path) -> Result<(GgufHeader, File)> {
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let header = GgufHeader::read(&mut file)?;
    Ok((header, file))
}
