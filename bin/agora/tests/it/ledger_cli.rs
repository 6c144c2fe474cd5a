use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn agora(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .args(args)
        .output()
        .expect("run agora")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = agora(dir, args);
    assert!(
        out.status.success(),
        "agora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `agora ledger serve` on port 0 and returns the child and its URL.
/// A server process that is killed when the test ends, passing or failing.
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .args([
            "ledger",
            "serve",
            "--db",
            "l.redb",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve prints its URL");
    (Server(child), url)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("json output")
}

#[test]
fn keys_genesis_serve_transfer_channel_and_recover() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let seq = ok(d, &["keys", "new", "-o", "seq.json"]);
    let alice = ok(d, &["keys", "new", "-o", "alice.json"]);
    let bob = ok(d, &["keys", "new", "-o", "bob.json"]);
    // The first line is the account id (the second, the key's EVM account).
    assert_eq!(
        ok(d, &["keys", "show", "-k", "alice.json"]).lines().next(),
        Some(alice.as_str())
    );
    assert!(
        !agora(d, &["keys", "new", "-o", "alice.json"])
            .status
            .success(),
        "must not overwrite a key"
    );

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
    let (mut node, url) = serve(
        d,
        &["--genesis", "genesis.json", "--sequencer-key", "seq.json"],
    );

    let r = json(&ok(
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
    ));
    assert_eq!(r["height"], 1);
    let b = json(&ok(d, &["ledger", "balance", "--url", &url, &bob]));
    assert_eq!(b["balance"], "250");

    let ch = ok(
        d,
        &[
            "ledger",
            "channel",
            "open",
            "--url",
            &url,
            "--key",
            "alice.json",
            "--provider",
            &bob,
            "--amount",
            "100",
        ],
    );
    let voucher = ok(
        d,
        &[
            "ledger",
            "channel",
            "voucher",
            "--key",
            "alice.json",
            "--chain-id",
            "5",
            "--channel",
            &ch,
            "--cumulative",
            "60",
        ],
    );
    std::fs::write(d.join("v.json"), voucher).expect("write voucher");
    ok(
        d,
        &[
            "ledger",
            "channel",
            "claim",
            "--url",
            &url,
            "--key",
            "bob.json",
            "--voucher",
            "v.json",
        ],
    );
    let again = agora(
        d,
        &[
            "ledger",
            "channel",
            "claim",
            "--url",
            &url,
            "--key",
            "bob.json",
            "--voucher",
            "v.json",
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("double_claim"));
    let overdraft = agora(
        d,
        &[
            "ledger", "transfer", "--url", &url, "--key", "bob.json", "--to", &alice, "--amount",
            "100000",
        ],
    );
    assert!(String::from_utf8_lossy(&overdraft.stderr).contains("overdraft"));
    // The claim of 60 paid the default 2% audit fee (1 unit) into the audit pool.
    assert_eq!(
        json(&ok(d, &["ledger", "balance", "--url", &url, &bob]))["balance"],
        "309"
    );

    let before = json(&ok(d, &["ledger", "status", "--url", &url]));
    node.kill().expect("kill -9");
    node.wait().expect("reap");

    // Restart without genesis: the store has it; state is recovered from the log.
    let (mut node, url) = serve(d, &[]);
    let after = json(&ok(d, &["ledger", "status", "--url", &url]));
    assert_eq!(after["height"], before["height"]);
    assert_eq!(after["state_hash"], before["state_hash"]);
    assert_eq!(
        json(&ok(d, &["ledger", "channel", "show", "--url", &url, &ch]))["claimed"],
        "60"
    );
    let events = ok(d, &["ledger", "events", "--url", &url, "--from", "1"]);
    assert!(events.lines().count() >= 3, "{events}");
    node.kill().expect("kill");
    node.wait().expect("reap");
}
