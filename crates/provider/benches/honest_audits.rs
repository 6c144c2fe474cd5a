//! Honest audits on the real SmolLM2-135M-Instruct (issue 13 item 0): answers generated as a
//! provider generates them, by its model thread ([`agora_provider::worker`]: several requests
//! batched, on the process's rayon pool), and audited as a verifier audits them
//! ([`agora_verify::audit`] of the fingerprint bytes a receipt carries, no end-of-sequence
//! claim), generation and audit on different thread counts. `docs/BENCHMARKS.md` quotes it.
//!
//! `AGORA_SMOLLM2=$(scripts/fetch-smollm2) AGORA_HONEST_AUDITS=500 cargo bench -p
//! agora-provider --bench honest_audits`
//!
//! - `AGORA_HONEST_OUT`: the summary JSON (default `target/smollm2-honest.json`); every
//!   audit is appended to the same path with the extension `jsonl` as it completes, so an
//!   interrupted run keeps what it did and a rerun continues it (a larger N adds to it).
//! - `AGORA_HONEST_SECONDS`: start no new round after this long.
//!
//! Answer i is fixed by i alone. Its length (prompt plus output, the positions the audit
//! replays) is 255, 256, 257, 513 and 2,048 for the first five (the KV cache's chunk
//! boundaries and the context this run covers), then over 48 ..= 2,048 with density
//! proportional to x^-1.5 (see [`mostly_short`]) along a golden-ratio sequence, so any prefix
//! of the run is spread over the whole range. The prompt
//! is a real chat (a multi-turn conversation, a document to summarise, or one question) made
//! from the sentences below and tokenized as the provider tokenizes chats; the output is
//! mostly short and log-uniform (prefill is far cheaper than decode), except that every
//! document of more than 1,064 positions after the first five answers is answered in at least
//! 1,000 tokens. Temperatures 0, 0.7 and 1, top-p 1, 0.95
//! and 0.9, a seed of its own. The output runs to its planned length (no stop at the end of
//! text) except one answer in [`EOS_EVERY`], which stops there as the provider's requests do.
//!
//! Answers run in rounds of [`ROUND`], each round in a child process of this bench whose rayon
//! pool has 2 threads (even rounds) or 1 (odd rounds): the provider's model thread computes on
//! that pool, and the audit runs on a pool of the other count.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agora_model::generate::{FinishReason, GenerateOptions};
use agora_model::{ChatMessage, LoadedModel, SamplingParams};
use agora_provider::worker::{Job, WorkerEvent};
use agora_provider::Worker;
use agora_verify::{audit, Answer, Fingerprint, Thresholds};
use serde_json::{json, Value};

/// Answers a child process generates together, batched by the provider's model thread.
const ROUND: usize = 8;
/// The positions of the first answers: the KV cache's chunk boundaries and the context.
const FIRST_TOTALS: [usize; 5] = [255, 256, 257, 513, 2048];
/// The shortest and longest answer (prompt plus output).
const SHORTEST: usize = 48;
const LONGEST: usize = 2048;
/// Documents longer than this plus a short prompt are answered in at least this many tokens.
const LONG_OUTPUT: usize = 1000;
/// The other outputs are log-uniform over 1 ..= this (or what the total leaves).
const SHORT_OUTPUT_MAX: usize = 384;
/// One answer in this many stops at the end of text, as every provider request does.
const EOS_EVERY: usize = 5;
/// Temperatures and top-p as a receipt carries them (f32).
const TEMPERATURES: [f32; 3] = [0.0, 0.7, 1.0];
const TOP_PS: [f32; 3] = [1.0, 0.95, 0.9];
/// The verifier's bound on fingerprint chunks (`agora-verifier`'s judge).
const MAX_FINGERPRINT_CHUNKS: usize = 1 << 16;

/// Sentences on many subjects, written for this bench; `{n}` becomes a number.
const SENTENCES: [&str; 48] = [
    "The lighthouse keeper climbed the {n} steps every evening to light the lamp.",
    "Bread dough needs time to rise, and a warm kitchen shortens that time.",
    "In {n}, the town council voted to rebuild the old stone bridge over the river.",
    "A bicycle chain transfers the force of the pedals to the rear wheel.",
    "Jupiter is the largest planet of the solar system and has dozens of moons.",
    "The printing press made books cheaper, and more people learned to read.",
    "Computers store integers in binary, as sums of powers of two.",
    "The Pacific Ocean covers about a third of the surface of the Earth.",
    "She wrote the letter twice before she was happy with the first line.",
    "Our quarterly revenue grew by {n} percent while costs stayed flat.",
    "The function returns an error when the input list is empty.",
    "Maple leaves turn red in autumn when the nights grow cold.",
    "The recipe calls for {n} grams of flour, a pinch of salt and warm water.",
    "He missed the train, so he walked the last {n} kilometres to the village.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The committee will meet on Tuesday to review the budget for next year.",
    "A good password is long, random, and never used on two sites.",
    "The violinist tuned her instrument while the audience found their seats.",
    "Glaciers carve wide valleys as they move slowly down the mountains.",
    "The tenant must give {n} days of notice before leaving the apartment.",
    "Rust checks at compile time that references never outlive their data.",
    "The market opened early, and the fishmongers shouted their prices.",
    "Rain is expected in the north, with sunny spells in the south.",
    "The museum holds {n} paintings, most of them from the eighteenth century.",
    "To reset the router, hold the small button for ten seconds.",
    "The team scored twice in the last {n} minutes and won the match.",
    "Honey never spoils if it is kept in a sealed jar.",
    "The old map showed a road that no longer exists.",
    "Interest is paid monthly at a rate of {n} percent a year.",
    "The children built a fort out of blankets and chairs.",
    "Volcanoes form where molten rock reaches the surface of the Earth.",
    "Please sign the form and return it before the end of the month.",
    "The orchestra played the symphony without a single pause.",
    "A hash table finds a key in constant time on average.",
    "The ship's captain ordered the sails to be lowered before the storm.",
    "Tea was first drunk in China more than {n} years ago.",
    "The hikers followed the ridge until the fog became too thick.",
    "Each sensor reports its reading every {n} seconds over the radio link.",
    "The novel tells the story of three sisters who inherit a farm.",
    "Vaccines train the immune system to recognise a disease.",
    "The garden needs water twice a week during the summer.",
    "Our new office is on the fourth floor, next to the library.",
    "The algorithm sorts {n} numbers in a fraction of a second.",
    "Owls hunt at night and can turn their heads a long way round.",
    "The bakery sells out of croissants before nine every morning.",
    "Wind turbines turn the motion of the air into electricity.",
    "The judge asked both sides to present their evidence again.",
    "Salt lowers the freezing point of water, which is why roads are salted.",
];

/// Questions that end a conversation or stand alone.
const QUESTIONS: [&str; 12] = [
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, in detail.",
    "List the planets and describe each one.",
    "What is the history of the printing press?",
    "Give me a recipe for bread and explain every step.",
    "Describe a walk through a forest in autumn.",
    "How do computers store numbers?",
    "Tell me about the oceans of the world.",
    "Can you go over that again, more slowly?",
    "What should I do next?",
    "Write a short poem about the sea.",
    "Which of these points matters most, and why?",
];

/// What is asked about a document.
const DOCUMENT_TASKS: [&str; 4] = [
    "Summarise the following document in a few paragraphs.",
    "Read this report and list its main points.",
    "Here are my notes. Turn them into a clear summary for my team.",
    "Explain the following text to a ten-year-old.",
];

/// SplitMix64: answer i's choices depend on i alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Over lo ..= hi with density proportional to x^-1.5 at u in [0, 1): short lengths often,
/// long ones still (on 48 ..= 2,048: a third over 256, 18% over 513, 7% over 1,024), at
/// about 60% of the positions a log-uniform spread costs.
fn mostly_short(lo: usize, hi: usize, u: f64) -> usize {
    let (a, b) = (1.0 / (lo as f64).sqrt(), 1.0 / (hi as f64 + 1.0).sqrt());
    ((a - u * (a - b)).powi(-2) as usize).clamp(lo, hi)
}

/// Log-uniform over lo ..= hi at u in [0, 1).
fn log_uniform(lo: usize, hi: usize, u: f64) -> usize {
    let (lo_f, hi_f) = (lo as f64, hi as f64 + 1.0);
    ((lo_f.ln() + u * (hi_f.ln() - lo_f.ln())).exp() as usize).clamp(lo, hi)
}

/// Varied text: paragraphs of sentences from [`SENTENCES`], as words (split at spaces, so
/// paragraph breaks stay inside them).
fn filler_words(rng: &mut Rng, words: usize) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    while out.len() < words {
        let paragraph = 2 + rng.below(5);
        for s in 0..paragraph {
            let sentence = SENTENCES[rng.below(SENTENCES.len())]
                .replace("{n}", &(1 + rng.below(2000)).to_string());
            for (k, w) in sentence.split(' ').enumerate() {
                if k == 0 && s == 0 && !out.is_empty() {
                    out.push(format!("\n\n{w}"));
                } else {
                    out.push(w.to_string());
                }
            }
        }
    }
    out
}

/// The kinds of prompt.
#[derive(Clone, Copy)]
enum Kind {
    /// Turns of user and assistant, then a question.
    Chat,
    /// One user message: a task, then a document.
    Document,
    /// One question, with a short preamble of context.
    Question,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Document => "document",
            Kind::Question => "question",
        }
    }
}

/// A conversation of the given kind holding the first `keep` words of `words`.
fn messages(kind: Kind, rng_seed: u64, words: &[String], keep: usize) -> Vec<ChatMessage> {
    let mut rng = Rng(rng_seed);
    let question = QUESTIONS[rng.below(QUESTIONS.len())];
    let text = |w: &[String]| w.join(" ").trim().to_string();
    let keep = keep.min(words.len());
    match kind {
        Kind::Chat => {
            let mut out = vec![];
            if rng.below(2) == 0 {
                out.push(ChatMessage::new(
                    "system",
                    "You are a patient assistant who answers in full sentences.",
                ));
            }
            // Turns of 10 to 120 words, alternating user and assistant.
            let mut at = 0;
            let mut user = true;
            while at < keep {
                let turn = (10 + rng.below(111)).min(keep - at);
                let role = if user { "user" } else { "assistant" };
                out.push(ChatMessage::new(role, &text(&words[at..at + turn])));
                at += turn;
                user = !user;
            }
            out.push(ChatMessage::new("user", question));
            out
        }
        Kind::Document => {
            let task = DOCUMENT_TASKS[rng.below(DOCUMENT_TASKS.len())];
            vec![ChatMessage::new(
                "user",
                &format!("{task}\n\n{}", text(&words[..keep])),
            )]
        }
        Kind::Question => vec![ChatMessage::new(
            "user",
            format!("{}\n\n{question}", text(&words[..keep])).trim(),
        )],
    }
}

/// One answer to generate and audit.
struct Spec {
    index: usize,
    kind: Kind,
    /// The planned prompt plus output.
    total: usize,
    prompt: Vec<u32>,
    opts: GenerateOptions,
}

impl Spec {
    /// Answer `index`, its prompt tokenized as the provider tokenizes a chat.
    fn new(model: &LoadedModel, index: usize) -> Spec {
        let mut rng = Rng(0x5e01_1200 ^ (index as u64).wrapping_mul(0x1000_0001));
        let golden = 0.618_033_988_749_894_9;
        let total = FIRST_TOTALS
            .get(index)
            .copied()
            .unwrap_or_else(|| mostly_short(SHORTEST, LONGEST, (index as f64 * golden).fract()));
        let kind = [Kind::Chat, Kind::Document, Kind::Question][index % 3];
        let stop_at_eos = index >= FIRST_TOTALS.len() && index % EOS_EVERY == EOS_EVERY - 1;
        let long = index >= FIRST_TOTALS.len()
            && matches!(kind, Kind::Document)
            && total > LONG_OUTPUT + 64;
        let output = if long {
            LONG_OUTPUT + rng.below(total - LONG_OUTPUT - 64)
        } else {
            log_uniform(1, SHORT_OUTPUT_MAX.min(total / 2), rng.unit())
        };
        // Every word is at least one token: `total` words always fill the prompt.
        let words = filler_words(&mut rng, total);
        let layout = rng.next();
        let ids = |keep: usize| {
            model
                .chat_prompt_ids(&messages(kind, layout, &words, keep))
                .expect("chat prompt")
        };
        // The most words whose prompt fits in total - output positions (binary search: more
        // words, more tokens); the output then takes what the prompt leaves.
        let want = total - output;
        let (mut lo, mut hi) = (0, words.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if ids(mid).len() <= want {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let prompt = ids(lo);
        assert!(
            prompt.len() < total,
            "answer {index}: a prompt of {} tokens leaves no room in {total}",
            prompt.len()
        );
        let opts = GenerateOptions {
            sampling: SamplingParams {
                temperature: f64::from(TEMPERATURES[index % TEMPERATURES.len()]),
                top_k: 0,
                top_p: f64::from(TOP_PS[(index / TEMPERATURES.len()) % TOP_PS.len()]),
                seed: rng.next(),
                ..Default::default()
            },
            max_tokens: total - prompt.len(),
            stop: vec![],
            stop_at_eos,
            resume: vec![],
        };
        Spec {
            index,
            kind,
            total,
            prompt,
            opts,
        }
    }

    /// A digest of everything that fixes the answer, so a rerun refuses results another
    /// version of this bench made.
    fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let s = &self.opts.sampling;
        let fields = [
            s.temperature.to_bits(),
            s.top_p.to_bits(),
            s.seed,
            self.opts.max_tokens as u64,
            u64::from(self.opts.stop_at_eos),
        ];
        for v in self.prompt.iter().map(|&t| u64::from(t)).chain(fields) {
            for b in v.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The results recorded so far, by answer index (a line cut short by a kill is skipped).
fn read_results(path: &Path) -> BTreeMap<usize, Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["index"].as_u64()? as usize, v)))
        .collect()
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

fn main() {
    let (Ok(model_path), Some(n)) = (
        std::env::var("AGORA_SMOLLM2"),
        env_usize("AGORA_HONEST_AUDITS"),
    ) else {
        eprintln!("SKIPPED: set AGORA_SMOLLM2 (scripts/fetch-smollm2) and AGORA_HONEST_AUDITS=N");
        return;
    };
    let out = std::env::var("AGORA_HONEST_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/smollm2-honest.json")
        });
    let results = out.with_extension("jsonl");
    let model = agora_model::load(Path::new(&model_path), &Default::default())
        .unwrap_or_else(|e| panic!("load {model_path}: {e}"));
    if let Ok(round) = std::env::var("AGORA_HONEST_ROUND") {
        let indices: Vec<usize> = round.split(',').filter_map(|s| s.parse().ok()).collect();
        child_round(Arc::new(model), &indices, &results, n);
        return;
    }
    let budget = std::env::var("AGORA_HONEST_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("the output directory");
    }
    let done = read_results(&results);
    for (i, rec) in &done {
        let spec = Spec::new(&model, *i);
        assert_eq!(
            rec["digest"].as_str(),
            Some(spec.digest().as_str()),
            "{}: answer {i} was made by another version of this bench; name another AGORA_HONEST_OUT",
            results.display()
        );
    }
    let started = (Instant::now(), unix_now());
    let pending: Vec<usize> = (0..n).filter(|i| !done.contains_key(i)).collect();
    eprintln!(
        "honest audits: {} recorded in {}, {} to run",
        done.len(),
        results.display(),
        pending.len()
    );
    let mut rounds: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in pending {
        rounds.entry(i / ROUND).or_default().push(i);
    }
    let exe = std::env::current_exe().expect("this bench's path");
    for (round, indices) in rounds {
        if started.0.elapsed().as_secs_f64() > budget {
            eprintln!("honest audits: time budget spent; stopping before round {round}");
            break;
        }
        let gen_threads = if round % 2 == 0 { 2 } else { 1 };
        let list: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
        let status = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .env("AGORA_HONEST_ROUND", list.join(","))
            .env("RAYON_NUM_THREADS", gen_threads.to_string())
            .env("AGORA_HONEST_RUN", format!("{},{}", started.1, done.len()))
            .status()
            .expect("start a round");
        assert!(status.success(), "round {round} failed: {status}");
    }
    summarise(&read_results(&results), &out, n, &model_path);
}

/// One round: the answers generated together by the provider's model thread on this
/// process's rayon pool, each audited on a pool of the other thread count as it completes.
fn child_round(model: Arc<LoadedModel>, indices: &[usize], results: &Path, asked: usize) {
    let gen_threads = rayon::current_num_threads();
    let audit_threads = if gen_threads == 1 { 2 } else { 1 };
    let audit_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(audit_threads)
        .build()
        .expect("audit pool");
    let (run_start, run_done) = std::env::var("AGORA_HONEST_RUN")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.parse::<f64>().ok()?, b.parse::<usize>().ok()?))
        })
        .unwrap_or((unix_now(), 0));
    let specs: Vec<Spec> = indices.iter().map(|&i| Spec::new(&model, i)).collect();
    let worker = Worker::start(model.clone(), specs.len()).expect("the model thread");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let round_start = Instant::now();
    for (k, spec) in specs.iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        worker
            .submit(Job {
                prompt: spec.prompt.clone(),
                opts: spec.opts.clone(),
                events: tx,
            })
            .expect("submit");
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            while let Some(ev) = rx.blocking_recv() {
                if !matches!(ev, WorkerEvent::Token { .. }) {
                    let _ = done_tx.send((k, ev, round_start.elapsed().as_secs_f64()));
                    return;
                }
            }
        });
    }
    drop(done_tx);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results)
        .expect("the results file");
    for (k, ev, gen_s) in done_rx {
        let spec = &specs[k];
        let WorkerEvent::Done {
            tokens,
            finish,
            fingerprint,
            ..
        } = ev
        else {
            panic!("answer {}: the model thread failed: {ev:?}", spec.index);
        };
        let audit_start = Instant::now();
        // What a verifier does with a receipt's material (`agora-verifier`'s judge).
        let report = audit_pool.install(|| {
            let print = Fingerprint::from_bytes(&fingerprint, MAX_FINGERPRINT_CHUNKS)
                .expect("the provider's fingerprint parses");
            audit(
                &model,
                &Answer {
                    model: model.id,
                    prompt: &spec.prompt,
                    resumed: &[],
                    output: &tokens,
                    claimed_tokens: tokens.len(),
                    sampling: spec.opts.sampling.clone(),
                    fingerprint: &print,
                    ended_at_eos: false,
                },
                &Thresholds::default(),
            )
            .expect("the audit ran")
        });
        let audit_s = audit_start.elapsed().as_secs_f64();
        let stops = model.stop_token_ids();
        let rec = json!({
            "index": spec.index,
            "digest": spec.digest(),
            "kind": spec.kind.name(),
            "planned_total": spec.total,
            "prompt_tokens": spec.prompt.len(),
            "output_tokens": tokens.len(),
            "total": spec.prompt.len() + tokens.len(),
            "temperature": spec.opts.sampling.temperature,
            "top_p": spec.opts.sampling.top_p,
            "seed": spec.opts.sampling.seed,
            "stop_at_eos": spec.opts.stop_at_eos,
            "ended_at_eos": finish == FinishReason::Stop,
            "eos_in_output": tokens.iter().any(|t| stops.contains(t)),
            "gen_threads": gen_threads,
            "audit_threads": audit_threads,
            "round_size": specs.len(),
            "passed": report.passed,
            "reasons": report.reasons,
            "sampler_mismatches": report.sampler_mismatches,
            "near_misses": report.near_misses,
            "min_overlap": report.min_overlap,
            "max_rel_err": report.max_rel_err,
            "generate_s": gen_s,
            "audit_s": audit_s,
            "load_average": load_average(),
            "finished_unix": unix_now(),
        });
        writeln!(file, "{rec}")
            .and_then(|()| file.flush())
            .expect("record the result");
        let all = read_results(results);
        let failed = all.values().filter(|v| v["passed"] == false).count();
        let this_run = all.len().saturating_sub(run_done).max(1);
        eprintln!(
            "  {}/{asked} answer {}: {} + {} = {} positions, T={} top_p={}, gen {gen_threads}t {gen_s:.1} s, audit {audit_threads}t {audit_s:.1} s, {}; false positives {failed}; {:.1} s/answer this run",
            all.len(),
            spec.index,
            spec.prompt.len(),
            tokens.len(),
            spec.prompt.len() + tokens.len(),
            spec.opts.sampling.temperature,
            spec.opts.sampling.top_p,
            if report.passed { "passed".to_string() } else { format!("FALSE POSITIVE: {}", report.reasons.join("; ")) },
            (unix_now() - run_start) / this_run as f64,
        );
    }
}

/// min, median, max of a list.
fn spread(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    json!({"min": v[0], "median": v[v.len() / 2], "max": v[v.len() - 1]})
}

/// Prints and writes what the recorded results show.
fn summarise(all: &BTreeMap<usize, Value>, out: &Path, asked: usize, model: &str) {
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let col = |k: &str| -> Vec<f64> { all.values().map(|v| num(v, k)).collect() };
    let totals = col("total");
    let over = |x: f64| totals.iter().filter(|&&t| t > x).count();
    let count = |f: &dyn Fn(&Value) -> bool| all.values().filter(|v| f(v)).count();
    let failures: Vec<&Value> = all.values().filter(|v| v["passed"] == false).collect();
    let boundaries: BTreeSet<usize> = FIRST_TOTALS
        .iter()
        .copied()
        .filter(|&b| totals.iter().any(|&t| t as usize == b))
        .collect();
    let by = |k: &str| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for v in all.values() {
            *m.entry(v[k].to_string()).or_default() += 1;
        }
        m
    };
    let first = all
        .values()
        .map(|v| num(v, "finished_unix"))
        .fold(f64::INFINITY, f64::min);
    let last = all
        .values()
        .map(|v| num(v, "finished_unix"))
        .fold(0.0, f64::max);
    let summary = json!({
        "model": model,
        "asked": asked,
        "audits": all.len(),
        "false_positives": failures.len(),
        "failures": failures,
        "total_positions": spread(totals.clone()),
        "over_256": over(256.0),
        "over_513": over(513.0),
        "over_1024": over(1024.0),
        "at_2048": totals.iter().filter(|&&t| t >= 2048.0).count(),
        "boundaries_present": boundaries,
        "prompt_tokens": spread(col("prompt_tokens")),
        "output_tokens": spread(col("output_tokens")),
        "outputs_of_1000_or_more": count(&|v| num(v, "output_tokens") >= 1000.0),
        "output_tokens_sum": col("output_tokens").iter().sum::<f64>(),
        "prompt_tokens_sum": col("prompt_tokens").iter().sum::<f64>(),
        "by_kind": by("kind"),
        "by_temperature": by("temperature"),
        "by_top_p": by("top_p"),
        "by_gen_threads": by("gen_threads"),
        "stop_at_eos": count(&|v| v["stop_at_eos"] == true),
        "ended_at_eos": count(&|v| v["ended_at_eos"] == true),
        "eos_in_output": count(&|v| v["eos_in_output"] == true),
        "sampler_mismatches": col("sampler_mismatches").iter().sum::<f64>(),
        "near_misses": col("near_misses").iter().sum::<f64>(),
        "max_rel_err_max": col("max_rel_err").iter().copied().fold(0.0, f64::max),
        "min_overlap_min": col("min_overlap").iter().copied().fold(f64::INFINITY, f64::min),
        "generate_s": spread(col("generate_s")),
        "audit_s": spread(col("audit_s")),
        "audit_s_sum": col("audit_s").iter().sum::<f64>(),
        "load_average": spread(col("load_average").into_iter().filter(|x| x.is_finite()).collect()),
        "wall_s_first_to_last": last - first,
    });
    println!("{}", serde_json::to_string_pretty(&summary).expect("json"));
    std::fs::write(out, serde_json::to_string_pretty(&summary).expect("json"))
        .expect("write the summary");
    println!(
        "smollm2 honest audits: {} of {asked} asked, {} false positives; wrote {}",
        all.len(),
        failures.len(),
        out.display()
    );
}
