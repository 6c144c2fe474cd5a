//! Which windows of the token stream an island trains on: each batch's generator is seeded
//! by blake3(run seed, round, island, step), so any peer can recompute an island's batches
//! (the honesty checks do) and no two islands or rounds share a draw by construction.

use agora_model::init::SeededRng;
use agora_train::data::Corpus;
use candle_core::{Device, Tensor};

use crate::error::Result;

/// The seed of one batch: the first 8 bytes of blake3 over a domain tag and the four
/// coordinates in little endian.
pub fn batch_seed(run_seed: u64, round: u64, island: u64, step: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-diloco/batch/v1");
    for x in [run_seed, round, island, step] {
        h.update(&x.to_le_bytes());
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Where a batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub run_seed: u64,
    pub round: u64,
    pub island: u64,
    pub step: u64,
}

/// `batch` windows of `seq_len + 1` training tokens (inputs, next-token targets) for `key`.
pub fn batch(
    corpus: &Corpus,
    key: BatchKey,
    batch: usize,
    seq_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut rng = SeededRng::new(batch_seed(key.run_seed, key.round, key.island, key.step));
    Ok(corpus.batch(&mut rng, batch, seq_len, device)?)
}
