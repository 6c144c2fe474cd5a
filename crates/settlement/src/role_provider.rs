//! What a provider does on settlement beyond [`NetworkSettlement`]: [`ProviderSettlement`].
//!
//! A provider bonds its stake (on a chain it also binds its ed25519 network key to its
//! account, so brokers find the stake behind its offers), follows and answers the duties that
//! name it (material demands, inclusion challenges), hands payers the chain's own commitment to
//! each receipt (the EIP-712 `Receipt` signature), and, as the canary, commits and opens
//! plants. Both settlements implement it; the provider does not know which it runs on.

use crate::evm::{evm_err, EvmSettlement};
use crate::ledger::LedgerSettlement;
use crate::network::rpc;
use crate::network::{NetworkSettlement, SettlementFuture};
use crate::open::Opened;
use crate::{Expiry, Refusal, Settlement, SettlementError, SignedReceipt};
use agora_core::{Amount, Hash32, Keypair};
use agora_evm::bindings::AgoraSettlement;
use agora_evm::receipts::ReceiptLeaf;
use alloy::providers::Provider;
use alloy::sol_types::SolEvent;
use std::sync::Arc;
use std::time::Duration;

/// Something settlement asks of a provider, on pain of a slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderDuty {
    /// Answer the material demand on this leaf of the root of `epoch`.
    Demand {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
    /// Prove this receipt (its BLAKE3 hash) is under the root of its epoch or the next.
    Inclusion {
        /// The receipt's hash.
        receipt: Hash32,
    },
    /// A verifier revealed a failure of this leaf of the root of `epoch`: unless a verdict or
    /// a plant confirms it, charge it to the verifier once due ([`ProviderSettlement::
    /// expire_false_alarm`]). Only a chain names this duty; the ledger charges it itself.
    Alarm {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
}

/// Duties read from a cursor on: pass `next` to the next read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderDuties {
    /// Each duty with the cursor it appeared at (a ledger height or an EVM block number).
    pub duties: Vec<(u64, ProviderDuty)>,
    /// Where the next read starts.
    pub next: u64,
}

/// A provider's settlement operations, on either settlement; see the module docs.
pub trait ProviderSettlement: NetworkSettlement {
    /// Bonds stake up to `want` if less is bonded. On a chain, also binds `key` (this
    /// account's network key) unless its binding already verifies: brokers find a
    /// provider's stake through that binding only.
    fn bond_provider_stake<'a>(
        &'a self,
        key: &'a Keypair,
        want: Amount,
    ) -> SettlementFuture<'a, ()>;
    /// The chain's own commitment to a receipt this provider served: its 65-byte EIP-712
    /// `Receipt` signature on a chain, what a payer's inclusion challenge carries there;
    /// `None` on the ledger (the ed25519-signed receipt is the commitment).
    fn chain_receipt_sig(&self, receipt: &SignedReceipt) -> Option<Vec<u8>>;
    /// The cursor a first read of duties starts from: `lookback` blocks before the tip.
    fn duties_start(&self, lookback: u64) -> SettlementFuture<'_, u64>;
    /// This account's duties from cursor `from` on, waiting up to `wait` for a new block.
    fn duties_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, ProviderDuties>;
    /// Answers the demand on leaf `index` of this account's root of `epoch`: `receipt` by
    /// `proof` (a path in this settlement's tree) and the hash of the material handed over.
    fn answer_material_demand<'a>(
        &'a self,
        epoch: u64,
        index: u64,
        receipt: &'a SignedReceipt,
        proof: &'a [Hash32],
        material: Hash32,
    ) -> SettlementFuture<'a, ()>;
    /// Proves `receipt` is leaf `index` of this account's root of `epoch` by `proof` (a path
    /// in this settlement's tree), taking the challenger's bond.
    fn answer_inclusion_challenge<'a>(
        &'a self,
        receipt: Hash32,
        epoch: u64,
        index: u64,
        proof: &'a [Hash32],
    ) -> SettlementFuture<'a, ()>;
    /// Charges the unconfirmed failure revealed on this account's leaf `index` of its root of
    /// `epoch` to its verifier, if due (on a chain from `epoch + 4 + auditWindowEpochs +
    /// escalationEpochs`; until someone calls, the verifier keeps its stake). The ledger
    /// charges it itself: [`Expiry::Settled`] there.
    fn expire_false_alarm(&self, epoch: u64, index: u64) -> SettlementFuture<'_, Expiry>;
    /// Whether a provider may hold more than one plant under one root (a chain opens one
    /// per root; a second commitment would only lock its bond).
    fn plants_per_root(&self) -> Option<usize>;
    /// Commits a plant at this account's leaf `index` of its root of `epoch` (escrowing the
    /// plant bond on a chain).
    fn commit_plant(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()>;
    /// The only epoch in which a plant under the root of `root_epoch` opens (`None` if out of
    /// range).
    fn plant_epoch(&self, root_epoch: u64) -> SettlementFuture<'_, Option<u64>>;
    /// Opens this account's plant at leaf `index` of its root of `epoch`.
    fn reveal_plant_at(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()>;
    /// Whether `verifier`'s key stands for the verifier assigned to this account's leaf
    /// `index` of `epoch` (chain only; the ledger's provider reads the ledger's plan).
    fn assigned_to(
        &self,
        verifier: agora_core::AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, bool>;
    /// Whether `verifier`'s key stands for a registered verifier, other than this account,
    /// and this account's leaf `index` of `epoch` has a revealed failure on settlement: who
    /// may read a leaf's material to confirm a fraud (chain only, as [`Self::assigned_to`]).
    fn may_confirm(
        &self,
        verifier: agora_core::AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, bool>;
    /// The ledger client, on the ledger (its provider reads audit plans and transactions
    /// there directly); `None` on a chain.
    fn ledger_client(&self) -> Option<agora_ledger::client::Client>;
}

impl Opened {
    /// The provider's operations on this settlement.
    pub fn provider(&self) -> Arc<dyn ProviderSettlement> {
        match self {
            Opened::Ledger(s) => s.clone(),
            Opened::Evm(s) => s.clone(),
        }
    }
}

fn hashes(proof: &[Hash32]) -> Vec<[u8; 32]> {
    proof.iter().map(|h| *h.as_bytes()).collect()
}

/// How often a ledger submission is retried when another task of this account took its
/// nonce (the provider's claim loop, root posts and duties share one account).
const NONCE_TRIES: u32 = 8;

/// `op` again while the ledger says another submission took the nonce.
async fn nonce_retrying<F, Fut>(op: F) -> Result<(), SettlementError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), SettlementError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(SettlementError::Refused(Refusal::Other { code }))
                if (code == "stale_nonce" || code == "future_nonce")
                    && attempt + 1 < NONCE_TRIES =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// The duties of `me` in these ledger blocks, each with the height it appeared at.
pub fn ledger_duties_of(
    me: &agora_core::AccountId,
    blocks: &[agora_ledger::BlockEvents],
) -> Vec<(u64, ProviderDuty)> {
    use agora_ledger::Event;
    let mut out = vec![];
    for b in blocks {
        for ev in b.txs.iter().flat_map(|t| &t.events) {
            match ev {
                Event::MaterialDemanded {
                    provider,
                    epoch,
                    index,
                    ..
                } if provider == me => out.push((
                    b.height,
                    ProviderDuty::Demand {
                        epoch: *epoch,
                        index: *index,
                    },
                )),
                Event::InclusionChallenged {
                    receipt, provider, ..
                } if provider == me => {
                    out.push((b.height, ProviderDuty::Inclusion { receipt: *receipt }))
                }
                _ => {}
            }
        }
    }
    out
}

// ----- the embedded ledger -----

impl ProviderSettlement for LedgerSettlement {
    fn bond_provider_stake<'a>(
        &'a self,
        _key: &'a Keypair,
        want: Amount,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            if want.is_zero() {
                return Ok(());
            }
            let me = Settlement::account(self);
            let client = self.client().clone();
            let account = tokio::task::spawn_blocking(move || client.account(&me))
                .await?
                .map_err(crate::ledger::ledger_err)?
                .ok_or(SettlementError::Refused(Refusal::Overdraft))?;
            let Ok(short) = want.checked_sub(account.stake) else {
                return Ok(());
            };
            if short.is_zero() {
                return Ok(());
            }
            Settlement::stake(self, short.units()).await
        })
    }

    fn chain_receipt_sig(&self, _receipt: &SignedReceipt) -> Option<Vec<u8>> {
        None
    }

    fn duties_start(&self, lookback: u64) -> SettlementFuture<'_, u64> {
        Box::pin(async move {
            let client = self.client().clone();
            let tip = tokio::task::spawn_blocking(move || client.status())
                .await?
                .map_err(crate::ledger::ledger_err)?
                .height;
            Ok(tip.saturating_sub(lookback).max(1))
        })
    }

    fn duties_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, ProviderDuties> {
        Box::pin(async move {
            let client = self.client().clone();
            let blocks = tokio::task::spawn_blocking(move || client.events(from, wait))
                .await?
                .map_err(crate::ledger::ledger_err)?;
            let next = blocks
                .last()
                .map_or(from, |b| b.height.saturating_add(1).max(from));
            Ok(ProviderDuties {
                duties: ledger_duties_of(&Settlement::account(self), &blocks),
                next,
            })
        })
    }

    fn answer_material_demand<'a>(
        &'a self,
        epoch: u64,
        index: u64,
        receipt: &'a SignedReceipt,
        proof: &'a [Hash32],
        material: Hash32,
    ) -> SettlementFuture<'a, ()> {
        let proof = hashes(proof);
        Box::pin(async move {
            nonce_retrying(|| {
                Settlement::answer_demand(self, epoch, index, receipt, &proof, *material.as_bytes())
            })
            .await
        })
    }

    fn answer_inclusion_challenge<'a>(
        &'a self,
        receipt: Hash32,
        epoch: u64,
        index: u64,
        proof: &'a [Hash32],
    ) -> SettlementFuture<'a, ()> {
        let proof = hashes(proof);
        Box::pin(async move {
            nonce_retrying(|| {
                Settlement::answer_inclusion(self, *receipt.as_bytes(), epoch, index, &proof)
            })
            .await
        })
    }

    fn plants_per_root(&self) -> Option<usize> {
        None
    }

    /// `expire_alarms` runs at each epoch's start.
    fn expire_false_alarm(&self, _epoch: u64, _index: u64) -> SettlementFuture<'_, Expiry> {
        Box::pin(async { Ok(Expiry::Settled) })
    }

    fn commit_plant(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let me = Settlement::account(self);
            let commitment = Settlement::plant_commitment(self, me, epoch, index, *salt.as_bytes());
            nonce_retrying(|| Settlement::plant(self, commitment)).await
        })
    }

    fn plant_epoch(&self, root_epoch: u64) -> SettlementFuture<'_, Option<u64>> {
        Box::pin(async move {
            let client = self.client().clone();
            let status = tokio::task::spawn_blocking(move || client.status())
                .await?
                .map_err(crate::ledger::ledger_err)?;
            Ok(agora_ledger::audit::Windows::of(&status.params, root_epoch)
                .ok()
                .map(|w| w.plant))
        })
    }

    fn reveal_plant_at(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()> {
        // Slashing a verifier that passed the plant needs a second verifier's signed
        // re-audit; without one the plant only pays.
        Box::pin(async move {
            nonce_retrying(|| Settlement::reveal_plant(self, epoch, index, *salt.as_bytes(), None))
                .await
        })
    }

    fn assigned_to(
        &self,
        verifier: agora_core::AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, bool> {
        Box::pin(async move {
            let me = Settlement::account(self);
            Ok(Settlement::assignee(self, me, epoch, index).await? == Some(verifier))
        })
    }

    fn may_confirm(
        &self,
        _verifier: agora_core::AccountId,
        _epoch: u64,
        _index: u64,
    ) -> SettlementFuture<'_, bool> {
        // The ledger's provider checks the named reveal transaction itself (`audits.rs`).
        Box::pin(async { Ok(false) })
    }

    fn ledger_client(&self) -> Option<agora_ledger::client::Client> {
        Some(self.client().clone())
    }
}

// ----- an EVM chain -----

impl ProviderSettlement for EvmSettlement {
    fn bond_provider_stake<'a>(
        &'a self,
        key: &'a Keypair,
        want: Amount,
    ) -> SettlementFuture<'a, ()> {
        Box::pin(async move {
            let c = self.client();
            let me = c.address();
            let stake = c.account(me).await.map_err(evm_err)?.stake;
            let short = want.units().saturating_sub(stake);
            if short > 0 {
                // Approves the shortfall first when the allowance is short.
                c.stake(short).await.map_err(evm_err)?;
            }
            if c.verified_network_key(me).await.map_err(evm_err)? != Some(key.account()) {
                c.bind_network_key(key).await.map_err(evm_err)?;
            }
            Ok(())
        })
    }

    fn chain_receipt_sig(&self, receipt: &SignedReceipt) -> Option<Vec<u8>> {
        // Fails only without a deployment, which an opened chain settlement always has.
        let leaf = ReceiptLeaf::of(receipt);
        self.client()
            .sign_receipt(&leaf, receipt.receipt.epoch)
            .ok()
            .map(|c| c.sig.to_vec())
    }

    fn duties_start(&self, lookback: u64) -> SettlementFuture<'_, u64> {
        Box::pin(async move {
            let start = self.deployment()?.start_block;
            let tip = self
                .client()
                .provider()
                .get_block_number()
                .await
                .map_err(rpc("eth_blockNumber"))?;
            Ok(tip.saturating_sub(lookback).max(start))
        })
    }

    fn duties_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, ProviderDuties> {
        Box::pin(async move {
            let topics = [
                AgoraSettlement::MaterialDemanded::SIGNATURE_HASH,
                AgoraSettlement::InclusionChallenged::SIGNATURE_HASH,
                AgoraSettlement::AuditRevealed::SIGNATURE_HASH,
            ];
            let crate::network::ContractLogs { from, to, logs } =
                self.contract_logs(from, wait, &topics).await?;
            let Some(to) = to else {
                return Ok(ProviderDuties {
                    duties: vec![],
                    next: from,
                });
            };
            let me = self.client().address();
            let mut duties = vec![];
            for l in &logs {
                let at = l.block_number.unwrap_or(from);
                match l.topic0() {
                    Some(t) if *t == AgoraSettlement::MaterialDemanded::SIGNATURE_HASH => {
                        let Ok(e) = AgoraSettlement::MaterialDemanded::decode_log(&l.inner) else {
                            continue;
                        };
                        if e.provider == me {
                            duties.push((
                                at,
                                ProviderDuty::Demand {
                                    epoch: e.epoch,
                                    index: e.index,
                                },
                            ));
                        }
                    }
                    Some(t) if *t == AgoraSettlement::InclusionChallenged::SIGNATURE_HASH => {
                        let Ok(e) = AgoraSettlement::InclusionChallenged::decode_log(&l.inner)
                        else {
                            continue;
                        };
                        if e.provider == me {
                            duties.push((
                                at,
                                ProviderDuty::Inclusion {
                                    receipt: Hash32::from_bytes(e.receipt.0),
                                },
                            ));
                        }
                    }
                    Some(t) if *t == AgoraSettlement::AuditRevealed::SIGNATURE_HASH => {
                        let Ok(e) = AgoraSettlement::AuditRevealed::decode_log(&l.inner) else {
                            continue;
                        };
                        if e.provider == me && !e.passed {
                            duties.push((
                                at,
                                ProviderDuty::Alarm {
                                    epoch: e.epoch,
                                    index: e.index,
                                },
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Ok(ProviderDuties {
                duties,
                next: to + 1,
            })
        })
    }

    fn answer_material_demand<'a>(
        &'a self,
        epoch: u64,
        index: u64,
        receipt: &'a SignedReceipt,
        proof: &'a [Hash32],
        material: Hash32,
    ) -> SettlementFuture<'a, ()> {
        let proof = hashes(proof);
        Box::pin(async move {
            Settlement::answer_demand(
                self,
                epoch,
                index,
                &ReceiptLeaf::of(receipt),
                &proof,
                *material.as_bytes(),
            )
            .await
        })
    }

    fn answer_inclusion_challenge<'a>(
        &'a self,
        receipt: Hash32,
        epoch: u64,
        index: u64,
        proof: &'a [Hash32],
    ) -> SettlementFuture<'a, ()> {
        let proof = hashes(proof);
        Box::pin(async move {
            Settlement::answer_inclusion(self, *receipt.as_bytes(), epoch, index, &proof).await
        })
    }

    /// Reads the leaf first: a call before it is due, or after a verdict or a plant settled
    /// it, would only be refused.
    fn expire_false_alarm(&self, epoch: u64, index: u64) -> SettlementFuture<'_, Expiry> {
        Box::pin(async move {
            let me = self.client().address();
            let leaf = self
                .client()
                .leaf_audit(me, epoch, index)
                .await
                .map_err(evm_err)?;
            if !leaf.alarm {
                return Ok(Expiry::Settled);
            }
            let p = &self.deployment()?.params;
            let Some(due) = epoch
                .checked_add(4)
                .and_then(|e| e.checked_add(p.audit_window_epochs))
                .and_then(|e| e.checked_add(p.escalation_epochs))
            else {
                return Ok(Expiry::NotDue { epoch: u64::MAX });
            };
            if Settlement::epoch(self).await? < due {
                return Ok(Expiry::NotDue { epoch: due });
            }
            match Settlement::expire_alarm(self, me, epoch, index).await {
                Ok(()) => Ok(Expiry::Charged),
                // A verdict, a plant or another caller got there between the read and the call.
                Err(SettlementError::Refused(Refusal::Other { code }))
                    if code.starts_with("NoAlarm") =>
                {
                    Ok(Expiry::Settled)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// `OnePlantPerRoot`: the contract opens one plant under a root.
    fn plants_per_root(&self) -> Option<usize> {
        Some(1)
    }

    fn commit_plant(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let me = self.client().address();
            let commitment = Settlement::plant_commitment(self, me, epoch, index, *salt.as_bytes());
            Settlement::plant(self, commitment).await
        })
    }

    /// `e + 3 + auditWindowEpochs` (docs/settlement.md, "Audits on chain").
    fn plant_epoch(&self, root_epoch: u64) -> SettlementFuture<'_, Option<u64>> {
        Box::pin(async move {
            let w = self.deployment()?.params.audit_window_epochs;
            Ok(root_epoch.checked_add(3).and_then(|e| e.checked_add(w)))
        })
    }

    fn reveal_plant_at(&self, epoch: u64, index: u64, salt: Hash32) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            Settlement::reveal_plant(self, epoch, index, *salt.as_bytes(), None).await
        })
    }

    fn assigned_to(
        &self,
        verifier: agora_core::AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, bool> {
        Box::pin(async move {
            let me = self.client().address();
            let Some(assignee) = Settlement::assignee(self, me, epoch, index).await? else {
                return Ok(false);
            };
            Ok(self.account_of_key(verifier).await? == Some(assignee))
        })
    }

    fn may_confirm(
        &self,
        verifier: agora_core::AccountId,
        epoch: u64,
        index: u64,
    ) -> SettlementFuture<'_, bool> {
        Box::pin(async move {
            let me = self.client().address();
            let Some(who) = self.account_of_key(verifier).await? else {
                return Ok(false);
            };
            if who == me || !self.client().account(who).await.map_err(evm_err)?.verifier {
                return Ok(false);
            }
            let leaf = self
                .client()
                .leaf_audit(me, epoch, index)
                .await
                .map_err(evm_err)?;
            Ok(leaf.passed == Some(false) && leaf.verifier != who)
        })
    }

    fn ledger_client(&self) -> Option<agora_ledger::client::Client> {
        None
    }
}
