//! Audits of constrained answers (a JSON Schema in the signed sampling settings): honest
//! providers pass; a provider that ignores the constraint, or applies another one, fails.

use std::ops::ControlFlow;

use agora_model::generate::{FinishReason, GenerateOptions};
use agora_model::{LoadOptions, LoadedModel, SamplingParams};
use agora_verify::generate_fingerprinted;

use crate::common::{check, sampling, shipped_dir, Claim};

const SCHEMA: &str = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"ok":{"type":"boolean"}},"required":["name","age","ok"],"additionalProperties":false}"#;

fn constrained(seed: u64, temperature: f64, schema: Option<&str>) -> SamplingParams {
    SamplingParams {
        constraint: schema.map(str::to_string),
        ..sampling(seed, temperature)
    }
}

/// Generates under `run` and claims `signed`: an honest provider has them equal.
fn answer(model: &LoadedModel, run: &SamplingParams, signed: &SamplingParams) -> (Claim, String) {
    let prompt = model.tokenizer.encode("ROMEO.\n").expect("encode");
    let opts = GenerateOptions {
        sampling: run.clone(),
        max_tokens: 48,
        ..GenerateOptions::default()
    };
    let (g, print) = generate_fingerprinted(model, &prompt, &opts, |_| ControlFlow::Continue(()))
        .expect("generate");
    let claim = Claim {
        prompt,
        claimed: g.tokens.len(),
        ended_at_eos: g.finish_reason == FinishReason::Stop,
        output: g.tokens,
        print,
        sampling: signed.clone(),
    };
    (claim, g.text)
}

fn shipped() -> LoadedModel {
    agora_model::load(&shipped_dir(), &LoadOptions::default()).expect("shipped")
}

#[test]
fn honest_constrained_answers_pass_and_are_json_prefixes() {
    let model = shipped();
    let grammar = agora_grammar::Grammar::compile(SCHEMA).expect("schema");
    for (seed, temperature) in [(1, 1.0), (2, 0.7), (3, 0.0)] {
        let p = constrained(seed, temperature, Some(SCHEMA));
        let (claim, text) = answer(&model, &p, &p);
        let report = check(&model, &claim);
        assert!(report.passed, "seed {seed}: {:?}", report.reasons);
        // Whatever the answer holds is a prefix the grammar accepts; a whole one validates.
        let mut m = agora_grammar::Matcher::new(&grammar);
        assert!(m.feed_all(&grammar, text.as_bytes()), "{text}");
        if claim.ended_at_eos {
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert!(grammar.validate(&v).is_ok(), "{text}");
        }
    }
}

#[test]
fn a_provider_that_ignores_the_constraint_fails_its_audit() {
    let model = shipped();
    for (seed, temperature) in [(1, 1.0), (4, 0.0)] {
        let signed = constrained(seed, temperature, Some(SCHEMA));
        let (claim, _) = answer(&model, &constrained(seed, temperature, None), &signed);
        let report = check(&model, &claim);
        assert!(!report.passed, "seed {seed}");
        assert!(
            report.reasons.iter().any(|r| r.contains("constraint")),
            "{:?}",
            report.reasons
        );
        // The same answer claimed without the constraint is honest.
        let mut plain = claim.clone();
        plain.sampling = constrained(seed, temperature, None);
        assert!(check(&model, &plain).passed);
    }
}

#[test]
fn a_provider_that_applies_a_weaker_constraint_fails_its_audit() {
    let model = shipped();
    let signed = constrained(5, 1.0, Some(SCHEMA));
    let weaker = constrained(5, 1.0, Some(agora_grammar::JSON_OBJECT_SCHEMA));
    let (claim, text) = answer(&model, &weaker, &signed);
    let report = check(&model, &claim);
    assert!(!report.passed, "{text}");
}

#[test]
fn a_constraint_no_provider_accepts_is_a_fault_not_a_crash() {
    let model = shipped();
    let p = constrained(1, 1.0, None);
    let (mut claim, _) = answer(&model, &p, &p);
    claim.sampling.constraint = Some(r#"{"type":"string","pattern":"x"}"#.into());
    let report = check(&model, &claim);
    assert!(!report.passed);
}
