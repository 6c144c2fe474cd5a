//! What a verifier does on settlement, on either one: [`VerifierSettlement`].
//!
//! Parties are named by their ed25519 network keys, as in [`NetworkSettlement`]; on an EVM
//! chain the implementation maps a key to the one account whose binding of it verifies and
//! back. The verifier registers (bonding stake; on a chain it also binds its network key),
//! follows roots, reveals and material demands ([`VerifierEvent`]), reads a posted root and
//! the leaves assigned to it from settlement itself (never from a requester), commits and
//! reveals its outcomes, demands withheld material, and co-signs and brings verdicts with
//! the settlement's own signature kind ([`VerdictSignature`]): ed25519 over the ledger's
//! `Verdict`, or the EIP-712 `Verdict` (fraud) / `Withheld` signature on a chain.
//!
//! A verdict travels between verifiers as the ledger's [`Verdict`] (chain id, provider key,
//! epoch, leaf, and the fault: the provider-signed receipt with its path in the
//! settlement's own tree, or `Withheld`); on a chain the receipt becomes its `ReceiptLeaf`.

use crate::evm::{evm_err, EvmSettlement};
use crate::ledger::{ledger_err, LedgerSettlement};
use crate::network::{NetworkSettlement, SettlementFuture};
use crate::open::Opened;
use crate::{Refusal, Settlement, SettlementError};
use agora_core::{AccountId, Amount, Hash32, Keypair, Signature};
use agora_evm::bindings::AgoraSettlement;
use agora_evm::receipts::ReceiptLeaf;
use agora_ledger::{Fault, Verdict, Windows};
use alloy::primitives::Address;
use alloy::sol_types::SolEvent;
use std::sync::Arc;
use std::time::Duration;

/// A posted receipt root, as settlement records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootView {
    /// The root (BLAKE3 tree on the ledger, keccak leaf tree on a chain).
    pub root: Hash32,
    /// Leaves under it.
    pub receipts: u64,
    /// A late root with every leaf audited: the only kind that may hold receipts of epochs
    /// before the previous one.
    pub full_audit: bool,
}

/// The audit timeline's parameters (the same rules on both settlements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditTimeline {
    /// Epochs a selected leaf stays open for its commitment, and then for its reveal.
    pub audit_window_epochs: u64,
    /// Epochs in which a verdict may land.
    pub escalation_epochs: u64,
}

impl AuditTimeline {
    /// The windows of a root of `epoch` (`None` on overflow).
    pub fn windows(&self, epoch: u64) -> Option<Windows> {
        let params = agora_ledger::Params {
            audit_window_epochs: self.audit_window_epochs,
            escalation_epochs: self.escalation_epochs,
            ..agora_ledger::Params::default()
        };
        Windows::of(&params, epoch).ok()
    }
}

/// What a verifier follows on settlement, parties named by their network keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifierEvent {
    /// A new epoch began.
    EpochAdvanced {
        /// The new epoch.
        epoch: u64,
    },
    /// A provider posted a receipt root.
    RootPosted {
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The root.
        root: Hash32,
        /// Leaves under it.
        receipts: u64,
    },
    /// A verifier revealed an audit outcome.
    AuditRevealed {
        /// The verifier.
        verifier: AccountId,
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// The outcome.
        passed: bool,
        /// The transaction that revealed it (a confirmer names it to the provider).
        tx: Hash32,
    },
    /// A verifier demanded a leaf's material.
    MaterialDemanded {
        /// The verifier.
        verifier: AccountId,
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// The last epoch the provider may answer in.
        due_epoch: u64,
    },
    /// The provider answered a demand.
    MaterialAnswered {
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
    },
}

/// Verifier events read from a cursor on: pass `next` to the next call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierEvents {
    /// In settlement order.
    pub events: Vec<VerifierEvent>,
    /// Where the next read starts (a ledger height or an EVM block number).
    pub next: u64,
}

/// A confirmer's signature over a verdict, of one settlement's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictSignature {
    /// The ledger's: ed25519 over the `Verdict`.
    Ed25519(Signature),
    /// A chain's: the EIP-712 `Verdict` (fraud) or `Withheld` signature, 65 bytes.
    Eip712([u8; 65]),
}

/// A verifier's settlement; see the module docs.
pub trait VerifierSettlement: NetworkSettlement {
    /// Registers this account as a verifier bonding `stake`, unless it is one; on a chain it
    /// first binds `key` (the verifier's network key) to the account if it is not bound.
    fn register_verifier_key<'a>(
        &'a self,
        key: &'a Keypair,
        stake: Amount,
    ) -> SettlementFuture<'a, ()>;
    /// Whether network key `key` stands for a registered verifier now.
    fn is_verifier_key(&self, key: AccountId) -> SettlementFuture<'_, bool>;
    /// The audit timeline's parameters.
    fn audit_timeline(&self) -> SettlementFuture<'_, AuditTimeline>;
    /// The verifier's events from cursor `from` on, waiting up to `wait` for one.
    fn verifier_events_from(
        &self,
        from: u64,
        wait: Duration,
    ) -> SettlementFuture<'_, VerifierEvents>;
    /// The root `provider` posted for `epoch`, as settlement records it.
    fn posted_root(
        &self,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Option<RootView>>;
    /// The leaves of `provider`'s root of `epoch` assigned to this account (empty until the
    /// selecting beacon exists; on a chain it records the beacon if nobody has).
    fn leaves_assigned_to_me(
        &self,
        me: AccountId,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Vec<u64>>;
    /// Commits this verifier's outcome for a leaf; answers the epoch the commitment counts
    /// in (its reveal is accepted from the next one on).
    fn commit_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: Hash32,
    ) -> SettlementFuture<'_, u64>;
    /// Reveals a committed outcome, naming the leaf it judged as this settlement's tree holds
    /// it ([`NetworkSettlement::receipt_leaf_of`]; zero may do for a failure): on probation a
    /// receipt earns a clean audit once, whatever roots hold it.
    fn reveal_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: Hash32,
        salt: Hash32,
    ) -> SettlementFuture<'_, ()>;
    /// Demands a leaf's material, as its assigned verifier.
    fn demand_leaf_material(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, ()>;
    /// Co-signs `verdict` as a second verifier, with the settlement's signature kind.
    fn confirm_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
    ) -> SettlementFuture<'a, VerdictSignature>;
    /// Brings `verdict` (fraud: slash, bounty, refund; or `Withheld`), confirmed by the
    /// verifier whose network key is `confirmer`.
    fn submit_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
        confirmer: AccountId,
        sig: &'a VerdictSignature,
    ) -> SettlementFuture<'a, ()>;
}

impl Opened {
    /// The verifier's settlement.
    pub fn verifier(&self) -> Arc<dyn VerifierSettlement> {
        match self {
            Opened::Ledger(s) => s.clone(),
            Opened::Evm(s) => s.clone(),
        }
    }
}

fn refused(r: Refusal) -> SettlementError {
    SettlementError::Refused(r)
}

fn unknown_account() -> SettlementError {
    refused(Refusal::Other {
        code: "UnknownAccount".into(),
    })
}

fn path_bytes(proof: &[Hash32]) -> Vec<[u8; 32]> {
    proof.iter().map(|h| *h.as_bytes()).collect()
}

// ----- the embedded ledger -----

impl VerifierSettlement for LedgerSettlement {
    fn register_verifier_key<'a>(
        &'a self,
        key: &'a Keypair,
        stake: Amount,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let me = key.account();
            let client = self.client().clone();
            let acct = tokio::task::spawn_blocking(move || client.account(&me))
                .await?
                .map_err(ledger_err)?;
            match acct {
                None => Err(refused(Refusal::Other {
                    code: format!("account {me} does not exist; fund it first"),
                })),
                Some(a) if a.verifier => Ok(()),
                Some(_) => Settlement::register_verifier(self, stake.units()).await,
            }
        })
    }

    fn is_verifier_key(&self, key: AccountId) -> SettlementFuture<'_, bool> {
        Box::pin(async move {
            let client = self.client().clone();
            let a = tokio::task::spawn_blocking(move || client.account(&key))
                .await?
                .map_err(ledger_err)?;
            Ok(a.is_some_and(|a| a.verifier))
        })
    }

    fn audit_timeline(&self) -> SettlementFuture<'_, AuditTimeline> {
        Box::pin(async move {
            let client = self.client().clone();
            let s = tokio::task::spawn_blocking(move || client.status())
                .await?
                .map_err(ledger_err)?;
            Ok(AuditTimeline {
                audit_window_epochs: s.params.audit_window_epochs,
                escalation_epochs: s.params.escalation_epochs,
            })
        })
    }

    fn verifier_events_from(
        &self,
        from: u64,
        wait: Duration,
    ) -> SettlementFuture<'_, VerifierEvents> {
        Box::pin(async move {
            let client = self.client().clone();
            let blocks = tokio::task::spawn_blocking(move || client.events(from, wait))
                .await?
                .map_err(ledger_err)?;
            let mut out = VerifierEvents {
                events: Vec::new(),
                next: from,
            };
            for b in blocks {
                out.next = out.next.max(b.height.saturating_add(1));
                for tx in &b.txs {
                    out.events
                        .extend(tx.events.iter().filter_map(|e| ledger_event(tx.tx_id, e)));
                }
            }
            Ok(out)
        })
    }

    fn posted_root(
        &self,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Option<RootView>> {
        Box::pin(async move {
            let client = self.client().clone();
            let plan = tokio::task::spawn_blocking(move || client.audit_plan(&provider, epoch))
                .await?
                .map_err(ledger_err)?;
            Ok(plan.map(|p| RootView {
                root: p.root,
                receipts: p.receipts,
                full_audit: p.late && p.audit_ppm == agora_ledger::FULL_AUDIT_PPM,
            }))
        })
    }

    fn leaves_assigned_to_me(
        &self,
        me: AccountId,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Vec<u64>> {
        Box::pin(async move {
            let client = self.client().clone();
            let plan = tokio::task::spawn_blocking(move || client.audit_plan(&provider, epoch))
                .await?
                .map_err(ledger_err)?;
            Ok(plan.map_or_else(Vec::new, |p| {
                p.leaves
                    .iter()
                    .filter(|(_, v)| *v == me)
                    .map(|(i, _)| *i)
                    .collect()
            }))
        })
    }

    fn commit_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: Hash32,
    ) -> SettlementFuture<'_, u64> {
        Box::pin(async move {
            Settlement::commit_audit(self, provider, epoch, index, passed, *salt.as_bytes())
                .await?;
            // At or after the block just committed: a later epoch only delays the reveal,
            // which stays inside its window.
            Settlement::epoch(self).await
        })
    }

    fn reveal_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: Hash32,
        salt: Hash32,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::reveal_audit(
            self,
            provider,
            epoch,
            index,
            passed,
            *receipt.as_bytes(),
            *salt.as_bytes(),
        ))
    }

    fn demand_leaf_material(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::demand_material(self, provider, epoch, index))
    }

    fn confirm_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
    ) -> SettlementFuture<'a, VerdictSignature> {
        Box::pin(async move {
            let (_, sig) = match &verdict.fault {
                Fault::Fraud { receipt, proof } => Settlement::confirm_fraud(
                    self,
                    verdict.provider,
                    verdict.epoch,
                    verdict.index,
                    receipt,
                    &path_bytes(proof),
                )?,
                Fault::Withheld => Settlement::confirm_withheld(
                    self,
                    verdict.provider,
                    verdict.epoch,
                    verdict.index,
                )?,
            };
            Ok(VerdictSignature::Ed25519(sig))
        })
    }

    fn submit_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
        confirmer: AccountId,
        sig: &'a VerdictSignature,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let VerdictSignature::Ed25519(sig) = sig else {
                return Err(refused(Refusal::BadSignature));
            };
            let confirmation = (confirmer, *sig);
            match &verdict.fault {
                Fault::Fraud { receipt, proof } => {
                    Settlement::fraud_verdict(
                        self,
                        verdict.provider,
                        verdict.epoch,
                        verdict.index,
                        receipt,
                        &path_bytes(proof),
                        &confirmation,
                    )
                    .await
                }
                Fault::Withheld => {
                    Settlement::withheld_verdict(
                        self,
                        verdict.provider,
                        verdict.epoch,
                        verdict.index,
                        &confirmation,
                    )
                    .await
                }
            }
        })
    }
}

/// The verifier event a ledger event is, if the verifier follows it.
pub fn ledger_event(tx: Hash32, e: &agora_ledger::Event) -> Option<VerifierEvent> {
    use agora_ledger::Event as L;
    Some(match e {
        L::EpochAdvanced { epoch, .. } => VerifierEvent::EpochAdvanced { epoch: *epoch },
        L::ReceiptRootPosted {
            provider,
            epoch,
            root,
            receipts,
        } => VerifierEvent::RootPosted {
            provider: *provider,
            epoch: *epoch,
            root: *root,
            receipts: *receipts,
        },
        L::AuditRevealed {
            verifier,
            provider,
            epoch,
            index,
            passed,
            ..
        } => VerifierEvent::AuditRevealed {
            verifier: *verifier,
            provider: *provider,
            epoch: *epoch,
            index: *index,
            passed: *passed,
            tx,
        },
        L::MaterialDemanded {
            verifier,
            provider,
            epoch,
            index,
            due_epoch,
        } => VerifierEvent::MaterialDemanded {
            verifier: *verifier,
            provider: *provider,
            epoch: *epoch,
            index: *index,
            due_epoch: *due_epoch,
        },
        L::MaterialAnswered {
            provider,
            epoch,
            index,
            ..
        } => VerifierEvent::MaterialAnswered {
            provider: *provider,
            epoch: *epoch,
            index: *index,
        },
        _ => return None,
    })
}

// ----- an EVM chain -----

impl EvmSettlement {
    /// The account network key `key` stands for, or `UnknownAccount`.
    async fn account_for(&self, key: AccountId) -> Result<Address, SettlementError> {
        self.account_of_key(key).await?.ok_or_else(unknown_account)
    }

    /// Records the beacon of `epoch` unless it is recorded (another verifier's record, or a
    /// commit that drew it, is as good). Refused while its block is not yet mined.
    async fn ensure_beacon(&self, epoch: u64) -> Result<(), SettlementError> {
        if self
            .client()
            .beacon(epoch)
            .await
            .map_err(evm_err)?
            .is_some()
        {
            return Ok(());
        }
        match self.client().record_beacon(epoch).await {
            Ok(_) => Ok(()),
            // Recorded by someone else in between: as good.
            Err(_) if self.client().beacon(epoch).await.ok().flatten().is_some() => Ok(()),
            Err(e) => Err(evm_err(e)),
        }
    }

    async fn verifier_logs(
        &self,
        from: u64,
        wait: Duration,
    ) -> Result<VerifierEvents, SettlementError> {
        let d = self.deployment()?.clone();
        let crate::network::ContractLogs { from, to, logs } =
            self.contract_logs(from, wait, &[]).await?;
        let mut out = VerifierEvents {
            events: Vec::new(),
            next: from,
        };
        let Some(to) = to else {
            return Ok(out);
        };
        let epoch_blocks = d.params.epoch_blocks.max(1);
        let epoch_of = |block: u64| (block.saturating_sub(d.start_block)) / epoch_blocks;
        let mut epoch = (from > d.start_block).then(|| epoch_of(from - 1));
        let mut logs = logs.iter().peekable();
        for block in from..=to {
            let e = epoch_of(block);
            if epoch != Some(e) {
                if epoch.is_some() || e > 0 {
                    out.events.push(VerifierEvent::EpochAdvanced { epoch: e });
                }
                epoch = Some(e);
            }
            while let Some(l) = logs.next_if(|l| l.block_number.unwrap_or(block) <= block) {
                if let Some(ev) = self.verifier_log(l).await? {
                    out.events.push(ev);
                }
            }
        }
        out.next = to + 1;
        Ok(out)
    }

    /// One contract log as a verifier event; `None` for logs it does not follow or whose
    /// parties have no verified network key.
    async fn verifier_log(
        &self,
        l: &alloy::rpc::types::Log,
    ) -> Result<Option<VerifierEvent>, SettlementError> {
        use AgoraSettlement as C;
        let Some(topic) = l.topic0() else {
            return Ok(None);
        };
        Ok(match *topic {
            C::ReceiptRootPosted::SIGNATURE_HASH => {
                let Ok(e) = C::ReceiptRootPosted::decode_log_data(l.data()) else {
                    return Ok(None);
                };
                let Some(provider) = self.key_of(e.provider).await? else {
                    return Ok(None);
                };
                Some(VerifierEvent::RootPosted {
                    provider,
                    epoch: e.epoch,
                    root: Hash32::from_bytes(e.root.0),
                    receipts: e.receipts,
                })
            }
            C::AuditRevealed::SIGNATURE_HASH => {
                let Ok(e) = C::AuditRevealed::decode_log_data(l.data()) else {
                    return Ok(None);
                };
                let (Some(verifier), Some(provider)) = (
                    self.key_of(e.verifier).await?,
                    self.key_of(e.provider).await?,
                ) else {
                    return Ok(None);
                };
                Some(VerifierEvent::AuditRevealed {
                    verifier,
                    provider,
                    epoch: e.epoch,
                    index: e.index,
                    passed: e.passed,
                    tx: Hash32::from_bytes(l.transaction_hash.unwrap_or_default().0),
                })
            }
            C::MaterialDemanded::SIGNATURE_HASH => {
                let Ok(e) = C::MaterialDemanded::decode_log_data(l.data()) else {
                    return Ok(None);
                };
                let (Some(verifier), Some(provider)) = (
                    self.key_of(e.verifier).await?,
                    self.key_of(e.provider).await?,
                ) else {
                    return Ok(None);
                };
                Some(VerifierEvent::MaterialDemanded {
                    verifier,
                    provider,
                    epoch: e.epoch,
                    index: e.index,
                    due_epoch: e.dueEpoch,
                })
            }
            C::MaterialAnswered::SIGNATURE_HASH => {
                let Ok(e) = C::MaterialAnswered::decode_log_data(l.data()) else {
                    return Ok(None);
                };
                let Some(provider) = self.key_of(e.provider).await? else {
                    return Ok(None);
                };
                Some(VerifierEvent::MaterialAnswered {
                    provider,
                    epoch: e.epoch,
                    index: e.index,
                })
            }
            _ => None,
        })
    }
}

impl VerifierSettlement for EvmSettlement {
    fn register_verifier_key<'a>(
        &'a self,
        key: &'a Keypair,
        stake: Amount,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let me = self.client().address();
            if self
                .client()
                .verified_network_key(me)
                .await
                .map_err(evm_err)?
                != Some(key.account())
            {
                self.client().bind_network_key(key).await.map_err(evm_err)?;
            }
            if self.client().account(me).await.map_err(evm_err)?.verifier {
                return Ok(());
            }
            Settlement::register_verifier(self, stake.units()).await
        })
    }

    fn is_verifier_key(&self, key: AccountId) -> SettlementFuture<'_, bool> {
        Box::pin(async move {
            let Some(account) = self.account_of_key(key).await? else {
                return Ok(false);
            };
            Ok(self
                .client()
                .account(account)
                .await
                .map_err(evm_err)?
                .verifier)
        })
    }

    fn audit_timeline(&self) -> SettlementFuture<'_, AuditTimeline> {
        Box::pin(async move {
            let p = &self.deployment()?.params;
            Ok(AuditTimeline {
                audit_window_epochs: p.audit_window_epochs,
                escalation_epochs: p.escalation_epochs,
            })
        })
    }

    fn verifier_events_from(
        &self,
        from: u64,
        wait: Duration,
    ) -> SettlementFuture<'_, VerifierEvents> {
        Box::pin(self.verifier_logs(from, wait))
    }

    fn posted_root(
        &self,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Option<RootView>> {
        Box::pin(async move {
            let Some(account) = self.account_of_key(provider).await? else {
                return Ok(None);
            };
            let r = self.client().root(account, epoch).await.map_err(evm_err)?;
            Ok(r.map(|r| RootView {
                root: Hash32::from_bytes(r.root.0),
                receipts: r.receipts,
                full_audit: r.full,
            }))
        })
    }

    fn leaves_assigned_to_me(
        &self,
        me: AccountId,
        provider: AccountId,
        epoch: u64,
    ) -> SettlementFuture<'_, Vec<u64>> {
        Box::pin(async move {
            let mine = self.client().address();
            if self.key_of(mine).await? != Some(me) {
                return Ok(Vec::new());
            }
            let Some(account) = self.account_of_key(provider).await? else {
                return Ok(Vec::new());
            };
            let Some(root) = self.client().root(account, epoch).await.map_err(evm_err)? else {
                return Ok(Vec::new());
            };
            // The view draws the beacon from a block hash only while the block is among the
            // last 256: recorded, the assignment outlives that.
            self.ensure_beacon(epoch.saturating_add(1)).await?;
            let mut leaves = Vec::new();
            for index in 0..root.receipts {
                let a = self
                    .client()
                    .assignee(account, epoch, index)
                    .await
                    .map_err(evm_err)?;
                if a == Some(mine) {
                    leaves.push(index);
                }
            }
            Ok(leaves)
        })
    }

    fn commit_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: Hash32,
    ) -> SettlementFuture<'_, u64> {
        Box::pin(async move {
            let provider = self.account_for(provider).await?;
            Settlement::commit_audit(self, provider, epoch, index, passed, *salt.as_bytes())
                .await?;
            // The epoch the contract recorded for it, not the epoch now: a reveal waits only
            // for the epoch after the commitment's own.
            let leaf = self
                .client()
                .leaf_audit(provider, epoch, index)
                .await
                .map_err(evm_err)?;
            Ok(leaf.committed_epoch)
        })
    }

    fn reveal_leaf_audit(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: Hash32,
        salt: Hash32,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let provider = self.account_for(provider).await?;
            Settlement::reveal_audit(
                self,
                provider,
                epoch,
                index,
                passed,
                *receipt.as_bytes(),
                *salt.as_bytes(),
            )
            .await
        })
    }

    fn demand_leaf_material(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let provider = self.account_for(provider).await?;
            Settlement::demand_material(self, provider, epoch, index).await
        })
    }

    fn confirm_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
    ) -> SettlementFuture<'a, VerdictSignature> {
        Box::pin(async move {
            if verdict.chain_id != self.client().chain_id() {
                return Err(refused(Refusal::Malformed));
            }
            let provider = self.account_for(verdict.provider).await?;
            let (_, sig) = match &verdict.fault {
                Fault::Fraud { receipt, proof } => Settlement::confirm_fraud(
                    self,
                    provider,
                    verdict.epoch,
                    verdict.index,
                    &ReceiptLeaf::of(receipt),
                    &path_bytes(proof),
                )?,
                Fault::Withheld => {
                    Settlement::confirm_withheld(self, provider, verdict.epoch, verdict.index)?
                }
            };
            Ok(VerdictSignature::Eip712(sig))
        })
    }

    fn submit_verdict<'a>(
        &'a self,
        verdict: &'a Verdict,
        confirmer: AccountId,
        sig: &'a VerdictSignature,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let VerdictSignature::Eip712(sig) = sig else {
                return Err(refused(Refusal::BadSignature));
            };
            let provider = self.account_for(verdict.provider).await?;
            let confirmation = (self.account_for(confirmer).await?, *sig);
            match &verdict.fault {
                Fault::Fraud { receipt, proof } => {
                    Settlement::fraud_verdict(
                        self,
                        provider,
                        verdict.epoch,
                        verdict.index,
                        &ReceiptLeaf::of(receipt),
                        &path_bytes(proof),
                        &confirmation,
                    )
                    .await
                }
                Fault::Withheld => {
                    Settlement::withheld_verdict(
                        self,
                        provider,
                        verdict.epoch,
                        verdict.index,
                        &confirmation,
                    )
                    .await
                }
            }
        })
    }
}
