//! What a request asks beyond plain text (log-probabilities, a response format, tools), and
//! how it shapes the answer: the constraint and logprobs a job carries, the choice of a
//! whole response, and the pieces of a streamed one.

use serde_json::{json, Value};

use crate::backend::{ChatMessage, FinishReason, TokenLogprob};
use crate::http::{ApiError, Fields};
use crate::structured::OutputFormat;
use crate::tools::ToolSetup;

/// The extras of one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extras {
    /// Alternatives per token when log-probabilities are asked for.
    pub logprobs: Option<u8>,
    /// `response_format` when it is JSON.
    pub format: Option<OutputFormat>,
    /// Tools, when given.
    pub tools: Option<ToolSetup>,
}

impl Extras {
    /// The schema text decoding is constrained by, if any.
    pub fn constraint(&self) -> Option<String> {
        self.tools
            .as_ref()
            .and_then(|t| t.forced.as_ref())
            .or(self.format.as_ref())
            .map(|f| f.schema.clone())
    }

    /// Whether the model is told of tools (so only providers serving tools may answer).
    pub fn uses_tools(&self) -> bool {
        self.tools
            .as_ref()
            .is_some_and(|t| t.choice != crate::tools::Choice::None)
    }

    /// Whether the chat answer's shape depends on them (a format to check, tools to parse).
    fn shapes_chat(&self) -> bool {
        self.tools.is_some() || self.format.is_some()
    }
}

/// Parses a chat request's extras and renders its tools into `messages`.
pub(crate) fn parse_chat(
    f: &Fields<'_>,
    messages: &mut Vec<ChatMessage>,
    max_prompt_bytes: usize,
) -> Result<Extras, ApiError> {
    let logprobs = crate::logprobs::parse_chat(f)?;
    let format = crate::structured::parse(f)?;
    let tools = crate::tools::parse(f)?;
    if let (Some(_), Some(t)) = (&format, &tools) {
        if t.forced.is_some() {
            return Err(ApiError::invalid(
                "A JSON 'response_format' cannot be combined with a required tool call: the \
                 call's arguments follow the function's 'parameters' instead.",
            )
            .param("response_format")
            .code("invalid_value"));
        }
    }
    Ok(Extras {
        logprobs,
        format,
        tools: with_tools(tools, messages, max_prompt_bytes)?,
    })
}

/// Renders `tools` into `messages` (both dialects), refusing a prompt that grew past
/// `max_prompt_bytes`.
pub(crate) fn with_tools(
    tools: Option<ToolSetup>,
    messages: &mut Vec<ChatMessage>,
    max_prompt_bytes: usize,
) -> Result<Option<ToolSetup>, ApiError> {
    if let Some(t) = &tools {
        crate::tools::render(t, messages);
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        if bytes > max_prompt_bytes {
            return Err(ApiError::invalid(format!(
                "This gateway accepts prompts of at most {max_prompt_bytes} bytes. However, your \
                 messages and tools came to {bytes} bytes. Please reduce their length."
            ))
            .param("tools")
            .code("context_length_exceeded"));
        }
    }
    Ok(tools)
}

/// A completions request's extras (`logprobs` only).
pub(crate) fn parse_completion(f: &Fields<'_>) -> Result<Extras, ApiError> {
    Ok(Extras {
        logprobs: crate::logprobs::parse_completion(f)?,
        ..Extras::default()
    })
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// An answer that ended by itself must meet its format (a provider that skipped the
/// constraint is caught here as well as by audits). A cut answer (`length`) is returned as
/// it is, as OpenAI does.
fn check_format(extras: &Extras, text: &str, finish: FinishReason) -> Result<(), String> {
    if finish != FinishReason::Stop {
        return Ok(());
    }
    if let Some(f) = &extras.format {
        crate::structured::check(f, text)
            .map_err(|e| format!("The answer does not match 'response_format': {e}."))?;
    }
    if let Some(g) = extras.tools.as_ref().and_then(crate::tools::forced_grammar) {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("The required tool call is not JSON: {e}."))?;
        g.validate(&v)
            .map_err(|e| format!("The required tool call does not fit the function: {e}."))?;
    }
    Ok(())
}

/// Choice `index` of a whole response, from that choice's own text and logprobs; `Err` when
/// the answer broke its constraint.
pub(crate) fn whole_choice(
    extras: &Extras,
    chat: bool,
    index: usize,
    text: &str,
    finish: FinishReason,
    logprobs: &[TokenLogprob],
    request_id: &str,
) -> Result<Value, String> {
    let lp = |chat: bool| match extras.logprobs {
        None => Value::Null,
        Some(_) if chat => crate::logprobs::chat(logprobs),
        Some(_) => crate::logprobs::completion(logprobs, 0),
    };
    if !chat {
        return Ok(json!({
            "text": text,
            "index": index,
            "logprobs": lp(false),
            "finish_reason": finish_str(finish),
        }));
    }
    check_format(extras, text, finish)?;
    let calls = extras
        .tools
        .as_ref()
        .and_then(|t| crate::tools::parse_calls(t, text));
    let (message, finish_reason) = match calls {
        Some((content, calls)) => (
            json!({
                "role": "assistant",
                "content": if content.is_empty() { Value::Null } else { Value::String(content) },
                "refusal": null,
                "tool_calls": crate::tools::calls_json(&calls, request_id),
            }),
            "tool_calls",
        ),
        None => (
            json!({"role": "assistant", "content": text, "refusal": null}),
            finish_str(finish),
        ),
    };
    Ok(json!({
        "index": index,
        "message": message,
        "logprobs": lp(true),
        "finish_reason": finish_reason,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Text goes out as it comes.
    Content,
    /// Text is held: it may be a tool call.
    Holding,
}

/// A streamed answer's extras: log-probabilities waiting for their text, text held while it
/// may be a tool call, and the whole text for the final checks.
#[derive(Debug)]
pub(crate) struct StreamExtras {
    extras: Extras,
    chat: bool,
    pending: Vec<TokenLogprob>,
    held: String,
    text: String,
    mode: Mode,
    /// Bytes of text already sent (completions' `text_offset`).
    sent: usize,
}

/// One piece of a streamed answer, for the SSE layer to wrap in a chunk.
pub(crate) struct Piece {
    /// The choice's `delta` (chat) or `text` (completions) content.
    pub delta: Value,
    /// The choice's `logprobs`.
    pub logprobs: Value,
}

impl StreamExtras {
    pub fn new(extras: Extras, chat: bool) -> StreamExtras {
        let mode = match &extras.tools {
            Some(t) if chat && crate::tools::may_be_call(t, "") => Mode::Holding,
            _ => Mode::Content,
        };
        StreamExtras {
            extras,
            chat,
            pending: vec![],
            held: String::new(),
            text: String::new(),
            mode,
            sent: 0,
        }
    }

    /// Whether text is being held because it may be a tool call.
    pub fn holding(&self) -> bool {
        self.mode == Mode::Holding
    }

    /// Whether nothing beyond plain text streaming is at work.
    pub fn plain(&self) -> bool {
        self.extras.logprobs.is_none() && !(self.chat && self.extras.shapes_chat())
    }

    pub fn on_logprob(&mut self, lp: TokenLogprob) {
        if self.extras.logprobs.is_some() {
            self.pending.push(lp);
        }
    }

    fn take_logprobs(&mut self, text_len: usize) -> Value {
        if self.extras.logprobs.is_none() {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.pending);
        let v = if self.chat {
            crate::logprobs::chat(&lps)
        } else {
            crate::logprobs::completion(&lps, self.sent)
        };
        self.sent += text_len;
        v
    }

    fn content(&mut self, t: String) -> Piece {
        let logprobs = self.take_logprobs(t.len());
        Piece {
            delta: if self.chat {
                json!({"content": t})
            } else {
                Value::String(t)
            },
            logprobs,
        }
    }

    /// Text arrived: the piece to send now, if any.
    pub fn on_text(&mut self, t: &str) -> Option<Piece> {
        self.text.push_str(t);
        if self.mode == Mode::Holding {
            self.held.push_str(t);
            let still = self
                .extras
                .tools
                .as_ref()
                .is_some_and(|tools| crate::tools::may_be_call(tools, &self.held));
            if still {
                return None;
            }
            self.mode = Mode::Content;
            let held = std::mem::take(&mut self.held);
            return Some(self.content(held));
        }
        // Log-probabilities of tokens whose text is still held back wait for it.
        if t.is_empty() {
            return None;
        }
        Some(self.content(t.to_string()))
    }

    /// The answer ended: the pieces still to send and the finish reason, or why the answer
    /// broke its constraint.
    pub fn on_finish(
        &mut self,
        finish: FinishReason,
        request_id: &str,
    ) -> Result<(Vec<Piece>, &'static str), String> {
        if self.chat {
            check_format(&self.extras, &self.text, finish)?;
        }
        let mut pieces = vec![];
        if self.mode == Mode::Holding {
            let calls = self
                .extras
                .tools
                .as_ref()
                .and_then(|t| crate::tools::parse_calls(t, &self.held));
            if let Some((content, calls)) = calls {
                let logprobs = self.take_logprobs(0);
                if !content.is_empty() {
                    pieces.push(Piece {
                        delta: json!({"content": content}),
                        logprobs: Value::Null,
                    });
                }
                for (i, c) in crate::tools::calls_json(&calls, request_id)
                    .into_iter()
                    .enumerate()
                {
                    // OpenAI's shape: the first delta names the call, later ones carry the
                    // arguments' text.
                    let args = c["function"]["arguments"].clone();
                    pieces.push(Piece {
                        delta: json!({"tool_calls": [{
                            "index": i,
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["function"]["name"], "arguments": ""},
                        }]}),
                        logprobs: if i == 0 {
                            logprobs.clone()
                        } else {
                            Value::Null
                        },
                    });
                    pieces.push(Piece {
                        delta: json!({"tool_calls": [{"index": i, "function": {"arguments": args}}]}),
                        logprobs: Value::Null,
                    });
                }
                return Ok((pieces, "tool_calls"));
            }
            let held = std::mem::take(&mut self.held);
            pieces.push(self.content(held));
        } else if !self.pending.is_empty() {
            pieces.push(self.content(String::new()));
        }
        Ok((pieces, finish_str(finish)))
    }
}
