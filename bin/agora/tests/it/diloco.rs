//! `agora train --islands 3` across processes on loopback libp2p: one island is killed in the
//! middle of a round, a fourth joins later; the run finishes, every survivor and the joiner
//! end on the coordinator's state hash, the round log shows the missing island and the
//! joiner's contributions, and the exported model generates.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::*;

/// A child whose stdout and stderr lines arrive on one channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(args)
            .env("RUST_LOG", "info")
            // Several islands share this machine's cores: one kernel thread each.
            .env("AGORA_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agora");
        let (tx, lines) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Waits for a line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        self.wait_line(|l| l.contains(needle), needle, within)
    }

    /// Waits for a line the process announced on stdout: it starts with `prefix`; returns
    /// the rest.
    fn announced(&mut self, prefix: &str, within: Duration) -> String {
        let line = self.wait_line(|l| l.starts_with(prefix), prefix, within);
        line[prefix.len()..].trim().to_string()
    }

    fn wait_line(&mut self, hit: impl Fn(&str) -> bool, needle: &str, within: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| hit(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if hit(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; last lines:\n{}",
                    self.seen[self.seen.len().saturating_sub(30)..].join("\n")
                ),
            }
        }
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines it printed.
    fn tail(&self) -> String {
        self.seen[self.seen.len().saturating_sub(30)..].join("\n")
    }

    /// The hash on the line starting `final state `.
    fn final_hash(&mut self) -> String {
        self.announced("final state ", Duration::from_secs(1))[..64].to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` as the corpus in `dir` and returns the flags every process of a tiny run
/// shares: the data, a one-layer model, and a loopback listen address.
fn tiny_run_flags(dir: &std::path::Path, text: &str) -> Vec<String> {
    let data = dir.join("corpus.txt");
    std::fs::write(&data, text).expect("write the corpus");
    [
        "--data",
        &data.to_string_lossy(),
        "--vocab-size",
        "300",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ffn",
        "64",
        "--context",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--eval-tokens",
        "512",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

#[test]
fn islands_survive_a_kill_take_a_joiner_and_agree_on_the_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = |x: &str| x.to_string();
    let model_flags = tiny_run_flags(
        dir.path(),
        &"ROMEO. But soft, what light through yonder window breaks?\nJULIET. Ay me!\n\
         MERCUTIO. A plague o' both your houses!\n"
            .repeat(80),
    );
    let run_dir = dir.path().join("run");
    // 10 rounds of H = 4 inner steps; a round waits at most 3 s for a missing island.
    let mut coord_args = vec![s("train")];
    coord_args.extend(model_flags.clone());
    coord_args.extend(
        [
            "--out",
            &run_dir.to_string_lossy(),
            "--islands",
            "3",
            "--steps",
            "40",
            "--inner-steps",
            "4",
            "--phase-secs",
            "3",
        ]
        .iter()
        .map(|x| s(x)),
    );
    let mut coord = Proc::spawn(&coord_args);
    let run = coord.announced("run ", Duration::from_secs(120));
    let addr = coord.announced("p2p ", Duration::from_secs(30));
    let island = |k: u64, out: &str| {
        let mut a = vec![s("train")];
        a.extend(model_flags.clone());
        a.extend(
            [
                "--out",
                &dir.path().join(out).to_string_lossy(),
                "--join",
                &addr,
                "--run",
                &run,
                "--island",
                &k.to_string(),
                "--steps",
                "40",
            ]
            .iter()
            .map(|x| s(x)),
        );
        Proc::spawn(&a)
    };
    let mut one = island(1, "i1");
    let mut two = island(2, "i2");
    // Kill island 2 in the middle of round 1: after its reveal, before the round closes.
    two.wait_for("revealed island=2 round=1", Duration::from_secs(120));
    two.child.kill().expect("kill island 2");
    // A fourth island joins once round 2 is done.
    coord.wait_for("round closed round=2", Duration::from_secs(120));
    let mut joiner = island(3, "i3");

    for (p, name, secs) in [
        (&mut coord, "the coordinator", 240),
        (&mut one, "island 1", 60),
        (&mut joiner, "the joiner", 60),
    ] {
        let ok = p.wait_exit(Duration::from_secs(secs)).success();
        assert!(ok, "{name} failed:\n{}", p.tail());
    }
    let h = coord.final_hash();
    assert_eq!(
        one.final_hash(),
        h,
        "island 1 disagrees with the coordinator"
    );
    assert_eq!(
        joiner.final_hash(),
        h,
        "the joiner disagrees with the coordinator"
    );

    // The round log: island 2 missing after it was killed; the joiner sat out its first
    // round and contributed later.
    let log = std::fs::read_to_string(run_dir.join("rounds.jsonl")).expect("rounds.jsonl");
    let rounds: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rounds.len(), 10, "{log}");
    let last = &rounds[9];
    let accepted = |r: &serde_json::Value| -> Vec<u64> {
        r["accepted"]
            .as_array()
            .expect("accepted")
            .iter()
            .map(|v| v.as_u64().expect("island"))
            .collect()
    };
    assert!(accepted(&rounds[0]).contains(&2), "{log}");
    assert!(!accepted(last).contains(&2), "{log}");
    assert!(
        rounds.iter().any(|r| r["missing"]
            .as_array()
            .is_some_and(|m| m.iter().any(|v| v == 2))),
        "{log}"
    );
    assert!(!accepted(&rounds[2]).contains(&3), "{log}");
    assert!(accepted(last).contains(&3), "{log}");
    assert!(accepted(last).contains(&1), "{log}");
    assert!(run_dir.join("loss.svg").exists());

    // The final model is scored on every held-out token (more than a round's 8,192 cap
    // would not show here; the count must be the whole held-out split, which is not empty).
    let fin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("final-eval.json")).expect("final-eval.json"),
    )
    .expect("final-eval json");
    let bpb = fin["heldout_bits_per_byte"].as_f64().expect("bpb");
    assert!(bpb.is_finite() && bpb > 0.0, "{fin}");
    assert_eq!(fin["rounds"], 10, "{fin}");
    assert!(fin["heldout_tokens"].as_u64().expect("tokens") > 0, "{fin}");
    let model_id = fin["model_id"].as_str().expect("model id").to_string();

    // The exported model is a servable model: it loads and generates.
    let model = run_dir.join("model");
    let manifest = std::fs::read_to_string(model.join("manifest.json")).expect("manifest");
    assert!(manifest.contains(&model_id), "{manifest}");
    let o = agora(&[
        "generate",
        "--model",
        &model.to_string_lossy(),
        "--prompt",
        "ROMEO.",
        "--max-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_killed_coordinator_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tmp");
    let run_dir = dir.path().join("run");
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(tiny_run_flags(
        dir.path(),
        &"ROMEO. But soft, what light through yonder window breaks?\nJULIET. Ay me!\n".repeat(80),
    ));
    args.extend(
        [
            "--out",
            &run_dir.to_string_lossy(),
            "--islands",
            "1",
            "--steps",
            "240",
            "--inner-steps",
            "40",
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    let mut first = Proc::spawn(&args);
    first.wait_for("round closed round=1", Duration::from_secs(180));
    first.child.kill().expect("kill -9 the coordinator");
    let _ = first.child.wait();

    // Another run in the same folder is refused; --resume continues from the checkpoint.
    let again = agora(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--resume"), "{}", stderr(&again));
    let mut resumed_args = args.clone();
    resumed_args.push("--resume".into());
    let mut resumed = Proc::spawn(&resumed_args);
    let ok = resumed.wait_exit(Duration::from_secs(240)).success();
    assert!(ok, "the resumed run failed:\n{}", resumed.tail());
    let started = resumed.wait_for("run ready", Duration::from_secs(1));
    assert!(
        !started.contains("round=0"),
        "it resumed from round 0: {started}"
    );
    resumed.final_hash();
    let log = std::fs::read_to_string(run_dir.join("rounds.jsonl")).expect("rounds.jsonl");
    let last: serde_json::Value =
        serde_json::from_str(log.lines().last().expect("a round")).expect("json");
    assert_eq!(last["round"], 5, "{log}");
    assert!(run_dir.join("model/model.safetensors").exists());
}
