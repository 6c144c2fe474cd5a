//! A replayable sampler: token i is a pure function of (logits at step i, parameters, seed, i).
//!
//! The uniform draw for step i comes from a keyed PRF (BLAKE3 keyed by the seed), and the
//! token is found by inverse CDF over the candidates in a fixed order (probability
//! descending, then id ascending). A verifier with the same logits replays the same token;
//! with slightly different logits it can tell how close the draw was to a boundary.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches p; 1 keeps all.
    pub top_p: f64,
    pub seed: u64,
    /// A JSON Schema's text: every step samples only tokens that keep the answer a prefix
    /// of a JSON text the schema allows (see `crate::constrain`).
    #[serde(default)]
    pub constraint: Option<String>,
    /// Report the chosen token's log-probability and this many most likely alternatives.
    #[serde(default)]
    pub logprobs: Option<u8>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            constraint: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && (0.0..=100.0).contains(&self.temperature)) {
            return Err(ModelError::InvalidRequest(format!(
                "temperature {} is out of range 0..=100",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::InvalidRequest(format!(
                "top_p {} is out of range (0, 1]",
                self.top_p
            )));
        }
        if let Some(top) = self.logprobs {
            if top > MAX_TOP_LOGPROBS {
                return Err(ModelError::InvalidRequest(format!(
                    "top_logprobs {top} is over {MAX_TOP_LOGPROBS}"
                )));
            }
        }
        if let Some(c) = &self.constraint {
            crate::constrain::compile(c)?;
        }
        Ok(())
    }
}

/// Most alternatives a step reports with `logprobs`.
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// A sampled token's log-probability and the most likely alternatives, from the logits the
/// sampler drew from (after the constraint's mask, before temperature, as OpenAI reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// (token, log-probability), most likely first, lowest id on ties.
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of `token` and the `top` most likely tokens under `logits`.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v - max).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |v: f32| -> f32 {
        if v.is_finite() {
            (f64::from(v) - log_z) as f32
        } else {
            f32::NEG_INFINITY
        }
    };
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            if best.len() == top && best.last().is_some_and(|b| b.1 >= v) {
                continue;
            }
            let at = best.partition_point(|b| b.1 >= v);
            best.insert(at, (i as u32, v));
            best.truncate(top);
        }
    }
    TokenLogprobs {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&v| lp(v)),
        top: best.into_iter().map(|(t, v)| (t, lp(v))).collect(),
    }
}

/// One request's sampler: its settings and, under a constraint, its place in the grammar.
/// A decoding loop keeps one per request (a batch keeps one per row).
#[derive(Debug, Clone)]
pub struct SamplerState {
    pub params: SamplingParams,
    constraint: Option<crate::constrain::Constrained>,
}

impl SamplerState {
    /// A fresh state for an answer from `model`.
    pub fn new(model: &crate::LoadedModel, params: &SamplingParams) -> Result<SamplerState> {
        params.validate()?;
        let constraint = match &params.constraint {
            Some(c) => Some(crate::constrain::Constrained::new(model, c)?),
            None => None,
        };
        Ok(SamplerState {
            params: params.clone(),
            constraint,
        })
    }

    /// The tokens allowed at this step (`None`: all).
    pub fn mask(&self) -> Option<agora_grammar::Mask> {
        self.constraint.as_ref().map(|c| c.mask())
    }

    /// Masks `logits` in place (the tokens the constraint refuses get minus infinity), then
    /// samples step `index` from them. Does not advance: call [`SamplerState::advance`].
    pub fn sample(&self, logits: &mut [f32], index: u64) -> Result<Sample> {
        if let Some(mask) = self.mask() {
            if mask.count() == 0 {
                return Err(ModelError::InvalidRequest(
                    "the constraint allows no token here".into(),
                ));
            }
            mask.apply(logits);
        }
        sample(logits, &self.params, index)
    }

    /// Moves past `token` (an output token, resumed or sampled).
    pub fn advance(&mut self, token: u32) -> Result<()> {
        match &mut self.constraint {
            Some(c) => c.advance(token),
            None => Ok(()),
        }
    }
}

/// What a sampling step decided, with what a verifier needs to judge a near miss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub token: u32,
    /// The uniform draw in [0, 1).
    pub draw: f64,
    /// The chosen token's interval [lo, hi) of the (renormalized) CDF.
    pub cdf_lo: f64,
    pub cdf_hi: f64,
}

impl Sample {
    /// Distance of the draw from the nearest edge of the chosen interval: how much the
    /// probabilities could move before another token would have been chosen.
    pub fn margin(&self) -> f64 {
        (self.draw - self.cdf_lo).min(self.cdf_hi - self.draw)
    }
}

/// The uniform draw of step `index` under `seed`, in [0, 1) with 53 bits.
pub fn draw(seed: u64, index: u64) -> f64 {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(b"agora-sampler-v1");
    key[16..24].copy_from_slice(&seed.to_le_bytes());
    let hash = blake3::keyed_hash(&key, &index.to_le_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64
}

/// Greedy choice: the highest logit, the lowest id on ties; NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Weights below this never change a sum that already holds 1.0 (half the spacing of f64
/// values in [1, 2) is 2^-53; adding less than half a spacing rounds back to the sum).
const NEGLIGIBLE: f64 = 1.0 / (1u64 << 53) as f64;
/// An exponent below which the weight is surely under [`NEGLIGIBLE`] (e^-40 < 2^-57), so it
/// need not be computed to know the candidate is in the tail.
const SURELY_NEGLIGIBLE: f64 = -40.0;

/// The candidates a sampled step draws from, after temperature, top-k and top-p: in
/// canonical order (weight descending, id ascending) they are `head`, sorted, then `tail`,
/// unsorted.
///
/// Why two parts: the first candidate in canonical order has weight exactly 1.0 (the
/// largest logit gives `exp(0)`), so every running sum in that order is at least 1.0, and a
/// weight under [`NEGLIGIBLE`] leaves it unchanged, bit for bit. Such weights come last in
/// canonical order (they are the smallest), so the running sums, the total and every CDF
/// edge are those of `head` alone; only which candidate comes last (the one a draw rounded
/// past every edge lands on) and which tokens are candidates at all depend on the tail.
/// Sorting only `head` gives exactly what sorting every candidate gives (tested against
/// [`candidates_sorted`]), for a fraction of the work on a large vocabulary.
struct Candidates {
    head: Vec<(u32, f64)>,
    /// (id, logit): tail weights are computed only when asked for (rarely).
    tail: Vec<(u32, f32)>,
    /// The sum of every candidate's weight in canonical order (that of `head`).
    total: f64,
    max: f64,
    inv_t: f64,
}

fn by_weight(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Candidates {
    fn new(logits: &[f32], params: &SamplingParams) -> Result<Self> {
        let inv_t = 1.0 / params.temperature;
        let max = max_logit(logits)?;
        if !inv_t.is_finite() {
            // exp(0 * inf) is NaN, not 1.0: the argument above does not hold, sort everything.
            let head = candidates_sorted(logits, params)?;
            let total = head.iter().map(|c| c.1).sum();
            return Ok(Self {
                head,
                tail: vec![],
                total,
                max,
                inv_t,
            });
        }
        // `head` in id order, with each one's logit.
        let mut head = Vec::new();
        let mut head_logits = Vec::new();
        let mut tail = Vec::new();
        for (i, &v) in logits.iter().enumerate() {
            if v.is_finite() {
                let z = (v as f64 - max) * inv_t;
                if z < SURELY_NEGLIGIBLE {
                    tail.push((i as u32, v));
                    continue;
                }
                let w = z.exp();
                if w < NEGLIGIBLE {
                    tail.push((i as u32, v));
                } else {
                    head.push((i as u32, w));
                    head_logits.push(v);
                }
            }
        }
        let mut head = sort_canonical(&head, &head_logits);
        let k = params.top_k;
        if k > 0 && k < head.len() + tail.len() {
            if k <= head.len() {
                tail.clear();
                head.truncate(k);
            } else {
                let keep = k - head.len();
                let mut weighted: Vec<(u32, f64)> = tail
                    .iter()
                    .map(|&(i, v)| (i, weight(v, max, inv_t)))
                    .collect();
                weighted.select_nth_unstable_by(keep - 1, by_weight);
                tail = weighted[..keep]
                    .iter()
                    .map(|&(i, _)| (i, logits[i as usize]))
                    .collect();
            }
        }
        if params.top_p < 1.0 {
            // The mass reaches top_p * total (<= total) within `head` at the latest, so the
            // tail is always cut.
            tail.clear();
            let total: f64 = head.iter().map(|c| c.1).sum();
            let mut mass = 0.0;
            let mut keep = head.len();
            for (i, c) in head.iter().enumerate() {
                mass += c.1;
                if mass >= params.top_p * total {
                    keep = i + 1;
                    break;
                }
            }
            head.truncate(keep);
        }
        let total = head.iter().map(|c| c.1).sum();
        Ok(Self {
            head,
            tail,
            total,
            max,
            inv_t,
        })
    }

    /// The tail with its weights, unsorted.
    fn tail_weighted(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.tail
            .iter()
            .map(|&(i, v)| (i, weight(v, self.max, self.inv_t)))
    }

    /// The last candidate in canonical order.
    fn last(&self) -> Option<(u32, f64)> {
        match self.tail_weighted().min_by(|a, b| by_weight(b, a)) {
            Some(t) => Some(t),
            None => self.head.last().copied(),
        }
    }
}

/// A candidate's unnormalized weight: the one expression every path computes it by.
#[inline]
fn weight(logit: f32, max: f64, inv_t: f64) -> f64 {
    ((logit as f64 - max) * inv_t).exp()
}

/// `cands` (in id order, finite `logits` beside them) in canonical order: weight descending,
/// id ascending. The weight is a non-decreasing function of the logit, so a stable radix
/// sort by logit, descending, of candidates in id order is canonical except where two
/// different logits round to the same weight; such runs are then put in id order (and
/// should the weights ever come out of order, everything is sorted by weight). Every
/// candidate has a distinct id, so the order is total and this is exactly what a comparison
/// sort by [`by_weight`] gives, in linear time.
fn sort_canonical(cands: &[(u32, f64)], logits: &[f32]) -> Vec<(u32, f64)> {
    // Descending logit as an ascending u32 (finite floats: flip the sign bit of positives,
    // every bit of negatives, then invert).
    let key = |v: f32| {
        let b = v.to_bits();
        !(if b >> 31 == 1 { !b } else { b | 1 << 31 })
    };
    let mut at: Vec<(u32, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (key(v), i as u32))
        .collect();
    let mut spare = vec![(0u32, 0u32); at.len()];
    for shift in [0, 8, 16, 24] {
        let mut count = [0usize; 257];
        for &(k, _) in &at {
            count[((k >> shift) & 0xFF) as usize + 1] += 1;
        }
        if count.contains(&at.len()) {
            continue; // every key has this digit: the pass would change nothing
        }
        for d in 0..256 {
            count[d + 1] += count[d];
        }
        for &e in &at {
            let d = ((e.0 >> shift) & 0xFF) as usize;
            spare[count[d]] = e;
            count[d] += 1;
        }
        std::mem::swap(&mut at, &mut spare);
    }
    let mut out: Vec<(u32, f64)> = at.iter().map(|&(_, i)| cands[i as usize]).collect();
    // `exp` is not promised to be monotonic: should two weights come out of order, sort by
    // weight after all (the result is canonical either way).
    if out.windows(2).any(|p| p[0].1 < p[1].1) {
        out.sort_unstable_by(by_weight);
        return out;
    }
    let mut start = 0;
    while start < out.len() {
        let w = out[start].1.to_bits();
        let end = start
            + out[start..]
                .iter()
                .take_while(|c| c.1.to_bits() == w)
                .count();
        let run = &mut out[start..end];
        if !run.is_sorted_by_key(|c| c.0) {
            run.sort_unstable_by_key(|c| c.0);
        }
        start = end;
    }
    out
}

/// The largest logit that is not NaN, as f64; an error when it is not finite.
fn max_logit(logits: &[f32]) -> Result<f64> {
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return Err(ModelError::InvalidRequest("logits are not finite".into()));
    }
    Ok(max)
}

/// Every candidate in canonical order (weight descending, id ascending), with unnormalized
/// weights, after temperature, top-k and top-p: the definition [`Candidates`] reproduces.
fn candidates_sorted(logits: &[f32], params: &SamplingParams) -> Result<Vec<(u32, f64)>> {
    let inv_t = 1.0 / params.temperature;
    let max = max_logit(logits)?;
    let mut cands: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i as u32, ((v as f64 - max) * inv_t).exp()))
        .collect();
    if params.top_k > 0 && params.top_k < cands.len() {
        cands.select_nth_unstable_by(params.top_k - 1, by_weight);
        cands.truncate(params.top_k);
    }
    cands.sort_unstable_by(by_weight);
    if params.top_p < 1.0 {
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let mut mass = 0.0;
        let mut keep = cands.len();
        for (i, c) in cands.iter().enumerate() {
            mass += c.1;
            if mass >= params.top_p * total {
                keep = i + 1;
                break;
            }
        }
        cands.truncate(keep);
    }
    Ok(cands)
}

/// The CDF interval [lo, hi) that `token` holds when step `index` samples from `logits`,
/// and the draw: what a verifier needs to see how far a claimed token is from the one the
/// replay picks. `None` when the token is not a candidate (or sampling is greedy).
pub fn interval_of(
    logits: &[f32],
    params: &SamplingParams,
    index: u64,
    token: u32,
) -> Result<Option<(f64, f64, f64)>> {
    if params.temperature == 0.0 || logits.is_empty() {
        return Ok(None);
    }
    let cands = Candidates::new(logits, params)?;
    let total = cands.total;
    let mut cum = 0.0;
    // The tail adds nothing to `cum` (see `Candidates`).
    for (t, w) in cands.head.iter().copied().chain(cands.tail_weighted()) {
        if t == token {
            return Ok(Some((
                cum / total,
                (cum + w) / total,
                draw(params.seed, index),
            )));
        }
        cum += w;
    }
    Ok(None)
}

/// Sample step `index` from `logits`.
pub fn sample(logits: &[f32], params: &SamplingParams, index: u64) -> Result<Sample> {
    if logits.is_empty() {
        return Err(ModelError::InvalidRequest(
            "no logits to sample from".into(),
        ));
    }
    if params.temperature == 0.0 {
        return Ok(Sample {
            token: argmax(logits),
            draw: 0.0,
            cdf_lo: 0.0,
            cdf_hi: 1.0,
        });
    }
    let cands = Candidates::new(logits, params)?;
    let total = cands.total;
    let u = draw(params.seed, index);
    let target = u * total;
    let mut cum = 0.0;
    // The tail adds nothing to `cum`, so no edge of it lies below `total`.
    for &(token, w) in &cands.head {
        let next = cum + w;
        if target < next {
            return Ok(Sample {
                token,
                draw: u,
                cdf_lo: cum / total,
                cdf_hi: next / total,
            });
        }
        cum = next;
    }
    // Rounding left the draw past the last edge: it belongs to the last candidate.
    let Some((token, w)) = cands.last() else {
        return Err(ModelError::InvalidRequest(
            "no candidates to sample from".into(),
        ));
    };
    Ok(Sample {
        token,
        draw: u,
        cdf_lo: (total - w) / total,
        cdf_hi: 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(t: f64, k: usize, p: f64, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            seed,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let s = sample(&[0.1, 2.0, 2.0, -1.0], &params(0.0, 0, 1.0, 7), 3).expect("sample");
        assert_eq!(s.token, 1);
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens with probabilities 0.25 and 0.75.
        let logits = [0.0f32, (3.0f64).ln() as f32];
        let p = params(1.0, 0, 1.0, 42);
        let n = 20_000;
        let ones = (0..n)
            .filter(|&i| sample(&logits, &p, i).expect("s").token == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }

    #[test]
    fn top_k_and_top_p_restrict_candidates() {
        let logits = [5.0f32, 4.0, 3.0, 2.0, 1.0];
        for i in 0..500 {
            let s = sample(&logits, &params(2.0, 2, 1.0, 1), i).expect("s");
            assert!(s.token <= 1);
            let s = sample(&logits, &params(1.0, 0, 0.5, 1), i).expect("s");
            assert_eq!(s.token, 0, "p(0) = 0.64 alone reaches top_p 0.5");
        }
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert!(sample(&[], &params(1.0, 0, 1.0, 0), 0).is_err());
        assert!(sample(&[f32::NAN, f32::NEG_INFINITY], &params(1.0, 0, 1.0, 0), 0).is_err());
        assert!(params(f64::NAN, 0, 1.0, 0).validate().is_err());
        assert!(params(1.0, 0, 0.0, 0).validate().is_err());
        let constrained = |c: &str| SamplingParams {
            constraint: Some(c.into()),
            ..params(1.0, 0, 1.0, 0)
        };
        assert!(constrained(r#"{"type":"object"}"#).validate().is_ok());
        assert!(constrained(r#"{"type":"string","pattern":"a"}"#)
            .validate()
            .is_err());
        assert!(constrained("{").validate().is_err());
    }

    #[test]
    fn logprobs_are_log_softmax_with_top_alternatives() {
        let logits = [0.0f32, (3.0f64).ln() as f32, f32::NEG_INFINITY, 0.0];
        let lp = logprobs(&logits, 0, 2);
        assert!((lp.logprob - (0.2f32).ln()).abs() < 1e-6);
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 1);
        assert!((lp.top[0].1 - (0.6f32).ln()).abs() < 1e-6);
        assert_eq!(lp.top[1].0, 0, "lowest id on ties");
        assert_eq!(logprobs(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(logprobs(&logits, 0, 0).top.is_empty());
    }

    /// [`sample`] and [`interval_of`] as they were written over every candidate sorted: the
    /// definition the head/tail split must reproduce bit for bit.
    fn sample_reference(logits: &[f32], params: &SamplingParams, index: u64) -> Sample {
        let cands = candidates_sorted(logits, params).expect("cands");
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let u = draw(params.seed, index);
        let target = u * total;
        let mut cum = 0.0;
        for &(token, w) in &cands {
            let next = cum + w;
            if target < next {
                return Sample {
                    token,
                    draw: u,
                    cdf_lo: cum / total,
                    cdf_hi: next / total,
                };
            }
            cum = next;
        }
        let (token, w) = cands[cands.len() - 1];
        Sample {
            token,
            draw: u,
            cdf_lo: (total - w) / total,
            cdf_hi: 1.0,
        }
    }

    fn interval_reference(
        logits: &[f32],
        params: &SamplingParams,
        index: u64,
        token: u32,
    ) -> Option<(f64, f64, f64)> {
        let cands = candidates_sorted(logits, params).expect("cands");
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let mut cum = 0.0;
        for &(t, w) in &cands {
            if t == token {
                return Some((cum / total, (cum + w) / total, draw(params.seed, index)));
            }
            cum += w;
        }
        None
    }

    /// The split against the full sort: the same candidates in the same order, the same
    /// total, the same last candidate, the same samples and intervals, bit for bit.
    fn assert_same_as_full_sort(logits: &[f32], params: &SamplingParams, index: u64) {
        let want = candidates_sorted(logits, params).expect("cands");
        let got = Candidates::new(logits, params).expect("cands");
        assert_eq!(got.head[..], want[..got.head.len()], "{params:?}");
        let mut tail: Vec<(u32, f64)> = got.tail_weighted().collect();
        tail.sort_unstable_by(by_weight);
        assert_eq!(tail[..], want[got.head.len()..], "{params:?}");
        let total: f64 = want.iter().map(|c| c.1).sum();
        assert_eq!(got.total.to_bits(), total.to_bits());
        assert_eq!(got.last(), want.last().copied());
        let s = sample(logits, params, index).expect("sample");
        let r = sample_reference(logits, params, index);
        assert_eq!(
            (
                s.token,
                s.draw.to_bits(),
                s.cdf_lo.to_bits(),
                s.cdf_hi.to_bits()
            ),
            (
                r.token,
                r.draw.to_bits(),
                r.cdf_lo.to_bits(),
                r.cdf_hi.to_bits()
            )
        );
        for token in 0..logits.len() as u32 {
            let a = interval_of(logits, params, index, token).expect("interval");
            let b = interval_reference(logits, params, index, token);
            let bits = |x: Option<(f64, f64, f64)>| {
                x.map(|(a, b, c)| (a.to_bits(), b.to_bits(), c.to_bits()))
            };
            assert_eq!(bits(a), bits(b), "token {token}");
        }
    }

    /// Logits built to stress the split: many exact ties, weights on both sides of (and at)
    /// the 2^-53 cut, minus infinity and NaN, and top-k and top-p cuts inside the head, at
    /// its end and inside the tail.
    #[test]
    fn the_head_tail_split_samples_as_a_full_sort_does() {
        let mut rng = crate::init::SeededRng::new(99);
        let cut = (NEGLIGIBLE.ln()) as f32;
        for case in 0..60u64 {
            let t = [0.7f64, 1.0, 0.05, 2.0][case as usize % 4];
            let n = 200 + (case as usize * 37) % 300;
            let mut logits: Vec<f32> = rng
                .normals(n, 12.0)
                .into_iter()
                .map(|v| (v * 4.0).round() / 4.0)
                .collect();
            // Values around the cut (relative to the maximum, after temperature).
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (i, v) in logits.iter_mut().enumerate().take(40) {
                let near = max + (cut * t as f32) + (i as f32 - 20.0) * 1e-5;
                *v = near;
            }
            logits[41] = f32::NEG_INFINITY;
            logits[42] = f32::NAN;
            logits[43] = max;
            // Equal weights from different bits.
            logits[44] = -0.0;
            logits[45] = 0.0;
            logits[46] = -0.0;
            for k in [0, 1, 3, 50, n / 2, n - 3, n + 5] {
                for p in [1.0, 0.9, 0.3, 1e-9] {
                    let params = params(t, k, p, case);
                    assert_same_as_full_sort(&logits, &params, case * 7 + k as u64);
                }
            }
        }
    }

    /// A vocabulary of SmolLM2's size: every radix pass runs.
    #[test]
    fn the_split_equals_the_full_sort_on_a_large_vocabulary() {
        let mut rng = crate::init::SeededRng::new(7);
        let logits = rng.normals(49_152, 6.0);
        for (t, k, p) in [(0.7, 0, 1.0), (1.0, 40, 1.0), (0.7, 0, 0.95), (3.0, 0, 1.0)] {
            let params = params(t, k, p, 5);
            let want = candidates_sorted(&logits, &params).expect("cands");
            let got = Candidates::new(&logits, &params).expect("cands");
            assert_eq!(got.head[..], want[..got.head.len()]);
            assert_eq!(got.head.len() + got.tail.len(), want.len());
            for index in 0..20 {
                let s = sample(&logits, &params, index).expect("sample");
                let r = sample_reference(&logits, &params, index);
                assert_eq!(s, r);
            }
        }
    }

    proptest! {
        #[test]
        fn the_split_equals_the_full_sort(logits in prop::collection::vec(-60f32..20.0, 1..80),
                                          t in 0.01f64..3.0, k in 0usize..90, p in 0.01f64..1.0,
                                          full_p: bool, seed: u64, index: u64) {
            let params = params(t, k, if full_p { 1.0 } else { p }, seed);
            assert_same_as_full_sort(&logits, &params, index);
        }

        // The sampler is a pure function of (logits, params, seed, index).
        #[test]
        fn sampling_is_pure(logits in prop::collection::vec(-20f32..20.0, 1..64),
                            t in 0.0f64..3.0, k in 0usize..10, p in 0.05f64..1.0,
                            seed: u64, index: u64) {
            let params = params(t, k, p, seed);
            let a = sample(&logits, &params, index).expect("a");
            let b = sample(&logits.clone(), &params.clone(), index).expect("b");
            prop_assert_eq!(a, b);
            prop_assert!((a.token as usize) < logits.len());
            prop_assert!(a.cdf_lo <= a.draw && a.draw <= a.cdf_hi);
        }

        #[test]
        fn draws_are_uniform_in_unit_interval(seed: u64, index: u64) {
            let u = draw(seed, index);
            prop_assert!((0.0..1.0).contains(&u));
        }
    }
}
