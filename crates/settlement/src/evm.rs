//! An EVM chain as [`Settlement`]: the `AgoraSettlement` contract through `agora-evm`.

use crate::{ChannelView, Refusal, Settlement, SettlementError, SignedReceipt, StakeView};
use agora_evm::bindings::AgoraSettlement::AgoraSettlementErrors as E;
use agora_evm::receipts::{receipt_proof, receipt_root, ReceiptLeaf};
use agora_evm::{EvmError, FraudEvidence, ReceiptCommitment, SettlementClient};
use alloy::primitives::{Address, B256};
use alloy::providers::Provider;
use std::sync::Arc;

/// One account on the settlement contract.
#[derive(Clone)]
pub struct EvmSettlement {
    client: Arc<SettlementClient>,
    /// Network keys verified for accounts (`crate::network`).
    pub(crate) keys: Arc<std::sync::Mutex<crate::network::KeyCache>>,
}

impl EvmSettlement {
    /// This verifier's signed confirmation, with its address.
    fn confirmation(
        &self,
        sig: Result<[u8; 65], EvmError>,
    ) -> Result<(Address, [u8; 65]), SettlementError> {
        Ok((self.client.address(), sig.map_err(evm_err)?))
    }

    /// Wraps a connected client.
    pub fn new(client: SettlementClient) -> EvmSettlement {
        EvmSettlement {
            client: Arc::new(client),
            keys: Arc::default(),
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &SettlementClient {
        &self.client
    }
}

fn refusal(e: &E) -> Refusal {
    match e {
        E::InsufficientStake(_) => Refusal::InsufficientStake,
        E::StillUnbonding(_) => Refusal::StillUnbonding,
        E::UnknownChannel(_) => Refusal::UnknownChannel,
        E::ChannelIsClosed(_) => Refusal::ChannelClosed,
        E::NotChannelPayer(_) => Refusal::NotChannelPayer,
        E::NotChannelProvider(_) => Refusal::NotChannelProvider,
        E::ForgedVoucher(_) => Refusal::ForgedVoucher,
        E::DoubleClaim(_) => Refusal::DoubleClaim,
        E::OverClaim(_) => Refusal::OverClaim,
        E::ChannelNotExpired(_) => Refusal::ChannelNotExpired,
        E::ChannelNotDue(_) => Refusal::ChannelNotDue,
        E::ChannelTimeoutTooShort(_) => Refusal::ChannelTimeout,
        E::WrongEpoch(_) => Refusal::WrongEpoch,
        E::RootAlreadyPosted(_) => Refusal::RootAlreadyPosted,
        E::NotAssigned(_) => Refusal::NotAssigned,
        E::AuditWindow(_) => Refusal::AuditWindow,
        E::AlreadyCommitted(_) => Refusal::AlreadyCommitted,
        E::BadReveal(_) => Refusal::BadReveal,
        E::ConflictedVerdict(_) => Refusal::ConflictedVerdict,
        E::NotVerifier(_) => Refusal::NotVerifier,
        E::BadConfirmation(_) => Refusal::BadSignature,
        E::UnknownReceiptRoot(_) => Refusal::UnknownReceiptRoot,
        E::BadReceiptProof(_) => Refusal::BadReceiptProof,
        E::AlreadyJudged(_) => Refusal::AlreadyJudged,
        E::UnrevealedVerdict(_) => Refusal::UnrevealedVerdict,
        E::NoDemand(_) | E::DemandClosed(_) | E::AnswerStillDue(_) => Refusal::Demand,
        E::ForgedReceipt(_) => Refusal::ForgedReceipt,
        E::LateReceiptRoot(_) => Refusal::LateReceiptRoot,
        // The ledger's words for these: a malformed challenge or answer.
        E::AlreadyChallenged(_) => Refusal::AlreadyChallenged,
        E::NoChallenge(_) | E::NotOpenToAnswer(_) => Refusal::Malformed,
        // The token refused to move the sender's tokens: not enough of them.
        E::TokenCallFailed(_) => Refusal::Overdraft,
        E::ZeroAmount(_)
        | E::AmountTooLarge(_)
        | E::BadChannelParty(_)
        | E::BadReceiptCount(_)
        | E::BadNetworkKeyBinding(_)
        | E::BadLeafIndex(_)
        | E::PlantExists(_)
        | E::OnePlantPerRoot(_) => Refusal::Malformed,
        other => Refusal::Other {
            code: format!("{other:?}"),
        },
    }
}

pub(crate) fn evm_err(e: EvmError) -> SettlementError {
    match &e {
        EvmError::Refused(agora_evm::Refusal::Settlement(s)) => {
            SettlementError::Refused(refusal(s))
        }
        EvmError::Refused(agora_evm::Refusal::Token(_)) => {
            SettlementError::Refused(Refusal::Overdraft)
        }
        _ => SettlementError::Evm(Box::new(e)),
    }
}

impl Settlement for EvmSettlement {
    type Account = Address;
    type ChannelId = B256;
    type VoucherSig = [u8; 65];
    type Receipt = ReceiptLeaf;
    type Confirmation = (Address, [u8; 65]);

    fn account(&self) -> Address {
        self.client.address()
    }

    async fn balance(&self, who: Address) -> Result<u128, SettlementError> {
        self.client.token_balance(who).await.map_err(evm_err)
    }

    async fn stake_of(&self, who: Address) -> Result<StakeView, SettlementError> {
        let a = self.client.account(who).await.map_err(evm_err)?;
        Ok(StakeView {
            stake: a.stake,
            unbonding: a.unbonding,
            verifier: a.verifier,
        })
    }

    /// The epoch of the next block (where the next transaction lands).
    async fn epoch(&self) -> Result<u64, SettlementError> {
        let d = self
            .client
            .deployment()
            .ok_or(SettlementError::Evm(Box::new(EvmError::NotDeployed)))?;
        let latest = self
            .client
            .provider()
            .get_block_number()
            .await
            .map_err(|source| {
                SettlementError::Evm(Box::new(EvmError::Rpc {
                    what: "eth_blockNumber",
                    attempts: 1,
                    source,
                }))
            })?;
        Ok((latest + 1).saturating_sub(d.start_block) / d.params.epoch_blocks)
    }

    async fn stake(&self, value: u128) -> Result<(), SettlementError> {
        self.client.stake(value).await.map(drop).map_err(evm_err)
    }

    async fn unstake(&self, value: u128) -> Result<(), SettlementError> {
        self.client.unstake(value).await.map(drop).map_err(evm_err)
    }

    async fn withdraw(&self) -> Result<(), SettlementError> {
        self.client.withdraw().await.map(drop).map_err(evm_err)
    }

    async fn register_verifier(&self, extra: u128) -> Result<(), SettlementError> {
        self.client
            .register_verifier(extra)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn open_channel(
        &self,
        provider: Address,
        value: u128,
        timeout_epochs: u64,
    ) -> Result<B256, SettlementError> {
        self.client
            .open_channel(provider, value, timeout_epochs)
            .await
            .map(|(id, _)| id)
            .map_err(evm_err)
    }

    async fn top_up(&self, channel: B256, value: u128) -> Result<(), SettlementError> {
        self.client
            .top_up(channel, value)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn sign_voucher(&self, channel: B256, cumulative: u128) -> Result<[u8; 65], SettlementError> {
        self.client
            .sign_voucher(channel, cumulative)
            .map_err(evm_err)
    }

    async fn claim(
        &self,
        channel: B256,
        cumulative: u128,
        sig: &[u8; 65],
    ) -> Result<(), SettlementError> {
        self.client
            .claim(channel, cumulative, sig)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn claim_until_final(
        &self,
        channel: B256,
        cumulative: u128,
        sig: &[u8; 65],
        depth: u64,
    ) -> Result<u128, SettlementError> {
        self.client
            .claim_until_final(channel, cumulative, sig, depth)
            .await
            .map(|c| c.claimed)
            .map_err(evm_err)
    }

    async fn request_close(&self, channel: B256) -> Result<(), SettlementError> {
        self.client
            .request_close(channel)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn finalize_close(&self, channel: B256) -> Result<(), SettlementError> {
        self.client
            .finalize_close(channel)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn channel(&self, channel: B256) -> Result<Option<ChannelView>, SettlementError> {
        let c = self.client.channel(channel).await.map_err(evm_err)?;
        Ok(c.map(|c| ChannelView {
            deposit: c.deposit,
            claimed: c.claimed,
            closed: c.closed,
            refunded: c.refunded,
        }))
    }

    async fn post_root(
        &self,
        epoch: u64,
        root: [u8; 32],
        receipts: u64,
        late: bool,
    ) -> Result<(), SettlementError> {
        let root = B256::from(root);
        let r = if late {
            self.client.post_late_root(epoch, root, receipts).await
        } else {
            self.client.post_root(epoch, root, receipts).await
        };
        r.map(drop).map_err(evm_err)
    }

    fn chain_id(&self) -> u64 {
        self.client.chain_id()
    }

    fn channel_hash(channel: B256) -> [u8; 32] {
        channel.0
    }

    fn receipt(receipt: &SignedReceipt) -> ReceiptLeaf {
        ReceiptLeaf::of(receipt)
    }

    fn receipt_root(receipts: &[ReceiptLeaf]) -> [u8; 32] {
        receipt_root(receipts).0
    }

    fn receipt_proof(receipts: &[ReceiptLeaf], index: usize) -> Vec<[u8; 32]> {
        receipt_proof(receipts, index)
            .unwrap_or_default()
            .iter()
            .map(|h| h.0)
            .collect()
    }

    async fn assignee(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<Option<Address>, SettlementError> {
        self.client
            .assignee(provider, epoch, index)
            .await
            .map_err(evm_err)
    }

    async fn commit_audit(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: [u8; 32],
    ) -> Result<(), SettlementError> {
        self.client
            .commit_audit(provider, epoch, index, passed, B256::from(salt))
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn reveal_audit(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: [u8; 32],
        salt: [u8; 32],
    ) -> Result<(), SettlementError> {
        self.client
            .reveal_audit(
                provider,
                epoch,
                index,
                passed,
                B256::from(receipt),
                B256::from(salt),
            )
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn confirm_fraud(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        receipt: &ReceiptLeaf,
        proof: &[[u8; 32]],
    ) -> Result<(Address, [u8; 65]), SettlementError> {
        self.confirmation(
            self.client
                .sign_verdict(&evidence(provider, epoch, index, receipt, proof)),
        )
    }

    async fn fraud_verdict(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        receipt: &ReceiptLeaf,
        proof: &[[u8; 32]],
        confirmation: &(Address, [u8; 65]),
    ) -> Result<(), SettlementError> {
        self.client
            .fraud_verdict(
                &evidence(provider, epoch, index, receipt, proof),
                confirmation.0,
                &confirmation.1,
            )
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn expire_alarm(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<(), SettlementError> {
        self.client
            .expire_alarm(provider, epoch, index)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn plant_commitment(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
    ) -> [u8; 32] {
        agora_evm::plant_commitment(
            self.client.chain_id(),
            self.client
                .deployment()
                .map_or(Address::ZERO, |d| d.settlement),
            provider,
            epoch,
            index,
            B256::from(salt),
        )
        .0
    }

    async fn plant(&self, commitment: [u8; 32]) -> Result<(), SettlementError> {
        self.client
            .plant(B256::from(commitment))
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn confirm_plant(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<(Address, [u8; 65]), SettlementError> {
        self.confirmation(self.client.sign_plant_confirmation(provider, epoch, index))
    }

    async fn reveal_plant(
        &self,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
        confirmation: Option<&(Address, [u8; 65])>,
    ) -> Result<(), SettlementError> {
        self.client
            .reveal_plant(epoch, index, B256::from(salt), confirmation.copied())
            .await
            .map(drop)
            .map_err(evm_err)
    }

    // ----- disputes -----

    type ServedReceipt = ReceiptCommitment;

    /// This account's EIP-712 signature over the receipt's leaf and epoch.
    fn serve_receipt(&self, receipt: &SignedReceipt) -> Result<ReceiptCommitment, SettlementError> {
        self.client
            .sign_receipt(&ReceiptLeaf::of(receipt), receipt.receipt.epoch)
            .map_err(evm_err)
    }

    async fn demand_material(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<(), SettlementError> {
        self.client
            .demand_material(provider, epoch, index)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn answer_demand(
        &self,
        epoch: u64,
        index: u64,
        receipt: &ReceiptLeaf,
        proof: &[[u8; 32]],
        material: [u8; 32],
    ) -> Result<(), SettlementError> {
        let proof: Vec<B256> = proof.iter().map(|h| B256::from(*h)).collect();
        self.client
            .answer_demand(epoch, index, receipt, &proof, B256::from(material))
            .await
            .map(drop)
            .map_err(evm_err)
    }

    fn confirm_withheld(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<(Address, [u8; 65]), SettlementError> {
        self.confirmation(self.client.sign_withheld(provider, epoch, index))
    }

    async fn withheld_verdict(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        confirmation: &(Address, [u8; 65]),
    ) -> Result<(), SettlementError> {
        self.client
            .withheld_verdict(provider, epoch, index, confirmation.0, &confirmation.1)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn challenge_inclusion(
        &self,
        receipt: &ReceiptCommitment,
    ) -> Result<(), SettlementError> {
        self.client
            .challenge_inclusion(receipt)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn answer_inclusion(
        &self,
        receipt: [u8; 32],
        epoch: u64,
        index: u64,
        proof: &[[u8; 32]],
    ) -> Result<(), SettlementError> {
        let proof: Vec<B256> = proof.iter().map(|h| B256::from(*h)).collect();
        self.client
            .answer_inclusion(B256::from(receipt), epoch, index, &proof)
            .await
            .map(drop)
            .map_err(evm_err)
    }

    async fn expire_challenge(&self, receipt: [u8; 32]) -> Result<(), SettlementError> {
        self.client
            .expire_challenge(B256::from(receipt))
            .await
            .map(drop)
            .map_err(evm_err)
    }
}

fn evidence(
    provider: Address,
    epoch: u64,
    index: u64,
    receipt: &ReceiptLeaf,
    proof: &[[u8; 32]],
) -> FraudEvidence {
    FraudEvidence {
        provider,
        epoch,
        index,
        leaf: *receipt,
        proof: proof.iter().map(|h| B256::from(*h)).collect(),
    }
}
