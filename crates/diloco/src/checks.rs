//! Cheap honesty checks on a round's contributions. Each refusal carries a [`Refusal`] whose
//! message says why; the driver logs it and the contribution weighs nothing.
//!
//! - Protocol: right round and base state, a commitment made before the reveal that the
//!   payload matches, a payload that decodes to the model's tensors.
//! - Loss: the island's own check batches must not get worse under its delta
//!   (`loss_after <= loss_before + slack`); a verifier holding the global state recomputes both
//!   numbers ([`verify_losses`]) and refuses claims that differ.
//! - Norm: a delta whose L2 norm is more than `max_norm_ratio` times the median of the other
//!   contributions' norms, or less than that median divided by it (a lazy near-zero delta).
//! - Direction: among the contributions that pass the norm check, the delta with the lowest
//!   cosine with the mean of the others is refused if that cosine is below `min_cosine`, and
//!   the check repeats without it. It stops when fewer than three remain: with one other, a
//!   disagreement cannot tell which side is wrong.

use agora_train::data::Corpus;

use crate::codec::{self, Delta};
use crate::error::Result;
use crate::island::{Contribution, Island};
use crate::outer::GlobalState;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckConfig {
    pub max_norm_ratio: f64,
    pub min_cosine: f64,
    /// Nats the loss on the island's own batches may rise by under its delta.
    pub loss_slack: f64,
    /// Relative difference allowed between claimed and recomputed losses.
    pub loss_tolerance: f64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_norm_ratio: 5.0,
            min_cosine: 0.0,
            loss_slack: 0.0,
            loss_tolerance: 1e-3,
        }
    }
}

/// Why a contribution was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("contribution for round {got}, the round is {expected}")]
    WrongRound { expected: u64, got: u64 },
    #[error("trained from state {got}, the round's base is {expected}")]
    WrongBase { expected: String, got: String },
    #[error("revealed without a commitment")]
    Uncommitted,
    #[error("payload does not match its commitment")]
    CommitmentMismatch,
    #[error("revealed after the round closed")]
    Late,
    #[error("undecodable payload: {0}")]
    Malformed(String),
    #[error(
        "norm {norm:.3e} is {ratio:.2}x the median {median:.3e} of the others (limit {limit}x)"
    )]
    NormOutlier {
        norm: f64,
        median: f64,
        ratio: f64,
        limit: f64,
    },
    #[error("cosine {cosine:.3} with the mean of the others is below {min}")]
    Direction { cosine: f64, min: f64 },
    #[error("loss on its own batches rose from {before:.4} to {after:.4} under its delta")]
    LossNotImproved { before: f64, after: f64 },
    #[error(
        "claimed losses {claimed_before:.4} -> {claimed_after:.4}, recomputed {before:.4} -> {after:.4}"
    )]
    LossMismatch {
        claimed_before: f64,
        claimed_after: f64,
        before: f64,
        after: f64,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The claimed-loss check alone (no recomputation).
pub fn check_claimed_loss(c: &Contribution, cfg: &CheckConfig) -> Option<Refusal> {
    let (before, after) = (c.loss_before, c.loss_after);
    if !(before.is_finite() && after.is_finite()) || after > before + cfg.loss_slack {
        return Some(Refusal::LossNotImproved { before, after });
    }
    None
}

/// Norm and direction checks over a round's decoded deltas `(island, delta)`; returns the
/// refusal of each island that fails, in island order.
pub fn screen(deltas: &[(u64, &Delta)], cfg: &CheckConfig) -> Vec<(u64, Refusal)> {
    let norms: Vec<f64> = deltas.iter().map(|(_, d)| codec::norm(d)).collect();
    let mut refused = Vec::new();
    let mut passed = Vec::new();
    for (i, &(island, _)) in deltas.iter().enumerate() {
        let others: Vec<f64> = norms
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, &n)| n)
            .collect();
        let med = median(others);
        let norm = norms[i];
        if deltas.len() > 1 && med > 0.0 {
            let ratio = norm / med;
            if !ratio.is_finite() || ratio > cfg.max_norm_ratio || ratio < 1.0 / cfg.max_norm_ratio
            {
                refused.push((
                    island,
                    Refusal::NormOutlier {
                        norm,
                        median: med,
                        ratio,
                        limit: cfg.max_norm_ratio,
                    },
                ));
                continue;
            }
        }
        passed.push(i);
    }
    // Greedy: refuse the most dissenting delta, recompute without it, until all agree or
    // fewer than three remain. One pass would let a flipped delta drag the honest ones'
    // "mean of the others" against them when there are few islands.
    while passed.len() >= 3 {
        let cosines: Vec<f64> = passed
            .iter()
            .map(|&i| {
                let others: Vec<&Delta> = passed
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| deltas[j].1)
                    .collect();
                cosine_to_mean(deltas[i].1, &others)
            })
            .collect();
        let Some((worst, &cosine)) = cosines.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1))
        else {
            break;
        };
        if cosine >= cfg.min_cosine {
            break;
        }
        refused.push((
            deltas[passed[worst]].0,
            Refusal::Direction {
                cosine,
                min: cfg.min_cosine,
            },
        ));
        passed.remove(worst);
    }
    refused.sort_by_key(|(island, _)| *island);
    refused
}

/// Cosine between `d` and the unweighted mean of `others` (0 when either is zero).
fn cosine_to_mean(d: &Delta, others: &[&Delta]) -> f64 {
    let mut mean: Delta = d
        .iter()
        .map(|(k, x)| (k.clone(), vec![0.0; x.len()]))
        .collect();
    for o in others {
        for (k, acc) in mean.iter_mut() {
            if let Some(x) = o.get(k).filter(|x| x.len() == acc.len()) {
                for (a, x) in acc.iter_mut().zip(x) {
                    *a += x / others.len() as f64;
                }
            }
        }
    }
    let denom = codec::norm(d) * codec::norm(&mean);
    if denom > 0.0 {
        codec::dot(d, &mean) / denom
    } else {
        0.0
    }
}

/// Recompute a contribution's losses on `verifier` (any island with the same model and
/// settings) and refuse a claim that differs by more than the tolerance, or a delta that
/// makes the island's own batches worse.
pub fn verify_losses(
    verifier: &mut Island,
    corpus: &Corpus,
    global: &GlobalState,
    c: &Contribution,
    delta: &Delta,
    cfg: &CheckConfig,
) -> Result<Option<Refusal>> {
    let (before, after) = verifier.check_losses(corpus, global, c.island, delta)?;
    let close =
        |a: f64, b: f64| (a - b).abs() <= cfg.loss_tolerance * a.abs().max(b.abs()).max(1.0);
    if !close(before, c.loss_before) || !close(after, c.loss_after) {
        return Ok(Some(Refusal::LossMismatch {
            claimed_before: c.loss_before,
            claimed_after: c.loss_after,
            before,
            after,
        }));
    }
    if after > before + cfg.loss_slack {
        return Ok(Some(Refusal::LossNotImproved { before, after }));
    }
    Ok(None)
}
