use std::ops::ControlFlow;

use agora_model::generate::{generate, GenerateOptions};
use agora_model::{load, LoadOptions, SamplingParams};

use crate::*;

#[test]
fn shipped_default_model_loads_and_generates() {
    let dir = repo_root().join("models/agora-shakespeare");
    let model = load(&dir, &LoadOptions::default()).expect("the shipped model loads");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(
        manifest["model_id"].as_str(),
        Some(model.id.to_string().as_str()),
        "the shipped manifest names its ModelId"
    );
    let prompt = model.tokenizer.encode("ROMEO.\n").expect("encode");
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 1,
            ..Default::default()
        },
        max_tokens: 40,
        stop: vec![],
        stop_at_eos: true,
        resume: vec![],
    };
    let out = generate(&model, &prompt, &opts, |_| ControlFlow::Continue(())).expect("generate");
    assert!(!out.tokens.is_empty());
    // A trained model writes mostly letters and spaces, unlike a random one.
    let letters = out
        .text
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || c.is_whitespace())
        .count();
    assert!(
        letters * 10 >= out.text.chars().count() * 8,
        "{:?}",
        out.text
    );

    let gguf = dir.join("model-q8_0.gguf");
    let q = load(&gguf, &LoadOptions::default()).expect("the shipped GGUF loads");
    let out = generate(&q, &prompt, &opts, |_| ControlFlow::Continue(())).expect("generate");
    assert!(!out.tokens.is_empty());
}
