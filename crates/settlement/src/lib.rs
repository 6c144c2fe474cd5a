//! One settlement interface for Agora's operations (stake, unbonding, verifiers, payment
//! channels and vouchers, receipt roots, and the audits: selection, commit, reveal, fraud
//! verdicts with slash, bounty and refund, false alarms, plants, material demands with
//! `Withheld` verdicts, inclusion challenges), implemented by the embedded ledger and by an
//! EVM chain.
//!
//! [`Settlement`] is one account's view of settlement. [`ledger::LedgerSettlement`] signs
//! ledger transactions with the account's ed25519 key and submits them to an `agora ledger
//! serve` node; [`evm::EvmSettlement`] sends them to the `AgoraSettlement` contract with the
//! account's secp256k1 key. Both answer a refused operation with the same [`Refusal`], so
//! one scenario can run on either and must end with the same outcomes and balances
//! (`tests/it`, the conformance suite).
//!
//! Where the two differ in mechanics, the interface takes the chain's shape and the ledger
//! side checks what its state machine already did: the ledger releases matured unbonding
//! and closes due channels itself when an epoch ends, so [`Settlement::withdraw`] and
//! [`Settlement::finalize_close`] there only confirm it happened (refusing like the contract
//! when it has not); it also charges unconfirmed failures itself, so
//! [`Settlement::expire_alarm`] there does nothing the chain's call does not.
//!
//! Receipts differ in what each settlement checks: the ledger takes the provider-signed
//! receipt and its BLAKE3 path; the chain takes [`agora_evm::receipts::ReceiptLeaf`] (the
//! receipt's BLAKE3 hash, channel and cost) and its keccak path. [`Settlement::receipt`] turns a
//! signed receipt into the settlement's own, and roots and paths come from
//! [`Settlement::receipt_root`] and [`Settlement::receipt_proof`].
//!
//! The network's services see settlement through [`network::NetworkSettlement`] instead:
//! parties named by their ed25519 network keys, implemented by the same two types.

pub mod evm;
pub mod ledger;
pub mod network;
pub mod open;
pub mod role_broker;
pub mod role_provider;
pub mod role_verifier;

pub use agora_wire::protocol::SignedReceipt;
use std::fmt::Debug;
use std::future::Future;

/// Why settlement refused an operation, the same on every implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough spendable balance (or token allowance).
    Overdraft,
    /// Bonded stake below what the operation needs.
    InsufficientStake,
    /// Unbonding stake not released yet.
    StillUnbonding,
    /// No such channel.
    UnknownChannel,
    /// The channel is closed, or closing where that forbids the operation.
    ChannelClosed,
    /// Only the channel's payer may do this.
    NotChannelPayer,
    /// Only the channel's provider may do this.
    NotChannelProvider,
    /// The voucher is not the payer's signature over this channel on this settlement.
    ForgedVoucher,
    /// The voucher does not raise what was claimed.
    DoubleClaim,
    /// The voucher exceeds the deposit.
    OverClaim,
    /// The channel's timeout has not passed.
    ChannelNotExpired,
    /// The channel's claim window after the close request has not passed.
    ChannelNotDue,
    /// A channel timeout not longer than the claim window.
    ChannelTimeout,
    /// Not the current epoch.
    WrongEpoch,
    /// A root for this provider and epoch exists.
    RootAlreadyPosted,
    /// A zero amount, a channel to oneself, a bad receipt count, a leaf past the root's count,
    /// a plant committed twice, a second plant opened under one root.
    Malformed,
    /// The sender is not the verifier the beacon assigned to this selected leaf.
    NotAssigned,
    /// Outside the epochs this audit step is open in.
    AuditWindow,
    /// The leaf's audit was committed already.
    AlreadyCommitted,
    /// A reveal (of an audit or a plant) that does not open the sender's commitment.
    BadReveal,
    /// A verdict or plant confirmation whose parties conflict (the sender, the provider or the
    /// verifier judged confirming itself).
    ConflictedVerdict,
    /// A confirmer that is not a registered verifier.
    NotVerifier,
    /// A confirmer's signature that does not verify.
    BadSignature,
    /// No root for this provider and epoch.
    UnknownReceiptRoot,
    /// The receipt is not the leaf under the provider's root.
    BadReceiptProof,
    /// The leaf was judged already (by a verdict or an opened plant).
    AlreadyJudged,
    /// The receipt's inclusion is challenged already.
    AlreadyChallenged,
    /// The sender did not reveal a failed audit of this leaf.
    UnrevealedVerdict,
    /// Any other refusal, by the implementation's own name for it.
    Other {
        /// The ledger's error code or the contract's error name.
        code: String,
    },
    /// A material demand that is absent, answered, past its deadline, made twice or made by
    /// another verifier, where the operation needs otherwise.
    Demand,
    /// A receipt (or, on a chain, the provider's commitment to it) not signed by the provider.
    ForgedReceipt,
    /// A receipt answered from a root more than one epoch after it that is not audited in full.
    LateReceiptRoot,
}

/// Errors of a settlement operation.
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    /// Settlement refused it; nothing changed.
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// The ledger node could not be reached or answered nonsense.
    #[error("ledger: {0}")]
    Ledger(#[source] agora_ledger::ClientError),
    /// The EVM chain could not be reached or answered nonsense.
    #[error("evm: {0}")]
    Evm(#[source] Box<agora_evm::EvmError>),
    /// A blocking ledger call's task died.
    #[error("the ledger call's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An amount beyond what the settlement can represent.
    #[error("amount {0} out of range")]
    AmountOutOfRange(u128),
}

impl SettlementError {
    /// The refusal, if this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            SettlementError::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// An account's stake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StakeView {
    /// Bonded.
    pub stake: u128,
    /// Unbonding, not yet released.
    pub unbonding: u128,
    /// Registered verifier.
    pub verifier: bool,
}

/// A channel's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelView {
    /// Total escrowed.
    pub deposit: u128,
    /// Total claimed.
    pub claimed: u128,
    /// Closed and refunded.
    pub closed: bool,
    /// Refunded to the payer by fraud verdicts.
    pub refunded: u128,
}

/// What a call to charge an expired dispute (an unconfirmed failure, an unanswered inclusion
/// challenge) found: the party owed calls it, since on a chain nobody else has to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This call charged it (the verifier's false alarm, the provider's omission).
    Charged,
    /// Nothing is left to charge: a verdict, a plant, an answer or another caller settled it,
    /// or the settlement charges it itself (the ledger, when an epoch starts).
    Settled,
    /// Not chargeable before this epoch.
    NotDue {
        /// The first epoch the charge may land in.
        epoch: u64,
    },
}

/// One account's settlement.
pub trait Settlement: Send + Sync {
    /// How accounts are named (an ed25519 key, an EVM address).
    type Account: Copy + Eq + Debug + Send + Sync;
    /// How channels are named.
    type ChannelId: Copy + Eq + Debug + Send + Sync;
    /// A payer's signature over a voucher.
    type VoucherSig: Clone + Debug + Send + Sync;
    /// A receipt as this settlement's verdicts carry it.
    type Receipt: Clone + Debug + Send + Sync;
    /// A second verifier's signed confirmation (of a verdict or a plant), with its account.
    type Confirmation: Clone + Debug + Send + Sync;

    /// This client's account.
    fn account(&self) -> Self::Account;
    /// Spendable balance of `who` (ledger balance; token balance on a chain).
    fn balance(
        &self,
        who: Self::Account,
    ) -> impl Future<Output = Result<u128, SettlementError>> + Send;
    /// Stake of `who`.
    fn stake_of(
        &self,
        who: Self::Account,
    ) -> impl Future<Output = Result<StakeView, SettlementError>> + Send;
    /// The epoch this client's next operation lands in.
    fn epoch(&self) -> impl Future<Output = Result<u64, SettlementError>> + Send;
    /// Bonds `amount`.
    fn stake(&self, amount: u128) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Starts unbonding `amount`.
    fn unstake(&self, amount: u128) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Makes released unbonding spendable.
    fn withdraw(&self) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Bonds `extra` more and registers as a verifier.
    fn register_verifier(
        &self,
        extra: u128,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Opens a channel to `provider`.
    fn open_channel(
        &self,
        provider: Self::Account,
        amount: u128,
        timeout_epochs: u64,
    ) -> impl Future<Output = Result<Self::ChannelId, SettlementError>> + Send;
    /// Adds to a channel.
    fn top_up(
        &self,
        channel: Self::ChannelId,
        amount: u128,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Signs a cumulative voucher as the payer.
    fn sign_voucher(
        &self,
        channel: Self::ChannelId,
        cumulative: u128,
    ) -> Result<Self::VoucherSig, SettlementError>;
    /// Claims a voucher as the provider.
    fn claim(
        &self,
        channel: Self::ChannelId,
        cumulative: u128,
        sig: &Self::VoucherSig,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Claims a voucher as the provider and returns the channel's claimed total once a claim
    /// covering `cumulative` is final: on the ledger once committed (it has no reorgs); on a
    /// chain `depth` blocks deep, a claim a reorg or a restarted node dropped sent again. A
    /// voucher already covered is not claimed again and not an error; nothing is paid twice.
    fn claim_until_final(
        &self,
        channel: Self::ChannelId,
        cumulative: u128,
        sig: &Self::VoucherSig,
        depth: u64,
    ) -> impl Future<Output = Result<u128, SettlementError>> + Send;
    /// Asks to close a channel after its timeout.
    fn request_close(
        &self,
        channel: Self::ChannelId,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Ends a channel whose claim window passed, refunding the payer.
    fn finalize_close(
        &self,
        channel: Self::ChannelId,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// A channel, if it exists.
    fn channel(
        &self,
        channel: Self::ChannelId,
    ) -> impl Future<Output = Result<Option<ChannelView>, SettlementError>> + Send;
    /// Posts a receipt root for the current epoch (`late`: every leaf audited).
    fn post_root(
        &self,
        epoch: u64,
        root: [u8; 32],
        receipts: u64,
        late: bool,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;

    // ----- audits -----

    /// The chain id receipts must name.
    fn chain_id(&self) -> u64;
    /// The 32 bytes a receipt names its channel by.
    fn channel_hash(channel: Self::ChannelId) -> [u8; 32];
    /// The settlement's form of a provider-signed receipt.
    fn receipt(receipt: &SignedReceipt) -> Self::Receipt;
    /// The root a provider posts over `receipts`.
    fn receipt_root(receipts: &[Self::Receipt]) -> [u8; 32];
    /// The path of leaf `index` (empty when out of range).
    fn receipt_proof(receipts: &[Self::Receipt], index: usize) -> Vec<[u8; 32]>;
    /// The verifier assigned to `provider`'s leaf `index` of `epoch`, if the leaf is selected
    /// and its beacon exists.
    fn assignee(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
    ) -> impl Future<Output = Result<Option<Self::Account>, SettlementError>> + Send;
    /// Commits this verifier's outcome for a leaf (salted, hidden until revealed).
    fn commit_audit(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        passed: bool,
        salt: [u8; 32],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Reveals a committed outcome; `receipt` is the audited leaf as this settlement's tree
    /// holds it (zero may do for a failure): on probation a receipt earns a clean audit once,
    /// whatever roots hold it.
    fn reveal_audit(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: [u8; 32],
        salt: [u8; 32],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Signs, as a second verifier, that leaf `index` (`receipt` by `proof`) failed its audit.
    fn confirm_fraud(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        receipt: &Self::Receipt,
        proof: &[[u8; 32]],
    ) -> Result<Self::Confirmation, SettlementError>;
    /// Brings a fraud verdict, as the verifier that revealed the leaf's failure.
    fn fraud_verdict(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        receipt: &Self::Receipt,
        proof: &[[u8; 32]],
        confirmation: &Self::Confirmation,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Charges an unconfirmed failure to its verifier once the verdict window closed.
    fn expire_alarm(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// The commitment of a plant at `provider`'s leaf.
    fn plant_commitment(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
    ) -> [u8; 32];
    /// Commits a plant, escrowing the plant bond.
    fn plant(
        &self,
        commitment: [u8; 32],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Signs, as a verifier, that the planted answer at the leaf fails its audit.
    fn confirm_plant(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
    ) -> Result<Self::Confirmation, SettlementError>;
    /// Opens this provider's plant at its leaf.
    fn reveal_plant(
        &self,
        epoch: u64,
        index: u64,
        salt: [u8; 32],
        confirmation: Option<&Self::Confirmation>,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;

    // ----- disputes: material demands, Withheld verdicts, inclusion challenges -----

    /// What a payer carries to an inclusion challenge: the provider's own commitment to a
    /// receipt it served (the ed25519-signed receipt on the ledger; on a chain, the provider's
    /// EIP-712 signature over the receipt leaf and epoch).
    type ServedReceipt: Clone + Debug + Send + Sync;

    /// This account's commitment to `receipt` as the server that signed it (a provider hands
    /// it out with each receipt; signed by any other account it is a forgery).
    fn serve_receipt(
        &self,
        receipt: &SignedReceipt,
    ) -> Result<Self::ServedReceipt, SettlementError>;
    /// As the assigned verifier, in the commit window, demands a selected leaf's material on
    /// settlement: the provider's fair chance to answer before a `Withheld` verdict.
    fn demand_material(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// As the provider, answers a demand on its leaf: the leaf's receipt by `proof`, and the
    /// BLAKE3 hash of the material it hands the verifier (never the material itself).
    fn answer_demand(
        &self,
        epoch: u64,
        index: u64,
        receipt: &Self::Receipt,
        proof: &[[u8; 32]],
        material: [u8; 32],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Signs, as a second verifier, that the provider withheld a leaf's material from it too.
    fn confirm_withheld(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
    ) -> Result<Self::Confirmation, SettlementError>;
    /// Brings a `Withheld` verdict, as the verifier whose demand went unanswered.
    fn withheld_verdict(
        &self,
        provider: Self::Account,
        epoch: u64,
        index: u64,
        confirmation: &Self::Confirmation,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// As the payer of the receipt's channel, challenges its omission from the provider's
    /// roots, escrowing the challenge bond.
    fn challenge_inclusion(
        &self,
        receipt: &Self::ServedReceipt,
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// As the challenged provider, proves the receipt (its BLAKE3 hash) is leaf `index` of its
    /// root of `epoch`, taking the bond.
    fn answer_inclusion(
        &self,
        receipt: [u8; 32],
        epoch: u64,
        index: u64,
        proof: &[[u8; 32]],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
    /// Slashes the provider of a challenge left unanswered past its deadline (the ledger does
    /// it itself when the next epoch starts).
    fn expire_challenge(
        &self,
        receipt: [u8; 32],
    ) -> impl Future<Output = Result<(), SettlementError>> + Send;
}
