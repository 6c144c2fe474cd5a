//! The JSON shapes of the HTTP API, shared by the server and the client.

use crate::state::{Event, Unbonding};
use agora_core::{AccountId, Amount, Hash32};
use serde::{Deserialize, Serialize};

/// The answer to an accepted submission, sent once its block is durably committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReceipt {
    /// The transaction id.
    pub tx_id: Hash32,
    /// The block that holds it.
    pub height: u64,
    /// That block's hash.
    pub block_hash: Hash32,
    /// What it did.
    pub events: Vec<Event>,
}

/// Chain status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Chain id.
    pub chain_id: u64,
    /// Genesis hash.
    pub genesis_hash: Hash32,
    /// Last committed height.
    pub height: u64,
    /// Last committed block hash.
    pub tip: Hash32,
    /// State hash at the tip.
    pub state_hash: Hash32,
    /// Current epoch.
    pub epoch: u64,
    /// Current beacon.
    pub beacon: Hash32,
    /// The sequencer account.
    pub sequencer: AccountId,
    /// Genesis supply.
    pub supply: Amount,
    /// Burned by slashing.
    pub burned: Amount,
    /// The rule parameters (audit windows, deadlines) from genesis.
    #[serde(default)]
    pub params: crate::Params,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account id.
    pub account: AccountId,
    /// Spendable balance.
    pub balance: Amount,
    /// Next nonce to use.
    pub nonce: u64,
    /// Bonded stake.
    pub stake: Amount,
    /// Unbonding stake.
    pub unbonding: Vec<Unbonding>,
    /// Registered verifier.
    pub verifier: bool,
    /// Its receipts that passed a revealed audit.
    #[serde(default)]
    pub clean_audits: u64,
    /// Confirmed frauds against it.
    #[serde(default)]
    pub frauds: u64,
}

/// A transaction's place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxLocation {
    /// The transaction id.
    pub tx_id: Hash32,
    /// The block height holding it.
    pub height: u64,
}

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code (a [`crate::TxError::code`] for rejected transactions).
    pub code: String,
    /// The reason in words.
    pub message: String,
}
