//! `agora bench engine`: our engine against llama.cpp on the same GGUF file with the same
//! thread count, measured in the same run, with the memory-bandwidth bound beside them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use agora_gguf::TensorType;
use agora_model::gguf_io::{write_gguf, GgufExport};
use agora_model::init::init_weights;
use agora_model::{load, LlamaConfig, LoadOptions, Mode, RopeStyle, TextTokenizer};
use anyhow::{bail, Context};
use candle_core::{IndexOp, Tensor};
use clap::{Args, Subcommand};

use crate::model_cmd::parse_tensor_type;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of our engine and of llama.cpp on a random-weight GGUF
    /// of Qwen2.5-0.5B's shape.
    Engine(EngineArgs),
    /// Tokens/s and time to first token through gateway and network against the engine
    /// alone on the same model, then many concurrent streaming clients, on a local devnet.
    Network(crate::bench_net::NetworkArgs),
    /// One provider under N concurrent streaming clients through the gateway: aggregate
    /// tokens/s, time to first token p50/p99, errors and peak memory, beside the
    /// single-stream figure of the same run.
    Serve(crate::bench_serve::ServeArgs),
}

#[derive(Args)]
pub struct EngineArgs {
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// GGUF types to compare (comma separated).
    #[arg(long, value_delimiter = ',', default_values = ["q8_0", "q4_0"], value_parser = parse_tensor_type)]
    pub types: Vec<TensorType>,
    /// Where the random-weight GGUF files are written (reused when present).
    #[arg(long, default_value = ".bench")]
    pub dir: PathBuf,
    /// Benchmark this GGUF file instead of the random Qwen2.5-0.5B-shaped ones.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The llama.cpp side (llama-cpp-python); see bench/README.md.
    #[arg(long, default_value = "bench/llamacpp_bench.py")]
    pub llama_cpp: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip llama.cpp (no anchor; prints our figures only).
    #[arg(long)]
    pub no_llama_cpp: bool,
}

/// `threads` is the global `--threads` (default: all cores), used by both engines.
pub fn run(cmd: BenchCommand, threads: usize) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(args) => engine(args, threads),
        BenchCommand::Network(args) => crate::bench_net::run(args, threads),
        BenchCommand::Serve(args) => crate::bench_serve::run(args, threads),
    }
}

/// Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads, 2 KV heads, tied embeddings, qkv biases.
fn qwen25_05b_shape() -> LlamaConfig {
    LlamaConfig {
        architecture: "qwen2".into(),
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_layers: 24,
        num_heads: 14,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_style: RopeStyle::Half,
        rope_freq_factors: None,
        max_seq_len: 32_768,
        tie_word_embeddings: true,
        attention_bias: true,
        bos_token_id: None,
        eos_token_ids: vec![151_643],
    }
}

fn write_random_model(path: &Path, ty: TensorType) -> anyhow::Result<()> {
    let cfg = qwen25_05b_shape();
    eprintln!(
        "writing random-weight Qwen2.5-0.5B-shaped GGUF ({}) to {}",
        ty.name(),
        path.display()
    );
    let weights = init_weights(&cfg, 0, &candle_core::Device::Cpu)?;
    // A small real BPE; the GGUF writer pads the vocabulary to the embedding's rows.
    let tokenizer = TextTokenizer::train_bpe(
        std::iter::once("the quick brown fox jumps over the lazy dog ".repeat(50)),
        300,
    )?;
    let tmp = path.with_extension("tmp");
    write_gguf(
        &tmp,
        &GgufExport {
            name: "random-qwen2.5-0.5b-shape",
            config: &cfg,
            tensors: &weights,
            tokenizer: &tokenizer,
            chat_template: None,
            matrix_type: ty,
        },
    )?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Figures {
    prefill: f64,
    decode: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Our engine: one prefill of P token ids, then G greedy single-token steps, as the
/// llama.cpp side does.
fn ours(path: &Path, args: &EngineArgs) -> anyhow::Result<Figures> {
    let model = load(path, &LoadOptions::default())?;
    let llama = &model.model;
    let vocab = llama.config().vocab_size as u32;
    let prompt: Vec<u32> = (1..=args.prompt_tokens as u32).map(|i| i % vocab).collect();
    let mut prefills = vec![];
    let mut decodes = vec![];
    for round in 0..=args.repeats {
        let mut cache = llama.new_cache();
        let started = Instant::now();
        let input = Tensor::new(prompt.as_slice(), llama.device())?.unsqueeze(0)?;
        let hidden = llama.forward_hidden(&input, Some(&mut cache), Mode::Serve)?;
        let last = hidden.i((0, prompt.len() - 1))?.unsqueeze(0)?;
        let mut logits: Vec<f32> = llama.logits(&last)?.squeeze(0)?.to_vec1()?;
        let prefill = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for _ in 0..args.gen_tokens {
            let next = agora_model::sampler::argmax(&logits);
            let input = Tensor::new(&[next], llama.device())?.unsqueeze(0)?;
            logits = llama
                .forward(&input, Some(&mut cache), Mode::Serve)?
                .flatten_all()?
                .to_vec1()?;
        }
        let decode = started.elapsed().as_secs_f64();
        if round > 0 {
            prefills.push(args.prompt_tokens as f64 / prefill);
            decodes.push(args.gen_tokens as f64 / decode);
        }
    }
    Ok(Figures {
        prefill: median(prefills),
        decode: median(decodes),
    })
}

fn llama_cpp(path: &Path, args: &EngineArgs, threads: usize) -> anyhow::Result<Figures> {
    let out = Command::new(&args.python)
        .arg(&args.llama_cpp)
        .args(["--model", &path.to_string_lossy()])
        .args(["--threads", &threads.to_string()])
        .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
        .args(["--gen-tokens", &args.gen_tokens.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .arg("--json")
        .output()
        .with_context(|| format!("running {} {}", args.python, args.llama_cpp.display()))?;
    if !out.status.success() {
        bail!(
            "llama.cpp benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("llama.cpp benchmark output is not JSON")?;
    let get = |k: &str| {
        json[k]
            .as_f64()
            .with_context(|| format!("llama.cpp output has no `{k}`"))
    };
    Ok(Figures {
        prefill: get("prefill_tok_s")?,
        decode: get("decode_tok_s")?,
    })
}

/// Bytes per second of a large memory copy, the bound on reading weights.
fn copy_bandwidth() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(started.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    // A copy reads n bytes and writes n bytes.
    2.0 * n as f64 / best
}

fn weight_bytes(path: &Path) -> anyhow::Result<u64> {
    let (header, _) = agora_gguf::open(path)?;
    Ok(header.tensors.iter().map(|t| t.byte_len()).sum())
}

fn engine(args: EngineArgs, threads: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let files: Vec<(String, PathBuf)> = match &args.model {
        Some(p) => vec![(p.display().to_string(), p.clone())],
        None => args
            .types
            .iter()
            .map(|ty| {
                let path = args.dir.join(format!(
                    "qwen2.5-0.5b-shape-{}.gguf",
                    ty.name().to_lowercase()
                ));
                if !path.exists() {
                    write_random_model(&path, *ty)?;
                }
                Ok((format!("Qwen2.5-0.5B shape, {}", ty.name()), path))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let bandwidth = copy_bandwidth();
    println!("threads {} | prompt {} tokens | decode {} tokens | median of {} | copy bandwidth {:.1} GB/s", threads, args.prompt_tokens, args.gen_tokens, args.repeats, bandwidth / 1e9);
    println!("| model | engine | prefill tok/s | decode tok/s | decode bound tok/s |");
    println!("|---|---|---|---|---|");
    for (label, path) in files {
        let bytes = weight_bytes(&path)?;
        let bound = bandwidth / bytes as f64;
        let ours = ours(&path, &args)?;
        println!(
            "| {label} | agora | {:.1} | {:.2} | {:.2} |",
            ours.prefill, ours.decode, bound
        );
        if args.no_llama_cpp {
            continue;
        }
        let theirs = llama_cpp(&path, &args, threads)?;
        println!(
            "| {label} | llama.cpp | {:.1} | {:.2} | {:.2} |",
            theirs.prefill, theirs.decode, bound
        );
        println!(
            "| {label} | **ratio** | **{:.2}x** | **{:.2}x** | weights {:.0} MB |",
            ours.prefill / theirs.prefill,
            ours.decode / theirs.decode,
            bytes as f64 / 1e6
        );
    }
    Ok(())
}
