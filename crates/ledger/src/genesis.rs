//! The genesis file: chain id, sequencer, rule parameters, and the only mint there is.

use crate::error::GenesisError;
use agora_core::{codec, AccountId, Amount, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Rule parameters fixed at genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(default)]
pub struct Params {
    /// Epochs between unstaking and the stake returning to the balance; at least
    /// [`Params::min_unbonding_epochs`], so stake outlives every verdict that could take it.
    pub unbonding_epochs: u64,
    /// Share of a provider's bonded and unbonding stake slashed per confirmed fraud, in bps.
    pub slash_bps: u16,
    /// Share of the slashed amount paid to the verifier who found the fraud, in bps.
    pub bounty_bps: u16,
    /// Bonded stake a verifier must hold.
    pub min_verifier_stake: Amount,
    /// Bonded stake a provider must hold to post receipt roots.
    pub min_provider_stake: Amount,
    /// A provider's first this many audited-clean jobs are all audited (and again after any
    /// confirmed fraud).
    pub probation_jobs: u64,
    /// The audit probability after probation, in parts per million.
    pub audit_floor_ppm: u32,
    /// Share of every voucher claim that goes to the audit pool, in bps.
    pub audit_fee_bps: u16,
    /// Paid from the audit pool to the assigned verifier for each revealed audit.
    pub audit_fee: Amount,
    /// Share of a verifier's stake slashed when it passed a planted fraud, in bps.
    pub lazy_slash_bps: u16,
    /// Epochs a selected leaf stays open for its commitment, and then for its reveal.
    pub audit_window_epochs: u64,
    /// Epochs in which a verdict on a revealed failure may land (at least 1).
    pub escalation_epochs: u64,
    /// Epochs a provider has to answer a material demand, after the demand's epoch
    /// (`1 ..= escalation_epochs + 1`, so an unanswered demand expires inside the verdict window).
    pub answer_epochs: u64,
    /// Epochs a provider keeps to claim after the payer asks to close a channel; a channel's
    /// timeout must be longer.
    pub claim_window_epochs: u64,
    /// What a payer escrows to challenge a receipt's inclusion; the provider gets it if it
    /// proves the receipt is under its root, the payer gets it back otherwise.
    pub challenge_bond: Amount,
    /// Share of a verifier's stake burned when it revealed a failed audit that neither a
    /// verdict nor a plant confirmed by the end of the verdict window, in bps.
    pub false_alarm_bps: u16,
    /// What a provider escrows with each plant: paid to the verifier that catches the plant
    /// (revealed "failed"), returned otherwise when the plant is opened, kept if never opened.
    /// It is also the price of shielding one leaf per root from a verdict.
    pub plant_bond: Amount,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            unbonding_epochs: 8,
            slash_bps: 5_000,
            bounty_bps: 2_000,
            min_verifier_stake: Amount::new(100),
            min_provider_stake: Amount::new(100),
            probation_jobs: 50,
            audit_floor_ppm: 20_000,
            audit_fee_bps: 0,
            audit_fee: Amount::ZERO,
            lazy_slash_bps: 5_000,
            audit_window_epochs: 1,
            escalation_epochs: 2,
            answer_epochs: 1,
            claim_window_epochs: 2,
            challenge_bond: Amount::new(5),
            false_alarm_bps: 100,
            plant_bond: Amount::new(50),
        }
    }
}

impl Params {
    /// The shortest unbonding that outlives every verdict, with `w = audit_window_epochs`,
    /// `x = escalation_epochs`, `a = answer_epochs`:
    /// - stake unbonded in the epoch a root is posted (`e`) must still be there in the last
    ///   epoch a verdict on it can land, `e + 3 + w + x` (selection 1, commitments `w`,
    ///   reveal 1, plant opening 1, escalation `x`): `4 + w + x`;
    /// - stake unbonded in the epoch a receipt was served (`r`) must still be there when an
    ///   unanswered non-inclusion challenge expires: filed by `r + 1 + x`, answered by
    ///   `+ a`, slashed at the start of the next epoch: `2 + x + a`.
    ///
    /// `unbonding_epochs >= max(4 + w + x, 2 + x + a)`. `None` if it overflows.
    pub fn min_unbonding_epochs(&self) -> Option<u64> {
        let verdicts = 4u64
            .checked_add(self.audit_window_epochs)?
            .checked_add(self.escalation_epochs)?;
        let challenges = 2u64
            .checked_add(self.escalation_epochs)?
            .checked_add(self.answer_epochs)?;
        Some(verdicts.max(challenges))
    }
}

/// An initial balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Allocation {
    /// Who.
    pub account: AccountId,
    /// How much.
    pub amount: Amount,
}

/// The genesis of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Genesis {
    /// The chain id every transaction must name.
    pub chain_id: u64,
    /// The account allowed to advance epochs.
    pub sequencer: AccountId,
    /// Rule parameters.
    pub params: Params,
    /// Initial balances: the whole supply.
    pub allocations: Vec<Allocation>,
}

const GENESIS_DOMAIN: &[u8] = b"agora/ledger/genesis/v1";

impl Genesis {
    /// The genesis hash: parent of block 1 and the first beacon.
    pub fn hash(&self) -> Hash32 {
        codec::hash(GENESIS_DOMAIN, self)
    }

    /// Checks the parameters and returns the total supply.
    pub fn validate(&self) -> Result<Amount, GenesisError> {
        for (name, value) in [
            ("slash_bps", self.params.slash_bps),
            ("bounty_bps", self.params.bounty_bps),
            ("audit_fee_bps", self.params.audit_fee_bps),
            ("lazy_slash_bps", self.params.lazy_slash_bps),
            ("false_alarm_bps", self.params.false_alarm_bps),
        ] {
            if value > 10_000 {
                return Err(GenesisError::BadBps { name, value });
            }
        }
        if self.params.audit_floor_ppm > 1_000_000 {
            return Err(GenesisError::BadPpm {
                name: "audit_floor_ppm",
                value: self.params.audit_floor_ppm,
            });
        }
        if self.params.escalation_epochs == 0 {
            return Err(GenesisError::ZeroWindow {
                name: "escalation_epochs",
            });
        }
        if self.params.claim_window_epochs == 0 {
            return Err(GenesisError::ZeroWindow {
                name: "claim_window_epochs",
            });
        }
        if self.params.answer_epochs == 0
            || self.params.answer_epochs > self.params.escalation_epochs.saturating_add(1)
        {
            return Err(GenesisError::AnswerWindow {
                answer: self.params.answer_epochs,
                escalation: self.params.escalation_epochs,
            });
        }
        let need = self
            .params
            .min_unbonding_epochs()
            .ok_or(GenesisError::WindowOverflow)?;
        if self.params.unbonding_epochs < need {
            return Err(GenesisError::UnbondingTooShort {
                unbonding: self.params.unbonding_epochs,
                need,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut total = Amount::ZERO;
        for a in &self.allocations {
            if !seen.insert(a.account) {
                return Err(GenesisError::DuplicateAllocation(a.account));
            }
            total = total
                .checked_add(a.amount)
                .map_err(|_| GenesisError::SupplyOverflow)?;
        }
        Ok(total)
    }
}
