//! The signed wire protocol between a gateway (the payer's broker) and a provider.
//!
//! One inference is one libp2p stream on [`INFERENCE_PROTOCOL`]:
//!
//! 1. broker -> provider: a [`SignedRequest`], signed by the payer's ledger key;
//! 2. provider -> broker: [`Frame::Accepted`], then [`Frame::Token`]s, then [`Frame::Done`]
//!    carrying the provider's [`SignedReceipt`] (or [`Frame::Error`] at any point);
//! 3. broker -> provider: a [`SignedVoucher`] paying for the answer, cumulative per channel.
//!
//! On a stream, frames are a 4-byte big-endian length then Borsh bytes, at most
//! [`MAX_FRAME_BYTES`] (the framing itself lives in `agora-net`).
//! Requests are replay-protected by a random request id, the intended provider, and an issue
//! time the provider only accepts within [`REQUEST_WINDOW_MS`].

use crate::settle::Voucher;
use agora_core::{codec, AccountId, Amount, Hash32, Keypair, Signature};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// The stream protocol for one inference.
pub const INFERENCE_PROTOCOL: &str = "/agora/infer/1";
/// Domain of the payer's signature over an [`InferenceRequest`].
pub const REQUEST_DOMAIN: &[u8] = b"agora/net/request/v1";
/// Domain of the provider's signature over a [`Receipt`].
pub const RECEIPT_DOMAIN: &[u8] = b"agora/net/receipt/v1";
const RECEIPT_HASH_DOMAIN: &[u8] = b"agora/net/receipt-hash/v1";
const TOKENS_DOMAIN: &[u8] = b"agora/net/tokens/v1";
const FINGERPRINT_DOMAIN: &[u8] = b"agora/net/fingerprint/v1";
/// Domain of a verifier's signature over an [`AuditRequest`].
pub const AUDIT_DOMAIN: &[u8] = b"agora/net/audit/v1";
/// The stream protocol on which verifiers fetch audited material.
pub const AUDIT_PROTOCOL: &str = "/agora/audit/1";
/// The largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// How far a request's issue time may be from the provider's clock.
pub const REQUEST_WINDOW_MS: u64 = 60_000;
/// Most stop sequences in a request.
pub const MAX_STOP: usize = 4;
/// Most chat messages in a request.
pub const MAX_MESSAGES: usize = 256;

/// A 16-byte random request id.
pub type RequestId = [u8; 16];

/// What to complete: chat messages (the provider applies the model's chat template) or text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum PromptSpec {
    /// (role, content) pairs.
    Chat(Vec<(String, String)>),
    /// Raw text.
    Text(String),
}

impl PromptSpec {
    /// Bytes of text the prompt carries, for size limits.
    pub fn byte_len(&self) -> usize {
        match self {
            PromptSpec::Chat(m) => m.iter().map(|(r, c)| r.len() + c.len()).sum(),
            PromptSpec::Text(t) => t.len(),
        }
    }
}

/// How to sample. Floats travel as their bits, so the signature covers exactly them.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// The seed of the sampler's pseudo-random draws.
    pub seed: u64,
    /// A JSON Schema's text that constrains decoding (`response_format`, a required tool):
    /// every sampled token must keep the output a prefix of a JSON text the schema allows.
    /// Signed by the payer and the receipt, so an auditor replays the same masks.
    #[serde(default)]
    pub constraint: Option<String>,
    /// Report each token's log-probability and this many most likely alternatives.
    #[serde(default)]
    pub top_logprobs: Option<u8>,
}

/// Longest constraint a request may carry.
pub const MAX_CONSTRAINT_BYTES: usize = 16 * 1024;
/// Most alternatives per token with `top_logprobs`.
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// A token's log-probability and the most likely alternatives, as the provider computed
/// them from the logits it sampled from (not audited: the receipt does not commit to them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TokenLogprobs {
    /// The sampled token's natural-log probability.
    pub logprob: f32,
    /// (token id, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A payer's request to one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct InferenceRequest {
    /// The ledger chain both sides settle on.
    pub chain_id: u64,
    /// Random per request; the provider refuses one it has seen.
    pub request_id: RequestId,
    /// Who pays, and signs this request.
    pub payer: AccountId,
    /// The payment channel from `payer` to `provider` on the ledger.
    pub channel: Hash32,
    /// The provider this request is for (a request cannot be replayed to another).
    pub provider: AccountId,
    /// The ModelId to run.
    pub model: Hash32,
    /// The prompt.
    pub prompt: PromptSpec,
    /// Output tokens already delivered by a provider that failed: they are prefilled after
    /// the prompt and generation continues from there with the same seed.
    pub resume: Vec<u32>,
    /// Most output tokens in total, `resume` included.
    pub max_tokens: u32,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// The sampler's settings.
    pub sampling: Sampling,
    /// Agreed price per million prompt tokens (from the offer).
    pub price_in: Amount,
    /// Agreed price per million output tokens.
    pub price_out: Amount,
    /// Unix ms when the payer issued it.
    pub issued_ms: u64,
}

/// A request with the payer's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedRequest {
    /// The request.
    pub request: InferenceRequest,
    /// The payer's signature over `REQUEST_DOMAIN || encode(request)`.
    pub sig: Signature,
}

impl InferenceRequest {
    /// The payer signs.
    pub fn sign(self, payer: &Keypair) -> SignedRequest {
        let sig = payer.sign(REQUEST_DOMAIN, &self);
        SignedRequest { request: self, sig }
    }
}

impl SignedRequest {
    /// Checks the signature and the request's shape (not the clock, the channel or the price).
    pub fn verify(&self) -> Result<(), ProtocolError> {
        let r = &self.request;
        r.payer
            .verify(REQUEST_DOMAIN, r, &self.sig)
            .map_err(|_| ProtocolError::BadSignature("request"))?;
        if r.stop.len() > MAX_STOP || r.stop.iter().any(|s| s.len() > 64) {
            return Err(ProtocolError::Malformed(
                "too many or too long stop sequences",
            ));
        }
        if let PromptSpec::Chat(m) = &r.prompt {
            if m.is_empty() || m.len() > MAX_MESSAGES {
                return Err(ProtocolError::Malformed("chat needs 1 to 256 messages"));
            }
        }
        if !(r.sampling.temperature.is_finite() && (0.0..=2.0).contains(&r.sampling.temperature)) {
            return Err(ProtocolError::Malformed("temperature must be in [0, 2]"));
        }
        if !(r.sampling.top_p > 0.0 && r.sampling.top_p <= 1.0) {
            return Err(ProtocolError::Malformed("top_p must be in (0, 1]"));
        }
        if r.sampling
            .constraint
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CONSTRAINT_BYTES)
        {
            return Err(ProtocolError::Malformed("constraint over 16 KiB"));
        }
        if r.sampling
            .top_logprobs
            .is_some_and(|n| n > MAX_TOP_LOGPROBS)
        {
            return Err(ProtocolError::Malformed("top_logprobs over 20"));
        }
        if r.resume.len() as u64 >= u64::from(r.max_tokens) {
            return Err(ProtocolError::Malformed(
                "resume must be shorter than max_tokens",
            ));
        }
        Ok(())
    }
}

/// Why an answer ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub enum Finish {
    /// End of sequence or a stop string.
    Stop,
    /// The token limit or the context.
    Length,
}

/// What a provider signs for every answer. A verifier can re-run the answer from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Receipt {
    /// The chain.
    pub chain_id: u64,
    /// The ledger epoch it was served in: the provider's receipt root for this epoch or the
    /// next must hold it, or the payer's non-inclusion challenge slashes the provider.
    pub epoch: u64,
    /// The request it answers.
    pub request_id: RequestId,
    /// The provider, who signs.
    pub provider: AccountId,
    /// Who pays.
    pub payer: AccountId,
    /// The channel that pays (a confirmed fraud refunds its payer).
    pub channel: Hash32,
    /// The model that ran.
    pub model: Hash32,
    /// Hash of the prompt's token ids (after the chat template).
    pub prompt_hash: Hash32,
    /// Hash of the resumed tokens followed by the output token ids.
    pub output_hash: Hash32,
    /// Prompt tokens charged.
    pub prompt_tokens: u32,
    /// Tokens resumed from an earlier provider (prefilled, not charged as output).
    pub resumed_tokens: u32,
    /// New output tokens charged.
    pub output_tokens: u32,
    /// The sampler's settings, seed included: an auditor replays them.
    pub sampling: Sampling,
    /// BLAKE3 of the fingerprint of the hidden states behind the new output tokens.
    pub fingerprint_hash: Hash32,
    /// Price per million prompt tokens.
    pub price_in: Amount,
    /// Price per million output tokens.
    pub price_out: Amount,
    /// What the answer costs, in millionths of a base unit.
    #[serde(with = "crate::price::micros_serde")]
    pub cost_micros: u128,
    /// Unix ms when the request was accepted.
    pub started_ms: u64,
    /// Unix ms when the last token was sent.
    pub finished_ms: u64,
}

impl Receipt {
    /// The provider signs.
    pub fn sign(self, provider: &Keypair) -> SignedReceipt {
        let sig = provider.sign(RECEIPT_DOMAIN, &self);
        SignedReceipt { receipt: self, sig }
    }
}

/// A receipt with the provider's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedReceipt {
    /// The receipt.
    pub receipt: Receipt,
    /// The provider's signature.
    pub sig: Signature,
}

// Equality is reflexive on every receipt that can be encoded: the canonical encoding refuses
// NaN, the one float value that is not equal to itself.
impl Eq for SignedReceipt {}

impl SignedReceipt {
    /// Checks the provider's signature.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        self.receipt
            .provider
            .verify(RECEIPT_DOMAIN, &self.receipt, &self.sig)
            .map_err(|_| ProtocolError::BadSignature("receipt"))
    }

    /// The receipt's hash: a leaf of the provider's epoch receipt root.
    pub fn hash(&self) -> Hash32 {
        codec::hash(RECEIPT_HASH_DOMAIN, self)
    }
}

/// The hash of a fingerprint's bytes, as receipts commit to it.
pub fn fingerprint_hash(bytes: &[u8]) -> Hash32 {
    codec::hash(FINGERPRINT_DOMAIN, bytes)
}

/// The hash of a token id sequence, as receipts commit to it.
pub fn tokens_hash(tokens: &[u32]) -> Hash32 {
    codec::hash(TOKENS_DOMAIN, tokens)
}

/// Why a provider refused or stopped.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub enum ErrorCode {
    /// The request is malformed, unsigned or replayed.
    BadRequest,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// This provider does not serve that model.
    UnknownModel,
    /// The agreed price is under the provider's current price.
    Price,
    /// The channel is unknown, not this provider's, or lacks funds for the request.
    Payment,
    /// The queue is full; try another provider.
    Busy,
    /// The model failed.
    Internal,
}

/// What a provider sends on an inference stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum Frame {
    /// The request is accepted; the prompt has this many tokens.
    Accepted {
        /// Prompt tokens after the chat template.
        prompt_tokens: u32,
    },
    /// One output token and the text it settled (may be empty).
    Token {
        /// Index in the output, `resume` included.
        index: u32,
        /// Token id.
        token: u32,
        /// Newly settled text.
        text: String,
        /// With `top_logprobs` asked for: the token's log-probability and alternatives.
        logprobs: Option<TokenLogprobs>,
    },
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Text held back until the end (an incomplete character), if any.
        tail: String,
        /// The signed receipt (boxed: it dwarfs the other frames).
        receipt: Box<SignedReceipt>,
        /// The provider's EIP-712 `Receipt` signature (65 bytes) on an EVM settlement; `None` on the
        /// ledger.
        chain_sig: Option<Vec<u8>>,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A sentence for the log.
        message: String,
    },
}

/// A payer's signature over a cumulative voucher, of one settlement's kind. Each settlement
/// accepts only its own kind (`NetworkSettlement::voucher_signer` in agora-settlement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VoucherSignature {
    /// The ledger's: `payer` signs [`Voucher`] (chain id, channel, cumulative) under
    /// [`crate::VOUCHER_DOMAIN`].
    Ed25519 {
        /// The signing (payer's) key.
        payer: AccountId,
        /// Its signature.
        sig: Signature,
    },
    /// An EVM chain's: the payer's EIP-712 signature (r, s, v) over `Voucher(bytes32
    /// channel,uint256 cumulative)` under ("Agora", "1", chain id, settlement contract).
    Eip712(#[serde(with = "sig65_hex")] [u8; 65]),
}

/// 65 signature bytes as hex in text (serde has no arrays over 32).
mod sig65_hex {
    pub fn serialize<S: serde::Serializer>(b: &[u8; 65], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 65], D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        let bytes = hex::decode(text.trim_start_matches("0x")).map_err(serde::de::Error::custom)?;
        <[u8; 65]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("an EIP-712 signature is 65 bytes"))
    }
}

/// The payer's cumulative voucher for a channel, sent after each answer, signed in the
/// settlement's own kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// The payer's signature.
    pub sig: VoucherSignature,
}

impl SignedVoucher {
    /// The payer signs `voucher` with its ledger key.
    pub fn new(voucher: Voucher, payer: &Keypair) -> SignedVoucher {
        let sig = voucher.sign(payer);
        SignedVoucher {
            voucher,
            sig: VoucherSignature::Ed25519 {
                payer: payer.account(),
                sig,
            },
        }
    }

    /// Checks an ed25519 voucher's signature. An EIP-712 one is refused here: only its
    /// settlement can recover its signer (`NetworkSettlement::voucher_signer`).
    pub fn verify(&self) -> Result<(), ProtocolError> {
        match &self.sig {
            VoucherSignature::Ed25519 { payer, sig } => payer
                .verify(crate::settle::VOUCHER_DOMAIN, &self.voucher, sig)
                .map_err(|_| ProtocolError::BadSignature("voucher")),
            VoucherSignature::Eip712(_) => Err(ProtocolError::BadSignature(
                "voucher (an EIP-712 voucher is checked by its settlement)",
            )),
        }
    }
}

/// A protocol failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream failed or closed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame over the size limit.
    #[error("frame of {0} bytes is over the {1}-byte limit")]
    TooLarge(usize, usize),
    /// Bytes that do not decode.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A signature that does not verify.
    #[error("bad {0} signature")]
    BadSignature(&'static str),
    /// A message of the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Everything an auditor needs to re-check one answer; the provider keeps it for at least
/// an epoch after posting the receipt's root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Material {
    /// The signed receipt.
    pub receipt: SignedReceipt,
    /// Prompt token ids (their hash is the receipt's `prompt_hash`).
    pub prompt: Vec<u32>,
    /// Resumed tokens, then this provider's output: their hash is `output_hash`.
    pub resumed: Vec<u32>,
    /// This provider's output tokens.
    pub output: Vec<u32>,
    /// The fingerprint bytes (their hash is `fingerprint_hash`).
    pub fingerprint: Vec<u8>,
}

impl Material {
    /// Checks that the material is what the receipt commits to.
    pub fn matches_receipt(&self) -> Result<(), &'static str> {
        let r = &self.receipt.receipt;
        if tokens_hash(&self.prompt) != r.prompt_hash {
            return Err("prompt differs from the receipt");
        }
        let all: Vec<u32> = self.resumed.iter().chain(&self.output).copied().collect();
        if tokens_hash(&all) != r.output_hash {
            return Err("output differs from the receipt");
        }
        if fingerprint_hash(&self.fingerprint) != r.fingerprint_hash {
            return Err("fingerprint differs from the receipt");
        }
        if self.resumed.len() != r.resumed_tokens as usize
            || self.prompt.len() != r.prompt_tokens as usize
        {
            return Err("token counts differ from the receipt");
        }
        Ok(())
    }
}

/// A verifier asks a provider for the material behind leaf `index` of its root for `epoch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct AuditRequest {
    /// The chain.
    pub chain_id: u64,
    /// The verifier, who signs.
    pub verifier: AccountId,
    /// The provider asked.
    pub provider: AccountId,
    /// The epoch of the receipt root.
    pub epoch: u64,
    /// The leaf.
    pub index: u64,
    /// Unix ms; refused outside the replay window.
    pub issued_ms: u64,
    /// `None` from the verifier the ledger's plan assigns to the leaf. A confirmer (any other
    /// registered verifier) names the ledger transaction that revealed a failed audit of this
    /// leaf: the provider serves it only once that reveal is on the ledger.
    pub reveal_tx: Option<Hash32>,
}

/// An audit request with the verifier's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedAuditRequest {
    /// The request.
    pub request: AuditRequest,
    /// The verifier's signature.
    pub sig: Signature,
}

impl AuditRequest {
    /// The verifier signs.
    pub fn sign(self, verifier: &Keypair) -> SignedAuditRequest {
        let sig = verifier.sign(AUDIT_DOMAIN, &self);
        SignedAuditRequest { request: self, sig }
    }
}

impl SignedAuditRequest {
    /// Checks the verifier's signature.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        self.request
            .verifier
            .verify(AUDIT_DOMAIN, &self.request, &self.sig)
            .map_err(|_| ProtocolError::BadSignature("audit request"))
    }
}

/// The leaf after an audited one, so the auditor can check that leaves are in strictly
/// increasing request id order (no receipt appears twice under one root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct NextLeaf {
    /// The next leaf's receipt.
    pub receipt: SignedReceipt,
    /// Its Merkle path.
    pub proof: Vec<Hash32>,
}

/// A provider's answer to an audit request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum AuditResponse {
    /// The material and the Merkle path from its receipt to the posted root.
    Material {
        /// The material.
        material: Box<Material>,
        /// The Merkle path.
        proof: Vec<Hash32>,
        /// The next leaf (`None` for the last leaf).
        next: Option<Box<NextLeaf>>,
    },
    /// The provider will not or cannot hand over the material of a leaf it was rightly
    /// asked for (counts as withheld).
    Refused {
        /// Why.
        reason: String,
    },
    /// The request is not one the provider answers now: unsigned, stale, from a verifier
    /// that is neither assigned nor a confirmer, or it cannot check that yet (busy, ledger
    /// unreachable). Never evidence against the provider.
    Denied {
        /// Why.
        reason: String,
    },
}

/// The stream protocol on which a payer asks a provider where a paid receipt sits under its
/// posted roots, before (instead of) challenging its inclusion on the ledger.
pub const INCLUSION_PROTOCOL: &str = "/agora/inclusion/1";

/// A payer's question: under which of your roots is this receipt? It carries the receipt
/// itself, which the provider signed, so only a holder of one of its receipts makes it look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct InclusionQuery {
    /// The receipt, signed by the provider asked.
    pub receipt: SignedReceipt,
}

/// A provider's answer to an [`InclusionQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum InclusionAnswer {
    /// The receipt is leaf `index` of the provider's root for `epoch`.
    Included {
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// Its Merkle path.
        proof: Vec<Hash32>,
    },
    /// No posted root of the provider holds it (or the query was not its to answer).
    Missing,
}

/// The stream protocol on which a verifier asks another to confirm a fraud.
pub const CONFIRM_PROTOCOL: &str = "/agora/confirm/1";
/// Domain of signatures over the audit gossip and confirm messages.
pub const AUDIT_GOSSIP_DOMAIN: &[u8] = b"agora/net/audit-gossip/v1";

/// A value with its signer's signature under [`AUDIT_GOSSIP_DOMAIN`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Signed<T> {
    /// The value.
    pub value: T,
    /// Who signed.
    pub signer: AccountId,
    /// The signature.
    pub sig: Signature,
}

impl<T: BorshSerialize> Signed<T> {
    /// `key` signs `value`.
    pub fn new(value: T, key: &Keypair) -> Signed<T> {
        let sig = key.sign(AUDIT_GOSSIP_DOMAIN, &value);
        Signed {
            value,
            signer: key.account(),
            sig,
        }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        self.signer
            .verify(AUDIT_GOSSIP_DOMAIN, &self.value, &self.sig)
            .map_err(|_| ProtocolError::BadSignature("signed message"))
    }
}

/// What a verifier found, gossiped so markets can weigh providers by their audits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct AuditOutcome {
    /// The chain.
    pub chain_id: u64,
    /// The provider audited.
    pub provider: AccountId,
    /// The epoch of the receipt root.
    pub epoch: u64,
    /// The leaf.
    pub index: u64,
    /// Whether the answer passed.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    /// Unix ms.
    pub issued_ms: u64,
}

/// A verifier says where it can be reached, so a first verifier can ask it to confirm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct VerifierHello {
    /// The chain.
    pub chain_id: u64,
    /// libp2p peer id bytes.
    pub peer_id: Vec<u8>,
    /// Multiaddrs.
    pub addrs: Vec<String>,
    /// Unix ms.
    pub issued_ms: u64,
}

/// What travels on the audits gossip topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum AuditGossip {
    /// An audit's result.
    Outcome(Signed<AuditOutcome>),
    /// A verifier's whereabouts.
    Hello(Signed<VerifierHello>),
}

/// A first verifier asks a second to confirm a failed audit: the verdict to co-sign and
/// the evidence to re-check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct ConfirmRequest {
    /// The verdict the ledger would apply.
    pub verdict: crate::settle::Verdict,
    /// The material for a fraud, as a hint only: the second verifier reads the root from
    /// the ledger and fetches the material from the provider itself, and uses this only if
    /// the provider cannot be reached and it holds together under the ledger's root.
    pub material: Option<Box<Material>>,
}

/// The second verifier's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub enum ConfirmResponse {
    /// It re-audited and agrees: its signature over the verdict.
    Confirmed {
        /// The confirmer's signature.
        sig: Signature,
    },
    /// It does not agree (or cannot check).
    Declined {
        /// Why.
        reason: String,
    },
    /// It re-audited and agrees, on an EVM settlement: its EIP-712 `Verdict` (fraud) or
    /// `Withheld` signature, 65 bytes (r, s, v).
    ConfirmedEip712 {
        /// The confirmer's signature.
        sig: Vec<u8>,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random request id.
pub fn new_request_id() -> RequestId {
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        // No OS randomness: fall back to the clock and a counter, still unique per process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        id[..8].copy_from_slice(&now_ms().to_le_bytes());
        id[8..].copy_from_slice(&n.to_le_bytes());
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(payer: &Keypair) -> InferenceRequest {
        InferenceRequest {
            chain_id: 1,
            request_id: [7; 16],
            payer: payer.account(),
            channel: Hash32::of(b"c"),
            provider: Keypair::from_seed([2; 32]).account(),
            model: Hash32::of(b"m"),
            prompt: PromptSpec::Text("hi".into()),
            resume: vec![],
            max_tokens: 8,
            stop: vec![],
            sampling: Sampling {
                temperature: 1.0,
                top_p: 1.0,
                seed: 3,
                ..Default::default()
            },
            price_in: Amount::new(10),
            price_out: Amount::new(20),
            issued_ms: 5,
        }
    }

    #[test]
    fn tampered_request_is_refused() {
        let payer = Keypair::from_seed([1; 32]);
        let mut signed = request(&payer).sign(&payer);
        assert!(signed.verify().is_ok());
        signed.request.price_out = Amount::new(1);
        assert!(matches!(
            signed.verify(),
            Err(ProtocolError::BadSignature(_))
        ));
    }

    #[test]
    fn tampered_receipts_and_mismatched_material_are_refused() {
        let provider = Keypair::from_seed([4; 32]);
        let payer = Keypair::from_seed([1; 32]);
        let (prompt, output, print) = (vec![1, 2, 3], vec![7, 8], vec![9u8; 12]);
        let receipt = Receipt {
            chain_id: 1,
            epoch: 0,
            request_id: [3; 16],
            provider: provider.account(),
            payer: payer.account(),
            channel: Hash32::of(b"c"),
            model: Hash32::of(b"m"),
            prompt_hash: tokens_hash(&prompt),
            output_hash: tokens_hash(&output),
            prompt_tokens: 3,
            resumed_tokens: 0,
            output_tokens: 2,
            sampling: Sampling {
                temperature: 1.0,
                top_p: 1.0,
                seed: 5,
                ..Default::default()
            },
            fingerprint_hash: fingerprint_hash(&print),
            price_in: Amount::new(1),
            price_out: Amount::new(2),
            cost_micros: 7,
            started_ms: 1,
            finished_ms: 2,
        }
        .sign(&provider);
        assert!(receipt.verify().is_ok());
        let material = Material {
            receipt: receipt.clone(),
            prompt,
            resumed: vec![],
            output,
            fingerprint: print,
        };
        assert!(material.matches_receipt().is_ok());
        // A receipt changed after signing, or signed by someone else, is refused.
        let mut forged = receipt.clone();
        forged.receipt.output_tokens = 200;
        assert!(forged.verify().is_err());
        let mut other = receipt.receipt.clone().sign(&payer);
        other.receipt.provider = provider.account();
        assert!(other.verify().is_err());
        // Material that is not what the receipt commits to is refused.
        for tamper in [
            |m: &mut Material| m.output.push(1),
            |m: &mut Material| m.prompt[0] = 0,
            |m: &mut Material| m.fingerprint[0] = 0,
            |m: &mut Material| m.resumed.push(7),
        ] {
            let mut m = material.clone();
            tamper(&mut m);
            assert!(m.matches_receipt().is_err());
        }

        // A fraud verdict carries the signed receipt through JSON (the ledger's HTTP API),
        // inside an internally tagged enum: the u128 cost must survive it, whole.
        let mut big = receipt.receipt.clone();
        big.cost_micros = u128::MAX;
        let fault = crate::settle::Fault::Fraud {
            receipt: big.sign(&provider),
            proof: vec![Hash32::of(b"p")],
        };
        let json = serde_json::to_string(&fault).expect("encode");
        let back: crate::settle::Fault = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, fault);
    }
}
