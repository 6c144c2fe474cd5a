//! `n` choices of one request: each is its own job on the network (its own provider,
//! receipt and charge), started after the first has found a model (trying the `models`
//! fallbacks in order), and their events merged into one stream tagged by choice index.

use super::{ApiError, App};
use crate::backend::{
    BackendError, Caller, FinishReason, Job, ReceiptRef, Started, StreamEvent, TokenLogprob, Usage,
};
use crate::keys::KeyRecord;
use crate::spend::Budget;
use axum::http::StatusCode;
use tokio::sync::mpsc::{self, Receiver};

/// A choice's event, or `None` when its job ended without finishing.
pub(super) type Tagged = (usize, Option<Result<StreamEvent, BackendError>>);

/// A finished choice.
#[derive(Debug, Clone)]
pub(super) struct Choice {
    /// Its whole text (empty when streamed: the pieces went out already).
    pub(super) text: String,
    /// Its tokens' log-probabilities, when asked for (empty when streamed).
    pub(super) logprobs: Vec<TokenLogprob>,
    pub(super) finish_reason: FinishReason,
    pub(super) usage: Usage,
    pub(super) receipts: Vec<ReceiptRef>,
}

/// What all choices together used and cost.
#[derive(Debug, Clone)]
pub(super) struct Totals {
    /// Summed over choices (each choice's prompt is charged, so it counts once per choice).
    pub(super) usage: Usage,
    /// Every receipt, choice by choice.
    pub(super) receipts: Vec<ReceiptRef>,
    /// The receipt that finished the first choice.
    pub(super) primary: Option<ReceiptRef>,
}

impl Totals {
    pub(super) fn of(done: &[Choice]) -> Totals {
        let mut usage = Usage::default();
        for c in done {
            usage.prompt_tokens = usage.prompt_tokens.saturating_add(c.usage.prompt_tokens);
            usage.completion_tokens = usage
                .completion_tokens
                .saturating_add(c.usage.completion_tokens);
            usage.total_tokens = usage.total_tokens.saturating_add(c.usage.total_tokens);
        }
        Totals {
            usage,
            receipts: done.iter().flat_map(|c| c.receipts.clone()).collect(),
            primary: done.first().and_then(|c| c.receipts.last().cloned()),
        }
    }
}

/// Whether another model of the `models` list may do better after this error.
fn falls_back(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::UnknownModel(_)
            | BackendError::NoCapacity(_)
            | BackendError::NoMatchingProvider(_)
            | BackendError::Upstream(_)
            | BackendError::ContextLengthExceeded(_)
    )
}

fn caller(app: &App, rec: &KeyRecord) -> Result<Caller, ApiError> {
    app.keys.caller(rec).map_err(|e| {
        tracing::error!(key = %rec.id, "no paying account for the key: {e}");
        ApiError::internal("The gateway failed to serve the request; try again.")
    })
}

/// Starts `n` choices of `job` for the key `rec`: `job.model`, then each of `fallbacks`,
/// until one is accepted; the other choices then run on that model. Choice i > 0 of a
/// seeded request uses seed + i, so the choices differ yet replay.
pub(super) async fn start(
    app: &App,
    rec: &KeyRecord,
    mut job: Job,
    n: u32,
    fallbacks: &[String],
    prompt_param: &str,
) -> Result<Vec<Started>, ApiError> {
    let models: Vec<String> = std::iter::once(job.model.clone())
        .chain(fallbacks.iter().cloned())
        .collect();
    if let Some(allowed) = &rec.policy.models {
        if let Some(m) = models.iter().find(|m| !allowed.contains(m)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("This API key may not use the model `{m}`."),
            )
            .param(if *m == job.model { "model" } else { "models" })
            .code("model_not_allowed"));
        }
    }
    job.budget = Some(Budget::of(app.keys.clone(), &rec.id));
    let mut first = None;
    let mut last_err = None;
    for m in &models {
        job.model = m.clone();
        match app.backend.start(caller(app, rec)?, job.clone()).await {
            Ok(s) => {
                first = Some(s);
                break;
            }
            Err(e) if falls_back(&e) => last_err = Some(e),
            Err(e) => return Err(ApiError::backend(&e, prompt_param)),
        }
    }
    let Some(first) = first else {
        let e = last_err.unwrap_or_else(|| BackendError::UnknownModel(job.model.clone()));
        return Err(ApiError::backend(&e, prompt_param));
    };
    let rest = (1..n).map(|i| {
        let mut j = job.clone();
        j.seed = j.seed.map(|s| s.wrapping_add(u64::from(i)));
        let c = caller(app, rec);
        async move {
            match c {
                Ok(c) => app
                    .backend
                    .start(c, j)
                    .await
                    .map_err(|e| ApiError::backend(&e, prompt_param)),
                Err(e) => Err(e),
            }
        }
    });
    let mut started = vec![first];
    for r in futures::future::join_all(rest).await {
        started.push(r?);
    }
    Ok(started)
}

/// One receiver for all choices' events, tagged by index. Each choice's end without a
/// `Finished` arrives as `(i, None)`. Dropping the merged receiver drops every job's
/// receiver at its next event, which cancels them.
pub(super) fn merge(
    receivers: Vec<Receiver<Result<StreamEvent, BackendError>>>,
) -> Receiver<Tagged> {
    let (tx, rx) = mpsc::channel(64);
    for (i, mut r) in receivers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let ev = r.recv().await;
                let end = matches!(
                    ev,
                    None | Some(Ok(StreamEvent::Finished { .. })) | Some(Err(_))
                );
                if tx.send((i, ev)).await.is_err() || end {
                    return;
                }
            }
        });
    }
    rx
}

/// Waits for every choice to finish, gathering its text and log-probabilities; the first
/// error ends it.
pub(super) async fn collect(
    mut events: Receiver<Tagged>,
    n: usize,
) -> Result<Vec<Choice>, BackendError> {
    let mut texts = vec![String::new(); n];
    let mut logprobs: Vec<Vec<TokenLogprob>> = vec![vec![]; n];
    let mut done: Vec<Option<Choice>> = vec![None; n];
    while done.iter().any(Option::is_none) {
        match events.recv().await {
            Some((i, Some(Ok(StreamEvent::Text(t))))) => {
                if let Some(s) = texts.get_mut(i) {
                    s.push_str(&t);
                }
            }
            Some((i, Some(Ok(StreamEvent::Logprob(l))))) => {
                if let Some(v) = logprobs.get_mut(i) {
                    v.push(l);
                }
            }
            Some((
                i,
                Some(Ok(StreamEvent::Finished {
                    finish_reason,
                    usage,
                    receipts,
                })),
            )) => {
                if let Some(slot) = done.get_mut(i) {
                    *slot = Some(Choice {
                        text: std::mem::take(&mut texts[i]),
                        logprobs: std::mem::take(&mut logprobs[i]),
                        finish_reason,
                        usage,
                        receipts,
                    });
                }
            }
            Some((_, Some(Err(e)))) => return Err(e),
            Some((_, None)) | None => return Err(super::ended_early()),
        }
    }
    Ok(done.into_iter().flatten().collect())
}
