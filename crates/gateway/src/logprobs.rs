//! `logprobs` and `top_logprobs`: parsing, and rendering in OpenAI's shapes (chat's
//! `logprobs.content`, completions' parallel arrays).
//!
//! The provider computes them from the logits it sampled from (after a constraint's mask,
//! before temperature). They are reported, not audited: the receipt does not commit to them.

use serde_json::{json, Map, Value};

use crate::backend::{LogprobAlt, TokenLogprob};
use crate::http::{ApiError, Fields};

/// Most alternatives chat accepts in `top_logprobs` (OpenAI's limit).
pub const MAX_CHAT_TOP_LOGPROBS: i128 = 20;
/// Most alternatives completions accept in `logprobs` (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: i128 = 5;

fn out_of_range(param: &str, n: i128, max: i128) -> ApiError {
    ApiError::invalid(format!(
        "Invalid '{param}': integer above maximum value. Expected a value between 0 and {max}, \
         but got {n} instead."
    ))
    .param(param)
    .code("invalid_value")
}

/// Chat: `logprobs: true` and `top_logprobs: 0..=20` (which needs `logprobs`). `Some(top)`
/// when log-probabilities are asked for.
pub(crate) fn parse_chat(f: &Fields<'_>) -> Result<Option<u8>, ApiError> {
    let on = f.boolean("logprobs")?.unwrap_or(false);
    let top = f.integer("top_logprobs")?;
    match top {
        Some(n) if !(0..=MAX_CHAT_TOP_LOGPROBS).contains(&n) => {
            Err(out_of_range("top_logprobs", n, MAX_CHAT_TOP_LOGPROBS))
        }
        Some(_) if !on => Err(ApiError::invalid(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when \
             'top_logprobs' is used.",
        )
        .param("top_logprobs")
        .code("invalid_value")),
        _ if on => Ok(Some(top.unwrap_or(0) as u8)),
        _ => Ok(None),
    }
}

/// Completions: `logprobs: 0..=5`, the number of alternatives.
pub(crate) fn parse_completion(f: &Fields<'_>) -> Result<Option<u8>, ApiError> {
    match f.integer("logprobs")? {
        None => Ok(None),
        Some(n) if !(0..=MAX_COMPLETION_LOGPROBS).contains(&n) => {
            Err(out_of_range("logprobs", n, MAX_COMPLETION_LOGPROBS))
        }
        Some(n) => Ok(Some(n as u8)),
    }
}

/// OpenAI reports an impossible token as -9999.0 rather than minus infinity (JSON has none).
fn finite(l: f32) -> f64 {
    if l.is_finite() {
        f64::from(l)
    } else {
        -9999.0
    }
}

fn alt(a: &LogprobAlt) -> Value {
    json!({"token": a.token, "logprob": finite(a.logprob), "bytes": a.bytes})
}

/// Chat's `logprobs` object: `{"content": [...], "refusal": null}`.
pub(crate) fn chat(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut v = alt(&t.chosen);
            if let Value::Object(m) = &mut v {
                m.insert(
                    "top_logprobs".into(),
                    Value::Array(t.top.iter().map(alt).collect()),
                );
            }
            v
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Completions' `logprobs` object; `offset` is the text length before these tokens.
pub(crate) fn completion(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += t.chosen.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.chosen.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| finite(t.chosen.logprob)).collect::<Vec<_>>(),
        "top_logprobs": tokens
            .iter()
            .map(|t| {
                let m: Map<String, Value> = t
                    .top
                    .iter()
                    .map(|a| (a.token.clone(), json!(finite(a.logprob))))
                    .collect();
                Value::Object(m)
            })
            .collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}
