//! A [`Backend`] wrapper that watches every answer the gateway serves: it records the gateway's
//! metrics (jobs, tokens, time to first token, per-token latency, charges) and keeps a bounded
//! log of recent answers and their receipts for the explorer's lookups.

use agora_gateway::{Backend, BackendError, Caller, Job, ReceiptRef, Started, StreamEvent};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Answers kept for lookups.
pub const REQUEST_LOG: usize = 10_000;

/// One answer the gateway served.
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// The network's request id.
    pub request_id: String,
    /// The API key's id (`key_...`), never its secret.
    pub key_id: String,
    /// The model name served.
    pub model: String,
    /// Unix ms at arrival.
    pub at_ms: u64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Receipts behind it.
    pub receipts: Vec<ReceiptRef>,
    /// Time to the first text, ms.
    pub first_token_ms: Option<u64>,
    /// Time to the end, ms.
    pub total_ms: u64,
    /// `completed` or `failed`.
    pub outcome: &'static str,
}

/// The recent answers.
#[derive(Debug)]
pub struct RequestLog {
    rows: Mutex<VecDeque<RequestRow>>,
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            rows: Mutex::new(VecDeque::new()),
            version: tokio::sync::watch::channel(0).0,
        }
    }
}

impl RequestLog {
    /// An empty log.
    pub fn new() -> RequestLog {
        RequestLog::default()
    }

    /// Changes each time an answer is added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RequestRow>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an answer.
    pub fn push(&self, row: RequestRow) {
        let mut rows = self.lock();
        rows.push_back(row);
        while rows.len() > REQUEST_LOG {
            rows.pop_front();
        }
        drop(rows);
        self.version.send_modify(|n| *n += 1);
    }

    /// The most recent `n`, newest first.
    pub fn recent(&self, n: usize) -> Vec<RequestRow> {
        self.lock().iter().rev().take(n).cloned().collect()
    }

    /// Every answer kept, oldest first.
    pub fn all(&self) -> Vec<RequestRow> {
        self.lock().iter().cloned().collect()
    }

    /// The answer with this request id, or whose receipts include this receipt hash.
    pub fn find(&self, id: &str) -> Option<RequestRow> {
        self.lock()
            .iter()
            .rev()
            .find(|r| r.request_id == id || r.receipts.iter().any(|x| x.receipt == id))
            .cloned()
    }

    /// The answers paid by this API key id, newest first.
    pub fn by_key(&self, key_id: &str) -> Vec<RequestRow> {
        self.lock()
            .iter()
            .rev()
            .filter(|r| r.key_id == key_id)
            .cloned()
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refusal(e: &BackendError) -> &'static str {
    match e {
        BackendError::UnknownModel(_) => "unknown_model",
        BackendError::InvalidRequest { .. } => "invalid_request",
        BackendError::ContextLengthExceeded(_) => "context_length_exceeded",
        BackendError::InsufficientCredit(_) => "insufficient_quota",
        BackendError::NoCapacity(_) => "no_capacity",
        BackendError::BudgetExceeded(_) => "budget_exceeded",
        BackendError::NoMatchingProvider(_) => "no_matching_provider",
        BackendError::Upstream(_) => "upstream",
        BackendError::Internal(_) => "internal",
    }
}

/// The gateway's backend, watched.
pub struct Tapped {
    inner: Arc<dyn Backend>,
    log: Arc<RequestLog>,
}

impl Tapped {
    /// Wraps `inner`; answers go to `log`.
    pub fn new(inner: Arc<dyn Backend>, log: Arc<RequestLog>) -> Tapped {
        agora_metrics::gateway();
        Tapped { inner, log }
    }
}

/// Decrements the in-flight gauge however the forwarding task ends.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        agora_metrics::gateway().in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        agora_metrics::gateway().in_flight.dec();
    }
}

impl Backend for Tapped {
    fn models(&self) -> Vec<agora_gateway::ModelInfo> {
        self.inner.models()
    }

    fn start(&self, caller: Caller, job: Job) -> BoxFuture<'static, Result<Started, BackendError>> {
        let arrived = Instant::now();
        let at_ms = now_ms();
        let key_id = caller.key_id.clone();
        let fut = self.inner.start(caller, job);
        let log = self.log.clone();
        Box::pin(async move {
            let m = agora_metrics::gateway();
            let mut started = match fut.await {
                Ok(s) => s,
                Err(e) => {
                    m.jobs
                        .get_or_create(&agora_metrics::families::label("outcome", refusal(&e)))
                        .inc();
                    return Err(e);
                }
            };
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let mut inner = std::mem::replace(&mut started.events, rx);
            let mut row = RequestRow {
                request_id: started.request_id.clone(),
                key_id,
                model: started.model.clone(),
                at_ms,
                prompt_tokens: started.prompt_tokens,
                completion_tokens: 0,
                receipts: Vec::new(),
                first_token_ms: None,
                total_ms: 0,
                outcome: "failed",
            };
            tokio::spawn(async move {
                let _flight = InFlight::start();
                let mut first: Option<Instant> = None;
                let mut last = arrived;
                while let Some(ev) = inner.recv().await {
                    match &ev {
                        Ok(StreamEvent::Text(t)) if !t.is_empty() => {
                            last = Instant::now();
                            if first.is_none() {
                                first = Some(last);
                                m.time_to_first_token
                                    .observe((last - arrived).as_secs_f64());
                                row.first_token_ms = Some((last - arrived).as_millis() as u64);
                            }
                        }
                        Ok(StreamEvent::Finished {
                            usage, receipts, ..
                        }) => {
                            row.outcome = "completed";
                            row.prompt_tokens = usage.prompt_tokens;
                            row.completion_tokens = usage.completion_tokens;
                            row.receipts = receipts.clone();
                            m.tokens_in.inc_by(u64::from(usage.prompt_tokens));
                            m.tokens_out.inc_by(u64::from(usage.completion_tokens));
                            m.receipts.inc_by(receipts.len() as u64);
                            let charged: u128 = receipts
                                .iter()
                                .filter_map(|r| r.charged.parse::<u128>().ok())
                                .fold(0, u128::saturating_add);
                            m.charged.inc_by(agora_metrics::amount_counter(charged));
                            if let Some(f) = first {
                                if usage.completion_tokens > 1 {
                                    let per = (last - f).as_secs_f64()
                                        / f64::from(usage.completion_tokens - 1);
                                    m.token_latency.observe(per);
                                }
                            }
                        }
                        _ => {}
                    }
                    if tx.send(ev).await.is_err() {
                        // The client went away: dropping `inner` cancels the job.
                        break;
                    }
                }
                row.total_ms = arrived.elapsed().as_millis() as u64;
                m.jobs
                    .get_or_create(&agora_metrics::families::label("outcome", row.outcome))
                    .inc();
                log.push(row);
            });
            Ok(started)
        })
    }
}
