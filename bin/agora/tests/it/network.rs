//! The network end to end: `agora devnet` as a process (ledger, gateway and providers as
//! separate processes over libp2p on loopback, serving the shipped model), talked to over
//! HTTP. A provider is killed with SIGKILL mid-stream; the answer completes on another
//! provider, reads exactly as an uninterrupted answer would, and the ledger balances equal
//! tokens times prices.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::repo_root;

/// A running devnet, stopped (SIGTERM) on drop.
pub struct Devnet {
    child: Child,
    pub info: Value,
}

impl Devnet {
    /// No audit fee, so provider balances are exactly tokens times prices.
    fn start(dir: &Path, providers: usize) -> Devnet {
        Devnet::start_with(dir, providers, &["--audit-fee-bps", "0"])
    }

    pub fn start_with(dir: &Path, providers: usize, extra: &[&str]) -> Devnet {
        let child = Command::new(env!("CARGO_BIN_EXE_agora"))
            .arg("devnet")
            .args(if extra.contains(&"--stall-ms") {
                &[][..]
            } else {
                &["--stall-ms", "2000"][..]
            })
            .args([
                "--providers",
                &providers.to_string(),
                "--port",
                "0",
                "--claim-secs",
                "1",
                "--provider-threads",
                "1",
                "--model",
            ])
            .arg(repo_root().join("models/agora-shakespeare"))
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start devnet");
        let info_path = dir.join("devnet.json");
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut devnet = Devnet {
            child,
            info: Value::Null,
        };
        while !info_path.exists() {
            assert!(Instant::now() < deadline, "devnet did not come up");
            assert!(
                devnet.child.try_wait().expect("wait").is_none(),
                "devnet exited during start-up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        devnet.info = serde_json::from_str(&std::fs::read_to_string(&info_path).expect("read"))
            .expect("json");
        devnet
    }

    pub fn endpoint(&self) -> String {
        self.info["endpoint"].as_str().expect("endpoint").into()
    }

    pub fn key(&self) -> String {
        self.info["api_key"].as_str().expect("key").into()
    }

    pub fn ledger(&self) -> String {
        self.info["ledger"].as_str().expect("ledger").into()
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "devnet did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// One HTTP/1.1 exchange through the binary's own small client; returns (status, body).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    crate::http_client::request(base, method, path, key.unwrap_or(""), body).expect("http")
}

fn open(base: &str, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> TcpStream {
    let authority = base.strip_prefix("http://").expect("http url");
    let mut s = TcpStream::connect(authority).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    s
}

/// A streamed chat completion: calls `on_chunk(count)` after each content chunk, returns
/// (text, final chunk with usage and receipts).
pub fn stream_chat(
    devnet: &Devnet,
    body: &Value,
    mut on_chunk: impl FnMut(usize),
) -> (String, Value) {
    let mut s = open(
        &devnet.endpoint(),
        "POST",
        "/v1/chat/completions",
        Some(&devnet.key()),
        Some(&body.to_string()),
    );
    let mut reader = BufReader::new(&mut s);
    let mut line = String::new();
    let mut text = String::new();
    let mut last = Value::Null;
    let mut chunks = 0;
    let mut done = false;
    while reader.read_line(&mut line).expect("read") > 0 {
        if let Some(data) = line.trim().strip_prefix("data: ") {
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(data).expect("chunk json");
            assert!(v.get("error").is_none(), "stream error: {v}");
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                if !c.is_empty() {
                    text.push_str(c);
                    chunks += 1;
                    on_chunk(chunks);
                }
            }
            if v.get("usage").is_some_and(|u| !u.is_null()) || v.get("agora").is_some() {
                if last.is_null() {
                    last = v.clone();
                } else {
                    merge(&mut last, &v);
                }
            }
        }
        line.clear();
    }
    assert!(done, "stream ended without [DONE]");
    (text, last)
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            if !v.is_null() {
                a.insert(k.clone(), v.clone());
            }
        }
    }
}

pub fn balance(devnet: &Devnet, account: &str) -> u128 {
    account_amount(devnet, account, "balance")
}

/// An amount field (`balance`, `stake`) of an account on the devnet's ledger.
pub fn account_amount(devnet: &Devnet, account: &str, field: &str) -> u128 {
    let (status, body) = http(
        &devnet.ledger(),
        "GET",
        &format!("/v1/accounts/{account}"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v[field].as_str().expect("amount").parse().expect("amount")
}

pub fn charged(receipts: &Value, provider: &str) -> u128 {
    receipts
        .as_array()
        .expect("receipts")
        .iter()
        .filter(|r| r["provider"] == provider)
        .map(|r| {
            r["charged"]
                .as_str()
                .expect("charged")
                .parse::<u128>()
                .expect("amount")
        })
        .sum()
}

/// Waits until `account` holds `want` (providers claim vouchers every second).
pub fn wait_balance(devnet: &Devnet, account: &str, want: u128) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = balance(devnet, account);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "balance of {account} is {got}, expected exactly {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn devnet_serves_pays_exactly_and_fails_over_mid_stream() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut devnet = Devnet::start(dir.path(), 2);
    let providers = devnet.info["providers"]
        .as_array()
        .expect("providers")
        .clone();
    let cheap = &providers[0];
    let pricey = &providers[1];
    let cheap_id = cheap["account"].as_str().expect("id").to_string();
    let pricey_id = pricey["account"].as_str().expect("id").to_string();
    let model = devnet.info["model"].as_str().expect("model").to_string();
    let start_funds = |p: &Value| -> u128 {
        p["funds"].as_str().expect("f").parse::<u128>().expect("n")
            - p["stake"].as_str().expect("s").parse::<u128>().expect("n")
    };

    // The model list names the model and its two providers.
    let (status, body) = http(
        &devnet.endpoint(),
        "GET",
        "/v1/models",
        Some(&devnet.key()),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let models: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(models["data"][0]["id"], model.as_str());
    assert_eq!(models["data"][0]["providers"], 2);

    // A whole answer goes to the cheaper provider and is paid exactly.
    let (status, body) = http(
        &devnet.endpoint(),
        "POST",
        "/v1/chat/completions",
        Some(&devnet.key()),
        Some(
            &json!({"model": model, "messages": [{"role": "user", "content": "Speak."}],
                     "max_tokens": 24, "seed": 5})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&body).expect("json");
    let receipts = &whole["agora"]["receipts"];
    assert_eq!(receipts.as_array().expect("r").len(), 1);
    assert_eq!(receipts[0]["provider"], cheap_id.as_str());
    let usage = &whole["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().expect("p") as u128,
        usage["completion_tokens"].as_u64().expect("c") as u128,
    );
    assert!(c > 0);
    // Prices are per million tokens: 1,000,000 in and 2,000,000 out are 1 and 2 per token.
    assert_eq!(charged(receipts, &cheap_id), p + 2 * c);
    let cheap_earned = charged(receipts, &cheap_id);
    wait_balance(&devnet, &cheap_id, start_funds(cheap) + cheap_earned);

    // A long streamed answer, failed over mid-stream when its provider is killed.
    let pricey_total = fail_over_mid_stream(&devnet, &model, cheap, &pricey_id);
    // Balances: each provider got exactly tokens times prices, the killed one kept what it
    // had claimed before it died.
    wait_balance(&devnet, &pricey_id, start_funds(pricey) + pricey_total);
    assert_eq!(
        balance(&devnet, &cheap_id),
        start_funds(cheap) + cheap_earned
    );

    // Stopping the devnet stops every process it started.
    let status = devnet.stop();
    assert!(status.success(), "devnet exit: {status}");
    for pid in [
        devnet.info["gateway_pid"].as_u64().expect("pid"),
        devnet.info["ledger_pid"].as_u64().expect("pid"),
        pricey["pid"].as_u64().expect("pid"),
    ] {
        assert!(!alive(pid as u32), "process {pid} still running");
    }
}

/// The devnet's failover, on either settlement: a long streamed answer whose serving (cheaper)
/// provider is killed after 8 chunks is finished by the pricier one, which charges the resumed
/// tokens like a prompt (twice: 2 per prompt and resumed token, 4 per new output token), and
/// the same request again (only the pricier provider left) reads exactly the same. Returns
/// what the pricier provider charged for both answers.
pub fn fail_over_mid_stream(devnet: &Devnet, model: &str, cheap: &Value, pricey_id: &str) -> u128 {
    let request = json!({"model": model, "messages": [{"role": "user", "content": "Tell a tale."}],
                         "max_tokens": 160, "seed": 11, "temperature": 1.0, "stream": true,
                         "stream_options": {"include_usage": true}});
    let cheap_pid = cheap["pid"].as_u64().expect("pid") as u32;
    let (failed_over_text, last) = stream_chat(devnet, &request, |n| {
        if n == 8 {
            signal(cheap_pid, "KILL");
        }
    });
    assert!(!alive(cheap_pid), "the provider was killed");
    let receipts = &last["agora"]["receipts"];
    assert_eq!(
        receipts.as_array().expect("r").len(),
        1,
        "only the provider that finished is paid: {last}"
    );
    assert_eq!(receipts[0]["provider"], pricey_id);
    let usage = &last["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().expect("p") as u128,
        usage["completion_tokens"].as_u64().expect("c") as u128,
    );
    let resumed_part = receipts[0]["completion_tokens"].as_u64().expect("c") as u128;
    assert!(
        resumed_part < c,
        "the second provider resumed after delivered tokens"
    );
    let pricey_earned = charged(receipts, pricey_id);
    assert_eq!(
        pricey_earned,
        2 * (p + (c - resumed_part)) + 4 * resumed_part
    );
    let (again, again_last) = stream_chat(devnet, &request, |_| {});
    assert_eq!(failed_over_text, again);
    pricey_earned + charged(&again_last["agora"]["receipts"], pricey_id)
}
