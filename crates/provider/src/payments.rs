//! The provider's side of payment: which channels may pay for a request, the best voucher
//! held for each (durable, so a crash loses no revenue), and claiming them through the
//! services' settlement interface ([`NetworkSettlement::claim_voucher`]).
//!
//! A channel's next request is admitted only when every finished answer on it is vouched
//! for (after a short grace for a voucher on its way) and the escrow left beyond the best
//! voucher covers the requests in flight plus this one: a payer that stops paying gets at
//! most the answers already in flight. A voucher is kept only if the deposit can pay it.
//! A channel the payer has asked to close is refused: its escrow goes back to the payer at
//! the end of the ledger's claim window, before a voucher for a new answer could be claimed
//! for sure. Once a channel has expired (the payer may ask to close it at any time) its state
//! is read from settlement for every request.
//!
//! Channels are read and vouchers checked through [`NetworkSettlement`], so the same rules
//! hold on the ledger and on an EVM chain: a voucher counts only when its signature, of the
//! settlement's own kind, recovers to the channel's payer ([`NetworkSettlement::voucher_signer`]
//! against [`NetworkSettlement::channel_parties`]); a request's payer key must stand for that
//! same payer ([`NetworkSettlement::party_of_key`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::{AccountId, Amount, Hash32};
use agora_net::protocol::SignedVoucher;
use agora_settlement::network::{NetworkSettlement, Party, SharedSettlement};
use borsh::BorshDeserialize;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const VOUCHERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("vouchers");
/// How long a request waits for the voucher of the channel's last answer.
const VOUCHER_GRACE: Duration = Duration::from_secs(2);

/// What the provider knows of one channel.
#[derive(Debug, Clone)]
struct ChannelView {
    /// The key that signs the channel's requests (`None` for a view recovered from the store
    /// on a chain, until a request's key is checked against the channel's payer).
    payer: Option<AccountId>,
    /// The channel's payer on settlement, whose signature a voucher must carry.
    payer_party: Party,
    deposit: Amount,
    claimed: Amount,
    /// The payer may ask to close it from this epoch on: the cached view is trusted before.
    expires_epoch: u64,
    best: Option<SignedVoucher>,
    /// What answers served on it cost, in millionths of a base unit.
    served_micros: u128,
    /// The most the admitted, unfinished requests on it can cost.
    inflight: Amount,
}

impl ChannelView {
    fn vouched(&self) -> Amount {
        self.best
            .as_ref()
            .map_or(Amount::ZERO, |v| v.voucher.cumulative)
    }

    fn escrow(&self) -> Escrow {
        Escrow {
            deposit: self.deposit,
            claimed: self.claimed,
            vouched: self.vouched(),
            served_micros: self.served_micros,
            inflight: self.inflight,
        }
    }

    fn unpaid(&self) -> Amount {
        self.escrow().unpaid()
    }

    fn free(&self) -> Amount {
        self.escrow().free()
    }
}

/// A channel's money as its provider counts it. The two numbers admission turns on, written
/// once for the service ([`Payments`]) and the simulation (`agora-sim`'s provider), so both
/// admit the same requests: a request starts only when nothing served is unvouched (after a
/// short grace in the service) and the escrow still free covers the most it can cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Escrow {
    /// The channel's deposit.
    pub deposit: Amount,
    /// What settlement has paid out of it so far.
    pub claimed: Amount,
    /// The best voucher held.
    pub vouched: Amount,
    /// What answers served on it cost, in millionths of a base unit.
    pub served_micros: u128,
    /// The most the admitted, unfinished requests on it can cost.
    pub inflight: Amount,
}

impl Escrow {
    /// Served and not vouched for (rounded as the payer's vouchers are).
    pub fn unpaid(&self) -> Amount {
        agora_market::micros_to_amount(self.served_micros)
            .checked_sub(self.vouched)
            .unwrap_or(Amount::ZERO)
    }

    /// Escrow not yet promised by a voucher (or paid out by a claim) or held by a request in
    /// flight.
    pub fn free(&self) -> Amount {
        self.deposit
            .checked_sub(self.vouched.max(self.claimed))
            .and_then(|left| left.checked_sub(self.inflight))
            .unwrap_or(Amount::ZERO)
    }
}

/// Why a channel cannot pay.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// Not on settlement, closed, or not between this payer and this provider.
    #[error("channel {0} is unknown, closed, or not from this payer to this provider")]
    NoChannel(Hash32),
    /// Too little left in escrow for the most this request could cost.
    #[error("channel holds {left} unvouched; the request could cost {need}")]
    Insufficient {
        /// Escrow not yet promised by vouchers.
        left: Amount,
        /// The request's most cost.
        need: Amount,
    },
    /// The payer asked to close the channel: its escrow goes back at `closes_epoch`, and a
    /// voucher for an answer served now might not be claimed before then.
    #[error("channel {channel} is closing (its escrow returns to the payer at epoch {closes_epoch}): open another channel")]
    Closing {
        /// The channel.
        channel: Hash32,
        /// The epoch at whose start the rest goes back to the payer.
        closes_epoch: u64,
    },
    /// Answers already served on the channel are not vouched for.
    #[error("channel has {owed} served and not vouched for; pay for it first")]
    Unpaid {
        /// Served and not vouched.
        owed: Amount,
    },
    /// Settlement could not be asked.
    #[error("settlement: {0}")]
    Ledger(String),
    /// The voucher store failed.
    #[error("voucher store: {0}")]
    Store(String),
    /// A voucher for another channel, payer or chain, or with a bad signature.
    #[error("voucher refused: {0}")]
    BadVoucher(String),
}

/// Channels paying this provider, shared by every stream.
#[derive(Clone)]
pub struct Payments {
    chain_id: u64,
    me: AccountId,
    settlement: SharedSettlement,
    /// The settlement account `me` stands for, once read.
    my_party: Arc<Mutex<Option<Party>>>,
    channels: Arc<Mutex<HashMap<Hash32, ChannelView>>>,
    paid: Arc<tokio::sync::Notify>,
    store: Option<Arc<Database>>,
}

/// Escrow held for one admitted request; released when it is dropped (the answer's cost is
/// then recorded with [`Payments::served`]).
pub struct Reservation {
    payments: Payments,
    channel: Hash32,
    need: Amount,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(v) = self.payments.lock().get_mut(&self.channel) {
            v.inflight = v.inflight.checked_sub(self.need).unwrap_or(Amount::ZERO);
        }
    }
}

fn store_err<E: std::fmt::Display>(e: E) -> PaymentError {
    PaymentError::Store(e.to_string())
}

impl Payments {
    /// Payments to network key `me`, checked against `settlement`, held in memory only.
    pub fn new(me: AccountId, settlement: SharedSettlement) -> Payments {
        Payments {
            chain_id: settlement.network_chain_id(),
            me,
            settlement,
            my_party: Arc::default(),
            channels: Arc::default(),
            paid: Arc::default(),
            store: None,
        }
    }

    /// Payments whose best vouchers are kept in the redb file at `path`, with the vouchers
    /// a previous run kept recovered (each channel is read from settlement again before its
    /// next request; the kept vouchers are claimed meanwhile).
    pub async fn open(
        me: AccountId,
        settlement: SharedSettlement,
        path: &Path,
    ) -> Result<Payments, PaymentError> {
        let path = path.to_path_buf();
        let (db, kept) = tokio::task::spawn_blocking(move || Self::load(&path))
            .await
            .map_err(store_err)??;
        let payments = Payments {
            store: Some(Arc::new(db)),
            ..Payments::new(me, settlement)
        };
        for v in kept {
            let id = v.voucher.channel;
            // Checked when it was kept: its signer is the channel's payer.
            let Some(payer_party) =
                payments
                    .settlement
                    .voucher_signer(id, v.voucher.cumulative, &v.sig)
            else {
                tracing::warn!(channel = %id, "a kept voucher of another settlement: dropped");
                continue;
            };
            let read = payments.settlement.channel_parties(id).await.ok().flatten();
            let (deposit, claimed, expires_epoch) = match read {
                Some(c) => (c.deposit, c.claimed, c.expires_epoch),
                // Unknown now: keep the voucher; a claim will tell (and admission asks
                // settlement again).
                None => (v.voucher.cumulative, Amount::ZERO, 0),
            };
            tracing::info!(channel = %id, cumulative = %v.voucher.cumulative, "recovered a voucher");
            // On a chain the request key is not in the voucher: the next request's key is
            // checked against the channel's payer (expired at epoch 0: read again first).
            let (payer, expires_epoch) = match &v.sig {
                agora_net::protocol::VoucherSignature::Ed25519 { payer, .. } => {
                    (Some(*payer), expires_epoch)
                }
                agora_net::protocol::VoucherSignature::Eip712(_) => (None, 0),
            };
            payments.lock().insert(
                id,
                ChannelView {
                    payer,
                    payer_party,
                    deposit,
                    claimed,
                    expires_epoch,
                    served_micros: v
                        .voucher
                        .cumulative
                        .units()
                        .saturating_mul(agora_market::MICROS_PER_UNIT),
                    best: Some(v),
                    inflight: Amount::ZERO,
                },
            );
        }
        Ok(payments)
    }

    /// The store at `path` and the vouchers it keeps. Blocking.
    fn load(path: &Path) -> Result<(Database, Vec<SignedVoucher>), PaymentError> {
        let db = Database::create(path).map_err(store_err)?;
        let mut kept = vec![];
        {
            let w = db.begin_write().map_err(store_err)?;
            w.open_table(VOUCHERS).map_err(store_err)?;
            w.commit().map_err(store_err)?;
            let r = db.begin_read().map_err(store_err)?;
            let t = r.open_table(VOUCHERS).map_err(store_err)?;
            for row in t.iter().map_err(store_err)? {
                let (_, v) = row.map_err(store_err)?;
                kept.push(SignedVoucher::try_from_slice(v.value()).map_err(store_err)?);
            }
        }
        Ok((db, kept))
    }

    fn persist(&self, v: &SignedVoucher) -> Result<(), PaymentError> {
        let Some(db) = &self.store else {
            return Ok(());
        };
        let bytes = borsh::to_vec(v).map_err(store_err)?;
        let w = db.begin_write().map_err(store_err)?;
        w.open_table(VOUCHERS)
            .map_err(store_err)?
            .insert(v.voucher.channel.as_bytes(), bytes.as_slice())
            .map_err(store_err)?;
        w.commit().map_err(store_err)
    }

    /// The settlement the channels are read from.
    pub fn settlement(&self) -> &SharedSettlement {
        &self.settlement
    }

    /// The settlement account this provider's key stands for (read once).
    async fn my_party(&self) -> Result<Party, PaymentError> {
        if let Some(p) = *self.my_party.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(p);
        }
        let p = self
            .settlement
            .party_of_key(self.me)
            .await
            .map_err(|e| PaymentError::Ledger(e.to_string()))?
            .ok_or_else(|| {
                PaymentError::Ledger(format!("no settlement account stands for {}", self.me))
            })?;
        *self.my_party.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash32, ChannelView>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request on `channel` from `payer` that can cost up to `need`: every
    /// finished answer on the channel must be vouched for (waiting briefly for a voucher on
    /// its way) and the free escrow must cover `need`, asking the ledger when the cached view
    /// is missing or short (it may have been topped up). Holds `need` until the returned
    /// reservation is dropped. The current epoch is not known here: the ledger is asked
    /// whether the channel is closing every time ([`Payments::check_at`]).
    pub async fn check(
        &self,
        channel: Hash32,
        payer: AccountId,
        need: Amount,
    ) -> Result<Reservation, PaymentError> {
        self.check_at(channel, payer, need, u64::MAX).await
    }

    /// [`Payments::check`] at ledger epoch `epoch`: a channel the payer has asked to close is
    /// refused ([`PaymentError::Closing`]); once it has expired at `epoch` (the payer may ask
    /// to close it at any time) the ledger is asked for every request.
    pub async fn check_at(
        &self,
        channel: Hash32,
        payer: AccountId,
        need: Amount,
        epoch: u64,
    ) -> Result<Reservation, PaymentError> {
        let waited = tokio::time::Instant::now();
        loop {
            let unpaid = match self.lock().get(&channel) {
                Some(v) if v.payer.is_some_and(|p| p != payer) => {
                    return Err(PaymentError::NoChannel(channel))
                }
                Some(v) => v.unpaid(),
                None => Amount::ZERO,
            };
            if unpaid.is_zero() {
                break;
            }
            if waited.elapsed() >= VOUCHER_GRACE {
                return Err(PaymentError::Unpaid { owed: unpaid });
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.paid.notified()).await;
        }
        if let Some(r) = self.reserve(&channel, &payer, need, Some(epoch))? {
            return Ok(r);
        }
        let fetched = self
            .settlement
            .channel_parties(channel)
            .await
            .map_err(|e| PaymentError::Ledger(e.to_string()))?;
        let Some(c) = fetched else {
            return Err(PaymentError::NoChannel(channel));
        };
        if c.closed || c.provider != self.my_party().await? {
            return Err(PaymentError::NoChannel(channel));
        }
        // The request's key must stand for the channel's payer: otherwise anyone naming the
        // channel could run up answers its payer never vouches for and block it. A key already
        // matched to this channel's payer is not asked again (on a chain that is a log query
        // and a check of the key's binding, on every refresh of the view).
        let matched = self
            .lock()
            .get(&channel)
            .is_some_and(|v| v.payer == Some(payer) && v.payer_party == c.payer);
        if !matched {
            let payer_party = self
                .settlement
                .party_of_key(payer)
                .await
                .map_err(|e| PaymentError::Ledger(e.to_string()))?;
            if payer_party != Some(c.payer) {
                return Err(PaymentError::NoChannel(channel));
            }
        }
        // Closing: the rest goes back to the payer at the end of the claim window, and a
        // voucher for this answer might only arrive after it.
        if let Some(closes_epoch) = c.closes_epoch {
            return Err(PaymentError::Closing {
                channel,
                closes_epoch,
            });
        }
        {
            let mut map = self.lock();
            let view = map.entry(channel).or_insert(ChannelView {
                payer: Some(payer),
                payer_party: c.payer,
                deposit: c.deposit,
                claimed: c.claimed,
                expires_epoch: c.expires_epoch,
                best: None,
                served_micros: 0,
                inflight: Amount::ZERO,
            });
            if view.payer_party != c.payer || view.payer.is_some_and(|p| p != payer) {
                return Err(PaymentError::NoChannel(channel));
            }
            view.payer = Some(payer);
            view.deposit = c.deposit;
            view.claimed = view.claimed.max(c.claimed);
            view.expires_epoch = c.expires_epoch;
        }
        match self.reserve(&channel, &payer, need, None)? {
            Some(r) => Ok(r),
            None => {
                let left = self
                    .lock()
                    .get(&channel)
                    .map_or(Amount::ZERO, ChannelView::free);
                Err(PaymentError::Insufficient { left, need })
            }
        }
    }

    /// A reservation when the cached view covers `need`; `None` when it must be refreshed:
    /// also when, at `epoch`, the channel has expired (the payer may have asked to close it
    /// since the view was read). `epoch` is `None` for a view just read from the ledger.
    fn reserve(
        &self,
        channel: &Hash32,
        payer: &AccountId,
        need: Amount,
        epoch: Option<u64>,
    ) -> Result<Option<Reservation>, PaymentError> {
        let mut map = self.lock();
        let Some(v) = map.get_mut(channel) else {
            return Ok(None);
        };
        match v.payer {
            Some(p) if &p != payer => return Err(PaymentError::NoChannel(*channel)),
            Some(_) => {}
            // Recovered and not yet matched to a request's key: read the channel first.
            None => return Ok(None),
        }
        if epoch.is_some_and(|e| e >= v.expires_epoch) || v.free() < need {
            return Ok(None);
        }
        v.inflight = v
            .inflight
            .checked_add(need)
            .map_err(|_| PaymentError::Insufficient {
                left: v.free(),
                need,
            })?;
        Ok(Some(Reservation {
            payments: self.clone(),
            channel: *channel,
            need,
        }))
    }

    /// Records what an answer on `channel` cost.
    pub fn served(&self, channel: &Hash32, cost_micros: u128) {
        if let Some(v) = self.lock().get_mut(channel) {
            v.served_micros = v.served_micros.saturating_add(cost_micros);
        }
    }

    /// Keeps `voucher` if it is valid, better than the one held and payable from the
    /// deposit (durably, before it counts). Returns the shortfall against what was served,
    /// if any.
    pub fn accept_voucher(&self, voucher: SignedVoucher) -> Result<Amount, PaymentError> {
        if voucher.voucher.chain_id != self.chain_id {
            return Err(PaymentError::BadVoucher("another chain".into()));
        }
        // Recovered before the lock: a signature of another settlement's kind, a forgery or
        // a malleable twin recovers to nobody.
        let signer = self.settlement.voucher_signer(
            voucher.voucher.channel,
            voucher.voucher.cumulative,
            &voucher.sig,
        );
        let Some(signer) = signer else {
            return Err(PaymentError::BadVoucher(format!(
                "not a {} voucher signature that verifies",
                self.settlement.kind()
            )));
        };
        let mut map = self.lock();
        let v = map
            .get_mut(&voucher.voucher.channel)
            .ok_or_else(|| PaymentError::BadVoucher("unknown channel".into()))?;
        if v.payer_party != signer {
            return Err(PaymentError::BadVoucher("not the channel's payer".into()));
        }
        if voucher.voucher.cumulative > v.deposit {
            return Err(PaymentError::BadVoucher(format!(
                "{} is above the channel's deposit of {}",
                voucher.voucher.cumulative, v.deposit
            )));
        }
        if voucher.voucher.cumulative > v.vouched() {
            self.persist(&voucher)?;
            v.best = Some(voucher);
        }
        let short = v.unpaid();
        drop(map);
        self.paid.notify_waiters();
        Ok(short)
    }

    /// Claims every voucher worth more than what was claimed, as this provider's account on
    /// `settlement`; returns the total claimed now. A channel whose claim fails (refused or
    /// unreachable) is logged and skipped: it never stops another's, and its voucher stays
    /// kept, so the next round retries it.
    pub async fn claim_all(
        &self,
        settlement: &dyn NetworkSettlement,
    ) -> Result<Amount, PaymentError> {
        let pending: Vec<(Hash32, SignedVoucher)> = self
            .lock()
            .iter()
            .filter_map(|(id, v)| {
                let best = v.best.clone()?;
                (best.voucher.cumulative > v.claimed).then_some((*id, best))
            })
            .collect();
        let mut total = Amount::ZERO;
        let mut first_error = None;
        for (id, best) in pending {
            match settlement
                .claim_voucher(id, best.voucher.cumulative, best.sig.clone())
                .await
            {
                Ok(()) => {
                    let mut map = self.lock();
                    if let Some(v) = map.get_mut(&id) {
                        let gained = best
                            .voucher
                            .cumulative
                            .checked_sub(v.claimed)
                            .unwrap_or(Amount::ZERO);
                        total = total.checked_add(gained).unwrap_or(total);
                        v.claimed = v.claimed.max(best.voucher.cumulative);
                        let units = agora_metrics::amount_counter(gained.units());
                        agora_metrics::provider().claimed.inc_by(units);
                    }
                    tracing::info!(channel = %id, cumulative = %best.voucher.cumulative, "claimed voucher");
                }
                Err(e) => {
                    tracing::warn!(channel = %id, "claiming its voucher: {e}");
                    first_error.get_or_insert(PaymentError::Ledger(e.to_string()));
                }
            }
        }
        match first_error {
            Some(e) if total.is_zero() => Err(e),
            _ => Ok(total),
        }
    }
}
