//! Planted fake frauds. A canary provider (the ledger's planter) serves every user honestly,
//! but for about one answer in N it files audit material whose fingerprints it has perturbed
//! past the audit thresholds, and commits on the ledger, secretly, that it planted that leaf.
//! A verifier that audits catches it like any fraud; one that approves without auditing
//! passes it and is slashed when the plant is opened after every reveal is in.
//!
//! The user's tokens are untouched: only the fingerprints filed for audit are wrong, so a
//! plant costs users nothing and verifiers cannot tell it from a real fraud.

use std::collections::HashSet;
use std::sync::Mutex;

use agora_core::{codec, Hash32};
use agora_verify::Fingerprint;

const CHOICE_DOMAIN: &[u8] = b"agora/provider/plant-choice/v1";
const SALT_DOMAIN: &[u8] = b"agora/provider/plant-salt/v1";

/// The most chunks a fingerprint filed by this provider can hold.
const MAX_CHUNKS: usize = 1 << 16;

/// The planter's bookkeeping: answers planted but not yet under a root, and plants committed
/// on the ledger and not yet opened.
pub struct Canary {
    seed: [u8; 32],
    one_in: u32,
    /// Receipt hashes of planted answers waiting for their root.
    pub planted: Mutex<HashSet<Hash32>>,
    /// Committed plants: (root epoch, leaf index).
    pub committed: Mutex<Vec<(u64, u64)>>,
}

impl Canary {
    /// Plants about one answer in `one_in` (at least 1), chosen with a secret from `seed`.
    pub fn new(seed: [u8; 32], one_in: u32) -> Canary {
        Canary {
            seed,
            one_in: one_in.max(1),
            planted: Mutex::default(),
            committed: Mutex::default(),
        }
    }

    /// Whether the answer to `request_id` is planted; nobody without the seed can tell.
    pub fn chosen(&self, request_id: &[u8; 16]) -> bool {
        let h = codec::hash(CHOICE_DOMAIN, &(self.seed, request_id));
        let mut word = [0u8; 4];
        word.copy_from_slice(&h.as_bytes()[..4]);
        u32::from_le_bytes(word) % self.one_in == 0
    }

    /// The commitment salt of a plant; derived, so it survives restarts.
    pub fn salt(&self, epoch: u64, index: u64) -> Hash32 {
        codec::hash(SALT_DOMAIN, &(self.seed, epoch, index))
    }
}

/// The fingerprint with every recorded value scaled by 1.5, far outside the audit's relative
/// error threshold; `None` if it holds no chunk (nothing to perturb) or does not parse.
pub fn corrupt(fingerprint: &[u8]) -> Option<Vec<u8>> {
    let mut print = Fingerprint::from_bytes(fingerprint, MAX_CHUNKS)?;
    if print.chunks.is_empty() {
        return None;
    }
    for chunk in &mut print.chunks {
        for v in &mut chunk.values {
            let x = half::bf16::from_bits(*v).to_f32() * 1.5;
            *v = half::bf16::from_f32(x).to_bits();
        }
    }
    Some(print.to_bytes())
}

/// Whether the ledger's `audit_window` refusal ("… is not open in epoch N: open from A to B")
/// says the window is over (N > B); `false` when it is still ahead or the text does not parse.
pub fn window_passed(message: &str) -> bool {
    let number_after = |key: &str| -> Option<u64> {
        let rest = &message[message.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number_after("in epoch "), number_after(" to ")) {
        (Some(now), Some(to)) => now > to,
        _ => false,
    }
}

/// Locks a mutex, recovering from poisoning (the data stays consistent: single inserts).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_verify::fingerprint::ChunkPrint;

    #[test]
    fn corrupt_moves_every_value_and_keeps_the_indices() {
        let print = Fingerprint {
            chunks: vec![ChunkPrint {
                indices: vec![3, 7],
                values: vec![
                    half::bf16::from_f32(2.0).to_bits(),
                    half::bf16::from_f32(-1.0).to_bits(),
                ],
            }],
        };
        let bad = corrupt(&print.to_bytes()).expect("a chunk to corrupt");
        let bad = Fingerprint::from_bytes(&bad, 4).expect("parses");
        assert_eq!(bad.chunks[0].indices, vec![3, 7]);
        let values: Vec<f32> = bad.chunks[0]
            .values
            .iter()
            .map(|v| half::bf16::from_bits(*v).to_f32())
            .collect();
        assert_eq!(values, vec![3.0, -1.5]);
        assert!(corrupt(&Fingerprint { chunks: vec![] }.to_bytes()).is_none());
        assert!(corrupt(b"not a fingerprint").is_none());
    }

    /// A plant whose one opening epoch was missed was retried on every tick forever.
    #[test]
    fn a_missed_plant_window_is_recognised_from_the_ledgers_refusal() {
        let refusal = |epoch, at| {
            agora_ledger::TxError::AuditWindow {
                what: "the plant reveal",
                epoch,
                from: at,
                to: at,
            }
            .to_string()
        };
        assert!(!window_passed(&refusal(5, 7)), "still ahead");
        assert!(window_passed(&refusal(8, 7)), "over");
        assert!(!window_passed("something else"));
    }

    #[test]
    fn choice_is_a_secret_fraction() {
        let c = Canary::new([7; 32], 4);
        let n = (0..4000u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                c.chosen(&id)
            })
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000 chosen at one in 4");
        let other = Canary::new([8; 32], 4);
        let same = (0..400u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                c.chosen(&id) == other.chosen(&id)
            })
            .count();
        assert!(same < 400, "another seed chooses other answers");
    }
}
