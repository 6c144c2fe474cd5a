//! `agora train`: train a model on a text file on this machine, with a progress bar,
//! periodic held-out validation, checkpoints, resume, and export.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use agora_gguf::TensorType;
use agora_model::chat::CHATML_TEMPLATE;
use agora_model::TextTokenizer;
use agora_train::data::{split_holdout, tokenize, Corpus};
use agora_train::trainer::{model_config, Progress, TrainSettings, Trainer};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::model_cmd::parse_tensor_type;

#[derive(Args)]
pub struct TrainArgs {
    /// A UTF-8 text file to train on.
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory: checkpoint, log, and the exported model under `model/`.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out (settings come from it; --steps may extend).
    #[arg(long)]
    pub resume: bool,
    /// Use this tokenizer.json instead of training a byte-level BPE.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of the BPE trained when no tokenizer is given.
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Fraction of the text (its end) held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub holdout: f64,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 688)]
    pub ffn: usize,
    /// Context length of the model.
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 3e-4)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 200)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 16384)]
    pub eval_tokens: usize,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Name recorded in exported files.
    #[arg(long, default_value = "agora-model")]
    pub name: String,
    /// GGUF files to export beside the safetensors (comma separated).
    #[arg(long, value_delimiter = ',', default_values = ["q8_0"], value_parser = parse_tensor_type)]
    pub gguf: Vec<TensorType>,
    #[command(flatten)]
    pub diloco: crate::diloco_cmd::DilocoArgs,
}

/// The tokenizer (given, or a byte-level BPE trained on the text), the model shape and the
/// training settings the flags describe.
pub fn fresh_setup(
    args: &TrainArgs,
    train_text: &str,
) -> anyhow::Result<(agora_model::LlamaConfig, TrainSettings, TextTokenizer)> {
    let tokenizer = match &args.tokenizer {
        Some(path) => TextTokenizer::from_file(path)?,
        None => {
            let started = Instant::now();
            let tok = TextTokenizer::train_bpe(train_text.lines(), args.vocab_size)?;
            tracing::info!(
                vocab = tok.vocab_size(),
                secs = started.elapsed().as_secs_f32(),
                "trained byte-level BPE"
            );
            tok
        }
    };
    let mut config = model_config(
        tokenizer.vocab_size(),
        args.layers,
        args.hidden,
        args.heads,
        args.kv_heads,
        args.ffn,
        args.context,
    );
    config.eos_token_ids = tokenizer
        .token_id(agora_model::tokenizer::END_OF_TEXT)
        .into_iter()
        .collect();
    let settings = TrainSettings {
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_steps: args.warmup,
        weight_decay: args.weight_decay,
        grad_clip: 1.0,
        eval_every: args.eval_every,
        eval_tokens: args.eval_tokens,
        checkpoint_every: args.checkpoint_every,
        seed: args.seed,
    };
    Ok((config, settings, tokenizer))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.diloco.islands.is_some() || args.diloco.join.is_some() {
        return crate::diloco_cmd::run(args);
    }
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let (train_text, val_text) = split_holdout(&text, args.holdout)?;
    tracing::info!(
        train_bytes = train_text.len(),
        heldout_bytes = val_text.len(),
        "data split"
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut trainer = if args.resume {
        let t = Trainer::resume(&args.out, Some(args.steps)).context("resuming")?;
        tracing::info!(step = t.step(), "resumed from checkpoint");
        t
    } else {
        if args.out.join("checkpoint").exists() {
            bail!(
                "{} already holds a checkpoint: pass --resume or another --out",
                args.out.display()
            );
        }
        let (config, settings, tokenizer) = fresh_setup(&args, train_text)?;
        Trainer::new(config, settings, tokenizer)?
    };
    let corpus = Corpus {
        train: tokenize(&trainer.tokenizer, train_text)?,
        val: tokenize(&trainer.tokenizer, val_text)?,
    };
    tracing::info!(
        parameters = trainer.config.parameter_count(),
        train_tokens = corpus.train.len(),
        heldout_tokens = corpus.val.len(),
        bytes_per_token = format!(
            "{:.2}",
            train_text.len() as f64 / corpus.train.len().max(1) as f64
        ),
        "starting"
    );

    let bar = ProgressBar::new(trainer.settings.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step());
    let log_path = args.out.join("train-log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut smoothed: Option<f64> = None;
    let mut log_err = None;
    trainer.run(&corpus, &args.out, |p| {
        let line = match p {
            Progress::Step { step, loss, lr, tokens_per_second } => {
                let s = smoothed.map_or(loss, |s| 0.95 * s + 0.05 * loss);
                smoothed = Some(s);
                bar.set_position(step);
                bar.set_message(format!("loss {s:.3} lr {lr:.1e} {tokens_per_second:.0} tok/s"));
                serde_json::json!({"step": step, "loss": loss, "lr": lr, "tokens_per_second": tokens_per_second})
            }
            Progress::Eval { step, eval } => {
                bar.println(format!("step {step}: held-out loss {:.4}, {:.3} bits per byte", eval.loss, eval.bits_per_byte));
                serde_json::json!({"step": step, "val_loss": eval.loss, "val_bits_per_byte": eval.bits_per_byte, "val_tokens": eval.tokens})
            }
            Progress::Checkpoint { step, path } => {
                tracing::debug!(step, path = %path.display(), "checkpoint written");
                return;
            }
        };
        if let Err(e) = writeln!(log, "{line}") {
            log_err = Some(e);
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = log_err {
        tracing::warn!("could not write {}: {e}", log_path.display());
    }
    let eval = trainer.last_eval.context("no final validation")?;
    let export_dir = args.out.join("model");
    let manifest = trainer.export(&export_dir, &args.name, Some(CHATML_TEMPLATE), &args.gguf)?;
    println!(
        "trained {} steps: held-out {:.3} bits per byte ({} tokens); exported {} (model id {})",
        trainer.step(),
        eval.bits_per_byte,
        eval.tokens,
        export_dir.display(),
        manifest.model_id()
    );
    Ok(())
}
