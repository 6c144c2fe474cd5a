//! Models and helpers the audit tests share: the shipped model, a small synthetic model with
//! a context long enough to cross the KV cache's chunks several times, and honest claims.

use std::ops::ControlFlow;
use std::path::Path;

use agora_model::generate::{FinishReason, GenerateOptions};
use agora_model::init::SeededRng;
use agora_model::{GgmlDType, LoadOptions, LoadedModel, SamplingParams};
use agora_verify::{audit, generate_fingerprinted, Answer, AuditReport, Fingerprint, Thresholds};

pub fn shipped_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/agora-shakespeare")
}

/// The context of the synthetic model: past the cache's chunks at 256 and 512, and not a
/// multiple of the chunk.
pub const SYNTHETIC_CONTEXT: usize = 700;

/// An untrained model with the shipped model's tokenizer, small enough to generate its whole
/// context in a test: the audit's arithmetic does not care whether the weights were trained.
pub struct Synthetic {
    _dir: tempfile::TempDir,
    pub f32: LoadedModel,
    pub q8: LoadedModel,
}

pub fn synthetic() -> Synthetic {
    let shipped = agora_model::load(&shipped_dir(), &LoadOptions::default()).expect("shipped");
    let mut cfg = shipped.manifest.config.clone();
    cfg.hidden_size = 64;
    cfg.intermediate_size = 128;
    cfg.num_layers = 2;
    cfg.num_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 16;
    cfg.max_seq_len = SYNTHETIC_CONTEXT;
    let dir = tempfile::tempdir().expect("tempdir");
    let w = agora_model::init::init_weights(&cfg, 5, &candle_core::Device::Cpu).expect("init");
    agora_model::safetensors_io::write_hf_dir(dir.path(), &cfg, &w, &shipped.tokenizer, None)
        .expect("write");
    let f32 = agora_model::load(dir.path(), &LoadOptions::default()).expect("load f32");
    let q8 = agora_model::load(
        dir.path(),
        &LoadOptions {
            quantize: Some(GgmlDType::Q8_0),
        },
    )
    .expect("load q8_0");
    Synthetic { _dir: dir, f32, q8 }
}

/// `len` random prompt tokens that are not end-of-sequence tokens.
pub fn prompt(model: &LoadedModel, len: usize, seed: u64) -> Vec<u32> {
    let vocab = model.model.config().vocab_size as u64;
    let stops = model.stop_token_ids();
    let mut rng = SeededRng::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let t = rng.below(vocab) as u32;
        if !stops.contains(&t) {
            out.push(t);
        }
    }
    out
}

pub fn sampling(seed: u64, temperature: f64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
        seed,
        ..Default::default()
    }
}

/// Everything a receipt commits to.
#[derive(Clone, Debug)]
pub struct Claim {
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub claimed: usize,
    pub print: Fingerprint,
    pub sampling: SamplingParams,
    pub ended_at_eos: bool,
}

/// An honest answer: `max_tokens` at most, ending at end-of-sequence tokens when `stop_at_eos`.
pub fn honest(
    model: &LoadedModel,
    prompt: &[u32],
    sampling: &SamplingParams,
    max_tokens: usize,
    stop_at_eos: bool,
) -> Claim {
    let opts = GenerateOptions {
        sampling: sampling.clone(),
        max_tokens,
        stop: vec![],
        stop_at_eos,
        resume: vec![],
    };
    let (g, print) = generate_fingerprinted(model, prompt, &opts, |_| ControlFlow::Continue(()))
        .expect("generate");
    Claim {
        prompt: prompt.to_vec(),
        claimed: g.tokens.len(),
        ended_at_eos: g.finish_reason == FinishReason::Stop,
        output: g.tokens,
        print,
        sampling: sampling.clone(),
    }
}

pub fn check(model: &LoadedModel, c: &Claim) -> AuditReport {
    audit(model, &answer(model, c), &Thresholds::default()).expect("the audit ran")
}

pub fn answer<'a>(model: &LoadedModel, c: &'a Claim) -> Answer<'a> {
    Answer {
        model: model.id,
        prompt: &c.prompt,
        resumed: &[],
        output: &c.output,
        claimed_tokens: c.claimed,
        sampling: c.sampling.clone(),
        fingerprint: &c.print,
        ended_at_eos: c.ended_at_eos,
    }
}
