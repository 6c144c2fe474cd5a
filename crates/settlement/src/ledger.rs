//! The embedded ledger as [`Settlement`]: signed ledger transactions over its HTTP API.

use crate::{ChannelView, Refusal, Settlement, SettlementError, SignedReceipt, StakeView};
use agora_core::{AccountId, Amount, Hash32, Keypair, Signature};
use agora_ledger::api::SubmitReceipt;
use agora_ledger::client::Client;
use agora_ledger::{
    audit_commitment, plant_commitment, sign_plant_confirmation, ClientError, Event, Fault, Tx,
    TxBody, Verdict, Voucher,
};

/// One account on an `agora ledger serve` node.
#[derive(Clone)]
pub struct LedgerSettlement {
    client: Client,
    key: Keypair,
    chain_id: u64,
}

fn refusal(code: &str) -> Refusal {
    match code {
        "overdraft" => Refusal::Overdraft,
        "insufficient_stake" => Refusal::InsufficientStake,
        "unknown_channel" => Refusal::UnknownChannel,
        "channel_closed" => Refusal::ChannelClosed,
        "not_channel_payer" => Refusal::NotChannelPayer,
        "not_channel_provider" => Refusal::NotChannelProvider,
        "forged_voucher" => Refusal::ForgedVoucher,
        "double_claim" => Refusal::DoubleClaim,
        "over_claim" => Refusal::OverClaim,
        "channel_not_expired" => Refusal::ChannelNotExpired,
        "channel_timeout" => Refusal::ChannelTimeout,
        "wrong_epoch" => Refusal::WrongEpoch,
        "root_already_posted" => Refusal::RootAlreadyPosted,
        "malformed" => Refusal::Malformed,
        "not_assigned" => Refusal::NotAssigned,
        "audit_window" => Refusal::AuditWindow,
        "already_committed" => Refusal::AlreadyCommitted,
        "bad_reveal" => Refusal::BadReveal,
        "conflicted_verdict" => Refusal::ConflictedVerdict,
        "not_verifier" => Refusal::NotVerifier,
        "bad_signature" => Refusal::BadSignature,
        "unknown_receipt_root" => Refusal::UnknownReceiptRoot,
        "bad_receipt_proof" => Refusal::BadReceiptProof,
        "already_judged" => Refusal::AlreadyJudged,
        "already_challenged" => Refusal::AlreadyChallenged,
        "unrevealed_verdict" => Refusal::UnrevealedVerdict,
        "demand" => Refusal::Demand,
        "forged_receipt" => Refusal::ForgedReceipt,
        "late_receipt_root" => Refusal::LateReceiptRoot,
        other => Refusal::Other { code: other.into() },
    }
}

pub(crate) fn ledger_err(e: ClientError) -> SettlementError {
    match e {
        ClientError::Rejected { code, .. } => SettlementError::Refused(refusal(&code)),
        other => SettlementError::Ledger(other),
    }
}

impl LedgerSettlement {
    /// `key`'s account on the ledger `client` talks to, whose chain id is `chain_id`.
    pub fn new(client: Client, key: Keypair, chain_id: u64) -> LedgerSettlement {
        LedgerSettlement {
            client,
            key,
            chain_id,
        }
    }

    /// A handle for reads and checks only (stake, channels, events, voucher signers): its
    /// key is fresh and has no account, so nothing it could sign is worth anything.
    pub fn reader(
        client: Client,
        chain_id: u64,
    ) -> Result<LedgerSettlement, agora_core::CoreError> {
        Ok(LedgerSettlement::new(
            client,
            Keypair::generate()?,
            chain_id,
        ))
    }

    /// The ledger client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a blocking ledger call off the async runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LedgerSettlement) -> Result<T, SettlementError> + Send + 'static,
    ) -> Result<T, SettlementError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me)).await?
    }

    fn send_blocking(&self, body: TxBody) -> Result<SubmitReceipt, SettlementError> {
        let from = self.key.account();
        let nonce = self.client.next_nonce(&from).map_err(ledger_err)?;
        let tx = Tx {
            chain_id: self.chain_id,
            from,
            nonce,
            body,
        }
        .sign(&self.key);
        self.client.submit(&tx).map_err(ledger_err)
    }

    async fn send(&self, body: TxBody) -> Result<SubmitReceipt, SettlementError> {
        self.blocking(move |me| me.send_blocking(body)).await
    }

    fn verdict(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[[u8; 32]],
    ) -> Verdict {
        Verdict {
            chain_id: self.chain_id,
            provider,
            epoch,
            index,
            fault: Fault::Fraud {
                receipt: receipt.clone(),
                proof: proof.iter().map(|h| Hash32::from_bytes(*h)).collect(),
            },
        }
    }

    fn withheld(&self, provider: AccountId, epoch: u64, index: u64) -> Verdict {
        Verdict {
            chain_id: self.chain_id,
            provider,
            epoch,
            index,
            fault: Fault::Withheld,
        }
    }

    /// Advances the epoch until it is at least `epoch` (the sequencer's key only).
    pub async fn advance_to_epoch(&self, epoch: u64) -> Result<(), SettlementError> {
        while self.epoch().await? < epoch {
            self.send(TxBody::AdvanceEpoch).await?;
        }
        Ok(())
    }
}

fn amount(a: u128) -> Amount {
    Amount::new(a)
}

impl Settlement for LedgerSettlement {
    type Account = AccountId;
    type ChannelId = Hash32;
    type VoucherSig = (AccountId, Signature);
    type Receipt = SignedReceipt;
    type Confirmation = (AccountId, Signature);

    fn account(&self) -> AccountId {
        self.key.account()
    }

    async fn balance(&self, who: AccountId) -> Result<u128, SettlementError> {
        self.blocking(move |me| {
            let a = me.client.account(&who).map_err(ledger_err)?;
            Ok(a.map_or(0, |a| a.balance.units()))
        })
        .await
    }

    async fn stake_of(&self, who: AccountId) -> Result<StakeView, SettlementError> {
        self.blocking(move |me| {
            let Some(a) = me.client.account(&who).map_err(ledger_err)? else {
                return Ok(StakeView::default());
            };
            Ok(StakeView {
                stake: a.stake.units(),
                unbonding: a.unbonding.iter().map(|u| u.amount.units()).sum(),
                verifier: a.verifier,
            })
        })
        .await
    }

    async fn epoch(&self) -> Result<u64, SettlementError> {
        self.blocking(|me| Ok(me.client.status().map_err(ledger_err)?.epoch))
            .await
    }

    async fn stake(&self, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::Stake {
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    async fn unstake(&self, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::Unstake {
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    /// The ledger releases matured unbonding itself at the epoch's end: this only checks
    /// that nothing is still unbonding.
    async fn withdraw(&self) -> Result<(), SettlementError> {
        let s = self.stake_of(self.account()).await?;
        if s.unbonding > 0 {
            return Err(SettlementError::Refused(Refusal::StillUnbonding));
        }
        Ok(())
    }

    async fn register_verifier(&self, extra: u128) -> Result<(), SettlementError> {
        self.send(TxBody::RegisterVerifier {
            stake: amount(extra),
        })
        .await
        .map(drop)
    }

    async fn open_channel(
        &self,
        provider: AccountId,
        value: u128,
        timeout_epochs: u64,
    ) -> Result<Hash32, SettlementError> {
        let r = self
            .send(TxBody::OpenChannel {
                provider,
                amount: amount(value),
                timeout_epochs,
            })
            .await?;
        r.events
            .iter()
            .find_map(|e| match e {
                Event::ChannelOpened { channel, .. } => Some(*channel),
                _ => None,
            })
            .ok_or(SettlementError::Refused(Refusal::Other {
                code: "no ChannelOpened event".into(),
            }))
    }

    async fn top_up(&self, channel: Hash32, value: u128) -> Result<(), SettlementError> {
        self.send(TxBody::TopUpChannel {
            channel,
            amount: amount(value),
        })
        .await
        .map(drop)
    }

    fn sign_voucher(
        &self,
        channel: Hash32,
        cumulative: u128,
    ) -> Result<(AccountId, Signature), SettlementError> {
        let v = Voucher {
            chain_id: self.chain_id,
            channel,
            cumulative: amount(cumulative),
        };
        Ok((self.key.account(), v.sign(&self.key)))
    }

    async fn claim(
        &self,
        channel: Hash32,
        cumulative: u128,
        sig: &(AccountId, Signature),
    ) -> Result<(), SettlementError> {
        self.send(TxBody::ClaimVoucher {
            voucher: Voucher {
                chain_id: self.chain_id,
                channel,
                cumulative: amount(cumulative),
            },
            payer: sig.0,
            payer_sig: sig.1,
        })
        .await
        .map(drop)
    }

    /// A committed claim is final: the ledger's sequencer does not reorder its blocks.
    async fn claim_until_final(
        &self,
        channel: Hash32,
        cumulative: u128,
        sig: &(AccountId, Signature),
        _depth: u64,
    ) -> Result<u128, SettlementError> {
        let sent = self.claim(channel, cumulative, sig).await;
        let claimed = self.channel(channel).await?.map_or(0, |c| c.claimed);
        match sent {
            Ok(()) => Ok(claimed),
            // Covered by an earlier claim of this voucher or a later one.
            Err(SettlementError::Refused(Refusal::DoubleClaim)) if claimed >= cumulative => {
                Ok(claimed)
            }
            Err(e) => Err(e),
        }
    }

    async fn request_close(&self, channel: Hash32) -> Result<(), SettlementError> {
        self.send(TxBody::CloseChannel { channel }).await.map(drop)
    }

    /// The ledger closes a due channel itself at the epoch's end: this only checks it did.
    async fn finalize_close(&self, channel: Hash32) -> Result<(), SettlementError> {
        match self.channel(channel).await? {
            None => Err(SettlementError::Refused(Refusal::UnknownChannel)),
            Some(c) if c.closed => Ok(()),
            Some(_) => Err(SettlementError::Refused(Refusal::ChannelNotDue)),
        }
    }

    async fn channel(&self, channel: Hash32) -> Result<Option<ChannelView>, SettlementError> {
        self.blocking(move |me| {
            let c = me.client.channel(&channel).map_err(ledger_err)?;
            Ok(c.map(|c| ChannelView {
                deposit: c.deposit.units(),
                claimed: c.claimed.units(),
                closed: c.closed,
                refunded: c.refunded.units(),
            }))
        })
        .await
    }

    async fn post_root(
        &self,
        epoch: u64,
        root: [u8; 32],
        receipts: u64,
        late: bool,
    ) -> Result<(), SettlementError> {
        self.send(TxBody::receipt_root(
            epoch,
            Hash32::from_bytes(root),
            receipts,
            late,
        ))
        .await
        .map(drop)
    }

    fn chain_id(&self) -> u64 {
        self.chain_id
    }

    fn channel_hash(channel: Hash32) -> [u8; 32] {
        *channel.as_bytes()
    }

    fn receipt(receipt: &SignedReceipt) -> SignedReceipt {
        receipt.clone()
    }

    fn receipt_root(receipts: &[SignedReceipt]) -> [u8; 32] {
        *agora_core::merkle::root(&hashes(receipts)).as_bytes()
    }

    fn receipt_proof(receipts: &[SignedReceipt], index: usize) -> Vec<[u8; 32]> {
        agora_core::merkle::proof(&hashes(receipts), index)
            .unwrap_or_default()
            .iter()
            .map(|h| *h.as_bytes())
            .collect()
    }

    async fn assignee(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<Option<AccountId>, SettlementError> {
        self.blocking(move |me| {
            let plan = me.client.audit_plan(&provider, epoch).map_err(ledger_err)?;
            Ok(plan.and_then(|p| p.leaves.iter().find(|(i, _)| *i == index).map(|(_, v)| *v)))
        })
        .await
    }

    async fn commit_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: [u8; 32],
    ) -> Result<(), SettlementError> {
        let commitment = audit_commitment(
            self.chain_id,
            &self.key.account(),
            &provider,
            epoch,
            index,
            passed,
            &Hash32::from_bytes(salt),
        );
        self.send(TxBody::CommitAudit {
            provider,
            epoch,
            index,
            commitment,
        })
        .await
        .map(drop)
    }

    async fn reveal_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: [u8; 32],
        salt: [u8; 32],
    ) -> Result<(), SettlementError> {
        self.send(TxBody::RevealAudit {
            provider,
            epoch,
            index,
            passed,
            receipt: Hash32::from_bytes(receipt),
            salt: Hash32::from_bytes(salt),
        })
        .await
        .map(drop)
    }

    fn confirm_fraud(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[[u8; 32]],
    ) -> Result<(AccountId, Signature), SettlementError> {
        let v = self.verdict(provider, epoch, index, receipt, proof);
        Ok((self.key.account(), v.sign(&self.key)))
    }

    async fn fraud_verdict(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[[u8; 32]],
        confirmation: &(AccountId, Signature),
    ) -> Result<(), SettlementError> {
        self.send(TxBody::AuditVerdict {
            verdict: self.verdict(provider, epoch, index, receipt, proof),
            confirmer: confirmation.0,
            confirmer_sig: confirmation.1,
        })
        .await
        .map(drop)
    }

    /// The ledger charges an unconfirmed failure itself when the epoch after its verdict
    /// window starts; nothing to send.
    async fn expire_alarm(
        &self,
        _provider: AccountId,
        _epoch: u64,
        _index: u64,
    ) -> Result<(), SettlementError> {
        Ok(())
    }

    fn plant_commitment(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
    ) -> [u8; 32] {
        *plant_commitment(
            self.chain_id,
            &provider,
            epoch,
            index,
            &Hash32::from_bytes(salt),
        )
        .as_bytes()
    }

    async fn plant(&self, commitment: [u8; 32]) -> Result<(), SettlementError> {
        self.send(TxBody::PlantFraud {
            commitment: Hash32::from_bytes(commitment),
        })
        .await
        .map(drop)
    }

    fn confirm_plant(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(AccountId, Signature), SettlementError> {
        Ok((
            self.key.account(),
            sign_plant_confirmation(&self.key, self.chain_id, &provider, epoch, index),
        ))
    }

    async fn reveal_plant(
        &self,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
        confirmation: Option<&(AccountId, Signature)>,
    ) -> Result<(), SettlementError> {
        self.send(TxBody::RevealPlant {
            provider: self.key.account(),
            epoch,
            index,
            salt: Hash32::from_bytes(salt),
            confirmation: confirmation.copied(),
        })
        .await
        .map(drop)
    }

    // ----- disputes -----

    type ServedReceipt = SignedReceipt;

    /// The receipt signed with this account's key: the provider's own signature for the
    /// provider, a forgery for anyone else.
    fn serve_receipt(&self, receipt: &SignedReceipt) -> Result<SignedReceipt, SettlementError> {
        Ok(receipt.receipt.clone().sign(&self.key))
    }

    async fn demand_material(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(), SettlementError> {
        self.send(TxBody::DemandMaterial {
            provider,
            epoch,
            index,
        })
        .await
        .map(drop)
    }

    async fn answer_demand(
        &self,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[[u8; 32]],
        material: [u8; 32],
    ) -> Result<(), SettlementError> {
        self.send(TxBody::AnswerDemand {
            epoch,
            index,
            receipt: receipt.clone(),
            proof: proof.iter().map(|h| Hash32::from_bytes(*h)).collect(),
            material: Hash32::from_bytes(material),
        })
        .await
        .map(drop)
    }

    fn confirm_withheld(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(AccountId, Signature), SettlementError> {
        let v = self.withheld(provider, epoch, index);
        Ok((self.key.account(), v.sign(&self.key)))
    }

    async fn withheld_verdict(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        confirmation: &(AccountId, Signature),
    ) -> Result<(), SettlementError> {
        self.send(TxBody::AuditVerdict {
            verdict: self.withheld(provider, epoch, index),
            confirmer: confirmation.0,
            confirmer_sig: confirmation.1,
        })
        .await
        .map(drop)
    }

    async fn challenge_inclusion(&self, receipt: &SignedReceipt) -> Result<(), SettlementError> {
        self.send(TxBody::ChallengeInclusion {
            receipt: receipt.clone(),
        })
        .await
        .map(drop)
    }

    async fn answer_inclusion(
        &self,
        receipt: [u8; 32],
        epoch: u64,
        index: u64,
        proof: &[[u8; 32]],
    ) -> Result<(), SettlementError> {
        self.send(TxBody::AnswerInclusion {
            receipt: Hash32::from_bytes(receipt),
            epoch,
            index,
            proof: proof.iter().map(|h| Hash32::from_bytes(*h)).collect(),
        })
        .await
        .map(drop)
    }

    /// The ledger slashes for an unanswered challenge itself when the epoch after its
    /// deadline starts; nothing to send.
    async fn expire_challenge(&self, _receipt: [u8; 32]) -> Result<(), SettlementError> {
        Ok(())
    }
}

fn hashes(receipts: &[SignedReceipt]) -> Vec<Hash32> {
    receipts.iter().map(SignedReceipt::hash).collect()
}
