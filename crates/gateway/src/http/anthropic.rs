//! The Anthropic Messages dialect, `POST /v1/messages`, whole and streamed, over the same
//! network, keys, budgets and receipts as the OpenAI routes. Errors come in Anthropic's
//! shape, `{"type":"error","error":{"type","message"}}`, with the same statuses.

use super::choices::{self, Choice, Tagged, Totals};
use super::{
    authenticate, ended_early, json_response, parse_object, read_body, sse_response, usage,
    with_log, wrong_type, ApiError, App, AppState, Arrived, Fields, LogInfo, StreamLog,
};
use crate::backend::{BackendError, ChatMessage, FinishReason, Job, Prompt, StreamEvent};
use crate::keys::KeyStore;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::Receiver;

const PATH: &str = "/v1/messages";

/// Anthropic's error type for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        502..=504 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_body(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e.status), "message": e.message}})
}

/// An [`ApiError`] answered in Anthropic's shape (same status and headers).
fn error_response(e: ApiError) -> Response {
    let body = error_body(&e);
    let mut resp = e.into_response();
    let fresh = json_response(resp.status(), &body);
    *resp.body_mut() = fresh.into_body();
    resp
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
        .param(param)
        .code("invalid_value")
}

/// Text of a `content` (a string, or `text` blocks) at `param`.
fn content_text(v: &Value, param: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                let bp = format!("{param}[{j}]");
                let Value::Object(b) = b else {
                    return Err(wrong_type(&bp, "an object", b));
                };
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => match b.get("text") {
                        Some(Value::String(t)) => out.push(t.as_str()),
                        Some(v) => return Err(wrong_type(&format!("{bp}.text"), "a string", v)),
                        None => return Err(invalid(&format!("{bp}.text"), format!("{bp}.text: Field required"))),
                    },
                    Some(other) => {
                        return Err(invalid(
                            &format!("{bp}.type"),
                            format!("{bp}.type: '{other}' blocks are not available on this gateway; send 'text' blocks."),
                        ))
                    }
                    None => return Err(invalid(&format!("{bp}.type"), format!("{bp}.type: Field required"))),
                }
            }
            Ok(out.join("\n"))
        }
        v => Err(wrong_type(
            param,
            "a string or an array of content blocks",
            v,
        )),
    }
}

/// The job a Messages request asks for, and whether to stream.
fn parse(app: &App, body: &Map<String, Value>) -> Result<(Job, bool, Vec<String>), ApiError> {
    let f = Fields(body);
    let limits = &app.limits;
    let model = match f.string("model")? {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => return Err(invalid("model", "model: Field required")),
    };
    let max_tokens = match f.integer("max_tokens")? {
        None => return Err(invalid("max_tokens", "max_tokens: Field required")),
        Some(v) if v < 1 || v > i128::from(limits.max_tokens) => {
            return Err(invalid(
                "max_tokens",
                format!(
                    "max_tokens: must be in 1..={} on this gateway, got {v}",
                    limits.max_tokens
                ),
            ))
        }
        Some(v) => u32::try_from(v).unwrap_or(limits.max_tokens),
    };
    let mut messages = Vec::new();
    if let Some(system) = f.get("system") {
        let text = content_text(system, "system")?;
        if !text.is_empty() {
            messages.push(ChatMessage {
                role: "system".into(),
                content: text,
            });
        }
    }
    let list = match f.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) | None => {
            return Err(invalid(
                "messages",
                "messages: at least one message is required",
            ))
        }
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong_type(&format!("messages.{i}"), "an object", m));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(
                    &format!("messages.{i}.role"),
                    format!("messages.{i}.role: must be 'user' or 'assistant'"),
                ))
            }
        };
        let content = match m.get("content") {
            Some(c) => content_text(c, &format!("messages.{i}.content"))?,
            None => {
                return Err(invalid(
                    &format!("messages.{i}.content"),
                    format!("messages.{i}.content: Field required"),
                ))
            }
        };
        messages.push(ChatMessage {
            role: role.into(),
            content,
        });
    }
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    if bytes > limits.max_prompt_bytes {
        return Err(super::prompt_too_long(
            "messages",
            bytes,
            limits.max_prompt_bytes,
        ));
    }
    // Anthropic's temperature range is 0..=1.
    let temperature = match f.number("temperature")? {
        None => 1.0,
        Some(t) if (0.0..=1.0).contains(&t) => t as f32,
        Some(t) => {
            return Err(invalid(
                "temperature",
                format!("temperature: must be in [0, 1], got {t}"),
            ))
        }
    };
    let top_p = match f.number("top_p")? {
        None => 1.0,
        Some(p) if p > 0.0 && p <= 1.0 => p as f32,
        Some(p) => {
            return Err(invalid(
                "top_p",
                format!("top_p: must be in (0, 1], got {p}"),
            ))
        }
    };
    if f.get("top_k").is_some() {
        return Err(invalid(
            "top_k",
            "top_k: not available on this gateway (sampling is temperature and top_p)",
        ));
    }
    for k in ["tools", "tool_choice"] {
        if f.get(k)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(invalid(
                k,
                format!("{k}: tool use is not available on /v1/messages yet"),
            ));
        }
    }
    let stop = match f.get("stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                v => Err(wrong_type(&format!("stop_sequences.{i}"), "a string", v)),
            })
            .collect::<Result<Vec<String>, ApiError>>()?
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        Some(_) => {
            return Err(invalid(
                "stop_sequences",
                "stop_sequences: at most 4 strings on this gateway",
            ))
        }
    };
    let stream = f.boolean("stream")?.unwrap_or(false);
    let routing =
        crate::routing::parse_provider(f.get("provider")).map_err(super::routing_error)?;
    let fallbacks = crate::routing::parse_models(f.get("models")).map_err(super::routing_error)?;
    let job = Job {
        model,
        prompt: Prompt::Chat(messages),
        max_tokens,
        temperature,
        top_p,
        seed: None,
        stop,
        routing,
        budget: None,
        // Tools are refused above and the Messages API has no logprobs or response format.
        constraint: None,
        top_logprobs: None,
        tools: false,
    };
    Ok((job, stream, fallbacks))
}

fn stop_reason(r: FinishReason) -> &'static str {
    match r {
        // The network does not say whether a stop sequence or the end of turn ended it.
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
    }
}

fn usage_obj(input_tokens: u32, t: &Totals) -> Value {
    let u = usage::usage_json(t);
    json!({
        "input_tokens": input_tokens,
        "output_tokens": t.usage.completion_tokens,
        "cost": u["cost"],
        "provider": u["provider"],
        "receipt_id": u["receipt_id"],
    })
}

/// `POST /v1/messages`.
pub(super) async fn messages(State(app): AppState, req: Request) -> Response {
    let start = req
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |a| a.0);
    let mut info = LogInfo::default();
    let rec = match authenticate(&app, req.headers()) {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    info.key_id = Some(rec.id.clone());
    let permit = match app
        .limiter
        .admit_key(&rec.id, rec.policy.requests_per_minute)
    {
        Ok(p) => p,
        Err(l) => return with_log(error_response(ApiError::rate_limited(l)), info),
    };
    let parsed = match read_body(req, app.limits.max_body_bytes).await {
        Ok(b) => parse_object(&b).and_then(|o| parse(&app, &o)),
        Err(e) => Err(e),
    };
    let (job, stream, fallbacks) = match parsed {
        Ok(p) => p,
        Err(e) => return with_log(error_response(e), info),
    };
    info.model = Some(job.model.clone());
    let started = match choices::start(&app, &rec, job, 1, &fallbacks, "messages").await {
        Ok(s) => s,
        Err(e) => return with_log(error_response(e), info),
    };
    let Some(first) = started.into_iter().next() else {
        return with_log(
            error_response(ApiError::internal(
                "The gateway failed to serve the request; try again.",
            )),
            info,
        );
    };
    let m = Msg {
        id: format!("msg_{}", first.request_id),
        request_id: first.request_id,
        model: first.model,
        input_tokens: first.prompt_tokens,
        keys: app.keys.clone(),
        key_id: rec.id.clone(),
        _permit: permit,
    };
    let events = choices::merge(vec![first.events]);
    let request_id = HeaderValue::from_str(&m.request_id).ok();
    let mut resp = if stream {
        let log = StreamLog {
            path: PATH,
            start,
            info,
            outcome: "client disconnected",
            status: 200,
        };
        stream_messages(m, events, log)
    } else {
        whole(m, events, info).await
    };
    if let Some(v) = request_id {
        resp.headers_mut().insert("request-id", v.clone());
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

struct Msg {
    id: String,
    request_id: String,
    model: String,
    input_tokens: u32,
    keys: Arc<KeyStore>,
    key_id: String,
    _permit: crate::limit::Permit,
}

impl Msg {
    fn agora(&self, t: &Totals) -> Value {
        json!({"request_id": self.request_id, "receipts": t.receipts})
    }
}

async fn whole(m: Msg, events: Receiver<Tagged>, mut info: LogInfo) -> Response {
    let done = match choices::collect(events, 1).await {
        Ok(d) => d,
        Err(e) => return with_log(error_response(ApiError::backend(&e, "messages")), info),
    };
    let totals = Totals::of(&done);
    usage::save_receipts(&m.keys, &m.key_id, &totals.receipts);
    info.usage = Some(totals.usage);
    let (text, finish) = done
        .first()
        .map_or((String::new(), FinishReason::Stop), |c| {
            (c.text.clone(), c.finish_reason)
        });
    let body = json!({
        "id": m.id,
        "type": "message",
        "role": "assistant",
        "model": m.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage_obj(m.input_tokens, &totals),
        "agora": m.agora(&totals),
    });
    with_log(json_response(StatusCode::OK, &body), info)
}

fn push_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

struct MsgStream {
    m: Msg,
    events: Receiver<Tagged>,
    log: StreamLog,
    first: bool,
    done: bool,
}

impl MsgStream {
    fn on_event(&mut self, out: &mut Vec<u8>, ev: Option<Tagged>) -> bool {
        match ev {
            Some((_, Some(Ok(StreamEvent::Text(t))))) => {
                if !t.is_empty() {
                    push_event(
                        out,
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": t}}),
                    );
                }
                false
            }
            // The Messages API asks for none (its jobs carry no `top_logprobs`).
            Some((_, Some(Ok(StreamEvent::Logprob(_))))) => false,
            Some((
                _,
                Some(Ok(StreamEvent::Finished {
                    finish_reason,
                    usage,
                    receipts,
                })),
            )) => {
                let totals = Totals::of(&[Choice {
                    text: String::new(),
                    logprobs: vec![],
                    finish_reason,
                    usage,
                    receipts,
                }]);
                usage::save_receipts(&self.m.keys, &self.m.key_id, &totals.receipts);
                push_event(
                    out,
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": 0}),
                );
                push_event(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": stop_reason(finish_reason), "stop_sequence": null},
                            "usage": usage_obj(self.m.input_tokens, &totals)}),
                );
                push_event(
                    out,
                    "message_stop",
                    &json!({"type": "message_stop", "agora": self.m.agora(&totals)}),
                );
                self.log.info.usage = Some(totals.usage);
                self.log.outcome = "finished";
                true
            }
            Some((_, Some(Err(e)))) => self.error(out, &e),
            Some((_, None)) | None => self.error(out, &ended_early()),
        }
    }

    fn error(&mut self, out: &mut Vec<u8>, e: &BackendError) -> bool {
        let err = ApiError::backend(e, "messages");
        push_event(out, "error", &error_body(&err));
        self.log.outcome = "failed mid-stream";
        self.log.status = err.status.as_u16();
        tracing::warn!(request_id = %self.m.request_id, error = %e, "stream failed");
        true
    }

    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::new();
        if self.first {
            self.first = false;
            push_event(
                &mut out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.m.id, "type": "message", "role": "assistant", "model": self.m.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.m.input_tokens, "output_tokens": 0}}}),
            );
            push_event(
                &mut out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            );
            push_event(&mut out, "ping", &json!({"type": "ping"}));
            return Some(Bytes::from(out));
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
            if self.done || !out.is_empty() {
                break;
            }
        }
        Some(Bytes::from(out))
    }
}

fn stream_messages(m: Msg, events: Receiver<Tagged>, log: StreamLog) -> Response {
    let state = MsgStream {
        m,
        events,
        log,
        first: true,
        done: false,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let bytes = st.next_bytes().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(bytes), st))
    });
    sse_response(Body::from_stream(body))
}
