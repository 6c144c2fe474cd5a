//! Tools: `tools`, `tool_choice` (`none`, `auto`, `required`, a named function),
//! `parallel_tool_calls`, `tool` role messages and assistant `tool_calls` in the history.
//!
//! Tools reach the model the way open instruct models are taught them (the Hermes format
//! Qwen and SmolLM2 use): a system section listing the functions in `<tools>` tags, calls
//! written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, results given back
//! in a `tool` turn inside `<tool_response>` tags. The gateway renders this into the chat
//! messages, so it works through any chat template. When a call is required (or one
//! function is named) the answer is constrained to the call's JSON (the function's name and
//! its parameters' schema with one tool; any of the names with several) by the same signed
//! grammar constraint as `response_format`, and the provider cannot skip it unnoticed.

use std::sync::Arc;

use agora_grammar::Grammar;
use serde_json::{json, Value};

use crate::backend::ChatMessage;
use crate::http::{wrong_type, ApiError, Fields};
use crate::structured::{compile, OutputFormat};

/// Most tools in one request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One function the model may call.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    pub name: String,
    /// The function object as given (name, description, parameters), for the prompt.
    pub spec: Value,
    /// Its parameters' schema.
    pub parameters: Value,
}

/// What the model may do with the tools.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The request's tools and how they may be used.
#[derive(Debug, Clone)]
pub(crate) struct ToolSetup {
    pub tools: Vec<Tool>,
    pub choice: Choice,
    pub parallel: bool,
    /// With `required` or a named function: the constraint the call is decoded under.
    pub forced: Option<OutputFormat>,
}

/// A call parsed from the answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub name: String,
    /// The arguments as compact JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."))
        .param(param)
        .code("missing_required_parameter")
}

pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tools are given.
pub(crate) fn parse(f: &Fields<'_>) -> Result<Option<ToolSetup>, ApiError> {
    if f.get("functions").is_some() || f.get("function_call").is_some() {
        return Err(crate::http::unsupported(
            "functions",
            "use 'tools' and 'tool_choice' (the deprecated 'functions' form is not available)",
        ));
    }
    let list = match f.get("tools") {
        None => vec![],
        Some(Value::Array(a)) => a.clone(),
        Some(v) => return Err(wrong_type("tools", "an array", v)),
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid(format!(
            "Invalid 'tools': array too long. Expected an array with maximum length {MAX_TOOLS}, \
             but got an array with length {} instead.",
            list.len()
        ))
        .param("tools")
        .code("array_above_max_length"));
    }
    let parallel = f.boolean("parallel_tool_calls")?.unwrap_or(true);
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(wrong_type(&p, "an object", t));
        };
        let t = Fields(t);
        match t.get("type") {
            Some(Value::String(ty)) if ty == "function" => {}
            Some(Value::String(ty)) => {
                return Err(ApiError::invalid(format!(
                    "Invalid value: '{ty}'. Supported values are: 'function'."
                ))
                .param(format!("{p}.type"))
                .code("invalid_value"))
            }
            Some(v) => return Err(wrong_type(&format!("{p}.type"), "a string", v)),
            None => return Err(missing(&format!("{p}.type"))),
        }
        let func = match t.get("function") {
            Some(Value::Object(func)) => func,
            Some(v) => return Err(wrong_type(&format!("{p}.function"), "an object", v)),
            None => return Err(missing(&format!("{p}.function"))),
        };
        let ff = Fields(func);
        let name = match ff.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(Value::String(n)) => {
                return Err(ApiError::invalid(format!(
                    "Invalid '{p}.function.name': string does not match pattern. Expected a \
                     string of 1 to 64 letters, digits, '_' or '-', but got '{n}' instead."
                ))
                .param(format!("{p}.function.name"))
                .code("invalid_value"))
            }
            Some(v) => return Err(wrong_type(&format!("{p}.function.name"), "a string", v)),
            None => return Err(missing(&format!("{p}.function.name"))),
        };
        if tools.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(format!(
                "Invalid 'tools': the function name '{name}' is given twice."
            ))
            .param("tools")
            .code("invalid_value"));
        }
        ff.string("description")?;
        ff.boolean("strict")?;
        let parameters = ff
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        tools.push(tool(
            name,
            Value::Object(func.clone()),
            parameters,
            &format!("{p}.function.parameters"),
        )?);
    }
    let choice = match f.get("tool_choice") {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::invalid(format!(
                    "Invalid value: '{other}'. Supported values are: 'none', 'auto' and \
                     'required', or an object naming a function."
                ))
                .param("tool_choice")
                .code("invalid_value"))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| missing("tool_choice.function.name"))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(format!(
                    "Invalid 'tool_choice': the function '{name}' is not in 'tools'."
                ))
                .param("tool_choice")
                .code("invalid_value"));
            }
            Choice::Named(name.to_string())
        }
        Some(v) => return Err(wrong_type("tool_choice", "a string or an object", v)),
    };
    if tools.is_empty() {
        if f.get("tool_choice").is_some() && choice != Choice::None {
            return Err(ApiError::invalid(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' \
                 are specified.",
            )
            .param("tool_choice")
            .code("invalid_value"));
        }
        return Ok(None);
    }
    setup(tools, choice, parallel).map(Some)
}

/// One function, its parameters' schema checked at `param`: a schema the constraint could
/// not enforce is refused whether or not a call is required.
pub(crate) fn tool(
    name: String,
    spec: Value,
    parameters: Value,
    param: &str,
) -> Result<Tool, ApiError> {
    compile(&parameters, param)?;
    Ok(Tool {
        name,
        spec,
        parameters,
    })
}

/// The setup of `tools` under `choice`: with a required or named call, the constraint the
/// call is decoded under. Shared by the OpenAI and Anthropic dialects.
pub(crate) fn setup(
    tools: Vec<Tool>,
    choice: Choice,
    parallel: bool,
) -> Result<ToolSetup, ApiError> {
    let forced = match &choice {
        Choice::Named(n) => tools.iter().find(|t| &t.name == n).map(call_schema),
        Choice::Required if tools.len() == 1 => Some(call_schema(&tools[0])),
        Choice::Required => Some(json!({
            "type": "object",
            "propertyOrdering": ["name", "arguments"],
            "properties": {
                "name": {"enum": tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>()},
                "arguments": {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })),
        Choice::None | Choice::Auto => None,
    }
    .map(|schema| compile(&schema, "tools"))
    .transpose()?;
    Ok(ToolSetup {
        tools,
        choice,
        parallel,
        forced,
    })
}

/// The JSON a call to `tool` must be: its name, then arguments under its parameters' schema.
fn call_schema(tool: &Tool) -> Value {
    json!({
        "type": "object",
        "propertyOrdering": ["name", "arguments"],
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// A call as the model writes it.
fn call_text(name: &str, arguments: &Value) -> String {
    json!({"name": name, "arguments": arguments}).to_string()
}

/// A past call in the history, as the model would have written it.
pub(crate) fn call_block(name: &str, arguments: &Value) -> String {
    format!("{OPEN}\n{}\n{CLOSE}", call_text(name, arguments))
}

/// A tool's result, as the model is taught to read it (the content of a `tool` turn).
pub(crate) fn response_block(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// The text of an assistant message's `tool_calls` (appended to its content), or of a
/// `tool` message's content; `None` for other messages.
pub(crate) fn message_extra(
    i: usize,
    msg: &Fields<'_>,
    role: &str,
    content: &str,
) -> Result<Option<String>, ApiError> {
    match role {
        "tool" => {
            let p = format!("messages[{i}].tool_call_id");
            match msg.get("tool_call_id") {
                Some(Value::String(_)) => {}
                Some(v) => return Err(wrong_type(&p, "a string", v)),
                None => return Err(missing(&p)),
            }
            Ok(Some(response_block(content)))
        }
        "assistant" => {
            let p = format!("messages[{i}].tool_calls");
            let calls = match msg.get("tool_calls") {
                None => return Ok(None),
                Some(Value::Array(a)) => a,
                Some(v) => return Err(wrong_type(&p, "an array", v)),
            };
            let mut text = content.to_string();
            for (j, c) in calls.iter().enumerate() {
                let cp = format!("{p}[{j}].function");
                let func = c.get("function").ok_or_else(|| missing(&cp))?;
                let name = func
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing(&format!("{cp}.name")))?;
                let args = match func.get("arguments") {
                    Some(Value::String(s)) => {
                        serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                    }
                    Some(v) => v.clone(),
                    None => return Err(missing(&format!("{cp}.arguments"))),
                };
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&call_block(name, &args));
            }
            Ok(Some(text))
        }
        _ => Ok(None),
    }
}

/// The system section that teaches the model the tools.
fn system_text(setup: &ToolSetup) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
    );
    for t in &setup.tools {
        s.push_str(&json!({"type": "function", "function": t.spec}).to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// Adds the tools to the conversation: after the first system message's text, or as a new
/// first system message. With `tool_choice: none` the model is not told of them.
pub(crate) fn render(setup: &ToolSetup, messages: &mut Vec<ChatMessage>) {
    if setup.choice == Choice::None {
        return;
    }
    let text = system_text(setup);
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            m.content.push_str("\n\n");
            m.content.push_str(&text);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                content: text,
            },
        ),
    }
}

fn parse_one(setup: &ToolSetup, json_text: &str) -> Option<Call> {
    let v: Value = serde_json::from_str(json_text.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    if !setup.tools.iter().any(|t| t.name == name) {
        return None;
    }
    let args = match v.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok()?,
        Some(a @ Value::Object(_)) => a.clone(),
        None => json!({}),
        Some(_) => return None,
    };
    Some(Call {
        name: name.to_string(),
        arguments: args.to_string(),
    })
}

/// The calls in an answer, and the text before them (`None` when there are no calls: the
/// answer is content). A forced answer is one bare call; otherwise calls are the
/// `<tool_call>` blocks (the last may lack its closing tag when the answer ended there).
pub(crate) fn parse_calls(setup: &ToolSetup, text: &str) -> Option<(String, Vec<Call>)> {
    if setup.choice == Choice::None {
        return None;
    }
    if setup.forced.is_some() {
        return parse_one(setup, text).map(|c| (String::new(), vec![c]));
    }
    let first = text.find(OPEN)?;
    let mut calls = vec![];
    let mut rest = &text[first..];
    while let Some(at) = rest.find(OPEN) {
        let body = &rest[at + OPEN.len()..];
        let (inner, next) = match body.find(CLOSE) {
            Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
            None => (body, ""),
        };
        calls.push(parse_one(setup, inner)?);
        rest = next;
    }
    if !setup.parallel {
        calls.truncate(1);
    }
    Some((text[..first].trim().to_string(), calls))
}

/// Whether a streamed answer that so far reads `text` may still turn out to be a call.
pub(crate) fn may_be_call(setup: &ToolSetup, text: &str) -> bool {
    if setup.choice == Choice::None {
        return false;
    }
    if setup.forced.is_some() {
        return true;
    }
    let t = text.trim_start();
    t.starts_with(OPEN) || OPEN.starts_with(t)
}

/// The grammar a forced call's text must meet, to validate it when the answer ends.
pub(crate) fn forced_grammar(setup: &ToolSetup) -> Option<Arc<Grammar>> {
    setup.forced.as_ref().map(|f| f.grammar.clone())
}

/// The `tool_calls` array of a message (`delta` false) or of stream deltas' first pieces.
pub(crate) fn calls_json(calls: &[Call], request_id: &str) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": call_id(request_id, i),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect()
}

/// A call id unique to the answer and the call's place in it.
pub(crate) fn call_id(request_id: &str, i: usize) -> String {
    let short: String = request_id.chars().take(24).collect();
    format!("call_{short}{i}")
}
