//! The genesis file: chain id, sequencer, rule parameters, and the only mint there is.

use crate::error::GenesisError;
use agora_core::{codec, AccountId, Amount, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Rule parameters fixed at genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Params {
    /// Epochs between unstaking and the stake returning to the balance.
    pub unbonding_epochs: u64,
    /// Share of a provider's bonded and unbonding stake slashed per confirmed fraud, in bps.
    pub slash_bps: u16,
    /// Share of the slashed amount paid to the verifier who found the fraud, in bps.
    pub bounty_bps: u16,
    /// Bonded stake a verifier must hold.
    pub min_verifier_stake: Amount,
    /// Bonded stake a provider must hold to post receipt roots.
    pub min_provider_stake: Amount,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            unbonding_epochs: 2,
            slash_bps: 5_000,
            bounty_bps: 2_000,
            min_verifier_stake: Amount::new(100),
            min_provider_stake: Amount::new(100),
        }
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
        ] {
            if value > 10_000 {
                return Err(GenesisError::BadBps { name, value });
            }
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
