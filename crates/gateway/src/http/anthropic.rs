//! The Anthropic Messages dialect, `POST /v1/messages`, whole and streamed, over the same
//! network, keys, budgets and receipts as the OpenAI routes. Errors come in Anthropic's
//! shape, `{"type":"error","error":{"type","message"}}`, with the same statuses.
//!
//! Tools go through the OpenAI routes' machinery (`crate::tools`, `crate::extras`): the same
//! rendering into the prompt, the same parsing of calls, the same signed constraint when a
//! call is required (`any`) or named (`tool`); only the shapes here are Anthropic's
//! (`tool_use` / `tool_result` blocks, `stop_reason: "tool_use"`, `input_json_delta`).

use super::choices::{self, Choice, Tagged, Totals};
use super::{
    authenticate, ended_early, json_response, parse_object, read_body, sse_response, usage,
    with_log, wrong_type, ApiError, App, AppState, Arrived, Fields, LogInfo, StreamLog,
};
use crate::backend::{BackendError, ChatMessage, FinishReason, Job, Prompt, StreamEvent};
use crate::extras::{Extras, StreamExtras};
use crate::keys::KeyStore;
use crate::tools::{Choice as ToolChoice, ToolSetup, MAX_TOOLS};
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

/// A block's text field at `bp`.
fn block_text<'a>(b: &'a Map<String, Value>, bp: &str) -> Result<&'a str, ApiError> {
    match b.get("text") {
        Some(Value::String(t)) => Ok(t),
        Some(v) => Err(wrong_type(&format!("{bp}.text"), "a string", v)),
        None => Err(invalid(
            &format!("{bp}.text"),
            format!("{bp}.text: Field required"),
        )),
    }
}

/// The chat turns of message `i`: text and `tool_use` blocks (assistant) become one turn,
/// the calls written as the model writes them; each `tool_result` block (user) becomes a
/// `tool` turn, before the user's text, as the OpenAI routes send `tool` messages.
fn message_turns(i: usize, role: &str, content: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let param = format!("messages.{i}.content");
    let blocks = match content {
        Value::String(s) => {
            return Ok(vec![ChatMessage {
                role: role.into(),
                content: s.clone(),
            }])
        }
        Value::Array(blocks) => blocks,
        v => {
            return Err(wrong_type(
                &param,
                "a string or an array of content blocks",
                v,
            ))
        }
    };
    let mut texts: Vec<String> = Vec::with_capacity(blocks.len());
    let mut results: Vec<ChatMessage> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{param}.{j}");
        let Value::Object(b) = b else {
            return Err(wrong_type(&bp, "an object", b));
        };
        let field = |k: &str| -> Result<&str, ApiError> {
            match b.get(k) {
                Some(Value::String(s)) => Ok(s),
                Some(v) => Err(wrong_type(&format!("{bp}.{k}"), "a string", v)),
                None => Err(invalid(
                    &format!("{bp}.{k}"),
                    format!("{bp}.{k}: Field required"),
                )),
            }
        };
        match (b.get("type").and_then(Value::as_str), role) {
            (Some("text"), _) => texts.push(block_text(b, &bp)?.to_string()),
            (Some("tool_use"), "assistant") => {
                field("id")?;
                let name = field("name")?;
                let input = match b.get("input") {
                    Some(v @ Value::Object(_)) => v,
                    Some(v) => return Err(wrong_type(&format!("{bp}.input"), "an object", v)),
                    None => {
                        return Err(invalid(
                            &format!("{bp}.input"),
                            format!("{bp}.input: Field required"),
                        ))
                    }
                };
                texts.push(crate::tools::call_block(name, input));
            }
            (Some("tool_result"), "user") => {
                field("tool_use_id")?;
                let mut text = match b.get("content") {
                    None => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        let mut out = Vec::with_capacity(parts.len());
                        for (k, part) in parts.iter().enumerate() {
                            let pp = format!("{bp}.content.{k}");
                            match part {
                                Value::Object(p)
                                    if p.get("type").and_then(Value::as_str) == Some("text") =>
                                {
                                    out.push(block_text(p, &pp)?)
                                }
                                _ => {
                                    return Err(invalid(
                                        &format!("{pp}.type"),
                                        format!("{pp}.type: only 'text' blocks are available in a tool result on this gateway"),
                                    ))
                                }
                            }
                        }
                        out.join("\n")
                    }
                    Some(v) => {
                        return Err(wrong_type(
                            &format!("{bp}.content"),
                            "a string or an array of text blocks",
                            v,
                        ))
                    }
                };
                match b.get("is_error") {
                    None | Some(Value::Bool(false)) => {}
                    Some(Value::Bool(true)) => text = format!("Error: {text}"),
                    Some(v) => return Err(wrong_type(&format!("{bp}.is_error"), "a boolean", v)),
                }
                results.push(ChatMessage {
                    role: "tool".into(),
                    content: crate::tools::response_block(&text),
                });
            }
            (Some(t @ ("tool_use" | "tool_result")), _) => {
                return Err(invalid(
                    &format!("{bp}.type"),
                    format!("{bp}.type: '{t}' blocks belong in {} messages", if t == "tool_use" { "assistant" } else { "user" }),
                ))
            }
            (Some(other), _) => {
                return Err(invalid(
                    &format!("{bp}.type"),
                    format!("{bp}.type: '{other}' blocks are not available on this gateway; send 'text', 'tool_use' or 'tool_result' blocks."),
                ))
            }
            (None, _) => {
                return Err(invalid(
                    &format!("{bp}.type"),
                    format!("{bp}.type: Field required"),
                ))
            }
        }
    }
    if results.is_empty() || !texts.is_empty() {
        results.push(ChatMessage {
            role: role.into(),
            content: texts.join("\n"),
        });
    }
    Ok(results)
}

/// `tools` and `tool_choice` in Anthropic's shapes, as the shared tool setup.
fn parse_tools(f: &Fields<'_>) -> Result<Option<ToolSetup>, ApiError> {
    let list = match f.get("tools") {
        None => &vec![],
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("tools", "an array", v)),
    };
    if list.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("tools: at most {MAX_TOOLS} tools, got {}", list.len()),
        ));
    }
    let mut tools: Vec<crate::tools::Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools.{i}");
        let Value::Object(t) = t else {
            return Err(wrong_type(&p, "an object", t));
        };
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(ty)) if ty == "custom" => {}
            Some(Value::String(ty)) => {
                return Err(invalid(
                    &format!("{p}.type"),
                    format!("{p}.type: '{ty}' tools are not available on this gateway; give client tools (name, description, input_schema)"),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("{p}.type"), "a string", v)),
        }
        let name = match t.get("name") {
            Some(Value::String(n)) if crate::tools::valid_name(n) => n.clone(),
            Some(Value::String(n)) => {
                return Err(invalid(
                    &format!("{p}.name"),
                    format!(
                    "{p}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$', got '{n}'"
                ),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("{p}.name"), "a string", v)),
            None => {
                return Err(invalid(
                    &format!("{p}.name"),
                    format!("{p}.name: Field required"),
                ))
            }
        };
        if tools.iter().any(|x| x.name == name) {
            return Err(invalid(
                "tools",
                format!("tools: tool names must be unique; '{name}' is given twice"),
            ));
        }
        let description = match t.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(v) => return Err(wrong_type(&format!("{p}.description"), "a string", v)),
        };
        let schema = match t.get("input_schema") {
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => return Err(wrong_type(&format!("{p}.input_schema"), "an object", v)),
            None => {
                return Err(invalid(
                    &format!("{p}.input_schema"),
                    format!("{p}.input_schema: Field required"),
                ))
            }
        };
        // Rendered into the prompt as the OpenAI routes render a function.
        let mut spec = json!({"name": name});
        if let Some(d) = description {
            spec["description"] = Value::String(d);
        }
        spec["parameters"] = schema.clone();
        tools.push(crate::tools::tool(
            name,
            spec,
            schema,
            &format!("{p}.input_schema"),
        )?);
    }
    let (choice, parallel) = match f.get("tool_choice") {
        None | Some(Value::Null) => (ToolChoice::Auto, true),
        Some(Value::Object(o)) => {
            let parallel = match o.get("disable_parallel_tool_use") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => !b,
                Some(v) => {
                    return Err(wrong_type(
                        "tool_choice.disable_parallel_tool_use",
                        "a boolean",
                        v,
                    ))
                }
            };
            let choice = match o.get("type").and_then(Value::as_str) {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Required,
                Some("none") => ToolChoice::None,
                Some("tool") => {
                    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                        invalid("tool_choice.name", "tool_choice.name: Field required")
                    })?;
                    if !tools.iter().any(|t| t.name == name) {
                        return Err(invalid(
                            "tool_choice.name",
                            format!("tool_choice.name: '{name}' is not one of the tools"),
                        ));
                    }
                    ToolChoice::Named(name.to_string())
                }
                _ => {
                    return Err(invalid(
                        "tool_choice.type",
                        "tool_choice.type: must be 'auto', 'any', 'tool' or 'none'",
                    ))
                }
            };
            (choice, parallel)
        }
        Some(v) => return Err(wrong_type("tool_choice", "an object", v)),
    };
    if tools.is_empty() {
        if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(invalid(
                "tool_choice",
                "tool_choice: a tool can be required only when 'tools' are given",
            ));
        }
        return Ok(None);
    }
    crate::tools::setup(tools, choice, parallel).map(Some)
}

/// The job a Messages request asks for, whether to stream, its fallbacks and its tools.
fn parse(
    app: &App,
    body: &Map<String, Value>,
) -> Result<(Job, bool, Vec<String>, Extras), ApiError> {
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
        match m.get("content") {
            Some(c) => messages.extend(message_turns(i, role, c)?),
            None => {
                return Err(invalid(
                    &format!("messages.{i}.content"),
                    format!("messages.{i}.content: Field required"),
                ))
            }
        }
    }
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    if bytes > limits.max_prompt_bytes {
        return Err(super::prompt_too_long(
            "messages",
            bytes,
            limits.max_prompt_bytes,
        ));
    }
    let tools =
        crate::extras::with_tools(parse_tools(&f)?, &mut messages, limits.max_prompt_bytes)?;
    let extras = Extras {
        tools,
        ..Extras::default()
    };
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
        // A required or named tool's call; the Messages API has no logprobs or response
        // format.
        constraint: extras.constraint(),
        top_logprobs: None,
        tools: extras.uses_tools(),
    };
    Ok((job, stream, fallbacks, extras))
}

fn stop_reason(r: FinishReason) -> &'static str {
    match r {
        // The network does not say whether a stop sequence or the end of turn ended it.
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
    }
}

/// Anthropic's id for a call: the OpenAI routes' id under Anthropic's prefix.
fn tool_use_id(openai_id: &Value) -> String {
    let id = openai_id.as_str().unwrap_or_default();
    format!("toolu_{}", id.strip_prefix("call_").unwrap_or(id))
}

/// A call's arguments (compact JSON text of an object) as a `tool_use` block's `input`.
fn tool_input(arguments: &Value) -> Value {
    arguments
        .as_str()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
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
    let (job, stream, fallbacks, extras) = match parsed {
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
        stream_messages(m, events, extras, log)
    } else {
        whole(m, events, &extras, info).await
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

/// The answer broke its constraint: 502, as on the OpenAI routes.
fn broken(request_id: &str, why: String) -> ApiError {
    tracing::warn!(%request_id, "answer broke its constraint: {why}");
    ApiError::backend(&BackendError::Upstream(why), "messages")
}

async fn whole(m: Msg, events: Receiver<Tagged>, extras: &Extras, mut info: LogInfo) -> Response {
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
    // The OpenAI routes' choice (calls parsed, the constraint checked), in Anthropic's shape.
    let choice =
        match crate::extras::whole_choice(extras, true, 0, &text, finish, &[], &m.request_id) {
            Ok(c) => c,
            Err(why) => return with_log(error_response(broken(&m.request_id, why)), info),
        };
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut content = Vec::with_capacity(calls.len() + 1);
    match choice["message"]["content"].as_str() {
        Some(t) if !t.is_empty() || calls.is_empty() => {
            content.push(json!({"type": "text", "text": t}))
        }
        None if calls.is_empty() => content.push(json!({"type": "text", "text": ""})),
        _ => {}
    }
    for c in &calls {
        content.push(json!({
            "type": "tool_use",
            "id": tool_use_id(&c["id"]),
            "name": c["function"]["name"],
            "input": tool_input(&c["function"]["arguments"]),
        }));
    }
    let stop = if calls.is_empty() {
        stop_reason(finish)
    } else {
        "tool_use"
    };
    let body = json!({
        "id": m.id,
        "type": "message",
        "role": "assistant",
        "model": m.model,
        "content": content,
        "stop_reason": stop,
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
    /// Holds text that may be a tool call, as the OpenAI routes do.
    extras: StreamExtras,
    log: StreamLog,
    first: bool,
    done: bool,
    /// The content block open now (text or tool_use), if any.
    open: Option<usize>,
    /// The index the next content block gets.
    next_block: usize,
}

impl MsgStream {
    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.open.take() {
            push_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, block: Value) -> usize {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        push_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some(index);
        index
    }

    fn text(&mut self, out: &mut Vec<u8>, t: &str) {
        if t.is_empty() {
            return;
        }
        let index = match self.open {
            Some(i) => i,
            None => self.open_block(out, json!({"type": "text", "text": ""})),
        };
        push_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": t}}),
        );
    }

    /// A piece the shared stream logic released: text, or one part of a call (OpenAI's
    /// delta shape: a call's first piece names it, the next carries its arguments).
    fn piece(&mut self, out: &mut Vec<u8>, delta: &Value) {
        if let Some(t) = delta["content"].as_str() {
            self.text(out, t);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            if call.get("id").is_some() {
                self.open_block(
                    out,
                    json!({"type": "tool_use", "id": tool_use_id(&call["id"]),
                           "name": call["function"]["name"], "input": {}}),
                );
            } else if let Some(index) = self.open {
                let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                push_event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
                self.close_block(out);
            }
        }
    }

    fn on_event(&mut self, out: &mut Vec<u8>, ev: Option<Tagged>) -> bool {
        match ev {
            Some((_, Some(Ok(StreamEvent::Text(t))))) => {
                if let Some(p) = self.extras.on_text(&t) {
                    self.piece(out, &p.delta);
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
                let finish = match self.extras.on_finish(finish_reason, &self.m.request_id) {
                    Ok((pieces, finish)) => {
                        for p in pieces {
                            self.piece(out, &p.delta);
                        }
                        finish
                    }
                    Err(why) => {
                        let e = BackendError::Upstream(why);
                        return self.error(out, &e);
                    }
                };
                if self.next_block == 0 {
                    // An empty answer is still one (empty) text block, as whole.
                    self.open_block(out, json!({"type": "text", "text": ""}));
                }
                self.close_block(out);
                let stop = if finish == "tool_calls" {
                    "tool_use"
                } else {
                    stop_reason(finish_reason)
                };
                push_event(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": stop, "stop_sequence": null},
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
            // Text that cannot be a call opens its block at once, as Anthropic does; text
            // that may be a call waits until it is known.
            if !self.extras.holding() {
                self.open_block(&mut out, json!({"type": "text", "text": ""}));
            }
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

fn stream_messages(m: Msg, events: Receiver<Tagged>, extras: Extras, log: StreamLog) -> Response {
    let state = MsgStream {
        m,
        events,
        extras: StreamExtras::new(extras, true),
        log,
        first: true,
        done: false,
        open: None,
        next_block: 0,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let bytes = st.next_bytes().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(bytes), st))
    });
    sse_response(Body::from_stream(body))
}
