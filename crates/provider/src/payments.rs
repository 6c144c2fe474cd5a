//! The provider's side of payment: which channels may pay for a request, the best voucher
//! held for each, and claiming them on the ledger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agora_core::{AccountId, Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::{Tx, TxBody};
use agora_net::protocol::SignedVoucher;

/// What the provider knows of one channel.
#[derive(Debug, Clone)]
struct ChannelView {
    payer: AccountId,
    deposit: Amount,
    claimed: Amount,
    best: Option<SignedVoucher>,
    /// What answers served on it cost, in millionths of a base unit.
    served_micros: u128,
}

impl ChannelView {
    fn vouched(&self) -> Amount {
        self.best
            .as_ref()
            .map_or(Amount::ZERO, |v| v.voucher.cumulative)
    }
}

/// Why a channel cannot pay.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// Not on the ledger, closed, or not between this payer and this provider.
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
    /// The ledger could not be asked.
    #[error("ledger: {0}")]
    Ledger(String),
    /// A voucher for another channel, payer or chain, or with a bad signature.
    #[error("voucher refused: {0}")]
    BadVoucher(String),
}

/// Channels paying this provider, shared by every stream.
#[derive(Clone)]
pub struct Payments {
    chain_id: u64,
    me: AccountId,
    ledger: Client,
    channels: Arc<Mutex<HashMap<Hash32, ChannelView>>>,
}

impl Payments {
    /// Payments to `me` on `chain_id`, checked against the ledger at `ledger`.
    pub fn new(chain_id: u64, me: AccountId, ledger: Client) -> Payments {
        Payments {
            chain_id,
            me,
            ledger,
            channels: Arc::default(),
        }
    }

    /// The ledger client.
    pub fn ledger(&self) -> &Client {
        &self.ledger
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash32, ChannelView>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that `channel` from `payer` can cover `need` beyond what is already vouched,
    /// asking the ledger when the cached view is missing or short (it may have been topped up).
    pub async fn check(
        &self,
        channel: Hash32,
        payer: AccountId,
        need: Amount,
    ) -> Result<(), PaymentError> {
        if self.covers(&channel, &payer, need)?.is_some() {
            return Ok(());
        }
        let ledger = self.ledger.clone();
        let fetched = tokio::task::spawn_blocking(move || ledger.channel(&channel))
            .await
            .map_err(|e| PaymentError::Ledger(e.to_string()))?
            .map_err(|e| PaymentError::Ledger(e.to_string()))?;
        let Some(c) = fetched else {
            return Err(PaymentError::NoChannel(channel));
        };
        if c.closed || c.payer != payer || c.provider != self.me {
            return Err(PaymentError::NoChannel(channel));
        }
        {
            let mut map = self.lock();
            let view = map.entry(channel).or_insert(ChannelView {
                payer,
                deposit: c.deposit,
                claimed: c.claimed,
                best: None,
                served_micros: 0,
            });
            view.deposit = c.deposit;
            view.claimed = view.claimed.max(c.claimed);
        }
        match self.covers(&channel, &payer, need)? {
            Some(()) => Ok(()),
            None => {
                let map = self.lock();
                let left = map.get(&channel).map_or(Amount::ZERO, |v| {
                    v.deposit.checked_sub(v.vouched()).unwrap_or(Amount::ZERO)
                });
                Err(PaymentError::Insufficient { left, need })
            }
        }
    }

    /// `Some` when the cached view covers `need`; `None` when it must be refreshed.
    fn covers(
        &self,
        channel: &Hash32,
        payer: &AccountId,
        need: Amount,
    ) -> Result<Option<()>, PaymentError> {
        let map = self.lock();
        let Some(v) = map.get(channel) else {
            return Ok(None);
        };
        if &v.payer != payer {
            return Err(PaymentError::NoChannel(*channel));
        }
        let left = v.deposit.checked_sub(v.vouched()).unwrap_or(Amount::ZERO);
        Ok((left >= need).then_some(()))
    }

    /// Records what an answer on `channel` cost.
    pub fn served(&self, channel: &Hash32, cost_micros: u128) {
        if let Some(v) = self.lock().get_mut(channel) {
            v.served_micros = v.served_micros.saturating_add(cost_micros);
        }
    }

    /// Keeps `voucher` if it is valid and better than the one held. Returns the shortfall
    /// against what was served, if any (a payer that underpays is logged).
    pub fn accept_voucher(&self, voucher: SignedVoucher) -> Result<Amount, PaymentError> {
        voucher
            .verify()
            .map_err(|e| PaymentError::BadVoucher(e.to_string()))?;
        if voucher.voucher.chain_id != self.chain_id {
            return Err(PaymentError::BadVoucher("another chain".into()));
        }
        let mut map = self.lock();
        let v = map
            .get_mut(&voucher.voucher.channel)
            .ok_or_else(|| PaymentError::BadVoucher("unknown channel".into()))?;
        if v.payer != voucher.payer {
            return Err(PaymentError::BadVoucher("not the channel's payer".into()));
        }
        if voucher.voucher.cumulative > v.vouched() {
            v.best = Some(voucher);
        }
        let owed = agora_market::micros_to_amount(v.served_micros);
        Ok(owed.checked_sub(v.vouched()).unwrap_or(Amount::ZERO))
    }

    /// Claims every voucher worth more than what was claimed; returns the total claimed now.
    /// Blocking (ledger HTTP); run it off the async threads.
    pub fn claim_all(&self, key: &Keypair) -> Result<Amount, PaymentError> {
        let pending: Vec<(Hash32, SignedVoucher)> = self
            .lock()
            .iter()
            .filter_map(|(id, v)| {
                let best = v.best.clone()?;
                (best.voucher.cumulative > v.claimed).then_some((*id, best))
            })
            .collect();
        let mut total = Amount::ZERO;
        for (id, best) in pending {
            let nonce = self
                .ledger
                .next_nonce(&self.me)
                .map_err(|e| PaymentError::Ledger(e.to_string()))?;
            let tx = Tx {
                chain_id: self.chain_id,
                from: self.me,
                nonce,
                body: TxBody::ClaimVoucher {
                    voucher: best.voucher.clone(),
                    payer: best.payer,
                    payer_sig: best.sig,
                },
            }
            .sign(key);
            self.ledger
                .submit(&tx)
                .map_err(|e| PaymentError::Ledger(e.to_string()))?;
            let mut map = self.lock();
            if let Some(v) = map.get_mut(&id) {
                let gained = best
                    .voucher
                    .cumulative
                    .checked_sub(v.claimed)
                    .unwrap_or(Amount::ZERO);
                total = total.checked_add(gained).unwrap_or(total);
                v.claimed = v.claimed.max(best.voucher.cumulative);
            }
            tracing::info!(channel = %id, cumulative = %best.voucher.cumulative, "claimed voucher");
        }
        Ok(total)
    }
}
