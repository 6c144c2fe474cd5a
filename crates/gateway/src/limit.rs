//! Per-key request rate and concurrency limits: one API key cannot take the gateway's
//! capacity (or its account's escrow) from everyone else. A refusal is 429 with
//! `Retry-After`, in OpenAI's error shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most keys whose state is kept; idle ones are forgotten first.
const MAX_KEYS: usize = 65_536;

/// How many requests a key may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per second, sustained (a token bucket refilled at this rate).
    pub per_second: u32,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Answers in flight at once.
    pub concurrent: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            per_second: 20,
            burst: 100,
            concurrent: 64,
        }
    }
}

#[derive(Debug)]
struct KeyState {
    tokens: f64,
    last: Instant,
    inflight: u32,
}

/// The limiter every request passes.
#[derive(Debug, Clone)]
pub struct Limiter {
    limits: KeyLimits,
    keys: Arc<Mutex<HashMap<String, KeyState>>>,
}

/// Why a request must wait: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Seconds to wait (at least 1).
    pub retry_after_s: u64,
    /// Whether the concurrency limit (rather than the rate) refused it.
    pub concurrency: bool,
}

/// One admitted request; dropping it frees its concurrency slot.
#[derive(Debug)]
pub struct Permit {
    key: String,
    keys: Arc<Mutex<HashMap<String, KeyState>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = keys.get_mut(&self.key) {
            s.inflight = s.inflight.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// A limiter with these limits for every key.
    pub fn new(limits: KeyLimits) -> Limiter {
        Limiter {
            limits,
            keys: Arc::default(),
        }
    }

    /// Admits one request of `key` now, or says how long to wait.
    pub fn admit(&self, key: &str) -> Result<Permit, Limited> {
        self.admit_at(key, None, Instant::now())
    }

    /// Admits one request of `key`, whose own rate is `per_minute` requests a minute (a
    /// bucket of that many refilled over a minute) when given, the limiter's otherwise.
    pub fn admit_key(&self, key: &str, per_minute: Option<u32>) -> Result<Permit, Limited> {
        self.admit_at(key, per_minute, Instant::now())
    }

    fn admit_at(
        &self,
        key: &str,
        per_minute: Option<u32>,
        now: Instant,
    ) -> Result<Permit, Limited> {
        let l = self.limits;
        let (cap, rate) = match per_minute {
            Some(m) => (f64::from(m.max(1)), f64::from(m.max(1)) / 60.0),
            None => (f64::from(l.burst.max(1)), f64::from(l.per_second.max(1))),
        };
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, s| {
                s.inflight > 0 || now.duration_since(s.last) < Duration::from_secs(60)
            });
        }
        let s = keys.entry(key.to_string()).or_insert(KeyState {
            tokens: cap,
            last: now,
            inflight: 0,
        });
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(cap);
        s.last = now;
        if s.inflight >= l.concurrent.max(1) {
            return Err(Limited {
                retry_after_s: 1,
                concurrency: true,
            });
        }
        if s.tokens < 1.0 {
            let wait = ((1.0 - s.tokens) / rate).ceil().max(1.0);
            return Err(Limited {
                retry_after_s: wait as u64,
                concurrency: false,
            });
        }
        s.tokens -= 1.0;
        s.inflight += 1;
        Ok(Permit {
            key: key.to_string(),
            keys: self.keys.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_limited_in_rate_and_concurrency_others_are_not() {
        let lim = Limiter::new(KeyLimits {
            per_second: 1,
            burst: 2,
            concurrent: 2,
        });
        let t = Instant::now();
        let a = lim.admit_at("k", None, t).expect("first");
        let b = lim.admit_at("k", None, t).expect("second");
        let e = lim.admit_at("k", None, t).unwrap_err();
        assert!(e.concurrency);
        assert!(lim.admit_at("other", None, t).is_ok());
        drop(a);
        drop(b);
        // Slots free, but the bucket is empty until it refills.
        let e = lim.admit_at("k", None, t).unwrap_err();
        assert!(!e.concurrency);
        assert_eq!(e.retry_after_s, 1);
        assert!(lim.admit_at("k", None, t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_key_with_its_own_rate_waits_for_its_refill() {
        let lim = Limiter::new(KeyLimits::default());
        let t = Instant::now();
        for _ in 0..2 {
            drop(lim.admit_at("k", Some(2), t).expect("within 2 a minute"));
        }
        let e = lim.admit_at("k", Some(2), t).unwrap_err();
        assert!(!e.concurrency);
        assert_eq!(e.retry_after_s, 30);
        assert!(lim
            .admit_at("k", Some(2), t + Duration::from_secs(30))
            .is_ok());
    }
}
