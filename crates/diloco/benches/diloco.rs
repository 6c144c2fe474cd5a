//! DiLoCo against synchronous data-parallel training on the same tokens: bytes each worker
//! sends per round, and held-out bits per byte at the end, with all islands and with half of
//! them dropped from every round. `docs/BENCHMARKS.md` ("DiLoCo") quotes its output.
//!
//! `cargo bench -p agora-diloco --bench diloco`
//!
//! Environment: `AGORA_DILOCO_TEXT` (a text file; default: a generated text),
//! `AGORA_DILOCO_BYTES` (text bytes used, default 400000), `AGORA_DILOCO_H` (inner steps per
//! round, default 100), `AGORA_DILOCO_ROUNDS` (default 6), `AGORA_DILOCO_ISLANDS` (default 4),
//! `AGORA_DILOCO_OUTER_LR` and `AGORA_DILOCO_MOMENTUM` (outer step, default 0.7 and 0.9),
//! `AGORA_DILOCO_SCALE_LR` (1, the default: a round with k of n islands steps at
//! lr·sqrt(k/n); 0: at lr),
//! `AGORA_DILOCO_INNER_LR` (peak learning rate of the islands, default 3e-3, cosine to a
//! tenth), `AGORA_DILOCO_DP_LR` (DP's, a comma-separated list: DP trains at each and the best
//! is the anchor; default 3e-3), `AGORA_DILOCO_WARMUP` (inner warmup steps,
//! default 20), `AGORA_DILOCO_RUNS` (which of `dp,diloco,half` to run, default all; a skipped run shows
//! as NaN), `AGORA_DILOCO_OUT` (JSON summary with the per-round curves, default
//! `target/diloco.json`), `AGORA_DILOCO_SVG` (the curves as a picture, default
//! `target/diloco.svg`), `AGORA_DILOCO_BATCH` and `AGORA_DILOCO_SEQ` (sequences per island
//! batch and their length, default 4 and 64). The runs train side by side, islands a thread
//! each, with `RAYON_NUM_THREADS=1` unless set.
//!
//! Synchronous data parallel: one model, each step's batch the concatenation of the batches
//! the islands draw for that (round, step), so both see exactly the same tokens; the same
//! AdamW, schedule and clipping. Its traffic is one fp32 gradient per worker per step.
//! DiLoCo's is one encoded pseudo-gradient per island per round (int8 blocks of 256 with an
//! f32 scale). "Entropy-coded" is the order-0 entropy of the payload bytes: what a plain
//! Huffman/ANS pass over the payload would reach (not implemented).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use agora_diloco::codec::Codec;
use agora_diloco::curve::{write_svg, Series};
use agora_diloco::data::{self, BatchKey};
use agora_diloco::run::{Driver, RunConfig};
use agora_model::init::SeededRng;
use agora_model::TextTokenizer;
use agora_train::data::{split_holdout, tokenize, Corpus};
use agora_train::trainer::{model_config, TrainSettings, Trainer};
use agora_train::Eval;
use candle_core::{Device, Tensor};
use serde_json::json;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seeded text with some structure to learn: speakers, stock phrases, agreement.
fn generated_text(bytes: usize) -> String {
    const WHO: [&str; 8] = [
        "KING", "QUEEN", "LORD", "FOOL", "DUKE", "NURSE", "ROMEO", "JULIET",
    ];
    const SUBJ: [&str; 8] = [
        "the king",
        "my lord",
        "the night",
        "your grace",
        "this love",
        "the crown",
        "a fool",
        "the moon",
    ];
    const VERB: [&str; 8] = [
        "is",
        "was",
        "shall be",
        "seems",
        "must be",
        "will be",
        "hath been",
        "may be",
    ];
    const ADJ: [&str; 12] = [
        "good", "wise", "fair", "cold", "false", "true", "young", "old", "sweet", "dark", "gentle",
        "proud",
    ];
    let mut rng = SeededRng::new(2024);
    let mut out = String::with_capacity(bytes + 100);
    let pick = |rng: &mut SeededRng, n: usize| rng.below(n as u64) as usize;
    while out.len() < bytes {
        let who = WHO[pick(&mut rng, WHO.len())];
        out.push_str(who);
        out.push_str(".\n");
        for _ in 0..1 + pick(&mut rng, 3) {
            let s = SUBJ[pick(&mut rng, SUBJ.len())];
            let v = VERB[pick(&mut rng, VERB.len())];
            let a = ADJ[pick(&mut rng, ADJ.len())];
            let b = ADJ[pick(&mut rng, ADJ.len())];
            out.push_str(&format!("I say {s} {v} {a}, and {s} {v} {b}.\n"));
        }
        out.push('\n');
    }
    out
}

struct Setup {
    tok: TextTokenizer,
    corpus: Corpus,
    source: String,
    /// Sequences per island batch (`AGORA_DILOCO_BATCH`); DP's batch is this times the
    /// islands.
    batch: usize,
    /// Tokens per sequence (`AGORA_DILOCO_SEQ`).
    seq: usize,
}

fn setup() -> Setup {
    let limit: usize = env("AGORA_DILOCO_BYTES", 400_000);
    let (mut text, source) = match std::env::var("AGORA_DILOCO_TEXT") {
        Ok(path) => match std::fs::read_to_string(&path) {
            Ok(t) => (t, path),
            Err(e) => {
                eprintln!("{path}: {e}; using the generated text");
                (generated_text(limit), "generated".into())
            }
        },
        Err(_) => (generated_text(limit), "generated".into()),
    };
    let mut cut = limit.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    let (train, val) = split_holdout(&text, 0.05).expect("split");
    let tok = TextTokenizer::train_bpe(std::iter::once(train), 512).expect("tokenizer");
    let corpus = Corpus {
        train: tokenize(&tok, train).expect("tokenize"),
        val: tokenize(&tok, val).expect("tokenize"),
    };
    Setup {
        tok,
        corpus,
        source,
        batch: env("AGORA_DILOCO_BATCH", 4),
        seq: env("AGORA_DILOCO_SEQ", 64),
    }
}

const EVAL_TOKENS: usize = 8192;

/// `lr` is the peak of the inner schedule (cosine to a tenth of it).
fn trainer(s: &Setup, batch: usize, steps: u64, lr: f64) -> Trainer {
    let cfg = model_config(s.tok.vocab_size(), 2, 64, 4, 2, 176, s.seq);
    let settings = TrainSettings {
        steps,
        batch_size: batch,
        seq_len: s.seq,
        lr,
        min_lr: lr / 10.0,
        warmup_steps: env("AGORA_DILOCO_WARMUP", 20),
        eval_every: 0,
        eval_tokens: EVAL_TOKENS,
        checkpoint_every: 0,
        seed: 1,
        ..TrainSettings::default()
    };
    Trainer::new(cfg, settings, s.tok.clone()).expect("trainer")
}

/// Held-out bits per byte after each round (for DP: after each `H` steps).
type Curve = Vec<f64>;

/// Synchronous data parallel over the islands' batches.
fn data_parallel(s: &Setup, cfg: &RunConfig, lr: f64) -> (Eval, f64, Curve) {
    let started = Instant::now();
    let steps = cfg.rounds * cfg.inner_steps;
    let mut t = trainer(s, s.batch * cfg.islands, steps, lr);
    let mut curve = Vec::new();
    let mut last = None;
    for round in 0..cfg.rounds {
        for step in 0..cfg.inner_steps {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for island in 0..cfg.islands as u64 {
                let key = BatchKey {
                    run_seed: cfg.run_seed,
                    round,
                    island,
                    step,
                };
                let (x, y) =
                    data::batch(&s.corpus, key, s.batch, s.seq, &Device::Cpu).expect("batch");
                xs.push(x);
                ys.push(y);
            }
            let x = Tensor::cat(&xs, 0).expect("cat");
            let y = Tensor::cat(&ys, 0).expect("cat");
            let lr = t.settings.lr_at(round * cfg.inner_steps + step);
            t.train_step_on(&x, &y, lr).expect("step");
        }
        let eval = t.evaluate(&s.corpus, EVAL_TOKENS).expect("eval");
        eprintln!("  sync DP after round {round}: {:.4}", eval.bits_per_byte);
        curve.push(eval.bits_per_byte);
        last = Some(eval);
    }
    let eval = last.unwrap_or_else(|| t.evaluate(&s.corpus, EVAL_TOKENS).expect("eval"));
    (eval, started.elapsed().as_secs_f64(), curve)
}

struct DilocoResult {
    eval: Eval,
    seconds: f64,
    payload_bytes_per_island_round: f64,
    entropy_bytes_per_island_round: f64,
    refused: usize,
    curve: Curve,
}

/// Order-0 entropy of `bytes`, in bytes.
fn entropy_bytes(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| -(c as f64) * (c as f64 / n).log2())
        .sum::<f64>()
        / 8.0
}

fn diloco(s: &Setup, cfg: &RunConfig, lr: f64, drop_half: bool) -> DilocoResult {
    let started = Instant::now();
    let steps = cfg.rounds * cfg.inner_steps;
    let name = if drop_half { "half dropped" } else { "DiLoCo" };
    let mut d = Driver::new(cfg.clone(), |_| Ok(trainer(s, s.batch, steps, lr))).expect("driver");
    let mut curve = Vec::new();
    let mut last = None;
    let n = cfg.islands as u64;
    let mut payload = 0u64;
    let mut entropy = 0f64;
    let mut sent = 0u64;
    let mut refused = 0;
    let mut rng = SeededRng::new(99);
    while d.global().round < cfg.rounds {
        let mut dropped = BTreeSet::new();
        if drop_half {
            while (dropped.len() as u64) < n / 2 {
                dropped.insert(rng.below(n));
            }
        }
        let r = d.run_round(&s.corpus, &dropped).expect("round");
        payload += r.payload_bytes;
        sent += n - dropped.len() as u64;
        refused += r.refused.len();
        // Payload entropy as measured on the last round's payloads.
        let (bytes, bits): (usize, f64) = r
            .contributions
            .iter()
            .map(|c| (c.payload.len(), entropy_bytes(&c.payload)))
            .fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        if bytes > 0 {
            entropy = bits / r.contributions.len() as f64;
        }
        for (id, why) in &r.refused {
            eprintln!("round {} island {id} refused: {why}", r.round);
        }
        let eval = d.islands()[0]
            .trainer()
            .evaluate(&s.corpus, EVAL_TOKENS)
            .expect("eval");
        curve.push(eval.bits_per_byte);
        eprintln!(
            "  {name} round {}: islands {:?}, own-batch loss {:.3} -> {:.3}, held-out {:.4}",
            r.round, r.accepted, r.mean_loss_before, r.mean_loss_after, eval.bits_per_byte
        );
        last = Some(eval);
    }
    let eval = last.unwrap_or_else(|| {
        d.islands()[0]
            .trainer()
            .evaluate(&s.corpus, EVAL_TOKENS)
            .expect("eval")
    });
    DilocoResult {
        eval,
        seconds: started.elapsed().as_secs_f64(),
        payload_bytes_per_island_round: payload as f64 / sent.max(1) as f64,
        entropy_bytes_per_island_round: entropy,
        refused,
        curve,
    }
}

fn skipped() -> DilocoResult {
    DilocoResult {
        eval: Eval {
            loss: f64::NAN,
            bits_per_byte: f64::NAN,
            tokens: 0,
            bytes: 0,
        },
        seconds: 0.0,
        payload_bytes_per_island_round: f64::NAN,
        entropy_bytes_per_island_round: f64::NAN,
        refused: 0,
        curve: Vec::new(),
    }
}

fn main() {
    // The runs and the islands train side by side, a thread each; candle's own kernel threads
    // on top of them oversubscribe the cores (measured: 2.5x slower on 2 cores).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let s = setup();
    let islands: usize = env("AGORA_DILOCO_ISLANDS", 4);
    let cfg = RunConfig {
        islands,
        inner_steps: env("AGORA_DILOCO_H", 100),
        rounds: env("AGORA_DILOCO_ROUNDS", 6),
        codec: Codec::default(),
        run_seed: 5,
        outer: agora_diloco::OuterConfig {
            lr: env("AGORA_DILOCO_OUTER_LR", 0.7),
            momentum: env("AGORA_DILOCO_MOMENTUM", 0.9),
            nesterov: true,
            // The half-dropped run steps at lr·sqrt(k/n) unless AGORA_DILOCO_SCALE_LR=0.
            lr_islands: (env("AGORA_DILOCO_SCALE_LR", 1) != 0).then_some(islands as u64),
        },
        ..RunConfig::default()
    };
    let runs: String = env("AGORA_DILOCO_RUNS", "dp,diloco,half".to_string());
    let wanted = |name: &str| runs.split(',').any(|r| r.trim() == name);
    // The anchor is tuned too: DP trains at every learning rate listed, and the best one
    // (lowest held-out bits per byte at the end) is what DiLoCo is compared with.
    let dp_lrs: Vec<f64> = env("AGORA_DILOCO_DP_LR", "3e-3".to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let inner_lr: f64 = env("AGORA_DILOCO_INNER_LR", 3e-3);
    let params = trainer(&s, s.batch, 1, inner_lr)
        .vars()
        .values()
        .map(|v| v.elem_count())
        .sum::<usize>();
    eprintln!(
        "text: {} ({} train / {} held-out tokens), model {} parameters, {} islands, H={}, {} rounds",
        s.source,
        s.corpus.train.len(),
        s.corpus.val.len(),
        params,
        cfg.islands,
        cfg.inner_steps,
        cfg.rounds
    );
    eprintln!(
        "outer lr {} (scaled by sqrt(k/n) in rounds with k of n islands: {}), momentum {}; inner lr {inner_lr}, DP lr {dp_lrs:?}",
        cfg.outer.lr,
        cfg.outer.lr_islands.is_some(),
        cfg.outer.momentum
    );
    // The three runs are independent: run them side by side (wall times overlap).
    let (s, cfg) = (&s, &cfg);
    let (dps, all, half) = std::thread::scope(|scope| {
        let dps: Vec<_> = dp_lrs
            .iter()
            .filter(|_| wanted("dp"))
            .map(|&lr| scope.spawn(move || (lr, data_parallel(s, cfg, lr))))
            .collect();
        let all = scope.spawn(|| wanted("diloco").then(|| diloco(s, cfg, inner_lr, false)));
        let half = scope.spawn(|| wanted("half").then(|| diloco(s, cfg, inner_lr, true)));
        (
            dps.into_iter()
                .map(|h| h.join().expect("dp run"))
                .collect::<Vec<_>>(),
            all.join().expect("diloco run"),
            half.join().expect("half run"),
        )
    });
    let best = dps
        .iter()
        .min_by(|a, b| a.1 .0.bits_per_byte.total_cmp(&b.1 .0.bits_per_byte));
    let (dp_lr, (dp, dp_s, dp_curve)) = best
        .cloned()
        .unwrap_or_else(|| (f64::NAN, (skipped().eval, 0.0, Vec::new())));
    let all = all.unwrap_or_else(skipped);
    let half = half.unwrap_or_else(skipped);

    let dp_bytes = cfg.inner_steps as f64 * 4.0 * params as f64;
    let ratio = dp_bytes / all.payload_bytes_per_island_round;
    let ratio_entropy = dp_bytes / all.entropy_bytes_per_island_round;
    let rel = |e: &Eval| e.bits_per_byte / dp.bits_per_byte - 1.0;
    println!();
    println!(
        "| run | held-out bits/byte | vs sync DP | bytes sent per worker per round | vs fp32 DP | wall s |"
    );
    println!("|---|---|---|---|---|---|");
    for (lr, (e, secs, _)) in &dps {
        let (name, vs) = if *lr == dp_lr {
            (", the anchor", "-".to_string())
        } else {
            (
                "",
                format!(
                    "{:+.2}%",
                    100.0 * (e.bits_per_byte / dp.bits_per_byte - 1.0)
                ),
            )
        };
        println!(
            "| sync DP (fp32 gradient every step), lr {lr}{name} | {:.4} | {vs} | {:.0} | 1x | {:.1} |",
            e.bits_per_byte, dp_bytes, secs
        );
    }
    println!(
        "| DiLoCo int8, {} islands | {:.4} | {:+.2}% | {:.0} | {:.0}x ({:.0}x entropy-coded) | {:.1} |",
        cfg.islands,
        all.eval.bits_per_byte,
        100.0 * rel(&all.eval),
        all.payload_bytes_per_island_round,
        ratio,
        ratio_entropy,
        all.seconds
    );
    println!(
        "| DiLoCo int8, half dropped each round | {:.4} | {:+.2}% | {:.0} | {:.0}x | {:.1} |",
        half.eval.bits_per_byte,
        100.0 * rel(&half.eval),
        half.payload_bytes_per_island_round,
        dp_bytes / half.payload_bytes_per_island_round,
        half.seconds
    );
    println!();
    println!("Held-out bits per byte after each round (tokens seen: the same in every run):");
    println!();
    println!("| round | sync DP | DiLoCo | vs DP | half dropped | vs DP |");
    println!("|---|---|---|---|---|---|");
    let at = |c: &Curve, i: usize| c.get(i).copied().unwrap_or(f64::NAN);
    for i in 0..cfg.rounds as usize {
        let (d, a, h) = (at(&dp_curve, i), at(&all.curve, i), at(&half.curve, i));
        println!(
            "| {} | {d:.4} | {a:.4} | {:+.2}% | {h:.4} | {:+.2}% |",
            i + 1,
            100.0 * (a / d - 1.0),
            100.0 * (h / d - 1.0)
        );
    }
    let points = |c: &Curve| -> Vec<(f64, f64)> {
        c.iter()
            .enumerate()
            .map(|(i, &y)| (i as f64 + 1.0, y))
            .collect()
    };
    let series = [
        Series {
            label: "sync DP",
            color: "#000000",
            points: points(&dp_curve),
        },
        Series {
            label: "DiLoCo",
            color: "#1f77b4",
            points: points(&all.curve),
        },
        Series {
            label: "half dropped",
            color: "#ff7f0e",
            points: points(&half.curve),
        },
    ];
    let svg_path: String = env(
        "AGORA_DILOCO_SVG",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/diloco.svg").to_string(),
    );
    let title = format!(
        "held-out bits per byte by round: {} islands x batch {}, H = {}",
        cfg.islands, s.batch, cfg.inner_steps
    );
    match write_svg(Path::new(&svg_path), &title, "round", &series, true) {
        Ok(()) => eprintln!("wrote {svg_path}"),
        Err(e) => eprintln!("{svg_path}: {e}"),
    }
    let summary = json!({
        "text": s.source,
        "train_tokens": s.corpus.train.len(),
        "heldout_tokens_evaluated": dp.tokens,
        "parameters": params,
        "islands": cfg.islands,
        "inner_steps": cfg.inner_steps,
        "rounds": cfg.rounds,
        "outer_lr": cfg.outer.lr,
        "outer_momentum": cfg.outer.momentum,
        "outer_lr_scaled_by_participation": cfg.outer.lr_islands.is_some(),
        "batch_per_island": s.batch,
        "seq_len": s.seq,
        "inner_lr": inner_lr,
        "dp_lr": dp_lr,
        "dp_by_lr": dps.iter().map(|(lr, (e, _, c))| json!({ "lr": lr, "bits_per_byte": e.bits_per_byte, "curve": c })).collect::<Vec<_>>(),
        "curves": { "sync_dp": dp_curve, "diloco": all.curve, "diloco_half_dropped": half.curve },
        "sync_dp": { "bits_per_byte": dp.bits_per_byte, "loss": dp.loss, "bytes_per_worker_round": dp_bytes, "seconds": dp_s },
        "diloco": {
            "bits_per_byte": all.eval.bits_per_byte, "loss": all.eval.loss,
            "relative_to_dp": rel(&all.eval),
            "payload_bytes_per_island_round": all.payload_bytes_per_island_round,
            "entropy_bytes_per_island_round": all.entropy_bytes_per_island_round,
            "bytes_ratio_vs_fp32_dp": ratio, "bytes_ratio_entropy_coded": ratio_entropy,
            "refused": all.refused, "seconds": all.seconds,
        },
        "diloco_half_dropped": {
            "bits_per_byte": half.eval.bits_per_byte, "loss": half.eval.loss,
            "relative_to_dp": rel(&half.eval),
            "payload_bytes_per_island_round": half.payload_bytes_per_island_round,
            "refused": half.refused, "seconds": half.seconds,
        },
    });
    let out = std::env::var("AGORA_DILOCO_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/diloco.json").to_string()
    });
    match serde_json::to_string_pretty(&summary) {
        Ok(body) => match std::fs::write(&out, body) {
            Ok(()) => eprintln!("wrote {out}"),
            Err(e) => eprintln!("{out}: {e}"),
        },
        Err(e) => eprintln!("summary: {e}"),
    }
}
