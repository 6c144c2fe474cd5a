//! What an audit costs against the generation it checks (issue 14 item 4): one answer of
//! exactly N tokens (default 256) to a chat prompt, generated as a provider does
//! (`generate_fingerprinted`: prefill, then N decode steps) and audited as a verifier does
//! (`audit`: one prefill over prompt and answer with the exact kernels), on the same rayon
//! pool, median of R runs (default 3), each audit checked to pass.
//!
//! `AGORA_SMOLLM2=$(scripts/fetch-smollm2) RAYON_NUM_THREADS=2 cargo bench -p agora-verify --bench audit_cost`
//!
//! `AGORA_AUDIT_MODEL` names another GGUF (the 0.5B shape from `agora bench engine`);
//! `AGORA_AUDIT_TOKENS` and `AGORA_AUDIT_REPEATS` change N and R.

use std::ops::ControlFlow;
use std::time::Instant;

use agora_model::generate::GenerateOptions;
use agora_model::{ChatMessage, LoadOptions, SamplingParams};
use agora_verify::{audit, generate_fingerprinted, Answer, Thresholds};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Where an audit's time goes: the model's forward pass as the audit runs it (the prompt as a
/// prefill, the answer through the exact kernels), the output head over every answer row,
/// the sampler's replay of every answer position, and the rest (fingerprint comparison).
fn breakdown(
    model: &agora_model::LoadedModel,
    prompt: &[u32],
    output: &[u32],
    sampling: &SamplingParams,
) {
    use agora_model::Mode;
    use candle_core::{IndexOp, Tensor};
    let device = model.model.device();
    let started = Instant::now();
    let mut cache = model.model.new_cache();
    let input = Tensor::new(prompt, device)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    model
        .model
        .forward_hidden(&input, Some(&mut cache), Mode::Serve)
        .expect("prefill");
    let prefill_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let forced = Tensor::new(&output[..output.len() - 1], device)
        .and_then(|t| t.unsqueeze(0))
        .expect("forced");
    let rows = model
        .model
        .forward_hidden(&forced, Some(&mut cache), Mode::Audit)
        .expect("forced")
        .i(0)
        .expect("rows");
    let forced_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let logits = model.model.logits_audit(&rows).expect("logits");
    let head_s = started.elapsed().as_secs_f64();
    let logits: Vec<Vec<f32>> = logits.to_vec2().expect("logits");
    let started = Instant::now();
    for (i, row) in logits.iter().enumerate() {
        std::hint::black_box(agora_model::sampler::sample(row, sampling, i as u64).expect("s"));
    }
    let sample_s = started.elapsed().as_secs_f64();
    println!(
        "  audit breakdown: prompt prefill {prefill_s:.3} s, answer rows (exact kernels) {forced_s:.3} s, output head {head_s:.3} s, sampler replay {sample_s:.3} s"
    );
}

fn main() {
    let Some(path) = std::env::var("AGORA_AUDIT_MODEL")
        .or_else(|_| std::env::var("AGORA_SMOLLM2"))
        .ok()
    else {
        eprintln!(
            "SKIPPED: set AGORA_SMOLLM2 (scripts/fetch-smollm2 prints it) or AGORA_AUDIT_MODEL"
        );
        return;
    };
    let tokens = env_usize("AGORA_AUDIT_TOKENS", 256);
    let repeats = env_usize("AGORA_AUDIT_REPEATS", 3).max(1);
    let model = agora_model::load(path.as_ref(), &LoadOptions::default()).expect("load");
    let question = "Write a long story about a lighthouse keeper and the sea.";
    let prompt = match model.chat_template {
        Some(_) => {
            let text = model
                .render_chat(&[ChatMessage::new("user", question)])
                .expect("template");
            model.tokenizer.encode(&text).expect("encode")
        }
        None => model.tokenizer.encode(question).expect("encode"),
    };
    let sampling = SamplingParams {
        temperature: 0.7,
        top_k: 0,
        top_p: 1.0,
        seed: 14,
        ..Default::default()
    };
    let opts = GenerateOptions {
        sampling: sampling.clone(),
        max_tokens: tokens,
        stop: vec![],
        stop_at_eos: false,
        resume: vec![],
    };
    let (mut gens, mut audits) = (vec![], vec![]);
    for round in 0..=repeats {
        let started = Instant::now();
        let (g, print) =
            generate_fingerprinted(&model, &prompt, &opts, |_| ControlFlow::Continue(()))
                .expect("generate");
        let gen_s = started.elapsed().as_secs_f64();
        assert_eq!(g.tokens.len(), tokens);
        let started = Instant::now();
        let report = audit(
            &model,
            &Answer {
                model: model.id,
                prompt: &prompt,
                resumed: &[],
                output: &g.tokens,
                claimed_tokens: g.tokens.len(),
                sampling: sampling.clone(),
                fingerprint: &print,
                ended_at_eos: false,
            },
            &Thresholds::default(),
        )
        .expect("audit ran");
        let audit_s = started.elapsed().as_secs_f64();
        assert!(
            report.passed,
            "an honest answer failed: {:?}",
            report.reasons
        );
        eprintln!(
            "  run {round}{}: generate {gen_s:.3} s, audit {audit_s:.3} s, {:.1}x",
            if round == 0 { " (warm-up)" } else { "" },
            gen_s / audit_s
        );
        if round > 0 {
            gens.push(gen_s);
            audits.push(audit_s);
        }
        if round == repeats {
            breakdown(&model, &prompt, &g.tokens, &sampling);
        }
    }
    let (g, a) = (median(gens), median(audits));
    println!(
        "{path}: prompt {} + answer {tokens} tokens, {} threads, median of {repeats}: generate {g:.3} s, audit {a:.3} s, audit {:.1}x cheaper",
        prompt.len(),
        rayon::current_num_threads(),
        g / a
    );
}
