//! Errors: why a transaction was rejected, why a block or genesis is invalid, why the store
//! or the client failed.

use agora_core::{AccountId, Amount, CoreError, Hash32};

/// Why a transaction was rejected. A rejected transaction changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The sender's signature over the transaction does not verify.
    #[error("bad signature: the transaction is not signed by {account}")]
    BadSignature {
        /// The claimed sender.
        account: AccountId,
    },
    /// The transaction names another chain.
    #[error("wrong chain id: this chain is {expected}, the transaction names {got}")]
    WrongChainId {
        /// This chain's id.
        expected: u64,
        /// The transaction's chain id.
        got: u64,
    },
    /// The nonce was already used.
    #[error("stale nonce: account expects nonce {expected}, got {got}")]
    StaleNonce {
        /// The next nonce the account accepts.
        expected: u64,
        /// The nonce given.
        got: u64,
    },
    /// The nonce skips ahead of the next expected one.
    #[error("future nonce: account expects nonce {expected}, got {got}")]
    FutureNonce {
        /// The next nonce the account accepts.
        expected: u64,
        /// The nonce given.
        got: u64,
    },
    /// The sender has no account (it never received funds and is not in genesis).
    #[error("unknown account {0}")]
    UnknownAccount(AccountId),
    /// The account's balance does not cover the amount.
    #[error("overdraft: account {account} has {balance}, needs {need}")]
    Overdraft {
        /// The account.
        account: AccountId,
        /// Its spendable balance.
        balance: Amount,
        /// What the transaction needs.
        need: Amount,
    },
    /// The account's bonded stake does not cover the amount or the minimum.
    #[error("insufficient stake: account {account} has {have} staked, needs {need}")]
    InsufficientStake {
        /// The account.
        account: AccountId,
        /// Its bonded stake.
        have: Amount,
        /// What is needed.
        need: Amount,
    },
    /// An amount or epoch would exceed its integer range.
    #[error("overflow in {what}")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
    /// The body is well-formed bytes but not a meaningful transaction.
    #[error("malformed transaction: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The receipt's inclusion was already challenged (once per receipt).
    #[error("receipt {0} already challenged")]
    AlreadyChallenged(Hash32),
    /// No channel with this id.
    #[error("unknown channel {0}")]
    UnknownChannel(Hash32),
    /// The channel was closed; nothing more can be claimed or deposited.
    #[error("channel {0} is closed")]
    ChannelClosed(Hash32),
    /// Only the channel's payer may do this.
    #[error("{account} is not the payer of channel {channel}")]
    NotChannelPayer {
        /// The channel.
        channel: Hash32,
        /// Who tried.
        account: AccountId,
    },
    /// Only the channel's provider may claim.
    #[error("{account} is not the provider of channel {channel}")]
    NotChannelProvider {
        /// The channel.
        channel: Hash32,
        /// Who tried.
        account: AccountId,
    },
    /// The voucher is not signed by the channel's payer.
    #[error("forged voucher: not signed by payer {payer} of the channel")]
    ForgedVoucher {
        /// The channel's payer.
        payer: AccountId,
    },
    /// The voucher's cumulative amount is not above what was already claimed.
    #[error("double claim: cumulative {cumulative} is not above the {claimed} already claimed")]
    DoubleClaim {
        /// The voucher's cumulative amount.
        cumulative: Amount,
        /// What was already claimed.
        claimed: Amount,
    },
    /// The voucher asks for more than the channel ever held.
    #[error("over-claim: cumulative {cumulative} exceeds the channel's deposit {deposit}")]
    OverClaim {
        /// The voucher's cumulative amount.
        cumulative: Amount,
        /// The channel's total deposit.
        deposit: Amount,
    },
    /// The channel's timeout has not passed.
    #[error("channel {channel} cannot close before epoch {expires_epoch} (now {epoch})")]
    ChannelNotExpired {
        /// The channel.
        channel: Hash32,
        /// Its expiry epoch.
        expires_epoch: u64,
        /// The current epoch.
        epoch: u64,
    },
    /// A receipt in the transaction is not signed by the provider it names.
    #[error("forged receipt: not signed by provider {provider}")]
    ForgedReceipt {
        /// The provider the receipt names.
        provider: AccountId,
    },
    /// A receipt in the transaction does not belong where it is used.
    #[error("receipt does not fit: {reason}")]
    ReceiptMismatch {
        /// What does not match.
        reason: &'static str,
    },
    /// No demand for material is open on that leaf, or it is not in the state needed.
    #[error("material demand: {reason}")]
    Demand {
        /// What is wrong.
        reason: &'static str,
    },
    /// A channel's timeout does not outlast the provider's claim window.
    #[error("channel timeout {timeout} must exceed the claim window of {claim_window} epochs")]
    ChannelTimeout {
        /// The timeout asked for.
        timeout: u64,
        /// The claim window.
        claim_window: u64,
    },
    /// The account is not a registered verifier.
    #[error("{0} is not a registered verifier")]
    NotVerifier(AccountId),
    /// The epoch named is not the current one.
    #[error("wrong epoch: current epoch is {expected}, got {got}")]
    WrongEpoch {
        /// The current epoch.
        expected: u64,
        /// The epoch given.
        got: u64,
    },
    /// The provider already posted a root for that epoch.
    #[error("provider {provider} already posted a receipt root for epoch {epoch}")]
    RootAlreadyPosted {
        /// The provider.
        provider: AccountId,
        /// The epoch.
        epoch: u64,
    },
    /// No receipt root was posted by that provider for that epoch.
    #[error("no receipt root from {provider} for epoch {epoch}")]
    UnknownReceiptRoot {
        /// The provider.
        provider: AccountId,
        /// The epoch.
        epoch: u64,
    },
    /// A receipt answered under a root later than its epoch's next one, and that root is not
    /// a late root (`PostLateRoot`, every leaf audited): only a late root may hold a late
    /// receipt (a root audited in full because of probation is not one).
    #[error("receipt of epoch {receipt_epoch} is answered under {provider}'s epoch {epoch} root, which is neither that epoch's nor the next and not a late root")]
    LateReceiptRoot {
        /// The provider.
        provider: AccountId,
        /// The receipt's epoch.
        receipt_epoch: u64,
        /// The root's epoch.
        epoch: u64,
    },
    /// The Merkle proof does not place the receipt under the posted root.
    #[error("receipt {receipt} is not proven under the posted root")]
    BadReceiptProof {
        /// The receipt hash.
        receipt: Hash32,
    },
    /// A verdict on this receipt was already recorded.
    #[error("leaf {0} was already judged")]
    AlreadyJudged(Hash32),
    /// The verdict's parties overlap (a verifier judging itself, or confirming itself).
    #[error("conflicted verdict: {reason}")]
    ConflictedVerdict {
        /// Which parties overlap.
        reason: &'static str,
    },
    /// The leaf is not one the beacon selected for audit, or not this verifier's to audit.
    #[error("leaf {index} of {provider}'s epoch {epoch} root is not assigned to {verifier}")]
    NotAssigned {
        /// The provider.
        provider: AccountId,
        /// The root's epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// The verifier that asked.
        verifier: AccountId,
    },
    /// The audit step is outside its window of epochs.
    #[error("{what} is not open in epoch {epoch}: open from {from} to {to}")]
    AuditWindow {
        /// Which step.
        what: &'static str,
        /// The current epoch.
        epoch: u64,
        /// First epoch it is open.
        from: u64,
        /// Last epoch it is open.
        to: u64,
    },
    /// The leaf already has a commitment.
    #[error("leaf {index} of {provider}'s epoch {epoch} root already has an audit commitment")]
    AlreadyCommitted {
        /// The provider.
        provider: AccountId,
        /// The epoch.
        epoch: u64,
        /// The leaf.
        index: u64,
    },
    /// No matching commitment, or the reveal does not open it.
    #[error("no open commitment matches this reveal")]
    BadReveal,
    /// A verdict needs a revealed failed audit of the leaf by its sender.
    #[error("a verdict needs the sender's revealed failed audit of the leaf")]
    UnrevealedVerdict,
    /// Only the sequencer may advance the epoch.
    #[error("{0} is not the sequencer")]
    NotSequencer(AccountId),
}

impl TxError {
    /// A stable snake_case code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            TxError::BadSignature { .. } => "bad_signature",
            TxError::WrongChainId { .. } => "wrong_chain_id",
            TxError::StaleNonce { .. } => "stale_nonce",
            TxError::FutureNonce { .. } => "future_nonce",
            TxError::UnknownAccount(_) => "unknown_account",
            TxError::Overdraft { .. } => "overdraft",
            TxError::InsufficientStake { .. } => "insufficient_stake",
            TxError::Overflow { .. } => "overflow",
            TxError::Malformed { .. } => "malformed",
            TxError::AlreadyChallenged(_) => "already_challenged",
            TxError::UnknownChannel(_) => "unknown_channel",
            TxError::ChannelClosed(_) => "channel_closed",
            TxError::NotChannelPayer { .. } => "not_channel_payer",
            TxError::NotChannelProvider { .. } => "not_channel_provider",
            TxError::ForgedVoucher { .. } => "forged_voucher",
            TxError::DoubleClaim { .. } => "double_claim",
            TxError::OverClaim { .. } => "over_claim",
            TxError::ChannelNotExpired { .. } => "channel_not_expired",
            TxError::NotVerifier(_) => "not_verifier",
            TxError::WrongEpoch { .. } => "wrong_epoch",
            TxError::RootAlreadyPosted { .. } => "root_already_posted",
            TxError::UnknownReceiptRoot { .. } => "unknown_receipt_root",
            TxError::LateReceiptRoot { .. } => "late_receipt_root",
            TxError::BadReceiptProof { .. } => "bad_receipt_proof",
            TxError::AlreadyJudged(_) => "already_judged",
            TxError::ConflictedVerdict { .. } => "conflicted_verdict",
            TxError::NotSequencer(_) => "not_sequencer",
            TxError::NotAssigned { .. } => "not_assigned",
            TxError::AuditWindow { .. } => "audit_window",
            TxError::AlreadyCommitted { .. } => "already_committed",
            TxError::BadReveal => "bad_reveal",
            TxError::UnrevealedVerdict => "unrevealed_verdict",
            TxError::ForgedReceipt { .. } => "forged_receipt",
            TxError::ReceiptMismatch { .. } => "receipt_mismatch",
            TxError::Demand { .. } => "demand",
            TxError::ChannelTimeout { .. } => "channel_timeout",
        }
    }
}

/// Why a genesis file is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    /// An account appears twice in the allocations.
    #[error("account {0} is allocated twice")]
    DuplicateAllocation(AccountId),
    /// The allocations sum past the largest amount.
    #[error("total supply overflows")]
    SupplyOverflow,
    /// A parts-per-million parameter above 1,000,000.
    #[error("parameter {name} = {value} ppm exceeds 1000000")]
    BadPpm {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: u32,
    },
    /// Unbonding ends before the last verdict on a root posted in the unbonding epoch could land.
    #[error("unbonding_epochs = {unbonding} is shorter than selection + commit + reveal + plant + escalation: needs at least {need}")]
    UnbondingTooShort {
        /// The given unbonding period.
        unbonding: u64,
        /// The least that outlives every verdict.
        need: u64,
    },
    /// A window that must be at least one epoch is zero.
    #[error("parameter {name} must be at least 1")]
    ZeroWindow {
        /// The parameter.
        name: &'static str,
    },
    /// The answer window does not end inside the verdict window.
    #[error("answer_epochs = {answer} must be in 1..=escalation_epochs + 1 = {escalation} + 1")]
    AnswerWindow {
        /// answer_epochs.
        answer: u64,
        /// escalation_epochs.
        escalation: u64,
    },
    /// The windows add up past `u64`.
    #[error("the audit windows overflow u64")]
    WindowOverflow,
    /// A basis-point parameter above 10,000.
    #[error("parameter {name} = {value} bps exceeds 10000")]
    BadBps {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: u16,
    },
}

/// Why a block does not apply on top of the current chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block is for another chain.
    #[error("block for chain {got}, expected {expected}")]
    WrongChain {
        /// This chain.
        expected: u64,
        /// The block's.
        got: u64,
    },
    /// Height is not tip + 1.
    #[error("block height {got}, expected {expected}")]
    WrongHeight {
        /// tip + 1.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// The parent hash is not the tip.
    #[error("block {height} does not extend the tip")]
    WrongParent {
        /// The block's height.
        height: u64,
    },
    /// The header's transaction root does not match its transactions.
    #[error("block {height} transaction root mismatch")]
    TxRootMismatch {
        /// The block's height.
        height: u64,
    },
    /// A transaction in the block is rejected by the rules.
    #[error("block {height} transaction {index} rejected: {source}")]
    BadTx {
        /// The block's height.
        height: u64,
        /// The transaction's index in the block.
        index: usize,
        /// Why.
        source: TxError,
    },
    /// Replaying the block gives another state hash than the header records.
    #[error("block {height} state hash mismatch: header {header}, replay {replay}")]
    StateHashMismatch {
        /// The block's height.
        height: u64,
        /// The header's state hash.
        header: Hash32,
        /// The replayed state's hash.
        replay: Hash32,
    },
    /// The block holds more transactions than allowed.
    #[error("block {height} has {count} transactions, limit {limit}")]
    TooManyTxs {
        /// The block's height.
        height: u64,
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why the durable store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record did not decode (corruption or version mismatch).
    #[error("corrupt record {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// The database was made for another genesis.
    #[error("database genesis {stored} differs from the given genesis {given}")]
    GenesisMismatch {
        /// Stored genesis hash.
        stored: Hash32,
        /// Given genesis hash.
        given: Hash32,
    },
    /// A new database needs a genesis.
    #[error("database is empty and no genesis was given")]
    NoGenesis,
    /// Genesis is invalid.
    #[error("genesis: {0}")]
    Genesis(#[from] GenesisError),
    /// A sequencer thread could not start.
    #[error("spawning a sequencer thread: {0}")]
    Spawn(std::io::Error),
    /// The stored block log does not replay.
    #[error("block log: {0}")]
    Block(#[from] BlockError),
    /// The state rebuilt from the log differs from the stored state.
    #[error("rebuilt state hash {rebuilt} differs from stored {stored} at height {height}")]
    RebuildMismatch {
        /// The height compared.
        height: u64,
        /// The stored (snapshot + log) state hash.
        stored: Hash32,
        /// The hash from a full replay.
        rebuilt: Hash32,
    },
}

impl StoreError {
    pub(crate) fn db<E: Into<redb::Error>>(e: E) -> StoreError {
        StoreError::Db(e.into())
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The base URL is not `http://host:port[/prefix]`.
    #[error("bad url {0:?}: expected http://host:port")]
    BadUrl(String),
    /// The ledger refused the transaction.
    #[error("rejected ({code}): {message}")]
    Rejected {
        /// The stable code, as [`TxError::code`].
        code: String,
        /// The reason in words.
        message: String,
    },
    /// Any other non-success HTTP status.
    #[error("http {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The error message from the body.
        message: String,
    },
    /// The response was not valid HTTP or JSON of the expected shape.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The response exceeded the size limit.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// A value failed to parse.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// A broken invariant: a bug, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// Balances + stake + unbonding + escrow + burned differ from the genesis supply.
    #[error("supply not conserved: genesis {genesis}, accounted {accounted}")]
    Supply {
        /// Minted at genesis.
        genesis: Amount,
        /// Summed now.
        accounted: Amount,
    },
    /// Summing the supply overflowed.
    #[error("supply sum overflows")]
    SupplyOverflow,
    /// A channel has claimed more than it holds.
    #[error("channel {0} claimed more than its deposit")]
    ChannelOverClaimed(Hash32),
}

/// Why `agora ledger serve` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed to open or recover.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Binding or serving failed.
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}
