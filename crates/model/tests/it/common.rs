use std::collections::HashMap;
use std::path::Path;

use agora_model::chat::CHATML_TEMPLATE;
use agora_model::init::init_weights;
use agora_model::safetensors_io::write_hf_dir;
use agora_model::{LlamaConfig, RopeStyle, TextTokenizer};
use candle_core::{Device, Tensor};

pub const CORPUS: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\
All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n\
All:\nResolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n";

pub fn tokenizer() -> TextTokenizer {
    TextTokenizer::train_bpe(std::iter::repeat_n(CORPUS, 10), 320).expect("train tokenizer")
}

/// A tiny model; dims are multiples of 256 so every GGUF type (Q4_K too) applies.
pub fn config(arch: &str, vocab: usize) -> LlamaConfig {
    LlamaConfig {
        architecture: arch.into(),
        vocab_size: vocab,
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_style: RopeStyle::Half,
        rope_freq_factors: None,
        max_seq_len: 256,
        tie_word_embeddings: arch == "qwen2",
        attention_bias: arch == "qwen2",
        bos_token_id: None,
        eos_token_ids: vec![0],
    }
}

/// Random weights with a larger scale than training init, so logits are far from uniform
/// and quantization error shows; biases and norms are perturbed so their loading counts.
pub fn weights(cfg: &LlamaConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut w = init_weights(cfg, seed, &Device::Cpu).expect("init");
    let mut rng = agora_model::init::SeededRng::new(seed ^ 0xABCD);
    // In name order, so the noise (and so every tolerance below) is the same in every run.
    let mut names: Vec<String> = w.keys().cloned().collect();
    names.sort();
    for name in names {
        let t = w.get_mut(&name).expect("present");
        let n = t.elem_count();
        let noise = Tensor::from_vec(rng.normals(n, 0.1), t.shape(), &Device::Cpu).expect("noise");
        *t = if t.rank() == 1 {
            (t.clone() + noise).expect("perturb")
        } else if name.contains("embed") || name.contains("lm_head") {
            (t.clone() * 20.0).expect("scale")
        } else {
            (t.clone() * 3.0).expect("scale")
        };
    }
    w
}

pub fn write_model(
    dir: &Path,
    arch: &str,
    seed: u64,
) -> (LlamaConfig, HashMap<String, Tensor>, TextTokenizer) {
    let tok = tokenizer();
    let cfg = config(arch, tok.vocab_size());
    let w = weights(&cfg, seed);
    write_hf_dir(dir, &cfg, &w, &tok, Some(CHATML_TEMPLATE)).expect("write safetensors");
    (cfg, w, tok)
}

/// Relative L2 distance between two logit vectors.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Write `w` as a GGUF file of matrix type `ty`, without a chat template.
pub fn export_gguf(
    path: &Path,
    cfg: &LlamaConfig,
    w: &HashMap<String, Tensor>,
    tok: &TextTokenizer,
    ty: agora_gguf::TensorType,
) {
    agora_model::gguf_io::write_gguf(
        path,
        &agora_model::gguf_io::GgufExport {
            name: "test",
            config: cfg,
            tensors: w,
            tokenizer: tok,
            chat_template: None,
            matrix_type: ty,
        },
    )
    .expect("write gguf");
}
