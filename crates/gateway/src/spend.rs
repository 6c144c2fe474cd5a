//! Spending budgets of API keys, enforced by reserve-then-settle.
//!
//! Before an answer may cost anything, the backend reserves the most it could cost from the
//! key and from every key above it (one lock over all keys' spend, so the check and the
//! reservation are one step: concurrent answers cannot both take the last of a budget).
//! When the answer is paid, the reservation is settled with the real charge, never more than
//! was reserved; settled spend is written to the key file before it is counted, so it
//! survives a restart. A reservation dropped unsettled (the answer failed) is released.

use crate::keys::{KeyStore, SpendState, SPEND};
use std::fmt;
use std::sync::Arc;

/// The budget a job spends from: its key and the key's ancestors.
#[derive(Clone)]
pub struct Budget {
    store: Arc<KeyStore>,
    /// The key, then its ancestors.
    chain: Vec<String>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("chain", &self.chain)
            .finish()
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The API key's budget cannot cover this request: key {key} has {left} base units left and the request may cost up to {need}.")]
pub struct BudgetExceeded {
    /// The key whose budget is short (the caller's or an ancestor's).
    pub key: String,
    /// What it has left.
    pub left: u128,
    /// What was asked.
    pub need: u128,
}

/// Reserved spend; settle it with the real charge, or drop it to release it.
#[derive(Debug)]
pub struct Hold {
    budget: Budget,
    amount: u128,
    done: bool,
}

impl Budget {
    /// The budget of key `key_id` in `store`.
    pub fn of(store: Arc<KeyStore>, key_id: &str) -> Budget {
        let chain = store.chain(key_id);
        Budget { store, chain }
    }

    /// Reserves `amount` base units from the key and every ancestor with a budget, or
    /// refuses without reserving anything.
    pub fn reserve(&self, amount: u128) -> Result<Hold, BudgetExceeded> {
        let budgets: Vec<Option<u128>> = self
            .chain
            .iter()
            .map(|k| self.store.policy(k).budget.map(|b| b.units()))
            .collect();
        let mut spend = self.store.spend.lock().unwrap_or_else(|p| p.into_inner());
        for (k, budget) in self.chain.iter().zip(&budgets) {
            if let Some(b) = budget {
                let s = spend.get(k).copied().unwrap_or_default();
                let left = b.saturating_sub(s.spent).saturating_sub(s.reserved);
                if amount > left {
                    return Err(BudgetExceeded {
                        key: k.clone(),
                        left,
                        need: amount,
                    });
                }
            }
        }
        for k in &self.chain {
            let s = spend.entry(k.clone()).or_default();
            s.reserved = s.reserved.saturating_add(amount);
        }
        Ok(Hold {
            budget: self.clone(),
            amount,
            done: false,
        })
    }
}

impl Hold {
    /// What this hold reserved.
    pub fn amount(&self) -> u128 {
        self.amount
    }

    /// Turns the reservation into a charge of `charged` base units (capped at the
    /// reservation) on the key and its ancestors, written to disk before it is counted.
    /// Returns the charge counted.
    pub fn settle(mut self, charged: u128) -> u128 {
        let charged = charged.min(self.amount);
        self.finish(charged);
        charged
    }

    fn finish(&mut self, charged: u128) {
        if self.done {
            return;
        }
        self.done = true;
        let store = &self.budget.store;
        let mut spend = store.spend.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<(String, SpendState)> = Vec::with_capacity(self.budget.chain.len());
        for k in &self.budget.chain {
            let mut s = spend.get(k).copied().unwrap_or_default();
            s.reserved = s.reserved.saturating_sub(self.amount);
            s.spent = s.spent.saturating_add(charged);
            next.push((k.clone(), s));
        }
        if charged > 0 {
            if let Err(e) = write_spent(store, &next) {
                // The charge stands in memory (the provider is paid): the budget stays
                // enforced until a restart, which would forget this one charge.
                tracing::error!(error = %e, keys = ?self.budget.chain, charged, "spend not written to the key file");
            }
        }
        for (k, s) in next {
            spend.insert(k, s);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.finish(0);
    }
}

fn write_spent(store: &KeyStore, next: &[(String, SpendState)]) -> Result<(), redb::Error> {
    let w = store.db.begin_write()?;
    {
        let mut t = w.open_table(SPEND)?;
        for (k, s) in next {
            t.insert(k.as_str(), s.spent.to_le_bytes().as_slice())?;
        }
    }
    w.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ChildRequest, KeyPolicy};
    use agora_core::Amount;

    /// The attack: a child key with a budget for 3 answers fires 50 at once; each reserves
    /// the most one answer costs. Without one lock over check and reservation, several
    /// would see the same "enough left" and all be paid.
    #[test]
    fn fifty_concurrent_reservations_never_overspend_a_child_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(KeyStore::open(&dir.path().join("k.redb")).unwrap());
        let (_, root) = store.create_with("root", KeyPolicy::default()).unwrap();
        let (_, child) = store
            .create_child(
                &root,
                ChildRequest {
                    budget: 300,
                    ..ChildRequest::default()
                },
            )
            .unwrap();
        let budget = Budget::of(store.clone(), &child.id);
        let barrier = Arc::new(std::sync::Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (b, barrier) = (budget.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let hold = b.reserve(100).ok()?;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    Some(hold.settle(100))
                })
            })
            .collect();
        let paid: u128 = threads.into_iter().filter_map(|t| t.join().unwrap()).sum();
        assert_eq!(paid, 300);
        assert_eq!(store.usage(&child.id).spent, 300);
        assert_eq!(store.usage(&child.id).remaining, Some(0));
        // The parent (no budget of its own) carries the child's spend.
        assert_eq!(store.usage(&root.id).spent, 300);
    }

    #[test]
    fn a_charge_never_exceeds_its_reservation_and_a_dropped_hold_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(KeyStore::open(&dir.path().join("k.redb")).unwrap());
        let (_, k) = store
            .create_with(
                "k",
                KeyPolicy {
                    budget: Some(Amount::new(1000)),
                    ..KeyPolicy::default()
                },
            )
            .unwrap();
        let b = Budget::of(store.clone(), &k.id);
        let h = b.reserve(400).unwrap();
        assert_eq!(store.usage(&k.id).remaining, Some(600));
        assert_eq!(h.settle(10_000), 400);
        drop(b.reserve(600).unwrap());
        assert_eq!(store.usage(&k.id).remaining, Some(600));
        assert!(b.reserve(601).is_err());
    }

    #[test]
    fn spend_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.redb");
        let id = {
            let store = Arc::new(KeyStore::open(&path).unwrap());
            let (_, k) = store
                .create_with(
                    "k",
                    KeyPolicy {
                        budget: Some(Amount::new(100)),
                        ..KeyPolicy::default()
                    },
                )
                .unwrap();
            Budget::of(store.clone(), &k.id)
                .reserve(70)
                .unwrap()
                .settle(70);
            k.id
        };
        let store = Arc::new(KeyStore::open(&path).unwrap());
        assert_eq!(store.usage(&id).spent, 70);
        assert!(Budget::of(store, &id).reserve(31).is_err());
    }

    #[test]
    fn a_child_gets_no_more_than_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(KeyStore::open(&dir.path().join("k.redb")).unwrap());
        let (_, p) = store
            .create_with(
                "p",
                KeyPolicy {
                    budget: Some(Amount::new(100)),
                    requests_per_minute: Some(10),
                    models: Some(vec!["a".into()]),
                    ..KeyPolicy::default()
                },
            )
            .unwrap();
        let child = |req: ChildRequest| store.create_child(&p, req);
        let base = ChildRequest {
            budget: 50,
            ..ChildRequest::default()
        };
        assert!(child(ChildRequest {
            budget: 101,
            ..base.clone()
        })
        .is_err());
        assert!(child(ChildRequest {
            requests_per_minute: Some(11),
            ..base.clone()
        })
        .is_err());
        assert!(child(ChildRequest {
            models: Some(vec!["b".into()]),
            ..base.clone()
        })
        .is_err());
        let (_, c) = child(base).unwrap();
        assert_eq!(c.account, p.account);
        assert_eq!(c.policy.requests_per_minute, Some(10));
        assert_eq!(c.policy.models, Some(vec!["a".to_string()]));
        // Two children of 50 and 60 are allowed, but together cannot spend past 100.
        let (secret2, c2) = child(ChildRequest {
            budget: 60,
            ..ChildRequest::default()
        })
        .unwrap();
        let h1 = Budget::of(store.clone(), &c.id).reserve(50).unwrap();
        assert!(Budget::of(store.clone(), &c2.id).reserve(60).is_err());
        drop(h1);
        // Revoking the parent revokes the children.
        store.revoke(&p.id).unwrap();
        assert!(matches!(
            store.authenticate(&secret2),
            Err(crate::KeyError::Revoked(_))
        ));
    }
}
