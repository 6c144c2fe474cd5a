//! The embedded sequencer and its HTTP/JSON API (`agora ledger serve`).
//!
//! Submissions go into a bounded queue. A verify stage takes up to `max_batch` of them or
//! whatever arrived within `max_wait` and batch-verifies their signatures on all cores; a
//! commit stage applies them in arrival order, seals the accepted ones into a block, commits it
//! durably, and only then answers each submitter. The stages overlap: the next batch verifies
//! while the previous block commits. The commit stage also signs `AdvanceEpoch` every
//! `epoch_interval`.
//!
//! Routes (all JSON):
//! - `POST /v1/tx` a [`SignedTx`]; answers a [`SubmitReceipt`] after the commit, or an error
//!   whose code is a [`TxError::code`].
//! - `GET /v1/status`, `/v1/accounts/{id}`, `/v1/channels/{id}`, `/v1/txs/{id}`,
//!   `/v1/blocks/{height}`, `/v1/blocks?from=H&limit=N`.
//! - `GET /v1/events?from=H&wait_ms=T`: long-poll; the events of blocks from height `H`,
//!   waiting up to `T` ms (at most 30 s) for one to be committed.
//! - `GET /metrics`: Prometheus metrics (see `docs/metrics.md`).

use crate::api::{AccountView, ErrorBody, ErrorDetail, StatusView, SubmitReceipt, TxLocation};
use crate::block::{verify_all, Ledger};
use crate::error::{StoreError, TxError};
use crate::genesis::Genesis;
use crate::store::{Store, TxEvents};
use crate::tx::{SignedTx, Tx, TxBody, VerifiedTx};
use agora_core::{AccountId, Hash32, Keypair};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most blocks one read returns.
pub const MAX_BLOCKS_PER_READ: usize = 256;
/// The longest a long-poll waits.
pub const MAX_WAIT_MS: u64 = 30_000;

/// How to run the sequencer.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// The most transactions per block.
    pub max_batch: usize,
    /// How long to wait for more transactions after the first of a block.
    pub max_wait: Duration,
    /// Submissions that may wait in the queue before new ones get 503.
    pub queue: usize,
    /// Advance the epoch this often (needs the sequencer key).
    pub epoch_interval: Option<Duration>,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            max_batch: 4096,
            max_wait: Duration::from_millis(5),
            queue: 65_536,
            epoch_interval: None,
        }
    }
}

/// Why a submission got no receipt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The rules refused it.
    #[error(transparent)]
    Rejected(#[from] TxError),
    /// The queue is full.
    #[error("sequencer queue is full; retry")]
    Busy,
    /// The sequencer stopped (a storage failure); restart the node.
    #[error("sequencer halted")]
    Halted,
}

struct Submission {
    tx: SignedTx,
    reply: oneshot::Sender<Result<SubmitReceipt, SubmitError>>,
}

struct Shared {
    ledger: RwLock<Ledger>,
    /// The status as of the last block: the state is hashed once per block, not per request.
    status: RwLock<StatusView>,
    /// Audit plans already computed: a plan never changes once its beacon exists.
    plans: std::sync::Mutex<PlanCache>,
    store: Store,
    height: watch::Sender<u64>,
    queue: SyncSender<Submission>,
    halted: AtomicBool,
}

/// A running ledger node: the store, the in-memory ledger and the sequencer thread.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// Opens the store at `path` (creating it with `genesis`), recovers, and starts the
    /// sequencer thread. `sequencer_key` must match the genesis sequencer to advance epochs.
    pub fn start(
        path: &std::path::Path,
        genesis: Option<&Genesis>,
        sequencer_key: Option<Keypair>,
        cfg: SequencerConfig,
    ) -> Result<Node, StoreError> {
        let (store, ledger) = Store::open(path, genesis)?;
        let (height, _) = watch::channel(ledger.height);
        let status = RwLock::new(status_of(&ledger, ledger.state.hash()));
        let (queue, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let shared = Arc::new(Shared {
            ledger: RwLock::new(ledger),
            status,
            plans: std::sync::Mutex::new(HashMap::new()),
            store,
            height,
            queue,
            halted: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let key = sequencer_key.filter(|k| {
            let ok = s2
                .ledger
                .read()
                .is_ok_and(|l| l.state.sequencer == k.account());
            if !ok {
                tracing::warn!("sequencer key does not match genesis; epochs will not advance");
            }
            ok
        });
        // Two stages: collect + verify, then apply + commit + answer; a one-slot channel
        // between them lets the next batch verify while the previous one commits.
        let (stage, staged) = std::sync::mpsc::sync_channel(1);
        // Room for the sequencer's own epoch transaction in a full block.
        let cfg = SequencerConfig {
            max_batch: cfg.max_batch.clamp(1, crate::block::MAX_BLOCK_TXS - 1),
            ..cfg
        };
        std::thread::Builder::new()
            .name("ledger-verify".into())
            .spawn(move || sequencer_loop(rx, stage, cfg))
            .map_err(StoreError::Spawn)?;
        std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || commit_loop(s2, staged, key))
            .map_err(StoreError::Spawn)?;
        Ok(Node { shared })
    }

    /// Queues a transaction and waits until its block is durably committed.
    pub async fn submit(&self, tx: SignedTx) -> Result<SubmitReceipt, SubmitError> {
        if self.shared.halted.load(Ordering::Acquire) {
            return Err(SubmitError::Halted);
        }
        let (reply, rx) = oneshot::channel();
        match self.shared.queue.try_send(Submission { tx, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Halted),
        }
        rx.await.unwrap_or(Err(SubmitError::Halted))
    }

    /// Reads the ledger.
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        let g = self.shared.ledger.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/tx", post(submit_tx))
            .route("/v1/status", get(status))
            .route("/v1/accounts/{id}", get(account))
            .route("/v1/channels/{id}", get(channel))
            .route("/v1/roots/{provider}/{epoch}/plan", get(audit_plan))
            .route("/v1/txs/{id}", get(tx_location))
            .route("/v1/blocks/{height}", get(block))
            .route("/v1/blocks", get(blocks))
            .route("/v1/events", get(events))
            .route("/metrics", get(crate::metrics::scrape))
            .layer(axum::middleware::from_fn(agora_metrics::track))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves the API on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

fn sequencer_loop(rx: Receiver<Submission>, stage: SyncSender<Verified>, cfg: SequencerConfig) {
    let mut next_epoch = cfg.epoch_interval.map(|d| Instant::now() + d);
    let mut open = true;
    while open {
        let idle = next_epoch.map_or(Duration::from_secs(1), |t| {
            t.saturating_duration_since(Instant::now())
        });
        let mut batch = Vec::new();
        match rx.recv_timeout(idle) {
            Ok(s) => batch.push(s),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if !batch.is_empty() {
            let deadline = Instant::now() + cfg.max_wait;
            while batch.len() < cfg.max_batch {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(s) => batch.push(s),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let tick = next_epoch.is_some_and(|t| Instant::now() >= t);
        if batch.is_empty() && !tick {
            continue;
        }
        if tick {
            next_epoch = cfg.epoch_interval.map(|d| Instant::now() + d);
        }
        // Verify here while the commit stage is busy with the previous block.
        if stage.send(verify_stage(batch, tick)).is_err() {
            return;
        }
    }
}

/// A batch whose signatures were checked, on its way to the commit stage.
struct Verified {
    txs: Vec<VerifiedTx>,
    replies: Vec<oneshot::Sender<Result<SubmitReceipt, SubmitError>>>,
    tick: bool,
}

fn verify_stage(batch: Vec<Submission>, tick: bool) -> Verified {
    let (txs, replies): (Vec<SignedTx>, Vec<_>) =
        batch.into_iter().map(|s| (s.tx, s.reply)).unzip();
    let verified = verify_all(txs);
    let mut ok: Vec<VerifiedTx> = Vec::with_capacity(verified.len());
    let mut waiting = Vec::with_capacity(verified.len());
    for (v, reply) in verified.into_iter().zip(replies) {
        match v {
            Ok(v) => {
                ok.push(v);
                waiting.push(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }
    Verified {
        txs: ok,
        replies: waiting,
        tick,
    }
}

fn commit_loop(shared: Arc<Shared>, rx: Receiver<Verified>, key: Option<Keypair>) {
    while let Ok(v) = rx.recv() {
        let epoch_key = if v.tick { key.as_ref() } else { None };
        if let Err(e) = seal(&shared, v.txs, v.replies, epoch_key) {
            tracing::error!(error = %e, "commit failed; sequencer halted");
            shared.halted.store(true, Ordering::Release);
            return;
        }
    }
}

/// One block: apply, commit, answer.
fn seal(
    shared: &Shared,
    mut ok: Vec<VerifiedTx>,
    waiting: Vec<oneshot::Sender<Result<SubmitReceipt, SubmitError>>>,
    epoch_key: Option<&Keypair>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut ledger = shared.ledger.write().unwrap_or_else(|p| p.into_inner());
    if let Some(key) = epoch_key {
        let nonce = ledger.state.account(&key.account()).map_or(0, |a| a.nonce);
        let tx = Tx {
            chain_id: ledger.state.chain_id,
            from: key.account(),
            nonce,
            body: TxBody::AdvanceEpoch,
        }
        .sign(key);
        match tx.verify() {
            Ok(v) => ok.push(v),
            Err(e) => tracing::error!(error = %e, "could not sign epoch advance"),
        }
    }
    if ok.is_empty() {
        return Ok(());
    }
    let (prev_height, prev_tip) = (ledger.height, ledger.tip);
    let (block, outcomes) = ledger.build_block(ok, now_ms());
    if block.txs.is_empty() {
        // Nothing accepted: no block; the state is unchanged.
        ledger.height = prev_height;
        ledger.tip = prev_tip;
        crate::metrics::sealed(None, &outcomes, started);
        for ((_, r), reply) in outcomes.into_iter().zip(waiting) {
            if let Err(e) = r {
                let _ = reply.send(Err(e.into()));
            }
        }
        return Ok(());
    }
    let events: Vec<TxEvents> = outcomes
        .iter()
        .filter_map(|(id, r)| {
            r.as_ref().ok().map(|ev| TxEvents {
                tx_id: *id,
                events: ev.clone(),
            })
        })
        .collect();
    shared.store.commit(&block, &events, &ledger)?;
    crate::metrics::sealed(Some(&block), &outcomes, started);
    let view = status_of(&ledger, block.header.state_hash);
    drop(ledger);
    *shared.status.write().unwrap_or_else(|p| p.into_inner()) = view;
    let height = block.header.height;
    let block_hash = block.header.hash();
    tracing::debug!(height, txs = block.txs.len(), "block committed");
    shared.height.send_replace(height);
    for ((tx_id, r), reply) in outcomes.into_iter().zip(waiting) {
        let _ = reply.send(
            r.map(|events| SubmitReceipt {
                tx_id,
                height,
                block_hash,
                events,
            })
            .map_err(Into::into),
        );
    }
    Ok(())
}

/// An API error rendered as `{"error": {"code", "message"}}`; 5xx details are logged only.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "malformed",
            message: message.to_string(),
        }
    }
    fn not_found(code: &'static str, message: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.to_string(),
        }
    }
    /// Logged with its detail, answered as "internal error".
    fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".into(),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Rejected(t) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: t.code(),
                message: t.to_string(),
            },
            SubmitError::Busy => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "busy",
                message: e.to_string(),
            },
            SubmitError::Halted => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "halted",
                message: e.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn submit_tx(State(node): State<Node>, body: Bytes) -> ApiResult<SubmitReceipt> {
    let tx: SignedTx = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("transaction JSON: {e}")))?;
    Ok(Json(node.submit(tx).await?))
}

fn status_of(l: &Ledger, state_hash: Hash32) -> StatusView {
    StatusView {
        chain_id: l.state.chain_id,
        genesis_hash: l.genesis_hash,
        height: l.height,
        tip: l.tip,
        state_hash,
        epoch: l.state.epoch,
        beacon: l.state.beacon,
        sequencer: l.state.sequencer,
        supply: l.state.supply,
        burned: l.state.burned,
        params: l.state.params.clone(),
    }
}

async fn status(State(node): State<Node>) -> ApiResult<StatusView> {
    let view = node
        .shared
        .status
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Json(view))
}

type PlanCache = HashMap<(AccountId, u64), Arc<crate::audit::AuditPlan>>;

/// The plan cache; a poisoned cache is only a cache.
fn plan_cache(shared: &Shared) -> std::sync::MutexGuard<'_, PlanCache> {
    shared.plans.lock().unwrap_or_else(|p| p.into_inner())
}

/// The most plans kept; past it the cache starts over (each costs at most one recomputation).
const PLAN_CACHE: usize = 4096;

async fn account(State(node): State<Node>, Path(id): Path<String>) -> ApiResult<AccountView> {
    let id: AccountId = id.parse().map_err(ApiError::bad)?;
    node.with_ledger(|l| {
        l.state.account(&id).map(|a| AccountView {
            account: id,
            balance: a.balance,
            nonce: a.nonce,
            stake: a.stake,
            unbonding: a.unbonding.clone(),
            verifier: a.verifier,
            clean_audits: a.clean_audits,
            frauds: a.frauds,
        })
    })
    .map(Json)
    .ok_or_else(|| ApiError::not_found("unknown_account", TxError::UnknownAccount(id)))
}

async fn audit_plan(
    State(node): State<Node>,
    Path((provider, epoch)): Path<(String, u64)>,
) -> ApiResult<crate::audit::AuditPlan> {
    let provider: AccountId = provider.parse().map_err(ApiError::bad)?;
    if let Some(p) = plan_cache(&node.shared).get(&(provider, epoch)) {
        return Ok(Json((**p).clone()));
    }
    // Copy the inputs under the read lock; select the leaves outside it.
    let parts = node.with_ledger(|l| l.state.audit_plan_parts(&provider, epoch));
    let plan = tokio::task::spawn_blocking(move || parts.map(|p| p.plan()))
        .await
        .map_err(|e| ApiError::internal(format!("plan task: {e}")))?;
    if let Some(p) = &plan {
        let mut cache = plan_cache(&node.shared);
        if cache.len() >= PLAN_CACHE {
            cache.clear();
        }
        cache.insert((provider, epoch), Arc::new(p.clone()));
    }
    plan.map(Json).ok_or_else(|| {
        ApiError::not_found(
            "no_audit_plan",
            TxError::UnknownReceiptRoot { provider, epoch },
        )
    })
}

async fn channel(
    State(node): State<Node>,
    Path(id): Path<String>,
) -> ApiResult<crate::state::Channel> {
    let id: Hash32 = id.parse().map_err(ApiError::bad)?;
    node.with_ledger(|l| l.state.channel(&id).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown_channel", TxError::UnknownChannel(id)))
}

async fn tx_location(State(node): State<Node>, Path(id): Path<String>) -> ApiResult<TxLocation> {
    let tx_id: Hash32 = id.parse().map_err(ApiError::bad)?;
    let height = node.store().tx_height(&tx_id)?;
    height
        .map(|height| Json(TxLocation { tx_id, height }))
        .ok_or_else(|| {
            ApiError::not_found("unknown_tx", format!("no committed transaction {tx_id}"))
        })
}

async fn block(
    State(node): State<Node>,
    Path(height): Path<String>,
) -> ApiResult<crate::block::Block> {
    let h: u64 = height
        .parse()
        .map_err(|_| ApiError::bad("height must be an integer"))?;
    node.store()
        .block(h)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown_block", format!("no block {h}")))
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

async fn blocks(
    State(node): State<Node>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<crate::block::Block>> {
    let Query(q) = q.map_err(ApiError::bad)?;
    let limit = q
        .limit
        .unwrap_or(MAX_BLOCKS_PER_READ)
        .min(MAX_BLOCKS_PER_READ);
    Ok(Json(
        node.store().blocks(q.from.unwrap_or(1).max(1), limit)?,
    ))
}

async fn events(
    State(node): State<Node>,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<crate::store::BlockEvents>> {
    let Query(q) = q.map_err(ApiError::bad)?;
    let from = q.from.unwrap_or(1).max(1);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let mut rx = node.shared.height.subscribe();
    if *rx.borrow_and_update() < from && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, rx.wait_for(|h| *h >= from)).await;
    }
    let limit = q
        .limit
        .unwrap_or(MAX_BLOCKS_PER_READ)
        .min(MAX_BLOCKS_PER_READ);
    Ok(Json(node.store().events(from, limit)?))
}

/// Everything `agora ledger serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (port 0 picks one).
    pub listen: SocketAddr,
    /// The database file.
    pub db: PathBuf,
    /// Genesis for a new database (checked against an existing one).
    pub genesis: Option<Genesis>,
    /// The sequencer's key, to advance epochs.
    pub sequencer_key: Option<Keypair>,
    /// Sequencer batching.
    pub sequencer: SequencerConfig,
}

/// Runs a node until `shutdown`; `on_bound` gets the bound address once listening.
pub async fn run(
    cfg: ServeConfig,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::error::ServeError> {
    let node = Node::start(
        &cfg.db,
        cfg.genesis.as_ref(),
        cfg.sequencer_key,
        cfg.sequencer,
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "ledger API listening");
    on_bound(addr);
    node.serve(listener, shutdown).await?;
    Ok(())
}
