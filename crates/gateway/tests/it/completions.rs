use crate::common::{usage_json, Server};
use agora_gateway::Prompt;
use serde_json::{json, Value};

#[test]
fn whole_text_completion() {
    let s = Server::start();
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny-chat", "prompt": ["Once upon"], "echo": false, "logprobs": null,
                "suffix": null, "best_of": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "cmpl-req123");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny-chat");
    let c = &v["choices"][0];
    assert_eq!(c["text"], "Hello, world");
    assert_eq!(c["index"], 0);
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(v["usage"], usage_json());
    assert_eq!(v["agora"]["receipts"].as_array().unwrap().len(), 2);
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert_eq!(job.prompt, Prompt::Text("Once upon".into()));
    assert_eq!(job.max_tokens, 16, "OpenAI's default for completions");
}

#[test]
fn streamed_text_completion_with_usage() {
    let s = Server::start();
    for include_usage in [false, true] {
        let mut body =
            json!({"model": "tiny-chat", "prompt": "Once", "stream": true, "max_tokens": 2});
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 200);
        let ev = r.events();
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let c: Vec<Value> = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(c.len(), if include_usage { 5 } else { 4 }, "{c:?}");
        let text: String = c[..3]
            .iter()
            .map(|ch| ch["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello, world");
        for ch in &c {
            assert_eq!(ch["object"], "text_completion");
            assert_eq!(ch["id"], "cmpl-req123");
            assert_eq!(ch.get("usage").is_some(), include_usage);
        }
        assert_eq!(c[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(c[3]["choices"][0]["text"], "");
        let last = c.last().unwrap();
        assert_eq!(last["agora"]["request_id"], "req123");
        if include_usage {
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"]["total_tokens"], 8);
        }
    }
}
