//! The model objects `GET /v1/models` lists: OpenAI's fields plus what a model is and
//! costs on this network.

use crate::backend::{ModelInfo, PriceRange};
use serde_json::{json, Value};

/// The request parameters the chat endpoint honours for every model (OpenRouter's
/// `supported_parameters` vocabulary; see `docs/gateway.md`).
pub const SUPPORTED_PARAMETERS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "provider",
    "models",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
];

fn range(r: PriceRange) -> Value {
    json!({"lowest": r.lowest.to_string(), "median": r.median.to_string()})
}

/// One model as `/v1/models` shows it. Prices are base units per million tokens, as decimal
/// strings (they are u128).
pub fn model_object(m: &ModelInfo) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "model_id": m.model_id,
        "context_length": m.context_length,
        "quantization": m.quantization,
        "providers": m.providers,
        "pricing": {
            "unit": "base units per million tokens",
            "prompt": range(m.pricing.prompt),
            "completion": range(m.pricing.completion),
        },
        "supported_parameters": SUPPORTED_PARAMETERS,
    })
}
