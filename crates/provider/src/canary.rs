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

/// What a canary does with a plant under its root of `root_epoch` when the ledger is at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantStep {
    /// Its one opening epoch is ahead.
    Wait,
    /// This is the epoch the ledger accepts `RevealPlant` in.
    Open,
    /// The epoch has passed: it can never be opened.
    Missed,
}

/// The plant's step, from the ledger's own windows (`agora_ledger::audit::Windows::plant`).
pub fn plant_step(params: &agora_ledger::Params, root_epoch: u64, now: u64) -> PlantStep {
    plant_step_at(
        agora_ledger::audit::Windows::of(params, root_epoch)
            .ok()
            .map(|w| w.plant),
        now,
    )
}

/// The plant's step at epoch `now`, given the one epoch it opens in (on either settlement:
/// `ProviderSettlement::plant_epoch`; `None`: no such epoch).
pub fn plant_step_at(plant_epoch: Option<u64>, now: u64) -> PlantStep {
    match plant_epoch {
        Some(at) if now < at => PlantStep::Wait,
        Some(at) if now == at => PlantStep::Open,
        _ => PlantStep::Missed,
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
    fn a_missed_plant_window_is_recognised_from_the_ledgers_windows() {
        let params = agora_ledger::Params::default();
        let at = agora_ledger::audit::Windows::of(&params, 5)
            .expect("windows")
            .plant;
        assert_eq!(
            plant_step(&params, 5, at - 1),
            PlantStep::Wait,
            "still ahead"
        );
        assert_eq!(plant_step(&params, 5, at), PlantStep::Open);
        assert_eq!(plant_step(&params, 5, at + 1), PlantStep::Missed, "over");
        assert_eq!(
            plant_step(&params, u64::MAX, 0),
            PlantStep::Missed,
            "no window"
        );
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
