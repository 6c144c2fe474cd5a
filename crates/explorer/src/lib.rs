//! The Agora explorer: a read-only, live web view of the network (providers, verifiers,
//! models, blocks, epochs, audits and verdicts, receipts and key usage, DiLoCo runs), rendered
//! on the server and updated in the browser by server-sent events.
//!
//! It follows a ledger over its HTTP API ([`follow`]), indexes what it reads ([`index`]),
//! and, inside a gateway, also sees the offer book (an [`OfferSource`]) and every answer the
//! gateway serves ([`tap::Tapped`]). Every page works without JavaScript; with it, `app.js`
//! opens `/explorer/events?page=...` and swaps in each re-rendered page. Every peer-supplied
//! string is escaped ([`html::esc`]) and pages carry a Content-Security-Policy that allows
//! no inline script.
//!
//! ```no_run
//! # async fn f() {
//! let explorer = agora_explorer::Explorer::new(agora_explorer::Config::new("http://127.0.0.1:7420"));
//! explorer.clone().follow();
//! let app = explorer.router(); // serves /explorer/...
//! # let _ = app; }
//! ```
//!
//! Every page is named in `docs/explorer.md`.

pub mod follow;
pub mod html;
pub mod index;
pub mod pages;
pub mod tap;

use agora_core::{AccountId, Amount, Hash32};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub use index::Index;
pub use tap::{RequestLog, RequestRow, Tapped};

/// One live offer, as the gateway's book holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferRow {
    /// The provider's account.
    pub provider: AccountId,
    /// The ModelId.
    pub model: Hash32,
    /// The name the offer gives the model.
    pub model_name: String,
    /// Base units per million prompt tokens.
    pub price_in: Amount,
    /// Base units per million output tokens.
    pub price_out: Amount,
    /// Hardware class (free text from the provider).
    pub hardware: String,
    /// Region (free text from the provider).
    pub region: String,
    /// Concurrent requests accepted.
    pub capacity: u32,
    /// Longest context.
    pub context_len: u32,
    /// Unix ms when it expires.
    pub expires_ms: u64,
    /// The gateway's reputation score in `[0, 1]`.
    pub reputation: f64,
    /// Requests in flight at the gateway.
    pub load: u32,
    /// Moving average of first-token latency, ms.
    pub latency_ms: Option<f64>,
}

/// Where live offers come from (the gateway's offer book).
pub type OfferSource = Arc<dyn Fn() -> Vec<OfferRow> + Send + Sync>;

/// Prices of one model at one time (for the price chart).
#[derive(Debug, Clone)]
pub struct PricePoint {
    /// Unix ms.
    pub at_ms: u64,
    /// The ModelId.
    pub model: Hash32,
    /// Its name.
    pub model_name: String,
    /// Lowest and highest output price per million tokens.
    pub out: (u128, u128),
    /// Lowest and highest prompt price per million tokens.
    pub r#in: (u128, u128),
    /// Live offers.
    pub providers: usize,
}

/// Price samples kept (one a sample interval per model).
pub const PRICE_HISTORY: usize = 2000;

/// How to run an explorer.
#[derive(Clone)]
pub struct Config {
    /// The ledger API, `http://host:port`.
    pub ledger_url: String,
    /// Where the pages live (`/explorer`).
    pub base: String,
    /// The gateway's offer book, when embedded in a gateway.
    pub offers: Option<OfferSource>,
    /// The gateway's answers, when embedded in a gateway.
    pub requests: Option<Arc<RequestLog>>,
    /// A DiLoCo coordinator's run folder (its `rounds.jsonl`).
    pub diloco: Option<PathBuf>,
}

impl Config {
    /// An explorer of the ledger at `ledger_url`, at `/explorer`.
    pub fn new(ledger_url: &str) -> Config {
        Config {
            ledger_url: ledger_url.into(),
            base: "/explorer".into(),
            offers: None,
            requests: None,
            diloco: None,
        }
    }
}

/// A running explorer; clone the `Arc`.
pub struct Explorer {
    pub(crate) cfg: Config,
    pub(crate) index: RwLock<Index>,
    pub(crate) prices: Mutex<VecDeque<PricePoint>>,
    pub(crate) requests: Arc<RequestLog>,
    /// Bumped on every change the pages could show.
    pub(crate) version: tokio::sync::watch::Sender<u64>,
    /// Ledger views of accounts (stake, clean audits, frauds), refreshed as they change.
    pub(crate) accounts:
        RwLock<std::collections::HashMap<AccountId, agora_ledger::api::AccountView>>,
    /// The last error reading the ledger, shown on the overview.
    pub(crate) ledger_error: Mutex<Option<String>>,
    /// Audit plans read from the ledger (a plan never changes once its beacon exists).
    pub(crate) plans: Mutex<std::collections::HashMap<(AccountId, u64), agora_ledger::AuditPlan>>,
    /// Live streams open at once, at most [`MAX_STREAMS`]: each re-renders its page on
    /// every change.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
}

/// The most live page streams served at once (more get 503 and keep the static page).
pub const MAX_STREAMS: usize = 256;
/// The most audit plans kept.
pub const PLAN_CACHE: usize = 4096;

impl Explorer {
    /// An explorer; call [`Explorer::follow`] to start reading the ledger.
    pub fn new(mut cfg: Config) -> Arc<Explorer> {
        let (version, _) = tokio::sync::watch::channel(0u64);
        let requests = cfg.requests.take().unwrap_or_default();
        cfg.base = cfg.base.trim_end_matches('/').to_string();
        Arc::new(Explorer {
            cfg,
            index: RwLock::new(Index::default()),
            prices: Mutex::new(VecDeque::new()),
            requests,
            version,
            accounts: RwLock::new(Default::default()),
            ledger_error: Mutex::new(None),
            plans: Mutex::new(Default::default()),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        })
    }

    /// The change counter pages wait on.
    pub fn version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Marks a change.
    pub(crate) fn bump(&self) {
        self.version.send_modify(|n| *n += 1);
    }

    /// Reads the index.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        let g = self.index.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// The live offers now (none outside a gateway).
    pub fn offers(&self) -> Vec<OfferRow> {
        self.cfg.offers.as_ref().map(|f| f()).unwrap_or_default()
    }

    /// The answers log.
    pub fn requests(&self) -> &Arc<RequestLog> {
        &self.requests
    }

    /// The routes under the base path.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        pages::router(self.clone())
    }
}
