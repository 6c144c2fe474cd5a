//! The settlement state and its transition function: pure, deterministic, no I/O.

use crate::error::{GenesisError, InvariantError, TxError};
use crate::genesis::{Genesis, Params};
use crate::tx::{channel_id, Fault, TxBody, Verdict, VerifiedTx};
use agora_core::{codec, AccountId, Amount, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const STATE_DOMAIN: &[u8] = b"agora/ledger/state/v1";
const BEACON_DOMAIN: &[u8] = b"agora/ledger/beacon/v1";
const JUDGED_DOMAIN: &[u8] = b"agora/ledger/judged/v1";

/// The audit probability of a root whose every leaf is audited.
pub const FULL_AUDIT_PPM: u32 = 1_000_000;

/// The key of a leaf in `judged` and `audits`: `H(provider, epoch, index)`.
pub fn leaf_key(provider: &AccountId, epoch: u64, index: u64) -> Hash32 {
    codec::hash(JUDGED_DOMAIN, &(provider, epoch, index))
}

/// Stake on its way back to the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Unbonding {
    /// Amount.
    pub amount: Amount,
    /// The epoch from which it is back in the balance.
    pub release_epoch: u64,
}

/// An account.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct Account {
    /// Spendable balance.
    pub balance: Amount,
    /// The next nonce it must use.
    pub nonce: u64,
    /// Bonded stake (slashable).
    pub stake: Amount,
    /// Unbonding stake (still slashable), by release epoch ascending.
    pub unbonding: Vec<Unbonding>,
    /// Registered verifier.
    pub verifier: bool,
    /// Its receipts that passed a revealed audit.
    pub clean_audits: u64,
    /// Confirmed frauds against it.
    pub frauds: u64,
}

impl Account {
    /// Total of the unbonding entries.
    pub fn unbonding_total(&self) -> Result<Amount, agora_core::CoreError> {
        self.unbonding
            .iter()
            .try_fold(Amount::ZERO, |s, u| s.checked_add(u.amount))
    }
}

/// A payment channel: escrow from a payer that a provider claims with vouchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Channel {
    /// Who funds it and signs vouchers.
    pub payer: AccountId,
    /// Who claims from it.
    pub provider: AccountId,
    /// Total ever deposited.
    pub deposit: Amount,
    /// Total claimed by the provider so far.
    pub claimed: Amount,
    /// The payer may close it from this epoch.
    pub expires_epoch: u64,
    /// Closed: the rest went back to the payer.
    pub closed: bool,
    /// Set when the payer asked to close: the epoch at whose start the rest goes back to
    /// it. Until then the provider may still claim.
    #[serde(default)]
    pub closes_epoch: Option<u64>,
    /// Refunded to the payer by fraud verdicts on receipts of this channel; never above
    /// `claimed` (nobody gets back more than the provider was paid through the channel).
    #[serde(default)]
    pub refunded: Amount,
}

impl Channel {
    /// What the channel holds now.
    pub fn escrow(&self) -> Amount {
        if self.closed {
            Amount::ZERO
        } else {
            self.deposit
                .checked_sub(self.claimed)
                .unwrap_or(Amount::ZERO)
        }
    }
}

/// A provider's commitment to its receipts of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct ReceiptRoot {
    /// Merkle root of the receipt hashes.
    pub root: Hash32,
    /// How many receipts.
    pub receipts: u64,
    /// The audit probability of each leaf, in parts per million, fixed when it was posted.
    pub audit_ppm: u32,
    /// Posted as a late root (`PostLateRoot`): it may hold receipts that missed the roots of
    /// their epoch and the next; every leaf is audited, and a pass earns no probation credit.
    #[serde(default)]
    pub late: bool,
}

impl ReceiptRoot {
    /// Whether this root, posted for `epoch`, may hold a receipt of `receipt_epoch`: the root
    /// of the receipt's epoch or the next, or a later late root (audited in full). A root
    /// audited in full only because of probation is not late: an old receipt re-posted under
    /// it would earn probation credit again.
    pub fn may_hold(&self, epoch: u64, receipt_epoch: u64) -> bool {
        epoch >= receipt_epoch && (epoch - receipt_epoch <= 1 || self.late)
    }
}

/// The audit of one selected leaf: a commitment, then its reveal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct LeafAudit {
    /// The assigned verifier.
    pub verifier: AccountId,
    /// Its commitment.
    pub commitment: Hash32,
    /// The epoch it committed in.
    pub committed_epoch: u64,
    /// The revealed outcome: passed or not.
    pub revealed: Option<bool>,
}

/// A commitment to a planted fake fraud (the canary provider is hidden inside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Plant {
    /// The account that committed it and escrowed the bond (any key, not necessarily the
    /// canary's).
    pub planter: AccountId,
    /// The epoch it was made in: no later than the root's.
    pub epoch: u64,
    /// Its escrowed bond.
    pub bond: Amount,
}

/// A verifier's on-ledger demand for the material behind a leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Demand {
    /// The assigned verifier that asked.
    pub verifier: AccountId,
    /// The last epoch the provider may answer in.
    pub due_epoch: u64,
    /// The hash of the material the provider committed to, once it answered.
    pub answered: Option<Hash32>,
}

/// A payer's challenge that a receipt is missing from the provider's roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Challenge {
    /// The challenger: the payer of the receipt's channel.
    pub payer: AccountId,
    /// The provider that signed the receipt.
    pub provider: AccountId,
    /// The receipt's channel.
    pub channel: Hash32,
    /// The epoch the receipt names.
    pub receipt_epoch: u64,
    /// The receipt's cost in whole units (refunded if unanswered).
    pub cost: Amount,
    /// The challenger's escrowed bond.
    pub bond: Amount,
    /// The last epoch the provider may answer in.
    pub due_epoch: u64,
    /// Still open (neither answered nor expired). Closed ones stay, so a receipt is
    /// challenged once.
    pub open: bool,
}

/// A revealed failed audit waiting for a verdict or a plant to confirm it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Alarm {
    /// The verifier that revealed the failure.
    pub verifier: AccountId,
    /// The provider.
    pub provider: AccountId,
    /// The root's epoch.
    pub epoch: u64,
    /// The leaf.
    pub index: u64,
}

/// What an accepted transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Funds moved.
    Transfer {
        /// Sender.
        from: AccountId,
        /// Recipient.
        to: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// Stake bonded.
    Staked {
        /// Account.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// Stake started unbonding.
    Unstaked {
        /// Account.
        account: AccountId,
        /// Amount.
        amount: Amount,
        /// When it returns to the balance.
        release_epoch: u64,
    },
    /// Unbonded stake returned to the balance.
    Released {
        /// Account.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// A channel opened.
    ChannelOpened {
        /// Channel id.
        channel: Hash32,
        /// Payer.
        payer: AccountId,
        /// Provider.
        provider: AccountId,
        /// Deposit.
        amount: Amount,
        /// Closable from this epoch.
        expires_epoch: u64,
    },
    /// A channel received more deposit.
    ChannelToppedUp {
        /// Channel id.
        channel: Hash32,
        /// Amount added.
        amount: Amount,
    },
    /// A provider claimed from a channel.
    VoucherClaimed {
        /// Channel id.
        channel: Hash32,
        /// Provider.
        provider: AccountId,
        /// The increase paid now.
        amount: Amount,
        /// The voucher's cumulative amount.
        cumulative: Amount,
    },
    /// The payer asked to close a channel: claims stay open until `closes_epoch`.
    ChannelClosing {
        /// Channel id.
        channel: Hash32,
        /// The epoch at whose start the rest is refunded.
        closes_epoch: u64,
    },
    /// A channel closed and refunded its rest.
    ChannelClosed {
        /// Channel id.
        channel: Hash32,
        /// Refunded to the payer.
        refund: Amount,
    },
    /// A verifier registered.
    VerifierRegistered {
        /// Account.
        account: AccountId,
        /// Its bonded stake now.
        stake: Amount,
    },
    /// A provider posted a receipt root.
    ReceiptRootPosted {
        /// Provider.
        provider: AccountId,
        /// Epoch.
        epoch: u64,
        /// Root.
        root: Hash32,
        /// Receipt count.
        receipts: u64,
    },
    /// A provider was slashed for a confirmed fraud.
    Slashed {
        /// Provider.
        provider: AccountId,
        /// The epoch of the root.
        epoch: u64,
        /// The failed leaf.
        index: u64,
        /// The failed receipt, if the material was handed over.
        receipt: Option<Hash32>,
        /// Total taken from its stake.
        amount: Amount,
        /// Verifier paid the bounty.
        verifier: AccountId,
        /// Bounty.
        bounty: Amount,
        /// Payer refunded.
        payer: AccountId,
        /// Refund.
        refund: Amount,
        /// Burned rest.
        burned: Amount,
    },
    /// A verifier committed to the audit of a leaf.
    AuditCommitted {
        /// Verifier.
        verifier: AccountId,
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
    /// A verifier revealed an audit outcome and was paid its fee.
    AuditRevealed {
        /// Verifier.
        verifier: AccountId,
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The outcome.
        passed: bool,
        /// The fee paid from the audit pool.
        fee: Amount,
    },
    /// A fake fraud was planted (only the commitment and the committing account are public).
    FraudPlanted {
        /// The commitment.
        commitment: Hash32,
    },
    /// A plant was opened: the leaf can no longer be judged; a verifier that passed it was
    /// slashed, one that failed it took the bond.
    PlantRevealed {
        /// The canary provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The verifier that passed the planted fraud, if one did.
        lazy: Option<AccountId>,
        /// Taken from its stake (burned).
        slashed: Amount,
        /// The verifier that caught the plant and took its bond, if one did.
        caught: Option<AccountId>,
    },
    /// The assigned verifier demanded a leaf's material on the ledger.
    MaterialDemanded {
        /// Verifier.
        verifier: AccountId,
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The last epoch the provider may answer in.
        due_epoch: u64,
    },
    /// The provider answered a demand with the leaf's receipt and its material's hash.
    MaterialAnswered {
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The receipt's hash (the leaf).
        receipt: Hash32,
        /// The material's hash.
        material: Hash32,
    },
    /// A failed audit was confirmed (by a verdict or a plant) and its fee paid.
    AlarmConfirmed {
        /// Verifier.
        verifier: AccountId,
        /// The fee paid from the audit pool.
        fee: Amount,
    },
    /// A revealed failure that nothing confirmed: the verifier lost part of its stake (burned).
    FalseAlarm {
        /// Verifier.
        verifier: AccountId,
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// Taken from its stake.
        slashed: Amount,
    },
    /// A payer challenged a receipt's inclusion.
    InclusionChallenged {
        /// The receipt's hash.
        receipt: Hash32,
        /// Payer.
        payer: AccountId,
        /// Provider.
        provider: AccountId,
        /// The last epoch the provider may answer in.
        due_epoch: u64,
    },
    /// The provider proved the receipt under its root and took the bond.
    InclusionProven {
        /// The receipt's hash.
        receipt: Hash32,
        /// Provider.
        provider: AccountId,
        /// The bond paid to it.
        bond: Amount,
    },
    /// The provider left a challenged receipt out of its roots: slashed, the payer refunded
    /// the receipt's cost (capped) and its bond, the rest burned.
    OmissionSlashed {
        /// The receipt's hash.
        receipt: Hash32,
        /// Provider.
        provider: AccountId,
        /// Payer.
        payer: AccountId,
        /// Taken from the provider's stake.
        amount: Amount,
        /// Refunded to the payer (besides its bond).
        refund: Amount,
        /// Burned rest.
        burned: Amount,
    },
    /// A new epoch began.
    EpochAdvanced {
        /// The new epoch.
        epoch: u64,
        /// Its beacon.
        beacon: Hash32,
    },
}

/// Where in the chain a transaction is applied; feeds the beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCtx {
    /// Height of the block being built.
    pub height: u64,
    /// Hash of its parent block (the genesis hash for block 1).
    pub parent: Hash32,
}

/// The whole settlement state. Every map is ordered, so the encoding (and the hash) is canonical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct State {
    /// The chain id.
    pub chain_id: u64,
    /// The sequencer account.
    pub sequencer: AccountId,
    /// Rule parameters.
    pub params: Params,
    /// Minted at genesis; never changes.
    pub supply: Amount,
    /// Current epoch.
    pub epoch: u64,
    /// Current beacon: `H(previous beacon, epoch, parent block hash)`.
    pub beacon: Hash32,
    /// Accounts.
    pub accounts: BTreeMap<AccountId, Account>,
    /// Channels, closed ones included (so nothing is claimed after close).
    pub channels: BTreeMap<Hash32, Channel>,
    /// Receipt roots by (provider, epoch).
    pub roots: BTreeMap<(AccountId, u64), ReceiptRoot>,
    /// Leaves already judged, as `H(provider, epoch, index)`.
    pub judged: BTreeSet<Hash32>,
    /// Slashed and neither paid as bounty nor refunded.
    pub burned: Amount,
    /// Every epoch's beacon; a root posted in epoch e is sampled with the beacon of e + 1.
    pub beacons: BTreeMap<u64, Hash32>,
    /// Registered verifiers now (mirrors `Account::verifier`). Changes reach assignment only
    /// through `verifier_sets`, at the next epoch boundary.
    pub verifiers: BTreeSet<AccountId>,
    /// The verifier set in effect from each epoch on (recorded at `AdvanceEpoch` when it
    /// changed): the roots of epoch `e` are assigned from the set in effect in `e`, frozen at
    /// the end of `e - 1`, one epoch before the beacon of `e + 1` that selects is drawn.
    pub verifier_sets: BTreeMap<u64, BTreeSet<AccountId>>,
    /// Fees set aside from claims to pay for audits.
    pub audit_pool: Amount,
    /// Audits of selected leaves, by `H(provider, epoch, index)`.
    pub audits: BTreeMap<Hash32, LeafAudit>,
    /// Open plant commitments.
    pub plants: BTreeMap<Hash32, Plant>,
    /// (provider, root epoch) of every plant opened: one per root.
    pub plant_epochs: BTreeSet<(AccountId, u64)>,
    /// Material demands, by leaf key.
    pub demands: BTreeMap<Hash32, Demand>,
    /// Revealed failures awaiting confirmation, by (the epoch they expire at, leaf key).
    pub alarms: BTreeMap<(u64, Hash32), Alarm>,
    /// Non-inclusion challenges, by receipt hash.
    pub challenges: BTreeMap<Hash32, Challenge>,
    /// Open challenges by (due epoch, receipt hash), for expiry.
    pub challenge_queue: BTreeSet<(u64, Hash32)>,
    /// Closing channels by (the epoch they close at, channel id).
    pub closing: BTreeSet<(u64, Hash32)>,
    /// Per provider on probation, the receipts (ledger leaves) that already earned it a
    /// clean audit: each counts once, whatever roots hold it. Dropped when the provider
    /// leaves probation, so at most `probation_jobs` entries each.
    pub probation_credited: BTreeMap<AccountId, BTreeSet<Hash32>>,
}

/// Undo records of one transaction, so a rejection restores exactly what was there.
#[derive(Default)]
pub(crate) struct Journal {
    accounts: Vec<(AccountId, Option<Account>)>,
    channels: Vec<(Hash32, Option<Channel>)>,
    roots: Vec<(AccountId, u64)>,
    judged: Vec<Hash32>,
    burned: Option<Amount>,
    epoch: Option<(u64, Hash32)>,
    beacons: Vec<u64>,
    verifier_sets: Vec<u64>,
    verifiers: Vec<(AccountId, bool)>,
    audit_pool: Option<Amount>,
    pub(crate) audits: Vec<(Hash32, Option<LeafAudit>)>,
    pub(crate) plants: Vec<(Hash32, Option<Plant>)>,
    pub(crate) plant_epochs: Vec<(AccountId, u64)>,
    pub(crate) demands: Vec<(Hash32, Option<Demand>)>,
    pub(crate) alarms: Vec<((u64, Hash32), Option<Alarm>)>,
    pub(crate) challenges: Vec<(Hash32, Option<Challenge>)>,
    pub(crate) challenge_queue: Vec<((u64, Hash32), bool)>,
    closing: Vec<((u64, Hash32), bool)>,
    pub(crate) probation_credited: Vec<(AccountId, Option<BTreeSet<Hash32>>)>,
}

fn overdraft(account: AccountId, balance: Amount, need: Amount) -> TxError {
    TxError::Overdraft {
        account,
        balance,
        need,
    }
}

impl State {
    /// The state at genesis: the allocations are the only mint there will ever be.
    pub fn from_genesis(g: &Genesis) -> Result<State, GenesisError> {
        let supply = g.validate()?;
        let mut accounts = BTreeMap::new();
        accounts.insert(g.sequencer, Account::default());
        for a in &g.allocations {
            accounts
                .entry(a.account)
                .or_insert_with(Account::default)
                .balance = a.amount;
        }
        Ok(State {
            chain_id: g.chain_id,
            sequencer: g.sequencer,
            params: g.params.clone(),
            supply,
            epoch: 0,
            beacon: g.hash(),
            accounts,
            channels: BTreeMap::new(),
            roots: BTreeMap::new(),
            judged: BTreeSet::new(),
            burned: Amount::ZERO,
            beacons: BTreeMap::from([(0, g.hash())]),
            verifiers: BTreeSet::new(),
            verifier_sets: BTreeMap::from([(0, BTreeSet::new())]),
            audit_pool: Amount::ZERO,
            audits: BTreeMap::new(),
            plants: BTreeMap::new(),
            plant_epochs: BTreeSet::new(),
            demands: BTreeMap::new(),
            alarms: BTreeMap::new(),
            challenges: BTreeMap::new(),
            challenge_queue: BTreeSet::new(),
            closing: BTreeSet::new(),
            probation_credited: BTreeMap::new(),
        })
    }

    /// BLAKE3 over the canonical encoding of the whole state.
    pub fn hash(&self) -> Hash32 {
        codec::hash(STATE_DOMAIN, self)
    }

    /// An account, if it exists.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// A channel, if it exists.
    pub fn channel(&self, id: &Hash32) -> Option<&Channel> {
        self.channels.get(id)
    }

    /// Checks signatures, then applies. See [`State::apply_verified`].
    pub fn apply(&mut self, stx: &crate::SignedTx, ctx: &BlockCtx) -> Result<Vec<Event>, TxError> {
        if stx.tx.chain_id != self.chain_id {
            return Err(TxError::WrongChainId {
                expected: self.chain_id,
                got: stx.tx.chain_id,
            });
        }
        let v = stx.clone().verify()?;
        self.apply_verified(&v, ctx)
    }

    /// Applies a transaction whose signatures were checked. On `Err` the state is exactly as
    /// before; on `Ok` the sender's nonce has advanced by one.
    pub fn apply_verified(
        &mut self,
        vtx: &VerifiedTx,
        ctx: &BlockCtx,
    ) -> Result<Vec<Event>, TxError> {
        let mut j = Journal::default();
        let r = self.apply_inner(vtx, ctx, &mut j);
        if r.is_err() {
            self.rollback(j);
        }
        r
    }

    fn rollback(&mut self, j: Journal) {
        for (id, old) in j.accounts.into_iter().rev() {
            match old {
                Some(a) => self.accounts.insert(id, a),
                None => self.accounts.remove(&id),
            };
        }
        for (id, old) in j.channels.into_iter().rev() {
            match old {
                Some(c) => self.channels.insert(id, c),
                None => self.channels.remove(&id),
            };
        }
        for k in j.roots {
            self.roots.remove(&k);
        }
        for k in j.judged {
            self.judged.remove(&k);
        }
        if let Some(b) = j.burned {
            self.burned = b;
        }
        if let Some((e, b)) = j.epoch {
            self.epoch = e;
            self.beacon = b;
        }
        for e in j.beacons {
            self.beacons.remove(&e);
        }
        for e in j.verifier_sets {
            self.verifier_sets.remove(&e);
        }
        for (id, was) in j.verifiers.into_iter().rev() {
            if was {
                self.verifiers.insert(id);
            } else {
                self.verifiers.remove(&id);
            }
        }
        if let Some(p) = j.audit_pool {
            self.audit_pool = p;
        }
        for (k, old) in j.audits.into_iter().rev() {
            match old {
                Some(a) => self.audits.insert(k, a),
                None => self.audits.remove(&k),
            };
        }
        for (k, old) in j.plants.into_iter().rev() {
            match old {
                Some(e) => self.plants.insert(k, e),
                None => self.plants.remove(&k),
            };
        }
        for k in j.plant_epochs {
            self.plant_epochs.remove(&k);
        }
        for (k, old) in j.demands.into_iter().rev() {
            match old {
                Some(d) => self.demands.insert(k, d),
                None => self.demands.remove(&k),
            };
        }
        for (k, old) in j.alarms.into_iter().rev() {
            match old {
                Some(a) => self.alarms.insert(k, a),
                None => self.alarms.remove(&k),
            };
        }
        for (k, old) in j.challenges.into_iter().rev() {
            match old {
                Some(c) => self.challenges.insert(k, c),
                None => self.challenges.remove(&k),
            };
        }
        for (k, was) in j.challenge_queue.into_iter().rev() {
            if was {
                self.challenge_queue.insert(k);
            } else {
                self.challenge_queue.remove(&k);
            }
        }
        for (k, was) in j.closing.into_iter().rev() {
            if was {
                self.closing.insert(k);
            } else {
                self.closing.remove(&k);
            }
        }
        for (id, old) in j.probation_credited.into_iter().rev() {
            match old {
                Some(set) => self.probation_credited.insert(id, set),
                None => self.probation_credited.remove(&id),
            };
        }
    }

    /// Marks `id` a verifier or not, in the account and the set.
    pub(crate) fn set_verifier(&mut self, j: &mut Journal, id: AccountId, on: bool) {
        j.verifiers.push((id, self.verifiers.contains(&id)));
        if on {
            self.verifiers.insert(id);
        } else {
            self.verifiers.remove(&id);
        }
        Self::acct_mut(&mut self.accounts, j, id).verifier = on;
    }

    /// Sets the audit pool, journaling the old value.
    pub(crate) fn set_audit_pool(&mut self, j: &mut Journal, pool: Amount) {
        j.audit_pool.get_or_insert(self.audit_pool);
        self.audit_pool = pool;
    }

    /// The account for writing, created if absent; its old value is journaled.
    pub(crate) fn acct_mut<'a>(
        accounts: &'a mut BTreeMap<AccountId, Account>,
        j: &mut Journal,
        id: AccountId,
    ) -> &'a mut Account {
        j.accounts.push((id, accounts.get(&id).cloned()));
        accounts.entry(id).or_default()
    }

    /// A channel for writing, journaled.
    pub(crate) fn chan_mut_pub(
        &mut self,
        j: &mut Journal,
        id: Hash32,
    ) -> Result<&mut Channel, TxError> {
        Self::chan_mut(&mut self.channels, j, id)
    }

    pub(crate) fn chan_mut<'a>(
        channels: &'a mut BTreeMap<Hash32, Channel>,
        j: &mut Journal,
        id: Hash32,
    ) -> Result<&'a mut Channel, TxError> {
        let old = channels
            .get(&id)
            .cloned()
            .ok_or(TxError::UnknownChannel(id))?;
        j.channels.push((id, Some(old)));
        channels.get_mut(&id).ok_or(TxError::UnknownChannel(id))
    }

    pub(crate) fn debit(
        &mut self,
        j: &mut Journal,
        id: AccountId,
        amount: Amount,
    ) -> Result<(), TxError> {
        let a = Self::acct_mut(&mut self.accounts, j, id);
        a.balance = a
            .balance
            .checked_sub(amount)
            .map_err(|_| overdraft(id, a.balance, amount))?;
        Ok(())
    }

    pub(crate) fn credit(
        &mut self,
        j: &mut Journal,
        id: AccountId,
        amount: Amount,
    ) -> Result<(), TxError> {
        let a = Self::acct_mut(&mut self.accounts, j, id);
        a.balance = a
            .balance
            .checked_add(amount)
            .map_err(|_| TxError::Overflow { what: "balance" })?;
        Ok(())
    }

    /// A provider's root for the current epoch. Its audit probability is fixed now, before
    /// the beacon that selects: every leaf while on probation or after a confirmed fraud, and
    /// for a late root (`full`), else the floor.
    fn post_root(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        epoch: u64,
        root: Hash32,
        receipts: u64,
        full: bool,
    ) -> Result<Vec<Event>, TxError> {
        if epoch != self.epoch {
            return Err(TxError::WrongEpoch {
                expected: self.epoch,
                got: epoch,
            });
        }
        let sender = self
            .accounts
            .get(&from)
            .ok_or(TxError::UnknownAccount(from))?;
        let have = sender.stake;
        if have < self.params.min_provider_stake {
            return Err(TxError::InsufficientStake {
                account: from,
                have,
                need: self.params.min_provider_stake,
            });
        }
        if self.roots.contains_key(&(from, epoch)) {
            return Err(TxError::RootAlreadyPosted {
                provider: from,
                epoch,
            });
        }
        let audit_ppm =
            if full || sender.frauds > 0 || sender.clean_audits < self.params.probation_jobs {
                FULL_AUDIT_PPM
            } else {
                self.params.audit_floor_ppm
            };
        if full {
            self.hold_unbonding(j, from, epoch)?;
        }
        j.roots.push((from, epoch));
        self.roots.insert(
            (from, epoch),
            ReceiptRoot {
                root,
                receipts,
                audit_ppm,
                late: full,
            },
        );
        Ok(vec![Event::ReceiptRootPosted {
            provider: from,
            epoch,
            root,
            receipts,
        }])
    }

    fn apply_inner(
        &mut self,
        vtx: &VerifiedTx,
        ctx: &BlockCtx,
        j: &mut Journal,
    ) -> Result<Vec<Event>, TxError> {
        let tx = vtx.tx();
        if tx.chain_id != self.chain_id {
            return Err(TxError::WrongChainId {
                expected: self.chain_id,
                got: tx.chain_id,
            });
        }
        let from = tx.from;
        let sender = self
            .accounts
            .get(&from)
            .ok_or(TxError::UnknownAccount(from))?;
        if tx.nonce < sender.nonce {
            return Err(TxError::StaleNonce {
                expected: sender.nonce,
                got: tx.nonce,
            });
        }
        if tx.nonce > sender.nonce {
            return Err(TxError::FutureNonce {
                expected: sender.nonce,
                got: tx.nonce,
            });
        }
        let events = match &tx.body {
            TxBody::Transfer { to, amount } => {
                self.debit(j, from, *amount)?;
                self.credit(j, *to, *amount)?;
                vec![Event::Transfer {
                    from,
                    to: *to,
                    amount: *amount,
                }]
            }
            TxBody::Stake { amount } => {
                self.debit(j, from, *amount)?;
                let a = Self::acct_mut(&mut self.accounts, j, from);
                a.stake = a
                    .stake
                    .checked_add(*amount)
                    .map_err(|_| TxError::Overflow { what: "stake" })?;
                vec![Event::Staked {
                    account: from,
                    amount: *amount,
                }]
            }
            TxBody::Unstake { amount } => self.unstake(j, from, *amount)?,
            TxBody::OpenChannel {
                provider,
                amount,
                timeout_epochs,
            } => {
                if *timeout_epochs <= self.params.claim_window_epochs {
                    return Err(TxError::ChannelTimeout {
                        timeout: *timeout_epochs,
                        claim_window: self.params.claim_window_epochs,
                    });
                }
                let expires_epoch =
                    self.epoch
                        .checked_add(*timeout_epochs)
                        .ok_or(TxError::Overflow {
                            what: "channel expiry epoch",
                        })?;
                let id = channel_id(self.chain_id, &from, tx.nonce);
                if self.channels.contains_key(&id) {
                    return Err(TxError::Malformed {
                        reason: "channel id already exists",
                    });
                }
                self.debit(j, from, *amount)?;
                // The provider gets an account so it can sign claims.
                Self::acct_mut(&mut self.accounts, j, *provider);
                j.channels.push((id, None));
                self.channels.insert(
                    id,
                    Channel {
                        payer: from,
                        provider: *provider,
                        deposit: *amount,
                        claimed: Amount::ZERO,
                        expires_epoch,
                        closed: false,
                        refunded: Amount::ZERO,
                        closes_epoch: None,
                    },
                );
                vec![Event::ChannelOpened {
                    channel: id,
                    payer: from,
                    provider: *provider,
                    amount: *amount,
                    expires_epoch,
                }]
            }
            TxBody::TopUpChannel { channel, amount } => {
                let c = Self::chan_mut(&mut self.channels, j, *channel)?;
                if c.closed || c.closes_epoch.is_some() {
                    return Err(TxError::ChannelClosed(*channel));
                }
                if c.payer != from {
                    return Err(TxError::NotChannelPayer {
                        channel: *channel,
                        account: from,
                    });
                }
                c.deposit = c
                    .deposit
                    .checked_add(*amount)
                    .map_err(|_| TxError::Overflow {
                        what: "channel deposit",
                    })?;
                self.debit(j, from, *amount)?;
                vec![Event::ChannelToppedUp {
                    channel: *channel,
                    amount: *amount,
                }]
            }
            TxBody::ClaimVoucher { voucher, payer, .. } => {
                if voucher.chain_id != self.chain_id {
                    return Err(TxError::WrongChainId {
                        expected: self.chain_id,
                        got: voucher.chain_id,
                    });
                }
                let id = voucher.channel;
                let c = Self::chan_mut(&mut self.channels, j, id)?;
                if c.closed {
                    return Err(TxError::ChannelClosed(id));
                }
                if c.provider != from {
                    return Err(TxError::NotChannelProvider {
                        channel: id,
                        account: from,
                    });
                }
                if c.payer != *payer {
                    return Err(TxError::ForgedVoucher { payer: c.payer });
                }
                if voucher.cumulative <= c.claimed {
                    return Err(TxError::DoubleClaim {
                        cumulative: voucher.cumulative,
                        claimed: c.claimed,
                    });
                }
                if voucher.cumulative > c.deposit {
                    return Err(TxError::OverClaim {
                        cumulative: voucher.cumulative,
                        deposit: c.deposit,
                    });
                }
                let increase = voucher
                    .cumulative
                    .checked_sub(c.claimed)
                    .map_err(|_| TxError::Overflow { what: "claim" })?;
                c.claimed = voucher.cumulative;
                // A share of every payment funds the audits that keep payments honest.
                let fee = increase.bps(self.params.audit_fee_bps);
                let pool = self
                    .audit_pool
                    .checked_add(fee)
                    .map_err(|_| TxError::Overflow { what: "audit pool" })?;
                self.set_audit_pool(j, pool);
                let paid = increase
                    .checked_sub(fee)
                    .map_err(|_| TxError::Overflow { what: "claim" })?;
                self.credit(j, from, paid)?;
                vec![Event::VoucherClaimed {
                    channel: id,
                    provider: from,
                    amount: increase,
                    cumulative: voucher.cumulative,
                }]
            }
            TxBody::CloseChannel { channel } => {
                let epoch = self.epoch;
                let closes_epoch = epoch.checked_add(self.params.claim_window_epochs).ok_or(
                    TxError::Overflow {
                        what: "close epoch",
                    },
                )?;
                let c = Self::chan_mut(&mut self.channels, j, *channel)?;
                if c.closed || c.closes_epoch.is_some() {
                    return Err(TxError::ChannelClosed(*channel));
                }
                if c.payer != from {
                    return Err(TxError::NotChannelPayer {
                        channel: *channel,
                        account: from,
                    });
                }
                if epoch < c.expires_epoch {
                    return Err(TxError::ChannelNotExpired {
                        channel: *channel,
                        expires_epoch: c.expires_epoch,
                        epoch,
                    });
                }
                // The provider keeps a whole claim window after the payer's request.
                c.closes_epoch = Some(closes_epoch);
                j.closing.push(((closes_epoch, *channel), false));
                self.closing.insert((closes_epoch, *channel));
                vec![Event::ChannelClosing {
                    channel: *channel,
                    closes_epoch,
                }]
            }
            TxBody::RegisterVerifier { stake } => {
                if !stake.is_zero() {
                    self.debit(j, from, *stake)?;
                }
                let min = self.params.min_verifier_stake;
                let a = Self::acct_mut(&mut self.accounts, j, from);
                a.stake = a
                    .stake
                    .checked_add(*stake)
                    .map_err(|_| TxError::Overflow { what: "stake" })?;
                if a.stake < min {
                    return Err(TxError::InsufficientStake {
                        account: from,
                        have: a.stake,
                        need: min,
                    });
                }
                let stake = a.stake;
                self.set_verifier(j, from, true);
                vec![Event::VerifierRegistered {
                    account: from,
                    stake,
                }]
            }
            TxBody::PostReceiptRoot {
                epoch,
                root,
                receipts,
            } => self.post_root(j, from, *epoch, *root, *receipts, false)?,
            TxBody::PostLateRoot {
                epoch,
                root,
                receipts,
            } => self.post_root(j, from, *epoch, *root, *receipts, true)?,
            TxBody::AuditVerdict {
                verdict, confirmer, ..
            } => self.verdict(j, from, verdict, *confirmer)?,
            TxBody::CommitAudit {
                provider,
                epoch,
                index,
                commitment,
            } => self.commit_audit(j, from, *provider, *epoch, *index, *commitment)?,
            TxBody::RevealAudit {
                provider,
                epoch,
                index,
                passed,
                receipt,
                salt,
            } => self.reveal_audit(j, from, *provider, *epoch, *index, *passed, receipt, salt)?,
            TxBody::PlantFraud { commitment } => self.plant(j, from, *commitment)?,
            TxBody::RevealPlant {
                provider,
                epoch,
                index,
                salt,
                confirmation,
            } => self.reveal_plant(
                j,
                from,
                *provider,
                *epoch,
                *index,
                salt,
                confirmation.map(|(a, _)| a),
            )?,
            TxBody::DemandMaterial {
                provider,
                epoch,
                index,
            } => self.demand(j, from, *provider, *epoch, *index)?,
            TxBody::AnswerDemand {
                epoch,
                index,
                receipt,
                proof,
                material,
            } => self.answer(j, from, *epoch, *index, receipt, proof, *material)?,
            TxBody::ChallengeInclusion { receipt } => self.challenge(j, from, receipt)?,
            TxBody::AnswerInclusion {
                receipt,
                epoch,
                index,
                proof,
            } => self.answer_inclusion(j, from, *receipt, *epoch, *index, proof)?,
            TxBody::AdvanceEpoch => {
                if from != self.sequencer {
                    return Err(TxError::NotSequencer(from));
                }
                let epoch = self
                    .epoch
                    .checked_add(1)
                    .ok_or(TxError::Overflow { what: "epoch" })?;
                j.epoch = Some((self.epoch, self.beacon));
                self.beacon = codec::hash(BEACON_DOMAIN, &(self.beacon, epoch, ctx.parent));
                self.epoch = epoch;
                j.beacons.push(epoch);
                self.beacons.insert(epoch, self.beacon);
                // Registrations and departures of the epoch that ends reach assignment now.
                let last = self.verifier_sets.values().next_back();
                if last != Some(&self.verifiers) {
                    j.verifier_sets.push(epoch);
                    self.verifier_sets.insert(epoch, self.verifiers.clone());
                }
                // Expired alarms first: stake is judged before matured unbonding leaves.
                let mut events = self.expire_alarms(j, epoch)?;
                events.extend(self.expire_challenges(j, epoch)?);
                events.extend(self.close_due_channels(j, epoch)?);
                let due: Vec<AccountId> = self
                    .accounts
                    .iter()
                    .filter(|(_, a)| {
                        a.unbonding
                            .first()
                            .is_some_and(|u| u.release_epoch <= epoch)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    let a = Self::acct_mut(&mut self.accounts, j, id);
                    let split = a.unbonding.partition_point(|u| u.release_epoch <= epoch);
                    let mut released = Amount::ZERO;
                    for u in a.unbonding.drain(..split) {
                        released = released
                            .checked_add(u.amount)
                            .map_err(|_| TxError::Overflow { what: "release" })?;
                    }
                    a.balance = a
                        .balance
                        .checked_add(released)
                        .map_err(|_| TxError::Overflow { what: "balance" })?;
                    events.push(Event::Released {
                        account: id,
                        amount: released,
                    });
                }
                events.push(Event::EpochAdvanced {
                    epoch,
                    beacon: self.beacon,
                });
                events
            }
        };
        let a = Self::acct_mut(&mut self.accounts, j, from);
        a.nonce = a
            .nonce
            .checked_add(1)
            .ok_or(TxError::Overflow { what: "nonce" })?;
        Ok(events)
    }

    /// A root of epoch `root_epoch` holds receipts of earlier epochs (a late root): stake the
    /// provider unbonded since it served them must outlive this root's verdicts too, as if it
    /// had been unbonded in `root_epoch`. Honest providers only wait longer for it.
    pub(crate) fn hold_unbonding(
        &mut self,
        j: &mut Journal,
        provider: AccountId,
        root_epoch: u64,
    ) -> Result<(), TxError> {
        let until =
            root_epoch
                .checked_add(self.params.unbonding_epochs)
                .ok_or(TxError::Overflow {
                    what: "release epoch",
                })?;
        let early = self
            .accounts
            .get(&provider)
            .is_some_and(|a| a.unbonding.iter().any(|u| u.release_epoch < until));
        if early {
            // Raising every earlier release to one epoch keeps the entries sorted.
            let a = Self::acct_mut(&mut self.accounts, j, provider);
            for u in a.unbonding.iter_mut() {
                u.release_epoch = u.release_epoch.max(until);
            }
        }
        Ok(())
    }

    fn unstake(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        amount: Amount,
    ) -> Result<Vec<Event>, TxError> {
        let release_epoch =
            self.epoch
                .checked_add(self.params.unbonding_epochs)
                .ok_or(TxError::Overflow {
                    what: "release epoch",
                })?;
        let min = self.params.min_verifier_stake;
        let a = Self::acct_mut(&mut self.accounts, j, from);
        a.stake = a
            .stake
            .checked_sub(amount)
            .map_err(|_| TxError::InsufficientStake {
                account: from,
                have: a.stake,
                need: amount,
            })?;
        // Entries stay sorted by release epoch: the release epoch never decreases.
        match a.unbonding.last_mut() {
            Some(last) if last.release_epoch == release_epoch => {
                last.amount = last
                    .amount
                    .checked_add(amount)
                    .map_err(|_| TxError::Overflow { what: "unbonding" })?;
            }
            _ => a.unbonding.push(Unbonding {
                amount,
                release_epoch,
            }),
        }
        let below = a.verifier && a.stake < min;
        if below {
            self.set_verifier(j, from, false);
        }
        Ok(vec![Event::Unstaked {
            account: from,
            amount,
            release_epoch,
        }])
    }

    fn verdict(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        v: &Verdict,
        confirmer: AccountId,
    ) -> Result<Vec<Event>, TxError> {
        if v.chain_id != self.chain_id {
            return Err(TxError::WrongChainId {
                expected: self.chain_id,
                got: v.chain_id,
            });
        }
        if from == confirmer {
            return Err(TxError::ConflictedVerdict {
                reason: "the confirmer must be a second verifier",
            });
        }
        if from == v.provider || confirmer == v.provider {
            return Err(TxError::ConflictedVerdict {
                reason: "a provider cannot judge itself",
            });
        }
        // The sender is the assigned verifier (checked below by its reveal), even if it left
        // the set since; the confirmer must be registered now.
        if !self.verifiers.contains(&confirmer) {
            return Err(TxError::NotVerifier(confirmer));
        }
        let posted = self
            .roots
            .get(&(v.provider, v.epoch))
            .ok_or(TxError::UnknownReceiptRoot {
                provider: v.provider,
                epoch: v.epoch,
            })?;
        if v.index >= posted.receipts {
            return Err(TxError::Malformed {
                reason: "leaf index past the root's receipt count",
            });
        }
        let win = crate::audit::Windows::of(&self.params, v.epoch)?;
        self.window("the verdict", win.verdict.0, win.verdict.1)?;
        let key = leaf_key(&v.provider, v.epoch, v.index);
        if self.judged.contains(&key) {
            return Err(TxError::AlreadyJudged(key));
        }
        let (receipt, refund_to) = match &v.fault {
            Fault::Fraud { receipt, proof } => {
                let r = &receipt.receipt;
                let leaf = self.leaf_receipt(&v.provider, v.epoch, v.index, receipt, proof)?;
                let ch = self
                    .channels
                    .get(&r.channel)
                    .ok_or(TxError::UnknownChannel(r.channel))?;
                if ch.provider != v.provider {
                    return Err(TxError::NotChannelProvider {
                        channel: r.channel,
                        account: v.provider,
                    });
                }
                // The receipt's own cost, never more than the channel paid the provider and
                // has not yet refunded.
                let left = ch.claimed.checked_sub(ch.refunded).unwrap_or(Amount::ZERO);
                let cost = agora_wire::micros_to_amount(r.cost_micros).min(left);
                (Some(leaf), Some((r.channel, ch.payer, cost)))
            }
            Fault::Withheld => {
                // Only a demand the provider left unanswered past its deadline, brought by
                // the verifier that made it.
                match self.demands.get(&key) {
                    Some(d) if d.verifier == from && d.answered.is_none() => {
                        if self.epoch <= d.due_epoch {
                            return Err(TxError::Demand {
                                reason: "the provider may still answer",
                            });
                        }
                    }
                    Some(_) => {
                        return Err(TxError::Demand {
                            reason: "answered, or made by another verifier",
                        })
                    }
                    None => {
                        return Err(TxError::Demand {
                            reason: "no demand was made for this leaf",
                        })
                    }
                }
                (None, None)
            }
        };
        // The commitment came first: only the verifier that revealed a failed audit of this
        // leaf may bring a fraud verdict.
        if matches!(v.fault, Fault::Fraud { .. }) {
            match self.audits.get(&key) {
                Some(a) if a.verifier == from && a.revealed == Some(false) => {}
                _ => return Err(TxError::UnrevealedVerdict),
            }
        }
        let mut events = self.confirm_alarm(j, v.epoch, key)?;

        let slashed = self.slash_stake(j, v.provider, self.params.slash_bps)?;
        let p = Self::acct_mut(&mut self.accounts, j, v.provider);
        p.frauds = p.frauds.saturating_add(1);
        let bounty = slashed.bps(self.params.bounty_bps);
        let after_bounty = slashed
            .checked_sub(bounty)
            .map_err(|_| TxError::Overflow { what: "bounty" })?;
        let (payer, refund) = match refund_to {
            Some((channel, payer, cost)) => {
                let refund = cost.min(after_bounty);
                let c = Self::chan_mut(&mut self.channels, j, channel)?;
                c.refunded = c
                    .refunded
                    .checked_add(refund)
                    .map_err(|_| TxError::Overflow { what: "refunded" })?;
                (Some(payer), refund)
            }
            None => (None, Amount::ZERO),
        };
        let burned = after_bounty
            .checked_sub(refund)
            .map_err(|_| TxError::Overflow { what: "refund" })?;
        self.credit(j, from, bounty)?;
        if let Some(payer) = payer {
            self.credit(j, payer, refund)?;
        }
        self.burn(j, burned)?;
        j.judged.push(key);
        self.judged.insert(key);
        events.insert(
            0,
            Event::Slashed {
                provider: v.provider,
                epoch: v.epoch,
                index: v.index,
                receipt,
                amount: slashed,
                verifier: from,
                bounty,
                payer: payer.unwrap_or(v.provider),
                refund,
                burned,
            },
        );
        Ok(events)
    }

    /// At the start of epoch `now`: channels whose close period ended refund their rest.
    fn close_due_channels(&mut self, j: &mut Journal, now: u64) -> Result<Vec<Event>, TxError> {
        let due: Vec<(u64, Hash32)> = self
            .closing
            .iter()
            .take_while(|(e, _)| *e <= now)
            .copied()
            .collect();
        let mut events = Vec::with_capacity(due.len());
        for (e, id) in due {
            j.closing.push(((e, id), true));
            self.closing.remove(&(e, id));
            let c = Self::chan_mut(&mut self.channels, j, id)?;
            let refund = c.escrow();
            let payer = c.payer;
            c.closed = true;
            self.credit(j, payer, refund)?;
            events.push(Event::ChannelClosed {
                channel: id,
                refund,
            });
        }
        Ok(events)
    }

    /// Records a leaf as judged.
    pub(crate) fn mark_judged(&mut self, j: &mut Journal, key: Hash32) {
        j.judged.push(key);
        self.judged.insert(key);
    }

    pub(crate) fn burn(&mut self, j: &mut Journal, amount: Amount) -> Result<(), TxError> {
        j.burned.get_or_insert(self.burned);
        self.burned = self
            .burned
            .checked_add(amount)
            .map_err(|_| TxError::Overflow { what: "burned" })?;
        Ok(())
    }

    /// Takes `bps` of `who`'s bonded and unbonding stake, bonded first, then the latest
    /// unbonding; returns the amount taken. A verifier left under the minimum stops being one.
    pub(crate) fn slash_stake(
        &mut self,
        j: &mut Journal,
        who: AccountId,
        bps: u16,
    ) -> Result<Amount, TxError> {
        let min = self.params.min_verifier_stake;
        let p = Self::acct_mut(&mut self.accounts, j, who);
        let unbonding = p
            .unbonding_total()
            .map_err(|_| TxError::Overflow { what: "unbonding" })?;
        let at_stake = p
            .stake
            .checked_add(unbonding)
            .map_err(|_| TxError::Overflow { what: "stake" })?;
        let slashed = at_stake.bps(bps);
        let from_bonded = slashed.min(p.stake);
        p.stake = p
            .stake
            .checked_sub(from_bonded)
            .map_err(|_| TxError::Overflow { what: "slash" })?;
        let mut rest = slashed
            .checked_sub(from_bonded)
            .map_err(|_| TxError::Overflow { what: "slash" })?;
        for u in p.unbonding.iter_mut().rev() {
            let take = rest.min(u.amount);
            u.amount = u
                .amount
                .checked_sub(take)
                .map_err(|_| TxError::Overflow { what: "slash" })?;
            rest = rest
                .checked_sub(take)
                .map_err(|_| TxError::Overflow { what: "slash" })?;
        }
        p.unbonding.retain(|u| !u.amount.is_zero());
        if p.verifier && p.stake < min {
            self.set_verifier(j, who, false);
        }
        Ok(slashed)
    }

    /// Checks conservation of supply and channel bounds.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let add =
            |s: Amount, x: Amount| s.checked_add(x).map_err(|_| InvariantError::SupplyOverflow);
        let mut total = add(self.burned, self.audit_pool)?;
        for a in self.accounts.values() {
            total = add(total, a.balance)?;
            total = add(total, a.stake)?;
            total = add(
                total,
                a.unbonding_total()
                    .map_err(|_| InvariantError::SupplyOverflow)?,
            )?;
        }
        for c in self.challenges.values().filter(|c| c.open) {
            total = add(total, c.bond)?;
        }
        for p in self.plants.values() {
            total = add(total, p.bond)?;
        }
        for (id, c) in &self.channels {
            if c.claimed > c.deposit {
                return Err(InvariantError::ChannelOverClaimed(*id));
            }
            total = add(total, c.escrow())?;
        }
        if total != self.supply {
            return Err(InvariantError::Supply {
                genesis: self.supply,
                accounted: total,
            });
        }
        Ok(())
    }
}
