//! One account's handle on the deployed contracts: transactions signed locally with explicit
//! nonces and re-sent byte for byte on RPC failure or when a reorg or a restarted node dropped
//! them, finality at a depth, and the reads the network needs.

use crate::bindings::{
    AgoraSettlement::{self, AgoraSettlementErrors},
    PlantConfirmation,
    TestStablecoin::{self, TestStablecoinErrors},
    Verdict, Voucher,
};
use crate::deploy::Deployment;
use crate::error::{EvmError, Refusal};
use crate::receipts::ReceiptLeaf;
use agora_core::{AccountId, Keypair, Signature};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{Ethereum, EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{keccak256, Address, Bytes, TxHash, TxKind, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{eip712_domain, SolCall, SolEvent, SolInterface, SolStruct, SolValue};
use alloy::transports::TransportError;
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How hard the client tries.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Attempts of each RPC call before giving up (at least this many).
    pub attempts: u32,
    /// Wait between attempts (doubled each time, up to `max_backoff`).
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// A failing RPC call is retried for at least this long (a node restarting) before the
    /// client gives up with [`EvmError::Rpc`]; zero: only `attempts` count.
    pub patience: Duration,
    /// How long one RPC request may take before it counts as failed (and is retried): a node
    /// that accepts a connection and never answers must not hang the client.
    pub request_timeout: Duration,
    /// How long to wait for a sent transaction's receipt.
    pub receipt_timeout: Duration,
    /// How often to ask for it.
    pub poll: Duration,
    /// How long [`SettlementClient::until_final`] and
    /// [`SettlementClient::claim_until_final`] wait for their depth.
    pub final_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            patience: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
            receipt_timeout: Duration::from_secs(60),
            poll: Duration::from_millis(50),
            final_timeout: Duration::from_secs(600),
        }
    }
}

/// The attempts of one RPC call: at least `attempts`, for at least `patience`.
struct Attempts {
    options: ClientOptions,
    start: Instant,
    wait: Duration,
    made: u32,
}

impl Attempts {
    fn new(options: ClientOptions) -> Attempts {
        Attempts {
            options,
            start: Instant::now(),
            wait: options.backoff,
            made: 1,
        }
    }

    /// Waits before the next attempt; `false` when it is time to give up.
    async fn again(&mut self) -> bool {
        if self.made >= self.options.attempts && self.start.elapsed() >= self.options.patience {
            return false;
        }
        tokio::time::sleep(self.wait).await;
        self.wait = self
            .wait
            .saturating_mul(2)
            .min(self.options.max_backoff.max(self.options.backoff));
        self.made += 1;
        true
    }
}

/// How far a sent transaction is from final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finality {
    /// Not in the canonical chain: never mined, waiting in a pool, or dropped by a reorg or a
    /// node that lost its last blocks.
    NotIncluded,
    /// In a canonical block with this many confirmations (1: the latest block), fewer than
    /// asked.
    Confirming(u64),
    /// In a canonical block with at least the confirmations asked.
    Final(u64),
}

/// A mined, successful transaction.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Its hash.
    pub hash: TxHash,
    /// Gas it used.
    pub gas_used: u64,
    /// The block it is in.
    pub block: u64,
    /// The contract it created, if it was a deployment (else zero).
    pub address: Address,
    /// The full receipt (logs included).
    pub receipt: TransactionReceipt,
    /// Its nonce.
    pub nonce: u64,
    /// The signed bytes: re-sent as they are while the nonce is free (the same transaction).
    pub raw: Bytes,
    /// What it calls (or creates), with what input and value: signed anew if another
    /// transaction took its nonce.
    pub to: TxKind,
    /// Its input.
    pub input: Bytes,
    /// Its value.
    pub value: U256,
}

impl Submitted {
    fn with_receipt(mut self, receipt: TransactionReceipt) -> Submitted {
        self.gas_used = receipt.gas_used;
        self.block = receipt.block_number.unwrap_or_default();
        self.address = receipt.contract_address.unwrap_or_default();
        self.receipt = receipt;
        self
    }
}

/// An account's stake, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    /// Bonded stake.
    pub stake: u128,
    /// Unbonding stake, withdrawable from `release_epoch`.
    pub unbonding: u128,
    /// When the unbonding stake becomes withdrawable.
    pub release_epoch: u64,
    /// Registered verifier.
    pub verifier: bool,
    /// Its leaves that passed a revealed audit.
    pub clean_audits: u64,
    /// Confirmed frauds against it.
    pub frauds: u64,
    /// Its revealed failures neither confirmed nor expired yet, and the open inclusion
    /// challenges against it (withdrawal waits for them).
    pub open_alarms: u32,
}

/// A payment channel, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    /// Who escrowed.
    pub payer: Address,
    /// Who may claim.
    pub provider: Address,
    /// Total escrowed.
    pub deposit: u128,
    /// Total claimed.
    pub claimed: u128,
    /// From this epoch the payer may ask to close.
    pub expires_epoch: u64,
    /// From this epoch anyone may finalize the close (0 while open).
    pub closes_epoch: u64,
    /// Closed and refunded.
    pub closed: bool,
    /// Refunded to the payer by fraud verdicts.
    pub refunded: u128,
}

impl Channel {
    /// What the channel still escrows.
    pub fn escrow(&self) -> u128 {
        if self.closed {
            0
        } else {
            self.deposit.saturating_sub(self.claimed)
        }
    }
}

/// A posted receipt root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptRoot {
    /// The BLAKE3 Merkle root (opaque to the chain).
    pub root: B256,
    /// Leaves under it.
    pub receipts: u64,
    /// Posted as a late root (every leaf audited).
    pub full: bool,
    /// The audit probability of each leaf, parts per million, fixed when posted.
    pub audit_ppm: u32,
    /// A plant was opened under it.
    pub plant_opened: bool,
}

/// The audit of one leaf, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeafAudit {
    /// The verifier that committed (zero: none).
    pub verifier: Address,
    /// The epoch it committed in.
    pub committed_epoch: u64,
    /// The revealed outcome (`None` until revealed).
    pub passed: Option<bool>,
    /// Judged by a verdict or an opened plant.
    pub judged: bool,
    /// A revealed failure waiting for a verdict or a plant.
    pub alarm: bool,
}

/// A fraud verdict's evidence: leaf `index` of `provider`'s root of `epoch` is `leaf`,
/// by `proof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudEvidence {
    /// The provider.
    pub provider: Address,
    /// The root's epoch.
    pub epoch: u64,
    /// The leaf.
    pub index: u64,
    /// The receipt leaf (receipt hash, channel, cost).
    pub leaf: ReceiptLeaf,
    /// Its path to the root.
    pub proof: Vec<B256>,
}

impl FraudEvidence {
    fn to_sol(&self) -> crate::bindings::AgoraState::Fraud {
        crate::bindings::AgoraState::Fraud {
            provider: self.provider,
            epoch: self.epoch,
            index: self.index,
            receipt: self.leaf.receipt,
            channel: self.leaf.channel,
            cost: self.leaf.cost,
            proof: self.proof.clone(),
        }
    }
}

/// What a verifier commits to before revealing an audit outcome (the contract's
/// `auditCommitment`), computed here so the outcome never leaves this process before the reveal.
#[allow(clippy::too_many_arguments)]
pub fn audit_commitment(
    chain_id: u64,
    settlement: Address,
    verifier: Address,
    provider: Address,
    epoch: u64,
    index: u64,
    passed: bool,
    salt: B256,
) -> B256 {
    keccak256(
        (
            keccak256("agora/evm/audit-commit/v1"),
            U256::from(chain_id),
            settlement,
            verifier,
            provider,
            epoch,
            index,
            passed,
            salt,
        )
            .abi_encode(),
    )
}

/// What a planter commits to (the contract's `plantCommitment`).
pub fn plant_commitment(
    chain_id: u64,
    settlement: Address,
    provider: Address,
    epoch: u64,
    index: u64,
    salt: B256,
) -> B256 {
    keccak256(
        (
            keccak256("agora/evm/plant/v1"),
            U256::from(chain_id),
            settlement,
            provider,
            epoch,
            index,
            salt,
        )
            .abi_encode(),
    )
}

/// How many of its last transactions a client keeps to put back after a reorg.
const RECENT: usize = 256;

/// This client's last transactions by nonce, with their hash and signed bytes: the ones a
/// reorg or a restarted node dropped are sent again as they are, in nonce order, before any
/// new transaction takes their nonces.
#[derive(Default)]
struct Sent {
    recent: std::collections::BTreeMap<u64, (TxHash, Bytes)>,
}

impl Sent {
    fn remember(&mut self, nonce: u64, hash: TxHash, raw: Bytes) {
        self.recent.insert(nonce, (hash, raw));
        while self.recent.len() > RECENT {
            self.recent.pop_first();
        }
    }
}

/// One account's client for the deployed contracts.
pub struct SettlementClient {
    provider: DynProvider<Ethereum>,
    signer: PrivateKeySigner,
    wallet: EthereumWallet,
    chain_id: u64,
    deployment: Option<Deployment>,
    /// This client's recent transactions. Held across a whole submission, so this client's
    /// transactions are strictly ordered.
    nonce: Mutex<Sent>,
    options: ClientOptions,
}

fn refusal(data: &[u8]) -> Refusal {
    if let Ok(e) = AgoraSettlementErrors::abi_decode(data) {
        Refusal::Settlement(e)
    } else if let Ok(e) = TestStablecoinErrors::abi_decode(data) {
        Refusal::Token(e)
    } else {
        Refusal::Other(Bytes::copy_from_slice(data))
    }
}

/// The contract's refusal inside an RPC error, if the node executed and reverted it.
fn revert_of(e: &TransportError) -> Option<Refusal> {
    let payload = e.as_error_resp()?;
    if let Some(data) = payload.as_revert_data() {
        return Some(refusal(&data));
    }
    payload
        .message
        .contains("revert")
        .then(|| Refusal::Other(Bytes::new()))
}

/// Domain of an ed25519 network key's signature binding it to an EVM account.
pub const KEY_BINDING_DOMAIN: &[u8] = b"agora/evm/key-binding/v1";

/// `key` signs that it belongs to EVM account `account` on the settlement contract
/// `settlement` of chain `chain_id`: `KEY_BINDING_DOMAIN || borsh(chain_id, settlement, account)`.
pub fn sign_key_binding(
    key: &Keypair,
    chain_id: u64,
    settlement: Address,
    account: Address,
) -> Signature {
    key.sign(
        KEY_BINDING_DOMAIN,
        &(chain_id, settlement.0 .0, account.0 .0),
    )
}

/// Whether `sig` is `key`'s binding to `account` on (`chain_id`, `settlement`).
pub fn verify_key_binding(
    key: &AccountId,
    sig: &Signature,
    chain_id: u64,
    settlement: Address,
    account: Address,
) -> bool {
    key.verify(
        KEY_BINDING_DOMAIN,
        &(chain_id, settlement.0 .0, account.0 .0),
        sig,
    )
    .is_ok()
}

fn amount(a: u128) -> U256 {
    U256::from(a)
}

fn to_u128(a: U256) -> Result<u128, EvmError> {
    u128::try_from(a).map_err(|_| EvmError::AmountTooLarge(a))
}

fn call_err(what: &'static str) -> impl Fn(alloy::contract::Error) -> EvmError {
    move |e| match e {
        alloy::contract::Error::TransportError(source) => EvmError::Rpc {
            what,
            attempts: 1,
            source,
        },
        other => EvmError::Read {
            what,
            source: Box::new(other),
        },
    }
}

impl SettlementClient {
    /// Connects `signer` to the contracts of `deployment` at `rpc_url`; checks the chain id.
    pub async fn connect(
        rpc_url: &str,
        signer: PrivateKeySigner,
        deployment: Deployment,
    ) -> Result<SettlementClient, EvmError> {
        Self::connect_with(rpc_url, signer, deployment, ClientOptions::default()).await
    }

    /// [`SettlementClient::connect`] with explicit retry settings.
    pub async fn connect_with(
        rpc_url: &str,
        signer: PrivateKeySigner,
        deployment: Deployment,
        options: ClientOptions,
    ) -> Result<SettlementClient, EvmError> {
        let mut c = Self::connect_inner(rpc_url, signer, options).await?;
        if c.chain_id != deployment.chain_id {
            return Err(EvmError::WrongChain {
                expected: deployment.chain_id,
                got: c.chain_id,
            });
        }
        c.deployment = Some(deployment);
        Ok(c)
    }

    /// A client with no contracts yet: to deploy them, or send raw transactions.
    pub async fn connect_bare(
        rpc_url: &str,
        signer: PrivateKeySigner,
    ) -> Result<SettlementClient, EvmError> {
        Self::connect_inner(rpc_url, signer, ClientOptions::default()).await
    }

    async fn connect_inner(
        rpc_url: &str,
        signer: PrivateKeySigner,
        options: ClientOptions,
    ) -> Result<SettlementClient, EvmError> {
        let url = rpc_url.parse().map_err(|_| EvmError::BadUrl {
            url: rpc_url.to_owned(),
        })?;
        let http = alloy::transports::http::reqwest::Client::builder()
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| EvmError::HttpClient(e.to_string()))?;
        // No fillers: this client sets nonce, gas and fees itself, so it can re-send the
        // very same signed transaction after an RPC failure.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_reqwest(http, url)
            .erased();
        let wallet = EthereumWallet::from(signer.clone());
        let mut c = SettlementClient {
            provider,
            signer,
            wallet,
            chain_id: 0,
            deployment: None,
            nonce: Mutex::new(Sent::default()),
            options,
        };
        c.chain_id = c
            .retry("eth_chainId", || c.provider.get_chain_id().into_future())
            .await?;
        Ok(c)
    }

    /// This client's account.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The contracts this client talks to.
    pub fn deployment(&self) -> Option<&Deployment> {
        self.deployment.as_ref()
    }

    /// The underlying provider (for reads this client does not wrap).
    pub fn provider(&self) -> &DynProvider<Ethereum> {
        &self.provider
    }

    fn contracts(&self) -> Result<&Deployment, EvmError> {
        self.deployment.as_ref().ok_or(EvmError::NotDeployed)
    }

    async fn retry<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T, EvmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TransportError>>,
    {
        let mut attempts = Attempts::new(self.options);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::debug!(what, attempt = attempts.made, error = %e, "rpc call failed; retrying");
                    if !attempts.again().await {
                        return Err(EvmError::Rpc {
                            what,
                            attempts: attempts.made,
                            source: e,
                        });
                    }
                }
            }
        }
    }

    /// A contract read, retried like any RPC call when the transport fails.
    async fn read<T, F, Fut>(&self, what: &'static str, mut f: F) -> Result<T, EvmError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, alloy::contract::Error>>,
    {
        let mut attempts = Attempts::new(self.options);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(alloy::contract::Error::TransportError(e)) if revert_of(&e).is_none() => {
                    if !attempts.again().await {
                        return Err(EvmError::Rpc {
                            what,
                            attempts: attempts.made,
                            source: e,
                        });
                    }
                }
                Err(other) => return Err(call_err(what)(other)),
            }
        }
    }

    // ----- submission -----

    /// Signs and sends one transaction, waits for its receipt, and returns it if it succeeded.
    ///
    /// The transaction is signed once, with the account's next nonce as the chain counts it
    /// (pending transactions included); every re-send after an RPC error or timeout sends the
    /// same bytes (the same hash), and a "known"/"nonce too low" answer is resolved by looking
    /// the hash up, so one call never makes two transactions. A refusal found while
    /// estimating gas sends nothing. While the node is unreachable every step is retried for
    /// [`ClientOptions::patience`].
    pub async fn submit(
        &self,
        to: TxKind,
        input: Bytes,
        value: U256,
    ) -> Result<Submitted, EvmError> {
        let mut sent = self.nonce.lock().await;
        self.submit_locked(&mut sent, to, input, value).await
    }

    async fn pending_nonce(&self) -> Result<u64, EvmError> {
        let from = self.address();
        self.retry("eth_getTransactionCount", || {
            self.provider
                .get_transaction_count(from)
                .pending()
                .into_future()
        })
        .await
    }

    /// Sends again, byte for byte and in nonce order, this client's transactions the node
    /// no longer counts (a reorg dropped them, or a restarted node lost them); returns the
    /// account's next nonce after them. The nonce always comes from the chain: a local count
    /// would leave a gap that never mines.
    async fn resend_dropped(&self, sent: &mut Sent) -> Result<u64, EvmError> {
        let mut next = self.pending_nonce().await?;
        let dropped: Vec<(u64, TxHash, Bytes)> = sent
            .recent
            .range(next..)
            .map(|(n, (h, raw))| (*n, *h, raw.clone()))
            .collect();
        for (nonce, hash, raw) in dropped {
            if nonce != next {
                // A nonce before it is not ours to re-send: it cannot mine; let its
                // owner's `until_final` sign it anew.
                break;
            }
            tracing::warn!(%hash, nonce, "the node lost this transaction (reorg or restart); sending the same bytes again");
            self.broadcast(hash, &raw).await?;
            next += 1;
        }
        Ok(next)
    }

    async fn submit_locked(
        &self,
        sent: &mut Sent,
        to: TxKind,
        input: Bytes,
        value: U256,
    ) -> Result<Submitted, EvmError> {
        let from = self.address();
        let nonce = self.resend_dropped(sent).await?;
        let mut req = TransactionRequest::default()
            .with_from(from)
            .with_kind(to)
            .with_input(input.clone())
            .with_value(value)
            .with_nonce(nonce)
            .with_chain_id(self.chain_id);
        let gas = self.estimate(&req).await?;
        // Headroom: state may move between the estimate and the block.
        req.set_gas_limit(gas.saturating_add(gas / 4));
        let fees = self
            .retry("eth_feeHistory", || self.provider.estimate_eip1559_fees())
            .await?;
        req.set_max_fee_per_gas(fees.max_fee_per_gas);
        req.set_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let envelope = req.build(&self.wallet).await?;
        let hash = *envelope.tx_hash();
        let raw = Bytes::from(envelope.encoded_2718());
        sent.remember(nonce, hash, raw.clone());
        self.broadcast(hash, &raw).await?;
        let receipt = self.wait_receipt(hash, &raw).await?;
        if !receipt.status() {
            return Err(EvmError::RevertedOnChain { hash });
        }
        Ok(Submitted {
            hash,
            gas_used: receipt.gas_used,
            block: receipt.block_number.unwrap_or_default(),
            address: receipt.contract_address.unwrap_or_default(),
            receipt,
            nonce,
            raw,
            to,
            input,
            value,
        })
    }

    /// The receipt of `hash` if its block is in the canonical chain now.
    async fn canonical_receipt(
        &self,
        hash: TxHash,
    ) -> Result<Option<TransactionReceipt>, EvmError> {
        let receipt = self
            .retry("eth_getTransactionReceipt", || {
                self.provider.get_transaction_receipt(hash).into_future()
            })
            .await?;
        let Some(r) = receipt else {
            return Ok(None);
        };
        let (Some(number), Some(block_hash)) = (r.block_number, r.block_hash) else {
            return Ok(None);
        };
        // A node may still answer the receipt of a block a reorg replaced.
        let block = self
            .retry("eth_getBlockByNumber", || {
                self.provider
                    .get_block_by_number(number.into())
                    .into_future()
            })
            .await?;
        Ok(block.filter(|b| b.header.hash == block_hash).map(|_| r))
    }

    async fn latest_block(&self) -> Result<u64, EvmError> {
        self.retry("eth_blockNumber", || {
            self.provider.get_block_number().into_future()
        })
        .await
    }

    /// Whether `s` is in the canonical chain, and `depth` blocks deep (the latest block is
    /// depth 1).
    pub async fn finality(&self, s: &Submitted, depth: u64) -> Result<Finality, EvmError> {
        let Some(r) = self.canonical_receipt(s.hash).await? else {
            return Ok(Finality::NotIncluded);
        };
        let block = r.block_number.unwrap_or_default();
        let confirmations = self.latest_block().await?.saturating_sub(block) + 1;
        Ok(if confirmations >= depth {
            Finality::Final(confirmations)
        } else {
            Finality::Confirming(confirmations)
        })
    }

    /// Puts `s` back in the chain if it is not there (a reorg or a restarted node dropped it):
    /// the same signed bytes while its nonce is free (with this client's dropped transactions
    /// before it), so it stays one transaction; else (another transaction took the nonce) the
    /// same call signed anew with the next nonce, estimated first so the contract refuses it
    /// if its effect is already there (a voucher already claimed is `DoubleClaim`). Returns it
    /// as included now (a re-signed transaction has another hash).
    pub async fn ensure_included(&self, s: &Submitted) -> Result<Submitted, EvmError> {
        if let Some(r) = self.canonical_receipt(s.hash).await? {
            return Ok(s.clone().with_receipt(r));
        }
        let mut sent = self.nonce.lock().await;
        // Again under the lock: it may have landed meanwhile.
        if let Some(r) = self.canonical_receipt(s.hash).await? {
            return Ok(s.clone().with_receipt(r));
        }
        let from = self.address();
        let mined = self
            .retry("eth_getTransactionCount", || {
                self.provider
                    .get_transaction_count(from)
                    .latest()
                    .into_future()
            })
            .await?;
        if mined <= s.nonce {
            sent.remember(s.nonce, s.hash, s.raw.clone());
            let next = self.resend_dropped(&mut sent).await?;
            if next <= s.nonce {
                // A nonce before it is missing and not this client's to re-send: it waits in
                // the pool for that gap. Never signed anew while it could still be mined.
                self.broadcast(s.hash, &s.raw).await?;
            }
            let receipt = self.wait_receipt(s.hash, &s.raw).await?;
            if !receipt.status() {
                return Err(EvmError::RevertedOnChain { hash: s.hash });
            }
            return Ok(s.clone().with_receipt(receipt));
        }
        // Its nonce is used: by itself (mined since the last look; it cannot be mined after
        // this count) or by another transaction.
        if let Some(r) = self.canonical_receipt(s.hash).await? {
            return Ok(s.clone().with_receipt(r));
        }
        tracing::info!(hash = %s.hash, nonce = s.nonce, mined, "its nonce was taken; signing the call anew");
        self.submit_locked(&mut sent, s.to, s.input.clone(), s.value)
            .await
    }

    /// Waits until `s` is `depth` blocks deep in the canonical chain, putting it back
    /// ([`SettlementClient::ensure_included`]) whenever it drops out; returns it as final (a
    /// re-signed transaction has another hash). Gives up after
    /// [`ClientOptions::final_timeout`] with [`EvmError::NotFinal`].
    pub async fn until_final(&self, s: Submitted, depth: u64) -> Result<Submitted, EvmError> {
        let start = Instant::now();
        let mut s = s;
        loop {
            match self.finality(&s, depth).await? {
                Finality::Final(_) => return Ok(s),
                Finality::Confirming(_) => {}
                Finality::NotIncluded => s = self.ensure_included(&s).await?,
            }
            if start.elapsed() > self.options.final_timeout {
                return Err(EvmError::NotFinal {
                    hash: s.hash,
                    depth,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    async fn estimate(&self, req: &TransactionRequest) -> Result<u64, EvmError> {
        let mut attempts = Attempts::new(self.options);
        loop {
            match self.provider.estimate_gas(req.clone()).await {
                Ok(g) => return Ok(g),
                Err(e) => {
                    if let Some(r) = revert_of(&e) {
                        return Err(EvmError::Refused(r));
                    }
                    if !attempts.again().await {
                        return Err(EvmError::Rpc {
                            what: "eth_estimateGas",
                            attempts: attempts.made,
                            source: e,
                        });
                    }
                }
            }
        }
    }

    /// Whether the node knows the transaction (pending or mined).
    async fn known(&self, hash: TxHash) -> bool {
        matches!(
            self.provider.get_transaction_by_hash(hash).await,
            Ok(Some(_))
        )
    }

    async fn broadcast(&self, hash: TxHash, raw: &[u8]) -> Result<(), EvmError> {
        let mut attempts = Attempts::new(self.options);
        loop {
            match self.provider.send_raw_transaction(raw).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // An earlier attempt may have arrived with its answer lost.
                    if self.known(hash).await {
                        tracing::debug!(%hash, "send answered {e}, but the node has the transaction");
                        return Ok(());
                    }
                    if let Some(r) = revert_of(&e) {
                        return Err(EvmError::Refused(r));
                    }
                    tracing::debug!(%hash, attempt = attempts.made, error = %e, "send failed; re-sending the same bytes");
                    if !attempts.again().await {
                        return Err(EvmError::Rpc {
                            what: "eth_sendRawTransaction",
                            attempts: attempts.made,
                            source: e,
                        });
                    }
                }
            }
        }
    }

    async fn wait_receipt(&self, hash: TxHash, raw: &[u8]) -> Result<TransactionReceipt, EvmError> {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if let Ok(Some(r)) = self.provider.get_transaction_receipt(hash).await {
                return Ok(r);
            }
            polls += 1;
            // A node that dropped it (restarted, evicted) gets the same bytes again.
            if polls.is_multiple_of(20) && !self.known(hash).await {
                let _ = self.provider.send_raw_transaction(raw).await;
            }
            if start.elapsed() > self.options.receipt_timeout {
                return Err(EvmError::ReceiptTimeout {
                    hash,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    pub(crate) async fn create(&self, code: Bytes) -> Result<Submitted, EvmError> {
        let s = self.submit(TxKind::Create, code, U256::ZERO).await?;
        if s.address == Address::ZERO {
            return Err(EvmError::MissingOutput {
                hash: s.hash,
                what: "a contract address",
            });
        }
        Ok(s)
    }

    async fn call_settlement(&self, call: impl SolCall) -> Result<Submitted, EvmError> {
        let to = self.contracts()?.settlement;
        self.submit(TxKind::Call(to), call.abi_encode().into(), U256::ZERO)
            .await
    }

    async fn call_token(&self, call: impl SolCall) -> Result<Submitted, EvmError> {
        let to = self.contracts()?.token;
        self.submit(TxKind::Call(to), call.abi_encode().into(), U256::ZERO)
            .await
    }

    // ----- token -----

    /// Mints test tokens (only the token's deployer may).
    pub async fn mint(&self, to: Address, value: u128) -> Result<Submitted, EvmError> {
        self.call_token(TestStablecoin::mintCall {
            to,
            value: amount(value),
        })
        .await
    }

    /// Transfers tokens.
    pub async fn transfer(&self, to: Address, value: u128) -> Result<Submitted, EvmError> {
        self.call_token(TestStablecoin::transferCall {
            to,
            value: amount(value),
        })
        .await
    }

    /// Sends native currency (gas money).
    pub async fn send_native(&self, to: Address, wei: U256) -> Result<Submitted, EvmError> {
        self.submit(TxKind::Call(to), Bytes::new(), wei).await
    }

    /// Lets the settlement contract pull exactly `value` more than it may now, if it may not
    /// already pull that much.
    pub async fn ensure_allowance(&self, value: u128) -> Result<Option<Submitted>, EvmError> {
        let d = self.contracts()?;
        let token = TestStablecoin::new(d.token, &self.provider);
        let me = self.address();
        let have = self
            .read("allowance", || async {
                token.allowance(me, d.settlement).call().await
            })
            .await?;
        if have >= amount(value) {
            return Ok(None);
        }
        self.call_token(TestStablecoin::approveCall {
            spender: d.settlement,
            value: amount(value),
        })
        .await
        .map(Some)
    }

    // ----- stake -----

    /// Bonds `value` tokens as stake (approving them first if needed).
    pub async fn stake(&self, value: u128) -> Result<Submitted, EvmError> {
        self.ensure_allowance(value).await?;
        self.call_settlement(AgoraSettlement::stakeCall {
            amount: amount(value),
        })
        .await
    }

    /// Starts unbonding `value` of stake.
    pub async fn unstake(&self, value: u128) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::unstakeCall {
            amount: amount(value),
        })
        .await
    }

    /// Withdraws the unbonded stake once released.
    pub async fn withdraw(&self) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::withdrawCall {}).await
    }

    /// Bonds `extra` more and registers as a verifier.
    pub async fn register_verifier(&self, extra: u128) -> Result<Submitted, EvmError> {
        if extra > 0 {
            self.ensure_allowance(extra).await?;
        }
        self.call_settlement(AgoraSettlement::registerVerifierCall {
            extraStake: amount(extra),
        })
        .await
    }

    /// Binds `key` (this node's ed25519 network key) to this account: records the key and its
    /// signature over [`key_binding`] on the contract. The chain cannot check ed25519; peers
    /// check the binding with [`SettlementClient::verified_network_key`].
    pub async fn bind_network_key(&self, key: &Keypair) -> Result<Submitted, EvmError> {
        let d = self.contracts()?;
        let sig = sign_key_binding(key, d.chain_id, d.settlement, self.address());
        self.bind_network_key_raw(*key.account().as_bytes(), *sig.as_bytes())
            .await
    }

    /// Records any (key, signature) pair: what an attacker can do, since the chain does not
    /// verify it.
    pub async fn bind_network_key_raw(
        &self,
        key: [u8; 32],
        binding_sig: [u8; 64],
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::bindNetworkKeyCall {
            key: key.into(),
            bindingSig: Bytes::copy_from_slice(&binding_sig),
        })
        .await
    }

    /// The ed25519 network key `who` bound on the contract, only if its signature over the
    /// binding of (chain, contract, `who`) verifies; `None` for no key or a bad binding.
    pub async fn verified_network_key(&self, who: Address) -> Result<Option<AccountId>, EvmError> {
        let d = self.contracts()?;
        let s = self.settlement()?;
        let key = s
            .networkKey(who)
            .call()
            .await
            .map_err(call_err("networkKey"))?;
        let sig = s
            .networkKeySig(who)
            .call()
            .await
            .map_err(call_err("networkKeySig"))?;
        let (Ok(sig), false) = (Signature::from_slice(&sig), key.is_zero()) else {
            return Ok(None);
        };
        let account = AccountId::from_bytes(key.0);
        Ok(verify_key_binding(&account, &sig, d.chain_id, d.settlement, who).then_some(account))
    }

    // ----- channels -----

    /// Opens a channel to `provider` escrowing `value`, closable from `timeout_epochs` on;
    /// returns its id.
    pub async fn open_channel(
        &self,
        provider: Address,
        value: u128,
        timeout_epochs: u64,
    ) -> Result<(B256, Submitted), EvmError> {
        self.ensure_allowance(value).await?;
        let s = self
            .call_settlement(AgoraSettlement::openChannelCall {
                provider,
                amount: amount(value),
                timeoutEpochs: timeout_epochs,
            })
            .await?;
        let id = s
            .receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| {
                AgoraSettlement::ChannelOpened::decode_log_data(l.data())
                    .ok()
                    .map(|e| e.channel)
            })
            .ok_or(EvmError::MissingOutput {
                hash: s.hash,
                what: "a ChannelOpened event",
            })?;
        Ok((id, s))
    }

    /// Adds `value` to a channel.
    pub async fn top_up(&self, channel: B256, value: u128) -> Result<Submitted, EvmError> {
        self.ensure_allowance(value).await?;
        self.call_settlement(AgoraSettlement::topUpCall {
            id: channel,
            amount: amount(value),
        })
        .await
    }

    /// The EIP-712 domain of these contracts: ("Agora", "1", chain id, settlement contract).
    fn domain(&self) -> Result<alloy::sol_types::Eip712Domain, EvmError> {
        let d = self.contracts()?;
        Ok(eip712_domain! {
            name: "Agora",
            version: "1",
            chain_id: d.chain_id,
            verifying_contract: d.settlement,
        })
    }

    /// The EIP-712 digest of a voucher on these contracts.
    pub fn voucher_digest(&self, channel: B256, cumulative: u128) -> Result<B256, EvmError> {
        Ok(Voucher {
            channel,
            cumulative: amount(cumulative),
        }
        .eip712_signing_hash(&self.domain()?))
    }

    /// Signs a voucher as the payer: 65 bytes (r, s, v).
    pub fn sign_voucher(&self, channel: B256, cumulative: u128) -> Result<[u8; 65], EvmError> {
        let digest = self.voucher_digest(channel, cumulative)?;
        Ok(self.signer.sign_hash_sync(&digest)?.as_bytes())
    }

    /// Claims a voucher as the channel's provider.
    pub async fn claim(
        &self,
        channel: B256,
        cumulative: u128,
        payer_sig: &[u8],
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::claimCall {
            id: channel,
            cumulative: amount(cumulative),
            payerSig: Bytes::copy_from_slice(payer_sig),
        })
        .await
    }

    /// Claims a voucher and returns the channel once the claim that brought its claimed
    /// total to `cumulative` is `depth` blocks deep (the latest block is depth 1). A claim a
    /// reorg or a restarted node dropped is put back: this client's own transactions by
    /// [`SettlementClient::ensure_included`] and the next submission, and a claim the
    /// contract finds already covered (`DoubleClaim`: this voucher or a later one is in, by
    /// any transaction) is not sent again. Needs no historical state: the claims of the last
    /// `depth - 1` blocks come from the `VoucherClaimed` events. Gives up after
    /// [`ClientOptions::final_timeout`] with [`EvmError::NotFinal`].
    pub async fn claim_until_final(
        &self,
        channel: B256,
        cumulative: u128,
        payer_sig: &[u8],
        depth: u64,
    ) -> Result<Channel, EvmError> {
        let start = Instant::now();
        let mut sent: Option<Submitted> = None;
        loop {
            let latest = self.latest_block().await?;
            let now = self.channel_at(channel, Some(latest)).await?;
            match now {
                Some(c) if c.claimed >= cumulative => {
                    if self.claimed_before(channel, latest, depth).await? >= cumulative {
                        return Ok(c);
                    }
                }
                _ => {
                    let r = match &sent {
                        None => self.claim(channel, cumulative, payer_sig).await,
                        Some(s) => self.ensure_included(s).await,
                    };
                    match r {
                        Ok(s) => sent = Some(s),
                        // Covered by a claim in the chain now: wait for it to be deep enough.
                        Err(EvmError::Refused(Refusal::Settlement(
                            AgoraSettlementErrors::DoubleClaim(_),
                        ))) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if start.elapsed() > self.options.final_timeout {
                return Err(EvmError::NotFinal {
                    hash: sent.map(|s| s.hash).unwrap_or_default(),
                    depth,
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// What `channel` had claimed before the blocks less than `depth` deep under `latest`:
    /// its claimed total at `latest` (read by the caller) less what their `VoucherClaimed`
    /// events added, found from the first of them (`cumulative - amount`); `u128::MAX` when
    /// none of those blocks holds a claim (nothing recent to undo).
    async fn claimed_before(
        &self,
        channel: B256,
        latest: u64,
        depth: u64,
    ) -> Result<u128, EvmError> {
        if depth <= 1 {
            return Ok(u128::MAX);
        }
        let from = (latest + 2).saturating_sub(depth);
        let filter = alloy::rpc::types::Filter::new()
            .address(self.contracts()?.settlement)
            .event_signature(AgoraSettlement::VoucherClaimed::SIGNATURE_HASH)
            .topic1(channel)
            .from_block(from)
            .to_block(latest);
        let logs = self
            .retry("eth_getLogs", || {
                self.provider.get_logs(&filter).into_future()
            })
            .await?;
        let first = logs
            .iter()
            .find_map(|l| AgoraSettlement::VoucherClaimed::decode_log_data(l.data()).ok());
        Ok(match first {
            None => u128::MAX,
            Some(ev) => to_u128(ev.cumulative.saturating_sub(ev.amount))?,
        })
    }

    /// A channel at block `block` (`None`: the latest), retried while the node is unreachable.
    pub async fn channel_at(
        &self,
        id: B256,
        block: Option<u64>,
    ) -> Result<Option<Channel>, EvmError> {
        let s = self.settlement()?;
        let at = block.map_or(alloy::eips::BlockId::latest(), alloy::eips::BlockId::number);
        let c = self
            .read("channels", || async {
                s.channels(id).block(at).call().await
            })
            .await?;
        if c.payer == Address::ZERO {
            return Ok(None);
        }
        Ok(Some(Channel {
            payer: c.payer,
            provider: c.provider,
            deposit: c.deposit,
            claimed: c.claimed,
            expires_epoch: c.expiresEpoch,
            closes_epoch: c.closesEpoch,
            closed: c.closed,
            refunded: c.refunded,
        }))
    }

    /// Asks to close a channel after its timeout (payer).
    pub async fn request_close(&self, channel: B256) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::requestCloseCall { id: channel })
            .await
    }

    /// Closes a channel whose claim window passed, refunding the payer.
    pub async fn finalize_close(&self, channel: B256) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::finalizeCloseCall { id: channel })
            .await
    }

    // ----- roots -----

    /// Posts the receipt root for the current epoch.
    pub async fn post_root(
        &self,
        epoch: u64,
        root: B256,
        receipts: u64,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::postReceiptRootCall {
            epoch,
            root,
            receipts,
        })
        .await
    }

    /// Posts a late root (every leaf audited; holds the poster's unbonding stake).
    pub async fn post_late_root(
        &self,
        epoch: u64,
        root: B256,
        receipts: u64,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::postLateRootCall {
            epoch,
            root,
            receipts,
        })
        .await
    }

    // ----- audits -----

    /// Records the beacon of `epoch` (selects the roots of `epoch - 1`).
    pub async fn record_beacon(&self, epoch: u64) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::recordBeaconCall { epoch })
            .await
    }

    /// Commits this verifier's outcome for a leaf it was assigned; the salt keeps it secret
    /// until [`SettlementClient::reveal_audit`].
    pub async fn commit_audit(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: B256,
    ) -> Result<Submitted, EvmError> {
        let d = self.contracts()?;
        let commitment = audit_commitment(
            d.chain_id,
            d.settlement,
            self.address(),
            provider,
            epoch,
            index,
            passed,
            salt,
        );
        self.commit_audit_raw(provider, epoch, index, commitment)
            .await
    }

    /// Commits any 32 bytes (what an attacker can send).
    pub async fn commit_audit_raw(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        commitment: B256,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::commitAuditCall {
            provider,
            epoch,
            index,
            commitment,
        })
        .await
    }

    /// Reveals the outcome committed to; `receipt` is the audited leaf's `ReceiptLeaf` hash
    /// (on probation a receipt earns a clean audit once, whatever roots hold it).
    pub async fn reveal_audit(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: B256,
        salt: B256,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::revealAuditCall {
            provider,
            epoch,
            index,
            passed,
            receipt,
            salt,
        })
        .await
    }

    /// Signs, as a confirming verifier, that the evidence's leaf failed its audit (EIP-712
    /// `Verdict`).
    pub fn sign_verdict(&self, v: &FraudEvidence) -> Result<[u8; 65], EvmError> {
        let digest = Verdict {
            provider: v.provider,
            epoch: v.epoch,
            index: v.index,
            receipt: v.leaf.receipt,
            channel: v.leaf.channel,
            cost: v.leaf.cost,
        }
        .eip712_signing_hash(&self.domain()?);
        Ok(self.signer.sign_hash_sync(&digest)?.as_bytes())
    }

    /// Signs, as a confirming verifier, that a planted answer fails its audit (EIP-712
    /// `PlantConfirmation`).
    pub fn sign_plant_confirmation(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<[u8; 65], EvmError> {
        let digest = PlantConfirmation {
            provider,
            epoch,
            index,
        }
        .eip712_signing_hash(&self.domain()?);
        Ok(self.signer.sign_hash_sync(&digest)?.as_bytes())
    }

    /// Brings a fraud verdict as the verifier that revealed the leaf's failure, with
    /// `confirmer`'s signature from [`SettlementClient::sign_verdict`].
    pub async fn fraud_verdict(
        &self,
        v: &FraudEvidence,
        confirmer: Address,
        confirmer_sig: &[u8],
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::fraudVerdictCall {
            v: v.to_sol(),
            confirmer,
            confirmerSig: Bytes::copy_from_slice(confirmer_sig),
        })
        .await
    }

    /// Charges an unconfirmed failure to its verifier, once the verdict window closed.
    pub async fn expire_alarm(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(AgoraSettlement::expireAlarmCall {
            provider,
            epoch,
            index,
        })
        .await
    }

    /// Commits a plant (escrowing the plant bond, approved first if needed).
    pub async fn plant(&self, commitment: B256) -> Result<Submitted, EvmError> {
        let bond = self.contracts()?.params.plant_bond;
        if bond > 0 {
            self.ensure_allowance(bond).await?;
        }
        self.call_settlement(AgoraSettlement::plantCall { commitment })
            .await
    }

    /// The commitment of a plant at `provider`'s leaf on these contracts.
    pub fn plant_commitment(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        salt: B256,
    ) -> Result<B256, EvmError> {
        let d = self.contracts()?;
        Ok(plant_commitment(
            d.chain_id,
            d.settlement,
            provider,
            epoch,
            index,
            salt,
        ))
    }

    /// Opens this provider's plant at its leaf; `confirmation`: a third verifier and its
    /// [`SettlementClient::sign_plant_confirmation`] signature.
    pub async fn reveal_plant(
        &self,
        epoch: u64,
        index: u64,
        salt: B256,
        confirmation: Option<(Address, [u8; 65])>,
    ) -> Result<Submitted, EvmError> {
        let (confirmer, sig) = match confirmation {
            Some((a, s)) => (a, Bytes::copy_from_slice(&s)),
            None => (Address::ZERO, Bytes::new()),
        };
        self.call_settlement(AgoraSettlement::revealPlantCall {
            epoch,
            index,
            salt,
            confirmer,
            confirmerSig: sig,
        })
        .await
    }

    /// The verifier assigned to a leaf, if it is selected (and its beacon can be drawn).
    pub async fn assignee(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<Option<Address>, EvmError> {
        let a = self
            .settlement()?
            .assignee(provider, epoch, index)
            .call()
            .await
            .map_err(call_err("assignee"))?;
        Ok((a != Address::ZERO).then_some(a))
    }

    /// The verifier set that assigns the roots of `epoch`.
    pub async fn verifier_set_at(&self, epoch: u64) -> Result<Vec<Address>, EvmError> {
        // Served by AgoraDisputes through the settlement's fallback.
        self.disputes()?
            .verifierSetAt(epoch)
            .call()
            .await
            .map_err(call_err("verifierSetAt"))
    }

    /// The recorded beacon of `epoch`, if any.
    pub async fn beacon(&self, epoch: u64) -> Result<Option<B256>, EvmError> {
        let b = self
            .settlement()?
            .beacons(epoch)
            .call()
            .await
            .map_err(call_err("beacons"))?;
        Ok((!b.is_zero()).then_some(b))
    }

    /// The audit of `provider`'s leaf `index` of `epoch`.
    pub async fn leaf_audit(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<LeafAudit, EvmError> {
        let s = self.settlement()?;
        let key = s
            .leafKey(provider, epoch, index)
            .call()
            .await
            .map_err(call_err("leafKey"))?;
        let l = s.leaves(key).call().await.map_err(call_err("leaves"))?;
        Ok(LeafAudit {
            verifier: l.verifier,
            committed_epoch: l.committedEpoch,
            passed: match l.outcome {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            },
            judged: l.judged,
            alarm: l.alarm,
        })
    }

    /// Slashed tokens the contract holds for ever.
    pub async fn burned(&self) -> Result<u128, EvmError> {
        to_u128(
            self.settlement()?
                .burned()
                .call()
                .await
                .map_err(call_err("burned"))?,
        )
    }

    /// Bonds of open plants.
    pub async fn plant_bonds(&self) -> Result<u128, EvmError> {
        to_u128(
            self.settlement()?
                .plantBonds()
                .call()
                .await
                .map_err(call_err("plantBonds"))?,
        )
    }

    // ----- reads -----

    fn settlement(
        &self,
    ) -> Result<AgoraSettlement::AgoraSettlementInstance<&DynProvider>, EvmError> {
        Ok(AgoraSettlement::new(
            self.contracts()?.settlement,
            &self.provider,
        ))
    }

    /// Token balance of `who`.
    pub async fn token_balance(&self, who: Address) -> Result<u128, EvmError> {
        let token = TestStablecoin::new(self.contracts()?.token, &self.provider);
        to_u128(
            token
                .balanceOf(who)
                .call()
                .await
                .map_err(call_err("balanceOf"))?,
        )
    }

    /// The stake record of `who`.
    pub async fn account(&self, who: Address) -> Result<Account, EvmError> {
        let a = self
            .settlement()?
            .accounts(who)
            .call()
            .await
            .map_err(call_err("accounts"))?;
        Ok(Account {
            stake: a.stake,
            unbonding: a.unbonding,
            release_epoch: a.releaseEpoch,
            verifier: a.verifier,
            clean_audits: a.cleanAudits,
            frauds: a.frauds,
            open_alarms: a.openAlarms,
        })
    }

    /// A channel, if it exists (the latest block; retried while the node is unreachable).
    pub async fn channel(&self, id: B256) -> Result<Option<Channel>, EvmError> {
        self.channel_at(id, None).await
    }

    /// The root `provider` posted for `epoch`, if any.
    pub async fn root(
        &self,
        provider: Address,
        epoch: u64,
    ) -> Result<Option<ReceiptRoot>, EvmError> {
        let r = self
            .settlement()?
            .roots(provider, epoch)
            .call()
            .await
            .map_err(call_err("roots"))?;
        Ok((r.receipts != 0).then_some(ReceiptRoot {
            root: r.root,
            receipts: r.receipts,
            full: r.full,
            audit_ppm: r.auditPpm,
            plant_opened: r.plantOpened,
        }))
    }

    /// The current epoch (from the latest block).
    pub async fn current_epoch(&self) -> Result<u64, EvmError> {
        self.settlement()?
            .currentEpoch()
            .call()
            .await
            .map_err(call_err("currentEpoch"))
    }

    /// Audit fees held by the contract.
    pub async fn audit_pool(&self) -> Result<u128, EvmError> {
        to_u128(
            self.settlement()?
                .auditPool()
                .call()
                .await
                .map_err(call_err("auditPool"))?,
        )
    }

    /// The ed25519 key `who` declared (zero if none).
    pub async fn network_key(&self, who: Address) -> Result<B256, EvmError> {
        self.settlement()?
            .networkKey(who)
            .call()
            .await
            .map_err(call_err("networkKey"))
    }

    // ----- local chains -----

    /// Mines `blocks` empty blocks (Anvil and Hardhat only).
    pub async fn mine(&self, blocks: u64) -> Result<(), EvmError> {
        self.retry("anvil_mine", || {
            self.provider
                .raw_request::<_, serde_json::Value>("anvil_mine".into(), (U256::from(blocks),))
        })
        .await?;
        Ok(())
    }

    /// Mines until the current epoch is at least `epoch` (Anvil and Hardhat only).
    pub async fn mine_to_epoch(&self, epoch: u64) -> Result<(), EvmError> {
        let d = self.contracts()?;
        let now = self
            .retry("eth_blockNumber", || {
                self.provider.get_block_number().into_future()
            })
            .await?;
        let target = d
            .start_block
            .saturating_add(epoch.saturating_mul(d.params.epoch_blocks));
        if target > now {
            self.mine(target - now).await?;
        }
        Ok(())
    }
}

/// A material demand on a leaf, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The assigned verifier that made it.
    pub verifier: Address,
    /// The last epoch the provider may answer in.
    pub due_epoch: u64,
    /// The BLAKE3 hash of the material the provider committed to, once it answered.
    pub answered: Option<B256>,
}

/// An inclusion challenge, as the contract holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The challenger: the payer of the receipt's channel.
    pub payer: Address,
    /// The provider that signed the receipt.
    pub provider: Address,
    /// The receipt leaf's channel and cost, as the provider signed them.
    pub channel: B256,
    /// The receipt's cost.
    pub cost: u128,
    /// The epoch the receipt names.
    pub receipt_epoch: u64,
    /// The last epoch the provider may answer in.
    pub due_epoch: u64,
    /// The challenger's escrowed bond.
    pub bond: u128,
    /// Neither answered nor charged yet.
    pub open: bool,
}

/// A provider's secp256k1 commitment to a receipt it served (EIP-712 `Receipt`): what a payer
/// carries to an inclusion challenge on the chain, beside the ed25519-signed receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptCommitment {
    /// The receipt leaf (BLAKE3 hash of the signed receipt, its channel, its cost).
    pub leaf: ReceiptLeaf,
    /// The epoch the receipt names.
    pub epoch: u64,
    /// The provider's signature over [`SettlementClient::receipt_digest`].
    pub sig: [u8; 65],
}

// ----- disputes: material demands, Withheld verdicts, inclusion challenges -----

impl SettlementClient {
    /// The dispute functions at the settlement's address (AgoraSettlement's fallback runs them
    /// on its own storage).
    fn disputes(
        &self,
    ) -> Result<crate::bindings::AgoraDisputes::AgoraDisputesInstance<&DynProvider>, EvmError> {
        Ok(crate::bindings::AgoraDisputes::new(
            self.contracts()?.settlement,
            &self.provider,
        ))
    }

    /// Where AgoraSettlement's constructor deployed AgoraDisputes (its first creation): the
    /// code its fallback delegates to. Calls at this address itself are refused.
    pub fn disputes_code_address(&self) -> Result<Address, EvmError> {
        Ok(self.contracts()?.settlement.create(1))
    }

    /// The EIP-712 digest a provider signs for a receipt it served in `epoch`.
    pub fn receipt_digest(&self, leaf: &ReceiptLeaf, epoch: u64) -> Result<B256, EvmError> {
        Ok(crate::bindings::Receipt {
            receipt: leaf.receipt,
            channel: leaf.channel,
            cost: leaf.cost,
            epoch,
        }
        .eip712_signing_hash(&self.domain()?))
    }

    /// Signs, as the provider, a receipt served in `epoch`: handed to the payer with the
    /// ed25519-signed receipt, so the payer can challenge its omission on the chain.
    pub fn sign_receipt(
        &self,
        leaf: &ReceiptLeaf,
        epoch: u64,
    ) -> Result<ReceiptCommitment, EvmError> {
        let digest = self.receipt_digest(leaf, epoch)?;
        Ok(ReceiptCommitment {
            leaf: *leaf,
            epoch,
            sig: self.signer.sign_hash_sync(&digest)?.as_bytes(),
        })
    }

    /// Signs, as a confirming verifier, that the provider withheld a leaf's material from it too
    /// (EIP-712 `Withheld`).
    pub fn sign_withheld(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<[u8; 65], EvmError> {
        let digest = crate::bindings::Withheld {
            provider,
            epoch,
            index,
        }
        .eip712_signing_hash(&self.domain()?);
        Ok(self.signer.sign_hash_sync(&digest)?.as_bytes())
    }

    /// As the assigned verifier, demands a selected leaf's material on the chain.
    pub async fn demand_material(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(crate::bindings::AgoraDisputes::demandMaterialCall {
            provider,
            epoch,
            index,
        })
        .await
    }

    /// As the provider, answers a demand on its leaf with the leaf, its path and the BLAKE3
    /// hash of the material it hands the verifier.
    pub async fn answer_demand(
        &self,
        epoch: u64,
        index: u64,
        leaf: &ReceiptLeaf,
        proof: &[B256],
        material: B256,
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(crate::bindings::AgoraDisputes::answerDemandCall {
            epoch,
            index,
            receipt: leaf.receipt,
            channel: leaf.channel,
            cost: leaf.cost,
            proof: proof.to_vec(),
            material,
        })
        .await
    }

    /// As the verifier whose demand went unanswered, brings a Withheld verdict with
    /// `confirmer`'s signature from [`SettlementClient::sign_withheld`].
    pub async fn withheld_verdict(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
        confirmer: Address,
        confirmer_sig: &[u8],
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(crate::bindings::AgoraDisputes::withheldVerdictCall {
            provider,
            epoch,
            index,
            confirmer,
            confirmerSig: Bytes::copy_from_slice(confirmer_sig),
        })
        .await
    }

    /// As the payer of the receipt's channel, challenges the receipt's omission from the
    /// provider's roots, escrowing the challenge bond (approved first if needed).
    pub async fn challenge_inclusion(
        &self,
        receipt: &ReceiptCommitment,
    ) -> Result<Submitted, EvmError> {
        let bond = self.contracts()?.params.challenge_bond;
        if bond > 0 {
            self.ensure_allowance(bond).await?;
        }
        self.call_settlement(crate::bindings::AgoraDisputes::challengeInclusionCall {
            receipt: receipt.leaf.receipt,
            channel: receipt.leaf.channel,
            cost: receipt.leaf.cost,
            epoch: receipt.epoch,
            providerSig: Bytes::copy_from_slice(&receipt.sig),
        })
        .await
    }

    /// As the challenged provider, proves the receipt is leaf `index` of its root of `epoch`.
    pub async fn answer_inclusion(
        &self,
        receipt: B256,
        epoch: u64,
        index: u64,
        proof: &[B256],
    ) -> Result<Submitted, EvmError> {
        self.call_settlement(crate::bindings::AgoraDisputes::answerInclusionCall {
            receipt,
            epoch,
            index,
            proof: proof.to_vec(),
        })
        .await
    }

    /// Slashes the provider of a challenge left unanswered past its deadline (anyone may).
    pub async fn expire_challenge(&self, receipt: B256) -> Result<Submitted, EvmError> {
        self.call_settlement(crate::bindings::AgoraDisputes::expireChallengeCall { receipt })
            .await
    }

    /// The demand on `provider`'s leaf, if one was made.
    pub async fn demand(
        &self,
        provider: Address,
        epoch: u64,
        index: u64,
    ) -> Result<Option<Demand>, EvmError> {
        let d = self
            .disputes()?
            .demandOf(provider, epoch, index)
            .call()
            .await
            .map_err(call_err("demandOf"))?;
        Ok((d.verifier != Address::ZERO).then_some(Demand {
            verifier: d.verifier,
            due_epoch: d.dueEpoch,
            answered: d.answered.then_some(d.material),
        }))
    }

    /// The challenge of a receipt, if one was made.
    pub async fn challenge(&self, receipt: B256) -> Result<Option<Challenge>, EvmError> {
        let c = self
            .disputes()?
            .challengeOf(receipt)
            .call()
            .await
            .map_err(call_err("challengeOf"))?;
        Ok((c.payer != Address::ZERO).then_some(Challenge {
            payer: c.payer,
            provider: c.provider,
            channel: c.channel,
            cost: c.cost,
            receipt_epoch: c.receiptEpoch,
            due_epoch: c.dueEpoch,
            bond: c.bond,
            open: c.open,
        }))
    }
}
