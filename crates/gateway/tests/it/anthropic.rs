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
