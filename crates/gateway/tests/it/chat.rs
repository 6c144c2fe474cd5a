use crate::common::{receipts, usage_json, Server};
use agora_gateway::{ChatMessage, Prompt};
use serde_json::{json, Value};

#[test]
fn whole_chat_completion() {
    let s = Server::start();
    let r = s.post(
        "/v1/chat/completions",
        &json!({
            "model": "tiny-chat",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null},
                {"role": "user", "content": "again", "name": "bob"}
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 42,
            "stop": "\n",
            "n": 1,
            "some_future_field": {"x": 1}
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("req123"));
    let v = r.json();
    assert_eq!(v["id"], "chatcmpl-req123");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "tiny-chat");
    assert_eq!(v["system_fingerprint"], Value::Null);
    let c = &v["choices"][0];
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello, world");
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(v["usage"], usage_json());
    assert_eq!(v["agora"]["request_id"], "req123");
    assert_eq!(
        v["agora"]["receipts"],
        serde_json::to_value(receipts()).unwrap()
    );
    assert_eq!(
        v["agora"]["receipts"][0]["charged"],
        "340282366920938463463374607431768211455"
    );

    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert_eq!(job.model, "tiny-chat");
    assert_eq!(
        job.prompt,
        Prompt::Chat(vec![
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into()
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi\nthere".into()
            },
            ChatMessage {
                role: "assistant".into(),
                content: String::new()
            },
            ChatMessage {
                role: "user".into(),
                content: "again".into()
            },
        ])
    );
    assert_eq!(job.max_tokens, 256);
    assert_eq!(job.temperature, 0.5);
    assert_eq!(job.top_p, 0.9);
    assert_eq!(job.seed, Some(42));
    assert_eq!(job.stop, vec!["\n".to_string()]);

    let caller = s.backend.last_caller.lock().unwrap().clone().unwrap();
    let rec = s.keys.authenticate(&s.secret).unwrap();
    assert_eq!(caller.key_id, rec.id);
    assert_eq!(caller.account, rec.account);
    assert_eq!(
        agora_core::Keypair::from_seed(caller.account_seed).account(),
        rec.account
    );
}

#[test]
fn chat_defaults_and_max_completion_tokens() {
    let s = Server::start();
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}],
                "max_completion_tokens": 3, "max_tokens": 100, "stop": ["a", "", "b"], "seed": -1}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert_eq!(job.max_tokens, 3);
    assert_eq!(job.temperature, 1.0);
    assert_eq!(job.top_p, 1.0);
    assert_eq!(job.seed, Some(u64::MAX));
    assert_eq!(job.stop, vec!["a".to_string(), "b".to_string()]);
}

fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().unwrap(), "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[test]
fn streamed_chat_completion() {
    let s = Server::start();
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req123"));
    let c = chunks(&r.events());
    // role, 3 non-empty deltas, finish
    assert_eq!(c.len(), 5, "{c:?}");
    for ch in &c {
        assert_eq!(ch["id"], "chatcmpl-req123");
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["model"], "tiny-chat");
        assert!(ch.get("usage").is_none(), "{ch}");
    }
    assert_eq!(
        c[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(c[0]["choices"][0]["finish_reason"], Value::Null);
    let text: String = c[1..4]
        .iter()
        .map(|ch| ch["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello, world");
    assert_eq!(c[4]["choices"][0]["delta"], json!({}));
    assert_eq!(c[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(c[4]["agora"]["request_id"], "req123");
    assert_eq!(c[4]["agora"]["receipts"].as_array().unwrap().len(), 2);
    assert!(c[..4].iter().all(|ch| ch.get("agora").is_none()));
}

#[test]
fn streamed_chat_with_usage() {
    let s = Server::start();
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200);
    let c = chunks(&r.events());
    assert_eq!(c.len(), 6, "{c:?}");
    for ch in &c[..5] {
        assert_eq!(ch["usage"], Value::Null, "{ch}");
        assert_eq!(ch["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(c[4]["choices"][0]["finish_reason"], "stop");
    assert!(c[4].get("agora").is_none());
    let last = &c[5];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], usage_json());
    assert_eq!(
        last["agora"]["receipts"],
        serde_json::to_value(receipts()).unwrap()
    );
}

#[test]
fn stream_error_mid_way_sends_error_event_without_done() {
    let s = Server::start();
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "mid-error", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    );
    assert_eq!(r.status, 200);
    let ev = r.events();
    assert_ne!(ev.last().unwrap(), "[DONE]");
    assert_eq!(ev.len(), 3, "{ev:?}");
    let part: Value = serde_json::from_str(&ev[1]).unwrap();
    assert_eq!(part["choices"][0]["delta"]["content"], "part");
    let err: Value = serde_json::from_str(&ev[2]).unwrap();
    // The provider's words stay in the gateway's log.
    assert!(!err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("provider vanished"));
    assert_eq!(err["error"]["type"], "server_error");
    assert_eq!(err["error"]["code"], "upstream_error");

    // A backend that stops without finishing is an upstream error too.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "early-end", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    );
    let ev = r.events();
    let err: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");
}

#[test]
fn whole_response_errors_from_the_stream_get_a_status() {
    let s = Server::start();
    for model in ["mid-error", "early-end"] {
        let r = s.post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let e = r.error(502);
        assert_eq!(e["code"], "upstream_error");
    }
}

#[test]
fn client_disconnect_cancels_the_job() {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let s = Server::start();
    let body =
        json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": true})
            .to_string();
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n{}",
        s.auth(),
        body.len(),
        body
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("tok") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.backend.cancelled.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "job was not cancelled"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn models_list_and_get() {
    let s = Server::start();
    let r = s.get("/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let d = v["data"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["id"], "tiny-chat");
    assert_eq!(d[0]["object"], "model");
    assert_eq!(d[0]["created"], 1_700_000_000u64);
    assert_eq!(d[0]["owned_by"], "agora");
    assert_eq!(d[0]["model_id"], "11".repeat(32));
    assert_eq!(d[0]["context_length"], 2048);
    assert_eq!(d[0]["providers"], 3);

    let r = s.get("/v1/models/org/model:q4");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "org/model:q4");
    let r = s.get("/v1/models/org%2Fmodel%3Aq4");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["providers"], 1);
    let e = s.get("/v1/models/nope/x").error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["type"], "invalid_request_error");
}

#[test]
fn health_needs_no_key() {
    let s = Server::start();
    let r = crate::common::request(s.addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}
