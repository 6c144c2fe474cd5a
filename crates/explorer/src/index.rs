//! What the explorer knows of the chain: an index built from the ledger's blocks and events,
//! without I/O, so it can be tested on blocks made in memory.
//!
//! Totals per account (earnings, audits, slashes, fees) cover the whole chain; lists of
//! blocks, audits and epochs keep only the most recent entries, so memory stays bounded.

use agora_core::{AccountId, Amount, Hash32};
use agora_ledger::block::Block;
use agora_ledger::state::Event;
use agora_ledger::store::BlockEvents;
use agora_ledger::tx::TxBody;
use agora_wire::{Fault, SignedReceipt};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Recent blocks kept.
pub const RECENT_BLOCKS: usize = 200;
/// Recent audits kept.
pub const RECENT_AUDITS: usize = 500;
/// Epochs kept.
pub const RECENT_EPOCHS: usize = 500;
/// Verdicts kept (every one is evidence someone may want to read).
pub const VERDICTS: usize = 1000;
/// Channels kept by id (for receipt lookups); the oldest go first.
pub const CHANNELS: usize = 100_000;

/// One transaction, as listed.
#[derive(Debug, Clone)]
pub struct TxRow {
    /// The transaction id.
    pub id: Hash32,
    /// The sender.
    pub from: AccountId,
    /// `TxBody` variant name.
    pub kind: &'static str,
    /// What it did, in words (plain text; escaped when rendered).
    pub events: Vec<String>,
}

/// One block, as listed.
#[derive(Debug, Clone)]
pub struct BlockRow {
    /// Height.
    pub height: u64,
    /// Its hash.
    pub hash: Hash32,
    /// The sequencer's clock, unix ms.
    pub time_ms: u64,
    /// The state hash after it.
    pub state_hash: Hash32,
    /// Its transactions.
    pub txs: Vec<TxRow>,
}

/// One provider's receipt root.
#[derive(Debug, Clone)]
pub struct RootRow {
    /// The provider.
    pub provider: AccountId,
    /// The Merkle root.
    pub root: Hash32,
    /// Leaves.
    pub receipts: u64,
    /// Posted in this block.
    pub height: u64,
}

/// An epoch.
#[derive(Debug, Clone, Default)]
pub struct EpochRow {
    /// The epoch.
    pub epoch: u64,
    /// Its beacon (zero for epochs begun before the index started).
    pub beacon: Hash32,
    /// The block that began it.
    pub height: u64,
    /// When, unix ms.
    pub time_ms: u64,
    /// Receipt roots posted for it.
    pub roots: Vec<RootRow>,
}

/// A revealed audit.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Block.
    pub height: u64,
    /// Verifier.
    pub verifier: AccountId,
    /// Provider.
    pub provider: AccountId,
    /// Root epoch.
    pub epoch: u64,
    /// Leaf.
    pub index: u64,
    /// Outcome.
    pub passed: bool,
    /// Fee paid.
    pub fee: Amount,
}

/// What a verdict or slash rests on.
#[derive(Debug, Clone)]
pub enum Evidence {
    /// The failed receipt as the provider signed it, and the length of its Merkle path.
    Fraud {
        /// The receipt.
        receipt: Box<SignedReceipt>,
        /// Merkle path length.
        proof_len: usize,
    },
    /// The demand for the leaf's material went unanswered.
    Withheld,
    /// A payer's receipt was missing from the provider's roots.
    Omission,
}

/// A confirmed fraud, a withheld leaf or an omission, with what the ledger recorded.
#[derive(Debug, Clone)]
pub struct VerdictRow {
    /// Block.
    pub height: u64,
    /// The transaction.
    pub tx: Hash32,
    /// Provider slashed.
    pub provider: AccountId,
    /// Root epoch (0 for omissions).
    pub epoch: u64,
    /// Leaf (0 for omissions).
    pub index: u64,
    /// The evidence.
    pub evidence: Evidence,
    /// The verifier that submitted the verdict (or the payer that challenged).
    pub accuser: AccountId,
    /// The second verifier that co-signed it, for audit verdicts.
    pub confirmer: Option<AccountId>,
    /// The verifiers whose revealed audit of this leaf failed it.
    pub failed_by: Vec<AccountId>,
    /// Taken from the provider's stake.
    pub slashed: Amount,
    /// Bounty paid.
    pub bounty: Amount,
    /// Refunded to the payer.
    pub refund: Amount,
    /// Burned.
    pub burned: Amount,
    /// The failed receipt's hash, if known.
    pub receipt: Option<Hash32>,
}

/// Totals of one account.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// Bonded stake, as last read from the ledger.
    pub stake: Amount,
    /// Registered verifier.
    pub verifier: bool,
    /// Posted a receipt root, claimed a voucher, or had a channel opened to it.
    pub provider: bool,
    /// Claimed from channels.
    pub earned: Amount,
    /// Receipt roots posted.
    pub roots: u64,
    /// Receipts under them.
    pub receipts: u64,
    /// As provider: audits of its receipts revealed passed.
    pub audits_passed: u64,
    /// As provider: audits revealed failed.
    pub audits_failed: u64,
    /// As provider: slashes.
    pub slashes: u64,
    /// As provider: stake taken.
    pub slashed: Amount,
    /// As verifier: audits revealed.
    pub audits_done: u64,
    /// As verifier: of which failed the leaf.
    pub alarms: u64,
    /// As verifier: fees and bounties.
    pub fees: Amount,
    /// As verifier: slashed for false alarms or lazy approvals.
    pub verifier_slashes: u64,
    /// As verifier: stake taken.
    pub verifier_slashed: Amount,
    /// As payer: spent through channels (claimed by providers).
    pub spent: Amount,
}

/// A channel, as the explorer saw it open.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    /// Payer.
    pub payer: AccountId,
    /// Provider.
    pub provider: AccountId,
    /// Deposited.
    pub deposit: Amount,
    /// Claimed.
    pub claimed: Amount,
    /// Closed.
    pub closed: bool,
}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    /// Height of the last block indexed.
    pub height: u64,
    /// Its hash.
    pub tip: Hash32,
    /// Current epoch.
    pub epoch: u64,
    /// Current beacon.
    pub beacon: Hash32,
    /// Recent blocks, newest last.
    pub blocks: VecDeque<BlockRow>,
    /// Epochs, by number.
    pub epochs: BTreeMap<u64, EpochRow>,
    /// Accounts seen.
    pub actors: HashMap<AccountId, Actor>,
    /// Recent audits, newest last.
    pub audits: VecDeque<AuditRow>,
    /// Verdicts and slashes, newest last.
    pub verdicts: VecDeque<VerdictRow>,
    /// Channels seen open.
    pub channels: HashMap<Hash32, ChannelRow>,
    channel_order: VecDeque<Hash32>,
    /// Transactions committed.
    pub tx_count: u64,
    /// Receipts under posted roots, per epoch (for the chart).
    pub receipts_by_epoch: BTreeMap<u64, u64>,
    /// Accounts whose ledger view should be read again (stake changes).
    pub dirty: Vec<AccountId>,
}

fn add(a: &mut Amount, b: Amount) {
    *a = Amount::new(a.units().saturating_add(b.units()));
}

/// The name of a transaction kind.
pub use agora_ledger::metrics::tx_kind as kind;

fn short(id: &impl std::fmt::Display) -> String {
    let s = id.to_string();
    s.chars().take(10).collect()
}

/// One event in words.
pub fn describe(e: &Event) -> String {
    match e {
        Event::Transfer { from, to, amount } => {
            format!("{} sent {amount} to {}", short(from), short(to))
        }
        Event::Staked { account, amount } => format!("{} bonded {amount}", short(account)),
        Event::Unstaked {
            account,
            amount,
            release_epoch,
        } => format!(
            "{} unbonds {amount} (free at epoch {release_epoch})",
            short(account)
        ),
        Event::Released { account, amount } => {
            format!("{} got {amount} of unbonded stake back", short(account))
        }
        Event::ChannelOpened {
            channel,
            payer,
            provider,
            amount,
            ..
        } => format!(
            "channel {} opened: {} escrows {amount} for {}",
            short(channel),
            short(payer),
            short(provider)
        ),
        Event::ChannelToppedUp { channel, amount } => {
            format!("channel {} topped up by {amount}", short(channel))
        }
        Event::VoucherClaimed {
            channel,
            provider,
            amount,
            cumulative,
        } => format!(
            "{} claimed {amount} from channel {} ({cumulative} in all)",
            short(provider),
            short(channel)
        ),
        Event::ChannelClosing {
            channel,
            closes_epoch,
        } => format!(
            "channel {} closes at epoch {closes_epoch}",
            short(channel)
        ),
        Event::ChannelClosed { channel, refund } => {
            format!("channel {} closed, {refund} refunded", short(channel))
        }
        Event::VerifierRegistered { account, stake } => {
            format!("{} registered as verifier with stake {stake}", short(account))
        }
        Event::ReceiptRootPosted {
            provider,
            epoch,
            receipts,
            ..
        } => format!(
            "{} posted its root for epoch {epoch}: {receipts} receipts",
            short(provider)
        ),
        Event::Slashed {
            provider,
            epoch,
            index,
            amount,
            ..
        } => format!(
            "FRAUD: {} slashed {amount} for leaf {index} of epoch {epoch}",
            short(provider)
        ),
        Event::AuditCommitted {
            verifier,
            provider,
            epoch,
            index,
        } => format!(
            "{} committed its audit of {} leaf {index} (epoch {epoch})",
            short(verifier),
            short(provider)
        ),
        Event::AuditRevealed {
            verifier,
            provider,
            epoch,
            index,
            passed,
            fee,
        } => format!(
            "{} audited {} leaf {index} (epoch {epoch}): {} (fee {fee})",
            short(verifier),
            short(provider),
            if *passed { "passed" } else { "FAILED" }
        ),
        Event::FraudPlanted { commitment } => {
            format!("a fake fraud was planted ({})", short(commitment))
        }
        Event::PlantRevealed {
            provider,
            epoch,
            index,
            lazy,
            slashed,
            caught,
        } => format!(
            "plant opened: {} leaf {index} (epoch {epoch}); lazy: {}; slashed {slashed}; caught by: {}",
            short(provider),
            lazy.map_or("none".into(), |a| short(&a)),
            caught.map_or("none".into(), |a| short(&a)),
        ),
        Event::MaterialDemanded {
            verifier,
            provider,
            epoch,
            index,
            due_epoch,
        } => format!(
            "{} demanded {}'s material for leaf {index} (epoch {epoch}), due by epoch {due_epoch}",
            short(verifier),
            short(provider)
        ),
        Event::MaterialAnswered {
            provider,
            epoch,
            index,
            ..
        } => format!(
            "{} answered the demand for leaf {index} (epoch {epoch})",
            short(provider)
        ),
        Event::AlarmConfirmed { verifier, fee } => {
            format!("{}'s alarm confirmed (fee {fee})", short(verifier))
        }
        Event::FalseAlarm {
            verifier, slashed, ..
        } => format!(
            "false alarm: {} slashed {slashed}",
            short(verifier)
        ),
        Event::InclusionChallenged {
            receipt, provider, ..
        } => format!(
            "receipt {} challenged: is it under {}'s roots?",
            short(receipt),
            short(provider)
        ),
        Event::InclusionProven {
            receipt, provider, ..
        } => format!(
            "{} proved receipt {} under its root",
            short(provider),
            short(receipt)
        ),
        Event::OmissionSlashed {
            receipt,
            provider,
            amount,
            ..
        } => format!(
            "OMISSION: {} slashed {amount}: receipt {} missing from its roots",
            short(provider),
            short(receipt)
        ),
        Event::EpochAdvanced { epoch, beacon } => {
            format!("epoch {epoch} began, beacon {}", short(beacon))
        }
    }
}

impl Index {
    fn actor(&mut self, a: AccountId) -> &mut Actor {
        self.actors.entry(a).or_default()
    }

    fn touch(&mut self, a: AccountId) {
        if !self.dirty.contains(&a) {
            self.dirty.push(a);
        }
    }

    /// Applies one block and its events (the ledger's `/v1/blocks` and `/v1/events` for
    /// the same height). Blocks must come in order; a repeat or a gap is ignored.
    pub fn apply(&mut self, block: &Block, events: &BlockEvents) {
        let height = block.header.height;
        if height != self.height + 1 || events.height != height {
            return;
        }
        let time_ms = block.header.timestamp_ms;
        let by_tx: HashMap<Hash32, &Vec<Event>> =
            events.txs.iter().map(|t| (t.tx_id, &t.events)).collect();
        let mut rows = Vec::with_capacity(block.txs.len());
        for stx in &block.txs {
            let id = stx.id();
            let evs: &[Event] = by_tx.get(&id).map_or(&[], |v| v.as_slice());
            self.apply_tx(height, time_ms, id, &stx.tx.from, &stx.tx.body, evs);
            rows.push(TxRow {
                id,
                from: stx.tx.from,
                kind: kind(&stx.tx.body),
                events: evs.iter().map(describe).collect(),
            });
        }
        self.tx_count += block.txs.len() as u64;
        self.height = height;
        self.tip = events.block_hash;
        self.blocks.push_back(BlockRow {
            height,
            hash: events.block_hash,
            time_ms,
            state_hash: block.header.state_hash,
            txs: rows,
        });
        while self.blocks.len() > RECENT_BLOCKS {
            self.blocks.pop_front();
        }
    }

    fn apply_tx(
        &mut self,
        height: u64,
        time_ms: u64,
        id: Hash32,
        from: &AccountId,
        body: &TxBody,
        events: &[Event],
    ) {
        let mut verdict: Option<VerdictRow> = match body {
            TxBody::AuditVerdict {
                verdict, confirmer, ..
            } => Some(VerdictRow {
                height,
                tx: id,
                provider: verdict.provider,
                epoch: verdict.epoch,
                index: verdict.index,
                evidence: match &verdict.fault {
                    Fault::Fraud { receipt, proof } => Evidence::Fraud {
                        receipt: Box::new(receipt.clone()),
                        proof_len: proof.len(),
                    },
                    Fault::Withheld => Evidence::Withheld,
                },
                accuser: *from,
                confirmer: Some(*confirmer),
                failed_by: Vec::new(),
                slashed: Amount::ZERO,
                bounty: Amount::ZERO,
                refund: Amount::ZERO,
                burned: Amount::ZERO,
                receipt: None,
            }),
            _ => None,
        };
        for e in events {
            self.apply_event(height, time_ms, e, &mut verdict, id);
        }
        if let Some(mut v) = verdict {
            v.failed_by = self
                .audits
                .iter()
                .filter(|a| {
                    !a.passed
                        && a.provider == v.provider
                        && a.epoch == v.epoch
                        && a.index == v.index
                })
                .map(|a| a.verifier)
                .collect();
            self.push_verdict(v);
        }
    }

    fn push_verdict(&mut self, v: VerdictRow) {
        self.verdicts.push_back(v);
        while self.verdicts.len() > VERDICTS {
            self.verdicts.pop_front();
        }
    }

    fn apply_event(
        &mut self,
        height: u64,
        time_ms: u64,
        e: &Event,
        verdict: &mut Option<VerdictRow>,
        tx: Hash32,
    ) {
        match e {
            Event::Staked { account, .. }
            | Event::Unstaked { account, .. }
            | Event::Released { account, .. } => self.touch(*account),
            Event::VerifierRegistered { account, stake } => {
                let a = self.actor(*account);
                a.verifier = true;
                a.stake = *stake;
                self.touch(*account);
            }
            Event::ChannelOpened {
                channel,
                payer,
                provider,
                amount,
                ..
            } => {
                self.actor(*provider).provider = true;
                self.actor(*payer);
                if self.channels.len() >= CHANNELS {
                    if let Some(old) = self.channel_order.pop_front() {
                        self.channels.remove(&old);
                    }
                }
                self.channel_order.push_back(*channel);
                self.channels.insert(
                    *channel,
                    ChannelRow {
                        payer: *payer,
                        provider: *provider,
                        deposit: *amount,
                        claimed: Amount::ZERO,
                        closed: false,
                    },
                );
            }
            Event::ChannelToppedUp { channel, amount } => {
                if let Some(c) = self.channels.get_mut(channel) {
                    add(&mut c.deposit, *amount);
                }
            }
            Event::VoucherClaimed {
                channel,
                provider,
                amount,
                ..
            } => {
                let a = self.actor(*provider);
                a.provider = true;
                add(&mut a.earned, *amount);
                if let Some(c) = self.channels.get_mut(channel) {
                    add(&mut c.claimed, *amount);
                    let payer = c.payer;
                    add(&mut self.actor(payer).spent, *amount);
                }
            }
            Event::ChannelClosed { channel, .. } => {
                if let Some(c) = self.channels.get_mut(channel) {
                    c.closed = true;
                }
            }
            Event::ReceiptRootPosted {
                provider,
                epoch,
                root,
                receipts,
            } => {
                let a = self.actor(*provider);
                a.provider = true;
                a.roots += 1;
                a.receipts += receipts;
                *self.receipts_by_epoch.entry(*epoch).or_default() += receipts;
                self.epochs
                    .entry(*epoch)
                    .or_insert_with(|| EpochRow {
                        epoch: *epoch,
                        ..EpochRow::default()
                    })
                    .roots
                    .push(RootRow {
                        provider: *provider,
                        root: *root,
                        receipts: *receipts,
                        height,
                    });
            }
            Event::Slashed {
                provider,
                receipt,
                amount,
                verifier,
                bounty,
                refund,
                burned,
                ..
            } => {
                let a = self.actor(*provider);
                a.slashes += 1;
                add(&mut a.slashed, *amount);
                add(&mut self.actor(*verifier).fees, *bounty);
                self.touch(*provider);
                if let Some(v) = verdict.as_mut() {
                    v.slashed = *amount;
                    v.bounty = *bounty;
                    v.refund = *refund;
                    v.burned = *burned;
                    v.receipt = *receipt;
                }
            }
            Event::AuditRevealed {
                verifier,
                provider,
                epoch,
                index,
                passed,
                fee,
            } => {
                let p = self.actor(*provider);
                if *passed {
                    p.audits_passed += 1;
                } else {
                    p.audits_failed += 1;
                }
                let v = self.actor(*verifier);
                v.audits_done += 1;
                if !*passed {
                    v.alarms += 1;
                }
                add(&mut v.fees, *fee);
                self.audits.push_back(AuditRow {
                    height,
                    verifier: *verifier,
                    provider: *provider,
                    epoch: *epoch,
                    index: *index,
                    passed: *passed,
                    fee: *fee,
                });
                while self.audits.len() > RECENT_AUDITS {
                    self.audits.pop_front();
                }
            }
            Event::AlarmConfirmed { verifier, fee } => add(&mut self.actor(*verifier).fees, *fee),
            Event::FalseAlarm {
                verifier, slashed, ..
            } => {
                let v = self.actor(*verifier);
                v.verifier_slashes += 1;
                add(&mut v.verifier_slashed, *slashed);
                self.touch(*verifier);
            }
            Event::PlantRevealed { lazy, slashed, .. } => {
                if let Some(l) = lazy {
                    let v = self.actor(*l);
                    v.verifier_slashes += 1;
                    add(&mut v.verifier_slashed, *slashed);
                    self.touch(*l);
                }
            }
            Event::OmissionSlashed {
                receipt,
                provider,
                payer,
                amount,
                refund,
                burned,
            } => {
                let a = self.actor(*provider);
                a.slashes += 1;
                add(&mut a.slashed, *amount);
                self.touch(*provider);
                self.push_verdict(VerdictRow {
                    height,
                    tx,
                    provider: *provider,
                    epoch: 0,
                    index: 0,
                    evidence: Evidence::Omission,
                    accuser: *payer,
                    confirmer: None,
                    failed_by: Vec::new(),
                    slashed: *amount,
                    bounty: Amount::ZERO,
                    refund: *refund,
                    burned: *burned,
                    receipt: Some(*receipt),
                });
            }
            Event::EpochAdvanced { epoch, beacon } => {
                self.epoch = *epoch;
                self.beacon = *beacon;
                let row = self.epochs.entry(*epoch).or_default();
                row.epoch = *epoch;
                row.beacon = *beacon;
                row.height = height;
                row.time_ms = time_ms;
                while self.epochs.len() > RECENT_EPOCHS {
                    self.epochs.pop_first();
                }
            }
            Event::Transfer { .. }
            | Event::ChannelClosing { .. }
            | Event::AuditCommitted { .. }
            | Event::FraudPlanted { .. }
            | Event::MaterialDemanded { .. }
            | Event::MaterialAnswered { .. }
            | Event::InclusionChallenged { .. }
            | Event::InclusionProven { .. } => {}
        }
    }

    /// Providers: accounts that posted roots, claimed or were paid through a channel.
    pub fn providers(&self) -> Vec<(AccountId, &Actor)> {
        let mut v: Vec<_> = self
            .actors
            .iter()
            .filter(|(_, a)| a.provider)
            .map(|(k, a)| (*k, a))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Registered verifiers.
    pub fn verifiers(&self) -> Vec<(AccountId, &Actor)> {
        let mut v: Vec<_> = self
            .actors
            .iter()
            .filter(|(_, a)| a.verifier)
            .map(|(k, a)| (*k, a))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// The epoch whose start is the latest at or before `time_ms`.
    pub fn epoch_at(&self, time_ms: u64) -> Option<u64> {
        self.epochs
            .values()
            .filter(|e| e.time_ms != 0 && e.time_ms <= time_ms)
            .map(|e| e.epoch)
            .max()
    }
}
