use crate::common::{request, Server};
use serde_json::{json, Value};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn auth_errors_are_401_invalid_api_key() {
    let s = Server::start();
    let body = chat("tiny-chat").to_string();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("Authorization", "Basic abc")],
        vec![(
            "Authorization",
            "Bearer sk-agora-000000000000000000000000000000000000000000abcd",
        )],
        vec![("Authorization", "Bearer ")],
    ];
    for headers in cases {
        let r = request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            body.as_bytes(),
        );
        let e = r.error(401);
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "invalid_api_key");
    }
    let r = request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[(
            "Authorization",
            "Bearer sk-agora-000000000000000000000000000000000000000000abcd",
        )],
        body.as_bytes(),
    );
    let msg = r.error(401)["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("Incorrect API key provided: sk-ag****abcd"),
        "{msg}"
    );
    // Models need a key too.
    request(s.addr, "GET", "/v1/models", &[], b"").error(401);
    request(s.addr, "GET", "/v1/models/tiny-chat", &[], b"").error(401);
}

#[test]
fn revoked_key_is_refused_at_once() {
    let s = Server::start();
    assert_eq!(
        s.post("/v1/chat/completions", &chat("tiny-chat")).status,
        200
    );
    let rec = s.keys.authenticate(&s.secret).unwrap();
    s.keys.revoke(&rec.id).unwrap();
    let e = s
        .post("/v1/chat/completions", &chat("tiny-chat"))
        .error(401);
    assert_eq!(e["code"], "invalid_api_key");
    assert!(e["message"].as_str().unwrap().contains("revoked"));
}

#[test]
fn malformed_bodies_are_400() {
    let s = Server::start();
    let auth = s.auth();
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for body in [
        &b"{not json"[..],
        b"",
        b"[1,2]",
        b"\"x\"",
        b"{\"model\": \"tiny-chat\", \"messages\": ",
    ] {
        let r = request(s.addr, "POST", "/v1/chat/completions", &h, body);
        let e = r.error(400);
        assert_eq!(e["type"], "invalid_request_error");
    }
}

fn bad(s: &Server, path: &str, body: Value, param: &str) -> Value {
    let r = s.post(path, &body);
    let e = r.error(400);
    assert_eq!(e["type"], "invalid_request_error", "{body}");
    assert_eq!(e["param"], param, "{body} -> {e}");
    e
}

#[test]
fn invalid_chat_fields_are_400_with_param() {
    let s = Server::start();
    let p = "/v1/chat/completions";
    let m = json!([{"role": "user", "content": "hi"}]);
    bad(&s, p, json!({"messages": m}), "model");
    bad(&s, p, json!({"model": 5, "messages": m}), "model");
    bad(&s, p, json!({"model": "tiny-chat"}), "messages");
    let e = bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": []}),
        "messages",
    );
    assert_eq!(e["code"], "empty_array");
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": "hi"}),
        "messages",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": [{"role": "function", "content": "x"}]}),
        "messages[0].role",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": [{"content": "x"}]}),
        "messages[0].role",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": [{"role": "user"}]}),
        "messages[0].content",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": [{"role": "user", "content": 3}]}),
        "messages[0].content",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        "messages[0].content[0].type",
    );
    let e = bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "max_tokens": 0}),
        "max_tokens",
    );
    assert_eq!(e["code"], "integer_below_min_value");
    let e = bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "max_tokens": 4097}),
        "max_tokens",
    );
    assert_eq!(e["code"], "integer_above_max_value");
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "max_tokens": 1e30}),
        "max_tokens",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "max_tokens": "5"}),
        "max_tokens",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "max_completion_tokens": -1}),
        "max_completion_tokens",
    );
    let e = bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "temperature": "hot"}),
        "temperature",
    );
    assert_eq!(e["code"], "invalid_type");
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "temperature": 2.5}),
        "temperature",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "temperature": -0.1}),
        "temperature",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "top_p": 0}),
        "top_p",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "top_p": 1.5}),
        "top_p",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "seed": 1.5}),
        "seed",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "stop": ["a", "b", "c", "d", "e"]}),
        "stop",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "stop": [1]}),
        "stop[0]",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "n": 9}),
        "n",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "n": 0}),
        "n",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "provider": {"order": ["x"]}}),
        "provider.order[0]",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "provider": {"sort": "cheapest"}}),
        "provider.sort",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "models": "tiny-chat"}),
        "models",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "stream": "yes"}),
        "stream",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "stream_options": {"include_usage": true}}),
        "stream_options",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "logprobs": true, "top_logprobs": 21}),
        "top_logprobs",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "tools": [{"type": "function"}]}),
        "tools[0].function",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "messages": m, "response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a"}}}}),
        "response_format.json_schema.schema",
    );
    // Nothing reached the network.
    assert!(s.backend.last_job.lock().unwrap().is_none());
    // Explicit nulls and empty tools are fine.
    let ok = json!({"model": "tiny-chat", "messages": m, "max_tokens": null, "temperature": null,
                    "tools": [], "response_format": {"type": "text"}, "stream": false, "n": null});
    assert_eq!(s.post(p, &ok).status, 200);
}

#[test]
fn invalid_completion_fields_are_400_with_param() {
    let s = Server::start();
    let p = "/v1/completions";
    bad(&s, p, json!({"model": "tiny-chat"}), "prompt");
    bad(&s, p, json!({"model": "tiny-chat", "prompt": ""}), "prompt");
    bad(&s, p, json!({"model": "tiny-chat", "prompt": []}), "prompt");
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": ["a", "b"]}),
        "prompt",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": [1, 2, 3]}),
        "prompt",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x", "echo": true}),
        "echo",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x", "logprobs": 6}),
        "logprobs",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x", "suffix": "end"}),
        "suffix",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x", "best_of": 2}),
        "best_of",
    );
    bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x", "max_tokens": 0}),
        "max_tokens",
    );
    let e = bad(
        &s,
        p,
        json!({"model": "tiny-chat", "prompt": "x".repeat(64 * 1024 + 1)}),
        "prompt",
    );
    assert_eq!(e["code"], "context_length_exceeded");
}

#[test]
fn prompt_over_limit_is_context_length_exceeded() {
    let s = Server::start();
    let big = "y".repeat(40 * 1024);
    let e = bad(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny-chat", "messages": [{"role": "user", "content": big}, {"role": "user", "content": big}]}),
        "messages",
    );
    assert_eq!(e["code"], "context_length_exceeded");
}

#[test]
fn backend_errors_map_to_openai_statuses() {
    let s = Server::start();
    let cases = [
        (
            "nope",
            404,
            "invalid_request_error",
            Some("model_not_found"),
            None,
        ),
        (
            "no-credit",
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            None,
        ),
        ("busy", 503, "overloaded", Some("no_capacity"), None),
        (
            "ctx",
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some("messages"),
        ),
        (
            "upstream",
            502,
            "server_error",
            Some("upstream_error"),
            None,
        ),
        (
            "internal",
            500,
            "server_error",
            Some("internal_error"),
            None,
        ),
        (
            "invalid",
            400,
            "invalid_request_error",
            None,
            Some("temperature"),
        ),
    ];
    for (model, status, kind, code, param) in cases {
        for stream in [false, true] {
            let mut body = chat(model);
            body["stream"] = json!(stream);
            let r = s.post("/v1/chat/completions", &body);
            let e = r.error(status);
            assert_eq!(e["type"], kind, "{model}");
            assert_eq!(e["code"].as_str(), code, "{model}");
            assert_eq!(e["param"].as_str(), param, "{model}");
            if model == "no-credit" {
                assert_eq!(r.header("x-should-retry"), Some("false"));
            }
            if model == "busy" {
                assert_eq!(r.header("retry-after"), Some("1"));
            }
        }
    }
    let e = s.post("/v1/chat/completions", &chat("gpt-9")).error(404);
    assert_eq!(
        e["message"],
        "The model `gpt-9` does not exist or you do not have access to it."
    );
    let e = s
        .post("/v1/completions", &json!({"model": "ctx", "prompt": "x"}))
        .error(400);
    assert_eq!(e["param"], "prompt");
}

#[test]
fn unknown_routes_and_methods_use_the_json_shape() {
    let s = Server::start();
    let e = s.get("/v1/nothing").error(404);
    assert_eq!(e["message"], "Invalid URL (GET /v1/nothing)");
    s.post("/v2/chat/completions", &json!({})).error(404);
    s.get("/v1/chat/completions").error(405);
    s.post("/v1/models", &json!({})).error(405);
    let auth = s.auth();
    request(
        s.addr,
        "DELETE",
        "/v1/completions",
        &[("Authorization", &auth)],
        b"",
    )
    .error(405);
}

#[test]
fn one_key_over_its_rate_gets_429_with_retry_after() {
    let s = Server::with_limits(agora_gateway::Limits {
        per_key: agora_gateway::KeyLimits {
            per_second: 1,
            burst: 2,
            concurrent: 8,
        },
        ..agora_gateway::Limits::default()
    });
    let body = json!({"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(s.post("/v1/chat/completions", &body).status, 200);
    assert_eq!(s.post("/v1/chat/completions", &body).status, 200);
    let r = s.post("/v1/chat/completions", &body);
    let e = r.error(429);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").is_some());
}
