//! Prometheus metrics for every Agora process: one registry, the metric families of each
//! service, a /metrics route and listener, and a text-format parser for tests.
//!
//! Each service's families are registered the first time they are touched, so a process
//! exposes only what it runs: a provider that calls [`provider()`] lists the provider
//! families, never the gateway's. Recording is a counter or histogram update (atomics, no
//! lock); only [`encode`] takes the registry lock.
//!
//! ```
//! agora_metrics::provider().tokens_out.inc_by(12);
//! let text = agora_metrics::encode();
//! let samples = agora_metrics::text::parse(&text).unwrap();
//! assert!(samples.iter().any(|s| s.name == "agora_provider_tokens_out_total" && s.value == 12.0));
//! ```
//!
//! Every metric is named in `docs/metrics.md`.

pub mod families;
pub mod http;
pub mod text;

pub use families::{
    diloco, gateway, ledger, provider, verifier, DilocoMetrics, GatewayMetrics, LedgerMetrics,
    ProviderMetrics, VerifierMetrics,
};
pub use http::{listen, router, track, CONTENT_TYPE};

use prometheus_client::registry::Registry;
use std::sync::{LazyLock, Mutex, MutexGuard};

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

/// The process-wide registry; a poisoned lock still holds valid metrics.
pub(crate) fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything registered so far, in the OpenMetrics text format (which Prometheus scrapes).
pub fn encode() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry()) {
        // Only a `fmt::Write` into a String, which cannot fail; keep what was written.
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}

/// A u128 amount as a gauge value: exact up to `i64::MAX`, saturated above.
pub fn amount_gauge(units: u128) -> i64 {
    i64::try_from(units).unwrap_or(i64::MAX)
}

/// A u128 amount as a counter increment: exact up to `u64::MAX`, saturated above.
pub fn amount_counter(units: u128) -> u64 {
    u64::try_from(units).unwrap_or(u64::MAX)
}
