//! What can go wrong talking to the chain.

use crate::bindings::{
    AgoraSettlement::AgoraSettlementErrors, TestStablecoin::TestStablecoinErrors,
};
use alloy::primitives::{Bytes, TxHash};
use alloy::transports::TransportError;

/// A contract's refusal, decoded from the revert data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// One of the settlement contract's errors (`OverClaim`, `ForgedVoucher`, ...).
    Settlement(AgoraSettlementErrors),
    /// One of the test token's errors (`InsufficientBalance`, ...).
    Token(TestStablecoinErrors),
    /// Revert data neither contract's errors decode (a `require` string, a panic code).
    Other(Bytes),
}

/// Errors of the EVM settlement client.
#[derive(Debug, thiserror::Error)]
pub enum EvmError {
    /// The contract refused the operation (found while estimating its gas: nothing was sent).
    #[error("refused by the contract: {0:?}")]
    Refused(Refusal),
    /// The transaction was mined but reverted.
    #[error("transaction {hash} reverted on chain")]
    RevertedOnChain {
        /// Its hash.
        hash: TxHash,
    },
    /// An RPC call kept failing.
    #[error("{what} failed after {attempts} attempts: {source}")]
    Rpc {
        /// Which call.
        what: &'static str,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        #[source]
        source: TransportError,
    },
    /// A sent transaction did not get a receipt in time; it may still be mined (its nonce is
    /// read from the chain again before the next transaction).
    #[error("no receipt for {hash} after {waited_ms} ms")]
    ReceiptTimeout {
        /// Its hash.
        hash: TxHash,
        /// How long the client waited.
        waited_ms: u64,
    },
    /// A transaction (or a claim) was not `depth` blocks deep in time; it may still get there.
    #[error("{hash} not final at depth {depth} after {waited_ms} ms")]
    NotFinal {
        /// The last hash sent for it (zero if nothing was sent).
        hash: TxHash,
        /// The depth asked for.
        depth: u64,
        /// How long the client waited.
        waited_ms: u64,
    },
    /// A receipt lacked what the operation must produce.
    #[error("transaction {hash} succeeded without {what}")]
    MissingOutput {
        /// Its hash.
        hash: TxHash,
        /// What was missing (an event, a contract address).
        what: &'static str,
    },
    /// A read of a contract failed in another way than the transport.
    #[error("reading {what} failed: {source}")]
    Read {
        /// Which read.
        what: &'static str,
        /// Why (boxed: the contract error is large).
        #[source]
        source: Box<alloy::contract::Error>,
    },
    /// The RPC endpoint serves another chain than the deployment's.
    #[error("the RPC serves chain {got}, the deployment is on chain {expected}")]
    WrongChain {
        /// The deployment's chain.
        expected: u64,
        /// The endpoint's chain.
        got: u64,
    },
    /// The RPC URL does not parse.
    #[error("bad RPC URL {url:?}")]
    BadUrl {
        /// The URL.
        url: String,
    },
    /// The HTTP client for the RPC could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(String),
    /// The client has no deployment (it was made to deploy one).
    #[error("no contracts: this client was connected without a deployment")]
    NotDeployed,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] alloy::signers::Error),
    /// Building the transaction failed (a field missing).
    #[error("building the transaction failed: {0}")]
    Build(#[from] alloy::network::TransactionBuilderError<alloy::network::Ethereum>),
    /// An amount does not fit the contract's 128-bit amounts.
    #[error("amount {0} does not fit in 128 bits")]
    AmountTooLarge(alloy::primitives::U256),
    /// Starting Anvil failed.
    #[error("starting anvil ({what}): {source}")]
    AnvilStart {
        /// What step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anvil started but did not print what it must (its address, its keys).
    #[error("anvil did not print {0}")]
    AnvilOutput(&'static str),
    /// Reading or writing a deployment file failed.
    #[error("deployment file {path}: {source}")]
    DeploymentFile {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A deployment file did not parse.
    #[error("deployment file {path}: {source}")]
    DeploymentJson {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: serde_json::Error,
    },
}

impl EvmError {
    /// The settlement contract's error, if that is what this is.
    pub fn settlement_refusal(&self) -> Option<&AgoraSettlementErrors> {
        match self {
            EvmError::Refused(Refusal::Settlement(e)) => Some(e),
            _ => None,
        }
    }
}
