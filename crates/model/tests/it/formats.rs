use agora_gguf::TensorType;
use agora_model::gguf_io::{write_gguf, GgufExport};
use agora_model::{load, LoadOptions, LoadedModel, Mode};
use candle_core::Tensor;

use crate::common::*;

fn logits(model: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, model.model.device())
        .expect("t")
        .unsqueeze(0)
        .expect("u");
    model
        .model
        .forward(&input, None, Mode::Serve)
        .expect("forward")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec")
}

/// Each GGUF type, the tolerance its logits must meet against f32 (relative L2 error over
/// all positions). Quantized matmuls also quantize activations (to Q8_0/Q8_K, as llama.cpp
/// does), and the test model's weights are scaled up so errors compound through the
/// layers (about 2.4x the per-weight error); measured: F16 6e-4, Q8_0 2e-2, Q4_K 0.21,
/// Q4_0 0.24.
const TOLERANCES: [(TensorType, f64); 5] = [
    (TensorType::F32, 1e-5),
    (TensorType::F16, 2e-3),
    (TensorType::Q8_0, 4e-2),
    (TensorType::Q4K, 0.3),
    (TensorType::Q4_0, 0.35),
];

fn check_arch(arch: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let hf = dir.path().join("hf");
    let (cfg, w, tok) = write_model(&hf, arch, 7);
    let reference = load(&hf, &LoadOptions::default()).expect("load safetensors");
    assert_eq!(reference.model.config(), &cfg);
    let ids = tok.encode(CORPUS).expect("encode");
    let ids = &ids[..ids.len().min(60)];
    let want = logits(&reference, ids);

    let mut seen_ids = vec![reference.id];
    for (ty, tol) in TOLERANCES {
        let path = dir.path().join(format!("{arch}-{}.gguf", ty.name()));
        write_gguf(
            &path,
            &GgufExport {
                name: "test",
                config: &cfg,
                tensors: &w,
                tokenizer: &tok,
                chat_template: Some(agora_model::chat::CHATML_TEMPLATE),
                matrix_type: ty,
            },
        )
        .expect("write gguf");
        let m = load(&path, &LoadOptions::default()).expect("load gguf");
        assert_eq!(m.manifest.quantization, ty.name());
        assert_eq!(
            m.tokenizer.encode(CORPUS).expect("enc"),
            tok.encode(CORPUS).expect("enc")
        );
        assert!(m.chat_template.is_some());
        let err = rel_err(&want, &logits(&m, ids));
        eprintln!(
            "{arch} {}: relative logit error {err:.2e} (tolerance {tol:.0e})",
            ty.name()
        );
        assert!(err < tol, "{arch} {}: error {err} over {tol}", ty.name());
        assert!(!seen_ids.contains(&m.id), "each file is another model");
        seen_ids.push(m.id);
    }
}

#[test]
fn llama_gguf_every_type_matches_f32_reference() {
    check_arch("llama");
}

#[test]
fn qwen2_gguf_with_biases_and_tied_head_matches_f32_reference() {
    check_arch("qwen2");
}

#[test]
fn safetensors_quantized_on_load_stays_close_and_changes_model_id() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, _, tok) = write_model(dir.path(), "llama", 3);
    let f32_model = load(dir.path(), &LoadOptions::default()).expect("load");
    let q = load(
        dir.path(),
        &LoadOptions {
            quantize: Some(agora_model::GgmlDType::Q8_0),
        },
    )
    .expect("load q8");
    let ids = tok.encode("Speak, speak.").expect("enc");
    let err = rel_err(&logits(&f32_model, &ids), &logits(&q, &ids));
    eprintln!("Q8_0 on load: relative logit error {err:.2e}");
    // The same tolerance as a Q8_0 GGUF file (see TOLERANCES).
    assert!(err < 4e-2, "{err}");
    assert_ne!(f32_model.id, q.id);
}

#[test]
fn model_id_is_stable_across_loads_and_matches_written_manifest() {
    let dir = tempfile::tempdir().expect("tmp");
    write_model(dir.path(), "llama", 11);
    let a = load(dir.path(), &LoadOptions::default()).expect("a");
    let b = load(dir.path(), &LoadOptions::default()).expect("b");
    assert_eq!(a.id, b.id);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("manifest.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(manifest["model_id"], a.id.to_string());
    // Changing the chat template alone makes another model.
    let cfg_path = dir.path().join("tokenizer_config.json");
    let body = std::fs::read_to_string(&cfg_path).expect("read");
    std::fs::write(&cfg_path, body.replace("assistant", "bot")).expect("write");
    let c = load(dir.path(), &LoadOptions::default()).expect("c");
    assert_ne!(a.id, c.id);
}

#[test]
fn llama31_rope_factors_survive_gguf_and_change_the_function() {
    use agora_model::weights::TensorSource;
    let tok = tokenizer();
    let mut cfg = config("llama", tok.vocab_size());
    let w = weights(&cfg, 21);
    let ids = tok.encode(CORPUS).expect("encode");
    let ids = &ids[..50];
    let run = |cfg: &agora_model::LlamaConfig| -> Vec<f32> {
        let mut src = TensorSource::new(w.clone(), candle_core::Device::Cpu);
        let m = agora_model::Llama::load(&mut src, cfg).expect("load");
        let input = Tensor::new(ids, m.device())
            .expect("t")
            .unsqueeze(0)
            .expect("u");
        m.forward(&input, None, Mode::Serve)
            .expect("f")
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v")
    };
    let plain = run(&cfg);
    cfg.rope_freq_factors = Some((0..cfg.head_dim / 2).map(|i| 1.0 + i as f32).collect());
    let scaled = run(&cfg);
    assert!(
        rel_err(&plain, &scaled) > 1e-3,
        "the factors change the function"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("llama31.gguf");
    export_gguf(&path, &cfg, &w, &tok, TensorType::F32);
    let m = load(&path, &LoadOptions::default()).expect("load");
    assert_eq!(m.model.config().rope_freq_factors, cfg.rope_freq_factors);
    let err = rel_err(&scaled, &logits(&m, ids));
    assert!(err < 1e-5, "{err}");
}
