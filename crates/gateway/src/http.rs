//! The OpenAI-compatible HTTP face: routes, request validation, whole and streamed (SSE)
//! responses, and OpenAI-shaped errors.
//!
//! Every response that is not a success is `{"error":{"message","type","param","code"}}` with
//! the status OpenAI would use, including unknown routes, wrong methods, unreadable bodies and
//! oversized bodies, so any OpenAI client raises its usual exception classes. See
//! `docs/gateway.md` for the table.

mod anthropic;
mod choices;
mod keys_api;
mod usage;

use crate::backend::{
    Backend, BackendError, ChatMessage, FinishReason, Job, Prompt, ReceiptRef, StreamEvent, Usage,
};
use crate::keys::{KeyError, KeyRecord, KeyStore};
use crate::models::model_object;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::Receiver;

/// Request limits, so one client cannot make the gateway buffer or generate without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest prompt text (all message contents), bytes (400 `context_length_exceeded` above).
    pub max_prompt_bytes: usize,
    /// Largest `max_tokens` a client may ask for.
    pub max_tokens: u32,
    /// `max_tokens` for chat when the client gives none (`/v1/completions` uses 16, like OpenAI).
    pub default_max_tokens: u32,
    /// Per-key request rate and concurrency (429 `rate_limit_exceeded` above).
    pub per_key: crate::limit::KeyLimits,
    /// Most choices (`n`) one request may ask for.
    pub max_n: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_prompt_bytes: 64 * 1024,
            max_tokens: 4096,
            default_max_tokens: 256,
            per_key: crate::limit::KeyLimits::default(),
            max_n: 8,
        }
    }
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

struct App {
    backend: Arc<dyn Backend>,
    keys: Arc<KeyStore>,
    limits: Limits,
    limiter: crate::limit::Limiter,
}

type AppState = State<Arc<App>>;

/// The gateway's routes, with OpenAI-shaped errors and one log line per request.
pub fn router(backend: Arc<dyn Backend>, keys: Arc<KeyStore>, limits: Limits) -> Router {
    let app = Arc::new(App {
        backend,
        keys,
        limiter: crate::limit::Limiter::new(limits.per_key),
        limits,
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/receipts/{id}", get(usage::get_receipt))
        .route("/v1/key", get(keys_api::get_key))
        .route("/v1/keys", post(keys_api::create_key))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_requests))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish.
/// Sets `TCP_NODELAY` so streamed tokens leave at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI-shaped error response.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    /// Seconds for `Retry-After` (429 rate limits).
    retry_after: Option<u64>,
}

const INVALID: &str = "invalid_request_error";

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 429 `rate_limit_exceeded` with `Retry-After`.
    fn rate_limited(l: crate::limit::Limited) -> ApiError {
        let message = if l.concurrency {
            "Too many concurrent requests for this API key; retry when one finishes."
        } else {
            "Rate limit reached for requests with this API key; retry after the given delay."
        };
        ApiError {
            retry_after: Some(l.retry_after_s.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
                .code("rate_limit_exceeded")
        }
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, INVALID, message)
    }

    pub(crate) fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub(crate) fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            .code("internal_error")
    }

    /// The error a backend failure becomes; `prompt_param` names the prompt field
    /// (`messages` or `prompt`) for context-length errors.
    fn backend(e: &BackendError, prompt_param: &str) -> ApiError {
        let message = e.to_string();
        match e {
            BackendError::UnknownModel(_) => {
                ApiError::new(StatusCode::NOT_FOUND, INVALID, message).code("model_not_found")
            }
            BackendError::InvalidRequest { param, .. } => ApiError {
                param: param.clone(),
                ..ApiError::invalid(message)
            },
            BackendError::ContextLengthExceeded(_) => ApiError::invalid(message)
                .param(prompt_param)
                .code("context_length_exceeded"),
            BackendError::InsufficientCredit(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
                    .code("insufficient_quota")
            }
            BackendError::BudgetExceeded(_) => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_quota", message)
                    .code("budget_exceeded")
            }
            BackendError::NoMatchingProvider(_) => {
                ApiError::new(StatusCode::NOT_FOUND, INVALID, message).code("no_matching_provider")
            }
            BackendError::NoCapacity(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
                    .code("no_capacity")
            }
            // Provider and ledger words stay in the log: a provider could otherwise write
            // into every client's error, and a ledger's reveal its internals.
            BackendError::Upstream(_) => {
                tracing::warn!("upstream failure: {message}");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "server_error",
                    "The network's providers could not complete the answer; try again.",
                )
                .code("upstream_error")
            }
            BackendError::Internal(_) => {
                tracing::error!("internal failure: {message}");
                ApiError::internal("The gateway failed to serve the request; try again.")
            }
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body());
        let h = resp.headers_mut();
        match self.code {
            // Retrying cannot help until the account is funded; tell OpenAI clients not to.
            Some("insufficient_quota") | Some("budget_exceeded") => {
                h.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            Some("no_capacity") => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(v) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        resp
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Logging

/// What a handler tells the logging middleware about its request.
#[derive(Debug, Clone, Default)]
struct LogInfo {
    key_id: Option<String>,
    model: Option<String>,
    usage: Option<Usage>,
}

/// Marks a streamed response: its body logs the line when the stream ends.
#[derive(Debug, Clone, Copy)]
struct LoggedByStream;

/// When the request arrived (set by the middleware, read by streaming handlers).
#[derive(Debug, Clone, Copy)]
struct Arrived(Instant);

fn log_line(method: &str, path: &str, status: u16, info: &LogInfo, start: Instant, outcome: &str) {
    let usage = info.usage.unwrap_or_default();
    tracing::info!(
        method,
        path,
        status,
        key = info.key_id.as_deref().unwrap_or("-"),
        model = info.model.as_deref().unwrap_or("-"),
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        outcome,
        "request"
    );
}

async fn log_requests(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(Arrived(start));
    let mut resp = next.run(req).await;
    if resp.extensions().get::<LoggedByStream>().is_none() {
        let info = resp
            .extensions_mut()
            .remove::<LogInfo>()
            .unwrap_or_default();
        log_line(
            method.as_str(),
            &path,
            resp.status().as_u16(),
            &info,
            start,
            "done",
        );
    }
    resp
}

fn with_log(mut resp: Response, info: LogInfo) -> Response {
    resp.extensions_mut().insert(info);
    resp
}

// ---------------------------------------------------------------------------------------------
// Plain routes

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        INVALID,
        format!("Invalid URL ({method} {})", uri.path()),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        INVALID,
        format!("Method {method} is not allowed for {}", uri.path()),
    )
    .code("method_not_allowed")
    .into_response()
}

/// Masks a presented secret the way OpenAI does: first 5 and last 4 characters.
fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".to_string();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

fn auth_error(message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, INVALID, message).code("invalid_api_key")
}

/// Checks `Authorization: Bearer <secret>` against the key store.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<KeyRecord, ApiError> {
    // Anthropic's clients send the key as `x-api-key`.
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if let (None, Some(secret)) = (headers.get(header::AUTHORIZATION), x_api_key) {
        return check_secret(app, secret.trim());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(auth_error(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .to_string(),
        ));
    };
    let Ok(value) = value.to_str() else {
        return Err(auth_error("Incorrect API key provided: ****.".to_string()));
    };
    let value = value.trim();
    let secret = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => {
            return Err(auth_error(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                    .to_string(),
            ))
        }
    };
    check_secret(app, secret)
}

fn check_secret(app: &App, secret: &str) -> Result<KeyRecord, ApiError> {
    match app.keys.authenticate(secret) {
        Ok(rec) => Ok(rec),
        Err(KeyError::Revoked(_)) => Err(auth_error(format!(
            "The API key {} has been revoked.",
            mask(secret)
        ))),
        Err(KeyError::UnknownSecret) => Err(auth_error(format!(
            "Incorrect API key provided: {}.",
            mask(secret)
        ))),
        Err(KeyError::Expired(_)) => Err(auth_error(format!(
            "The API key {} has expired.",
            mask(secret)
        ))),
        Err(e) => {
            tracing::error!(error = %e, "key store failure");
            Err(ApiError::internal("The key store failed; try again."))
        }
    }
}

async fn list_models(State(app): AppState, headers: HeaderMap) -> Response {
    let rec = match authenticate(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let data: Vec<Value> = app.backend.models().iter().map(model_object).collect();
    with_log(
        json_response(StatusCode::OK, &json!({"object": "list", "data": data})),
        LogInfo {
            key_id: Some(rec.id),
            ..LogInfo::default()
        },
    )
}

async fn get_model(
    State(app): AppState,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let rec = match authenticate(&app, &headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let info = LogInfo {
        key_id: Some(rec.id),
        ..LogInfo::default()
    };
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => {
            return with_log(
                ApiError::invalid(format!("Invalid model id in the path: {e}")).into_response(),
                info,
            )
        }
    };
    let info = LogInfo {
        model: Some(id.clone()),
        ..info
    };
    let found = app
        .backend
        .models()
        .into_iter()
        .find(|m| m.id == id || m.model_id == id);
    let resp = match found {
        Some(m) => json_response(StatusCode::OK, &model_object(&m)),
        None => ApiError::backend(&BackendError::UnknownModel(id), "model").into_response(),
    };
    with_log(resp, info)
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// Reads the body, at most `limit` bytes (413 above).
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            format!("The request body is too large; this gateway accepts at most {limit} bytes."),
        )
        .code("request_too_large")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
        Err(e) => Err(ApiError::invalid(format!(
            "We could not parse the JSON body of your request ({e}). The API expects a JSON \
             object in the request body."
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        type_name(got)
    ))
    .param(param)
    .code("invalid_type")
}

/// Typed access to a request object's fields; JSON `null` counts as absent.
pub(crate) struct Fields<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(k, "a string", v)),
        }
    }

    pub(crate) fn boolean(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(k, "a boolean", v)),
        }
    }

    fn number(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(wrong_type(k, "a decimal", v)),
        }
    }

    /// An integer as i128 (covers every JSON integer serde_json reads).
    pub(crate) fn integer(&self, k: &str) -> Result<Option<i128>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(u) = n.as_u64() {
                    Ok(Some(i128::from(u)))
                } else if let Some(i) = n.as_i64() {
                    Ok(Some(i128::from(i)))
                } else {
                    Err(wrong_type(k, "an integer", &Value::Number(n.clone())))
                }
            }
            Some(v) => Err(wrong_type(k, "an integer", v)),
        }
    }
}

/// The options shared by chat and text completions.
struct Common {
    model: String,
    max_tokens: u32,
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    /// Choices to generate, each its own job, receipt and charge.
    n: u32,
    /// The `provider` object.
    routing: crate::routing::ProviderPrefs,
    /// The `models` fallback list, tried in order after `model`.
    fallbacks: Vec<String>,
    /// Logprobs, response format, tools.
    extras: crate::extras::Extras,
}

fn routing_error(e: crate::routing::RoutingError) -> ApiError {
    ApiError::invalid(e.message)
        .param(e.param)
        .code("invalid_value")
}

fn parse_common(
    f: &Fields<'_>,
    limits: &Limits,
    default_max_tokens: u32,
) -> Result<Common, ApiError> {
    let model = match f.string("model")? {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => {
            return Err(ApiError::invalid("you must provide a model parameter")
                .param("model")
                .code("missing_required_parameter"))
        }
    };

    // max_completion_tokens supersedes max_tokens, as in OpenAI's chat API.
    let (mt_param, mt) = match f.integer("max_completion_tokens")? {
        Some(v) => ("max_completion_tokens", Some(v)),
        None => ("max_tokens", f.integer("max_tokens")?),
    };
    let max_tokens = match mt {
        None => default_max_tokens.min(limits.max_tokens),
        Some(v) if v < 1 => {
            return Err(ApiError::invalid(format!(
                "Invalid '{mt_param}': integer below minimum value. Expected a value >= 1, \
                 but got {v} instead."
            ))
            .param(mt_param)
            .code("integer_below_min_value"))
        }
        Some(v) if v > i128::from(limits.max_tokens) => {
            return Err(ApiError::invalid(format!(
                "Invalid '{mt_param}': integer above maximum value. This gateway allows at \
                 most {} tokens per request, but got {v}.",
                limits.max_tokens
            ))
            .param(mt_param)
            .code("integer_above_max_value"))
        }
        Some(v) => u32::try_from(v).unwrap_or(limits.max_tokens),
    };

    let temperature = match f.number("temperature")? {
        None => 1.0,
        Some(t) if !(0.0..=2.0).contains(&t) => {
            return Err(ApiError::invalid(format!(
                "Invalid 'temperature': expected a value in [0, 2], but got {t} instead."
            ))
            .param("temperature")
            .code("invalid_value"))
        }
        Some(t) => t as f32,
    };
    let top_p = match f.number("top_p")? {
        None => 1.0,
        Some(p) if !(p > 0.0 && p <= 1.0) => {
            return Err(ApiError::invalid(format!(
                "Invalid 'top_p': expected a value in (0, 1], but got {p} instead."
            ))
            .param("top_p")
            .code("invalid_value"))
        }
        Some(p) => p as f32,
    };
    // OpenAI seeds are signed 64-bit; negative ones keep their bits.
    let seed = match f.integer("seed")? {
        None => None,
        Some(s) => match (u64::try_from(s), i64::try_from(s)) {
            (Ok(u), _) => Some(u),
            (_, Ok(i)) => Some(i as u64),
            _ => {
                return Err(
                    ApiError::invalid("Invalid 'seed': out of the 64-bit range.")
                        .param("seed")
                        .code("invalid_value"),
                )
            }
        },
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > 4 {
                return Err(ApiError::invalid(format!(
                    "Invalid 'stop': array too long. Expected an array with maximum length 4, \
                     but got an array with length {} instead.",
                    items.len()
                ))
                .param("stop")
                .code("array_above_max_length"));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    v => return Err(wrong_type(&format!("stop[{i}]"), "a string", v)),
                }
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();

    let n = match f.integer("n")? {
        None => 1,
        Some(v) if v < 1 => {
            return Err(ApiError::invalid(format!(
                "Invalid 'n': integer below minimum value. Expected a value >= 1, but got {v} \
                 instead."
            ))
            .param("n")
            .code("integer_below_min_value"))
        }
        Some(v) if v > i128::from(limits.max_n) => {
            return Err(ApiError::invalid(format!(
                "Invalid 'n': integer above maximum value. This gateway returns at most {} \
                 choices per request, but got {v}.",
                limits.max_n
            ))
            .param("n")
            .code("integer_above_max_value"))
        }
        Some(v) => u32::try_from(v).unwrap_or(1),
    };
    let routing = crate::routing::parse_provider(f.get("provider")).map_err(routing_error)?;
    let fallbacks = crate::routing::parse_models(f.get("models")).map_err(routing_error)?;

    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                )
                .param("stream_options")
                .code("invalid_value"));
            }
            let o = Fields(o);
            match o.get("include_usage") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(wrong_type("stream_options.include_usage", "a boolean", v)),
            }
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };

    Ok(Common {
        model,
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        stream,
        include_usage,
        n,
        routing,
        fallbacks,
        extras: Default::default(),
    })
}

pub(crate) fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::invalid(format!(
        "'{param}' is not supported by this gateway: {what}."
    ))
    .param(param)
    .code("unsupported_parameter")
}

fn prompt_too_long(param: &str, bytes: usize, limit: usize) -> ApiError {
    ApiError::invalid(format!(
        "This gateway accepts prompts of at most {limit} bytes. However, your {param} came to \
         {bytes} bytes. Please reduce the length of the {param}."
    ))
    .param(param)
    .code("context_length_exceeded")
}

fn message_content(i: usize, msg: &Fields<'_>, role: &str) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match msg.get("content") {
        None if role == "assistant" => Ok(String::new()),
        None => Err(
            ApiError::invalid(format!("Missing required parameter: '{param}'."))
                .param(param)
                .code("missing_required_parameter"),
        ),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                let Value::Object(p) = part else {
                    return Err(wrong_type(&pp, "an object", part));
                };
                let p = Fields(p);
                match p.get("type") {
                    Some(Value::String(t)) if t == "text" => {}
                    Some(Value::String(t)) => {
                        return Err(ApiError::invalid(format!(
                            "Invalid value: '{t}'. This gateway supports only 'text' content parts."
                        ))
                        .param(format!("{pp}.type"))
                        .code("invalid_value"))
                    }
                    Some(v) => return Err(wrong_type(&format!("{pp}.type"), "a string", v)),
                    None => {
                        return Err(ApiError::invalid(format!(
                            "Missing required parameter: '{pp}.type'."
                        ))
                        .param(format!("{pp}.type"))
                        .code("missing_required_parameter"))
                    }
                }
                match p.get("text") {
                    Some(Value::String(s)) => texts.push(s.as_str()),
                    Some(v) => return Err(wrong_type(&format!("{pp}.text"), "a string", v)),
                    None => {
                        return Err(ApiError::invalid(format!(
                            "Missing required parameter: '{pp}.text'."
                        ))
                        .param(format!("{pp}.text"))
                        .code("missing_required_parameter"))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(v) => Err(wrong_type(
            &param,
            "a string or an array of content parts",
            v,
        )),
    }
}

fn parse_chat(body: &Map<String, Value>, limits: &Limits) -> Result<(Job, Common), ApiError> {
    let f = Fields(body);
    let messages = match f.get("messages") {
        None => {
            return Err(ApiError::invalid("Missing required parameter: 'messages'.")
                .param("messages")
                .code("missing_required_parameter"))
        }
        Some(Value::Array(m)) => m,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got \
             an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }
    let mut out = Vec::with_capacity(messages.len());
    let mut bytes = 0usize;
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong_type(&format!("messages[{i}]"), "an object", m));
        };
        let m = Fields(m);
        let rparam = format!("messages[{i}].role");
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(v) => return Err(wrong_type(&rparam, "a string", v)),
            None => {
                return Err(
                    ApiError::invalid(format!("Missing required parameter: '{rparam}'."))
                        .param(rparam)
                        .code("missing_required_parameter"),
                )
            }
        };
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            // The newer name for system instructions.
            "developer" => "system",
            other => {
                return Err(ApiError::invalid(format!(
                    "Invalid value: '{other}'. Supported values are: 'system', 'user', \
                     'assistant', 'tool' and 'developer'."
                ))
                .param(rparam)
                .code("invalid_value"))
            }
        };
        let content = message_content(i, &m, role)?;
        let content = crate::tools::message_extra(i, &m, role, &content)?.unwrap_or(content);
        bytes = bytes.saturating_add(content.len());
        if bytes > limits.max_prompt_bytes {
            return Err(prompt_too_long("messages", bytes, limits.max_prompt_bytes));
        }
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }

    let extras = crate::extras::parse_chat(&f, &mut out, limits.max_prompt_bytes)?;
    let mut common = parse_common(&f, limits, limits.default_max_tokens)?;
    let job = Job {
        model: common.model.clone(),
        prompt: Prompt::Chat(out),
        max_tokens: common.max_tokens,
        temperature: common.temperature,
        top_p: common.top_p,
        seed: common.seed,
        stop: common.stop.clone(),
        routing: common.routing.clone(),
        budget: None,
        constraint: extras.constraint(),
        top_logprobs: extras.logprobs,
        tools: extras.uses_tools(),
    };
    common.extras = extras;
    Ok((job, common))
}

fn parse_completion(body: &Map<String, Value>, limits: &Limits) -> Result<(Job, Common), ApiError> {
    let f = Fields(body);
    let prompt = match f.get("prompt") {
        None => {
            return Err(ApiError::invalid("Missing required parameter: 'prompt'.")
                .param("prompt")
                .code("missing_required_parameter"))
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => s.clone(),
            [] => {
                return Err(ApiError::invalid("Invalid 'prompt': empty array.")
                    .param("prompt")
                    .code("empty_array"))
            }
            [Value::String(_), ..] => {
                return Err(unsupported(
                    "prompt",
                    "send one prompt per request (batched prompts are not available)",
                ))
            }
            _ => {
                return Err(unsupported(
                    "prompt",
                    "give the prompt as text (token-id prompts are not available)",
                ))
            }
        },
        Some(v) => return Err(wrong_type("prompt", "a string", v)),
    };
    if prompt.is_empty() {
        return Err(
            ApiError::invalid("Invalid 'prompt': the prompt must not be empty.")
                .param("prompt")
                .code("invalid_value"),
        );
    }
    if prompt.len() > limits.max_prompt_bytes {
        return Err(prompt_too_long(
            "prompt",
            prompt.len(),
            limits.max_prompt_bytes,
        ));
    }
    if f.boolean("echo")? == Some(true) {
        return Err(unsupported("echo", "the prompt is not echoed"));
    }
    let extras = crate::extras::parse_completion(&f)?;
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("suffix", "insertion is not available"));
    }
    if f.integer("best_of")?.is_some_and(|n| n != 1) {
        return Err(unsupported(
            "best_of",
            "one candidate is generated per request",
        ));
    }
    let mut common = parse_common(&f, limits, COMPLETIONS_DEFAULT_MAX_TOKENS)?;
    let job = Job {
        model: common.model.clone(),
        prompt: Prompt::Text(prompt),
        max_tokens: common.max_tokens,
        temperature: common.temperature,
        top_p: common.top_p,
        seed: common.seed,
        stop: common.stop.clone(),
        routing: common.routing.clone(),
        budget: None,
        constraint: None,
        top_logprobs: extras.logprobs,
        tools: false,
    };
    common.extras = extras;
    Ok((job, common))
}

// ---------------------------------------------------------------------------------------------
// Completions

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Text => "/v1/completions",
        }
    }
    fn prompt_param(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Text => "prompt",
        }
    }
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl-",
            Kind::Text => "cmpl-",
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat_completions(State(app): AppState, req: Request) -> Response {
    complete(app, req, Kind::Chat).await
}

async fn completions(State(app): AppState, req: Request) -> Response {
    complete(app, req, Kind::Text).await
}

async fn complete(app: Arc<App>, req: Request, kind: Kind) -> Response {
    let start = req
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |a| a.0);
    let mut info = LogInfo::default();
    let rec = match authenticate(&app, req.headers()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    info.key_id = Some(rec.id.clone());
    // Held until the answer ends (the streamed body owns it).
    let permit = match app
        .limiter
        .admit_key(&rec.id, rec.policy.requests_per_minute)
    {
        Ok(p) => p,
        Err(l) => return with_log(ApiError::rate_limited(l).into_response(), info),
    };
    let bytes = match read_body(req, app.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return with_log(e.into_response(), info),
    };
    let parsed = parse_object(&bytes).and_then(|body| match kind {
        Kind::Chat => parse_chat(&body, &app.limits),
        Kind::Text => parse_completion(&body, &app.limits),
    });
    let (job, mut opts) = match parsed {
        Ok(p) => p,
        Err(e) => return with_log(e.into_response(), info),
    };
    info.model = Some(job.model.clone());
    // Each further choice is a job of its own: it takes a request and a slot too.
    let mut permits = vec![permit];
    for _ in 1..opts.n {
        match app
            .limiter
            .admit_key(&rec.id, rec.policy.requests_per_minute)
        {
            Ok(p) => permits.push(p),
            Err(l) => return with_log(ApiError::rate_limited(l).into_response(), info),
        }
    }
    let started = match choices::start(
        &app,
        &rec,
        job,
        opts.n,
        &opts.fallbacks,
        kind.prompt_param(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return with_log(e.into_response(), info),
    };
    let request_ids: Vec<String> = started.iter().map(|s| s.request_id.clone()).collect();
    let model = started.first().map(|s| s.model.clone()).unwrap_or_default();
    let meta = Meta {
        kind,
        id: format!("{}{}", kind.id_prefix(), request_ids[0]),
        created: unix_now(),
        model,
        request_id: request_ids[0].clone(),
        request_ids,
        include_usage: opts.include_usage,
        keys: app.keys.clone(),
        key_id: rec.id.clone(),
        extras: std::mem::take(&mut opts.extras),
        _permits: permits,
    };
    let n = started.len();
    let events = choices::merge(started.into_iter().map(|s| s.events).collect());
    let request_id = HeaderValue::from_str(&meta.request_id).ok();
    let mut resp = if opts.stream {
        let log = StreamLog {
            path: kind.path(),
            start,
            info,
            outcome: "client disconnected",
            status: 200,
        };
        stream_response(meta, events, n, log)
    } else {
        whole_response(meta, events, n, info).await
    };
    if let Some(v) = request_id {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// What every response object of one request shares.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// The first choice's request id (the response id is built from it).
    request_id: String,
    /// One per choice.
    request_ids: Vec<String>,
    include_usage: bool,
    /// Where the answer's signed receipts are kept for `GET /v1/receipts/{id}`.
    keys: Arc<KeyStore>,
    /// The paying key.
    key_id: String,
    /// Logprobs, response format, tools: how they shape each choice's answer.
    extras: crate::extras::Extras,
    /// The key's concurrency slots (one per choice), freed when the answer's body is done.
    _permits: Vec<crate::limit::Permit>,
}

impl Meta {
    fn agora(&self, receipts: &[ReceiptRef]) -> Value {
        let mut v = json!({"request_id": self.request_id, "receipts": receipts});
        if self.request_ids.len() > 1 {
            v["request_ids"] = json!(self.request_ids);
        }
        v
    }
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

async fn whole_response(
    meta: Meta,
    events: Receiver<choices::Tagged>,
    n: usize,
    mut info: LogInfo,
) -> Response {
    let done = match choices::collect(events, n).await {
        Ok(d) => d,
        Err(e) => {
            return with_log(
                ApiError::backend(&e, meta.kind.prompt_param()).into_response(),
                info,
            )
        }
    };
    let totals = choices::Totals::of(&done);
    usage::save_receipts(&meta.keys, &meta.key_id, &totals.receipts);
    info.usage = Some(totals.usage);
    let mut choices: Vec<Value> = Vec::with_capacity(done.len());
    for (index, c) in done.iter().enumerate() {
        let request_id = meta
            .request_ids
            .get(index)
            .unwrap_or(&meta.request_id)
            .as_str();
        match crate::extras::whole_choice(
            &meta.extras,
            meta.kind == Kind::Chat,
            index,
            &c.text,
            c.finish_reason,
            &c.logprobs,
            request_id,
        ) {
            Ok(v) => choices.push(v),
            Err(why) => {
                tracing::warn!(%request_id, "answer broke its constraint: {why}");
                return with_log(
                    ApiError::backend(&BackendError::Upstream(why), meta.kind.prompt_param())
                        .into_response(),
                    info,
                );
            }
        }
    }
    let object = match meta.kind {
        Kind::Chat => "chat.completion",
        Kind::Text => "text_completion",
    };
    let body = json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage::usage_json(&totals),
        "system_fingerprint": null,
        "agora": meta.agora(&totals.receipts),
    });
    with_log(json_response(StatusCode::OK, &body), info)
}

fn ended_early() -> BackendError {
    BackendError::Upstream("The network ended the answer before it finished.".to_string())
}

/// Logs a streamed request's line when its body ends, however it ends (finished, failed, or
/// dropped because the client went away).
struct StreamLog {
    path: &'static str,
    start: Instant,
    info: LogInfo,
    outcome: &'static str,
    status: u16,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        log_line(
            "POST",
            self.path,
            self.status,
            &self.info,
            self.start,
            self.outcome,
        );
    }
}

struct SseState {
    meta: Meta,
    events: Receiver<choices::Tagged>,
    log: StreamLog,
    /// Role chunks still to send (chat only).
    first: bool,
    done: bool,
    /// Each choice's end, once it came.
    finished: Vec<Option<choices::Choice>>,
    /// Each choice's logprobs, held tool calls and format check.
    extra: Vec<crate::extras::StreamExtras>,
}

fn push_frame(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

impl SseState {
    fn chunk(&self, choices: Value) -> Value {
        let object = match self.meta.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        let mut v = json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.meta.include_usage {
            if let Value::Object(m) = &mut v {
                m.insert("usage".into(), Value::Null);
            }
        }
        v
    }

    fn choice(&self, index: usize, text: Option<&str>, finish: Option<FinishReason>) -> Value {
        self.choice_str(index, text, finish.map(finish_str))
    }

    fn choice_str(&self, index: usize, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.meta.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
            Kind::Text => json!([{
                "text": text.unwrap_or(""),
                "index": index,
                "logprobs": null,
                "finish_reason": finish,
            }]),
        }
    }

    fn text_frame(&self, out: &mut Vec<u8>, index: usize, t: &str) {
        if !t.is_empty() {
            push_frame(out, &self.chunk(self.choice(index, Some(t), None)));
        }
    }

    /// A chunk of one extras piece (logprobs, tool call deltas) of choice `index`.
    fn piece_frame(&self, out: &mut Vec<u8>, index: usize, piece: crate::extras::Piece) {
        let choice = match self.meta.kind {
            Kind::Chat => json!([{
                "index": index,
                "delta": piece.delta,
                "logprobs": piece.logprobs,
                "finish_reason": null,
            }]),
            Kind::Text => json!([{
                "text": piece.delta,
                "index": index,
                "logprobs": piece.logprobs,
                "finish_reason": null,
            }]),
        };
        push_frame(out, &self.chunk(choice));
    }

    /// The request id of choice `index` (its tool calls' ids are built from it).
    fn request_id(&self, index: usize) -> String {
        self.meta
            .request_ids
            .get(index)
            .unwrap_or(&self.meta.request_id)
            .clone()
    }

    /// One choice ended: its held pieces and finish chunk; once every choice has ended, the
    /// usage chunk (with `include_usage`), the `agora` extra and `[DONE]`. An answer that broke
    /// its constraint ends the stream with an error. Returns whether the stream is over.
    fn finish_frames(&mut self, out: &mut Vec<u8>, index: usize, choice: choices::Choice) -> bool {
        let request_id = self.request_id(index);
        let shaped = match self.extra.get_mut(index) {
            Some(x) if !x.plain() => Some(x.on_finish(choice.finish_reason, &request_id)),
            _ => None,
        };
        let mut finish = finish_str(choice.finish_reason);
        match shaped {
            Some(Ok((pieces, f))) => {
                for p in pieces {
                    self.piece_frame(out, index, p);
                }
                finish = f;
            }
            Some(Err(why)) => {
                // Its charge stands: keep the receipts of what was paid for.
                let mut paid: Vec<ReceiptRef> = self
                    .finished
                    .iter()
                    .flatten()
                    .flat_map(|c| c.receipts.clone())
                    .collect();
                paid.extend(choice.receipts);
                usage::save_receipts(&self.meta.keys, &self.meta.key_id, &paid);
                tracing::warn!(%request_id, "answer broke its constraint: {why}");
                self.error_frame(out, &BackendError::Upstream(why));
                return true;
            }
            None => {}
        }
        let mut last = self.chunk(self.choice_str(index, None, Some(finish)));
        if let Some(slot) = self.finished.get_mut(index) {
            *slot = Some(choice);
        }
        if self.finished.iter().any(Option::is_none) {
            push_frame(out, &last);
            return false;
        }
        let done: Vec<choices::Choice> = self.finished.iter().flatten().cloned().collect();
        let totals = choices::Totals::of(&done);
        usage::save_receipts(&self.meta.keys, &self.meta.key_id, &totals.receipts);
        let agora = self.meta.agora(&totals.receipts);
        if self.meta.include_usage {
            push_frame(out, &last);
            last = self.chunk(json!([]));
            if let Value::Object(m) = &mut last {
                m.insert("usage".into(), usage::usage_json(&totals));
            }
        }
        if let Value::Object(m) = &mut last {
            m.insert("agora".into(), agora);
        }
        push_frame(out, &last);
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.log.info.usage = Some(totals.usage);
        self.log.outcome = "finished";
        true
    }

    fn error_frame(&mut self, out: &mut Vec<u8>, e: &BackendError) {
        let err = ApiError::backend(e, self.meta.kind.prompt_param());
        push_frame(out, &err.body());
        self.log.outcome = "failed mid-stream";
        self.log.status = err.status.as_u16();
        tracing::warn!(request_id = %self.meta.request_id, error = %e, "stream failed");
    }

    /// Handles one event; returns whether the stream is over.
    fn on_event(&mut self, out: &mut Vec<u8>, ev: Option<choices::Tagged>) -> bool {
        match ev {
            Some((i, Some(Ok(StreamEvent::Text(t))))) => {
                match self.extra.get_mut(i) {
                    Some(x) if !x.plain() => {
                        if let Some(p) = x.on_text(&t) {
                            self.piece_frame(out, i, p);
                        }
                    }
                    _ => self.text_frame(out, i, &t),
                }
                false
            }
            Some((i, Some(Ok(StreamEvent::Logprob(l))))) => {
                if let Some(x) = self.extra.get_mut(i) {
                    x.on_logprob(l);
                }
                false
            }
            Some((
                i,
                Some(Ok(StreamEvent::Finished {
                    finish_reason,
                    usage,
                    receipts,
                })),
            )) => self.finish_frames(
                out,
                i,
                choices::Choice {
                    text: String::new(),
                    logprobs: vec![],
                    finish_reason,
                    usage,
                    receipts,
                },
            ),
            Some((_, Some(Err(e)))) => {
                self.error_frame(out, &e);
                true
            }
            Some((_, None)) | None => {
                self.error_frame(out, &ended_early());
                true
            }
        }
    }

    /// The next write: waits for one event, then takes whatever else is already queued, so a
    /// burst of tokens goes out in one write while each stays its own SSE event.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::new();
        if self.first {
            self.first = false;
            if self.meta.kind == Kind::Chat {
                for index in 0..self.finished.len() {
                    let role = json!([{
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null,
                        "finish_reason": null,
                    }]);
                    push_frame(&mut out, &self.chunk(role));
                }
                return Some(Bytes::from(out));
            }
        }
        loop {
            let ev = self.events.recv().await;
            if self.on_event(&mut out, ev) {
                self.done = true;
                break;
            }
            while out.len() < 16 * 1024 {
                match self.events.try_recv() {
                    Ok(ev) => {
                        if self.on_event(&mut out, Some(ev)) {
                            self.done = true;
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            // All pieces so far were empty: keep waiting rather than write nothing.
            if self.done || !out.is_empty() {
                break;
            }
        }
        Some(Bytes::from(out))
    }
}

fn stream_response(
    meta: Meta,
    events: Receiver<choices::Tagged>,
    n: usize,
    log: StreamLog,
) -> Response {
    let extra = (0..n)
        .map(|_| crate::extras::StreamExtras::new(meta.extras.clone(), meta.kind == Kind::Chat))
        .collect();
    let state = SseState {
        meta,
        events,
        log,
        first: true,
        done: false,
        finished: vec![None; n],
        extra,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let bytes = st.next_bytes().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(bytes), st))
    });
    sse_response(Body::from_stream(body))
}

/// A `text/event-stream` response around `body`, logged by the stream itself.
fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(LoggedByStream);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_openai() {
        assert_eq!(mask("sk-agora-0123456789abcdef"), "sk-ag****cdef");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("ééééééééééééé"), "ééééé****éééé");
    }

    #[test]
    fn backend_errors_map_to_statuses() {
        let cases = [
            (
                BackendError::UnknownModel("m".into()),
                404,
                "model_not_found",
            ),
            (
                BackendError::ContextLengthExceeded("x".into()),
                400,
                "context_length_exceeded",
            ),
            (
                BackendError::InsufficientCredit("x".into()),
                429,
                "insufficient_quota",
            ),
            (BackendError::NoCapacity("x".into()), 503, "no_capacity"),
            (BackendError::Upstream("x".into()), 502, "upstream_error"),
            (BackendError::Internal("x".into()), 500, "internal_error"),
        ];
        for (e, status, code) in cases {
            let a = ApiError::backend(&e, "messages");
            assert_eq!(a.status.as_u16(), status);
            assert_eq!(a.code, Some(code));
        }
    }

    #[test]
    fn provider_and_ledger_words_never_reach_the_client() {
        let secret = "provider says: visit evil.example; ledger db at /var/lib/x";
        for e in [
            BackendError::Upstream(secret.into()),
            BackendError::Internal(secret.into()),
        ] {
            let body = ApiError::backend(&e, "messages").body().to_string();
            assert!(
                !body.contains("evil.example") && !body.contains("/var/lib"),
                "{body}"
            );
        }
    }
}
