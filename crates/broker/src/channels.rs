//! The payer's side of payment channels: one channel per (payer, provider), opened and topped
//! up on settlement as needed, with escrow reserved for answers in flight so a voucher never
//! promises more than the channel holds.
//!
//! Each payer (an API key's custodial account) opens its own settlement account through an
//! [`AccountOpener`] ([`BrokerSettlement`]: the ledger key itself, or on an EVM chain the
//! account derived from the same seed, which binds the key first), cached for the process.
//! Channels, vouchers (of the settlement's kind) and closes all go through it.
//!
//! With a [`ChannelStore`] the books are durable (redb): a channel's id, deposit and what it
//! has been charged are written before the voucher that depends on them leaves, and a
//! channel about to be opened is written (by the id settlement will give it) before
//! settlement sees it. After a
//! restart the gateway reuses its channels and signs vouchers that continue the cumulative
//! totals: no escrow is orphaned and nothing is paid twice. Reservations of answers in
//! flight die with the process (their providers were not paid; see `docs/network.md`).

use std::collections::HashMap;
use std::sync::Arc;

use agora_core::{AccountId, Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_net::protocol::SignedVoucher;
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::open::{Opened, SettlementTarget};
use agora_settlement::role_broker::SharedBrokerSettlement;
use agora_settlement::SettlementError;
use agora_wire::Voucher;
use borsh::{BorshDeserialize, BorshSerialize};
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Mutex;

/// (payer, provider) -> borsh [`StoredBooks`].
const BOOKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("channel_books");
/// (payer, provider) -> the id of a channel whose open was sent but not yet booked.
const PENDING: TableDefinition<&[u8], &[u8; 32]> = TableDefinition::new("pending_channel_opens");

/// Why a channel could not be funded.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The payer's balance cannot cover the escrow.
    #[error("the account's balance {balance} cannot cover {need} more escrow")]
    Insufficient {
        /// Spendable balance.
        balance: Amount,
        /// Escrow needed.
        need: Amount,
    },
    /// The payer's account has nothing to spend.
    #[error("the account {0} has no funds")]
    NoAccount(String),
    /// Settlement was unreachable or answered nonsense.
    #[error("settlement: {0}")]
    Ledger(String),
    /// Settlement refused the operation.
    #[error("settlement refused ({code}): {message}")]
    Refused {
        /// The refusal's name (`Refusal` in agora-settlement), e.g. `AlreadyChallenged`.
        code: String,
        /// The reason in words.
        message: String,
    },
    /// The durable books failed; nothing is promised that was not written.
    #[error("channel store: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> ChannelError {
    ChannelError::Store(e.to_string())
}

fn settlement_err(e: SettlementError) -> ChannelError {
    match e {
        SettlementError::Refused(r) => ChannelError::Refused {
            code: match &r {
                agora_settlement::Refusal::Other { code } => code.clone(),
                other => format!("{other:?}"),
            },
            message: format!("{r:?}"),
        },
        other => ChannelError::Ledger(other.to_string()),
    }
}

/// Opens a payer's settlement account from its key (see the module docs).
pub type AccountOpener = Arc<
    dyn Fn(Keypair) -> BoxFuture<'static, Result<SharedBrokerSettlement, SettlementError>>
        + Send
        + Sync,
>;

/// Payers' accounts on `target` ([`Opened::open`]).
pub fn opener_for(target: SettlementTarget) -> AccountOpener {
    Arc::new(move |key: Keypair| {
        let target = target.clone();
        Box::pin(async move { Ok(Opened::open(&target, &key).await?.broker()) })
    })
}

/// Payers' accounts on the ledger `client` talks to, whose chain id is `chain_id` (nothing
/// is asked of the ledger to open one).
pub fn ledger_opener(client: Client, chain_id: u64) -> AccountOpener {
    Arc::new(move |key: Keypair| {
        let s: SharedBrokerSettlement =
            Arc::new(LedgerSettlement::new(client.clone(), key, chain_id));
        Box::pin(async move { Ok(s) })
    })
}

/// (payer, provider).
type BookKey = (AccountId, AccountId);

/// What settling an answer did.
#[derive(Debug)]
pub struct Settled {
    /// The voucher for the channel's new total, if anything was charged.
    pub voucher: Option<SignedVoucher>,
    /// What the answer was charged, in micro-units: its cost capped at the reservation
    /// (and the books at the deposit).
    pub charged_micros: u128,
}

/// What is kept of a channel across restarts.
#[derive(Debug, Clone, PartialEq, BorshSerialize, BorshDeserialize)]
struct StoredBooks {
    id: Hash32,
    deposit: Amount,
    spent_micros: u128,
}

/// Whether the payer may close `c` at `epoch` without taking back what it vouched.
fn closable(c: &agora_settlement::network::ChannelParties, epoch: u64, vouched: Amount) -> bool {
    c.closes_epoch.is_none() && may_close(c.closed, c.expires_epoch, c.claimed, epoch, vouched)
}

fn may_close(
    closed: bool,
    expires_epoch: u64,
    claimed: Amount,
    epoch: u64,
    vouched: Amount,
) -> bool {
    !closed && epoch >= expires_epoch && claimed >= vouched
}

fn key_of(payer: &AccountId, provider: &AccountId) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.extend_from_slice(payer.as_bytes());
    k.extend_from_slice(provider.as_bytes());
    k
}

/// The durable channel books (redb, crash-safe: each write is one committed transaction).
pub struct ChannelStore {
    /// Also holds the receipts awaiting proof of inclusion ([`crate::inclusion`]).
    pub(crate) db: Database,
}

impl ChannelStore {
    /// Opens or creates the store at `path`.
    pub fn open(path: &std::path::Path) -> Result<ChannelStore, ChannelError> {
        let db = Database::create(path).map_err(store_err)?;
        let w = db.begin_write().map_err(store_err)?;
        w.open_table(BOOKS).map_err(store_err)?;
        w.open_table(PENDING).map_err(store_err)?;
        w.commit().map_err(store_err)?;
        Ok(ChannelStore { db })
    }

    fn put(&self, key: &[u8], b: &StoredBooks) -> Result<(), ChannelError> {
        let bytes = borsh::to_vec(b).map_err(store_err)?;
        let w = self.db.begin_write().map_err(store_err)?;
        {
            let mut t = w.open_table(BOOKS).map_err(store_err)?;
            t.insert(key, bytes.as_slice()).map_err(store_err)?;
            let mut p = w.open_table(PENDING).map_err(store_err)?;
            p.remove(key).map_err(store_err)?;
        }
        w.commit().map_err(store_err)
    }

    fn set_pending(&self, key: &[u8], id: Hash32) -> Result<(), ChannelError> {
        let w = self.db.begin_write().map_err(store_err)?;
        {
            let mut p = w.open_table(PENDING).map_err(store_err)?;
            p.insert(key, id.as_bytes()).map_err(store_err)?;
        }
        w.commit().map_err(store_err)
    }

    fn pending(&self, key: &[u8]) -> Result<Option<Hash32>, ChannelError> {
        let r = self.db.begin_read().map_err(store_err)?;
        let p = r.open_table(PENDING).map_err(store_err)?;
        Ok(p.get(key)
            .map_err(store_err)?
            .map(|v| Hash32::from_bytes(*v.value())))
    }

    fn remove(&self, key: &[u8]) -> Result<(), ChannelError> {
        let w = self.db.begin_write().map_err(store_err)?;
        {
            let mut t = w.open_table(BOOKS).map_err(store_err)?;
            t.remove(key).map_err(store_err)?;
            let mut p = w.open_table(PENDING).map_err(store_err)?;
            p.remove(key).map_err(store_err)?;
        }
        w.commit().map_err(store_err)
    }

    /// Every booked channel.
    fn load(&self) -> Result<Vec<(BookKey, StoredBooks)>, ChannelError> {
        let r = self.db.begin_read().map_err(store_err)?;
        let t = r.open_table(BOOKS).map_err(store_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(store_err)? {
            let (k, v) = row.map_err(store_err)?;
            let k = k.value();
            if k.len() != 64 {
                return Err(ChannelError::Store(
                    "a stored key is not two accounts".into(),
                ));
            }
            let payer = AccountId::from_slice(&k[..32]).map_err(store_err)?;
            let provider = AccountId::from_slice(&k[32..]).map_err(store_err)?;
            let b = StoredBooks::try_from_slice(v.value()).map_err(store_err)?;
            out.push(((payer, provider), b));
        }
        Ok(out)
    }
}

/// One channel's books, kept by the payer.
#[derive(Debug)]
struct ChannelBooks {
    id: Hash32,
    deposit: Amount,
    /// What answers cost so far, in millionths of a base unit (vouchers pay the floor).
    spent_micros: u128,
    /// Escrow held back for answers in flight, in base units.
    reserved: Amount,
    /// When an answer last reserved on it.
    last_used: std::time::Instant,
    /// The payer's key, once a request of this process has used the channel (to close it).
    payer_key: Option<Keypair>,
}

impl ChannelBooks {
    fn vouched(&self) -> Amount {
        agora_market::micros_to_amount(self.spent_micros)
    }

    /// Escrow neither vouched nor reserved.
    fn free(&self) -> Amount {
        self.deposit
            .checked_sub(self.vouched())
            .and_then(|a| a.checked_sub(self.reserved))
            .unwrap_or(Amount::ZERO)
    }
}

/// A reservation of escrow for one answer; settle it with [`Channels::settle`].
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    /// The channel.
    pub channel: Hash32,
    /// Escrow held.
    pub amount: Amount,
}

/// The books of every channel, by (payer, provider).
type Books = HashMap<(AccountId, AccountId), Arc<Mutex<ChannelBooks>>>;

/// Every channel the gateway's payers hold.
#[derive(Clone)]
pub struct Channels {
    opener: AccountOpener,
    /// Each payer's opened account.
    accounts: Arc<Mutex<HashMap<AccountId, SharedBrokerSettlement>>>,
    /// The least escrow to add when opening or topping up.
    pub min_deposit: Amount,
    books: Arc<Mutex<Books>>,
    /// One lock per payer so its transactions (nonces) go in order.
    payers: Arc<Mutex<HashMap<AccountId, Arc<Mutex<()>>>>>,
    /// Where the books are kept across restarts (none: memory only).
    store: Option<Arc<ChannelStore>>,
    /// Channels asked to close (by payer), to finalize once their claim window passed.
    closing: Arc<Mutex<HashMap<Hash32, AccountId>>>,
}

impl Channels {
    /// Channels of the accounts `opener` opens.
    pub fn new(opener: AccountOpener, min_deposit: Amount) -> Channels {
        Channels {
            opener,
            accounts: Arc::default(),
            min_deposit,
            books: Arc::default(),
            payers: Arc::default(),
            store: None,
            closing: Arc::default(),
        }
    }

    /// The settlement account `payer` pays from, opened once (on a chain: its key bound).
    pub async fn account(&self, payer: &Keypair) -> Result<SharedBrokerSettlement, ChannelError> {
        if let Some(a) = self.accounts.lock().await.get(&payer.account()) {
            return Ok(a.clone());
        }
        let a = (self.opener)(payer.clone()).await.map_err(settlement_err)?;
        a.prepare_payer(payer).await.map_err(settlement_err)?;
        self.accounts
            .lock()
            .await
            .insert(payer.account(), a.clone());
        Ok(a)
    }

    /// Channels whose books live in `store`: the ones it holds are recovered now.
    pub fn durable(
        opener: AccountOpener,
        min_deposit: Amount,
        store: ChannelStore,
    ) -> Result<Channels, ChannelError> {
        let mut books = Books::new();
        for (key, b) in store.load()? {
            books.insert(
                key,
                Arc::new(Mutex::new(ChannelBooks {
                    id: b.id,
                    deposit: b.deposit,
                    spent_micros: b.spent_micros,
                    reserved: Amount::ZERO,
                    last_used: std::time::Instant::now(),
                    payer_key: None,
                })),
            );
        }
        if !books.is_empty() {
            tracing::info!(channels = books.len(), "recovered channel books");
        }
        Ok(Channels {
            store: Some(Arc::new(store)),
            books: Arc::new(Mutex::new(books)),
            ..Channels::new(opener, min_deposit)
        })
    }

    /// Writes a channel's books before anything depending on them leaves.
    fn persist(&self, key: &(AccountId, AccountId), b: &ChannelBooks) -> Result<(), ChannelError> {
        match &self.store {
            Some(s) => s.put(
                &key_of(&key.0, &key.1),
                &StoredBooks {
                    id: b.id,
                    deposit: b.deposit,
                    spent_micros: b.spent_micros,
                },
            ),
            None => Ok(()),
        }
    }

    /// A channel opened before a crash that left it unbooked: adopt it from settlement.
    async fn adopt_pending(
        &self,
        account: &SharedBrokerSettlement,
        key: &(AccountId, AccountId),
    ) -> Result<(), ChannelError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let Some(id) = store.pending(&key_of(&key.0, &key.1))? else {
            return Ok(());
        };
        let found = account.channel_parties(id).await.map_err(settlement_err)?;
        let provider = account.party_of_key(key.1).await.map_err(settlement_err)?;
        match found {
            Some(c)
                if !c.closed
                    && c.closes_epoch.is_none()
                    && c.payer == account.own_party()
                    && Some(c.provider) == provider =>
            {
                // What was vouched before the crash is unknown beyond what was claimed;
                // the claimed amount is a floor the next voucher must not fall under.
                let b = ChannelBooks {
                    id,
                    deposit: c.deposit,
                    spent_micros: c.claimed.units().saturating_mul(1_000_000),
                    reserved: Amount::ZERO,
                    last_used: std::time::Instant::now(),
                    payer_key: None,
                };
                self.persist(key, &b)?;
                tracing::info!(channel = %id, "adopted a channel opened before a restart");
                self.books
                    .lock()
                    .await
                    .insert(*key, Arc::new(Mutex::new(b)));
            }
            _ => store.remove(&key_of(&key.0, &key.1))?,
        }
        Ok(())
    }

    /// The durable store, if any.
    pub(crate) fn store(&self) -> Option<Arc<ChannelStore>> {
        self.store.clone()
    }

    /// Runs `op` on `payer`'s account in its turn (its transactions in order with the
    /// channel ones).
    pub(crate) async fn in_turn<'a, T>(
        &self,
        payer: &Keypair,
        op: impl FnOnce(SharedBrokerSettlement) -> BoxFuture<'a, Result<T, SettlementError>>,
    ) -> Result<T, ChannelError> {
        let account = self.account(payer).await?;
        let lock = self.payer_lock(payer.account()).await;
        let _guard = lock.lock().await;
        op(account).await.map_err(settlement_err)
    }

    async fn payer_lock(&self, payer: AccountId) -> Arc<Mutex<()>> {
        self.payers.lock().await.entry(payer).or_default().clone()
    }

    /// Reserves `need` of escrow on the channel from `payer` to `provider`, opening or
    /// topping it up first when it lacks room.
    pub async fn reserve(
        &self,
        payer: &Keypair,
        provider: AccountId,
        need: Amount,
    ) -> Result<Reservation, ChannelError> {
        let key = (payer.account(), provider);
        let existing = self.books.lock().await.get(&key).cloned();
        if let Some(books) = &existing {
            let mut b = books.lock().await;
            if b.free() >= need {
                b.reserved = b.reserved.checked_add(need).unwrap_or(Amount::MAX);
                b.last_used = std::time::Instant::now();
                b.payer_key = Some(payer.clone());
                return Ok(Reservation {
                    channel: b.id,
                    amount: need,
                });
            }
        }
        // Fund on settlement under the payer's lock, then reserve.
        let account = self.account(payer).await?;
        let lock = self.payer_lock(payer.account()).await;
        let _guard = lock.lock().await;
        if existing.is_none() {
            self.adopt_pending(&account, &key).await?;
        }
        let existing = self.books.lock().await.get(&key).cloned();
        let books = match existing {
            Some(books) => {
                let (id, short) = {
                    let b = books.lock().await;
                    (b.id, need.checked_sub(b.free()).unwrap_or(Amount::ZERO))
                };
                if !short.is_zero() {
                    let add = short.max(self.min_deposit);
                    Self::can_pay(&account, add).await?;
                    account
                        .top_up_channel(id, add)
                        .await
                        .map_err(settlement_err)?;
                    let mut b = books.lock().await;
                    b.deposit = b.deposit.checked_add(add).unwrap_or(Amount::MAX);
                    self.persist(&key, &b)?;
                    tracing::info!(channel = %id, deposit = %b.deposit, "topped up channel");
                }
                books
            }
            None => {
                let amount = need.max(self.min_deposit);
                Self::can_pay(&account, amount).await?;
                // Written before settlement sees the open: a crash in between adopts it.
                let expected = account.next_channel_id().await.map_err(settlement_err)?;
                if let Some(s) = &self.store {
                    s.set_pending(&key_of(&key.0, &key.1), expected)?;
                }
                let id = account
                    .open_channel_to(provider, amount, 10)
                    .await
                    .map_err(settlement_err)?;
                if id != expected {
                    tracing::warn!(channel = %id, %expected, "the channel opened under another id than expected");
                }
                tracing::info!(channel = %id, %provider, deposit = %amount, "opened channel");
                let b = ChannelBooks {
                    id,
                    deposit: amount,
                    spent_micros: 0,
                    reserved: Amount::ZERO,
                    last_used: std::time::Instant::now(),
                    payer_key: None,
                };
                self.persist(&key, &b)?;
                let books = Arc::new(Mutex::new(b));
                self.books.lock().await.insert(key, books.clone());
                books
            }
        };
        let mut b = books.lock().await;
        b.reserved = b.reserved.checked_add(need).unwrap_or(Amount::MAX);
        b.last_used = std::time::Instant::now();
        b.payer_key = Some(payer.clone());
        Ok(Reservation {
            channel: b.id,
            amount: need,
        })
    }

    /// Refuses escrow the account cannot pay, before anything is sent.
    async fn can_pay(account: &SharedBrokerSettlement, need: Amount) -> Result<(), ChannelError> {
        let balance = account.own_balance().await.map_err(settlement_err)?;
        if balance.is_zero() {
            return Err(ChannelError::NoAccount(account.account_label()));
        }
        if balance < need {
            return Err(ChannelError::Insufficient { balance, need });
        }
        Ok(())
    }

    /// Releases a reservation and adds what the answer actually cost, at most the
    /// reservation; returns the voucher for the channel's new cumulative total, signed by
    /// `payer`, and what was charged (the figure to report, never the uncapped cost).
    pub async fn settle(
        &self,
        payer: &Keypair,
        provider: AccountId,
        reservation: Reservation,
        cost_micros: u128,
    ) -> Settled {
        let none = Settled {
            voucher: None,
            charged_micros: 0,
        };
        let Some(books) = self
            .books
            .lock()
            .await
            .get(&(payer.account(), provider))
            .cloned()
        else {
            return none;
        };
        let mut b = books.lock().await;
        b.reserved = b
            .reserved
            .checked_sub(reservation.amount)
            .unwrap_or(Amount::ZERO);
        if cost_micros == 0 {
            return none;
        }
        // The account signs the voucher: opened before anything is charged.
        let account = match self.account(payer).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(channel = %b.id, "voucher withheld, the payer's account: {e}");
                return none;
            }
        };
        let before = b.spent_micros;
        b.spent_micros =
            crate::rules::charge(b.spent_micros, cost_micros, reservation.amount, b.deposit);
        // Written before the voucher leaves: a restart continues from here, never below.
        if let Err(e) = self.persist(&(payer.account(), provider), &b) {
            tracing::error!(channel = %b.id, "voucher withheld, books not written: {e}");
            return none;
        }
        let charged_micros = b.spent_micros.saturating_sub(before);
        let (channel, cumulative) = (b.id, b.vouched());
        let voucher = match account.sign_voucher_for(channel, cumulative) {
            Ok(sig) => Some(SignedVoucher {
                voucher: Voucher {
                    chain_id: account.network_chain_id(),
                    channel,
                    cumulative,
                },
                sig,
            }),
            Err(e) => {
                tracing::error!(%channel, "signing a voucher: {e}");
                None
            }
        };
        Settled {
            voucher,
            charged_micros,
        }
    }

    /// Closes channels no answer has used for `idle`, returning their escrow to the payer:
    /// asks to close them once settlement lets the payer and the provider has claimed every
    /// voucher it was given (closing earlier would take back what it earned), and finalizes
    /// the ones asked before once their claim window passed (the ledger does that itself).
    /// Returns how many it asked to close.
    pub async fn close_idle(&self, idle: std::time::Duration) -> usize {
        self.finalize_closing().await;
        let all: Vec<_> = self
            .books
            .lock()
            .await
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut closed = 0;
        for (key, books) in all {
            let (id, payer, vouched) = {
                let b = books.lock().await;
                let Some(payer) = b.payer_key.clone() else {
                    continue;
                };
                if !b.reserved.is_zero() || b.last_used.elapsed() < idle {
                    continue;
                }
                (b.id, payer, b.vouched())
            };
            let Ok(account) = self.account(&payer).await else {
                continue;
            };
            let (Ok(Some(c)), Ok(epoch)) = (
                account.channel_parties(id).await,
                account.current_epoch().await,
            ) else {
                continue;
            };
            let forget = if c.closed {
                true
            } else if c.closes_epoch.is_some() {
                // Asked before (by a run that forgot): finalize once due.
                self.closing.lock().await.insert(id, payer.account());
                true
            } else {
                if !closable(&c, epoch, vouched) {
                    continue;
                }
                let lock = self.payer_lock(payer.account()).await;
                let _guard = lock.lock().await;
                // Still idle after waiting for the payer's lock?
                if !books.lock().await.reserved.is_zero() {
                    continue;
                }
                match account.request_channel_close(id).await {
                    Ok(()) => {
                        let refund = c.deposit.checked_sub(c.claimed).unwrap_or(Amount::ZERO);
                        tracing::info!(channel = %id, %refund, "closing idle channel");
                        self.closing.lock().await.insert(id, payer.account());
                        closed += 1;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(channel = %id, "closing idle channel: {e}");
                        false
                    }
                }
            };
            if forget {
                self.books.lock().await.remove(&key);
                if let Some(s) = &self.store {
                    if let Err(e) = s.remove(&key_of(&key.0, &key.1)) {
                        tracing::warn!(channel = %id, "forgetting a closed channel: {e}");
                    }
                }
            }
        }
        closed
    }

    /// Finalizes the channels asked to close whose claim window has passed.
    async fn finalize_closing(&self) {
        let closing: Vec<(Hash32, AccountId)> = self
            .closing
            .lock()
            .await
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        for (id, payer) in closing {
            let Some(account) = self.accounts.lock().await.get(&payer).cloned() else {
                continue;
            };
            let Ok(Some(c)) = account.channel_parties(id).await else {
                continue;
            };
            let due = match (c.closed, c.closes_epoch) {
                (true, _) => true,
                (false, Some(at)) => account.current_epoch().await.is_ok_and(|e| e >= at),
                (false, None) => false,
            };
            if !due {
                continue;
            }
            let done = c.closed || {
                let lock = self.payer_lock(payer).await;
                let _guard = lock.lock().await;
                match account.finalize_channel_close(id).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(channel = %id, "finalizing a close: {e}");
                        false
                    }
                }
            };
            if done {
                tracing::info!(channel = %id, "channel closed, escrow returned");
                self.closing.lock().await.remove(&id);
            }
        }
    }

    /// What the channel from `payer` to `provider` has been charged, in micro-units.
    pub async fn spent_micros(&self, payer: &AccountId, provider: &AccountId) -> Option<u128> {
        let books = self.books.lock().await.get(&(*payer, *provider)).cloned()?;
        let b = books.lock().await;
        Some(b.spent_micros)
    }

    /// Books an already open channel (tests; recovery).
    #[cfg(test)]
    pub(crate) async fn insert_open(
        &self,
        payer: AccountId,
        provider: AccountId,
        id: Hash32,
        deposit: Amount,
    ) {
        let b = ChannelBooks {
            id,
            deposit,
            spent_micros: 0,
            reserved: Amount::ZERO,
            last_used: std::time::Instant::now(),
            payer_key: None,
        };
        self.persist(&(payer, provider), &b).expect("persist");
        self.books
            .lock()
            .await
            .insert((payer, provider), Arc::new(Mutex::new(b)));
    }

    /// The channel id from `payer` to `provider`, if one is open.
    pub async fn channel_of(&self, payer: &AccountId, provider: &AccountId) -> Option<Hash32> {
        let books = self.books.lock().await.get(&(*payer, *provider)).cloned()?;
        let id = books.lock().await.id;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_channel_closes_only_when_expired_and_fully_claimed() {
        let a = Amount::new;
        assert!(!may_close(false, 10, a(40), 9, a(40)), "before expiry");
        assert!(
            !may_close(false, 10, a(40), 10, a(41)),
            "a voucher not yet claimed"
        );
        assert!(may_close(false, 10, a(40), 10, a(40)));
        assert!(!may_close(true, 10, a(40), 10, a(0)), "already closed");
    }
}
