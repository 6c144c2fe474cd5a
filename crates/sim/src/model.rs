//! Generation and audit, modelled: no network weights run in the simulation.
//!
//! A model is its `ModelId` hash. Token `i` of an answer is a keyed hash of (model, prompt,
//! sampling seed, i), and the answer stops where a hash of (prompt, seed) says (possibly at
//! 0 tokens: empty answers are honest answers). The fingerprint is a hash of the model and
//! every token. An audit replays the answer with the model the receipt names: an honest
//! answer always passes, an answer from another model (or with other counts) always fails.
//! That is the property the real one-prefill audit (`agora_verify`) is measured to have on the
//! real model; the simulation takes it as given and tests the protocol around it.

use agora_core::{codec, Amount, Hash32};
use agora_wire::price::cost_micros;
use agora_wire::protocol::{fingerprint_hash, tokens_hash, Material, SignedReceipt};
use std::cell::RefCell;
use std::collections::BTreeSet;

const TOKEN_DOMAIN: &[u8] = b"agora/sim/token/v1";
const LEN_DOMAIN: &[u8] = b"agora/sim/len/v1";
const FP_DOMAIN: &[u8] = b"agora/sim/fingerprint/v1";
const VOCAB: u32 = 49_152;

/// The model payers ask for.
pub fn real_model() -> Hash32 {
    Hash32::of(b"agora/sim/model/real")
}

/// The cheaper model a cheating provider serves instead.
pub fn cheap_model() -> Hash32 {
    Hash32::of(b"agora/sim/model/cheap")
}

/// Where an answer to `prompt` with `seed` stops, at most `max_tokens`.
pub fn answer_len(prompt: &[u32], seed: u64, max_tokens: u32) -> u32 {
    let h = codec::hash(LEN_DOMAIN, &(prompt, seed));
    let mut w = [0u8; 4];
    w.copy_from_slice(&h.as_bytes()[..4]);
    u32::from_le_bytes(w) % (max_tokens.saturating_add(1)).max(1)
}

/// The output `model` produces for `prompt` with `seed`, `n` tokens.
pub fn generate(model: &Hash32, prompt: &[u32], seed: u64, n: u32) -> Vec<u32> {
    let ph = tokens_hash(prompt);
    (0..n)
        .map(|i| {
            let h = codec::hash(TOKEN_DOMAIN, &(model, &ph, seed, i));
            let mut w = [0u8; 4];
            w.copy_from_slice(&h.as_bytes()[..4]);
            u32::from_le_bytes(w) % VOCAB
        })
        .collect()
}

/// The fingerprint bytes of an answer by `model`.
pub fn fingerprint(model: &Hash32, prompt: &[u32], output: &[u32]) -> Vec<u8> {
    codec::hash(FP_DOMAIN, &(model, prompt, output))
        .as_bytes()
        .to_vec()
}

/// What an audit of one answer finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// The answer is what the named model produces and is charged right.
    Pass,
    /// It is not.
    Fail,
    /// The material does not hold together (it cannot be judged: never a fraud by itself).
    CannotJudge,
}

/// The audit: replay with the receipt's model and check every count and the charge.
pub fn audit(m: &Material, max_tokens: u32) -> Audit {
    let r = &m.receipt.receipt;
    // Material that is not what the receipt commits to cannot be judged.
    let all: Vec<u32> = m.resumed.iter().chain(&m.output).copied().collect();
    if !receipt_signed(&m.receipt)
        || tokens_hash(&m.prompt) != r.prompt_hash
        || tokens_hash(&all) != r.output_hash
        || fingerprint_hash(&m.fingerprint) != r.fingerprint_hash
    {
        return Audit::CannotJudge;
    }
    // The committed answer, replayed: other tokens, other counts or another charge fail.
    let n = answer_len(&m.prompt, r.sampling.seed, max_tokens);
    let want = generate(&r.model, &m.prompt, r.sampling.seed, n);
    let cost = cost_micros(
        r.price_in,
        r.price_out,
        u64::from(r.prompt_tokens),
        u64::from(r.output_tokens),
    );
    if m.output != want
        || m.fingerprint != fingerprint(&r.model, &m.prompt, &want)
        || r.prompt_tokens as usize != m.prompt.len()
        || r.output_tokens as usize != want.len()
        || cost != Some(r.cost_micros)
    {
        return Audit::Fail;
    }
    Audit::Pass
}

/// The whole-unit cost of an answer, for refunds: `floor(micros / 1e6)`, at least the charge.
pub fn amount_of(micros: u128) -> Amount {
    agora_wire::price::micros_to_amount(micros)
}

thread_local! {
    /// Hashes of signed receipts whose signature verified on this thread.
    static SIGNED: RefCell<BTreeSet<Hash32>> = const { RefCell::new(BTreeSet::new()) };
}

/// Whether the receipt's provider signed it, remembering the ones that verified: the payer,
/// the assigned verifier and every confirmer check the same bytes. The key is the hash of
/// the receipt and its signature together, and verification is a pure function of them, so
/// the answer is the one a fresh check gives.
pub fn receipt_signed(r: &SignedReceipt) -> bool {
    let key = r.hash();
    if SIGNED.with(|s| s.borrow().contains(&key)) {
        return true;
    }
    let ok = r.verify().is_ok();
    if ok {
        SIGNED.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() >= 1 << 16 {
                s.clear();
            }
            s.insert(key);
        });
    }
    ok
}
