//! The Anthropic Messages dialect: whole and streamed answers with Anthropic's shapes and
//! event types, `x-api-key` auth, and errors in Anthropic's shape.

use crate::common::{request, Server};
use serde_json::{json, Value};

fn post(s: &Server, body: &Value) -> crate::common::Resp {
    request(
        s.addr,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", &s.secret),
            ("anthropic-version", "2023-06-01"),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn body() -> Value {
    json!({"model": "tiny-chat", "max_tokens": 16, "system": "Be brief.",
           "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
           "stop_sequences": ["\n\n"]})
}

#[test]
fn whole_message() {
    let s = Server::start();
    let r = post(&s, &body());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello, world"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["usage"]["receipt_id"], "dd".repeat(32));
    assert!(r.header("request-id").is_some());
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    match job.prompt {
        agora_gateway::Prompt::Chat(m) => {
            assert_eq!(m[0].role, "system");
            assert_eq!(m[1].content, "hi");
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(job.stop, vec!["\n\n".to_string()]);
}

#[test]
fn streamed_message_has_anthropics_event_sequence() {
    let s = Server::start();
    let mut b = body();
    b["stream"] = json!(true);
    let r = post(&s, &b);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let mut names = Vec::new();
    let mut out = String::new();
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = ev.split_once('\n').unwrap();
        let name = name.strip_prefix("event: ").unwrap();
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], name);
        if name == "content_block_delta" {
            out.push_str(data["delta"]["text"].as_str().unwrap());
        }
        if name == "message_delta" {
            assert_eq!(data["delta"]["stop_reason"], "end_turn");
            assert_eq!(data["usage"]["output_tokens"], 3);
        }
        if !names.contains(&name.to_string()) {
            names.push(name.to_string());
        }
    }
    assert_eq!(out, "Hello, world");
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
}

#[test]
fn errors_are_in_anthropics_shape() {
    let s = Server::start();
    let shape = |r: &crate::common::Resp, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    };
    let mut b = body();
    b.as_object_mut().unwrap().remove("max_tokens");
    shape(&post(&s, &b), 400, "invalid_request_error");
    let mut b = body();
    b["temperature"] = json!(1.5);
    shape(&post(&s, &b), 400, "invalid_request_error");
    let mut b = body();
    b["model"] = json!("nope");
    shape(&post(&s, &b), 404, "not_found_error");
    b["model"] = json!("busy");
    shape(&post(&s, &b), 503, "overloaded_error");
    let r = request(
        s.addr,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-agora-wrong"),
            ("Content-Type", "application/json"),
        ],
        body().to_string().as_bytes(),
    );
    shape(&r, 401, "authentication_error");
}

fn scripted(s: &Server, pieces: &[&str]) {
    *s.backend.script.lock().unwrap() = pieces.iter().map(|p| p.to_string()).collect();
}

fn weather() -> Value {
    json!([{"name": "get_weather", "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"], "additionalProperties": false}}])
}

/// Events of an Anthropic stream as (name, data), each data's `type` checked to be its name.
fn events(r: &crate::common::Resp) -> Vec<(String, Value)> {
    r.text()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|ev| {
            let (name, data) = ev.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

#[test]
fn a_required_tool_is_a_constrained_tool_use_whole_and_streamed() {
    let s = Server::start();
    scripted(
        &s,
        &[
            "{\"name\":\"get_weather\",",
            "\"arguments\":{\"city\":\"Paris\"}}",
        ],
    );
    for choice in [
        json!({"type": "any"}),
        json!({"type": "tool", "name": "get_weather"}),
    ] {
        let b = json!({"model": "scripted", "max_tokens": 60, "tools": weather(), "tool_choice": choice,
                       "messages": [{"role": "user", "content": "Weather in Paris?"}]});
        let r = post(&s, &b);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["stop_reason"], "tool_use");
        let content = v["content"].as_array().unwrap();
        assert_eq!(content.len(), 1, "{v}");
        assert_eq!(content[0]["type"], "tool_use");
        assert_eq!(content[0]["name"], "get_weather");
        assert_eq!(content[0]["input"], json!({"city": "Paris"}));
        assert!(content[0]["id"].as_str().unwrap().starts_with("toolu_"));
        // The same signed constraint as the OpenAI routes, and the tools in the prompt.
        let job = s.backend.last_job.lock().unwrap().clone().unwrap();
        assert!(job.tools);
        let constraint: Value = serde_json::from_str(job.constraint.as_deref().unwrap()).unwrap();
        assert_eq!(
            constraint["properties"]["arguments"]["required"],
            json!(["city"])
        );
        let agora_gateway::Prompt::Chat(m) = &job.prompt else {
            panic!()
        };
        assert!(m[0].content.contains("<tools>") && m[0].content.contains("get_weather"));

        let mut streamed = b.clone();
        streamed["stream"] = json!(true);
        let evs = events(&post(&s, &streamed));
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &evs[2].1;
        assert_eq!(start["index"], 0);
        assert_eq!(start["content_block"]["type"], "tool_use");
        assert_eq!(start["content_block"]["name"], "get_weather");
        assert_eq!(start["content_block"]["input"], json!({}));
        assert_eq!(start["content_block"]["id"], content[0]["id"]);
        let delta = &evs[3].1["delta"];
        assert_eq!(delta["type"], "input_json_delta");
        let input: Value = serde_json::from_str(delta["partial_json"].as_str().unwrap()).unwrap();
        assert_eq!(input, json!({"city": "Paris"}));
        assert_eq!(evs[5].1["delta"]["stop_reason"], "tool_use");
    }
}

#[test]
fn auto_tool_use_after_text_and_the_round_trip_render_like_openai() {
    let s = Server::start();
    scripted(
        &s,
        &["Let me check.\n", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"],
    );
    let b = json!({"model": "scripted", "max_tokens": 60, "tools": weather(),
                   "messages": [{"role": "user", "content": "Weather?"}]});
    let v = post(&s, &b).json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "Let me check."})
    );
    assert_eq!(v["content"][1]["type"], "tool_use");
    assert_eq!(v["content"][1]["input"], json!({"city": "Oslo"}));
    assert!(s
        .backend
        .last_job
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .constraint
        .is_none());
    // Streamed: text is held while it may be a call (as on the OpenAI routes, text that
    // cannot be one streams at once); two calls are two tool_use blocks.
    scripted(
        &s,
        &["<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
          "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}</tool_call>"],
    );
    let mut streamed = b.clone();
    streamed["stream"] = json!(true);
    let evs = events(&post(&s, &streamed));
    let starts: Vec<&Value> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["content_block"]["type"], "tool_use");
    assert_eq!(starts[1]["content_block"]["type"], "tool_use");
    assert_eq!(starts[1]["index"], 1);
    let inputs: Vec<Value> = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    assert_eq!(inputs, [json!({"city": "Oslo"}), json!({"city": "Rome"})]);
    let stops = evs
        .iter()
        .filter(|(n, _)| n == "content_block_stop")
        .count();
    assert_eq!(stops, 2);
    // disable_parallel_tool_use keeps the first call only.
    let mut one = b.clone();
    one["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    let v = post(&s, &one).json();
    assert_eq!(v["content"].as_array().unwrap().len(), 1, "{v}");

    // Plain text with tools offered: text, end_turn, streamed at once.
    scripted(&s, &["It is ", "sunny."]);
    let v = post(&s, &b).json();
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "It is sunny."}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    let evs = events(&post(&s, &streamed));
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "It is sunny.");
    assert!(evs
        .iter()
        .any(|(_, d)| d["delta"]["stop_reason"] == "end_turn"));

    // The round trip: tool_use and tool_result blocks render as the OpenAI routes render
    // assistant tool_calls and tool messages.
    let r = post(
        &s,
        &json!({"model": "scripted", "max_tokens": 60, "tools": weather(), "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12 C and rain"}]},
                {"type": "text", "text": "And tomorrow?"}]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    let agora_gateway::Prompt::Chat(m) = &job.prompt else {
        panic!()
    };
    assert_eq!(m[2].role, "assistant");
    assert_eq!(
        m[2].content,
        "Let me check.\n<tool_call>\n{\"arguments\":{\"city\":\"Oslo\"},\"name\":\"get_weather\"}\n</tool_call>"
    );
    assert_eq!(m[3].role, "tool");
    assert_eq!(
        m[3].content,
        "<tool_response>\n12 C and rain\n</tool_response>"
    );
    assert_eq!(m[4].role, "user");
    assert_eq!(m[4].content, "And tomorrow?");
    // tool_choice none: the model is not told of the tools.
    let mut none = b.clone();
    none["tool_choice"] = json!({"type": "none"});
    post(&s, &none);
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert!(!job.tools);
    let agora_gateway::Prompt::Chat(m) = &job.prompt else {
        panic!()
    };
    assert!(!m[0].content.contains("<tools>"));
}

#[test]
fn a_forced_call_that_breaks_its_schema_is_not_handed_over() {
    let s = Server::start();
    scripted(
        &s,
        &["{\"name\":\"get_weather\",\"arguments\":{\"town\":1}}"],
    );
    let b = json!({"model": "scripted", "max_tokens": 60, "tools": weather(),
                   "tool_choice": {"type": "any"},
                   "messages": [{"role": "user", "content": "Weather?"}]});
    let r = post(&s, &b);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    let mut streamed = b.clone();
    streamed["stream"] = json!(true);
    let evs = events(&post(&s, &streamed));
    assert_eq!(evs.last().unwrap().0, "error");
    assert!(!evs.iter().any(|(n, _)| n == "content_block_start"));
}

#[test]
fn tool_misuse_is_refused_in_anthropics_shape() {
    let s = Server::start();
    let m = json!([{"role": "user", "content": "hi"}]);
    for (bad, param) in [
        (json!({"tools": [{"name": "x"}]}), "input_schema"),
        (
            json!({"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]}),
            "name",
        ),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "type",
        ),
        (
            json!({"tools": weather(), "tool_choice": {"type": "tool", "name": "other"}}),
            "other",
        ),
        (
            json!({"tools": weather(), "tool_choice": {"type": "sometimes"}}),
            "tool_choice",
        ),
        (json!({"tool_choice": {"type": "any"}}), "tool_choice"),
        (
            json!({"tools": [{"name": "f", "input_schema": {"type": "string", "pattern": "a"}}]}),
            "pattern",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
            "assistant",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            "tool_use_id",
        ),
    ] {
        let mut b = json!({"model": "scripted", "max_tokens": 8, "messages": m});
        for (k, v) in bad.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = post(&s, &b);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(param), "{bad}: {msg}");
    }
}
