//! The audit of one answer: one prefill over prompt, resumed and output tokens with the
//! output forced, then three checks: (a) the claimed fingerprints match the recomputed
//! hidden states within calibrated thresholds, (b) every output token is what the seeded
//! sampler picks from the recomputed logits, except where the draw sat within a stated margin
//! of a boundary (and, for an answer that claims to have ended at an end-of-sequence token,
//! empty answers included, that the sampler picks one there), (c) the token count is the one
//! claimed. Under a constraint (a JSON Schema in the signed settings) the replay applies the
//! same token masks the provider had to: a token the mask refuses fails the audit outright,
//! and the sampler is replayed over the masked logits, so an answer sampled without the
//! mask differs wherever the mask moved the draw.

use agora_model::sampler::{interval_of, sample, SamplingParams};
use agora_model::{LoadedModel, Mode, ModelId};
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
    /// The model the receipt names; an auditor holding another model has no verdict.
    pub model: ModelId,
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
    /// The answer claims to have ended because the sampler chose an end-of-sequence token
    /// after the output (which holds no such token). Implied by an empty output: nothing
    /// else ends an honest answer before its first token.
    pub ended_at_eos: bool,
}

/// No verdict: the auditor could not judge the answer (another model, its own model failing,
/// material it cannot compute on). Never evidence against the provider: a caller declines,
/// retries or hands the audit on, and never counts it as a failed audit. Everything the
/// provider signed that no honest provider produces is a failed [`AuditReport`] instead.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The receipt names a model this auditor does not hold.
    #[error("the receipt names model {receipt}; this auditor holds {auditor}")]
    WrongModel {
        /// The model the receipt names.
        receipt: ModelId,
        /// The model the audit was asked to run.
        auditor: ModelId,
    },
    /// The auditor's model failed.
    #[error(transparent)]
    Model(#[from] agora_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The auditor's model computed NaN or infinite values: its weights or kernels are
    /// broken, so nothing can be concluded from them.
    #[error("the auditor's model computed non-finite values at output position {position}")]
    NonFinite {
        /// The output position (resumed tokens included).
        position: usize,
    },
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

/// The faults visible without compute: counts, lengths, ids, settings and the fingerprint's
/// format, each something the provider signed and no honest provider produces.
fn shape_faults(model: &LoadedModel, answer: &Answer<'_>) -> Vec<String> {
    let n = answer.output.len();
    let (p, r) = (answer.prompt.len(), answer.resumed.len());
    let cfg = model.model.config();
    let mut shape = vec![];
    if n != answer.claimed_tokens {
        shape.push(format!(
            "the receipt claims {} output tokens; the material holds {n}",
            answer.claimed_tokens
        ));
    }
    if p == 0 {
        shape.push("an answer needs a prompt".into());
    }
    let total = p + r + n;
    if total > cfg.max_seq_len {
        shape.push(format!(
            "{total} tokens exceed the model's context of {}",
            cfg.max_seq_len
        ));
    } else if (answer.ended_at_eos || n == 0) && total >= cfg.max_seq_len {
        // Generation stops at the context without sampling again.
        shape.push(format!(
            "an answer of {total} tokens fills the context of {} and cannot have ended at an end-of-sequence token",
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
    if let Err(e) = answer.sampling.validate() {
        shape.push(format!(
            "the sampler's settings are refused by every provider: {e}"
        ));
    }
    if let Some(e) = answer.fingerprint.format_error(n, cfg.hidden_size) {
        shape.push(e);
    }
    shape
}

/// How the replay judges a claimed choice at one step.
enum Replay {
    /// The replay picks what was claimed.
    Same,
    /// It picks another token, but the draw sat within the margin of a claimed one.
    Near,
    /// It picks `picked`; the draw is `distance` from the nearest claimed token.
    Differs { picked: u32, distance: f64 },
}

/// Replays step `index` from `logits` against `claimed`: the token the answer holds, or the
/// model's end-of-sequence tokens when it claims to have stopped there.
fn replay(
    logits: &[f32],
    sampling: &SamplingParams,
    index: u64,
    claimed: &[u32],
    t: &Thresholds,
) -> Result<Replay, AuditError> {
    let s = sample(logits, sampling, index)?;
    if claimed.contains(&s.token) {
        return Ok(Replay::Same);
    }
    // How far the draw is from a claimed token's interval in the replayed CDF: noise in the
    // logits moves edges a little, never a token far from the draw.
    let mut nearest = f64::INFINITY;
    for &token in claimed {
        let (close, distance) = if sampling.temperature == 0.0 {
            let top = logits.get(s.token as usize).copied().unwrap_or(f32::NAN);
            let got = logits
                .get(token as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            (top - got <= t.greedy_logit_gap, f64::from(top - got))
        } else {
            match interval_of(logits, sampling, index, token)? {
                Some((lo, hi, u)) => {
                    let d = if u < lo { lo - u } else { (u - hi).max(0.0) };
                    (d < t.sampler_margin, d)
                }
                None => (false, f64::INFINITY),
            }
        };
        if close {
            return Ok(Replay::Near);
        }
        if distance < nearest {
            nearest = distance;
        }
    }
    Ok(Replay::Differs {
        picked: s.token,
        distance: nearest,
    })
}

/// Audits `answer` against `model` with one prefill. `Ok` is a verdict (a failed report is
/// evidence against the provider); `Err` is no verdict ([`AuditError`]).
pub fn audit(
    model: &LoadedModel,
    answer: &Answer<'_>,
    t: &Thresholds,
) -> Result<AuditReport, AuditError> {
    if answer.model != model.id {
        return Err(AuditError::WrongModel {
            receipt: answer.model,
            auditor: model.id,
        });
    }
    let n = answer.output.len();
    let (p, r) = (answer.prompt.len(), answer.resumed.len());
    // Shape checks first: nothing here may panic on a hostile answer.
    let shape = shape_faults(model, answer);
    if !shape.is_empty() {
        return Ok(fail(shape, n));
    }
    let eos = answer.ended_at_eos || n == 0;

    // One prefill over everything, the output forced, computed as the provider did: the
    // prompt (and resumed tokens) as one prefill, then every output position with the
    // decode kernels (Mode::Audit), all at once. Row j of `produced` is the state output
    // token j was sampled from; with `eos`, row n is the one the stop was sampled from.
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
    let mut produced = prefill.narrow(0, p + r - 1, 1)?;
    let forced_len = if eos { n } else { n - 1 };
    if forced_len > 0 {
        let forced = Tensor::new(&answer.output[..forced_len], device)?.unsqueeze(0)?;
        let rest = model
            .model
            .forward_hidden(&forced, Some(&mut cache), Mode::Audit)?
            .i(0)?;
        produced = Tensor::cat(&[&produced, &rest], 0)?;
    }
    let logits: Vec<Vec<f32>> = model.model.logits_audit(&produced)?.to_vec2()?;
    let rows: Vec<Vec<f32>> = produced.to_vec2()?;
    if let Some(j) = (0..rows.len()).find(|&j| {
        let finite = |v: &Vec<f32>| v.iter().all(|x| x.is_finite());
        !finite(&rows[j]) || logits.get(j).is_none_or(|l| !finite(l))
    }) {
        return Err(AuditError::NonFinite { position: r + j });
    }

    let mut reasons = vec![];
    // The constraint's state after the resumed tokens (an honest provider refuses resumed
    // tokens that break it, so signing them is a fault).
    let mut constraint = match &answer.sampling.constraint {
        Some(c) => Some(agora_model::constrain::Constrained::new(model, c)?),
        None => None,
    };
    if let Some(c) = &mut constraint {
        if answer.resumed.iter().any(|&tok| c.advance(tok).is_err()) {
            return Ok(fail(
                vec!["the resumed tokens break the signed constraint".into()],
                n,
            ));
        }
    }
    // (b) Sampler replay, and the stop when one is claimed.
    let (mut mismatches, mut near) = (0, 0);
    let stops = model.stop_token_ids();
    for (j, l) in logits.iter().enumerate() {
        let index = (r + j) as u64;
        let (claimed, what) = match answer.output.get(j) {
            Some(token) => (std::slice::from_ref(token), format!("is {token}")),
            None => (stops.as_slice(), "ends the answer".to_string()),
        };
        let mut masked;
        let (l, claimed) = match &constraint {
            None => (l, claimed.to_vec()),
            Some(c) => {
                let mask = c.mask();
                let allowed: Vec<u32> = claimed
                    .iter()
                    .copied()
                    .filter(|&x| mask.allows(x))
                    .collect();
                if allowed.is_empty() {
                    mismatches += 1;
                    reasons.push(format!(
                        "token {index} {what}, which the signed constraint does not allow there"
                    ));
                    break;
                }
                masked = l.clone();
                mask.apply(&mut masked);
                (&masked, allowed)
            }
        };
        if let (Some(c), Some(&token)) = (&mut constraint, answer.output.get(j)) {
            // Allowed by the mask just checked, so the state moves.
            c.advance(token)?;
        }
        match replay(l, &answer.sampling, index, &claimed, t)? {
            Replay::Same => {}
            Replay::Near => {
                mismatches += 1;
                near += 1;
            }
            Replay::Differs { picked, distance } => {
                mismatches += 1;
                if reasons.len() < 8 {
                    reasons.push(format!(
                        "token {index} {what}; the seeded sampler picks {picked} (the draw is {distance:.2e} from the claimed interval)",
                    ));
                }
            }
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
    for (c, end) in answer.fingerprint.chunks.iter().zip(chunk_ends(n)) {
        let Some(row) = rows.get(end) else {
            return Err(AuditError::Model(agora_model::ModelError::InvalidRequest(
                "the audit computed fewer hidden states than output tokens".into(),
            )));
        };
        let cmp = compare(c, row);
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
