//! `response_format`: `text`, `json_object` and `json_schema` (with `strict`), enforced by
//! grammar-constrained decoding. The schema's text travels in the signed sampling settings,
//! so an auditor replays the same token masks; the gateway compiles it first (refusing
//! unsupported features with a 400 that names them) and validates the finished answer.

use std::sync::Arc;

use agora_grammar::{Grammar, GrammarError, JSON_OBJECT_SCHEMA, MAX_CONSTRAINT_BYTES};
use serde_json::Value;

use crate::http::{wrong_type, ApiError, Fields};

/// A constraint the answer must meet: the schema text providers receive and its grammar.
#[derive(Debug, Clone)]
pub(crate) struct OutputFormat {
    /// The JSON Schema's compact text (the signed constraint).
    pub schema: String,
    /// Its compiled grammar, to validate the finished answer.
    pub grammar: Arc<Grammar>,
}

/// Compiles `schema` as a constraint; `param` names the request field for errors.
pub(crate) fn compile(schema: &Value, param: &str) -> Result<OutputFormat, ApiError> {
    let text = serde_json::to_string(schema).unwrap_or_default();
    if text.len() > MAX_CONSTRAINT_BYTES {
        return Err(ApiError::invalid(format!(
            "Invalid '{param}': the schema has {} bytes; this gateway accepts at most \
             {MAX_CONSTRAINT_BYTES}.",
            text.len()
        ))
        .param(param)
        .code("schema_too_large"));
    }
    let grammar = Grammar::from_schema(schema).map_err(|e| schema_error(&e, param))?;
    Ok(OutputFormat {
        schema: text,
        grammar: Arc::new(grammar),
    })
}

fn schema_error(e: &GrammarError, param: &str) -> ApiError {
    let code = match e {
        GrammarError::Unsupported { .. } => "unsupported_schema_feature",
        GrammarError::TooLarge { .. } => "schema_too_large",
        GrammarError::NotJson(_) | GrammarError::Invalid { .. } => "invalid_schema",
    };
    ApiError::invalid(format!("Invalid '{param}': {e}."))
        .param(param)
        .code(code)
}

/// `response_format` of a chat request; `None` for plain text.
pub(crate) fn parse(f: &Fields<'_>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(rf) = f.get("response_format") else {
        return Ok(None);
    };
    let Value::Object(rf) = rf else {
        return Err(wrong_type("response_format", "an object", rf));
    };
    let rf = Fields(rf);
    match rf.get("type") {
        Some(Value::String(t)) if t == "text" => Ok(None),
        Some(Value::String(t)) if t == "json_object" => {
            let schema: Value = serde_json::from_str(JSON_OBJECT_SCHEMA).unwrap_or(Value::Null);
            compile(&schema, "response_format").map(Some)
        }
        Some(Value::String(t)) if t == "json_schema" => {
            let param = "response_format.json_schema";
            let js = match rf.get("json_schema") {
                Some(Value::Object(js)) => Fields(js),
                Some(v) => return Err(wrong_type(param, "an object", v)),
                None => {
                    return Err(ApiError::invalid(format!(
                        "Missing required parameter: '{param}'."
                    ))
                    .param(param)
                    .code("missing_required_parameter"))
                }
            };
            match js.get("name") {
                Some(Value::String(n))
                    if !n.is_empty()
                        && n.len() <= 64
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {}
                Some(Value::String(_)) => {
                    return Err(ApiError::invalid(format!(
                        "Invalid '{param}.name': use 1 to 64 letters, digits, '_' or '-'."
                    ))
                    .param(format!("{param}.name"))
                    .code("invalid_value"))
                }
                Some(v) => return Err(wrong_type(&format!("{param}.name"), "a string", v)),
                None => {
                    return Err(ApiError::invalid(format!(
                        "Missing required parameter: '{param}.name'."
                    ))
                    .param(format!("{param}.name"))
                    .code("missing_required_parameter"))
                }
            }
            // `strict` true or false: the answer is constrained either way.
            js.boolean("strict")?;
            let schema = js
                .get("schema")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default()));
            compile(&schema, &format!("{param}.schema")).map(Some)
        }
        Some(Value::String(t)) => Err(ApiError::invalid(format!(
            "Invalid value: '{t}'. Supported values are: 'text', 'json_object' and 'json_schema'."
        ))
        .param("response_format.type")
        .code("invalid_value")),
        Some(v) => Err(wrong_type("response_format.type", "a string", v)),
        None => Err(
            ApiError::invalid("Missing required parameter: 'response_format.type'.")
                .param("response_format.type")
                .code("missing_required_parameter"),
        ),
    }
}

/// Checks a finished answer against its format: `Err` says why it is not a valid instance.
pub(crate) fn check(format: &OutputFormat, text: &str) -> Result<(), String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    format.grammar.validate(&value)
}
