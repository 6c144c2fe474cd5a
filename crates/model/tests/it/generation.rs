use std::ops::ControlFlow;

use agora_model::generate::{generate, Event, FinishReason, GenerateOptions};
use agora_model::{load, LoadOptions, Mode, SamplingParams};
use candle_core::{IndexOp, Tensor};

use crate::common::*;

fn model() -> (tempfile::TempDir, agora_model::LoadedModel) {
    let dir = tempfile::tempdir().expect("tmp");
    write_model(dir.path(), "llama", 5);
    let m = load(dir.path(), &LoadOptions::default()).expect("load");
    (dir, m)
}

fn opts(seed: u64, temperature: f64, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams {
            temperature,
            top_k: 40,
            top_p: 0.95,
            seed,
            ..Default::default()
        },
        max_tokens,
        stop: vec![],
        stop_at_eos: false,
        resume: vec![],
    }
}

/// Logits of `ids` from one full forward, and from a cached prefill of `prefill` tokens
/// followed by one token at a time.
fn full_and_stepwise(
    m: &agora_model::LoadedModel,
    ids: &[u32],
    prefill: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dev = m.model.device();
    let run = |ids: &[u32], cache: Option<&mut agora_model::Cache>| {
        let input = Tensor::new(ids, dev).expect("t").unsqueeze(0).expect("u");
        m.model
            .forward(&input, cache, Mode::Serve)
            .expect("forward")
            .i(0)
            .expect("row")
    };
    let full = run(ids, None);
    let mut cache = m.model.new_cache();
    let mut rows = vec![];
    if prefill > 0 {
        rows.push(run(&ids[..prefill], Some(&mut cache)));
    }
    for t in prefill..ids.len() {
        rows.push(run(&ids[t..t + 1], Some(&mut cache)));
    }
    let flat = |t: &Tensor| t.flatten_all().expect("f").to_vec1::<f32>().expect("v");
    (flat(&full), flat(&Tensor::cat(&rows, 0).expect("cat")))
}

#[test]
fn cached_decoding_matches_a_full_forward() {
    let (_d, m) = model();
    let ids = m.tokenizer.encode(CORPUS).expect("enc");
    let ids = &ids[..40];
    let dev = m.model.device();
    let (a, b) = full_and_stepwise(&m, ids, 25);
    assert!(rel_err(&a, &b) < 1e-5, "{}", rel_err(&a, &b));
    // The training (unfused) path computes the same function.
    let train = m
        .model
        .forward(
            &Tensor::new(ids, dev).expect("t").unsqueeze(0).expect("u"),
            None,
            Mode::Train,
        )
        .expect("train");
    let c: Vec<f32> = train.flatten_all().expect("f").to_vec1().expect("v");
    assert!(rel_err(&a, &c) < 1e-5, "{}", rel_err(&a, &c));
}

#[test]
fn generation_is_reproducible_for_a_seed() {
    let (_d, m) = model();
    let prompt = m.tokenizer.encode("First Citizen:\n").expect("enc");
    let a = generate(&m, &prompt, &opts(42, 1.0, 24), |_| {
        ControlFlow::Continue(())
    })
    .expect("a");
    let b = generate(&m, &prompt, &opts(42, 1.0, 24), |_| {
        ControlFlow::Continue(())
    })
    .expect("b");
    let c = generate(&m, &prompt, &opts(43, 1.0, 24), |_| {
        ControlFlow::Continue(())
    })
    .expect("c");
    assert_eq!(a.tokens.len(), 24);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text, b.text);
    assert_ne!(a.tokens, c.tokens, "another seed gives another sample");
    assert_eq!(a.finish_reason, FinishReason::Length);
}

#[test]
fn resuming_after_k_tokens_continues_the_same_answer() {
    let (_d, m) = model();
    let prompt = m.tokenizer.encode("First Citizen:\n").expect("enc");
    let mut whole_text = String::new();
    let whole = generate(&m, &prompt, &opts(9, 1.0, 20), |e| {
        if let Event::Token { text, .. } | Event::Tail { text } = e {
            whole_text.push_str(text);
        }
        ControlFlow::Continue(())
    })
    .expect("whole");
    for k in [1, 7, 19] {
        // What a first provider streamed before it died after k tokens.
        let mut first = String::new();
        generate(&m, &prompt, &opts(9, 1.0, k), |e| {
            if let Event::Token { text, .. } = e {
                first.push_str(text);
            }
            ControlFlow::Continue(())
        })
        .expect("first");
        let mut rest = String::new();
        let resumed = generate(
            &m,
            &prompt,
            &GenerateOptions {
                resume: whole.tokens[..k].to_vec(),
                ..opts(9, 1.0, 20)
            },
            |e| {
                match e {
                    Event::Token { index, text, .. } => {
                        assert!(index >= k, "resumed tokens are not emitted again");
                        rest.push_str(text);
                    }
                    Event::Tail { text } => rest.push_str(text),
                    Event::Prefill { .. } => {}
                }
                ControlFlow::Continue(())
            },
        )
        .expect("resumed");
        assert_eq!(resumed.tokens, whole.tokens, "k = {k}");
        assert_eq!(first + &rest, whole_text, "k = {k}");
    }
    let too_long = GenerateOptions {
        resume: whole.tokens.clone(),
        ..opts(9, 1.0, 20)
    };
    assert!(generate(&m, &prompt, &too_long, |_| ControlFlow::Continue(())).is_err());
}

#[test]
fn streamed_hidden_states_give_the_sampled_tokens() {
    let (_d, m) = model();
    let prompt = m.tokenizer.encode("All:\n").expect("enc");
    let mut prefill_rows = 0;
    let mut replayed = vec![];
    let mut streamed = String::new();
    let out = generate(&m, &prompt, &opts(9, 0.9, 16), |ev| {
        match ev {
            Event::Prefill { hidden } => prefill_rows = hidden.dim(0).expect("dim"),
            Event::Token {
                index,
                hidden,
                text,
                ..
            } => {
                // The hidden state handed out is the LM head's input: replaying the head
                // and the sampler on it gives the same token.
                let logits: Vec<f32> = m
                    .model
                    .logits(&hidden.unsqueeze(0).expect("u"))
                    .expect("logits")
                    .squeeze(0)
                    .expect("s")
                    .to_vec1()
                    .expect("v");
                replayed.push(
                    agora_model::sampler::sample(&logits, &opts(9, 0.9, 16).sampling, index as u64)
                        .expect("s")
                        .token,
                );
                streamed.push_str(text);
            }
            Event::Tail { text } => streamed.push_str(text),
        }
        ControlFlow::Continue(())
    })
    .expect("generate");
    assert_eq!(prefill_rows, prompt.len());
    assert_eq!(replayed, out.tokens, "{:?}", out);
    assert_eq!(streamed, out.text);
}

#[test]
fn stop_sequences_and_limits() {
    let (_d, m) = model();
    let prompt = m.tokenizer.encode("First").expect("enc");
    let free = generate(
        &m,
        &prompt,
        &opts(1, 0.0, 30),
        |_| ControlFlow::Continue(()),
    )
    .expect("free");
    // Stop on a piece of what greedy decoding produces anyway.
    let piece: String = free.text.chars().skip(3).take(2).collect();
    if !piece.is_empty() {
        let mut o = opts(1, 0.0, 30);
        o.stop = vec![piece.clone()];
        let stopped = generate(&m, &prompt, &o, |_| ControlFlow::Continue(())).expect("stop");
        assert_eq!(stopped.finish_reason, FinishReason::Stop);
        assert!(!stopped.text.contains(&piece));
        assert!(free.text.starts_with(&stopped.text));
    }
    assert!(generate(&m, &[], &opts(1, 0.0, 5), |_| ControlFlow::Continue(())).is_err());
    let too_long = vec![1u32; 300];
    assert!(
        generate(&m, &too_long, &opts(1, 0.0, 5), |_| ControlFlow::Continue(
            ()
        ))
        .is_err()
    );
    assert!(generate(&m, &[1_000_000], &opts(1, 0.0, 5), |_| {
        ControlFlow::Continue(())
    })
    .is_err());
}

#[test]
fn quantized_prefill_through_f32_gemm_matches_the_quantized_decode_kernel() {
    // Prefill (many rows) dequantizes and runs the f32 GEMM; decode (one row) runs the
    // quantized kernel. Both compute the same model, up to activation quantization.
    let dir = tempfile::tempdir().expect("tmp");
    let (cfg, w, tok) = write_model(&dir.path().join("hf"), "llama", 8);
    let path = dir.path().join("q8.gguf");
    export_gguf(&path, &cfg, &w, &tok, agora_gguf::TensorType::Q8_0);
    let m = load(&path, &LoadOptions::default()).expect("load");
    let ids = m.tokenizer.encode(CORPUS).expect("enc");
    let (a, b) = full_and_stepwise(&m, &ids[..32], 0);
    let err = rel_err(&a, &b);
    assert!(err < 4e-2, "{err}");
}
