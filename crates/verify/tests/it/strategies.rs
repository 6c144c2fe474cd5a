//! Every cheating strategy that can be judged from the material alone is caught by one
//! audit; honest answers pass, including one generated on another thread count. The model
//! is the one the project ships (a real trained model, so its distributions are realistic).

use agora_model::{LoadOptions, LoadedModel};
use agora_verify::Fingerprint;

use crate::common::{check, honest, sampling, shipped_dir};

/// Tokens generated per answer: the honest claims here run to this length, never to an
/// end-of-sequence token.
const MAX_TOKENS: usize = 100;

fn shipped() -> LoadedModel {
    agora_model::load(&shipped_dir(), &LoadOptions::default()).expect("load shipped model")
}

#[test]
fn honest_answers_pass_and_each_cheat_is_caught() {
    let model = shipped();
    let prompt = model.tokenizer.encode("ROMEO.\nWhat light").expect("enc");
    let other_prompt = model.tokenizer.encode("JULIET.\nO Romeo").expect("enc");

    // Honest, sampled and greedy, on two thread counts.
    for (seed, temp) in [(1, 1.0), (2, 0.8), (3, 0.0)] {
        let o = sampling(seed, temp);
        let c = honest(&model, &prompt, &o, MAX_TOKENS, false);
        let r = check(&model, &c);
        assert!(r.passed, "honest seed {seed} temp {temp}: {r:?}");
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let c1 = one_thread.install(|| honest(&model, &prompt, &o, MAX_TOKENS, false));
        assert_eq!(c1.output, c.output, "thread count changes no token");
        let r1 = check(&model, &c1);
        assert!(r1.passed, "honest on 1 thread: {r1:?}");
        eprintln!("honest seed {seed} temp {temp}: {r:?}");
    }

    let o = sampling(7, 1.0);
    let good = honest(&model, &prompt, &o, MAX_TOKENS, false);

    // The shipped Q8_0 GGUF: served through the int8 decode kernel, audited through the
    // dequantized f32 prefill; honest, so it passes.
    let gguf = agora_model::load(
        &shipped_dir().join("model-q8_0.gguf"),
        &LoadOptions::default(),
    )
    .expect("gguf");
    let r = check(&gguf, &honest(&gguf, &prompt, &o, MAX_TOKENS, false));
    eprintln!("honest q8_0 gguf: {r:?}");
    assert!(r.passed, "honest Q8_0: {r:?}");
    let q8 = agora_model::load(
        &shipped_dir(),
        &LoadOptions {
            quantize: Some(candle_core::quantized::GgmlDType::Q8_0),
        },
    )
    .expect("q8");
    let r = check(&model, &honest(&q8, &prompt, &o, MAX_TOKENS, false));
    eprintln!("q8_0 served for f32: {r:?}");
    assert!(!r.passed, "Q8_0 served for the f32 model caught");

    // Another quantization of the right model (Q8_0 weights), fingerprints its own.
    let q8 = agora_model::load(
        &shipped_dir(),
        &LoadOptions {
            quantize: Some(candle_core::quantized::GgmlDType::Q4_0),
        },
    )
    .expect("quantized");
    let r = check(&model, &honest(&q8, &prompt, &o, MAX_TOKENS, false));
    eprintln!("quantization swap: {r:?}");
    assert!(!r.passed, "quantization swap caught");

    // Another model: the right one with its weights' order scrambled is too easy; use an
    // untrained model of the same shape instead (a cheap substitute).
    let cheap_dir = tempfile::tempdir().expect("tmp");
    let cfg = model.manifest.config.clone();
    let w = agora_model::init::init_weights(&cfg, 99, &candle_core::Device::Cpu).expect("init");
    agora_model::safetensors_io::write_hf_dir(cheap_dir.path(), &cfg, &w, &model.tokenizer, None)
        .expect("write");
    let cheap = agora_model::load(cheap_dir.path(), &LoadOptions::default()).expect("load");
    let swapped = honest(&cheap, &prompt, &o, MAX_TOKENS, false);
    let r = check(&model, &swapped);
    eprintln!("model swap: {r:?}");
    assert!(!r.passed, "model swap caught");

    // Cheap model's tokens, fingerprints recomputed with the right model by one prefill.
    let mut forged = swapped;
    forged.print = honest_prints_for(&model, &prompt, &forged.output);
    let r = check(&model, &forged);
    eprintln!("cheap model then prefill: {r:?}");
    assert!(!r.passed, "cheap-then-prefill caught by the sampler replay");
    assert!(r.sampler_mismatches > 10);

    // Truncated output claiming the full count.
    let mut truncated = honest(&model, &prompt, &o, MAX_TOKENS, false);
    truncated.output.truncate(40);
    let r = check(&model, &truncated);
    assert!(!r.passed, "truncation caught");

    // A cached answer replayed for another prompt.
    let mut replayed = honest(&model, &prompt, &o, MAX_TOKENS, false);
    replayed.prompt = other_prompt.clone();
    let r = check(&model, &replayed);
    eprintln!("replayed answer: {r:?}");
    assert!(!r.passed, "replay caught");

    // Random tokens with honest-looking fingerprints.
    let mut random = honest(&model, &prompt, &o, MAX_TOKENS, false);
    let vocab = model.model.config().vocab_size as u32;
    let mut x = 12345u64;
    for t in random.output.iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *t = ((x >> 33) as u32) % vocab;
    }
    random.print = honest_prints_for(&model, &prompt, &random.output);
    let r = check(&model, &random);
    assert!(!r.passed, "random tokens caught");

    // And the honest one still passes after all that.
    assert!(check(&model, &good).passed);
}

/// What a cheat computes to forge fingerprints for given tokens: one prefill with the right
/// model (exactly what an honest provider's hidden states would be for those tokens).
fn honest_prints_for(model: &LoadedModel, prompt: &[u32], output: &[u32]) -> Fingerprint {
    use candle_core::{IndexOp, Tensor};
    let all: Vec<u32> = prompt.iter().chain(output).copied().collect();
    let input = Tensor::new(all.as_slice(), model.model.device())
        .expect("t")
        .unsqueeze(0)
        .expect("u");
    let hidden = model
        .model
        .forward_hidden(&input, None, agora_model::Mode::Serve)
        .expect("fwd")
        .i(0)
        .expect("i");
    let mut b = agora_verify::FingerprintBuilder::new();
    for j in 0..output.len() {
        b.push(
            hidden
                .i(prompt.len() + j - 1)
                .expect("row")
                .to_vec1()
                .expect("vec"),
        );
    }
    b.finish()
}
