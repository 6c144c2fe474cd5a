//! The payer's side of payment channels: one channel per (payer, provider), opened and topped
//! up on the ledger as needed, with escrow reserved for answers in flight so a voucher never
//! promises more than the channel holds.

use std::collections::HashMap;
use std::sync::Arc;

use agora_core::{AccountId, Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::tx::channel_id;
use agora_ledger::{Tx, TxBody, Voucher};
use agora_net::protocol::SignedVoucher;
use tokio::sync::Mutex;

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
    /// The payer's account does not exist.
    #[error("the account {0} has no funds on the ledger")]
    NoAccount(AccountId),
    /// The ledger refused or was unreachable.
    #[error("ledger: {0}")]
    Ledger(String),
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
    chain_id: u64,
    ledger: Client,
    /// The least escrow to add when opening or topping up.
    pub min_deposit: Amount,
    books: Arc<Mutex<Books>>,
    /// One lock per payer so its ledger nonces are used in order.
    payers: Arc<Mutex<HashMap<AccountId, Arc<Mutex<()>>>>>,
}

impl Channels {
    /// Channels on `chain_id`, funded through the ledger at `ledger`.
    pub fn new(chain_id: u64, ledger: Client, min_deposit: Amount) -> Channels {
        Channels {
            chain_id,
            ledger,
            min_deposit,
            books: Arc::default(),
            payers: Arc::default(),
        }
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
                return Ok(Reservation {
                    channel: b.id,
                    amount: need,
                });
            }
        }
        // Fund on the ledger under the payer's lock, then reserve.
        let lock = self.payer_lock(payer.account()).await;
        let _guard = lock.lock().await;
        let existing = self.books.lock().await.get(&key).cloned();
        let books = match existing {
            Some(books) => {
                let (id, short) = {
                    let b = books.lock().await;
                    (b.id, need.checked_sub(b.free()).unwrap_or(Amount::ZERO))
                };
                if !short.is_zero() {
                    let add = short.max(self.min_deposit);
                    self.submit(
                        payer,
                        TxBody::TopUpChannel {
                            channel: id,
                            amount: add,
                        },
                    )
                    .await?;
                    let mut b = books.lock().await;
                    b.deposit = b.deposit.checked_add(add).unwrap_or(Amount::MAX);
                    tracing::info!(channel = %id, deposit = %b.deposit, "topped up channel");
                }
                books
            }
            None => {
                let amount = need.max(self.min_deposit);
                let nonce = self
                    .submit(
                        payer,
                        TxBody::OpenChannel {
                            provider,
                            amount,
                            timeout_epochs: 10,
                        },
                    )
                    .await?;
                let id = channel_id(self.chain_id, &payer.account(), nonce);
                tracing::info!(channel = %id, %provider, deposit = %amount, "opened channel");
                let books = Arc::new(Mutex::new(ChannelBooks {
                    id,
                    deposit: amount,
                    spent_micros: 0,
                    reserved: Amount::ZERO,
                }));
                self.books.lock().await.insert(key, books.clone());
                books
            }
        };
        let mut b = books.lock().await;
        b.reserved = b.reserved.checked_add(need).unwrap_or(Amount::MAX);
        Ok(Reservation {
            channel: b.id,
            amount: need,
        })
    }

    /// Submits a transaction from `payer`; returns the nonce it used.
    async fn submit(&self, payer: &Keypair, body: TxBody) -> Result<u64, ChannelError> {
        let ledger = self.ledger.clone();
        let key = payer.clone();
        let chain_id = self.chain_id;
        let need = match &body {
            TxBody::OpenChannel { amount, .. } | TxBody::TopUpChannel { amount, .. } => *amount,
            _ => Amount::ZERO,
        };
        tokio::task::spawn_blocking(move || {
            let me = key.account();
            let account = ledger
                .account(&me)
                .map_err(|e| ChannelError::Ledger(e.to_string()))?
                .ok_or(ChannelError::NoAccount(me))?;
            if account.balance < need {
                return Err(ChannelError::Insufficient {
                    balance: account.balance,
                    need,
                });
            }
            let tx = Tx {
                chain_id,
                from: me,
                nonce: account.nonce,
                body,
            }
            .sign(&key);
            ledger
                .submit(&tx)
                .map_err(|e| ChannelError::Ledger(e.to_string()))?;
            Ok(account.nonce)
        })
        .await
        .map_err(|e| ChannelError::Ledger(e.to_string()))?
    }

    /// Releases a reservation and adds what the answer actually cost; returns the voucher
    /// for the channel's new cumulative total, signed by `payer`.
    pub async fn settle(
        &self,
        payer: &Keypair,
        provider: AccountId,
        reservation: Reservation,
        cost_micros: u128,
    ) -> Option<SignedVoucher> {
        let books = self
            .books
            .lock()
            .await
            .get(&(payer.account(), provider))
            .cloned()?;
        let mut b = books.lock().await;
        b.reserved = b
            .reserved
            .checked_sub(reservation.amount)
            .unwrap_or(Amount::ZERO);
        if cost_micros == 0 {
            return None;
        }
        // A charge never exceeds what was reserved for it, and never more than the channel holds.
        let cost_micros = cost_micros.min(reservation.amount.units().saturating_mul(1_000_000));
        let spent = b.spent_micros.saturating_add(cost_micros);
        let cap = b.deposit.units().saturating_mul(1_000_000);
        b.spent_micros = spent.min(cap);
        let voucher = Voucher {
            chain_id: self.chain_id,
            channel: b.id,
            cumulative: b.vouched(),
        };
        Some(SignedVoucher::new(voucher, payer))
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
        let books = Arc::new(Mutex::new(ChannelBooks {
            id,
            deposit,
            spent_micros: 0,
            reserved: Amount::ZERO,
        }));
        self.books.lock().await.insert((payer, provider), books);
    }

    /// The channel id from `payer` to `provider`, if one is open.
    pub async fn channel_of(&self, payer: &AccountId, provider: &AccountId) -> Option<Hash32> {
        let books = self.books.lock().await.get(&(*payer, *provider)).cloned()?;
        let id = books.lock().await.id;
        Some(id)
    }
}
