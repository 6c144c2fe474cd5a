use crate::*;

#[test]
fn train_exports_a_model_that_loads_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("corpus.txt");
    std::fs::write(
        &data,
        "ROMEO. But soft, what light through yonder window breaks?\nJULIET. Ay me!\n".repeat(60),
    )
    .expect("write");
    let out = dir.path().join("run");
    let (d, o) = (
        data.to_string_lossy().to_string(),
        out.to_string_lossy().to_string(),
    );
    let common = [
        "train",
        "--data",
        &d,
        "--out",
        &o,
        "--vocab-size",
        "300",
        "--layers",
        "1",
        "--hidden",
        "64",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ffn",
        "128",
        "--context",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "3",
        "--eval-tokens",
        "256",
        "--gguf",
        "f32,q8_0",
    ];
    let mut first = common.to_vec();
    first.extend(["--steps", "6"]);
    let run = agora(&first);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("bits per byte"), "{}", stdout(&run));
    let log = std::fs::read_to_string(out.join("train-log.jsonl")).expect("log");
    assert!(log.contains("val_bits_per_byte"));
    for file in [
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/config.json",
        "model/manifest.json",
        "model/model-q8_0.gguf",
        "model/model-f32.gguf",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let again = agora(&first);
    assert!(
        !again.status.success(),
        "a second run into the same directory needs --resume"
    );

    let mut resume = common.to_vec();
    resume.extend(["--steps", "9", "--resume"]);
    let run = agora(&resume);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("trained 9 steps"), "{}", stdout(&run));
    let gen = agora(&[
        "generate",
        "--model",
        &out.join("model/model-q8_0.gguf").to_string_lossy(),
        "--prompt",
        "ROMEO.",
        "--max-tokens",
        "5",
    ]);
    assert!(gen.status.success(), "{}", stderr(&gen));
}
