//! Empty answers and answers that claim to have ended at an end-of-sequence token. The
//! generation loop never emits the stop token, so an honest empty answer has no output at
//! all; the audit used to refuse n == 0 and any payer could get an honest provider failed by
//! asking for one. Now the audit replays the sampler where the answer ended and passes only
//! if it picks an end-of-sequence token there: a provider cannot claim "empty" (or "it
//! stopped") to skip work, and an empty answer is paid for 0 output tokens.

use agora_model::sampler::sample;
use agora_model::{LoadedModel, Mode, SamplingParams};
use agora_verify::Fingerprint;
use candle_core::{IndexOp, Tensor};

use crate::common::{check, honest, prompt, sampling, synthetic, Claim};

/// The logits after `prompt`, as generation computes them.
fn first_logits(model: &LoadedModel, prompt: &[u32]) -> Vec<f32> {
    let input = Tensor::new(prompt, model.model.device())
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    let hidden = model
        .model
        .forward_hidden(&input, None, Mode::Serve)
        .and_then(|h| Ok(h.i((0, prompt.len() - 1))?))
        .expect("prefill");
    model
        .model
        .logits(&hidden.unsqueeze(0).expect("row"))
        .and_then(|l| Ok(l.squeeze(0)?.to_vec1()?))
        .expect("logits")
}

/// The first sampler seed at or after `from` whose first token is (or is not) a stop token.
fn seed_where(model: &LoadedModel, logits: &[f32], stops: bool, from: u64) -> SamplingParams {
    let stop_ids = model.stop_token_ids();
    (from..from + 200_000)
        .map(|seed| sampling(seed, 1.0))
        .find(|s| {
            let t = sample(logits, s, 0).expect("sample").token;
            stop_ids.contains(&t) == stops
        })
        .expect("a seed")
}

fn empty_claim(prompt: &[u32], s: &SamplingParams) -> Claim {
    Claim {
        prompt: prompt.to_vec(),
        output: vec![],
        claimed: 0,
        print: Fingerprint::default(),
        sampling: s.clone(),
        ended_at_eos: false,
    }
}

#[test]
fn honest_empty_answer_passes() {
    let m = synthetic();
    for model in [&m.f32, &m.q8] {
        let p = prompt(model, 6, 7);
        let logits = first_logits(model, &p);
        let s = seed_where(model, &logits, true, 0);
        let c = honest(model, &p, &s, 50, true);
        assert!(
            c.output.is_empty(),
            "the model stops at once with this seed"
        );
        assert!(c.ended_at_eos);
        let r = check(model, &c);
        assert!(r.passed, "honest empty answer: {r:?}");
        assert_eq!(r.tokens, 0, "paid for no output token");
        // Whether or not the receipt says why it ended: an empty answer implies the stop.
        let r = check(model, &empty_claim(&p, &s));
        assert!(r.passed, "honest empty answer, no stop claimed: {r:?}");
    }
}

#[test]
fn forged_empty_answer_fails() {
    let m = synthetic();
    for model in [&m.f32, &m.q8] {
        let p = prompt(model, 6, 7);
        let logits = first_logits(model, &p);
        let s = seed_where(model, &logits, false, 0);
        let r = check(model, &empty_claim(&p, &s));
        assert!(
            !r.passed,
            "an empty answer where the model would go on: {r:?}"
        );
        assert!(
            r.reasons.iter().any(|x| x.contains("ends the answer")),
            "{r:?}"
        );
        // Greedy too.
        let mut greedy = empty_claim(&p, &sampling(0, 0.0));
        let stops = model.stop_token_ids();
        if !stops.contains(&sample(&logits, &greedy.sampling, 0).expect("s").token) {
            greedy.ended_at_eos = true;
            assert!(!check(model, &greedy).passed, "greedy forged empty answer");
        }
    }
}

#[test]
fn honest_answer_ended_at_eos_passes_and_forged_stop_fails() {
    let m = synthetic();
    let model = &m.f32;
    let p = prompt(model, 6, 8);
    // An honest answer that ends at an end-of-sequence token after some output.
    let c = (0..400u64)
        .map(|seed| honest(model, &p, &sampling(seed, 1.0), 300, true))
        .find(|c| c.ended_at_eos && !c.output.is_empty())
        .expect("a seed whose answer stops early");
    let r = check(model, &c);
    assert!(
        r.passed,
        "honest answer ended at EOS after {} tokens: {r:?}",
        c.output.len()
    );

    // A short answer (honest tokens, honest fingerprints) that claims the model stopped
    // where it would have gone on.
    let mut forged = honest(model, &p, &sampling(9_999, 1.0), 10, false);
    let stops = model.stop_token_ids();
    assert!(forged.output.iter().all(|t| !stops.contains(t)));
    assert!(
        check(model, &forged).passed,
        "as a cut-off answer it is honest"
    );
    forged.ended_at_eos = true;
    let full = honest(model, &p, &sampling(9_999, 1.0), 11, false);
    if !stops.contains(&full.output[10]) {
        let r = check(model, &forged);
        assert!(!r.passed, "a stop the model would not have made: {r:?}");
    }

    // An answer that fills the context cannot claim to have stopped.
    let ctx = model.model.config().max_seq_len;
    let mut full = honest(model, &p, &sampling(3, 0.0), ctx - p.len(), false);
    full.ended_at_eos = true;
    let r = check(model, &full);
    assert!(
        !r.passed && r.reasons[0].contains("fills the context"),
        "{r:?}"
    );
}
