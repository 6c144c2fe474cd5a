//! The single-machine training loop: seeded batches, AdamW with warmup and cosine decay,
//! gradient clipping, periodic validation in bits per byte, checkpoints that resume exactly,
//! and export to safetensors and GGUF.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use agora_gguf::TensorType;
use agora_model::gguf_io::{write_gguf, GgufExport};
use agora_model::init::{init_weights, SeededRng};
use agora_model::safetensors_io::{read_safetensors, write_hf_dir};
use agora_model::weights::TensorSource;
use agora_model::{Llama, LlamaConfig, Manifest, Mode, TextTokenizer};
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::adamw::{AdamW, AdamWConfig};
use crate::data::Corpus;
use crate::error::{Result, TrainError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub steps: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Held-out tokens used by periodic validation (the final one uses all).
    pub eval_tokens: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            seq_len: 128,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 50,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 200,
            eval_tokens: 16_384,
            checkpoint_every: 500,
            seed: 1,
        }
    }
}

impl TrainSettings {
    pub fn validate(&self, cfg: &LlamaConfig) -> Result<()> {
        let bad = |m: String| Err(TrainError::Setting(m));
        if self.batch_size == 0 || self.seq_len == 0 {
            return bad("batch size and sequence length must be positive".into());
        }
        if self.seq_len > cfg.max_seq_len {
            return bad(format!(
                "seq_len {} exceeds the model context {}",
                self.seq_len, cfg.max_seq_len
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "learning rates lr={} min_lr={} are invalid",
                self.lr, self.min_lr
            ));
        }
        Ok(())
    }

    /// Linear warmup, then cosine decay to `min_lr` at the last step.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        self.min_lr
            + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// A tiny random-weight model in the Hugging Face layout (BPE of 300 tokens, 2 layers,
/// hidden 64, context 128, ChatML template): what tests and examples load when they need a
/// real model that builds in milliseconds.
pub fn write_tiny_model(dir: &std::path::Path) -> Result<()> {
    let text = "Hark, who goes there? A friend to this ground.\n".repeat(20);
    let tok = agora_model::TextTokenizer::train_bpe(std::iter::once(text), 300)?;
    let cfg = model_config(tok.vocab_size(), 2, 64, 4, 2, 128, 128);
    let w = agora_model::init::init_weights(&cfg, 1, &candle_core::Device::Cpu)?;
    agora_model::safetensors_io::write_hf_dir(
        dir,
        &cfg,
        &w,
        &tok,
        Some(agora_model::chat::CHATML_TEMPLATE),
    )?;
    Ok(())
}

/// The configuration of a model this project trains: Llama architecture, byte-level BPE
/// vocabulary, grouped-query attention, untied head.
pub fn model_config(
    vocab_size: usize,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    context: usize,
) -> LlamaConfig {
    LlamaConfig {
        architecture: "llama".into(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads.max(1),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_style: agora_model::RopeStyle::Half,
        rope_freq_factors: None,
        max_seq_len: context,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![0],
    }
}

/// A validation result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub loss: f64,
    pub bits_per_byte: f64,
    pub tokens: usize,
    pub bytes: usize,
}

/// What the loop reports.
pub enum Progress {
    Step {
        step: u64,
        loss: f64,
        lr: f64,
        tokens_per_second: f64,
    },
    Eval {
        step: u64,
        eval: Eval,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
}

/// Bytes each token stands for: byte-level BPE tokens are one character per byte; special
/// tokens count as their text.
pub fn token_byte_lengths(tokenizer: &TextTokenizer) -> Result<Vec<usize>> {
    Ok(tokenizer
        .vocab_by_id()?
        .into_iter()
        .map(|(t, ty)| if ty == 3 { t.len() } else { t.chars().count() })
        .collect())
}

/// Mean next-token loss (nats) and bits per byte over `ids[..=max_tokens]`, in windows of
/// `seq_len + 1` that overlap by one token so every token after the first is predicted once.
pub fn evaluate(
    model: &Llama,
    byte_lengths: &[usize],
    ids: &[u32],
    seq_len: usize,
    max_tokens: usize,
) -> Result<Eval> {
    let ids = &ids[..ids.len().min(max_tokens.saturating_add(1))];
    if ids.len() < 2 {
        return Err(TrainError::Data(
            "too few held-out tokens to validate".into(),
        ));
    }
    let device = model.device();
    let mut nats = 0f64;
    let mut tokens = 0usize;
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + seq_len + 1).min(ids.len());
        let window = &ids[start..end];
        let input = Tensor::new(&window[..window.len() - 1], device)?.unsqueeze(0)?;
        let target = Tensor::new(&window[1..], device)?;
        let logits = model.forward(&input, None, Mode::Serve)?.squeeze(0)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&target.unsqueeze(1)?, 1)?;
        nats -= picked.sum_all()?.to_scalar::<f32>()? as f64;
        tokens += window.len() - 1;
        start = end - 1;
    }
    let bytes: usize = ids[1..]
        .iter()
        .map(|&t| byte_lengths.get(t as usize).copied().unwrap_or(1))
        .sum();
    Ok(Eval {
        loss: nats / tokens as f64,
        bits_per_byte: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
        tokens,
        bytes,
    })
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    rng_state: u64,
    settings: TrainSettings,
    model: LlamaConfig,
    last_eval: Option<Eval>,
}

pub struct Trainer {
    pub config: LlamaConfig,
    pub settings: TrainSettings,
    pub tokenizer: TextTokenizer,
    vars: BTreeMap<String, Var>,
    model: Llama,
    opt: AdamW,
    rng: SeededRng,
    byte_lengths: Vec<usize>,
    pub last_eval: Option<Eval>,
}

fn build(config: &LlamaConfig, vars: &BTreeMap<String, Var>, device: &Device) -> Result<Llama> {
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    Ok(Llama::load(
        &mut TensorSource::new(tensors, device.clone()),
        config,
    )?)
}

impl Trainer {
    /// A new run from seeded random weights.
    pub fn new(
        config: LlamaConfig,
        settings: TrainSettings,
        tokenizer: TextTokenizer,
    ) -> Result<Self> {
        settings.validate(&config)?;
        let device = Device::Cpu;
        let weights = init_weights(&config, settings.seed, &device)?;
        Self::from_weights(config, settings, tokenizer, weights)
    }

    fn from_weights(
        config: LlamaConfig,
        settings: TrainSettings,
        tokenizer: TextTokenizer,
        weights: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let vars: BTreeMap<String, Var> = weights
            .into_iter()
            .map(|(k, t)| Ok((k, Var::from_tensor(&t.to_dtype(DType::F32)?)?)))
            .collect::<Result<_>>()?;
        let model = build(&config, &vars, &device)?;
        let opt = AdamW::new(
            &vars,
            AdamWConfig {
                weight_decay: settings.weight_decay,
                ..Default::default()
            },
        )?;
        Ok(Self {
            byte_lengths: token_byte_lengths(&tokenizer)?,
            rng: SeededRng::new(settings.seed ^ 0x5EED_DA7A),
            config,
            settings,
            tokenizer,
            vars,
            model,
            opt,
            last_eval: None,
        })
    }

    pub fn step(&self) -> u64 {
        self.opt.step
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The current weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Mean next-token loss of a batch, recorded for backprop.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.model.forward(inputs, None, Mode::Train)?;
        let (b, t, v) = logits.dims3()?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.reshape((b * t, v))?,
            &targets.reshape(b * t)?,
        )?)
    }

    /// One optimizer step on a fresh batch; returns the loss before the update.
    pub fn train_step(&mut self, corpus: &Corpus) -> Result<f64> {
        let device = self.model.device().clone();
        let (inputs, targets) = corpus.batch(
            &mut self.rng,
            self.settings.batch_size,
            self.settings.seq_len,
            &device,
        )?;
        let lr = self.settings.lr_at(self.opt.step);
        self.train_step_on(&inputs, &targets, lr)
    }

    /// One optimizer step on a given batch at learning rate `lr`; returns the loss before
    /// the update. DiLoCo islands choose their own batches and schedule through this.
    pub fn train_step_on(&mut self, inputs: &Tensor, targets: &Tensor, lr: f64) -> Result<f64> {
        let loss = self.loss(inputs, targets)?;
        let grads = loss.backward()?;
        let norm = self.opt.grad_norm(&grads)?;
        let scale = if self.settings.grad_clip > 0.0 && norm > self.settings.grad_clip {
            self.settings.grad_clip / norm
        } else {
            1.0
        };
        self.opt.step(&grads, lr, scale)?;
        let loss = loss.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(TrainError::Data(format!(
                "loss diverged ({loss}) at step {}",
                self.opt.step
            )));
        }
        Ok(loss)
    }

    pub fn evaluate(&self, corpus: &Corpus, max_tokens: usize) -> Result<Eval> {
        evaluate(
            &self.model,
            &self.byte_lengths,
            &corpus.val,
            self.settings.seq_len,
            max_tokens,
        )
    }

    /// Train until `settings.steps`, reporting progress, validating and checkpointing into
    /// `run_dir` as configured.
    pub fn run(
        &mut self,
        corpus: &Corpus,
        run_dir: &Path,
        mut report: impl FnMut(Progress),
    ) -> Result<()> {
        let tokens_per_step = (self.settings.batch_size * self.settings.seq_len) as f64;
        while self.opt.step < self.settings.steps {
            let started = Instant::now();
            let lr = self.settings.lr_at(self.opt.step);
            let loss = self.train_step(corpus)?;
            let step = self.opt.step;
            report(Progress::Step {
                step,
                loss,
                lr,
                tokens_per_second: tokens_per_step / started.elapsed().as_secs_f64().max(1e-9),
            });
            if self.settings.eval_every > 0
                && step.is_multiple_of(self.settings.eval_every)
                && step < self.settings.steps
            {
                let eval = self.evaluate(corpus, self.settings.eval_tokens)?;
                self.last_eval = Some(eval);
                report(Progress::Eval { step, eval });
            }
            if self.settings.checkpoint_every > 0
                && step.is_multiple_of(self.settings.checkpoint_every)
            {
                let path = self.save_checkpoint(run_dir)?;
                report(Progress::Checkpoint { step, path });
            }
        }
        let eval = self.evaluate(corpus, usize::MAX)?;
        self.last_eval = Some(eval);
        report(Progress::Eval {
            step: self.opt.step,
            eval,
        });
        let path = self.save_checkpoint(run_dir)?;
        report(Progress::Checkpoint {
            step: self.opt.step,
            path,
        });
        Ok(())
    }

    /// Writes `run_dir/checkpoint` (weights, optimizer moments, state, tokenizer) through a
    /// temporary directory renamed into place, so a crash leaves the old or the new one.
    pub fn save_checkpoint(&self, run_dir: &Path) -> Result<PathBuf> {
        let final_dir = run_dir.join("checkpoint");
        let tmp = run_dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let save = |name: &str, tensors: &HashMap<String, Tensor>| -> Result<()> {
            let path = tmp.join(name);
            candle_core::safetensors::save(tensors, &path).map_err(|e| TrainError::Checkpoint {
                path,
                message: e.to_string(),
            })
        };
        save("model.safetensors", &self.weights())?;
        save("optimizer.safetensors", &self.opt.state_tensors())?;
        let state = CheckpointState {
            step: self.opt.step,
            rng_state: self.rng.state(),
            settings: self.settings.clone(),
            model: self.config.clone(),
            last_eval: self.last_eval,
        };
        let write = |name: &str, body: String| -> Result<()> {
            let path = tmp.join(name);
            std::fs::write(&path, body).map_err(|e| TrainError::io(&path, e))
        };
        write(
            "state.json",
            serde_json::to_string_pretty(&state).unwrap_or_default(),
        )?;
        write("tokenizer.json", self.tokenizer.to_json()?)?;
        let old = run_dir.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if final_dir.exists() {
            std::fs::rename(&final_dir, &old).map_err(|e| TrainError::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(final_dir)
    }

    /// Continue a run from `run_dir/checkpoint`; `steps` may extend the run.
    pub fn resume(run_dir: &Path, steps: Option<u64>) -> Result<Self> {
        let dir = run_dir.join("checkpoint");
        let state_path = dir.join("state.json");
        let body =
            std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let state: CheckpointState =
            serde_json::from_str(&body).map_err(|e| TrainError::Checkpoint {
                path: state_path.clone(),
                message: e.to_string(),
            })?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let load = |name: &str| -> Result<HashMap<String, Tensor>> {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
            Ok(read_safetensors(&path, &bytes, &Device::Cpu)?)
        };
        let mut settings = state.settings;
        if let Some(steps) = steps {
            settings.steps = steps;
        }
        let mut trainer =
            Self::from_weights(state.model, settings, tokenizer, load("model.safetensors")?)?;
        trainer
            .opt
            .load_state(&load("optimizer.safetensors")?, state.step)?;
        trainer.rng = SeededRng::new(state.rng_state);
        trainer.last_eval = state.last_eval;
        Ok(trainer)
    }

    /// Export to `dir` in the Hugging Face layout (f32 safetensors, with `manifest.json`) and
    /// as `model-<type>.gguf` for each type; returns the safetensors manifest.
    pub fn export(
        &self,
        dir: &Path,
        name: &str,
        chat_template: Option<&str>,
        gguf_types: &[TensorType],
    ) -> Result<Manifest> {
        let weights = self.weights();
        let manifest = write_hf_dir(dir, &self.config, &weights, &self.tokenizer, chat_template)?;
        for &ty in gguf_types {
            let path = dir.join(format!("model-{}.gguf", ty.name().to_lowercase()));
            write_gguf(
                &path,
                &GgufExport {
                    name,
                    config: &self.config,
                    tensors: &weights,
                    tokenizer: &self.tokenizer,
                    chat_template,
                    matrix_type: ty,
                },
            )?;
        }
        Ok(manifest)
    }
}
