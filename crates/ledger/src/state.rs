//! The settlement state and its transition function: pure, deterministic, no I/O.

use crate::error::{GenesisError, InvariantError, TxError};
use crate::genesis::{Genesis, Params};
use crate::tx::{channel_id, TxBody, Verdict, VerifiedTx};
use agora_core::{codec, merkle, AccountId, Amount, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const STATE_DOMAIN: &[u8] = b"agora/ledger/state/v1";
const BEACON_DOMAIN: &[u8] = b"agora/ledger/beacon/v1";
const JUDGED_DOMAIN: &[u8] = b"agora/ledger/judged/v1";

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
        /// The failed receipt.
        receipt: Hash32,
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
    /// Receipts already judged, as `H(provider, epoch, receipt)`.
    pub judged: BTreeSet<Hash32>,
    /// Slashed and neither paid as bounty nor refunded.
    pub burned: Amount,
}

/// Undo records of one transaction, so a rejection restores exactly what was there.
#[derive(Default)]
struct Journal {
    accounts: Vec<(AccountId, Option<Account>)>,
    channels: Vec<(Hash32, Option<Channel>)>,
    roots: Vec<(AccountId, u64)>,
    judged: Vec<Hash32>,
    burned: Option<Amount>,
    epoch: Option<(u64, Hash32)>,
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
    }

    /// The account for writing, created if absent; its old value is journaled.
    fn acct_mut<'a>(
        accounts: &'a mut BTreeMap<AccountId, Account>,
        j: &mut Journal,
        id: AccountId,
    ) -> &'a mut Account {
        j.accounts.push((id, accounts.get(&id).cloned()));
        accounts.entry(id).or_default()
    }

    fn chan_mut<'a>(
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

    fn debit(&mut self, j: &mut Journal, id: AccountId, amount: Amount) -> Result<(), TxError> {
        let a = Self::acct_mut(&mut self.accounts, j, id);
        a.balance = a
            .balance
            .checked_sub(amount)
            .map_err(|_| overdraft(id, a.balance, amount))?;
        Ok(())
    }

    fn credit(&mut self, j: &mut Journal, id: AccountId, amount: Amount) -> Result<(), TxError> {
        let a = Self::acct_mut(&mut self.accounts, j, id);
        a.balance = a
            .balance
            .checked_add(amount)
            .map_err(|_| TxError::Overflow { what: "balance" })?;
        Ok(())
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
                if c.closed {
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
                self.credit(j, from, increase)?;
                vec![Event::VoucherClaimed {
                    channel: id,
                    provider: from,
                    amount: increase,
                    cumulative: voucher.cumulative,
                }]
            }
            TxBody::CloseChannel { channel } => {
                let epoch = self.epoch;
                let c = Self::chan_mut(&mut self.channels, j, *channel)?;
                if c.closed {
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
                let refund = c.escrow();
                c.closed = true;
                self.credit(j, from, refund)?;
                vec![Event::ChannelClosed {
                    channel: *channel,
                    refund,
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
                a.verifier = true;
                vec![Event::VerifierRegistered {
                    account: from,
                    stake: a.stake,
                }]
            }
            TxBody::PostReceiptRoot {
                epoch,
                root,
                receipts,
            } => {
                if *epoch != self.epoch {
                    return Err(TxError::WrongEpoch {
                        expected: self.epoch,
                        got: *epoch,
                    });
                }
                let have = sender.stake;
                if have < self.params.min_provider_stake {
                    return Err(TxError::InsufficientStake {
                        account: from,
                        have,
                        need: self.params.min_provider_stake,
                    });
                }
                if self.roots.contains_key(&(from, *epoch)) {
                    return Err(TxError::RootAlreadyPosted {
                        provider: from,
                        epoch: *epoch,
                    });
                }
                j.roots.push((from, *epoch));
                self.roots.insert(
                    (from, *epoch),
                    ReceiptRoot {
                        root: *root,
                        receipts: *receipts,
                    },
                );
                vec![Event::ReceiptRootPosted {
                    provider: from,
                    epoch: *epoch,
                    root: *root,
                    receipts: *receipts,
                }]
            }
            TxBody::AuditVerdict {
                verdict, confirmer, ..
            } => self.verdict(j, from, verdict, *confirmer)?,
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
                let mut events = Vec::new();
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
        if a.verifier && a.stake < min {
            a.verifier = false;
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
        for who in [from, confirmer] {
            if !self.accounts.get(&who).is_some_and(|a| a.verifier) {
                return Err(TxError::NotVerifier(who));
            }
        }
        let posted = self
            .roots
            .get(&(v.provider, v.epoch))
            .ok_or(TxError::UnknownReceiptRoot {
                provider: v.provider,
                epoch: v.epoch,
            })?;
        if v.index >= posted.receipts
            || !merkle::verify(&posted.root, &v.receipt, v.index, &v.proof)
        {
            return Err(TxError::BadReceiptProof { receipt: v.receipt });
        }
        let key = codec::hash(JUDGED_DOMAIN, &(v.provider, v.epoch, v.receipt));
        if self.judged.contains(&key) {
            return Err(TxError::AlreadyJudged(v.receipt));
        }
        let ch = self
            .channels
            .get(&v.channel)
            .ok_or(TxError::UnknownChannel(v.channel))?;
        if ch.provider != v.provider {
            return Err(TxError::NotChannelProvider {
                channel: v.channel,
                account: v.provider,
            });
        }
        let payer = ch.payer;
        let (slash_bps, bounty_bps) = (self.params.slash_bps, self.params.bounty_bps);

        // Slash a share of bonded + unbonding stake, bonded first, then the latest unbonding.
        let p = Self::acct_mut(&mut self.accounts, j, v.provider);
        let unbonding = p
            .unbonding_total()
            .map_err(|_| TxError::Overflow { what: "unbonding" })?;
        let at_stake = p
            .stake
            .checked_add(unbonding)
            .map_err(|_| TxError::Overflow { what: "stake" })?;
        let slashed = at_stake.bps(slash_bps);
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

        let bounty = slashed.bps(bounty_bps);
        let after_bounty = slashed
            .checked_sub(bounty)
            .map_err(|_| TxError::Overflow { what: "bounty" })?;
        let refund = v.refund.min(after_bounty);
        let burned = after_bounty
            .checked_sub(refund)
            .map_err(|_| TxError::Overflow { what: "refund" })?;
        self.credit(j, from, bounty)?;
        self.credit(j, payer, refund)?;
        j.burned.get_or_insert(self.burned);
        self.burned = self
            .burned
            .checked_add(burned)
            .map_err(|_| TxError::Overflow { what: "burned" })?;
        j.judged.push(key);
        self.judged.insert(key);
        Ok(vec![Event::Slashed {
            provider: v.provider,
            receipt: v.receipt,
            amount: slashed,
            verifier: from,
            bounty,
            payer,
            refund,
            burned,
        }])
    }

    /// Checks conservation of supply and channel bounds.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let add =
            |s: Amount, x: Amount| s.checked_add(x).map_err(|_| InvariantError::SupplyOverflow);
        let mut total = self.burned;
        for a in self.accounts.values() {
            total = add(total, a.balance)?;
            total = add(total, a.stake)?;
            total = add(
                total,
                a.unbonding_total()
                    .map_err(|_| InvariantError::SupplyOverflow)?,
            )?;
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
