//! Opening a settlement from what a command line names: the embedded ledger at a URL, or the
//! contracts of a deployment file on an EVM chain's RPC endpoint.
//!
//! One key file serves both. On the ledger the ed25519 key is the account. On an EVM chain
//! the account is a secp256k1 key derived from the same seed ([`evm_signer_for`]), so a
//! provider, verifier or gateway needs no second secret; the ed25519 key still signs
//! receipts and offers, and the account binds it on chain (`bindNetworkKey`).

use crate::evm::EvmSettlement;
use crate::ledger::LedgerSettlement;
use crate::network::{SettlementKind, SharedSettlement};
use crate::SettlementError;
use agora_core::Keypair;
use agora_evm::{Deployment, SettlementClient};
use alloy::signers::local::PrivateKeySigner;
use std::sync::Arc;

/// Where settlement lives.
// Made once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SettlementTarget {
    /// An `agora ledger serve` node.
    Ledger {
        /// Its URL.
        url: String,
    },
    /// The `AgoraSettlement` contract of `deployment`, through the JSON-RPC endpoint `rpc`.
    Evm {
        /// The chain's JSON-RPC URL.
        rpc: String,
        /// Where the contracts are (what `--contracts FILE` holds).
        deployment: Deployment,
    },
}

impl SettlementTarget {
    /// Which settlement this names.
    pub fn kind(&self) -> SettlementKind {
        match self {
            SettlementTarget::Ledger { .. } => SettlementKind::Ledger,
            SettlementTarget::Evm { .. } => SettlementKind::Evm,
        }
    }
}

/// The EVM account of the party whose ed25519 seed is `seed`: a secp256k1 key derived from
/// it with BLAKE3 under a domain of its own (a seed that is not a valid scalar moves on to
/// the next counter, which happens with probability about 2^-128).
pub fn evm_signer_for(seed: &[u8; 32]) -> PrivateKeySigner {
    for counter in 0u32.. {
        let mut h =
            blake3::Hasher::new_derive_key("agora 2026-12 evm account key from ed25519 seed");
        h.update(seed);
        h.update(&counter.to_le_bytes());
        let bytes: [u8; 32] = *h.finalize().as_bytes();
        if let Ok(signer) = PrivateKeySigner::from_bytes(&bytes.into()) {
            return signer;
        }
    }
    unreachable!("2^32 consecutive invalid secp256k1 scalars")
}

/// A settlement opened for one account, of either kind: the concrete type stays reachable
/// for the operations a role needs, and [`Opened::network`] gives the shared interface.
#[derive(Clone)]
pub enum Opened {
    /// The embedded ledger.
    Ledger(Arc<LedgerSettlement>),
    /// An EVM chain.
    Evm(Arc<EvmSettlement>),
}

impl Opened {
    /// Opens `target` as the account of `key` (on a chain: the account [`evm_signer_for`]
    /// derives from it). Checks the ledger's or the chain's id.
    pub async fn open(target: &SettlementTarget, key: &Keypair) -> Result<Opened, SettlementError> {
        match target {
            SettlementTarget::Ledger { url } => {
                let client =
                    agora_ledger::client::Client::new(url).map_err(crate::ledger::ledger_err)?;
                let c = client.clone();
                let status = tokio::task::spawn_blocking(move || c.status())
                    .await?
                    .map_err(crate::ledger::ledger_err)?;
                Ok(Opened::Ledger(Arc::new(LedgerSettlement::new(
                    client,
                    key.clone(),
                    status.chain_id,
                ))))
            }
            SettlementTarget::Evm { rpc, deployment } => {
                let client =
                    SettlementClient::connect(rpc, evm_signer_for(&key.seed()), deployment.clone())
                        .await
                        .map_err(crate::evm::evm_err)?;
                Ok(Opened::Evm(Arc::new(EvmSettlement::new(client))))
            }
        }
    }

    /// Which settlement this is.
    pub fn kind(&self) -> SettlementKind {
        match self {
            Opened::Ledger(_) => SettlementKind::Ledger,
            Opened::Evm(_) => SettlementKind::Evm,
        }
    }

    /// The interface the network's services share.
    pub fn network(&self) -> SharedSettlement {
        match self {
            Opened::Ledger(s) => s.clone(),
            Opened::Evm(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_evm_account_and_different_seeds_differ() {
        let a = evm_signer_for(&[7; 32]);
        assert_eq!(a.address(), evm_signer_for(&[7; 32]).address());
        assert_ne!(a.address(), evm_signer_for(&[8; 32]).address());
    }
}
