//! Generation and the replay of the audit, modelled: no network weights run in the simulation.
//!
//! A model is its `ModelId` hash. Token `i` of an answer is a keyed hash of (model, prompt,
//! sampling seed, i), and the answer stops where a hash of (prompt, seed) says (possibly at
//! 0 tokens: empty answers are honest answers). The fingerprint is a well-formed
//! [`agora_verify::Fingerprint`] whose entries are a hash of the model and every token. The
//! replay ([`Replay`]) regenerates the answer with the model the receipt names: an honest
//! answer always passes, an answer from another model (or with other counts) always fails.
//! That is the property the real one-prefill audit (`agora_verify`) is measured to have on the
//! real model; the simulation takes it as given. Every rule around the replay (the material
//! under the root, signatures, counts, epochs, the fingerprint's shape, the second
//! verifier's decision) is the production verifier's [`agora_verifier::judge`].

use agora_core::{codec, Amount, Hash32};
use agora_verifier::judge::{Auditor, Judge, Judgement};
use agora_verify::fingerprint::ChunkPrint;
use agora_verify::Fingerprint;
use agora_wire::protocol::{tokens_hash, Material};

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

/// The fingerprint bytes of an answer by `model`: one chunk of eight (index, value) entries
/// taken from a hash of the model and the tokens.
pub fn fingerprint(model: &Hash32, prompt: &[u32], output: &[u32]) -> Vec<u8> {
    let h = codec::hash(FP_DOMAIN, &(model, prompt, output));
    let words: Vec<u16> = h
        .as_bytes()
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect();
    let (indices, values) = words.split_at(words.len() / 2);
    Fingerprint {
        chunks: vec![ChunkPrint {
            indices: indices.to_vec(),
            values: values.to_vec(),
        }],
    }
    .to_bytes()
}

/// The modelled audit: the production verifier's [`Auditor`], replaying with the modelled
/// generation. It audits the model payers ask for.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// The `max_tokens` every request carries (where the modelled answer stops).
    pub max_tokens: u32,
}

impl Auditor for Replay {
    fn audits(&self, model: &Hash32) -> bool {
        *model == real_model()
    }

    fn audit(&self, m: &Material, _print: &Fingerprint) -> Judgement {
        let r = &m.receipt.receipt;
        let n = answer_len(&m.prompt, r.sampling.seed, self.max_tokens);
        let want = generate(&r.model, &m.prompt, r.sampling.seed, n);
        if m.output != want {
            return Judgement::Failed("the tokens are not the named model's".into());
        }
        if m.fingerprint != fingerprint(&r.model, &m.prompt, &want) {
            return Judgement::Failed("the fingerprint is not the named model's".into());
        }
        if r.output_tokens as usize != want.len() {
            return Judgement::Failed("the output count is not the tokens'".into());
        }
        Judgement::Passed
    }
}

/// The production verifier's judge for chain `chain_id`, auditing with [`Replay`].
pub fn judge(chain_id: u64, max_tokens: u32) -> Judge<Replay> {
    Judge {
        chain_id,
        auditor: Replay { max_tokens },
    }
}

/// What the production judge finds of one answer under the root of its receipt's epoch, on
/// its receipt's chain: the audit alone, without the root and order checks around it.
pub fn audit(m: &Material, max_tokens: u32) -> Judgement {
    judge(m.receipt.receipt.chain_id, max_tokens).judge(
        &m.receipt.receipt.provider,
        m.receipt.receipt.epoch,
        m,
    )
}

/// The whole-unit cost of an answer, for refunds: `floor(micros / 1e6)`, at least the charge.
pub fn amount_of(micros: u128) -> Amount {
    agora_wire::price::micros_to_amount(micros)
}
