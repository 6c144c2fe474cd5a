//! Who may be routed to: a provider whose bonded stake is under the minimum has nothing to
//! lose by cheating, so it gets no work and its offers take no room. Stake is read from
//! settlement for the offer's network key (on an EVM chain: the account whose key binding
//! verifies, `agora_settlement::network`) and kept for a short TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_core::{AccountId, Amount};

/// How long a stake reading is trusted.
pub const STAKE_TTL: Duration = Duration::from_secs(30);
/// How long a "not enough" reading is kept (a provider that just bonded is heard soon).
pub const UNSTAKED_TTL: Duration = Duration::from_secs(5);
/// Most stake readings kept.
pub const MAX_CACHED: usize = 16_384;
/// Most ledger look-ups in flight for offers heard on gossip.
pub const MAX_INFLIGHT: usize = 32;

/// Reads an account's bonded stake; `None` when the ledger cannot say (no account,
/// unreachable).
pub type StakeReader = Arc<dyn Fn(&AccountId) -> Option<Amount> + Send + Sync>;

/// Cached stake checks against the ledger.
#[derive(Clone)]
pub struct Stakes {
    read: StakeReader,
    min: Amount,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<AccountId, (bool, Instant)>>>,
    inflight: Arc<Mutex<HashSet<AccountId>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stakes {
    /// Checks that stake reaches `min`, reading it with `read` (blocking; run off the
    /// async threads).
    pub fn new(read: StakeReader, min: Amount) -> Stakes {
        Stakes {
            read,
            min,
            ttl: STAKE_TTL,
            cache: Arc::default(),
            inflight: Arc::default(),
        }
    }

    /// The least bonded stake a provider needs.
    pub fn min(&self) -> Amount {
        self.min
    }

    /// A fresh cached verdict, if any.
    pub fn cached(&self, provider: &AccountId) -> Option<bool> {
        let cache = lock(&self.cache);
        cache
            .get(provider)
            .filter(|(ok, at)| at.elapsed() < if *ok { self.ttl } else { UNSTAKED_TTL })
            .map(|(ok, _)| *ok)
    }

    fn remember(&self, provider: AccountId, ok: bool) {
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(provider, (ok, Instant::now()));
    }

    /// Whether `provider`'s bonded stake reaches the minimum (cached for the TTL). A ledger
    /// that cannot answer is a no: unknown stake is no stake.
    pub async fn check(&self, provider: AccountId) -> bool {
        if let Some(ok) = self.cached(&provider) {
            return ok;
        }
        let read = self.read.clone();
        let min = self.min;
        let ok = tokio::task::spawn_blocking(move || read(&provider).is_some_and(|s| s >= min))
            .await
            .unwrap_or(false);
        self.remember(provider, ok);
        ok
    }

    /// Starts a check for an offer heard on gossip, unless one for this provider is running
    /// or too many are; `then` runs if the stake is enough. Returns whether it started.
    pub fn check_then(&self, provider: AccountId, then: impl FnOnce() + Send + 'static) -> bool {
        {
            let mut inflight = lock(&self.inflight);
            if inflight.len() >= MAX_INFLIGHT || !inflight.insert(provider) {
                return false;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let ok = me.check(provider).await;
            lock(&me.inflight).remove(&provider);
            if ok {
                then();
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn unstaked_and_unknown_providers_fail_and_readings_are_cached() {
        let rich = agora_core::Keypair::from_seed([1; 32]).account();
        let poor = agora_core::Keypair::from_seed([2; 32]).account();
        let ghost = agora_core::Keypair::from_seed([3; 32]).account();
        let reads = Arc::new(AtomicUsize::new(0));
        let r = reads.clone();
        let stakes = Stakes::new(
            Arc::new(move |a: &AccountId| {
                r.fetch_add(1, Ordering::SeqCst);
                if *a == rich {
                    Some(Amount::new(100))
                } else if *a == poor {
                    Some(Amount::new(99))
                } else {
                    None
                }
            }),
            Amount::new(100),
        );
        assert!(stakes.check(rich).await);
        assert!(!stakes.check(poor).await);
        assert!(!stakes.check(ghost).await);
        assert!(stakes.check(rich).await);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    /// On an EVM chain an offer's key is routed to only through the account whose binding
    /// of it verifies and whose stake reaches the minimum: not through a thief that recorded
    /// the key with a bad or replayed signature and staked, nor an unstaked binder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evm_offer_keys_without_a_verified_staked_account_are_not_routed() {
        use agora_evm::anvil::{find_anvil, Anvil};
        use agora_evm::{deploy, sign_key_binding, Params, SettlementClient};
        use agora_settlement::evm::EvmSettlement;
        use agora_settlement::network::NetworkSettlement;
        let Some(bin) = find_anvil() else {
            eprintln!("SKIP: anvil not found (run scripts/install-evm-tools)");
            return;
        };
        let anvil = Anvil::start(&bin, 31_337).expect("anvil");
        let d = deploy(anvil.url(), anvil.keys()[0].clone(), Params::devnet(5))
            .await
            .expect("deploy");
        let admin = SettlementClient::connect(anvil.url(), anvil.keys()[0].clone(), d.clone())
            .await
            .expect("admin");
        let mut who = Vec::new();
        for k in &anvil.keys()[1..4] {
            admin.mint(k.address(), 10_000).await.expect("mint");
            who.push(
                SettlementClient::connect(anvil.url(), k.clone(), d.clone())
                    .await
                    .expect("connect"),
            );
        }
        let (prov, thief) = (&who[0], &who[1]);
        let net: Arc<dyn NetworkSettlement> = Arc::new(EvmSettlement::new(
            SettlementClient::connect(anvil.url(), anvil.keys()[3].clone(), d.clone())
                .await
                .expect("reader"),
        ));
        let key = agora_core::Keypair::from_seed([61; 32]);
        // A fresh cache for each look, as after the TTL.
        let stakes = || {
            let (net, rt) = (net.clone(), tokio::runtime::Handle::current());
            Stakes::new(
                Arc::new(move |a: &AccountId| rt.block_on(net.stake_of_key(*a)).ok().flatten()),
                Amount::new(100),
            )
        };
        assert!(!stakes().check(key.account()).await, "a key nobody bound");
        thief.stake(5_000).await.expect("stake");
        thief
            .bind_network_key_raw(*key.account().as_bytes(), [3; 64])
            .await
            .expect("the chain records any binding");
        assert!(!stakes().check(key.account()).await, "a bad binding");
        let genuine = sign_key_binding(&key, d.chain_id, d.settlement, prov.address());
        thief
            .bind_network_key_raw(*key.account().as_bytes(), *genuine.as_bytes())
            .await
            .expect("the chain records any binding");
        assert!(!stakes().check(key.account()).await, "a replayed binding");
        prov.bind_network_key(&key).await.expect("bind");
        prov.stake(99).await.expect("stake");
        assert!(
            !stakes().check(key.account()).await,
            "bound, under the minimum"
        );
        prov.stake(1).await.expect("stake");
        assert!(stakes().check(key.account()).await, "bound and staked");
    }
}
