use crate::common::{amt, genesis, keys, CHAIN};
use agora_core::{Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::server::{run, SequencerConfig, ServeConfig};
use agora_ledger::{ClientError, Genesis, Store, Tx, TxBody};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUNDS: usize = 24;
const SUBMITTERS: usize = 4;

/// The child: this test binary started again by the crash test with `AGORA_CRASH_DB` set;
/// serves the ledger there until killed.
fn crash_child(db: String) {
    let genesis: Genesis =
        serde_json::from_str(&std::env::var("AGORA_CRASH_GENESIS").expect("genesis"))
            .expect("genesis json");
    let seed: [u8; 32] = hex::decode(std::env::var("AGORA_CRASH_SEQ").expect("seq"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        db: db.into(),
        genesis: Some(genesis),
        sequencer_key: Some(Keypair::from_seed(seed)),
        sequencer: SequencerConfig {
            epoch_interval: Some(Duration::from_millis(20)),
            ..SequencerConfig::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(
        cfg,
        |a| println!("LISTENING {a}"),
        std::future::pending(),
    ))
    .expect("serve");
}

/// xorshift64*: enough randomness for kill points, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn submitter(
    c: Client,
    k: Vec<Keypair>,
    mine: [usize; 2],
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Hash32> {
    let mut rng = Rng(seed | 1);
    let mut acked = Vec::new();
    let mut nonces = [0u64; 2];
    for (i, n) in nonces.iter_mut().enumerate() {
        match c.next_nonce(&k[mine[i]].account()) {
            Ok(v) => *n = v,
            Err(_) => return acked,
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(2) as usize;
        let from = &k[mine[i]];
        let to = k[1 + rng.below(k.len() as u64 - 1) as usize].account();
        if to == from.account() {
            continue;
        }
        let body = TxBody::Transfer {
            to,
            amount: amt(1 + u128::from(rng.below(100))),
        };
        let t = Tx {
            chain_id: CHAIN,
            from: from.account(),
            nonce: nonces[i],
            body,
        }
        .sign(from);
        match c.submit(&t) {
            Ok(r) => {
                assert_eq!(r.tx_id, t.id());
                acked.push(r.tx_id);
                nonces[i] += 1;
            }
            Err(ClientError::Rejected { code, message }) => {
                panic!("valid transfer rejected: {code}: {message}")
            }
            // The node died under us: this submission was not acknowledged.
            Err(_) => break,
        }
    }
    acked
}

#[test]
fn kill_9_loses_no_acknowledged_transaction() {
    if let Ok(db) = std::env::var("AGORA_CRASH_DB") {
        return crash_child(db);
    }
    let started = Instant::now();
    let k = keys(1 + 2 * SUBMITTERS);
    let g = genesis(&k, 1_000_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.redb");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut acked: Vec<Hash32> = Vec::new();
    let exe = std::env::current_exe().expect("test binary");

    let log = dir.path().join("child.log");
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "crash::kill_9_loses_no_acknowledged_transaction",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AGORA_CRASH_DB", &db)
            .env(
                "AGORA_CRASH_GENESIS",
                serde_json::to_string(&g).expect("json"),
            )
            .env("AGORA_CRASH_SEQ", hex::encode(k[0].seed()))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("child log"))
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // libtest prints "test crash::crash_child ... " before it on the same line.
                if let Some((_, a)) = line.split_once("LISTENING ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "round {round}: child never listened: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let c = Client::new(&format!("http://{addr}")).expect("client");

        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..SUBMITTERS)
            .map(|w| {
                let (c, k, stop, s) = (c.clone(), k.clone(), stop.clone(), rng.next());
                std::thread::spawn(move || submitter(c, k, [1 + 2 * w, 2 + 2 * w], s, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + rng.below(220)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        stop.store(true, Ordering::Relaxed);
        let before = acked.len();
        for w in workers {
            acked.extend(w.join().expect("submitter"));
        }

        // Recover from disk as a restarted node would, and check everything.
        let (store, ledger) = Store::open(&db, None).expect("recover after kill -9");
        for id in &acked {
            assert!(
                store.tx_height(id).expect("index").is_some(),
                "round {round}: acknowledged tx {id} lost"
            );
        }
        ledger
            .state
            .check_invariants()
            .expect("invariants after recovery");
        store
            .rebuild_and_check(&ledger)
            .expect("log rebuilds the recovered state");
        eprintln!(
            "round {round}: height {} acked {} (+{})",
            ledger.height,
            acked.len(),
            acked.len() - before
        );
    }
    assert!(
        acked.len() >= ROUNDS,
        "too few acknowledged transactions ({}) to mean anything",
        acked.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "crash test too slow: {:?}",
        started.elapsed()
    );
}
