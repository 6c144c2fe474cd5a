//! The audit of one answer: one prefill over prompt, resumed and output tokens with the
//! output forced, then three checks: (a) the claimed fingerprints match the recomputed
//! hidden states within calibrated thresholds, (b) every output token is what the seeded
//! sampler picks from the recomputed logits, except where the draw sat within a stated margin
//! of a boundary, (c) the token count is the one claimed.

use agora_model::sampler::{interval_of, sample, SamplingParams};
use agora_model::{LoadedModel, Mode};
use candle_core::{IndexOp, Tensor};
use serde::Serialize;

use crate::fingerprint::{chunk_ends, compare, ChunkComparison, Fingerprint};

/// Where honest answers end and fraud begins; see `docs/verification.md` for the measured
/// distributions these come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Least share of claimed top-k indices found in the recomputed top-k, per chunk.
    pub min_overlap: f64,
    /// Largest value error at the claimed indices, relative to the chunk's largest value.
    pub max_rel_err: f64,
    /// Largest mean value error over a chunk.
    pub max_mean_rel_err: f64,
    /// A sampled token may differ from the replay when the draw is this close to the claimed
    /// token's interval of the replayed CDF (floating-point noise moves edges a little).
    pub sampler_margin: f64,
    /// Greedy decoding: a token may differ when its logit is this close to the best one.
    pub greedy_logit_gap: f32,
    /// Most tolerated sampler disagreements per 100 tokens (at least one is always allowed).
    pub max_near_misses_per_100: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_overlap: 0.9,
            // Both sides are compared in bf16: honest answers measured 0 error but for a rare
            // one-step flip (mean 1.1e-4); Q8_0 served for f32 from a mean of 4.6e-4 up
            // (docs/verification.md).
            max_rel_err: 0.0045,
            max_mean_rel_err: 2.5e-4,
            sampler_margin: 1e-4,
            greedy_logit_gap: 1e-3,
            max_near_misses_per_100: 2,
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    /// True when every check passed.
    pub passed: bool,
    /// Why it failed, one sentence a reason.
    pub reasons: Vec<String>,
    /// Output tokens checked.
    pub tokens: usize,
    /// Tokens the sampler replay chose differently.
    pub sampler_mismatches: usize,
    /// Of those, how many were near misses within the margin.
    pub near_misses: usize,
    /// The worst chunk: lowest overlap.
    pub min_overlap: f64,
    /// The worst chunk: largest relative value error.
    pub max_rel_err: f64,
    /// The worst chunk: largest mean relative error.
    pub max_mean_rel_err: f64,
}

/// What is audited: everything a receipt commits to.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    /// Prompt token ids (after the chat template).
    pub prompt: &'a [u32],
    /// Tokens resumed from an earlier provider.
    pub resumed: &'a [u32],
    /// This provider's output tokens.
    pub output: &'a [u32],
    /// The output token count the receipt claims.
    pub claimed_tokens: usize,
    /// The sampler's settings (seed included).
    pub sampling: SamplingParams,
    /// The fingerprint the receipt commits to.
    pub fingerprint: &'a Fingerprint,
}

/// Why an audit could not run at all (a malformed answer is a failed audit, not an error).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] agora_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

fn fail(reasons: Vec<String>, tokens: usize) -> AuditReport {
    AuditReport {
        passed: false,
        reasons,
        tokens,
        sampler_mismatches: 0,
        near_misses: 0,
        min_overlap: 0.0,
        max_rel_err: f64::INFINITY,
        max_mean_rel_err: f64::INFINITY,
    }
}

/// Audits `answer` against `model` with one prefill.
pub fn audit(
    model: &LoadedModel,
    answer: &Answer<'_>,
    t: &Thresholds,
) -> Result<AuditReport, AuditError> {
    let n = answer.output.len();
    let (p, r) = (answer.prompt.len(), answer.resumed.len());
    let cfg = model.model.config();
    // Shape checks first: nothing here may panic on a hostile answer.
    let mut shape = vec![];
    if n != answer.claimed_tokens {
        shape.push(format!(
            "the receipt claims {} output tokens; the material holds {n}",
            answer.claimed_tokens
        ));
    }
    if n == 0 || p == 0 {
        shape.push("an answer needs a prompt and at least one output token".into());
    }
    if p + r + n > cfg.max_seq_len {
        shape.push(format!(
            "{} tokens exceed the model's context of {}",
            p + r + n,
            cfg.max_seq_len
        ));
    }
    let vocab = cfg.vocab_size as u32;
    if answer
        .prompt
        .iter()
        .chain(answer.resumed)
        .chain(answer.output)
        .any(|&t| t >= vocab)
    {
        shape.push("a token id is outside the vocabulary".into());
    }
    let ends: Vec<usize> = chunk_ends(n).collect();
    if ends.len() != answer.fingerprint.chunks.len() {
        shape.push(format!(
            "{} fingerprint chunks for {n} tokens; expected {}",
            answer.fingerprint.chunks.len(),
            ends.len()
        ));
    }
    if !shape.is_empty() {
        return Ok(fail(shape, n));
    }

    // One prefill over everything, the output forced, computed as the provider did: the
    // prompt (and resumed tokens) as one prefill, then every output position with the
    // decode kernels (Mode::Audit), all at once.
    let device = model.model.device();
    let mut cache = model.model.new_cache();
    let head: Vec<u32> = answer
        .prompt
        .iter()
        .chain(answer.resumed)
        .copied()
        .collect();
    let input = Tensor::new(head.as_slice(), device)?.unsqueeze(0)?;
    let prefill = model
        .model
        .forward_hidden(&input, Some(&mut cache), Mode::Serve)?
        .i(0)?;
    // Output token j came from the hidden state at position p + r + j - 1.
    let mut produced = prefill.narrow(0, p + r - 1, 1)?;
    if n > 1 {
        let forced = Tensor::new(&answer.output[..n - 1], device)?.unsqueeze(0)?;
        let rest = model
            .model
            .forward_hidden(&forced, Some(&mut cache), Mode::Audit)?
            .i(0)?;
        produced = Tensor::cat(&[&produced, &rest], 0)?;
    }
    let logits: Vec<Vec<f32>> = model.model.logits_audit(&produced)?.to_vec2()?;
    let rows: Vec<Vec<f32>> = produced.to_vec2()?;

    let mut reasons = vec![];
    // (b) Sampler replay.
    let (mut mismatches, mut near) = (0, 0);
    for (j, (&token, l)) in answer.output.iter().zip(&logits).enumerate() {
        let s = sample(l, &answer.sampling, (r + j) as u64)?;
        if s.token == token {
            continue;
        }
        mismatches += 1;
        // How far the draw is from the claimed token's interval in the replayed CDF: noise
        // in the logits moves edges a little, never a token far from the draw.
        let (close, distance) = if answer.sampling.temperature == 0.0 {
            let best = l.get(s.token as usize).copied().unwrap_or(f32::NAN);
            let got = l.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
            let gap = f64::from(best - got);
            (best - got <= t.greedy_logit_gap, gap)
        } else {
            match interval_of(l, &answer.sampling, (r + j) as u64, token)? {
                Some((lo, hi, u)) => {
                    let d = if u < lo { lo - u } else { (u - hi).max(0.0) };
                    (d < t.sampler_margin, d)
                }
                None => (false, f64::INFINITY),
            }
        };
        if close {
            near += 1;
        } else if reasons.len() < 8 {
            reasons.push(format!(
                "token {} is {token}; the seeded sampler picks {} (the draw is {distance:.2e} from the claimed token's interval)",
                r + j,
                s.token,
            ));
        }
    }
    let allowed = (n * t.max_near_misses_per_100 / 100).max(1);
    if near > allowed {
        reasons.push(format!(
            "{near} near-miss sampler disagreements; at most {allowed} are plausible"
        ));
    }
    // (a) Fingerprints.
    let mut worst = ChunkComparison {
        overlap: 1.0,
        max_rel_err: 0.0,
        mean_rel_err: 0.0,
    };
    for (c, &end) in answer.fingerprint.chunks.iter().zip(&ends) {
        let cmp = compare(c, &rows[end]);
        worst.overlap = worst.overlap.min(cmp.overlap);
        worst.max_rel_err = worst.max_rel_err.max(cmp.max_rel_err);
        worst.mean_rel_err = worst.mean_rel_err.max(cmp.mean_rel_err);
    }
    if worst.overlap < t.min_overlap {
        reasons.push(format!(
            "fingerprint top-k overlap {:.3} is under {:.3}",
            worst.overlap, t.min_overlap
        ));
    }
    if worst.max_rel_err > t.max_rel_err || worst.mean_rel_err > t.max_mean_rel_err {
        reasons.push(format!(
            "fingerprint values differ by up to {:.2e} (mean {:.2e}); allowed {:.2e} ({:.2e})",
            worst.max_rel_err, worst.mean_rel_err, t.max_rel_err, t.max_mean_rel_err
        ));
    }
    Ok(AuditReport {
        passed: reasons.is_empty(),
        reasons,
        tokens: n,
        sampler_mismatches: mismatches,
        near_misses: near,
        min_overlap: worst.overlap,
        max_rel_err: worst.max_rel_err,
        max_mean_rel_err: worst.mean_rel_err,
    })
}
