use std::ops::ControlFlow;
use std::time::Instant;

use agora_model::generate::{generate, Event, FinishReason, GenerateOptions};
use agora_model::{load, ChatMessage, LoadOptions, LoadedModel, SamplingParams};

const SCHEMA: &str = r#"{"type":"object","properties":{"city":{"type":"string"},"temperature_c":{"type":"integer"},"sunny":{"type":"boolean"}},"required":["city","temperature_c","sunny"],"additionalProperties":false}"#;

fn shipped() -> LoadedModel {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/agora-shakespeare");
    load(&dir, &LoadOptions::default()).expect("shipped")
}

fn opts(seed: u64, temperature: f64, schema: Option<&str>, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams {
            temperature,
            seed,
            constraint: schema.map(str::to_string),
            logprobs: Some(3),
            ..Default::default()
        },
        max_tokens,
        ..GenerateOptions::default()
    }
}

#[test]
fn constrained_generation_stays_in_the_grammar_and_resumes_exactly() {
    let m = shipped();
    let prompt = m.tokenizer.encode("ROMEO.\n").expect("enc");
    let grammar = agora_grammar::Grammar::compile(SCHEMA).expect("schema");
    for seed in 0..3 {
        let mut lps = vec![];
        let g = generate(&m, &prompt, &opts(seed, 1.0, Some(SCHEMA), 64), |e| {
            if let Event::Token {
                logprobs, token, ..
            } = e
            {
                let lp = logprobs.expect("asked for");
                assert_eq!(lp.token, token);
                // Fewer alternatives than asked where the mask leaves fewer tokens.
                assert!(lp.logprob <= 0.0 && (1..=3).contains(&lp.top.len()));
                lps.push(lp);
            }
            ControlFlow::Continue(())
        })
        .expect("generate");
        let mut state = agora_grammar::Matcher::new(&grammar);
        assert!(state.feed_all(&grammar, g.text.as_bytes()), "{}", g.text);
        if g.finish_reason == FinishReason::Stop {
            let v: serde_json::Value = serde_json::from_str(&g.text).expect("json");
            assert!(grammar.validate(&v).is_ok());
        }
        // Resuming after k tokens continues the same constrained answer.
        let k = g.tokens.len() / 2;
        let resumed = generate(
            &m,
            &prompt,
            &GenerateOptions {
                resume: g.tokens[..k].to_vec(),
                ..opts(seed, 1.0, Some(SCHEMA), 64)
            },
            |_| ControlFlow::Continue(()),
        )
        .expect("resume");
        assert_eq!(resumed.tokens, g.tokens);
    }
    // Resumed tokens that break the constraint are refused.
    let plain = generate(&m, &prompt, &opts(1, 1.0, None, 8), |_| {
        ControlFlow::Continue(())
    })
    .expect("plain");
    let bad = GenerateOptions {
        resume: plain.tokens[..4].to_vec(),
        ..opts(1, 1.0, Some(SCHEMA), 16)
    };
    assert!(generate(&m, &prompt, &bad, |_| ControlFlow::Continue(())).is_err());
}

/// SmolLM2-135M-Instruct answers a schema and the per-token cost of the mask is measured
/// (recorded in docs/BENCHMARKS.md). Needs AGORA_SMOLLM2.
#[test]
fn smollm2_schema_answer_and_mask_overhead() {
    let Ok(path) = std::env::var("AGORA_SMOLLM2") else {
        eprintln!(
            "skipped: set AGORA_SMOLLM2 to the SmolLM2-135M-Instruct GGUF (scripts/fetch-smollm2)"
        );
        return;
    };
    let m = load(path.as_ref(), &LoadOptions::default()).expect("load smollm2");
    let t = Instant::now();
    let vocab = agora_model::constrain::vocab(&m).expect("vocab");
    eprintln!(
        "vocabulary of {} tokens arranged in {:.1} ms",
        vocab.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let prompt = agora_model::chat_prompt_ids(
        &m.tokenizer,
        m.chat_template.as_ref(),
        &[ChatMessage::new(
            "user",
            "Give the weather in Paris as JSON with city, temperature_c and sunny.",
        )],
    )
    .expect("prompt");
    let grammar = agora_grammar::Grammar::compile(SCHEMA).expect("schema");
    let run = |schema: Option<&str>| {
        let mut o = opts(7, 0.0, schema, 48);
        o.sampling.logprobs = None;
        let g = generate(&m, &prompt, &o, |_| ControlFlow::Continue(())).expect("generate");
        (
            g.decode_time.as_secs_f64() / g.tokens.len().max(1) as f64,
            g,
        )
    };
    let (plain_per_token, plain) = run(None);
    let (constrained_per_token, g) = run(Some(SCHEMA));
    eprintln!("unconstrained: {:?}", plain.text);
    eprintln!("constrained:   {:?} ({:?})", g.text, g.finish_reason);
    // The mask alone, over the answer's states.
    let mut state = agora_grammar::Matcher::new(&grammar);
    let t = Instant::now();
    let mut allowed = 0;
    for &tok in &g.tokens {
        allowed += vocab.mask(&grammar, &state).count();
        assert!(vocab.advance(&grammar, &mut state, tok));
    }
    let mask_per_token = t.elapsed().as_secs_f64() / g.tokens.len().max(1) as f64;
    eprintln!(
        "per token: decode {:.2} ms unconstrained, {:.2} ms constrained; mask alone {:.2} ms \
         (mean {} of {} tokens allowed)",
        plain_per_token * 1e3,
        constrained_per_token * 1e3,
        mask_per_token * 1e3,
        allowed / g.tokens.len().max(1),
        vocab.len()
    );
    assert_eq!(g.finish_reason, FinishReason::Stop, "{}", g.text);
    let v: serde_json::Value = serde_json::from_str(&g.text).expect("json");
    assert!(grammar.validate(&v).is_ok(), "{v}");
}
