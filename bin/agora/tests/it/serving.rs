//! Serving many users at once end to end: one provider of a real devnet (ledger, gateway and
//! provider as processes over libp2p, the shipped model) takes many concurrent streamed
//! requests through the gateway. Every stream completes with one receipt whose counts and
//! charge are the answer's, the provider is paid exactly the sum, and an answer computed in
//! the crowd reads exactly as the same request served alone.

use std::time::Duration;

use serde_json::{json, Value};

use crate::network::{balance, charged, stream_chat, wait_balance, Devnet};

const CLIENTS: usize = 24;

fn request(model: &str, i: usize) -> Value {
    json!({"model": model,
           "messages": [{"role": "user", "content": format!("Speak, citizen {i}.")}],
           "max_tokens": 8 + (i * 7) % 33, "seed": 100 + i, "temperature": 1.0,
           "stream": true, "stream_options": {"include_usage": true}})
}

#[test]
fn many_concurrent_streams_complete_with_exact_receipts_and_payment() {
    let dir = tempfile::tempdir().expect("tmp");
    let devnet = Devnet::start_with(
        dir.path(),
        1,
        &[
            "--audit-fee-bps",
            "0",
            "--verifiers",
            "0",
            "--provider-capacity",
            "64",
            // Queued streams wait for their first token longer than a stall on an idle box.
            "--stall-ms",
            "60000",
        ],
    );
    let provider = devnet.info["providers"][0].clone();
    let id = provider["account"].as_str().expect("id").to_string();
    let model = devnet.info["model"].as_str().expect("model").to_string();
    let funds = |p: &Value| -> u128 {
        p["funds"].as_str().expect("f").parse::<u128>().expect("n")
            - p["stake"].as_str().expect("s").parse::<u128>().expect("n")
    };

    let answers: Vec<(String, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (devnet, body) = (&devnet, request(&model, i));
                s.spawn(move || stream_chat(devnet, &body, |_| {}))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client panicked"))
            .collect()
    });
    let mut earned = 0u128;
    for (i, (text, last)) in answers.iter().enumerate() {
        let receipts = last["agora"]["receipts"].as_array().expect("receipts");
        assert_eq!(receipts.len(), 1, "client {i}: {last}");
        let usage = &last["usage"];
        let (p, c) = (
            usage["prompt_tokens"].as_u64().expect("p") as u128,
            usage["completion_tokens"].as_u64().expect("c") as u128,
        );
        assert!(c > 0, "client {i} got no tokens");
        assert!(c <= (8 + (i * 7) % 33) as u128);
        assert_eq!(
            receipts[0]["completion_tokens"].as_u64().expect("c") as u128,
            c,
            "client {i}: the receipt counts what was streamed"
        );
        // 1 per prompt token, 2 per output token.
        let charge = charged(&last["agora"]["receipts"], &id);
        assert_eq!(charge, p + 2 * c, "client {i}");
        earned += charge;
        assert!(!text.is_empty() || c == 0);
    }
    wait_balance(&devnet, &id, funds(&provider) + earned);

    // Served alone, a request streams exactly what it streamed in the crowd.
    for i in [0, 7, CLIENTS - 1] {
        let (alone, last) = stream_chat(&devnet, &request(&model, i), |_| {});
        assert_eq!(
            alone, answers[i].0,
            "client {i}: alone and in the crowd differ"
        );
        earned += charged(&last["agora"]["receipts"], &id);
    }
    wait_balance(&devnet, &id, funds(&provider) + earned);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(balance(&devnet, &id), funds(&provider) + earned);
}
