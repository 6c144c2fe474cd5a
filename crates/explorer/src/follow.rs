//! Following the ledger: long-poll its events, read the matching blocks, index them, refresh
//! the accounts whose stake changed, and sample the offer book's prices.

use crate::{Explorer, PricePoint, PRICE_HISTORY};
use agora_core::AccountId;
use agora_ledger::client::Client;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Blocks read per poll.
const BATCH: usize = 128;
/// Accounts re-read per poll, at most.
const REFRESH: usize = 64;
/// How often prices are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Explorer {
    /// Starts following the ledger on a thread of its own, and (on the current tokio runtime)
    /// wakes the pages when the gateway logs an answer.
    pub fn follow(self: Arc<Self>) {
        let me = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let mut answers = self.requests.subscribe();
            let me = self.clone();
            handle.spawn(async move {
                while answers.changed().await.is_ok() {
                    me.bump();
                }
            });
        }
        let spawned = std::thread::Builder::new()
            .name("explorer-follow".into())
            .spawn(move || me.follow_loop());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the explorer's ledger follower");
        }
    }

    fn set_error(&self, e: Option<String>) {
        *self.ledger_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn follow_loop(self: Arc<Self>) {
        let client = match Client::new(&self.cfg.ledger_url) {
            Ok(c) => c.with_timeout(Duration::from_secs(10)),
            Err(e) => {
                tracing::error!(error = %e, url = %self.cfg.ledger_url, "explorer: bad ledger URL");
                self.set_error(Some(format!("bad ledger URL: {e}")));
                return;
            }
        };
        let mut last_sample = Instant::now() - SAMPLE_EVERY;
        let mut last_offers = Vec::new();
        loop {
            if last_sample.elapsed() >= SAMPLE_EVERY {
                last_sample = Instant::now();
                let offers = self.offers();
                self.sample_prices(&offers);
                let providers: Vec<AccountId> = offers.iter().map(|o| o.provider).collect();
                self.refresh(&client, &providers, false);
                if offers != last_offers {
                    last_offers = offers;
                    self.bump();
                }
            }
            let from = self.with_index(|i| i.height) + 1;
            let events = match client.events(from, Duration::from_secs(3)) {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "explorer: reading ledger events");
                    self.set_error(Some(format!("ledger unreachable: {e}")));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if events.is_empty() {
                continue;
            }
            let blocks = match client.blocks(from, events.len().min(BATCH)) {
                Ok(b) => b,
                Err(e) => {
                    self.set_error(Some(format!("ledger unreachable: {e}")));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            self.set_error(None);
            let dirty = {
                let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
                for (b, e) in blocks.iter().zip(&events) {
                    index.apply(b, e);
                }
                std::mem::take(&mut index.dirty)
            };
            self.refresh(&client, &dirty, true);
            self.bump();
        }
    }

    /// Re-reads accounts from the ledger (`force`: even those already known).
    fn refresh(&self, client: &Client, accounts: &[AccountId], force: bool) {
        let known: HashSet<AccountId> = self
            .accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let mut seen = HashSet::new();
        for a in accounts
            .iter()
            .filter(|a| force || !known.contains(a))
            .filter(|a| seen.insert(**a))
            .take(REFRESH)
        {
            if let Ok(Some(view)) = client.account(a) {
                self.accounts
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*a, view);
            }
        }
    }

    fn sample_prices(&self, offers: &[crate::OfferRow]) {
        let now = now_ms();
        let mut by_model: BTreeMap<_, PricePoint> = BTreeMap::new();
        for o in offers {
            let p = by_model.entry(o.model).or_insert_with(|| PricePoint {
                at_ms: now,
                model: o.model,
                model_name: o.model_name.clone(),
                out: (u128::MAX, 0),
                r#in: (u128::MAX, 0),
                providers: 0,
            });
            let (i, out) = (o.price_in.units(), o.price_out.units());
            p.out = (p.out.0.min(out), p.out.1.max(out));
            p.r#in = (p.r#in.0.min(i), p.r#in.1.max(i));
            p.providers += 1;
        }
        let mut prices = self.prices.lock().unwrap_or_else(|p| p.into_inner());
        prices.extend(by_model.into_values());
        while prices.len() > PRICE_HISTORY {
            prices.pop_front();
        }
    }
}
