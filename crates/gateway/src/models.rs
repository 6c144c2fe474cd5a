//! The model objects `GET /v1/models` lists: OpenAI's fields plus what a model is and
//! costs on this network.

use crate::backend::{Capabilities, ModelInfo, PriceRange};
use serde_json::{json, Value};

/// The request parameters the chat endpoint honours for every model (OpenRouter's
/// `supported_parameters` vocabulary; see `docs/gateway.md`); [`TOOL_PARAMETERS`],
/// [`STRUCTURED_PARAMETERS`] and [`LOGPROB_PARAMETERS`] join them when a live offer serves
/// them.
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
];

/// Listed when some live offer serves tools.
pub const TOOL_PARAMETERS: &[&str] = &["tools", "tool_choice", "parallel_tool_calls"];
/// Listed when some live offer serves grammar-constrained decoding.
pub const STRUCTURED_PARAMETERS: &[&str] = &["response_format"];
/// Listed when some live offer serves log-probabilities.
pub const LOGPROB_PARAMETERS: &[&str] = &["logprobs", "top_logprobs"];

/// The parameters `/v1/models` lists for a model whose live offers serve `c`.
pub fn supported_parameters(c: Capabilities) -> Vec<&'static str> {
    let mut out = SUPPORTED_PARAMETERS.to_vec();
    for (on, list) in [
        (c.tools, TOOL_PARAMETERS),
        (c.structured_output, STRUCTURED_PARAMETERS),
        (c.logprobs, LOGPROB_PARAMETERS),
    ] {
        if on {
            out.extend_from_slice(list);
        }
    }
    out
}

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
        "supported_parameters": supported_parameters(m.capabilities),
    })
}
