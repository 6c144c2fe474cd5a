//! What the settlement layer and the network both read: the payer's cumulative voucher and
//! a confirmed audit verdict, with the signing domains they are checked under.

use crate::protocol::SignedReceipt;
use agora_core::{AccountId, Amount, Hash32, Keypair, Signature};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Domain of the payer's signature over a [`Voucher`].
pub const VOUCHER_DOMAIN: &[u8] = b"agora/ledger/voucher/v1";
/// Domain of the confirming verifier's signature over a [`Verdict`].
pub const VERDICT_DOMAIN: &[u8] = b"agora/ledger/verdict/v1";

/// A payer's promise: the provider of `channel` may take up to `cumulative` in total from it.
/// One signature covers every request so far; a later voucher supersedes an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Voucher {
    /// The chain.
    pub chain_id: u64,
    /// The channel.
    pub channel: Hash32,
    /// Total the provider may have claimed after this voucher.
    pub cumulative: Amount,
}

impl Voucher {
    /// The payer signs the voucher.
    pub fn sign(&self, payer: &Keypair) -> Signature {
        payer.sign(VOUCHER_DOMAIN, self)
    }
}

/// What a confirmed audit failure found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Fault {
    /// The receipt under the root failed its audit. The ledger checks the provider's signature,
    /// the chain, and that the receipt's hash is the leaf (by `proof`), then refunds the
    /// receipt's own cost to the payer of the receipt's own channel: nothing in the verdict
    /// names a payee or an amount.
    Fraud {
        /// The failed receipt, as the provider signed it.
        receipt: SignedReceipt,
        /// The Merkle path from the receipt's hash to the root.
        proof: Vec<Hash32>,
    },
    /// The provider left the assigned verifier's on-ledger demand for the leaf's material
    /// unanswered past its deadline. Nothing is refunded (no receipt is known).
    Withheld,
}

/// An audit verdict: leaf `index` of the root `provider` posted for `epoch` failed its audit.
/// Signed by a second verifier that confirmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Verdict {
    /// The chain.
    pub chain_id: u64,
    /// The provider that cheated.
    pub provider: AccountId,
    /// The epoch of the receipt root.
    pub epoch: u64,
    /// The leaf index under the root.
    pub index: u64,
    /// What was wrong.
    pub fault: Fault,
}

impl Verdict {
    /// A verifier signs the verdict as confirmer.
    pub fn sign(&self, confirmer: &Keypair) -> Signature {
        confirmer.sign(VERDICT_DOMAIN, self)
    }
}
