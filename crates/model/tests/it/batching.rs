//! Batch invariance: a request computes the same bits alone and inside any batch. One
//! request runs alone through `generate`; then the same request runs among 0 to 15 random
//! others (random prompt lengths, one past a prefill chunk, random limits and samplers,
//! random arrival steps) driven the way a serving scheduler drives them: each sequence's
//! prefill passes on their own, every decode step of all sequences in one pass. Its tokens,
//! text and every hidden state must be bit-identical, on 1 and 2 threads, for dense (f32),
//! int8 (Q8_0) and candle-quantized (Q4_1) weights.

use std::ops::ControlFlow;

use agora_model::chat::CHATML_TEMPLATE;
use agora_model::generate::{generate, Event, FinishReason, GenerateOptions, Next, Sequence};
use agora_model::init::SeededRng;
use agora_model::llama::PREFILL_CHUNK;
use agora_model::safetensors_io::write_hf_dir;
use agora_model::{load, LoadOptions, LoadedModel, SamplingParams};

use crate::common::*;

/// What one request produced: tokens, text, why it ended, and the bits of every hidden state
/// its tokens were sampled from.
#[derive(Debug, PartialEq)]
struct Trace {
    tokens: Vec<u32>,
    text: String,
    finish: FinishReason,
    hidden: Vec<Vec<u32>>,
}

struct Request {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    arrives: usize,
}

/// Where two traces first differ, in a line (None when they are bit-identical).
fn difference(got: &Trace, want: &Trace) -> Option<String> {
    if got.tokens != want.tokens {
        let at = got
            .tokens
            .iter()
            .zip(&want.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        return Some(format!(
            "tokens differ from position {at} ({} vs {} tokens)",
            got.tokens.len(),
            want.tokens.len()
        ));
    }
    if let Some(at) = (0..got.hidden.len()).find(|&i| got.hidden.get(i) != want.hidden.get(i)) {
        return Some(format!("hidden state {at} differs in its bits"));
    }
    if got.hidden.len() != want.hidden.len() {
        return Some("a different number of hidden states".into());
    }
    if got.text != want.text || got.finish != want.finish {
        return Some(format!(
            "text or finish differ: {:?} {:?} vs {:?} {:?}",
            got.text, got.finish, want.text, want.finish
        ));
    }
    None
}

fn bits(h: &candle_core::Tensor) -> Vec<u32> {
    h.to_vec1::<f32>()
        .expect("hidden")
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn alone(m: &LoadedModel, r: &Request) -> Trace {
    let mut hidden = vec![];
    let g = generate(m, &r.prompt, &r.opts, |e| {
        if let Event::Token { hidden: h, .. } = e {
            hidden.push(bits(h));
        }
        ControlFlow::Continue(())
    })
    .expect("generate");
    Trace {
        tokens: g.tokens,
        text: g.text,
        finish: g.finish_reason,
        hidden,
    }
}

/// Runs `requests` as a scheduler does and returns the trace of each.
fn batched(m: &LoadedModel, requests: &[Request]) -> Vec<Trace> {
    let llama = &m.model;
    let mut seqs: Vec<Option<Sequence>> = requests.iter().map(|_| None).collect();
    let mut hidden: Vec<Vec<Vec<u32>>> = requests.iter().map(|_| vec![]).collect();
    let mut done: Vec<Option<Trace>> = requests.iter().map(|_| None).collect();
    let mut step = 0;
    while done.iter().any(Option::is_none) {
        for (i, r) in requests.iter().enumerate() {
            if r.arrives == step {
                seqs[i] = Some(Sequence::new(m, &r.prompt, &r.opts).expect("admit"));
            }
        }
        // One prefill pass for each sequence still prefilling.
        for (i, s) in seqs.iter_mut().enumerate() {
            let Some(s) = s.as_mut().filter(|s| s.next() == Next::Prefill) else {
                continue;
            };
            let h = s.prefill_step(llama).expect("prefill");
            if s.prefill_left() == 0 {
                let last = h.get(h.dim(0).expect("rows") - 1).expect("last");
                let logits: Vec<f32> = llama
                    .logits(&last.unsqueeze(0).expect("row"))
                    .expect("logits")
                    .squeeze(0)
                    .expect("squeeze")
                    .to_vec1()
                    .expect("logits");
                s.step(m, &last, &logits, |e| {
                    if let Event::Token { hidden: h, .. } = e {
                        hidden[i].push(bits(h));
                    }
                    ControlFlow::Continue(())
                })
                .expect("step");
            }
        }
        // One decode pass over every sequence generating.
        let idx: Vec<usize> = (0..seqs.len())
            .filter(|&i| {
                seqs[i]
                    .as_ref()
                    .is_some_and(|s| matches!(s.next(), Next::Decode(_)))
            })
            .collect();
        if !idx.is_empty() {
            let (h, logits) = {
                let mut batch: Vec<&mut Sequence> = seqs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| idx.contains(i))
                    .filter_map(|(_, s)| s.as_mut())
                    .collect();
                Sequence::decode_many(llama, &mut batch).expect("decode")
            };
            for (row, &i) in idx.iter().enumerate() {
                let s = seqs[i].as_mut().expect("running");
                let hi = h.get(row).expect("row");
                s.step(m, &hi, &logits[row], |e| {
                    if let Event::Token { hidden: h, .. } = e {
                        hidden[i].push(bits(h));
                    }
                    ControlFlow::Continue(())
                })
                .expect("step");
            }
        }
        for i in 0..seqs.len() {
            if seqs[i]
                .as_ref()
                .is_some_and(|s| matches!(s.next(), Next::Finished(_)))
            {
                let g = seqs[i]
                    .take()
                    .expect("finished")
                    .finish(|_| ControlFlow::Continue(()));
                done[i] = Some(Trace {
                    tokens: g.tokens,
                    text: g.text,
                    finish: g.finish_reason,
                    hidden: std::mem::take(&mut hidden[i]),
                });
            }
        }
        step += 1;
        assert!(step < 10_000, "the batch never finished");
    }
    done.into_iter().map(|t| t.expect("done")).collect()
}

fn random_request(rng: &mut SeededRng, vocab: u32, long: bool) -> Request {
    let mut pick = |n: usize| (rng.next_f64() * n as f64) as usize % n.max(1);
    let len = if long {
        PREFILL_CHUNK + 1 + pick(200)
    } else {
        1 + pick(48)
    };
    let prompt = (0..len)
        .map(|_| 1 + pick(vocab as usize - 1) as u32)
        .collect();
    let temperature = [0.0, 0.7, 1.0][pick(3)];
    Request {
        prompt,
        opts: GenerateOptions {
            sampling: SamplingParams {
                temperature,
                top_k: [0, 40][pick(2)],
                top_p: [1.0, 0.9][pick(2)],
                seed: pick(1 << 30) as u64,
                ..Default::default()
            },
            max_tokens: 1 + pick(24),
            stop: vec![],
            stop_at_eos: pick(2) == 0,
            resume: vec![],
        },
        arrives: pick(8),
    }
}

/// A model with a context long enough for a prompt past the first prefill chunk, as f32
/// safetensors, Q8_0 and Q4_1 GGUF.
fn models(dir: &std::path::Path) -> Vec<(&'static str, LoadedModel)> {
    let tok = tokenizer();
    let mut cfg = config("llama", tok.vocab_size());
    cfg.max_seq_len = PREFILL_CHUNK + 300;
    let w = weights(&cfg, 9);
    write_hf_dir(dir, &cfg, &w, &tok, Some(CHATML_TEMPLATE)).expect("write");
    let mut out = vec![("f32", load(dir, &LoadOptions::default()).expect("load f32"))];
    for (name, ty) in [
        ("q8_0", agora_gguf::TensorType::Q8_0),
        ("q4_1", agora_gguf::TensorType::Q4_1),
    ] {
        let path = dir.join(format!("{name}.gguf"));
        export_gguf(&path, &cfg, &w, &tok, ty);
        out.push((
            name,
            load(&path, &LoadOptions::default()).expect("load gguf"),
        ));
    }
    out
}

#[test]
fn a_request_computes_the_same_bits_alone_and_in_any_batch() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, m) in models(dir.path()) {
        let vocab = m.model.config().vocab_size as u32;
        let mut rng = SeededRng::new(0xBA7C4);
        let mut target = random_request(&mut rng, vocab, false);
        target.opts.max_tokens = 24;
        target.opts.stop_at_eos = false;
        target.opts.sampling.temperature = 0.8;
        let long_target = {
            let mut r = random_request(&mut rng, vocab, true);
            r.opts.max_tokens = 12;
            r
        };
        let mut references: Vec<Vec<Trace>> = vec![];
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let traces = pool.install(|| {
                let reference = [alone(&m, &target), alone(&m, &long_target)];
                assert_eq!(reference[0].tokens.len(), 24, "{name}: the target ran short");
                for (trial, others) in [0usize, 6, 15].into_iter().enumerate() {
                    for (ti, t) in [&target, &long_target].into_iter().enumerate() {
                        if ti == 1 && others == 0 {
                            continue;
                        }
                        let mut batch: Vec<Request> = (0..others)
                            .map(|k| random_request(&mut rng, vocab, k == 1))
                            .collect();
                        let at = (rng.next_f64() * (others + 1) as f64) as usize % (others + 1);
                        batch.insert(
                            at,
                            Request {
                                prompt: t.prompt.clone(),
                                opts: t.opts.clone(),
                                arrives: (rng.next_f64() * 8.0) as usize,
                            },
                        );
                        let got = batched(&m, &batch);
                        if let Some(d) = difference(&got[at], &reference[ti]) {
                            panic!("{name}, {threads} threads: request {ti} among {others} others: {d}");
                        }
                        // Every neighbour is also what it computes alone.
                        if trial == 2 && ti == 0 && threads == 1 {
                            for (r, g) in batch.iter().zip(&got) {
                                if let Some(d) = difference(g, &alone(&m, r)) {
                                    panic!("{name}: a neighbour: {d}");
                                }
                            }
                        }
                    }
                }
                reference
            });
            references.push(traces.into());
        }
        for (a, b) in references[0].iter().zip(&references[1]) {
            if let Some(d) = difference(a, b) {
                panic!("{name}: 1 and 2 threads computed different bits: {d}");
            }
        }
    }
}

/// Runs `requests` as a mixed-pass scheduler does: every step is ONE pass over the next
/// prefill chunk of every sequence still prefilling and a decode step of every sequence
/// generating ([`Sequence::pass_many`]).
fn batched_mixed(m: &LoadedModel, requests: &[Request]) -> Vec<Trace> {
    let llama = &m.model;
    let mut seqs: Vec<Option<Sequence>> = requests.iter().map(|_| None).collect();
    let mut hidden: Vec<Vec<Vec<u32>>> = requests.iter().map(|_| vec![]).collect();
    let mut done: Vec<Option<Trace>> = requests.iter().map(|_| None).collect();
    let mut step = 0;
    while done.iter().any(Option::is_none) {
        for (i, r) in requests.iter().enumerate() {
            if r.arrives == step {
                seqs[i] = Some(Sequence::new(m, &r.prompt, &r.opts).expect("admit"));
            }
        }
        let is = |s: &Option<Sequence>, prefill: bool| {
            s.as_ref().is_some_and(|s| match s.next() {
                Next::Prefill => prefill,
                Next::Decode(_) => !prefill,
                Next::Finished(_) => false,
            })
        };
        let pre: Vec<usize> = (0..seqs.len()).filter(|&i| is(&seqs[i], true)).collect();
        let dec: Vec<usize> = (0..seqs.len()).filter(|&i| is(&seqs[i], false)).collect();
        if !pre.is_empty() || !dec.is_empty() {
            let pass = {
                let (mut p, mut d): (Vec<&mut Sequence>, Vec<&mut Sequence>) = (vec![], vec![]);
                for (i, s) in seqs.iter_mut().enumerate() {
                    if let Some(s) = s.as_mut() {
                        if pre.contains(&i) {
                            p.push(s);
                        } else if dec.contains(&i) {
                            d.push(s);
                        }
                    }
                }
                Sequence::pass_many(llama, &mut p, &mut d).expect("pass")
            };
            let finished_prefill: Vec<bool> = pre
                .iter()
                .map(|&i| seqs[i].as_ref().expect("running").prefill_left() == 0)
                .collect();
            let mut sample = |i: usize, h: &candle_core::Tensor, logits: &[f32]| {
                let s = seqs[i].as_mut().expect("running");
                s.step(m, h, logits, |e| {
                    if let Event::Token { hidden: h, .. } = e {
                        hidden[i].push(bits(h));
                    }
                    ControlFlow::Continue(())
                })
                .expect("step");
            };
            for (row, &i) in pre.iter().enumerate() {
                if !finished_prefill[row] {
                    continue;
                }
                let h = &pass.prefill[row];
                let last = h.get(h.dim(0).expect("rows") - 1).expect("last");
                let logits: Vec<f32> = llama
                    .logits(&last.unsqueeze(0).expect("row"))
                    .expect("logits")
                    .squeeze(0)
                    .expect("squeeze")
                    .to_vec1()
                    .expect("logits");
                sample(i, &last, &logits);
            }
            for (row, &i) in dec.iter().enumerate() {
                let h = pass.decode.get(row).expect("row");
                sample(i, &h, &pass.decode_logits[row]);
            }
        }
        for i in 0..seqs.len() {
            if seqs[i]
                .as_ref()
                .is_some_and(|s| matches!(s.next(), Next::Finished(_)))
            {
                let g = seqs[i]
                    .take()
                    .expect("finished")
                    .finish(|_| ControlFlow::Continue(()));
                done[i] = Some(Trace {
                    tokens: g.tokens,
                    text: g.text,
                    finish: g.finish_reason,
                    hidden: std::mem::take(&mut hidden[i]),
                });
            }
        }
        step += 1;
        assert!(step < 10_000, "the batch never finished");
    }
    done.into_iter().map(|t| t.expect("done")).collect()
}

/// The mixed scheduler: prefill chunks of several sequences and decode steps of others in
/// one forward pass. Every request, and every neighbour, computes the bits it computes
/// alone, on 1 and 2 threads; row-exact weights (Q8_0, Q4_1) really share the pass.
#[test]
fn a_request_computes_the_same_bits_alone_and_in_mixed_prefill_and_decode_passes() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, m) in models(dir.path()) {
        assert_eq!(m.model.mixes_rows(), name != "f32", "{name}");
        let vocab = m.model.config().vocab_size as u32;
        for threads in [1, 2] {
            let mut rng = SeededRng::new(0x313D + threads as u64);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                for others in [3usize, 12] {
                    let batch: Vec<Request> = (0..=others)
                        .map(|k| random_request(&mut rng, vocab, k == 1))
                        .collect();
                    let got = batched_mixed(&m, &batch);
                    for (k, (r, g)) in batch.iter().zip(&got).enumerate() {
                        if let Some(d) = difference(g, &alone(&m, r)) {
                            panic!(
                                "{name}, {threads} threads: request {k} of {}: {d}",
                                others + 1
                            );
                        }
                    }
                }
            });
        }
    }
}
