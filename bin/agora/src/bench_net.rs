//! `agora bench network`: what the network costs. On a devnet with one provider, the same
//! seeded request runs through the engine alone (in this process) and through gateway,
//! libp2p and provider; then many clients stream at once.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_model::generate::{generate, Event, GenerateOptions};
use agora_model::{ChatMessage, LoadOptions, SamplingParams};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::http_client;

/// Arguments of `agora bench network`.
#[derive(Args)]
pub struct NetworkArgs {
    /// The model (the shipped one by default).
    #[arg(long, default_value = "models/agora-shakespeare")]
    model: PathBuf,
    /// Output tokens per request.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Runs of each side; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Clients streaming at once in the concurrency test.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Output tokens per request in the concurrency test.
    #[arg(long, default_value_t = 8)]
    client_tokens: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A devnet a benchmark started as a child process; stopped (SIGTERM) when dropped.
pub(crate) struct Devnet {
    child: Child,
    dir: tempfile::TempDir,
    /// What it wrote to `devnet.json`: endpoint, API key, models, providers.
    pub info: serde_json::Value,
}

impl Devnet {
    /// Runs `agora devnet` with `args` (plus `--port 0 --dir TMP`, quiet) and waits up to
    /// `wait` for it to write `devnet.json`.
    pub(crate) fn start(
        args: impl IntoIterator<Item = String>,
        wait: Duration,
    ) -> anyhow::Result<Devnet> {
        let dir = tempfile::tempdir()?;
        let child = Command::new(std::env::current_exe()?)
            .args(["devnet", "--port", "0"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the devnet")?;
        let mut devnet = Devnet {
            child,
            dir,
            info: serde_json::Value::Null,
        };
        let info_path = devnet.dir.path().join("devnet.json");
        let deadline = Instant::now() + wait;
        while !info_path.exists() {
            if Instant::now() > deadline || devnet.child.try_wait()?.is_some() {
                bail!("the devnet did not start");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        devnet.info = serde_json::from_str(&std::fs::read_to_string(&info_path)?)?;
        Ok(devnet)
    }

    /// A string field of `devnet.json`.
    pub(crate) fn field(&self, name: &str) -> anyhow::Result<String> {
        Ok(self.info[name]
            .as_str()
            .with_context(|| format!("devnet.json has no {name}"))?
            .to_string())
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark with `threads` kernel threads on both sides.
pub fn run(args: NetworkArgs, threads: usize) -> anyhow::Result<()> {
    let message = "Tell me a tale of two houses.";
    let seed = 17u64;

    // The engine alone, in this process.
    let model = agora_model::load(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let prompt = model
        .tokenizer
        .encode(&model.render_chat(&[ChatMessage::new("user", message)])?)?;
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
            ..Default::default()
        },
        max_tokens: args.tokens as usize,
        stop: vec![],
        stop_at_eos: true,
        resume: vec![],
    };

    // The same request through a devnet with one provider using the same threads.
    let devnet = Devnet::start(
        [
            "--providers".to_string(),
            "1".into(),
            "--provider-threads".into(),
            threads.to_string(),
            "--model".into(),
            args.model.display().to_string(),
        ],
        Duration::from_secs(180),
    )?;
    let (endpoint, key, name) = (
        devnet.field("endpoint")?,
        devnet.field("api_key")?,
        devnet.field("model")?,
    );
    let body = json!({"model": name, "messages": [{"role": "user", "content": message}],
        "max_tokens": args.tokens, "seed": seed, "temperature": 1.0, "stream": true,
        "stream_options": {"include_usage": true}})
    .to_string();
    // One warm-up of each side; the warm-up of the network opens the payment channel and
    // the libp2p connection.
    http_client::stream(&endpoint, &key, "/v1/chat/completions", &body)?;
    generate(&model, &prompt, &opts, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    // The two sides alternate so drift in the machine's speed hits both alike.
    let (mut e_ttft, mut e_tps, mut e_tokens, mut e_text) = (vec![], vec![], 0, String::new());
    let (mut n_ttft, mut n_tps, mut n_tokens, mut n_text) = (vec![], vec![], 0, String::new());
    for _ in 0..args.repeats.max(1) {
        let start = Instant::now();
        let mut first = None;
        let g = generate(&model, &prompt, &opts, |e| {
            if let Event::Token { .. } = e {
                first.get_or_insert_with(|| start.elapsed());
            }
            std::ops::ControlFlow::Continue(())
        })?;
        let total = start.elapsed();
        e_ttft.push(first.unwrap_or(total).as_secs_f64() * 1e3);
        e_tps.push(g.tokens.len() as f64 / total.as_secs_f64());
        e_tokens = g.tokens.len();
        e_text = g.text;

        let s = http_client::stream(&endpoint, &key, "/v1/chat/completions", &body)?;
        n_ttft.push(s.first_token.as_secs_f64() * 1e3);
        n_tps.push(s.completion_tokens as f64 / s.total.as_secs_f64());
        n_tokens = s.completion_tokens as usize;
        n_text = s.text;
    }
    if n_tokens != e_tokens || n_text != e_text {
        bail!("the network answered {n_tokens} tokens, the engine {e_tokens}: not the same answer");
    }
    let (et, nt) = (median(e_tps), median(n_tps));
    let (ef, nf) = (median(e_ttft), median(n_ttft));
    println!(
        "model {} | {} output tokens | {threads} threads | median of {}",
        args.model.display(),
        e_tokens,
        args.repeats
    );
    println!("{:<28} {:>12} {:>16}", "", "tokens/s", "first token ms");
    println!("{:<28} {:>12.1} {:>16.2}", "engine alone", et, ef);
    println!(
        "{:<28} {:>12.1} {:>16.2}",
        "gateway + libp2p + provider", nt, nf
    );
    println!(
        "ratio {:.3}x (goal >= 0.97x); time to first token added {:.2} ms (goal < 5 ms)",
        nt / et,
        nf - ef
    );

    // Many clients at once.
    let small = json!({"model": name, "messages": [{"role": "user", "content": "Speak."}],
        "max_tokens": args.client_tokens, "stream": true,
        "stream_options": {"include_usage": true}})
    .to_string();
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (endpoint, key, small) = (endpoint.clone(), key.clone(), small.clone());
            std::thread::spawn(move || {
                http_client::stream(&endpoint, &key, "/v1/chat/completions", &small)
            })
        })
        .collect();
    let mut errors = 0;
    let mut tokens = 0;
    let mut first = vec![];
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => {
                tokens += s.completion_tokens;
                first.push(s.first_token.as_secs_f64() * 1e3);
            }
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("client error: {e:#}");
            }
            Err(_) => errors += 1,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{} concurrent streaming clients: {} errors, {} tokens in {:.1} s ({:.1} tokens/s), median first token {:.0} ms",
        args.clients,
        errors,
        tokens,
        wall,
        tokens as f64 / wall,
        median(first)
    );
    if errors > 0 {
        bail!("{errors} of {} clients failed", args.clients);
    }
    Ok(())
}
