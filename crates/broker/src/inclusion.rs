//! Every paid answer is audit-eligible only if its receipt sits under one of its provider's
//! posted roots: the ledger audits roots, not receipts. The broker keeps each receipt it paid
//! (durably, beside the channel books) until its inclusion challenge window opens, epoch
//! `r + 2` for a receipt naming epoch `r`, when the roots that may hold it on time (those of
//! `r` and `r + 1`) are final. Then it asks the provider where the receipt sits (an
//! [`InclusionQuery`] on its own stream) and checks the leaf and path against the root the
//! ledger recorded. A receipt proven included is forgotten; any other (no root, a path that
//! does not verify, a provider that does not answer) is challenged on the ledger
//! (`ChallengeInclusion`, signed by the receipt's payer and bonded). An honest provider that
//! could not answer the query still answers the challenge and takes the bond; one that left
//! the receipt out is slashed and the payer refunded (`crates/ledger/src/inclusion.rs`).
//!
//! The ledger slashes a provider that leaves a challenge unanswered itself when the next
//! epoch starts; a chain does only when someone calls `expireChallenge`, so the broker keeps
//! each challenge it filed (durably too) and, once its deadline passed, calls it for the
//! payer that is owed ([`Inclusion::expire_unanswered`]).
//!
//! On an EVM chain the same holds through `BrokerSettlement`: paths are checked in the
//! chain's own (keccak) tree, and a challenge carries the provider's EIP-712 `Receipt`
//! signature that came with the receipt (`Frame::Done::chain_sig`); the broker pays no
//! receipt without a valid one, so every paid receipt can be challenged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::{AccountId, Hash32, Keypair};
use agora_market::SignedOffer;
use agora_net::protocol::SignedReceipt;
use agora_net::protocol::{read_frame, write_frame, InclusionAnswer, InclusionQuery};
use agora_net::{inclusion_protocol, Multiaddr, Node, PeerId};
use agora_settlement::network::{SettlementEvent as Event, SharedSettlement};
use agora_settlement::{Expiry, Refusal};
use borsh::{BorshDeserialize, BorshSerialize};
use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::channels::{ChannelError, ChannelStore, Channels};

/// Receipt hash -> borsh [`Tracked`].
const TRACKED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inclusion_pending");

/// Receipt hash -> borsh [`Challenged`].
const CHALLENGED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inclusion_challenged");

/// Most receipts awaiting their roots; beyond it new ones are counted `untracked` and logged.
pub const MAX_TRACKED: usize = 65_536;
/// Most roots remembered (providers x epochs of the challenge window).
const MAX_ROOTS: usize = 262_144;
/// Receipts checked in one sweep, and queries in flight at once.
const CHECKS_PER_SWEEP: usize = 256;
const QUERIES_IN_FLIGHT: usize = 8;
/// How long a provider has to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses kept per receipt to reach its provider.
const MAX_ADDRS: usize = 4;

/// Finds the payer key of an account after a restart (the gateway's key store): a receipt
/// recovered from the store is challenged with it.
#[derive(Clone)]
pub struct PayerSeeds(pub Arc<SeedOf>);

/// An account's seed, if known.
pub type SeedOf = dyn Fn(&AccountId) -> Option<[u8; 32]> + Send + Sync;

impl std::fmt::Debug for PayerSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayerSeeds(..)")
    }
}

/// A paid receipt and how to reach its provider.
#[derive(Debug, Clone, BorshSerialize, BorshDeserialize)]
struct Tracked {
    receipt: SignedReceipt,
    peer: Vec<u8>,
    addrs: Vec<String>,
    /// The provider's EIP-712 receipt signature on a chain (last: older records lack it).
    chain_sig: Option<Vec<u8>>,
}

/// A challenge this broker filed, until it is answered or charged.
#[derive(Debug, Clone, Copy, BorshSerialize, BorshDeserialize)]
struct Challenged {
    /// The receipt's payer, whose account filed it and is refunded.
    payer: AccountId,
    /// The epoch of the next try to charge it.
    try_at: u64,
}

/// What records written before `chain_sig` hold.
#[derive(BorshDeserialize)]
struct TrackedBefore {
    receipt: SignedReceipt,
    peer: Vec<u8>,
    addrs: Vec<String>,
}

impl Tracked {
    fn decode(bytes: &[u8]) -> Result<Tracked, std::io::Error> {
        Tracked::try_from_slice(bytes).or_else(|e| {
            TrackedBefore::try_from_slice(bytes)
                .map(|t| Tracked {
                    receipt: t.receipt,
                    peer: t.peer,
                    addrs: t.addrs,
                    chain_sig: None,
                })
                .map_err(|_| e)
        })
    }
}

/// Where a receipt naming epoch `receipt_epoch` stands at ledger epoch `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The roots that may hold it are not final yet.
    Wait,
    /// Inside the challenge window `r + 2 ..= r + 1 + escalation_epochs`: check it now.
    Check,
    /// The window closed: too late to challenge.
    Expired,
}

/// Where a receipt naming `receipt_epoch` stands at `now`, under the ledger's
/// `escalation_epochs`.
pub fn due(receipt_epoch: u64, now: u64, escalation_epochs: u64) -> Due {
    let opens = receipt_epoch.saturating_add(2);
    let closes = receipt_epoch
        .saturating_add(1)
        .saturating_add(escalation_epochs);
    if now < opens {
        Due::Wait
    } else if now > closes {
        Due::Expired
    } else {
        Due::Check
    }
}

/// Posted roots by (provider, epoch): the root and its leaf count.
type Roots = HashMap<(AccountId, u64), (Hash32, u64)>;

/// Whether `answer` shows `receipt` under the root its provider posted for the receipt's
/// epoch or the next (the roots that answer an inclusion challenge without a late root), in
/// `settlement`'s own tree.
fn proves(
    settlement: &SharedSettlement,
    answer: &InclusionAnswer,
    receipt: &SignedReceipt,
    roots: &Roots,
) -> bool {
    let InclusionAnswer::Included {
        epoch,
        index,
        proof,
    } = answer
    else {
        return false;
    };
    let r = receipt.receipt.epoch;
    if *epoch != r && Some(*epoch) != r.checked_add(1) {
        return false;
    }
    roots
        .get(&(receipt.receipt.provider, *epoch))
        .is_some_and(|(root, leaves)| {
            settlement.receipt_proof_holds(root, *leaves, *index, receipt, proof)
        })
}

/// What a check of one receipt decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider showed it under an on-time root.
    Proven,
    /// `ChallengeInclusion` was submitted (or the ledger already holds one).
    Challenged,
    /// Neither yet (no payer key, or the ledger refused for now): checked again next sweep.
    Retry,
    /// The provider names a root this broker did not remember (past [`MAX_ROOTS`]): it
    /// cannot tell, so it does not challenge (a challenge of an honest provider costs the
    /// payer its bond); forgotten and counted `unverified`.
    Unverified,
}

#[derive(Default)]
struct State {
    tracked: HashMap<Hash32, Tracked>,
    /// Challenges filed and not yet answered or charged, at most [`MAX_TRACKED`].
    challenged: HashMap<Hash32, Challenged>,
    roots: Roots,
    /// Epochs with a posted root left out of `roots` because it was full.
    unremembered: std::collections::BTreeSet<u64>,
    /// Payer keys seen since the start.
    payers: HashMap<AccountId, Keypair>,
    /// The ledger epoch as the event stream that fed `roots` last reached it.
    epoch: u64,
}

/// The receipts the broker paid and has not yet seen proven under a root.
pub struct Inclusion {
    state: Mutex<State>,
    /// Whose tree the providers' paths are checked in.
    settlement: SharedSettlement,
    store: Option<Arc<ChannelStore>>,
    escalation_epochs: u64,
    payer_seeds: Option<PayerSeeds>,
}

fn store_err(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Store(e.to_string())
}

impl Inclusion {
    /// Receipts kept in `store` (if any; memory only otherwise), recovered now; challenges
    /// follow the ledger's `escalation_epochs`.
    pub fn new(
        settlement: SharedSettlement,
        store: Option<Arc<ChannelStore>>,
        escalation_epochs: u64,
        payer_seeds: Option<PayerSeeds>,
    ) -> Result<Inclusion, ChannelError> {
        let mut tracked = HashMap::new();
        let mut challenged = HashMap::new();
        if let Some(s) = &store {
            let w = s.db.begin_write().map_err(store_err)?;
            w.open_table(TRACKED).map_err(store_err)?;
            w.open_table(CHALLENGED).map_err(store_err)?;
            w.commit().map_err(store_err)?;
            let r = s.db.begin_read().map_err(store_err)?;
            let t = r.open_table(TRACKED).map_err(store_err)?;
            for row in t.iter().map_err(store_err)?.take(MAX_TRACKED) {
                let (_, v) = row.map_err(store_err)?;
                let t = Tracked::decode(v.value()).map_err(store_err)?;
                tracked.insert(t.receipt.hash(), t);
            }
            let c = r.open_table(CHALLENGED).map_err(store_err)?;
            for row in c.iter().map_err(store_err)?.take(MAX_TRACKED) {
                let (k, v) = row.map_err(store_err)?;
                let key = Hash32::from_slice(k.value()).map_err(store_err)?;
                let c = Challenged::try_from_slice(v.value()).map_err(store_err)?;
                challenged.insert(key, c);
            }
        }
        if !tracked.is_empty() {
            tracing::info!(
                receipts = tracked.len(),
                "recovered receipts awaiting their roots"
            );
        }
        agora_metrics::gateway()
            .inclusion_pending
            .set(tracked.len() as i64);
        Ok(Inclusion {
            state: Mutex::new(State {
                tracked,
                challenged,
                ..State::default()
            }),
            settlement,
            store,
            escalation_epochs,
            payer_seeds,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receipts awaiting their roots.
    pub fn pending(&self) -> usize {
        self.lock().tracked.len()
    }

    /// Challenges filed and not yet seen answered or charged.
    pub fn open_challenges(&self) -> usize {
        self.lock().challenged.len()
    }

    /// Keeps a challenge this broker filed until it is answered or charged.
    fn challenged(&self, key: &Hash32, payer: AccountId) {
        let c = Challenged { payer, try_at: 0 };
        let mut s = self.lock();
        if s.challenged.contains_key(key) {
            return;
        }
        if s.challenged.len() >= MAX_TRACKED {
            drop(s);
            tracing::warn!(receipt = %key, "too many open challenges; this one is left to the settlement or another caller to charge");
            return;
        }
        if let Err(e) = self.put_challenge(key, Some(&c)) {
            tracing::warn!(receipt = %key, "open challenge not stored: {e}");
        }
        s.challenged.insert(*key, c);
    }

    /// Writes (or with `None` removes) a challenge's record.
    fn put_challenge(&self, key: &Hash32, c: Option<&Challenged>) -> Result<(), ChannelError> {
        let Some(s) = &self.store else {
            return Ok(());
        };
        let w = s.db.begin_write().map_err(store_err)?;
        {
            let mut t = w.open_table(CHALLENGED).map_err(store_err)?;
            match c {
                Some(c) => {
                    let bytes = borsh::to_vec(c).map_err(store_err)?;
                    t.insert(key.as_bytes().as_slice(), bytes.as_slice())
                        .map_err(store_err)?;
                }
                None => {
                    t.remove(key.as_bytes().as_slice()).map_err(store_err)?;
                }
            }
        }
        w.commit().map_err(store_err)
    }

    /// Charges each challenge this broker filed whose provider left it unanswered past its
    /// deadline, as the payer owed (its bond and the receipt's cost come back): on a chain
    /// nobody else has to call `expireChallenge`. Answered or charged ones are forgotten;
    /// ones not due wait for their epoch; a call that failed is tried again next epoch (at
    /// the epoch the event stream reached). Returns how many this pass charged.
    pub async fn expire_unanswered(&self, channels: &Channels) -> usize {
        let (now, due) = {
            let s = self.lock();
            let due: Vec<(Hash32, AccountId)> = s
                .challenged
                .iter()
                .filter(|(_, c)| c.try_at <= s.epoch)
                .take(CHECKS_PER_SWEEP)
                .map(|(k, c)| (*k, c.payer))
                .collect();
            (s.epoch, due)
        };
        let mut charged = 0;
        for (key, payer) in due {
            let Some(payer) = self.payer(&payer) else {
                // Any account may charge it; without the payer's key this one waits for it.
                self.retry_challenge_at(&key, now.saturating_add(1));
                continue;
            };
            let outcome = channels
                .in_turn(&payer, |a| {
                    Box::pin(async move { a.expire_receipt_challenge(key).await })
                })
                .await;
            match outcome {
                Ok(Expiry::Charged) => {
                    tracing::warn!(receipt = %key, "unanswered inclusion challenge charged: provider slashed, payer refunded");
                    count("omission_slashed");
                    charged += 1;
                    self.forget_challenge(&key);
                }
                Ok(Expiry::Settled) => self.forget_challenge(&key),
                Ok(Expiry::NotDue { epoch }) => self.retry_challenge_at(&key, epoch),
                Err(e) => {
                    tracing::debug!(receipt = %key, "charging an unanswered challenge, retrying: {e}");
                    self.retry_challenge_at(&key, now.saturating_add(1));
                }
            }
        }
        charged
    }

    fn retry_challenge_at(&self, key: &Hash32, epoch: u64) {
        let mut s = self.lock();
        if let Some(c) = s.challenged.get_mut(key) {
            c.try_at = epoch;
            let c = *c;
            drop(s);
            if let Err(e) = self.put_challenge(key, Some(&c)) {
                tracing::warn!(receipt = %key, "open challenge not stored: {e}");
            }
        }
    }

    fn forget_challenge(&self, key: &Hash32) {
        self.lock().challenged.remove(key);
        if let Err(e) = self.put_challenge(key, None) {
            tracing::warn!(receipt = %key, "forgetting an open challenge: {e}");
        }
    }

    /// Keeps `receipt`, paid by `payer` to the provider of `offer`, with the provider's
    /// EIP-712 signature over it on a chain, until it is proven under a root or challenged.
    pub fn track(
        &self,
        payer: &Keypair,
        receipt: &SignedReceipt,
        chain_sig: Option<Vec<u8>>,
        offer: &SignedOffer,
    ) {
        self.keep(
            payer,
            Tracked {
                receipt: receipt.clone(),
                peer: offer.offer.peer_id.clone(),
                addrs: offer.offer.addrs.iter().take(MAX_ADDRS).cloned().collect(),
                chain_sig,
            },
        );
    }

    fn keep(&self, payer: &Keypair, t: Tracked) {
        let key = t.receipt.hash();
        let mut s = self.lock();
        s.payers
            .entry(payer.account())
            .or_insert_with(|| payer.clone());
        if s.tracked.len() >= MAX_TRACKED {
            drop(s);
            count("untracked");
            tracing::warn!(receipt = %key, "too many receipts awaiting their roots; this one is not followed");
            return;
        }
        if let Err(e) = self.put(&key, &t) {
            tracing::error!(receipt = %key, "receipt not kept for its inclusion check: {e}");
            return;
        }
        s.tracked.insert(key, t);
        agora_metrics::gateway()
            .inclusion_pending
            .set(s.tracked.len() as i64);
    }

    /// Follows the ledger's events, in order: the roots posted, and the epoch they reached
    /// (a receipt is checked only once the events that could hold its roots were seen).
    pub fn observe(&self, event: &Event) {
        let mut s = self.lock();
        match event {
            Event::ReceiptRootPosted {
                provider,
                epoch,
                root,
                receipts,
            } => {
                if s.roots.len() < MAX_ROOTS {
                    s.roots.insert((*provider, *epoch), (*root, *receipts));
                } else {
                    // Remembered as unknown, so no receipt under it is challenged for it.
                    s.unremembered.insert(*epoch);
                }
            }
            Event::EpochAdvanced { epoch } => {
                s.epoch = s.epoch.max(*epoch);
                // Roots too old to hold any receipt still inside its window.
                let oldest = epoch.saturating_sub(self.escalation_epochs.saturating_add(2));
                s.roots.retain(|(_, e), _| *e >= oldest);
                s.unremembered.retain(|e| *e >= oldest);
            }
            _ => {}
        }
    }

    fn put(&self, key: &Hash32, t: &Tracked) -> Result<(), ChannelError> {
        let Some(s) = &self.store else {
            return Ok(());
        };
        let bytes = borsh::to_vec(t).map_err(store_err)?;
        let w = s.db.begin_write().map_err(store_err)?;
        w.open_table(TRACKED)
            .map_err(store_err)?
            .insert(key.as_bytes().as_slice(), bytes.as_slice())
            .map_err(store_err)?;
        w.commit().map_err(store_err)
    }

    fn forget(&self, key: &Hash32, outcome: &'static str) {
        let left = {
            let mut s = self.lock();
            s.tracked.remove(key);
            s.tracked.len()
        };
        agora_metrics::gateway().inclusion_pending.set(left as i64);
        count(outcome);
        let Some(s) = &self.store else {
            return;
        };
        let removed = s.db.begin_write().map_err(store_err).and_then(|w| {
            w.open_table(TRACKED)
                .map_err(store_err)?
                .remove(key.as_bytes().as_slice())
                .map_err(store_err)?;
            w.commit().map_err(store_err)
        });
        if let Err(e) = removed {
            tracing::warn!(receipt = %key, "forgetting a followed receipt: {e}");
        }
    }

    fn payer(&self, account: &AccountId) -> Option<Keypair> {
        if let Some(k) = self.lock().payers.get(account) {
            return Some(k.clone());
        }
        let seed = (self.payer_seeds.as_ref()?.0)(account)?;
        let key = Keypair::from_seed(seed);
        if key.account() != *account {
            return None;
        }
        self.lock().payers.insert(*account, key.clone());
        Some(key)
    }

    /// One pass at the ledger epoch the event stream reached: receipts whose window closed
    /// are dropped; those inside it are checked (at most [`CHECKS_PER_SWEEP`]).
    pub async fn sweep(&self, node: &Node, channels: &Channels) {
        let (now, expired, due_now) = {
            let s = self.lock();
            let now = s.epoch;
            let mut expired = Vec::new();
            let mut due_now = Vec::new();
            for (k, t) in &s.tracked {
                match due(t.receipt.receipt.epoch, now, self.escalation_epochs) {
                    Due::Wait => {}
                    Due::Expired => expired.push((*k, t.receipt.receipt.provider)),
                    Due::Check if due_now.len() < CHECKS_PER_SWEEP => due_now.push(t.clone()),
                    Due::Check => {}
                }
            }
            (now, expired, due_now)
        };
        for (k, provider) in expired {
            tracing::warn!(receipt = %k, %provider, epoch = now, "inclusion window closed before the receipt was checked");
            self.forget(&k, "expired");
        }
        futures::stream::iter(due_now)
            .map(|t| async move {
                let answer = ask(node, &t).await;
                self.settle(&t, answer.as_ref(), channels).await
            })
            .buffer_unordered(QUERIES_IN_FLIGHT)
            .for_each(|_| async {})
            .await;
        self.expire_unanswered(channels).await;
    }

    /// Decides one receipt from the provider's `answer` (none: it did not answer).
    async fn settle(
        &self,
        t: &Tracked,
        answer: Option<&InclusionAnswer>,
        channels: &Channels,
    ) -> Verdict {
        let key = t.receipt.hash();
        let r = &t.receipt.receipt;
        let (proven, unknown) = {
            let s = self.lock();
            let proven = answer.is_some_and(|a| proves(&self.settlement, a, &t.receipt, &s.roots));
            // The answer names an on-time root this broker could not remember: it cannot
            // tell, and "cannot tell" never costs the provider a challenge.
            let unknown = match answer {
                Some(InclusionAnswer::Included { epoch, .. }) => {
                    (*epoch == r.epoch || Some(*epoch) == r.epoch.checked_add(1))
                        && !s.roots.contains_key(&(r.provider, *epoch))
                        && s.unremembered.contains(epoch)
                }
                _ => false,
            };
            (proven, unknown)
        };
        if proven {
            tracing::debug!(receipt = %key, provider = %r.provider, "receipt proven under its root");
            self.forget(&key, "proven");
            return Verdict::Proven;
        }
        if unknown {
            tracing::warn!(receipt = %key, provider = %r.provider, "the provider names a root past the roots remembered; not challenged");
            self.forget(&key, "unverified");
            return Verdict::Unverified;
        }
        let Some(payer) = self.payer(&r.payer) else {
            tracing::debug!(receipt = %key, "no key for the receipt's payer yet; challenge deferred");
            return Verdict::Retry;
        };
        let challenged = channels
            .in_turn(&payer, |a| {
                Box::pin(async move {
                    a.challenge_receipt(&t.receipt, t.chain_sig.as_deref())
                        .await
                })
            })
            .await;
        match challenged {
            Ok(_) => {
                tracing::warn!(
                    receipt = %key,
                    provider = %r.provider,
                    epoch = r.epoch,
                    answered = answer.is_some(),
                    "receipt missing from the provider's roots: inclusion challenged"
                );
                self.forget(&key, "challenged");
                self.challenged(&key, r.payer);
                Verdict::Challenged
            }
            // Settlement's typed refusal, never its words.
            Err(ChannelError::Refused { code, .. })
                if code == format!("{:?}", Refusal::AlreadyChallenged) =>
            {
                self.forget(&key, "challenged");
                self.challenged(&key, r.payer);
                Verdict::Challenged
            }
            Err(e) => {
                tracing::warn!(receipt = %key, provider = %r.provider, "inclusion challenge not submitted: {e}");
                Verdict::Retry
            }
        }
    }
}

fn count(outcome: &'static str) {
    agora_metrics::gateway()
        .inclusion
        .get_or_create(&agora_metrics::families::label("outcome", outcome))
        .inc();
}

/// Asks the receipt's provider where it sits; `None` if it cannot be reached or does not
/// answer in time.
async fn ask(node: &Node, t: &Tracked) -> Option<InclusionAnswer> {
    let peer = PeerId::from_bytes(&t.peer).ok()?;
    for a in &t.addrs {
        if let Ok(m) = a.parse::<Multiaddr>() {
            let _ = node.add_address(peer, m).await;
        }
    }
    let query = InclusionQuery {
        receipt: t.receipt.clone(),
    };
    tokio::time::timeout(QUERY_TIMEOUT, async {
        let mut stream = node
            .control()
            .open_stream(peer, inclusion_protocol())
            .await
            .ok()?;
        write_frame(&mut stream, &query).await.ok()?;
        read_frame::<_, InclusionAnswer>(&mut stream).await.ok()?
    })
    .await
    .ok()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_core::{merkle, Amount};
    use agora_ledger::client::Client;
    use agora_ledger::server::{run, SequencerConfig, ServeConfig};
    use agora_ledger::tx::channel_id;
    use agora_ledger::TxBody;
    use agora_ledger::Voucher;
    use agora_ledger::{Allocation, Event, Genesis, Params, Tx};
    use agora_net::protocol::{Receipt, Sampling, SignedVoucher};
    use agora_settlement::ledger::LedgerSettlement;
    use agora_settlement::network::SettlementEvent;

    const CHAIN: u64 = 9;

    /// Reads and checks on the ledger `l` talks to.
    fn reader(l: &Client) -> SharedSettlement {
        Arc::new(LedgerSettlement::reader(l.clone(), CHAIN).expect("reader"))
    }

    #[test]
    fn a_receipt_is_checked_only_inside_its_challenge_window() {
        assert_eq!(due(10, 10, 2), Due::Wait);
        assert_eq!(due(10, 11, 2), Due::Wait);
        assert_eq!(due(10, 12, 2), Due::Check);
        assert_eq!(due(10, 13, 2), Due::Check);
        assert_eq!(due(10, 14, 2), Due::Expired);
        assert_eq!(due(u64::MAX, u64::MAX, 2), Due::Check);
    }

    async fn ledger(dir: &std::path::Path, seq: &Keypair, accounts: &[&Keypair]) -> Client {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            db: dir.join("ledger.redb"),
            genesis: Some(Genesis {
                chain_id: CHAIN,
                sequencer: seq.account(),
                params: Params::default(),
                allocations: accounts
                    .iter()
                    .map(|k| Allocation {
                        account: k.account(),
                        amount: Amount::new(1_000_000),
                    })
                    .collect(),
            }),
            sequencer_key: Some(seq.clone()),
            sequencer: SequencerConfig::default(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(run(
            cfg,
            move |a| {
                let _ = tx.send(a);
            },
            std::future::pending(),
        ));
        Client::new(&format!("http://{}", rx.await.expect("bound"))).expect("client")
    }

    fn send(l: &Client, k: &Keypair, body: TxBody) -> Vec<Event> {
        let nonce = l.next_nonce(&k.account()).expect("nonce");
        let tx = Tx {
            chain_id: CHAIN,
            from: k.account(),
            nonce,
            body,
        };
        l.submit(&tx.sign(k)).expect("submit").events
    }

    fn receipt(provider: &Keypair, payer: &Keypair, channel: Hash32, i: u8, epoch: u64) -> Tracked {
        let receipt = Receipt {
            chain_id: CHAIN,
            epoch,
            request_id: [i; 16],
            provider: provider.account(),
            payer: payer.account(),
            channel,
            model: Hash32::of(b"model"),
            prompt_hash: Hash32::of(&[i]),
            output_hash: Hash32::of(b"out"),
            prompt_tokens: 3,
            resumed_tokens: 0,
            output_tokens: 2,
            sampling: Sampling::default(),
            fingerprint_hash: Hash32::of(b"fp"),
            price_in: Amount::new(1),
            price_out: Amount::new(1),
            cost_micros: 50 * agora_market::MICROS_PER_UNIT,
            started_ms: 1,
            finished_ms: 2,
        }
        .sign(provider);
        Tracked {
            receipt,
            peer: Vec::new(),
            addrs: Vec::new(),
            chain_sig: None,
        }
    }

    /// Every event the ledger recorded so far.
    async fn events(l: &Client) -> Vec<Event> {
        let l = l.clone();
        tokio::task::spawn_blocking(move || {
            l.events(0, Duration::ZERO)
                .expect("events")
                .into_iter()
                .flat_map(|b| b.txs)
                .flat_map(|t| t.events)
                .collect()
        })
        .await
        .expect("events")
    }

    async fn advance(l: &Client, seq: &Keypair) {
        let (l, seq) = (l.clone(), seq.clone());
        tokio::task::spawn_blocking(move || send(&l, &seq, TxBody::AdvanceEpoch))
            .await
            .expect("advance");
    }

    /// The attack: a provider is paid for three answers of epoch `r` and posts a root holding
    /// two. Before the broker followed receipts nothing happened: the left-out answer was
    /// never audit-eligible and the provider kept its stake. Now the broker checks each once
    /// the window opens: an included one (shown with its path) costs nobody anything; the
    /// left-out one, offered with a path that does not hold it, is challenged, and the
    /// unanswered challenge slashes the provider and refunds the payer its cost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paid_receipt_left_out_of_the_root_is_challenged_and_slashed() {
        let dir = tempfile::tempdir().expect("tmp");
        let k: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let (seq, provider, payer) = (k[0].clone(), k[1].clone(), k[2].clone());
        let l = ledger(dir.path(), &seq, &[&provider, &payer]).await;
        let channels = Channels::new(
            crate::channels::ledger_opener(l.clone(), CHAIN),
            Amount::new(1),
        );
        let inclusion = Inclusion::new(reader(&l), None, Params::default().escalation_epochs, None)
            .expect("inclusion");
        let ll = l.clone();
        let (served, balance_before, stake_before) = tokio::task::spawn_blocking(move || {
            let l = ll;
            send(
                &l,
                &provider,
                TxBody::Stake {
                    amount: Amount::new(1000),
                },
            );
            let nonce = l.next_nonce(&payer.account()).expect("nonce");
            let channel = channel_id(CHAIN, &payer.account(), nonce);
            send(
                &l,
                &payer,
                TxBody::OpenChannel {
                    provider: provider.account(),
                    amount: Amount::new(500),
                    timeout_epochs: 20,
                },
            );
            send(&l, &seq, TxBody::AdvanceEpoch);
            let r = l.status().expect("status").epoch;
            let served: Vec<Tracked> = (1..=3)
                .map(|i| receipt(&provider, &payer, channel, i, r))
                .collect();
            // All three answers are paid: the provider claims their voucher.
            let v = SignedVoucher::new(
                Voucher {
                    chain_id: CHAIN,
                    channel,
                    cumulative: Amount::new(150),
                },
                &payer,
            );
            send(
                &l,
                &provider,
                TxBody::ClaimVoucher {
                    voucher: v.voucher,
                    payer: payer.account(),
                    payer_sig: match v.sig {
                        agora_net::protocol::VoucherSignature::Ed25519 { sig, .. } => sig,
                        other => panic!("an ed25519 voucher, got {other:?}"),
                    },
                },
            );
            let posted = [served[0].receipt.hash(), served[1].receipt.hash()];
            send(
                &l,
                &provider,
                TxBody::PostReceiptRoot {
                    epoch: r,
                    root: merkle::root(&posted),
                    receipts: 2,
                },
            );
            let account = |a: AccountId| l.account(&a).expect("account").expect("some");
            let balance = account(payer.account()).balance;
            (served, balance, account(provider.account()).stake)
        })
        .await
        .expect("setup");
        for t in &served {
            inclusion.keep(&k[2], t.clone());
        }
        let r = served[0].receipt.receipt.epoch;
        let follow = |events: Vec<Event>| {
            for e in events.iter().filter_map(SettlementEvent::from_ledger) {
                inclusion.observe(&e);
            }
            inclusion.lock().epoch
        };
        // Through epoch r + 1 the roots that may hold them are not final: nothing to check.
        advance(&l, &k[0]).await;
        let now = follow(events(&l).await);
        assert_eq!(due(r, now, inclusion.escalation_epochs), Due::Wait);
        advance(&l, &k[0]).await;
        let now = follow(events(&l).await);
        assert_eq!(due(r, now, inclusion.escalation_epochs), Due::Check);
        let posted = [served[0].receipt.hash(), served[1].receipt.hash()];
        let leaf = |index: u64| InclusionAnswer::Included {
            epoch: r,
            index,
            proof: merkle::proof(&posted, index as usize).expect("path"),
        };
        assert_eq!(
            inclusion
                .settle(&served[0], Some(&leaf(0)), &channels)
                .await,
            Verdict::Proven
        );
        assert_eq!(
            inclusion
                .settle(&served[1], Some(&leaf(1)), &channels)
                .await,
            Verdict::Proven
        );
        // For the left-out receipt the provider can only offer another's leaf.
        assert_eq!(
            inclusion
                .settle(&served[2], Some(&leaf(1)), &channels)
                .await,
            Verdict::Challenged
        );
        assert_eq!(inclusion.pending(), 0);
        // Met again (a second sweep, a store recovered after a crash): the ledger refuses a
        // second challenge with its typed code, and the receipt counts as challenged.
        let again = channels
            .in_turn(&k[2], |a| {
                let receipt = &served[2].receipt;
                Box::pin(async move { a.challenge_receipt(receipt, None).await })
            })
            .await;
        assert!(
            matches!(&again, Err(ChannelError::Refused { code, .. }) if code == "AlreadyChallenged"),
            "{again:?}"
        );
        inclusion.keep(&k[2], served[2].clone());
        assert_eq!(
            inclusion
                .settle(&served[2], Some(&leaf(1)), &channels)
                .await,
            Verdict::Challenged
        );
        assert_eq!(inclusion.pending(), 0);
        // The provider cannot answer the challenge; its deadline passes.
        advance(&l, &k[0]).await;
        advance(&l, &k[0]).await;
        let all = events(&l).await;
        let challenged: Vec<Hash32> = all
            .iter()
            .filter_map(|e| match e {
                Event::InclusionChallenged { receipt, .. } => Some(*receipt),
                _ => None,
            })
            .collect();
        let left_out = served[2].receipt.hash();
        assert_eq!(
            challenged,
            vec![left_out],
            "only the left-out receipt is challenged"
        );
        let slashed: Vec<(Hash32, Amount)> = all
            .iter()
            .filter_map(|e| match e {
                Event::OmissionSlashed {
                    receipt, refund, ..
                } => Some((*receipt, *refund)),
                _ => None,
            })
            .collect();
        assert_eq!(slashed, vec![(left_out, Amount::new(50))]);
        let (p, q, l2) = (k[2].account(), k[1].account(), l.clone());
        let (balance, stake) = tokio::task::spawn_blocking(move || {
            let a = |x: AccountId| l2.account(&x).expect("account").expect("some");
            (a(p).balance, a(q).stake)
        })
        .await
        .expect("accounts");
        assert!(stake < stake_before, "the provider was slashed");
        // The bond came back with the left-out answer's cost.
        assert_eq!(
            balance,
            balance_before.checked_add(Amount::new(50)).expect("sum")
        );
    }

    /// The broker remembers at most [`MAX_ROOTS`] posted roots; past it a root's event was
    /// ignored, so an honest provider's receipt under that root, shown with a path that
    /// holds, was challenged (each challenge of an honest provider costs the payer its bond).
    /// Now a root left out because of the bound is an unknown: the receipt is not challenged,
    /// and is counted `unverified`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_root_past_the_bound_never_turns_into_a_challenge() {
        let dir = tempfile::tempdir().expect("tmp");
        let k: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let (seq, provider, payer) = (k[0].clone(), k[1].clone(), k[2].clone());
        let l = ledger(dir.path(), &seq, &[&provider, &payer]).await;
        let channels = Channels::new(
            crate::channels::ledger_opener(l.clone(), CHAIN),
            Amount::new(1),
        );
        let inclusion = Inclusion::new(reader(&l), None, Params::default().escalation_epochs, None)
            .expect("inclusion");
        let ll = l.clone();
        let served = tokio::task::spawn_blocking(move || {
            let l = ll;
            send(
                &l,
                &provider,
                TxBody::Stake {
                    amount: Amount::new(1000),
                },
            );
            let nonce = l.next_nonce(&payer.account()).expect("nonce");
            let channel = channel_id(CHAIN, &payer.account(), nonce);
            send(
                &l,
                &payer,
                TxBody::OpenChannel {
                    provider: provider.account(),
                    amount: Amount::new(500),
                    timeout_epochs: 20,
                },
            );
            send(&l, &seq, TxBody::AdvanceEpoch);
            let r = l.status().expect("status").epoch;
            let served = receipt(&provider, &payer, channel, 1, r);
            send(
                &l,
                &provider,
                TxBody::PostReceiptRoot {
                    epoch: r,
                    root: merkle::root(&[served.receipt.hash()]),
                    receipts: 1,
                },
            );
            served
        })
        .await
        .expect("setup");
        inclusion.keep(&k[2], served.clone());
        let r = served.receipt.receipt.epoch;
        // Other providers' roots fill what the broker remembers before this one's arrives.
        for i in 0..MAX_ROOTS {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            inclusion.observe(&SettlementEvent::ReceiptRootPosted {
                provider: AccountId::from_bytes(id),
                epoch: r,
                root: Hash32::of(&id),
                receipts: 1,
            });
        }
        advance(&l, &k[0]).await;
        advance(&l, &k[0]).await;
        for e in events(&l)
            .await
            .iter()
            .filter_map(SettlementEvent::from_ledger)
        {
            inclusion.observe(&e);
        }
        assert_eq!(
            due(r, inclusion.lock().epoch, inclusion.escalation_epochs),
            Due::Check
        );
        // The honest provider's answer: the leaf under its on-time root, with a path that holds.
        let answer = InclusionAnswer::Included {
            epoch: r,
            index: 0,
            proof: merkle::proof(&[served.receipt.hash()], 0).expect("path"),
        };
        assert_eq!(
            inclusion.settle(&served, Some(&answer), &channels).await,
            Verdict::Unverified
        );
        assert_eq!(inclusion.pending(), 0);
        let challenged = events(&l)
            .await
            .iter()
            .filter(|e| matches!(e, Event::InclusionChallenged { .. }))
            .count();
        assert_eq!(challenged, 0, "an honest receipt was challenged");
        // A provider that answers nothing is still challenged, bound or not.
        let silent = {
            let mut t = served.clone();
            let mut r2 = t.receipt.receipt.clone();
            r2.request_id = [2; 16];
            t.receipt = r2.sign(&k[1]);
            t
        };
        inclusion.keep(&k[2], silent.clone());
        assert_eq!(
            inclusion.settle(&silent, None, &channels).await,
            Verdict::Challenged
        );
    }

    #[test]
    fn receipts_awaiting_their_roots_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("channels.redb");
        let (provider, payer) = (Keypair::from_seed([2; 32]), Keypair::from_seed([3; 32]));
        let t = receipt(&provider, &payer, Hash32::of(b"chan"), 1, 4);
        let l = Client::new("http://127.0.0.1:9").expect("client");
        {
            let store = Arc::new(ChannelStore::open(&path).expect("store"));
            let inclusion = Inclusion::new(reader(&l), Some(store), 2, None).expect("inclusion");
            inclusion.keep(&payer, t.clone());
            assert_eq!(inclusion.pending(), 1);
            // A challenge filed before the crash is still charged after it.
            inclusion.challenged(&Hash32::of(b"challenged"), payer.account());
        }
        let store = Arc::new(ChannelStore::open(&path).expect("store"));
        let seeds = PayerSeeds(Arc::new(|_| Some([3; 32])));
        let inclusion = Inclusion::new(reader(&l), Some(store), 2, Some(seeds)).expect("inclusion");
        assert_eq!(inclusion.pending(), 1);
        assert!(inclusion.lock().tracked.contains_key(&t.receipt.hash()));
        assert_eq!(inclusion.open_challenges(), 1);
        assert_eq!(
            inclusion
                .lock()
                .challenged
                .get(&Hash32::of(b"challenged"))
                .map(|c| c.payer),
            Some(payer.account())
        );
        // The payer's key is found again for the challenge.
        assert_eq!(
            inclusion.payer(&payer.account()).map(|k| k.account()),
            Some(payer.account())
        );
    }

    /// The attack on a chain: a provider leaves a paid receipt out of its roots and does not
    /// answer the payer's inclusion challenge. The ledger slashes it when the next epoch
    /// starts, but the contract only when someone calls `expireChallenge`; before the broker
    /// called it nobody did, so the provider kept its stake and the payer its loss. Now the
    /// broker's sweep charges the challenge once its deadline passed (and not before): the
    /// provider is slashed and the payer gets its bond and the receipt's cost back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_challenge_on_a_chain_is_charged_by_the_broker() {
        use agora_evm::anvil::{find_anvil, Anvil};
        use agora_evm::{deploy, Params as EvmParams, SettlementClient};
        use agora_settlement::open::{evm_signer_for, Opened, SettlementTarget};
        use alloy::primitives::{B256, U256};

        let Some(bin) = find_anvil() else {
            eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
            return;
        };
        let anvil = Anvil::start(&bin, 31_337).expect("anvil");
        let d = deploy(anvil.url(), anvil.keys()[0].clone(), EvmParams::devnet(10))
            .await
            .expect("deploy");
        let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone())
            .await
            .expect("admin");
        let target = SettlementTarget::Evm {
            rpc: anvil.url().to_string(),
            deployment: d.clone(),
        };
        let (provider, payer) = (Keypair::from_seed([71; 32]), Keypair::from_seed([72; 32]));
        let (prov_addr, payer_addr) = (
            evm_signer_for(&provider.seed()).address(),
            evm_signer_for(&payer.seed()).address(),
        );
        for a in [prov_addr, payer_addr] {
            admin.mint(a, 1_000_000).await.expect("mint");
            admin
                .send_native(a, U256::from(10u128.pow(20)))
                .await
                .expect("gas");
        }
        let prov = Opened::open(&target, &provider).await.expect("open");
        prov.provider()
            .bond_provider_stake(&provider, Amount::new(500))
            .await
            .expect("stake and bind");
        let channels = Channels::new(
            crate::channels::opener_for(target.clone()),
            Amount::new(1_000),
        );
        // The payer is served one answer costing 40, and the provider claims it.
        let r1 = channels
            .reserve(&payer, provider.account(), Amount::new(40))
            .await
            .expect("channel");
        let channel = r1.channel;
        let voucher = channels
            .settle(
                &payer,
                provider.account(),
                r1,
                40 * agora_market::MICROS_PER_UNIT,
            )
            .await
            .voucher
            .expect("a voucher");
        prov.network()
            .claim_voucher(channel, voucher.voucher.cumulative, voucher.sig)
            .await
            .expect("claim");
        let r = prov.network().current_epoch().await.expect("epoch");
        let mut t = receipt(&provider, &payer, channel, 1, r);
        t.receipt = Receipt {
            chain_id: d.chain_id,
            cost_micros: 40 * agora_market::MICROS_PER_UNIT,
            ..t.receipt.receipt
        }
        .sign(&provider);
        t.chain_sig = prov.provider().chain_receipt_sig(&t.receipt);
        let inclusion = Inclusion::new(
            Opened::open(&target, &payer).await.expect("open").network(),
            None,
            d.params.escalation_epochs,
            None,
        )
        .expect("inclusion");
        inclusion.keep(&payer, t.clone());
        // The provider posts no root and cannot be reached: the sweep in r + 2 challenges.
        let (node, _gossip) = Node::start(agora_net::NetConfig {
            key_seed: [73; 32],
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            bootstrap: vec![],
            mdns: false,
            topics: vec![],
        })
        .await
        .expect("node");
        admin.mine_to_epoch(r + 2).await.expect("mine");
        inclusion.observe(&SettlementEvent::EpochAdvanced { epoch: r + 2 });
        inclusion.sweep(&node, &channels).await;
        let key = B256::from(*t.receipt.hash().as_bytes());
        let c = admin
            .challenge(key)
            .await
            .expect("read")
            .expect("challenged");
        assert!(c.open);
        // Until its deadline passed nothing is charged.
        admin.mine_to_epoch(c.due_epoch).await.expect("mine");
        inclusion.observe(&SettlementEvent::EpochAdvanced { epoch: c.due_epoch });
        inclusion.sweep(&node, &channels).await;
        assert!(admin.challenge(key).await.expect("read").expect("c").open);
        let stake_before = admin.account(prov_addr).await.expect("acct").stake;
        let balance_before = admin.token_balance(payer_addr).await.expect("balance");

        // Past it, the broker's sweep charges it.
        admin.mine_to_epoch(c.due_epoch + 1).await.expect("mine");
        inclusion.observe(&SettlementEvent::EpochAdvanced {
            epoch: c.due_epoch + 1,
        });
        inclusion.sweep(&node, &channels).await;
        assert!(
            !admin.challenge(key).await.expect("read").expect("c").open,
            "the unanswered challenge was charged"
        );
        let stake = admin.account(prov_addr).await.expect("acct").stake;
        assert_eq!(stake, stake_before / 2, "slashBps of the provider's stake");
        assert_eq!(
            admin.token_balance(payer_addr).await.expect("balance"),
            balance_before + c.bond + 40,
            "the payer's bond and the receipt's cost came back"
        );
    }
}
