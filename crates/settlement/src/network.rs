//! Settlement as the network's services see it: [`NetworkSettlement`].
//!
//! Provider, broker, verifier and gateway name every party by its ed25519 network key (the
//! key that signs offers and receipts), channels by 32 bytes and money in base units. This
//! trait answers their questions in those terms on either settlement, so a service holding
//! an `Arc<dyn NetworkSettlement>` does not know which one it runs on:
//!
//! - on the embedded ledger a network key *is* the account;
//! - on an EVM chain a network key stands for the account that bound it
//!   (`bindNetworkKey`), and only when the key's own signature over that binding verifies,
//!   off chain, here (the chain cannot check ed25519; see docs/settlement.md, "Identities").
//!   A key bound by no account, by an account whose binding does not verify, or validly by
//!   two accounts stands for nobody: its offers have no stake behind them.
//!
//! Vouchers carry a [`VoucherSignature`] of the settlement's own kind: an ed25519 signature
//! under the ledger's voucher domain (which names the chain id), or an EIP-712 signature by
//! the payer's secp256k1 key under the domain ("Agora", "1", chain id, settlement contract).
//! Each settlement accepts only its own kind, and an EIP-712 voucher made for another chain
//! or contract recovers to another address, so it pays nothing.
//!
//! The trait is object safe (boxed futures) so that a simulation can implement it too.

use crate::evm::EvmSettlement;
use crate::ledger::LedgerSettlement;
use crate::{Settlement, SettlementError, SignedReceipt};
use agora_core::{AccountId, Amount, Hash32};
use agora_evm::bindings::AgoraSettlement;
use agora_evm::receipts::ReceiptLeaf;
use agora_evm::EvmError;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A boxed future of a settlement answer.
pub type SettlementFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, SettlementError>> + Send + 'a>>;

/// Which settlement a service runs on (for logs and for duties one of them lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementKind {
    /// The embedded ledger.
    Ledger,
    /// The `AgoraSettlement` contract on an EVM chain.
    Evm,
}

impl std::fmt::Display for SettlementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SettlementKind::Ledger => "ledger",
            SettlementKind::Evm => "evm",
        })
    }
}

/// A settlement account: an ed25519 key on the ledger, an address on an EVM chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// A ledger account.
    Key(AccountId),
    /// An EVM account.
    Address([u8; 20]),
}

/// A payer's signature over a cumulative voucher, of one settlement's kind: the wire's type,
/// so a voucher travels and is checked as one thing.
pub use agora_wire::protocol::VoucherSignature;

/// A channel's parties and money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelParties {
    /// Who escrowed.
    pub payer: Party,
    /// Who may claim.
    pub provider: Party,
    /// Total escrowed.
    pub deposit: Amount,
    /// Total claimed.
    pub claimed: Amount,
    /// Closed and refunded.
    pub closed: bool,
    /// From this epoch the payer may ask to close it.
    pub expires_epoch: u64,
    /// Once the payer asked to close: the epoch from which the rest goes back to it.
    pub closes_epoch: Option<u64>,
}

/// What the services follow on settlement, parties named by their network keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettlementEvent {
    /// A new epoch began.
    EpochAdvanced {
        /// The new epoch.
        epoch: u64,
    },
    /// A provider posted a receipt root.
    ReceiptRootPosted {
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The root (BLAKE3 tree on the ledger, keccak leaf tree on a chain).
        root: Hash32,
        /// Leaves under it.
        receipts: u64,
    },
    /// A verifier revealed an audit outcome.
    AuditRevealed {
        /// The verifier.
        verifier: AccountId,
        /// The audited provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// The outcome.
        passed: bool,
    },
    /// A provider was slashed for fraud.
    Slashed {
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The failed leaf.
        index: u64,
        /// Taken from its stake.
        amount: Amount,
    },
}

/// Events read from a cursor on: pass `next` to the next call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettlementEvents {
    /// In settlement order.
    pub events: Vec<SettlementEvent>,
    /// Where the next read starts (a ledger height or an EVM block number).
    pub next: u64,
}

/// Settlement as the network's services use it; see the module docs.
pub trait NetworkSettlement: Send + Sync {
    /// Which settlement this is.
    fn kind(&self) -> SettlementKind;
    /// The chain id vouchers and receipts name.
    fn network_chain_id(&self) -> u64;
    /// The epoch the next operation lands in.
    fn current_epoch(&self) -> SettlementFuture<'_, u64>;
    /// The bonded stake behind network key `key`: `None` when no account stands for it.
    fn stake_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Amount>>;
    /// The events from cursor `from` on, waiting up to `wait` for one.
    fn events_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, SettlementEvents>;
    /// This account signs a cumulative voucher for `channel` as its payer.
    fn sign_voucher_for(
        &self,
        channel: Hash32,
        cumulative: Amount,
    ) -> Result<VoucherSignature, SettlementError>;
    /// Who signed this voucher on this settlement; `None` for another settlement's kind, a
    /// signature that does not verify, or a malleable one.
    fn voucher_signer(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: &VoucherSignature,
    ) -> Option<Party>;
    /// A channel's parties and money, if it exists.
    fn channel_parties(&self, channel: Hash32) -> SettlementFuture<'_, Option<ChannelParties>>;
    /// The root this settlement expects over `receipts`, in leaf order (BLAKE3 tree of the
    /// receipts' hashes on the ledger; keccak tree of their `ReceiptLeaf`s on a chain).
    fn receipt_root_of(&self, receipts: &[SignedReceipt]) -> Hash32;
    /// The path of leaf `index` in this settlement's tree over `receipts`, bottom up (`None`
    /// out of range): what a provider hands its auditor with the material.
    fn receipt_proof_of(&self, receipts: &[SignedReceipt], index: usize) -> Option<Vec<Hash32>>;
    /// The leaf this settlement's tree holds for `receipt` (its hash on the ledger, the
    /// `ReceiptLeaf` hash on a chain): what an audit's reveal names.
    fn receipt_leaf_of(&self, receipt: &SignedReceipt) -> Hash32;
    /// Whether `receipt` is leaf `index` of `root`, a root over `leaves` receipts in this
    /// settlement's tree, by `proof`: what a verifier checks before it judges material.
    fn receipt_proof_holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> bool;
    /// Posts this account's receipt root for the current epoch (`late`: every leaf audited).
    fn post_receipt_root(
        &self,
        epoch: u64,
        root: Hash32,
        receipts: u64,
        late: bool,
    ) -> SettlementFuture<'_, ()>;
    /// Opens a channel from this account to the account network key `provider` stands for;
    /// refused as `UnknownAccount` when no account does.
    fn open_channel_to(
        &self,
        provider: AccountId,
        amount: Amount,
        timeout_epochs: u64,
    ) -> SettlementFuture<'_, Hash32>;
    /// Adds to this account's channel.
    fn top_up_channel(&self, channel: Hash32, amount: Amount) -> SettlementFuture<'_, ()>;
    /// Claims a voucher as the channel's provider; a signature of another settlement's kind
    /// is refused as `ForgedVoucher` before anything is sent.
    fn claim_voucher(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: VoucherSignature,
    ) -> SettlementFuture<'_, ()>;
    /// The account network key `key` stands for: itself on the ledger; on a chain the one
    /// account whose binding of it verifies (`None`: nobody). What a provider compares a
    /// request's payer with the channel's payer by.
    fn party_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Party>>;
}

fn refused(r: crate::Refusal) -> SettlementError {
    SettlementError::Refused(r)
}

fn unknown_account() -> SettlementError {
    refused(crate::Refusal::Other {
        code: "UnknownAccount".into(),
    })
}

/// Whether `sig` is `payer`'s voucher for (`channel`, `cumulative`) on `s`: what a provider
/// checks before it keeps a voucher.
pub fn voucher_is_payers(
    s: &dyn NetworkSettlement,
    channel: Hash32,
    cumulative: Amount,
    sig: &VoucherSignature,
    payer: Party,
) -> bool {
    s.voucher_signer(channel, cumulative, sig) == Some(payer)
}

// ----- the embedded ledger -----

impl NetworkSettlement for LedgerSettlement {
    fn kind(&self) -> SettlementKind {
        SettlementKind::Ledger
    }

    fn network_chain_id(&self) -> u64 {
        Settlement::chain_id(self)
    }

    fn current_epoch(&self) -> SettlementFuture<'_, u64> {
        Box::pin(Settlement::epoch(self))
    }

    /// On the ledger the key is the account.
    fn stake_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Amount>> {
        Box::pin(async move {
            let client = self.client().clone();
            let a = tokio::task::spawn_blocking(move || client.account(&key))
                .await?
                .map_err(crate::ledger::ledger_err)?;
            Ok(a.map(|a| a.stake))
        })
    }

    fn events_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, SettlementEvents> {
        Box::pin(async move {
            let client = self.client().clone();
            let blocks = tokio::task::spawn_blocking(move || client.events(from, wait))
                .await?
                .map_err(crate::ledger::ledger_err)?;
            let mut out = SettlementEvents {
                events: Vec::new(),
                next: from,
            };
            for b in blocks {
                out.next = out.next.max(b.height.saturating_add(1));
                for tx in &b.txs {
                    out.events.extend(tx.events.iter().filter_map(ledger_event));
                }
            }
            Ok(out)
        })
    }

    fn sign_voucher_for(
        &self,
        channel: Hash32,
        cumulative: Amount,
    ) -> Result<VoucherSignature, SettlementError> {
        let (payer, sig) = Settlement::sign_voucher(self, channel, cumulative.units())?;
        Ok(VoucherSignature::Ed25519 { payer, sig })
    }

    fn voucher_signer(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: &VoucherSignature,
    ) -> Option<Party> {
        let VoucherSignature::Ed25519 { payer, sig } = sig else {
            return None;
        };
        let voucher = agora_wire::Voucher {
            chain_id: Settlement::chain_id(self),
            channel,
            cumulative,
        };
        payer
            .verify(agora_wire::VOUCHER_DOMAIN, &voucher, sig)
            .ok()
            .map(|()| Party::Key(*payer))
    }

    fn channel_parties(&self, channel: Hash32) -> SettlementFuture<'_, Option<ChannelParties>> {
        Box::pin(async move {
            let client = self.client().clone();
            let c = tokio::task::spawn_blocking(move || client.channel(&channel))
                .await?
                .map_err(crate::ledger::ledger_err)?;
            Ok(c.map(|c| ChannelParties {
                payer: Party::Key(c.payer),
                provider: Party::Key(c.provider),
                deposit: c.deposit,
                claimed: c.claimed,
                closed: c.closed,
                expires_epoch: c.expires_epoch,
                closes_epoch: c.closes_epoch,
            }))
        })
    }

    fn receipt_root_of(&self, receipts: &[SignedReceipt]) -> Hash32 {
        Hash32::from_bytes(<LedgerSettlement as Settlement>::receipt_root(receipts))
    }

    fn receipt_proof_of(&self, receipts: &[SignedReceipt], index: usize) -> Option<Vec<Hash32>> {
        let hashes: Vec<Hash32> = receipts.iter().map(SignedReceipt::hash).collect();
        agora_core::merkle::proof(&hashes, index)
    }

    fn receipt_leaf_of(&self, receipt: &SignedReceipt) -> Hash32 {
        receipt.hash()
    }

    /// The ledger's check (`leaves` bounds the index; the BLAKE3 path fixes the rest).
    fn receipt_proof_holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> bool {
        index < leaves && agora_core::merkle::verify(root, &receipt.hash(), index, proof)
    }

    fn post_receipt_root(
        &self,
        epoch: u64,
        root: Hash32,
        receipts: u64,
        late: bool,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::post_root(
            self,
            epoch,
            *root.as_bytes(),
            receipts,
            late,
        ))
    }

    /// On the ledger the key is the account: any key may be paid (an unknown one has no
    /// stake, which the broker checks before it pays).
    fn open_channel_to(
        &self,
        provider: AccountId,
        amount: Amount,
        timeout_epochs: u64,
    ) -> SettlementFuture<'_, Hash32> {
        Box::pin(Settlement::open_channel(
            self,
            provider,
            amount.units(),
            timeout_epochs,
        ))
    }

    fn top_up_channel(&self, channel: Hash32, amount: Amount) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::top_up(self, channel, amount.units()))
    }

    fn claim_voucher(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: VoucherSignature,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let VoucherSignature::Ed25519 { payer, sig } = sig else {
                return Err(refused(crate::Refusal::ForgedVoucher));
            };
            Settlement::claim(self, channel, cumulative.units(), &(payer, sig)).await
        })
    }

    fn party_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Party>> {
        Box::pin(async move { Ok(Some(Party::Key(key))) })
    }
}

impl SettlementEvent {
    /// The service event a ledger event is, if the services follow it.
    pub fn from_ledger(e: &agora_ledger::Event) -> Option<SettlementEvent> {
        ledger_event(e)
    }
}

fn ledger_event(e: &agora_ledger::Event) -> Option<SettlementEvent> {
    use agora_ledger::Event as L;
    Some(match e {
        L::EpochAdvanced { epoch, .. } => SettlementEvent::EpochAdvanced { epoch: *epoch },
        L::ReceiptRootPosted {
            provider,
            epoch,
            root,
            receipts,
        } => SettlementEvent::ReceiptRootPosted {
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
        } => SettlementEvent::AuditRevealed {
            verifier: *verifier,
            provider: *provider,
            epoch: *epoch,
            index: *index,
            passed: *passed,
        },
        L::Slashed {
            provider,
            epoch,
            index,
            amount,
            ..
        } => SettlementEvent::Slashed {
            provider: *provider,
            epoch: *epoch,
            index: *index,
            amount: *amount,
        },
        _ => return None,
    })
}

// ----- an EVM chain -----

/// Most blocks read in one `eth_getLogs` (public RPCs refuse wide ranges).
const MAX_LOG_BLOCKS: u64 = 2_000;
/// Most distinct accounts that recorded one key checked; more and the key stands for nobody
/// (each costs its recorder a transaction's gas, see docs/settlement.md).
const MAX_BINDERS: usize = 256;
/// Most accounts remembered per direction of the key binding.
const MAX_BINDINGS: usize = 16_384;
/// How often an EVM events read looks for a new block while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Key bindings verified so far, both ways, so events and stake checks do not ask the chain
/// for each one again. A binding can change (`bindNetworkKey` again), so stake checks read
/// the chain each time; events use the cache (a rebinding is rare and costs a reputation
/// entry under an old key at worst).
#[derive(Default)]
pub(crate) struct KeyCache {
    by_address: HashMap<Address, Option<AccountId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn rpc(
    what: &'static str,
) -> impl Fn(alloy::transports::TransportError) -> SettlementError {
    move |source| {
        SettlementError::Evm(Box::new(EvmError::Rpc {
            what,
            attempts: 1,
            source,
        }))
    }
}

fn evm(e: EvmError) -> SettlementError {
    SettlementError::Evm(Box::new(e))
}

/// Contract logs of blocks `from..=to`, read by [`EvmSettlement::contract_logs`].
pub(crate) struct ContractLogs {
    /// The first block read (the cursor, no earlier than the deployment's start).
    pub from: u64,
    /// The last block read; `None` when no block at or past `from` came in time.
    pub to: Option<u64>,
    /// The logs, in chain order.
    pub logs: Vec<alloy::rpc::types::Log>,
}

impl EvmSettlement {
    /// Waits up to `wait` for a block at or past the cursor `from`, then reads the contract's
    /// logs (only those whose first topic is in `topics`, unless it is empty) of at most
    /// [`MAX_LOG_BLOCKS`] blocks: what every service's event cursor is built on.
    pub(crate) async fn contract_logs(
        &self,
        from: u64,
        wait: Duration,
        topics: &[B256],
    ) -> Result<ContractLogs, SettlementError> {
        let d = self.deployment()?;
        let provider = self.client().provider();
        let from = from.max(d.start_block);
        let deadline = tokio::time::Instant::now() + wait;
        let latest = loop {
            let latest = provider
                .get_block_number()
                .await
                .map_err(rpc("eth_blockNumber"))?;
            if latest >= from || tokio::time::Instant::now() >= deadline {
                break latest;
            }
            tokio::time::sleep(POLL).await;
        };
        if latest < from {
            return Ok(ContractLogs {
                from,
                to: None,
                logs: vec![],
            });
        }
        let to = latest.min(from.saturating_add(MAX_LOG_BLOCKS - 1));
        let mut filter = Filter::new()
            .address(d.settlement)
            .from_block(from)
            .to_block(to);
        if !topics.is_empty() {
            filter = filter.event_signature(topics.to_vec());
        }
        let logs = provider
            .get_logs(&filter)
            .await
            .map_err(rpc("eth_getLogs"))?;
        Ok(ContractLogs {
            from,
            to: Some(to),
            logs,
        })
    }
}

impl EvmSettlement {
    /// The contracts this client was connected to.
    pub(crate) fn deployment(&self) -> Result<&agora_evm::Deployment, SettlementError> {
        self.client()
            .deployment()
            .ok_or_else(|| evm(EvmError::NotDeployed))
    }

    /// The verified network key of `who`, remembered.
    pub(crate) async fn key_of(&self, who: Address) -> Result<Option<AccountId>, SettlementError> {
        if let Some(k) = lock(&self.keys).by_address.get(&who) {
            return Ok(*k);
        }
        let k = self.client().verified_network_key(who).await.map_err(evm)?;
        let mut cache = lock(&self.keys);
        if cache.by_address.len() >= MAX_BINDINGS {
            cache.by_address.clear();
        }
        cache.by_address.insert(who, k);
        Ok(k)
    }

    /// The one account `key` is validly bound to now: every account that ever recorded the
    /// key (from the `NetworkKeyBound` log), kept only if its current binding is `key` and
    /// verifies. Two such accounts: nobody (the key's owner signed both; which one it would
    /// be paid through is ambiguous).
    pub async fn account_of_key(&self, key: AccountId) -> Result<Option<Address>, SettlementError> {
        let d = self.deployment()?;
        let filter = Filter::new()
            .address(d.settlement)
            .event_signature(AgoraSettlement::NetworkKeyBound::SIGNATURE_HASH)
            .topic2(B256::from(*key.as_bytes()))
            .from_block(d.start_block);
        let logs = self
            .client()
            .provider()
            .get_logs(&filter)
            .await
            .map_err(rpc("eth_getLogs"))?;
        // Each account is checked once however often it recorded the key, so one account
        // binding the key many times cannot hide the genuine binding.
        let accounts: std::collections::BTreeSet<Address> = logs
            .iter()
            .filter_map(|l| AgoraSettlement::NetworkKeyBound::decode_log_data(l.data()).ok())
            .map(|e| e.account)
            .collect();
        if accounts.len() > MAX_BINDERS {
            return Ok(None);
        }
        let mut found: Option<Address> = None;
        for account in accounts {
            let now = self
                .client()
                .verified_network_key(account)
                .await
                .map_err(evm)?;
            if now == Some(key) {
                if found.is_some() {
                    return Ok(None);
                }
                found = Some(account);
            }
        }
        Ok(found)
    }

    async fn evm_events(
        &self,
        from: u64,
        wait: Duration,
    ) -> Result<SettlementEvents, SettlementError> {
        let d = self.deployment()?.clone();
        let ContractLogs { from, to, logs } = self.contract_logs(from, wait, &[]).await?;
        let mut out = SettlementEvents {
            events: Vec::new(),
            next: from,
        };
        let Some(to) = to else {
            return Ok(out);
        };
        let epoch_of = |block: u64| (block.saturating_sub(d.start_block)) / d.params.epoch_blocks;
        let mut epoch = if from > d.start_block {
            Some(epoch_of(from - 1))
        } else {
            None
        };
        let mut logs = logs.iter().peekable();
        for block in from..=to {
            let e = epoch_of(block);
            if epoch != Some(e) {
                if epoch.is_some() || e > 0 {
                    out.events.push(SettlementEvent::EpochAdvanced { epoch: e });
                }
                epoch = Some(e);
            }
            while let Some(l) = logs.next_if(|l| l.block_number.unwrap_or(block) <= block) {
                if let Some(ev) = self.evm_event(l).await? {
                    out.events.push(ev);
                }
            }
        }
        out.next = to + 1;
        Ok(out)
    }

    /// One contract log as a service event; `None` for logs the services do not follow or
    /// whose parties have no verified network key.
    async fn evm_event(
        &self,
        l: &alloy::rpc::types::Log,
    ) -> Result<Option<SettlementEvent>, SettlementError> {
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
                Some(SettlementEvent::ReceiptRootPosted {
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
                Some(SettlementEvent::AuditRevealed {
                    verifier,
                    provider,
                    epoch: e.epoch,
                    index: e.index,
                    passed: e.passed,
                })
            }
            C::Slashed::SIGNATURE_HASH => {
                let Ok(e) = C::Slashed::decode_log_data(l.data()) else {
                    return Ok(None);
                };
                let Some(provider) = self.key_of(e.provider).await? else {
                    return Ok(None);
                };
                Some(SettlementEvent::Slashed {
                    provider,
                    epoch: e.epoch,
                    index: e.index,
                    amount: Amount::new(u128::try_from(e.amount).unwrap_or(u128::MAX)),
                })
            }
            _ => None,
        })
    }
}

/// Whether `s` of a secp256k1 signature is in the lower half of the curve order (the contract
/// refuses the malleable upper twin; so does this check).
pub(crate) fn low_s(sig: &[u8; 65]) -> bool {
    // n / 2 for secp256k1.
    const HALF_N: [u8; 32] = [
        0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b,
        0x20, 0xa0,
    ];
    U256::from_be_slice(&sig[32..64]) <= U256::from_be_bytes(HALF_N)
}

impl NetworkSettlement for EvmSettlement {
    fn kind(&self) -> SettlementKind {
        SettlementKind::Evm
    }

    fn network_chain_id(&self) -> u64 {
        self.client().chain_id()
    }

    fn current_epoch(&self) -> SettlementFuture<'_, u64> {
        Box::pin(Settlement::epoch(self))
    }

    fn stake_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Amount>> {
        Box::pin(async move {
            let Some(account) = self.account_of_key(key).await? else {
                return Ok(None);
            };
            let a = self.client().account(account).await.map_err(evm)?;
            Ok(Some(Amount::new(a.stake)))
        })
    }

    fn events_from(&self, from: u64, wait: Duration) -> SettlementFuture<'_, SettlementEvents> {
        Box::pin(self.evm_events(from, wait))
    }

    fn sign_voucher_for(
        &self,
        channel: Hash32,
        cumulative: Amount,
    ) -> Result<VoucherSignature, SettlementError> {
        let sig =
            Settlement::sign_voucher(self, B256::from(*channel.as_bytes()), cumulative.units())?;
        Ok(VoucherSignature::Eip712(sig))
    }

    fn voucher_signer(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: &VoucherSignature,
    ) -> Option<Party> {
        let VoucherSignature::Eip712(bytes) = sig else {
            return None;
        };
        if !low_s(bytes) {
            return None;
        }
        let digest = self
            .client()
            .voucher_digest(B256::from(*channel.as_bytes()), cumulative.units())
            .ok()?;
        let sig = alloy::primitives::Signature::from_raw(bytes).ok()?;
        let who = sig.recover_address_from_prehash(&digest).ok()?;
        Some(Party::Address(who.0 .0))
    }

    fn channel_parties(&self, channel: Hash32) -> SettlementFuture<'_, Option<ChannelParties>> {
        Box::pin(async move {
            let c = self
                .client()
                .channel(B256::from(*channel.as_bytes()))
                .await
                .map_err(evm)?;
            Ok(c.map(|c| ChannelParties {
                payer: Party::Address(c.payer.0 .0),
                provider: Party::Address(c.provider.0 .0),
                deposit: Amount::new(c.deposit),
                claimed: Amount::new(c.claimed),
                closed: c.closed,
                expires_epoch: c.expires_epoch,
                closes_epoch: (c.closes_epoch != 0).then_some(c.closes_epoch),
            }))
        })
    }

    fn receipt_root_of(&self, receipts: &[SignedReceipt]) -> Hash32 {
        let leaves: Vec<_> = receipts
            .iter()
            .map(<EvmSettlement as Settlement>::receipt)
            .collect();
        Hash32::from_bytes(<EvmSettlement as Settlement>::receipt_root(&leaves))
    }

    fn receipt_proof_of(&self, receipts: &[SignedReceipt], index: usize) -> Option<Vec<Hash32>> {
        let leaves: Vec<_> = receipts.iter().map(ReceiptLeaf::of).collect();
        let path = agora_evm::receipts::receipt_proof(&leaves, index)?;
        Some(path.iter().map(|h| Hash32::from_bytes(h.0)).collect())
    }

    fn receipt_leaf_of(&self, receipt: &SignedReceipt) -> Hash32 {
        Hash32::from_bytes(ReceiptLeaf::of(receipt).hash().0)
    }

    /// The contract's check, over the receipt's `ReceiptLeaf`.
    fn receipt_proof_holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> bool {
        let path: Vec<B256> = proof.iter().map(|h| B256::from(*h.as_bytes())).collect();
        agora_evm::receipts::verify_receipt_proof(
            &B256::from(*root.as_bytes()),
            leaves,
            index,
            &ReceiptLeaf::of(receipt),
            &path,
        )
    }

    fn post_receipt_root(
        &self,
        epoch: u64,
        root: Hash32,
        receipts: u64,
        late: bool,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::post_root(
            self,
            epoch,
            *root.as_bytes(),
            receipts,
            late,
        ))
    }

    /// Pays only the account whose binding of `provider` verifies: a channel to an account
    /// that merely recorded someone's key would pay the wrong party.
    fn open_channel_to(
        &self,
        provider: AccountId,
        amount: Amount,
        timeout_epochs: u64,
    ) -> SettlementFuture<'_, Hash32> {
        Box::pin(async move {
            let Some(account) = self.account_of_key(provider).await? else {
                return Err(unknown_account());
            };
            let id =
                Settlement::open_channel(self, account, amount.units(), timeout_epochs).await?;
            Ok(Hash32::from_bytes(id.0))
        })
    }

    fn top_up_channel(&self, channel: Hash32, amount: Amount) -> SettlementFuture<'_, ()> {
        Box::pin(Settlement::top_up(
            self,
            B256::from(*channel.as_bytes()),
            amount.units(),
        ))
    }

    fn claim_voucher(
        &self,
        channel: Hash32,
        cumulative: Amount,
        sig: VoucherSignature,
    ) -> SettlementFuture<'_, ()> {
        Box::pin(async move {
            let VoucherSignature::Eip712(sig) = sig else {
                return Err(refused(crate::Refusal::ForgedVoucher));
            };
            Settlement::claim(
                self,
                B256::from(*channel.as_bytes()),
                cumulative.units(),
                &sig,
            )
            .await
        })
    }

    fn party_of_key(&self, key: AccountId) -> SettlementFuture<'_, Option<Party>> {
        Box::pin(async move {
            Ok(self
                .account_of_key(key)
                .await?
                .map(|a| Party::Address(a.0 .0)))
        })
    }
}

/// A shared handle on either settlement.
pub type SharedSettlement = Arc<dyn NetworkSettlement>;
