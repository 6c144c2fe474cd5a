use crate::*;

#[test]
fn generate_streams_reproducibly_and_reports_speed() {
    let dir = tempfile::tempdir().expect("tmp");
    tiny_model(dir.path());
    let m = dir.path().to_string_lossy().to_string();
    let args = [
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hark",
        "--max-tokens",
        "12",
        "--seed",
        "5",
        "--temperature",
        "1.0",
        "--ignore-eos",
    ];
    let a = agora(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = agora(&args);
    assert_eq!(stdout(&a), stdout(&b), "same seed, same text");
    assert!(stdout(&a).starts_with("Hark"));
    let err = stderr(&a);
    assert!(
        err.contains("prompt:") && err.contains("decode: 12 tokens") && err.contains("tok/s"),
        "{err}"
    );
    let chat = agora(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Who goes there?",
        "--chat",
        "--max-tokens",
        "4",
    ]);
    assert!(chat.status.success(), "{}", stderr(&chat));
}

#[test]
fn inspect_prints_the_model_id_of_the_manifest() {
    let dir = tempfile::tempdir().expect("tmp");
    tiny_model(dir.path());
    let m = dir.path().to_string_lossy().to_string();
    let out = agora(&["model", "inspect", &m]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("manifest.json")).expect("read"),
    )
    .expect("json");
    let id = manifest["model_id"].as_str().expect("id").to_string();
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    assert!(stdout(&out).contains("architecture  llama"));

    let gguf = dir.path().join("m.gguf").to_string_lossy().to_string();
    let conv = agora(&["model", "to-gguf", &m, "--out", &gguf, "--type", "q8_0"]);
    assert!(conv.status.success(), "{}", stderr(&conv));
    let json = agora(&["model", "inspect", &gguf, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("json");
    assert_eq!(v["manifest"]["quantization"], "Q8_0");
    assert_ne!(v["model_id"].as_str(), Some(id.as_str()));
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code() {
    let out = agora(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error:") && stderr(&out).contains("/nonexistent/model.gguf"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().expect("tmp");
    tiny_model(dir.path());
    let m = dir.path().to_string_lossy().to_string();
    let out = agora(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "x",
        "--temperature=-1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("temperature"), "{}", stderr(&out));
    let out = agora(&["generate", "--model", &m, "--prompt", ""]);
    assert!(stderr(&out).contains("prompt is empty"), "{}", stderr(&out));
    let help = agora(&["train", "--help"]);
    assert!(stdout(&help).contains("--resume"));
}
