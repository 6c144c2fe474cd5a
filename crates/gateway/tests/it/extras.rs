//! Log-probabilities, structured output and tools through the real router: what the job
//! carries to the network (the constraint, the logprobs count, the rendered tool turns) and
//! the OpenAI shapes of whole and streamed answers.

use crate::common::Server;
use agora_gateway::{LogprobAlt, Prompt, TokenLogprob};
use serde_json::{json, Value};

/// A scripted piece's log-probabilities: the piece itself at -0.5 and one alternative.
pub fn logprob(t: &str) -> TokenLogprob {
    let alt = |s: &str, logprob| LogprobAlt {
        token: s.into(),
        bytes: s.as_bytes().to_vec(),
        logprob,
    };
    TokenLogprob {
        chosen: alt(t, -0.5),
        top: vec![alt(t, -0.5), alt("x", -2.0)],
    }
}

fn scripted(s: &Server, pieces: &[&str]) {
    *s.backend.script.lock().unwrap() = pieces.iter().map(|p| p.to_string()).collect();
}

fn chunks(r: &crate::common::Resp) -> Vec<Value> {
    r.events()
        .into_iter()
        .filter(|e| e != "[DONE]")
        .map(|e| serde_json::from_str(&e).unwrap())
        .collect()
}

const WEATHER: &str = "get_weather";

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": WEATHER, "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}}])
}

#[test]
fn chat_logprobs_whole_and_streamed() {
    let s = Server::start();
    scripted(&s, &["Hel", "lo"]);
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                      "logprobs": true, "top_logprobs": 2});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert_eq!(job.top_logprobs, Some(2));
    let content = &r.json()["choices"][0]["logprobs"]["content"];
    assert_eq!(content.as_array().unwrap().len(), 2);
    assert_eq!(content[0]["token"], "Hel");
    assert_eq!(content[0]["logprob"], -0.5);
    assert_eq!(content[0]["bytes"], json!([72, 101, 108]));
    assert_eq!(content[1]["top_logprobs"][1]["token"], "x");

    let mut body = body;
    body["stream"] = json!(true);
    let r = s.post("/v1/chat/completions", &body);
    let with_text: Vec<Value> = chunks(&r)
        .into_iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .collect();
    assert_eq!(with_text.len(), 2);
    assert_eq!(
        with_text[1]["choices"][0]["logprobs"]["content"][0]["token"],
        "lo"
    );
    // Without logprobs asked, none travel and none are shown.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.json()["choices"][0]["logprobs"], Value::Null);
    assert_eq!(
        s.backend
            .last_job
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .top_logprobs,
        None
    );
}

/// The tokens of a chat choice's `logprobs`, joined.
fn chat_logprob_text(lp: &Value) -> String {
    lp["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn n_choices_each_carry_their_own_logprobs() {
    let s = Server::start();
    scripted(&s, &["Hel", "lo"]);
    // Seed 7: choice 0 runs with seed 7 and ends "#7", choice 1 with seed 8 and ends "#8".
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                      "n": 2, "seed": 7, "logprobs": true, "top_logprobs": 1});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    for job in s.backend.jobs.lock().unwrap().iter() {
        assert_eq!(
            job.top_logprobs,
            Some(1),
            "every choice's job asks for logprobs"
        );
    }
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        let want = format!("Hello#{}", 7 + i);
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["content"], want.as_str());
        assert_eq!(chat_logprob_text(&c["logprobs"]), want, "choice {i}: {c}");
    }

    // Streamed: each chunk's logprobs are those of its own choice's text.
    let mut body = body;
    body["stream"] = json!(true);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut text = [String::new(), String::new()];
    let mut lp = [String::new(), String::new()];
    let mut finished = [false, false];
    for c in chunks(&r) {
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        let i = choice["index"].as_u64().unwrap() as usize;
        if let Some(t) = choice["delta"]["content"].as_str() {
            text[i].push_str(t);
        }
        if !choice["logprobs"].is_null() {
            lp[i].push_str(&chat_logprob_text(&choice["logprobs"]));
        }
        finished[i] |= choice["finish_reason"] == "stop";
    }
    for i in 0..2 {
        let want = format!("Hello#{}", 7 + i);
        assert_eq!(text[i], want, "choice {i}'s text");
        assert_eq!(lp[i], want, "choice {i}'s logprobs");
        assert!(finished[i], "choice {i} finished");
    }

    // Completions: each choice's arrays and text offsets are its own, from 0.
    let r = s.post(
        "/v1/completions",
        &json!({"model": "scripted", "prompt": "x", "n": 2, "seed": 7, "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for i in 0..2 {
        let c = &v["choices"][i];
        assert_eq!(c["index"], i);
        assert_eq!(
            c["logprobs"]["tokens"],
            json!(["Hel", "lo", format!("#{}", 7 + i)])
        );
        assert_eq!(c["logprobs"]["text_offset"], json!([0, 3, 5]));
    }
}

#[test]
fn completion_logprobs_are_parallel_arrays() {
    let s = Server::start();
    scripted(&s, &["ab", "c"]);
    let r = s.post(
        "/v1/completions",
        &json!({"model": "scripted", "prompt": "x", "logprobs": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lp = &r.json()["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["ab", "c"]));
    assert_eq!(lp["token_logprobs"], json!([-0.5, -0.5]));
    assert_eq!(lp["text_offset"], json!([0, 2]));
    assert_eq!(lp["top_logprobs"][0]["x"], -2.0);
}

#[test]
fn json_schema_is_signed_as_the_constraint_and_the_answer_validated() {
    let s = Server::start();
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
                        "required": ["n"], "additionalProperties": false});
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "num", "schema": schema, "strict": true}}});
    scripted(&s, &["{\"n\":", "4}"]);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "{\"n\":4}");
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    let signed: Value = serde_json::from_str(job.constraint.as_deref().unwrap()).unwrap();
    assert_eq!(signed, schema);

    // An answer that ended by itself outside the schema means the provider skipped the
    // constraint: never handed to the client as if it were valid.
    scripted(&s, &["{\"n\":", "\"four\"}"]);
    let e = s.post("/v1/chat/completions", &body).error(502);
    assert_eq!(e["code"], "upstream_error", "{e}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = s.post("/v1/chat/completions", &streamed);
    let last = r.events().pop().unwrap();
    assert!(last.contains("\"error\""), "{last}");

    // json_object constrains to an object.
    scripted(&s, &["{}"]);
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_object"}}),
    );
    assert_eq!(r.status, 200);
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    assert_eq!(job.constraint.as_deref(), Some(r#"{"type":"object"}"#));
}

#[test]
fn unsupported_schema_features_are_400s_that_name_them() {
    let s = Server::start();
    for (schema, feature, param) in [
        (
            json!({"type": "string", "format": "email"}),
            "format",
            "response_format.json_schema.schema",
        ),
        (
            json!({"$ref": "#/$defs/x"}),
            "$ref",
            "response_format.json_schema.schema",
        ),
    ] {
        let e = s
            .post(
                "/v1/chat/completions",
                &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
            )
            .error(400);
        assert!(e["message"].as_str().unwrap().contains(feature), "{e}");
        assert_eq!(e["param"], param);
        assert_eq!(e["code"], "unsupported_schema_feature");
    }
    let e = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": "function", "function": {"name": "f",
                              "parameters": {"type": "object", "properties": {"a": {"type": "string", "minLength": 2}}}}}]}),
        )
        .error(400);
    assert_eq!(e["param"], "tools[0].function.parameters");
    assert!(e["message"].as_str().unwrap().contains("minLength"), "{e}");
    // A schema whose grammar is too big.
    let mut wide = serde_json::Map::new();
    for i in 0..60 {
        let inner: serde_json::Map<String, Value> = (0..60)
            .map(|j| (format!("q{j}"), json!({"type": "string"})))
            .collect();
        wide.insert(
            format!("p{i}"),
            json!({"type": "object", "properties": inner}),
        );
    }
    let e = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                        "schema": {"type": "object", "properties": wide}}}}),
        )
        .error(400);
    assert_eq!(e["code"], "schema_too_large", "{e}");
    assert!(s.backend.last_job.lock().unwrap().is_none());
}

#[test]
fn a_named_tool_is_a_constrained_call_returned_whole_and_streamed() {
    let s = Server::start();
    scripted(
        &s,
        &[
            "{\"name\":\"get_weather\",",
            "\"arguments\":{\"city\":\"Paris\"}}",
        ],
    );
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": WEATHER}}});
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let c = &r.json()["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(c["message"]["content"], Value::Null);
    let call = &c["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], WEATHER);
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    // The job is constrained to the call, and the tools are in the prompt.
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    let constraint: Value = serde_json::from_str(job.constraint.as_deref().unwrap()).unwrap();
    assert_eq!(constraint["properties"]["name"]["const"], WEATHER);
    let Prompt::Chat(m) = &job.prompt else {
        panic!()
    };
    assert_eq!(m[0].role, "system");
    assert!(m[0].content.contains("<tools>") && m[0].content.contains(WEATHER));

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let cs = chunks(&s.post("/v1/chat/completions", &streamed));
    let deltas: Vec<&Value> = cs
        .iter()
        .map(|c| &c["choices"][0])
        .filter(|c| !c.is_null())
        .collect();
    let first_call = deltas
        .iter()
        .find(|d| !d["delta"]["tool_calls"].is_null())
        .unwrap();
    assert_eq!(
        first_call["delta"]["tool_calls"][0]["function"]["name"],
        WEATHER
    );
    assert_eq!(first_call["delta"]["tool_calls"][0]["index"], 0);
    let args: String = deltas
        .iter()
        .filter_map(|d| d["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    assert!(deltas
        .iter()
        .all(|d| d["delta"]["content"].as_str().is_none_or(str::is_empty)));
    assert_eq!(deltas.last().unwrap()["finish_reason"], "tool_calls");
}

#[test]
fn auto_tool_calls_are_parsed_from_the_model_format_and_results_go_back() {
    let s = Server::start();
    scripted(
        &s,
        &["<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
          "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}</tool_call>"],
    );
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": weather_tools()});
    let r = s.post("/v1/chat/completions", &body);
    let c = &r.json()["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(c["message"]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        c["message"]["tool_calls"][1]["function"]["arguments"],
        "{\"city\":\"Rome\"}"
    );
    assert!(s
        .backend
        .last_job
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .constraint
        .is_none());
    let mut one = body.clone();
    one["parallel_tool_calls"] = json!(false);
    let r = s.post("/v1/chat/completions", &one);
    assert_eq!(
        r.json()["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Plain text stays content (streamed too), with finish_reason stop.
    scripted(&s, &["It is ", "sunny."]);
    let r = s.post("/v1/chat/completions", &body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "It is sunny.");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text: String = chunks(&s.post("/v1/chat/completions", &streamed))
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "It is sunny.");

    // The round trip: the assistant's call and the tool's result are rendered back.
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "scripted", "tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": WEATHER, "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C and rain"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job = s.backend.last_job.lock().unwrap().clone().unwrap();
    let Prompt::Chat(m) = &job.prompt else {
        panic!()
    };
    assert!(
        m[2].content.contains("<tool_call>") && m[2].content.contains("Oslo"),
        "{m:?}"
    );
    assert_eq!(m[3].role, "tool");
    assert_eq!(
        m[3].content,
        "<tool_response>\n12 C and rain\n</tool_response>"
    );
}

#[test]
fn tool_misuse_is_refused_in_shape() {
    let s = Server::start();
    let m = json!([{"role": "user", "content": "hi"}]);
    for (body, param) in [
        (
            json!({"model": "scripted", "messages": m, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "scripted", "messages": m, "tools": weather_tools(),
                "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"model": "scripted", "messages": m, "tools": weather_tools(), "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "scripted", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"model": "scripted", "messages": m, "functions": []}),
            "functions",
        ),
        (
            json!({"model": "scripted", "messages": m, "tools": weather_tools(), "tool_choice": "required",
                "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ] {
        let e = s.post("/v1/chat/completions", &body).error(400);
        assert_eq!(e["param"], param, "{body}");
    }
    assert!(s.backend.last_job.lock().unwrap().is_none());
}
