//! Transactions, their signatures, and the vouchers and verdicts they carry.

use crate::error::TxError;
use agora_core::{codec, AccountId, Amount, Hash32, Keypair, Signature};
use agora_wire::protocol::{SignedReceipt, RECEIPT_DOMAIN};
pub use agora_wire::settle::{Fault, Verdict, Voucher, VERDICT_DOMAIN, VOUCHER_DOMAIN};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// Domain of the sender's signature over a [`Tx`].
pub const TX_DOMAIN: &[u8] = b"agora/ledger/tx/v1";
const TX_ID_DOMAIN: &[u8] = b"agora/ledger/txid/v1";
const CHANNEL_ID_DOMAIN: &[u8] = b"agora/ledger/channel/v1";

/// The longest Merkle proof a verdict may carry.
pub const MAX_PROOF_LEN: usize = agora_core::merkle::MAX_DEPTH;

/// What a transaction does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxBody {
    /// Move `amount` from the sender to `to` (created if new).
    Transfer {
        /// Recipient.
        to: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// Bond `amount` of the sender's balance as stake.
    Stake {
        /// Amount.
        amount: Amount,
    },
    /// Start unbonding `amount` of stake; it returns to the balance after the unbonding delay.
    Unstake {
        /// Amount.
        amount: Amount,
    },
    /// Escrow `amount` in a new channel from the sender (payer) to `provider`. The channel id is
    /// derived from (chain id, payer, nonce); it may be closed from epoch now + `timeout_epochs`.
    OpenChannel {
        /// Who may claim from the channel.
        provider: AccountId,
        /// Initial deposit.
        amount: Amount,
        /// Epochs until the payer may close it.
        timeout_epochs: u64,
    },
    /// Add `amount` to a channel; payer only.
    TopUpChannel {
        /// The channel.
        channel: Hash32,
        /// Amount.
        amount: Amount,
    },
    /// The provider claims the increase of `voucher.cumulative` over what it claimed before.
    ClaimVoucher {
        /// The voucher.
        voucher: Voucher,
        /// The payer who signed it (must be the channel's payer).
        payer: AccountId,
        /// The payer's signature over the voucher.
        payer_sig: Signature,
    },
    /// After the timeout, the payer closes the channel and gets the unclaimed rest back.
    CloseChannel {
        /// The channel.
        channel: Hash32,
    },
    /// Bond `stake` more and become a verifier (total stake must reach the minimum).
    RegisterVerifier {
        /// Extra stake to bond now (may be zero if already staked enough).
        stake: Amount,
    },
    /// A provider commits to the Merkle root of its receipts for the current epoch.
    PostReceiptRoot {
        /// Must be the current epoch.
        epoch: u64,
        /// Merkle root of the receipt hashes.
        root: Hash32,
        /// Number of receipts under the root.
        receipts: u64,
    },
    /// A verifier records a confirmed fraud: slash, bounty, refund.
    AuditVerdict {
        /// The verdict.
        verdict: Verdict,
        /// The second verifier who confirmed it.
        confirmer: AccountId,
        /// Its signature over the verdict.
        confirmer_sig: Signature,
    },
    /// The assigned verifier commits to its audit outcome for a selected leaf, as
    /// [`audit_commitment`]; nobody can copy an outcome that is not yet revealed.
    CommitAudit {
        /// The audited provider.
        provider: AccountId,
        /// The epoch of its receipt root.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// `audit_commitment(chain, verifier, provider, epoch, index, passed, salt)`.
        commitment: Hash32,
    },
    /// In a later epoch, the verifier reveals the outcome it committed to and is paid its fee.
    RevealAudit {
        /// The audited provider.
        provider: AccountId,
        /// The epoch of its receipt root.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// Whether the leaf passed.
        passed: bool,
        /// The audited receipt, as the leaf the ledger's tree holds (its `SignedReceipt`
        /// hash; zero may do for a failure): a receipt earns probation credit once, however
        /// many roots hold it.
        receipt: Hash32,
        /// The salt of the commitment.
        salt: Hash32,
    },
    /// Any account commits to a planted fake fraud, as [`plant_commitment`] (which names the
    /// canary provider, hidden until opened), escrowing `plant_bond`. It must be made no later
    /// than the epoch of the root that holds the plant: before the beacon that selects.
    PlantFraud {
        /// The commitment.
        commitment: Hash32,
    },
    /// In the one plant epoch of the root (after every reveal, before any verdict), the
    /// provider that posted it opens one plant under it: the leaf can no longer be judged; a
    /// verifier that revealed "failed" takes the bond and its fee; one that revealed "passed"
    /// loses `lazy_slash_bps` of its stake, only if a second verifier (`confirmation`) signed
    /// [`plant_confirmation`] after re-auditing the planted answer itself.
    RevealPlant {
        /// The canary provider that served the planted receipt (the sender).
        provider: AccountId,
        /// The epoch of its root.
        epoch: u64,
        /// The planted leaf.
        index: u64,
        /// The salt of the commitment.
        salt: Hash32,
        /// A registered verifier's signature over [`plant_confirmation`]: the planted answer
        /// fails its audit. Without it nobody is slashed.
        #[serde(default)]
        confirmation: Option<(AccountId, Signature)>,
    },
    /// The assigned verifier of a selected leaf, in its commit window, asks the provider on the
    /// ledger for the leaf's material: the provider's fair chance to answer before a
    /// `Withheld` verdict. Due `answer_epochs` after the demand.
    DemandMaterial {
        /// The audited provider.
        provider: AccountId,
        /// The epoch of its receipt root.
        epoch: u64,
        /// The leaf.
        index: u64,
    },
    /// The provider answers a demand: the leaf's signed receipt, its path under the root, and
    /// the hash of the material it serves for it. An answered leaf can never be `Withheld`.
    AnswerDemand {
        /// The epoch of the sender's receipt root.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// The receipt at the leaf, signed by the sender.
        receipt: SignedReceipt,
        /// Its Merkle path to the root.
        proof: Vec<Hash32>,
        /// BLAKE3 of the material the provider hands the verifier.
        material: Hash32,
    },
    /// The payer of a receipt's channel says the provider left the receipt out of its roots:
    /// accepted in epochs `receipt.epoch + 2 ..= receipt.epoch + 1 + escalation_epochs`,
    /// escrowing `challenge_bond`. Unanswered by its deadline (`answer_epochs` later), the
    /// provider is slashed and the receipt's cost refunded.
    ChallengeInclusion {
        /// The receipt, signed by the provider.
        receipt: SignedReceipt,
    },
    /// The provider proves a challenged receipt is a leaf of its root for the receipt's epoch
    /// or the next, or of a later root audited in full (a [`TxBody::PostLateRoot`]); it takes
    /// the challenger's bond.
    AnswerInclusion {
        /// The challenged receipt's hash.
        receipt: Hash32,
        /// The root's epoch: the receipt's or one more; later only for a root audited in full.
        epoch: u64,
        /// The leaf.
        index: u64,
        /// Its Merkle path.
        proof: Vec<Hash32>,
    },
    /// The sequencer ends the epoch: a new beacon, and matured unbonding is released.
    AdvanceEpoch,
    /// A provider back from an outage commits, for the current epoch, to receipts that missed
    /// the roots of their epoch and the next (with any of this epoch's): like
    /// [`TxBody::PostReceiptRoot`], but every leaf is audited, so a receipt held back on
    /// purpose gains nothing by arriving late. Only such a root answers an inclusion challenge
    /// of a receipt more than one epoch older than it.
    PostLateRoot {
        /// Must be the current epoch.
        epoch: u64,
        /// Merkle root of the receipt hashes.
        root: Hash32,
        /// Number of receipts under the root.
        receipts: u64,
    },
}

impl TxBody {
    /// A provider's root for `epoch` over `receipts` leaves: a [`TxBody::PostLateRoot`] when
    /// it holds a receipt that missed the roots of its own epoch and the next (`late`), so
    /// that receipt can still answer an inclusion challenge; else a
    /// [`TxBody::PostReceiptRoot`].
    pub fn receipt_root(epoch: u64, root: Hash32, receipts: u64, late: bool) -> TxBody {
        if late {
            TxBody::PostLateRoot {
                epoch,
                root,
                receipts,
            }
        } else {
            TxBody::PostReceiptRoot {
                epoch,
                root,
                receipts,
            }
        }
    }
}

/// A transaction before signing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Tx {
    /// The chain it is valid on.
    pub chain_id: u64,
    /// The sender, who signs it.
    pub from: AccountId,
    /// The sender's next nonce: one more than its last accepted transaction's, from 0.
    pub nonce: u64,
    /// What it does.
    pub body: TxBody,
}

impl Tx {
    /// Signs with `key` (which should control `self.from`).
    pub fn sign(self, key: &Keypair) -> SignedTx {
        let sig = key.sign(TX_DOMAIN, &self);
        SignedTx { tx: self, sig }
    }
}

/// A transaction with its sender's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct SignedTx {
    /// The transaction.
    pub tx: Tx,
    /// The sender's signature over `TX_DOMAIN || encode(tx)`.
    pub sig: Signature,
}

const AUDIT_COMMIT_DOMAIN: &[u8] = b"agora/ledger/audit-commit/v1";
const PLANT_DOMAIN: &[u8] = b"agora/ledger/plant/v1";
/// Domain of a second verifier's signature that a planted answer fails its audit.
pub const PLANT_CONFIRM_DOMAIN: &[u8] = b"agora/ledger/plant-confirm/v1";

/// A verifier signs that the planted leaf fails its audit (see [`plant_confirmation`]).
pub fn sign_plant_confirmation(
    key: &Keypair,
    chain_id: u64,
    provider: &AccountId,
    epoch: u64,
    index: u64,
) -> Signature {
    key.sign(PLANT_CONFIRM_DOMAIN, &(chain_id, provider, epoch, index))
}

/// What a confirming verifier signs to say the planted leaf fails its audit.
pub fn plant_confirmation(chain_id: u64, provider: &AccountId, epoch: u64, index: u64) -> Vec<u8> {
    codec::signing_bytes(PLANT_CONFIRM_DOMAIN, &(chain_id, provider, epoch, index))
}

/// What a verifier commits to before it reveals an audit outcome.
pub fn audit_commitment(
    chain_id: u64,
    verifier: &AccountId,
    provider: &AccountId,
    epoch: u64,
    index: u64,
    passed: bool,
    salt: &Hash32,
) -> Hash32 {
    codec::hash(
        AUDIT_COMMIT_DOMAIN,
        &(chain_id, verifier, provider, epoch, index, passed, salt),
    )
}

/// What the planter commits to when it plants a fake fraud at a leaf.
pub fn plant_commitment(
    chain_id: u64,
    provider: &AccountId,
    epoch: u64,
    index: u64,
    salt: &Hash32,
) -> Hash32 {
    codec::hash(PLANT_DOMAIN, &(chain_id, provider, epoch, index, salt))
}

/// The id of a channel opened by `payer` with nonce `nonce`.
pub fn channel_id(chain_id: u64, payer: &AccountId, nonce: u64) -> Hash32 {
    codec::hash(CHANNEL_ID_DOMAIN, &(chain_id, payer, nonce))
}

impl SignedTx {
    /// The transaction id: BLAKE3 of the signed transaction's encoding.
    pub fn id(&self) -> Hash32 {
        codec::hash(TX_ID_DOMAIN, self)
    }

    /// Checks every signature the transaction carries and its shape; state is not consulted.
    /// Safe to run in parallel before [`crate::State::apply_verified`].
    pub fn verify(self) -> Result<VerifiedTx, TxError> {
        verify_batch(vec![self])
            .pop()
            .unwrap_or(Err(TxError::Malformed {
                reason: "empty batch",
            }))
    }

    /// The signatures this transaction carries: (signer, signed bytes, signature, error if bad).
    fn sig_items(&self) -> Vec<(AccountId, Vec<u8>, Signature, TxError)> {
        let from = self.tx.from;
        let mut items = vec![(
            from,
            codec::signing_bytes(TX_DOMAIN, &self.tx),
            self.sig,
            TxError::BadSignature { account: from },
        )];
        match &self.tx.body {
            TxBody::ClaimVoucher {
                voucher,
                payer,
                payer_sig,
            } => items.push((
                *payer,
                codec::signing_bytes(VOUCHER_DOMAIN, voucher),
                *payer_sig,
                TxError::ForgedVoucher { payer: *payer },
            )),
            TxBody::AuditVerdict {
                verdict,
                confirmer,
                confirmer_sig,
            } => {
                items.push((
                    *confirmer,
                    codec::signing_bytes(VERDICT_DOMAIN, verdict),
                    *confirmer_sig,
                    TxError::BadSignature {
                        account: *confirmer,
                    },
                ));
                if let Fault::Fraud { receipt, .. } = &verdict.fault {
                    items.push(receipt_item(receipt));
                }
            }
            TxBody::RevealPlant {
                provider,
                epoch,
                index,
                confirmation: Some((confirmer, sig)),
                ..
            } => items.push((
                *confirmer,
                plant_confirmation(self.tx.chain_id, provider, *epoch, *index),
                *sig,
                TxError::BadSignature {
                    account: *confirmer,
                },
            )),
            TxBody::AnswerDemand { receipt, .. } | TxBody::ChallengeInclusion { receipt } => {
                items.push(receipt_item(receipt))
            }
            _ => {}
        }
        items
    }

    fn check_shape(&self) -> Result<(), TxError> {
        let zero = |a: &Amount| a.is_zero();
        match &self.tx.body {
            TxBody::Transfer { amount, .. }
            | TxBody::Stake { amount }
            | TxBody::Unstake { amount }
            | TxBody::OpenChannel { amount, .. }
            | TxBody::TopUpChannel { amount, .. }
                if zero(amount) =>
            {
                Err(TxError::Malformed {
                    reason: "amount must be positive",
                })
            }
            TxBody::Transfer { to, .. } if *to == self.tx.from => Err(TxError::Malformed {
                reason: "transfer to self",
            }),
            TxBody::OpenChannel { provider, .. } if *provider == self.tx.from => {
                Err(TxError::Malformed {
                    reason: "channel to self",
                })
            }
            // A root may not claim leaves no plan would select from.
            TxBody::PostReceiptRoot { receipts, .. } | TxBody::PostLateRoot { receipts, .. }
                if *receipts == 0 || *receipts > crate::audit::MAX_PLANNED_LEAVES =>
            {
                Err(TxError::Malformed {
                    reason: "receipt count must be in 1..=2^20",
                })
            }
            TxBody::AuditVerdict {
                verdict:
                    Verdict {
                        fault: Fault::Fraud { proof, .. },
                        ..
                    },
                ..
            }
            | TxBody::AnswerDemand { proof, .. }
            | TxBody::AnswerInclusion { proof, .. }
                if proof.len() > MAX_PROOF_LEN =>
            {
                Err(TxError::Malformed {
                    reason: "merkle proof too long",
                })
            }
            _ => Ok(()),
        }
    }
}

/// The provider's signature over a receipt a transaction carries.
fn receipt_item(r: &SignedReceipt) -> (AccountId, Vec<u8>, Signature, TxError) {
    let provider = r.receipt.provider;
    (
        provider,
        codec::signing_bytes(RECEIPT_DOMAIN, &r.receipt),
        r.sig,
        TxError::ForgedReceipt { provider },
    )
}

/// A signed transaction whose signatures and shape were checked, with its id.
#[derive(Debug, Clone)]
pub struct VerifiedTx {
    stx: SignedTx,
    id: Hash32,
}

impl VerifiedTx {
    /// The transaction id.
    pub fn id(&self) -> Hash32 {
        self.id
    }
    /// The signed transaction.
    pub fn signed(&self) -> &SignedTx {
        &self.stx
    }
    /// The transaction.
    pub fn tx(&self) -> &Tx {
        &self.stx.tx
    }
    /// Back to the signed transaction.
    pub fn into_signed(self) -> SignedTx {
        self.stx
    }
}

/// Checks shape and signatures of many transactions with one batch verification (falling back
/// to single checks only when the batch fails). `out[i]` is exactly `txs[i].verify()`.
pub fn verify_batch(txs: Vec<SignedTx>) -> Vec<Result<VerifiedTx, TxError>> {
    let mut owners = Vec::new();
    let mut items = Vec::new();
    let mut errors: Vec<Option<TxError>> = Vec::with_capacity(txs.len());
    for (i, t) in txs.iter().enumerate() {
        match t.check_shape() {
            Ok(()) => {
                for item in t.sig_items() {
                    owners.push(i);
                    items.push(item);
                }
                errors.push(None);
            }
            Err(e) => errors.push(Some(e)),
        }
    }
    let refs: Vec<(AccountId, &[u8], Signature)> = items
        .iter()
        .map(|(a, m, s, _)| (*a, m.as_slice(), *s))
        .collect();
    let ok = agora_core::sig::verify_many(&refs);
    for ((owner, good), (_, _, _, err)) in owners.into_iter().zip(ok).zip(items) {
        if !good && errors[owner].is_none() {
            errors[owner] = Some(err);
        }
    }
    txs.into_iter()
        .zip(errors)
        .map(|(stx, err)| match err {
            Some(e) => Err(e),
            None => Ok(VerifiedTx { id: stx.id(), stx }),
        })
        .collect()
}
