//! `agora generate`: stream a completion from a local model.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use agora_model::generate::{generate, Event, GenerateOptions};
use agora_model::{load, ChatMessage, LoadOptions, SamplingParams};
use anyhow::Context;
use clap::Args;

use crate::model_cmd::parse_quantization;

#[derive(Args)]
pub struct GenerateArgs {
    /// A .gguf file or a Hugging Face directory (config.json, safetensors, tokenizer.json).
    #[arg(long, default_value = "models/agora-shakespeare")]
    pub model: PathBuf,
    /// The prompt (a user message with --chat).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Sampling seed; the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (for benchmarks and tests).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Quantize a safetensors model on load (q8_0, q4_0, q4_k, f16).
    #[arg(long, value_parser = parse_quantization)]
    pub quantize: Option<agora_model::GgmlDType>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let model = load(
        &args.model,
        &LoadOptions {
            quantize: args.quantize,
        },
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    tracing::info!(model = %model.id, path = %args.model.display(), "model loaded");
    let text = if args.chat {
        let mut messages = vec![];
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        model.render_chat(&messages)?
    } else {
        args.prompt.clone()
    };
    let prompt = model.tokenizer.encode(&text)?;
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            ..Default::default()
        },
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        stop_at_eos: !args.ignore_eos,
        resume: vec![],
    };
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{}", args.prompt)?;
    }
    let result = generate(&model, &prompt, &opts, |event| {
        let piece = match event {
            Event::Token { text, .. } | Event::Tail { text } => text,
            Event::Prefill { .. } => "",
        };
        if write!(out, "{piece}").and_then(|_| out.flush()).is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    writeln!(out)?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s | finish: {:?}",
        result.prompt_tokens,
        result.prefill_tokens_per_second(),
        result.tokens.len(),
        result.decode_tokens_per_second(),
        result.finish_reason,
    );
    Ok(())
}
