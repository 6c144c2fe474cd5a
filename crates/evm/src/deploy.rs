//! Deploying the test stablecoin and the settlement contract.

use crate::bindings::{AgoraSettlement, TestStablecoin};
use crate::client::SettlementClient;
use crate::error::EvmError;
use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolConstructor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The settlement contract's rules, fixed at deployment (the ledger's genesis parameters, plus
/// the epoch length in blocks). The constructor refuses the same
/// invalid sets the ledger's genesis validation refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Blocks per epoch.
    pub epoch_blocks: u64,
    /// Epochs between unstaking and the stake becoming withdrawable.
    pub unbonding_epochs: u64,
    /// Epochs a selected leaf stays open for its commitment, and then for its reveal.
    pub audit_window_epochs: u64,
    /// Epochs in which a verdict may land.
    pub escalation_epochs: u64,
    /// Epochs a provider has to answer a material demand.
    pub answer_epochs: u64,
    /// Epochs a provider keeps to claim after the payer asks to close a channel.
    pub claim_window_epochs: u64,
    /// Bonded stake a provider needs to post roots.
    pub min_provider_stake: u128,
    /// Bonded stake a verifier needs.
    pub min_verifier_stake: u128,
    /// Share of every claim that goes to the audit pool, in basis points.
    pub audit_fee_bps: u16,
    /// Share of a provider's bonded and unbonding stake slashed per confirmed fraud (bps).
    pub slash_bps: u16,
    /// Share of the slashed amount paid to the verifier that found the fraud (bps).
    pub bounty_bps: u16,
    /// Share of a verifier's stake burned when it passed a planted fraud (bps).
    pub lazy_slash_bps: u16,
    /// Share of a verifier's stake burned for a revealed failure nothing confirmed (bps).
    pub false_alarm_bps: u16,
    /// Audit probability after probation, parts per million.
    pub audit_floor_ppm: u32,
    /// A provider's first this many clean audits are all audited (and again after a fraud).
    pub probation_jobs: u64,
    /// Paid from the audit pool to the assigned verifier per revealed audit.
    pub audit_fee: u128,
    /// What a plant escrows.
    pub plant_bond: u128,
    /// What a payer escrows with an inclusion challenge (the provider's if it answers).
    /// Absent from deployment files written before it existed: read as 0.
    #[serde(default)]
    pub challenge_bond: u128,
}

impl Params {
    /// The ledger's default rules (`agora_ledger::Params::default()`) with `epoch_blocks`
    /// blocks per epoch.
    pub fn devnet(epoch_blocks: u64) -> Params {
        Params {
            epoch_blocks,
            unbonding_epochs: 8,
            audit_window_epochs: 1,
            escalation_epochs: 2,
            answer_epochs: 1,
            claim_window_epochs: 2,
            min_provider_stake: 100,
            min_verifier_stake: 100,
            audit_fee_bps: 0,
            slash_bps: 5_000,
            bounty_bps: 2_000,
            lazy_slash_bps: 5_000,
            false_alarm_bps: 100,
            audit_floor_ppm: 20_000,
            probation_jobs: 50,
            audit_fee: 0,
            plant_bond: 50,
            challenge_bond: 5,
        }
    }

    pub(crate) fn to_sol(self) -> crate::bindings::AgoraState::Params {
        crate::bindings::AgoraState::Params {
            epochBlocks: self.epoch_blocks,
            unbondingEpochs: self.unbonding_epochs,
            auditWindowEpochs: self.audit_window_epochs,
            escalationEpochs: self.escalation_epochs,
            answerEpochs: self.answer_epochs,
            claimWindowEpochs: self.claim_window_epochs,
            minProviderStake: self.min_provider_stake,
            minVerifierStake: self.min_verifier_stake,
            auditFeeBps: self.audit_fee_bps,
            slashBps: self.slash_bps,
            bountyBps: self.bounty_bps,
            lazySlashBps: self.lazy_slash_bps,
            falseAlarmBps: self.false_alarm_bps,
            auditFloorPpm: self.audit_floor_ppm,
            probationJobs: self.probation_jobs,
            auditFee: self.audit_fee,
            plantBond: self.plant_bond,
            challengeBond: self.challenge_bond,
        }
    }
}

/// Where the contracts are: what `--contracts FILE` will name (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The chain id the contracts live on.
    pub chain_id: u64,
    /// The ERC-20 everything is paid and staked in.
    pub token: Address,
    /// The settlement contract.
    pub settlement: Address,
    /// The block the settlement contract was deployed in (epoch 0 starts there).
    pub start_block: u64,
    /// Its rules.
    pub params: Params,
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Deployment, EvmError> {
        let bytes = std::fs::read(path).map_err(|source| EvmError::DeploymentFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| EvmError::DeploymentJson {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes a deployment file.
    pub fn save(&self, path: &Path) -> Result<(), EvmError> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| EvmError::DeploymentJson {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, json).map_err(|source| EvmError::DeploymentFile {
            path: path.to_owned(),
            source,
        })
    }
}

/// Deploys the test stablecoin (mintable by `deployer`) and the settlement contract over it.
pub async fn deploy(
    rpc_url: &str,
    deployer: PrivateKeySigner,
    params: Params,
) -> Result<Deployment, EvmError> {
    let client = SettlementClient::connect_bare(rpc_url, deployer.clone()).await?;
    let token = client.create(TestStablecoin::BYTECODE.clone()).await?;
    deploy_with_token(rpc_url, deployer, token.address, params).await
}

/// Deploys the settlement contract over an existing ERC-20 `token`.
pub async fn deploy_with_token(
    rpc_url: &str,
    deployer: PrivateKeySigner,
    token: Address,
    params: Params,
) -> Result<Deployment, EvmError> {
    let client = SettlementClient::connect_bare(rpc_url, deployer).await?;
    let mut code = AgoraSettlement::BYTECODE.to_vec();
    code.extend(
        AgoraSettlement::constructorCall {
            token_: token,
            p: params.to_sol(),
        }
        .abi_encode(),
    );
    let settlement = client.create(code.into()).await?;
    Ok(Deployment {
        chain_id: client.chain_id(),
        token,
        settlement: settlement.address,
        start_block: settlement.block,
        params,
    })
}
