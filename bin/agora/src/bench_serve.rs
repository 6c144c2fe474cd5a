//! `agora bench serve`: one provider under N concurrent streaming clients. A devnet with one
//! provider (and no verifiers, so audits do not share its cores) serves every level of
//! concurrency in turn through the gateway; each level prints the aggregate tokens/s, time to
//! first token p50/p99, errors and the provider's peak resident memory, beside the
//! single-stream figure measured in the same run.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use agora_model::{ChatMessage, LoadOptions};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::bench_net::Devnet;
use crate::http_client;

/// Arguments of `agora bench serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The model the provider serves (the shipped one by default).
    #[arg(long, default_value = "models/agora-shakespeare")]
    model: PathBuf,
    /// Concurrent streaming clients, one level after another (1 is always measured first:
    /// it is the single-stream anchor).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16, 64])]
    clients: Vec<usize>,
    /// Output tokens each client asks for.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Prompt tokens per request (after the chat template), filled with text; 0 sends a
    /// short question.
    #[arg(long, default_value_t = 0)]
    prompt_tokens: usize,
    /// Requests the provider holds at once, waiting or generating.
    #[arg(long, default_value_t = 256)]
    capacity: u32,
}

/// What one level of concurrency measured.
struct Level {
    clients: usize,
    tokens: u64,
    wall: f64,
    first_ms: Vec<f64>,
    errors: usize,
    peak_rss_mib: Option<f64>,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A `/proc/<pid>/status` field in MiB (Linux only).
fn proc_mib(pid: u64, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A user message whose chat prompt has about `tokens` tokens.
fn long_message(args: &ServeArgs, client: usize) -> anyhow::Result<String> {
    let model = agora_model::load(&args.model, &LoadOptions::default())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let filler = "The river ran past the old mill, and the miller counted the sacks twice. ";
    let mut text = format!("Client {client}. Summarise this story. ");
    loop {
        let ids = model
            .tokenizer
            .encode(&model.render_chat(&[ChatMessage::new("user", &text)])?)?;
        if ids.len() >= args.prompt_tokens {
            return Ok(text);
        }
        text.push_str(filler);
    }
}

/// Runs the benchmark; `threads` kernel threads for the provider.
pub fn run(args: ServeArgs, threads: usize) -> anyhow::Result<()> {
    let most = args.clients.iter().copied().max().unwrap_or(1).max(1);
    let devnet = Devnet::start(
        [
            "--providers",
            "1",
            "--verifiers",
            "0",
            "--provider-threads",
            threads.to_string().as_str(),
            "--provider-capacity",
            args.capacity.to_string().as_str(),
            // A request waiting for its first token behind many others is not a dead provider.
            "--stall-ms",
            "300000",
            // One API key stands for every client: let it have them all in flight.
            "--key-concurrency",
            (most + 1).to_string().as_str(),
            "--key-burst",
            (most + 1).to_string().as_str(),
            "--model",
            args.model.display().to_string().as_str(),
        ]
        .map(String::from),
        Duration::from_secs(300),
    )?;
    let (endpoint, key, name) = (
        devnet.field("endpoint")?,
        devnet.field("api_key")?,
        devnet.field("model")?,
    );
    let provider_pid = devnet.info["providers"][0]["pid"].as_u64();

    let message = if args.prompt_tokens > 0 {
        Some(long_message(&args, 0)?)
    } else {
        None
    };
    let body = |client: usize, seed: u64| {
        let content = match &message {
            Some(m) => format!("{client} {m}"),
            None => format!("Question {client}: what makes a good story?"),
        };
        json!({"model": name, "messages": [{"role": "user", "content": content}],
            "max_tokens": args.tokens, "seed": seed, "temperature": 1.0, "stream": true,
            "stream_options": {"include_usage": true}})
        .to_string()
    };
    // The warm-up opens the payment channel and the libp2p connection.
    http_client::stream(&endpoint, &key, "/v1/chat/completions", &body(0, 0))
        .context("the warm-up request")?;

    let mut levels: Vec<usize> = vec![1];
    levels.extend(args.clients.iter().copied().filter(|&c| c != 1 && c > 0));
    let mut results = vec![];
    let bar = indicatif::ProgressBar::new(levels.len() as u64).with_message("levels");
    for (round, &clients) in levels.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(clients + 1));
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (endpoint, key, barrier) = (endpoint.clone(), key.clone(), barrier.clone());
                let body = body(c, (round * 100_000 + c) as u64 + 1);
                std::thread::spawn(move || {
                    barrier.wait();
                    http_client::stream(&endpoint, &key, "/v1/chat/completions", &body)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let (mut tokens, mut errors, mut first_ms) = (0, 0, vec![]);
        for h in handles {
            match h.join() {
                Ok(Ok(s)) => {
                    tokens += s.completion_tokens;
                    first_ms.push(s.first_token.as_secs_f64() * 1e3);
                }
                Ok(Err(e)) => {
                    errors += 1;
                    eprintln!("client error: {e:#}");
                }
                Err(_) => errors += 1,
            }
        }
        results.push(Level {
            clients,
            tokens,
            wall: start.elapsed().as_secs_f64(),
            first_ms,
            errors,
            peak_rss_mib: provider_pid.and_then(|p| proc_mib(p, "VmHWM:")),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let single = results
        .first()
        .map(|l| l.tokens as f64 / l.wall)
        .unwrap_or(f64::NAN);
    println!(
        "model {} | {} output tokens per request | prompt {} | {threads} provider threads | one provider, no verifiers",
        args.model.display(),
        args.tokens,
        if args.prompt_tokens > 0 {
            format!("~{} tokens", args.prompt_tokens)
        } else {
            "a short question".into()
        }
    );
    println!(
        "{:>8} {:>10} {:>12} {:>8} {:>12} {:>12} {:>7} {:>14}",
        "clients",
        "tokens",
        "tokens/s",
        "ratio",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "errors",
        "peak RSS MiB"
    );
    for l in &results {
        let tps = l.tokens as f64 / l.wall;
        println!(
            "{:>8} {:>10} {:>12.1} {:>7.2}x {:>12.0} {:>12.0} {:>7} {:>14}",
            l.clients,
            l.tokens,
            tps,
            tps / single,
            percentile(&l.first_ms, 50.0),
            percentile(&l.first_ms, 99.0),
            l.errors,
            l.peak_rss_mib
                .map_or("-".to_string(), |m| format!("{m:.0}"))
        );
    }
    println!("ratio: aggregate tokens/s against the single-stream figure of the same run");
    let errors: usize = results.iter().map(|l| l.errors).sum();
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
