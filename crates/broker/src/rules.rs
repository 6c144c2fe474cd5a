//! The broker's decisions, with no I/O: what a provider may charge for a prompt, the most an
//! answer may cost, whether a provider's receipt is one the payer pays (and for how much), and
//! what a charge adds to a channel's books. The async broker calls these; so does the
//! deterministic simulation (`agora-sim`), so a bug here shows up in both.

use agora_core::{Amount, Hash32};
use agora_net::protocol::{tokens_hash, InferenceRequest, SignedReceipt};

/// What the gateway knows of a prompt's tokens before any provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCount {
    /// Counted with the model's own tokenizer and template: a provider must claim exactly
    /// this many and commit to the same ids.
    Exact {
        /// Prompt tokens.
        tokens: u32,
        /// `tokens_hash` of the ids.
        hash: Hash32,
    },
    /// The gateway lacks the model's file: a provider may claim at most this many.
    Bound(u32),
}

impl PromptCount {
    /// The most prompt tokens a provider may charge.
    pub fn most(self) -> u32 {
        match self {
            PromptCount::Exact { tokens, .. } => tokens,
            PromptCount::Bound(b) => b,
        }
    }

    /// Whether a provider's claimed count is acceptable.
    pub fn admits(self, claimed: u32) -> bool {
        match self {
            PromptCount::Exact { tokens, .. } => claimed == tokens,
            PromptCount::Bound(b) => claimed <= b,
        }
    }
}

/// The most an answer to `req` may cost, in micro-units: prompt (counted or bounded) and
/// resumed tokens at the prompt price, the tokens `max_tokens` leaves at the output price.
pub fn most_micros(req: &InferenceRequest, prompt: PromptCount) -> Option<u128> {
    let resumed = req.resume.len() as u64;
    let new_tokens = u64::from(req.max_tokens).saturating_sub(resumed);
    agora_market::cost_micros(
        req.price_in,
        req.price_out,
        u64::from(prompt.most()).checked_add(resumed)?,
        new_tokens,
    )
}

/// The escrow to reserve before asking for an answer to `req`: [`most_micros`] rounded up
/// to whole base units (a voucher for the last fraction must still be covered).
pub fn reservation(req: &InferenceRequest, prompt: PromptCount) -> Option<Amount> {
    let most = most_micros(req, prompt)?;
    Some(agora_market::micros_to_amount(
        most.saturating_add(agora_market::MICROS_PER_UNIT - 1),
    ))
}

/// Checks a provider's receipt against what was asked, what arrived and the gateway's own
/// prompt count; returns what to pay, in micro-units: the receipt's cost, which may not
/// exceed (prompt + resumed) x price_in + output x price_out by the gateway's counts.
pub fn check_receipt(
    receipt: &SignedReceipt,
    req: &InferenceRequest,
    delivered: &[u32],
    prompt: PromptCount,
    (started, now): (u64, u64),
) -> Result<u128, &'static str> {
    receipt.verify().map_err(|_| "signature")?;
    let r = &receipt.receipt;
    // The receipt must land in a root the payer can still challenge (the ledger's inclusion
    // window runs from the receipt's epoch): an epoch long past or far ahead would dodge it.
    // The provider names the epoch its answer ended in, so the receipt goes into the root of
    // that epoch or the next: an epoch the answer ran in, between the gateway's views when
    // this attempt started and now, with one epoch of slack either way for the two views
    // straddling a boundary.
    if r.epoch.saturating_add(1) < started || r.epoch > started.max(now).saturating_add(1) {
        return Err("receipt names an epoch outside the answer's");
    }
    if r.chain_id != req.chain_id
        || r.provider != req.provider
        || r.payer != req.payer
        || r.request_id != req.request_id
        || r.channel != req.channel
    {
        return Err("another request or provider");
    }
    if r.model != req.model || r.sampling != req.sampling {
        return Err("model or sampling differs");
    }
    if r.price_in != req.price_in || r.price_out != req.price_out {
        return Err("prices differ");
    }
    if delivered.len() > req.max_tokens as usize {
        return Err("more tokens than max_tokens");
    }
    let new = delivered.len().saturating_sub(req.resume.len());
    if r.resumed_tokens as usize != req.resume.len() || r.output_tokens as usize != new {
        return Err("token counts differ from the tokens streamed");
    }
    if r.output_hash != tokens_hash(delivered) {
        return Err("output hash differs from the tokens streamed");
    }
    match prompt {
        PromptCount::Exact { tokens, hash } => {
            if r.prompt_tokens != tokens || r.prompt_hash != hash {
                return Err("prompt differs from the gateway's count");
            }
        }
        PromptCount::Bound(b) => {
            if r.prompt_tokens > b {
                return Err("prompt token count above the gateway's bound");
            }
        }
    }
    let most = agora_market::cost_micros(
        r.price_in,
        r.price_out,
        u64::from(r.prompt_tokens) + u64::from(r.resumed_tokens),
        u64::from(r.output_tokens),
    )
    .ok_or("cost overflows")?;
    if r.cost_micros > most {
        return Err("cost above tokens times prices");
    }
    Ok(r.cost_micros)
}

/// What a channel's books have charged after an answer costing `cost_micros` on a
/// reservation of `reserved`: a charge never exceeds what was reserved for it, and the books
/// never more than the channel's `deposit` holds.
pub fn charge(spent_micros: u128, cost_micros: u128, reserved: Amount, deposit: Amount) -> u128 {
    let cost = cost_micros.min(
        reserved
            .units()
            .saturating_mul(agora_market::MICROS_PER_UNIT),
    );
    spent_micros.saturating_add(cost).min(
        deposit
            .units()
            .saturating_mul(agora_market::MICROS_PER_UNIT),
    )
}
