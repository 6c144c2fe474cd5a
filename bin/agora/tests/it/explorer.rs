use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http_client::request;

/// A child process killed when the test ends, passing or failing.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `agora ARGS` in `dir` and returns it with the rest of its first stdout line that
/// starts with `prefix`.
fn spawn(dir: &Path, args: &[&str], prefix: &'static str) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agora");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let found = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("agora {args:?} did not print {prefix:?}"));
    (Proc(child), found)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .expect("run agora");
    assert!(out.status.success(), "agora {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `agora explorer --ledger URL`: the standalone explorer follows a ledger it did not start,
/// shows its blocks live, and serves /metrics that parse and count its pages.
#[test]
fn the_standalone_explorer_shows_a_ledger_and_its_own_metrics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let seq = ok(d, &["keys", "new", "-o", "seq.json"]);
    let alice = ok(d, &["keys", "new", "-o", "alice.json"]);
    let bob = ok(d, &["keys", "new", "-o", "bob.json"]);
    ok(
        d,
        &[
            "ledger",
            "genesis",
            "--chain-id",
            "5",
            "--sequencer",
            &seq,
            "--alloc",
            &format!("{alice}=1000"),
            "-o",
            "genesis.json",
        ],
    );
    let (_ledger, url) = spawn(
        d,
        &[
            "ledger",
            "serve",
            "--db",
            "l.redb",
            "--listen",
            "127.0.0.1:0",
            "--genesis",
            "genesis.json",
            "--sequencer-key",
            "seq.json",
        ],
        "listening on ",
    );
    let (_explorer, pages) = spawn(
        d,
        &["explorer", "--ledger", &url, "--listen", "127.0.0.1:0"],
        "explorer ",
    );
    let base = pages.trim_end_matches("/explorer").to_string();
    ok(
        d,
        &[
            "ledger",
            "transfer",
            "--url",
            &url,
            "--key",
            "alice.json",
            "--to",
            &bob,
            "--amount",
            "250",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = request(&base, "GET", "/explorer/blocks", "", None).expect("GET");
        assert_eq!(status, 200);
        if body.contains("Transfer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transfer's block never showed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = request(&base, "GET", "/metrics", "", None).expect("GET");
    assert_eq!(status, 200);
    let samples = agora_metrics::text::parse(&body).expect("valid exposition text");
    let pages_served = agora_metrics::text::sum(
        &samples,
        "agora_http_requests_total",
        &[("route", "/explorer/{*rest}"), ("status", "200")],
    );
    assert!(pages_served >= 1.0, "the page views were counted");
    let (status, _) = request(&base, "GET", "/explorer/help", "", None).expect("GET");
    assert_eq!(status, 404);
}
