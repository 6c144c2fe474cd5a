//! Integration tests of single-machine training: gradients, learning, checkpoints, export.

use std::collections::HashMap;

use agora_gguf::TensorType;
use agora_model::{load, LoadOptions, Mode, TextTokenizer};
use agora_train::data::{split_holdout, tokenize, Corpus};
use agora_train::trainer::{model_config, TrainSettings, Trainer};
use candle_core::Tensor;

const TEXT: &str = "KING. What say you, lords? Speak, speak.\nLORD. We say the king is good.\n\
QUEEN. And I say so too; the king is good and wise.\nKING. Then we are all agreed.\n";

fn corpus_text() -> String {
    TEXT.repeat(40)
}

fn setup(steps: u64) -> (Trainer, Corpus) {
    let text = corpus_text();
    let (train, val) = split_holdout(&text, 0.1).expect("split");
    let tok = TextTokenizer::train_bpe(std::iter::once(train), 300).expect("tokenizer");
    let corpus = Corpus {
        train: tokenize(&tok, train).expect("t"),
        val: tokenize(&tok, val).expect("v"),
    };
    let cfg = model_config(tok.vocab_size(), 2, 64, 4, 2, 128, 64);
    let settings = TrainSettings {
        steps,
        batch_size: 4,
        seq_len: 32,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 5,
        eval_every: 0,
        eval_tokens: 512,
        checkpoint_every: 0,
        ..TrainSettings::default()
    };
    (Trainer::new(cfg, settings, tok).expect("trainer"), corpus)
}

#[test]
fn every_trainable_variable_receives_a_gradient() {
    let (trainer, corpus) = setup(1);
    let mut rng = agora_model::init::SeededRng::new(3);
    let (x, y) = corpus
        .batch(&mut rng, 2, 16, &candle_core::Device::Cpu)
        .expect("batch");
    let grads = trainer
        .loss(&x, &y)
        .expect("loss")
        .backward()
        .expect("backward");
    assert!(!trainer.vars().is_empty());
    for (name, var) in trainer.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .expect("sq")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
}

#[test]
fn a_few_steps_lower_the_loss() {
    let (mut trainer, corpus) = setup(40);
    let before = trainer.evaluate(&corpus, 512).expect("eval");
    let dir = tempfile::tempdir().expect("tmp");
    trainer.run(&corpus, dir.path(), |_| {}).expect("run");
    let after = trainer.last_eval.expect("final eval");
    assert!(
        after.loss < before.loss * 0.7,
        "loss {} -> {}",
        before.loss,
        after.loss
    );
    assert!(after.bits_per_byte < before.bits_per_byte);
}

fn weights_equal(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, t)| {
            let u = &b[k];
            let d = (t - u)
                .expect("sub")
                .abs()
                .expect("abs")
                .max_all()
                .expect("max")
                .to_scalar::<f32>()
                .expect("s");
            d == 0.0
        })
}

#[test]
fn checkpoint_resume_continues_exactly() {
    let dir_a = tempfile::tempdir().expect("tmp");
    let dir_b = tempfile::tempdir().expect("tmp");
    // Straight through: 12 steps.
    let (mut straight, corpus) = setup(12);
    straight.run(&corpus, dir_a.path(), |_| {}).expect("run");
    // Interrupted: 6 steps, checkpoint, resume in a new trainer to 12.
    let (mut first, corpus_b) = setup(6);
    first.run(&corpus_b, dir_b.path(), |_| {}).expect("run");
    drop(first);
    let mut resumed = Trainer::resume(dir_b.path(), Some(12)).expect("resume");
    assert_eq!(resumed.step(), 6);
    resumed.run(&corpus_b, dir_b.path(), |_| {}).expect("run");
    assert_eq!(resumed.step(), 12);
    assert!(
        weights_equal(&straight.weights(), &resumed.weights()),
        "resumed run diverged"
    );
}

#[test]
fn export_round_trips_through_safetensors_and_gguf() {
    let (mut trainer, corpus) = setup(5);
    let dir = tempfile::tempdir().expect("tmp");
    trainer.run(&corpus, dir.path(), |_| {}).expect("run");
    let out = dir.path().join("export");
    let manifest = trainer
        .export(&out, "test", None, &[TensorType::F32, TensorType::Q8_0])
        .expect("export");
    let ids = trainer.tokenizer.encode("KING. What say you").expect("enc");
    let input = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)
        .expect("t")
        .unsqueeze(0)
        .expect("u");
    let want: Vec<f32> = trainer
        .model()
        .forward(&input, None, Mode::Serve)
        .expect("f")
        .flatten_all()
        .expect("f")
        .to_vec1()
        .expect("v");
    let hf = load(&out, &LoadOptions::default()).expect("load hf");
    assert_eq!(hf.id, manifest.model_id());
    for (model, tol) in [
        (hf, 1e-6),
        (
            load(&out.join("model-f32.gguf"), &LoadOptions::default()).expect("gguf"),
            1e-5,
        ),
    ] {
        let got: Vec<f32> = model
            .model
            .forward(&input, None, Mode::Serve)
            .expect("f")
            .flatten_all()
            .expect("f")
            .to_vec1()
            .expect("v");
        let err = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < tol, "max logit difference {err}");
    }
    let q = load(&out.join("model-q8_0.gguf"), &LoadOptions::default()).expect("q8");
    assert_eq!(q.manifest.quantization, "Q8_0");
}
