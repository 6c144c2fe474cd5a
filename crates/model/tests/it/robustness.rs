use agora_gguf::TensorType;
use agora_model::{load, LoadOptions, ModelError};

use crate::common::*;

fn load_err(path: &std::path::Path) -> String {
    match load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_corrupt_gguf_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let hf = dir.path().join("hf");
    let (cfg, w, tok) = write_model(&hf, "llama", 1);
    let path = dir.path().join("m.gguf");
    export_gguf(&path, &cfg, &w, &tok, TensorType::Q8_0);
    let bytes = std::fs::read(&path).expect("read");
    let bad = dir.path().join("bad.gguf");
    for cut in [0, 3, 10, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).expect("write");
        let e = load_err(&bad);
        assert!(!e.is_empty());
    }
    let mut flipped = bytes.clone();
    flipped[0] = b'X';
    std::fs::write(&bad, &flipped).expect("write");
    assert!(load_err(&bad).to_lowercase().contains("magic"));
}

#[test]
fn broken_hugging_face_directories_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    write_model(dir.path(), "llama", 2);
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).expect("truncate");
    assert!(load_err(dir.path()).contains("model.safetensors"));
    std::fs::write(&weights, &bytes).expect("restore");

    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 12").expect("write");
    assert!(load_err(dir.path()).contains("config.json"));
    std::fs::remove_file(dir.path().join("config.json")).expect("rm");
    assert!(load_err(dir.path()).contains("config.json"));

    let missing = dir.path().join("nope.gguf");
    assert!(matches!(
        load(&missing, &LoadOptions::default()),
        Err(ModelError::Io { .. })
    ));
}

#[test]
fn wrong_shapes_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let tok = tokenizer();
    let cfg = config("llama", tok.vocab_size());
    let mut w = weights(&cfg, 4);
    w.remove("model.layers.1.mlp.up_proj.weight");
    agora_model::safetensors_io::write_hf_dir(dir.path(), &cfg, &w, &tok, None).expect("write");
    assert!(load_err(dir.path()).contains("model.layers.1.mlp.up_proj.weight"));
}
