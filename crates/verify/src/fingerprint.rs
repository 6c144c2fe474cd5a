//! Fingerprints: a compact commitment to the last hidden states an answer was computed from
//! (the TOPLOC idea). For every chunk of [`CHUNK`] output tokens, the hidden state that
//! produced the chunk's last token is reduced to its `k` largest-magnitude entries, stored as
//! (index u16, value bf16): 4 bytes an entry, `k` entries a chunk. With k = 32 that is
//! 4 bytes a token, against TOPLOC's 8.

use borsh::{BorshDeserialize, BorshSerialize};
use half::bf16;
use serde::{Deserialize, Serialize};

/// Output tokens per fingerprint chunk.
pub const CHUNK: usize = 32;
/// Entries kept per chunk (fewer when the hidden size is smaller than 4k).
pub const TOP_K: usize = 32;

/// The top-k entries of one hidden state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct ChunkPrint {
    /// Indices into the hidden vector, in descending order of magnitude.
    pub indices: Vec<u16>,
    /// The values at those indices, as bf16 bits.
    pub values: Vec<u16>,
}

/// The fingerprint of a whole answer: one [`ChunkPrint`] per chunk of output tokens (the last
/// chunk may be short).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct Fingerprint {
    /// One entry per chunk.
    pub chunks: Vec<ChunkPrint>,
}

/// How many entries a hidden size gets: [`TOP_K`], or a quarter of a small hidden size.
pub fn k_for(hidden: usize) -> usize {
    TOP_K.min((hidden / 4).max(1))
}

/// The top-k entries of one hidden state by magnitude (ties by lower index).
pub fn chunk_print(hidden: &[f32]) -> ChunkPrint {
    let k = k_for(hidden.len()).min(hidden.len());
    let mut order: Vec<usize> = (0..hidden.len().min(u16::MAX as usize + 1)).collect();
    let by_magnitude =
        |a: &usize, b: &usize| hidden[*b].abs().total_cmp(&hidden[*a].abs()).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_magnitude);
        order.truncate(k);
    }
    order.sort_unstable_by(by_magnitude);
    ChunkPrint {
        indices: order.iter().map(|&i| i as u16).collect(),
        values: order
            .iter()
            .map(|&i| bf16::from_f32(hidden[i]).to_bits())
            .collect(),
    }
}

/// Which output positions end a chunk: the hidden states fingerprinted for `n` tokens.
pub fn chunk_ends(n: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |i| (i + 1).is_multiple_of(CHUNK) || i + 1 == n)
}

/// Builds fingerprints as tokens stream out: feed the hidden state behind each output token.
#[derive(Debug, Default)]
pub struct FingerprintBuilder {
    print: Fingerprint,
    pending: Option<Vec<f32>>,
    seen: usize,
}

impl FingerprintBuilder {
    /// An empty builder. Chunks count from the first token this provider produced (resumed
    /// tokens were fingerprinted by whoever produced them).
    pub fn new() -> FingerprintBuilder {
        FingerprintBuilder::default()
    }

    /// The hidden state that produced the next output token.
    pub fn push(&mut self, hidden: Vec<f32>) {
        self.seen += 1;
        if self.seen.is_multiple_of(CHUNK) {
            self.print.chunks.push(chunk_print(&hidden));
            self.pending = None;
        } else {
            self.pending = Some(hidden);
        }
    }

    /// The fingerprint, closing a short last chunk.
    pub fn finish(mut self) -> Fingerprint {
        if let Some(h) = self.pending.take() {
            self.print.chunks.push(chunk_print(&h));
        }
        self.print
    }
}

/// How one recomputed chunk compares with the claimed one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkComparison {
    /// Share of the claimed indices found among the recomputed top-k.
    pub overlap: f64,
    /// Largest difference of values at the claimed indices, relative to the largest
    /// magnitude in the claimed chunk.
    pub max_rel_err: f64,
    /// Mean of the same differences.
    pub mean_rel_err: f64,
}

/// Compares a claimed chunk with the recomputed hidden state.
pub fn compare(claimed: &ChunkPrint, hidden: &[f32]) -> ChunkComparison {
    let recomputed = chunk_print(hidden);
    let k = claimed.indices.len().max(1);
    let found = claimed
        .indices
        .iter()
        .filter(|i| recomputed.indices.contains(i))
        .count();
    let scale = claimed
        .values
        .iter()
        .map(|&b| f64::from(bf16::from_bits(b).to_f32().abs()))
        .fold(1e-6, f64::max);
    let mut max_err = 0.0f64;
    let mut sum_err = 0.0f64;
    for (&i, &v) in claimed.indices.iter().zip(&claimed.values) {
        // The claim is bf16; round the recomputed value the same way, so honest answers
        // differ by nothing (or one bf16 step) rather than by bf16's rounding.
        let truth = hidden
            .get(i as usize)
            .map_or(f32::NAN, |v| bf16::from_f32(*v).to_f32());
        let err = (f64::from(truth) - f64::from(bf16::from_bits(v).to_f32())).abs() / scale;
        let err = if err.is_finite() { err } else { f64::INFINITY };
        max_err = max_err.max(err);
        sum_err += err;
    }
    ChunkComparison {
        overlap: found as f64 / k as f64,
        max_rel_err: max_err,
        mean_rel_err: sum_err / k as f64,
    }
}

impl Fingerprint {
    /// Why this is not the one fingerprint format an honest provider produces for `n` output
    /// tokens of a model whose last hidden state has `hidden` entries: one chunk per
    /// [`chunk_ends`], each with exactly [`k_for`] distinct in-range indices in descending
    /// order of magnitude and finite values. `None` when it is. Any other shape is the
    /// provider's own signed fault (a repeated index would count as several matches, a short
    /// chunk would need fewer entries right), so an audit fails it before any compute.
    pub fn format_error(&self, n: usize, hidden: usize) -> Option<String> {
        let chunks = chunk_ends(n).count();
        if self.chunks.len() != chunks {
            return Some(format!(
                "{} fingerprint chunks for {n} tokens; expected {chunks}",
                self.chunks.len()
            ));
        }
        // chunk_print ranks the first 2^16 entries (u16 indices).
        let range = hidden.min(u16::MAX as usize + 1);
        let k = k_for(hidden).min(range);
        for (c, chunk) in self.chunks.iter().enumerate() {
            if chunk.indices.len() != k || chunk.values.len() != k {
                return Some(format!(
                    "fingerprint chunk {c} has {} indices and {} values; the model fixes {k}",
                    chunk.indices.len(),
                    chunk.values.len()
                ));
            }
            let mut seen = vec![false; range];
            let mut last = f32::INFINITY;
            for (&i, &v) in chunk.indices.iter().zip(&chunk.values) {
                match seen.get_mut(i as usize) {
                    None => {
                        return Some(format!(
                            "fingerprint chunk {c} names entry {i} of a hidden state of {hidden}"
                        ))
                    }
                    Some(true) => {
                        return Some(format!("fingerprint chunk {c} repeats entry {i}"));
                    }
                    Some(s) => *s = true,
                }
                // Rounding to bf16 keeps the order of magnitudes (ties may come in any order).
                let m = bf16::from_bits(v).to_f32().abs();
                if !m.is_finite() {
                    return Some(format!("fingerprint chunk {c} holds a non-finite value"));
                }
                if m > last {
                    return Some(format!(
                        "fingerprint chunk {c} is not in descending order of magnitude"
                    ));
                }
                last = m;
            }
        }
        None
    }

    /// Compact bytes (Borsh).
    pub fn to_bytes(&self) -> Vec<u8> {
        borsh::to_vec(self).unwrap_or_default()
    }

    /// Parses bytes, refusing more than `max_chunks` chunks or more than 1024 entries a chunk.
    pub fn from_bytes(bytes: &[u8], max_chunks: usize) -> Option<Fingerprint> {
        let f = Fingerprint::try_from_slice(bytes).ok()?;
        let ok = f.chunks.len() <= max_chunks
            && f.chunks
                .iter()
                .all(|c| c.indices.len() == c.values.len() && c.indices.len() <= 1024);
        ok.then_some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_by_magnitude_and_compact() {
        let mut h = vec![0.01f32; 256];
        h[3] = -5.0;
        h[200] = 4.0;
        h[17] = 3.0;
        let p = chunk_print(&h);
        assert_eq!(p.indices.len(), 32);
        assert_eq!(&p.indices[..3], &[3, 200, 17]);
        assert_eq!(bf16::from_bits(p.values[0]).to_f32(), -5.0);
        let c = compare(&p, &h);
        assert_eq!(c.overlap, 1.0);
        assert!(c.max_rel_err < 0.01);
    }

    #[test]
    fn builder_chunks_every_32_tokens_and_closes_the_last() {
        let mut b = FingerprintBuilder::new();
        for i in 0..70 {
            b.push(vec![i as f32; 8]);
        }
        let f = b.finish();
        assert_eq!(f.chunks.len(), 3);
        assert_eq!(chunk_ends(70).collect::<Vec<_>>(), vec![31, 63, 69]);
        let bytes = f.to_bytes();
        assert_eq!(Fingerprint::from_bytes(&bytes, 3), Some(f));
        assert!(Fingerprint::from_bytes(&bytes, 2).is_none());
        assert!(Fingerprint::from_bytes(&[1, 2, 3], 10).is_none());
    }

    #[test]
    fn honest_prints_have_the_models_format_and_nothing_else_does() {
        for hidden in [1, 2, 8, 64, 256, 576] {
            for n in [0, 1, 31, 32, 33, 70] {
                let mut b = FingerprintBuilder::new();
                for i in 0..n {
                    // Ties in magnitude, signs, and a spread of values.
                    b.push(
                        (0..hidden)
                            .map(|j| ((i * 7 + j * 13) % 11) as f32 - 5.0)
                            .collect(),
                    );
                }
                let f = b.finish();
                assert_eq!(f.format_error(n, hidden), None, "hidden {hidden}, n {n}");
                assert!(f.format_error(n + 32, hidden).is_some());
                if let Some(c) = f.chunks.first() {
                    let mut bad = f.clone();
                    bad.chunks[0].indices.push(c.indices[0]);
                    bad.chunks[0].values.push(c.values[0]);
                    assert!(bad.format_error(n, hidden).is_some(), "one entry too many");
                    if c.indices.len() > 1 {
                        let mut bad = f.clone();
                        bad.chunks[0].indices[1] = c.indices[0];
                        assert!(bad.format_error(n, hidden).is_some(), "a repeated index");
                    }
                }
            }
        }
    }
}
