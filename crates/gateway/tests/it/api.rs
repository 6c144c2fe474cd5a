//! What developers and agents need past the basics: model metadata, reconcilable usage and
//! receipts, n > 1, routing controls and fallbacks, and spending keys with budgets enforced
//! under concurrency.

use crate::common::{request, Server, FAKE_COST};
use serde_json::{json, Value};

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn post_with(s: &Server, secret: &str, path: &str, body: &Value) -> crate::common::Resp {
    let auth = format!("Bearer {secret}");
    request(
        s.addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn get_with(s: &Server, secret: &str, path: &str) -> crate::common::Resp {
    let auth = format!("Bearer {secret}");
    request(s.addr, "GET", path, &[("Authorization", &auth)], b"")
}

#[test]
fn models_say_what_they_are_and_cost() {
    let s = Server::start();
    let v = s.get("/v1/models").json();
    let m = &v["data"][0];
    assert_eq!(m["quantization"], "Q4_1");
    assert_eq!(m["providers"], 3);
    assert_eq!(
        m["pricing"]["prompt"],
        json!({"lowest": "100", "median": "200"})
    );
    // Even count: the lower middle, a price someone offers.
    assert_eq!(
        m["pricing"]["completion"],
        json!({"lowest": "200", "median": "400"})
    );
    let params: Vec<&str> = m["supported_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in ["n", "provider", "models", "seed", "stop"] {
        assert!(params.contains(&p), "{params:?}");
    }
    assert_eq!(v["data"][1]["quantization"], Value::Null);
}

fn params_of(m: &Value) -> Vec<String> {
    m["supported_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn supported_parameters_follow_what_live_offers_serve() {
    let s = Server::start();
    let v = s.get("/v1/models").json();
    let full = params_of(&v["data"][0]);
    let plain = params_of(&v["data"][1]);
    for p in [
        "tools",
        "tool_choice",
        "response_format",
        "logprobs",
        "top_logprobs",
    ] {
        assert!(full.iter().any(|x| x == p), "{full:?}");
        // No live offer of this model serves them: they are not claimed.
        assert!(!plain.iter().any(|x| x == p), "{plain:?}");
    }
    assert!(plain.iter().any(|x| x == "provider"));
}

#[test]
fn jobs_say_when_they_carry_tools() {
    let s = Server::start();
    let tool =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    for (choice, uses) in [
        (json!("auto"), true),
        (json!("required"), true),
        (json!("none"), false),
    ] {
        let mut body = chat("tiny-chat");
        body["tools"] = tool.clone();
        body["tool_choice"] = choice.clone();
        s.post("/v1/chat/completions", &body);
        let job = s.backend.last_job.lock().unwrap().clone().unwrap();
        assert_eq!(job.tools, uses, "{choice}");
    }
    s.post("/v1/chat/completions", &chat("tiny-chat"));
    assert!(!s.backend.last_job.lock().unwrap().clone().unwrap().tools);
}

#[test]
fn n_choices_are_separate_jobs_indexed_and_summed() {
    let s = Server::start();
    let mut body = chat("tiny-chat");
    body["n"] = json!(3);
    body["seed"] = json!(10);
    let v = s.post("/v1/chat/completions", &body).json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], "Hello, world");
    }
    // Each choice its own job; seeded choices differ by their index.
    let seeds: Vec<Option<u64>> = s
        .backend
        .jobs
        .lock()
        .unwrap()
        .iter()
        .map(|j| j.seed)
        .collect();
    assert_eq!(seeds, vec![Some(10), Some(11), Some(12)]);
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert_eq!(v["agora"]["receipts"].as_array().unwrap().len(), 6);

    // Streamed: every choice's role chunk, pieces and finish carry its index, then one usage.
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = s.post("/v1/chat/completions", &body).events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for i in 0..3 {
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello, world");
        let finishes = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == i && c["choices"][0]["finish_reason"] == "stop")
            .count();
        assert_eq!(finishes, 1);
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 9);
    assert_eq!(last["agora"]["request_ids"].as_array().unwrap().len(), 3);
}

#[test]
fn routing_controls_reach_the_backend_and_models_fall_back() {
    let s = Server::start();
    let a = "ab".repeat(32);
    let mut body = chat("busy");
    body["models"] = json!(["norouting", "tiny-chat"]);
    body["provider"] = json!({"order": [a], "allow_fallbacks": false, "sort": "price",
                              "max_price": {"prompt": 10, "completion": "20"}});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    // The first model that could serve answered, and says so.
    assert_eq!(r.json()["model"], "tiny-chat");
    let jobs = s.backend.jobs.lock().unwrap().clone();
    let tried: Vec<&str> = jobs.iter().map(|j| j.model.as_str()).collect();
    assert_eq!(tried, vec!["busy", "norouting", "tiny-chat"]);
    let p = &jobs[2].routing;
    assert_eq!(p.order, vec!["ab".repeat(32)]);
    assert!(!p.allow_fallbacks);
    assert_eq!(
        (p.max_price_prompt, p.max_price_completion),
        (Some(10), Some(20))
    );
    // Nothing matches at all: 404 no_matching_provider in OpenAI's shape.
    let e = s
        .post("/v1/chat/completions", &chat("norouting"))
        .error(404);
    assert_eq!(e["code"], "no_matching_provider");
}

#[test]
fn usage_names_the_receipt_the_payer_can_fetch_and_others_cannot() {
    let s = Server::start();
    let v = s.post("/v1/chat/completions", &chat("tiny-chat")).json();
    let id = v["usage"]["receipt_id"].as_str().unwrap().to_string();
    let r = s.get(&format!("/v1/receipts/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "dd".repeat(32));
    let (other, _) = s.keys.create("someone else").unwrap();
    let e = get_with(&s, &other, &format!("/v1/receipts/{id}")).error(404);
    assert_eq!(e["code"], "receipt_not_found");
    s.get("/v1/receipts/nothex").error(404);
}

/// The attack: a child key with a budget for 3 answers fires 50 concurrent requests. Every
/// answer reserves its most cost before it may be paid; at most 3 get through, the rest are
/// 402 in OpenAI's shape, and the spend never passes the budget.
#[test]
fn a_child_key_cannot_overspend_its_budget_under_50_concurrent_requests() {
    let s = Server::start();
    let minted = s.post(
        "/v1/keys",
        &json!({"label": "agent", "budget": 3 * FAKE_COST}),
    );
    assert_eq!(minted.status, 200, "{}", minted.text());
    let child = minted.json()["key"].as_str().unwrap().to_string();
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..50)
            .map(|_| sc.spawn(|| post_with(&s, &child, "/v1/chat/completions", &chat("paid"))))
            .collect();
        hs.into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                if r.status != 200 {
                    let e = r.error(402);
                    assert_eq!(e["code"], "budget_exceeded");
                }
                r.status
            })
            .collect()
    });
    let ok = statuses.iter().filter(|&&c| c == 200).count();
    assert!((1..=3).contains(&ok), "{statuses:?}");
    let k = get_with(&s, &child, "/v1/key").json();
    let spent: u128 = k["spent"].as_str().unwrap().parse().unwrap();
    assert!(spent <= 3 * FAKE_COST, "{k}");
    assert_eq!(spent, ok as u128 * FAKE_COST);
    // The parent sees the child's spend as its own.
    let parent = s.get("/v1/key").json();
    assert_eq!(parent["spent"], k["spent"]);
    assert_eq!(parent["budget"], Value::Null);
    assert_eq!(k["budget"], (3 * FAKE_COST).to_string());
    assert_eq!(k["parent"], parent["id"]);
}

#[test]
fn child_keys_are_no_wider_than_their_parent() {
    let s = Server::start();
    let c = s
        .post(
            "/v1/keys",
            &json!({"budget": "100", "requests_per_minute": 100, "models": ["tiny-chat"],
                    "expires_at": 4_000_000_000u64}),
        )
        .json();
    let child = c["key"].as_str().unwrap().to_string();
    // A grandchild above its parent's budget, rate or models is refused.
    for (body, param) in [
        (json!({"budget": 101}), "budget"),
        (
            json!({"budget": 1, "requests_per_minute": 101}),
            "requests_per_minute",
        ),
        (json!({"budget": 1, "models": ["org/model:q4"]}), "models"),
        (
            json!({"budget": 1, "expires_at": 4_000_000_001u64}),
            "expires_at",
        ),
        (json!({}), "budget"),
    ] {
        let e = post_with(&s, &child, "/v1/keys", &body).error(400);
        assert_eq!(e["param"], param, "{body}");
    }
    // A model outside the key's list is 403.
    let lister = s
        .post("/v1/keys", &json!({"budget": 5, "models": ["tiny-chat"]}))
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let e = post_with(&s, &lister, "/v1/chat/completions", &chat("org/model:q4")).error(403);
    assert_eq!(e["code"], "model_not_allowed");
    // Two requests a minute: the third is 429 with Retry-After.
    let child = post_with(
        &s,
        &child,
        "/v1/keys",
        &json!({"budget": 10, "requests_per_minute": 2}),
    )
    .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        assert_eq!(
            post_with(&s, &child, "/v1/chat/completions", &chat("tiny-chat")).status,
            200
        );
    }
    let r = post_with(&s, &child, "/v1/chat/completions", &chat("tiny-chat"));
    assert_eq!(r.error(429)["code"], "rate_limit_exceeded");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // An expired key is 401.
    let (secret, _) = s
        .keys
        .create_with(
            "old",
            agora_gateway::KeyPolicy {
                expires_ms: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let e = get_with(&s, &secret, "/v1/key").error(401);
    assert!(e["message"].as_str().unwrap().contains("expired"));
}

/// Regression: `n` choices are n jobs; a key with room for fewer requests cannot start more.
#[test]
fn n_choices_count_against_the_keys_rate() {
    let s = Server::start();
    let c = s
        .post(
            "/v1/keys",
            &json!({"budget": 100, "requests_per_minute": 3}),
        )
        .json();
    let key = c["key"].as_str().unwrap().to_string();
    let mut body = chat("tiny-chat");
    body["n"] = json!(4);
    let e = post_with(&s, &key, "/v1/chat/completions", &body).error(429);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(s.backend.jobs.lock().unwrap().is_empty());
}
