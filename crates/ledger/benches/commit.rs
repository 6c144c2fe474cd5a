//! `ledger::commit/batch=N`: transactions submitted to the real sequencer, batch-verified
//! (ed25519, all cores), applied, durably committed and acknowledged, per second.
//! `ledger::commit_inline/batch=N`: the same stages run in series by hand, with their times.
//! Anchor, measured in the same run: ed25519-dalek `verify_strict` per second on one core and
//! on all cores.
//!
//! Run: `cargo bench -p agora-ledger --bench commit`

use agora_core::{Amount, Keypair};
use agora_ledger::block::verify_all;
use agora_ledger::{Allocation, Genesis, Params, SignedTx, Store, Tx, TxBody, TxEvents};
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 2_000;
const CHAIN: u64 = 1;

fn keys() -> Vec<Keypair> {
    (0..ACCOUNTS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            Keypair::from_seed(seed)
        })
        .collect()
}

/// `n` transfers, round-robin over the accounts, each with its correct nonce.
fn transfers(keys: &[Keypair], n: usize) -> Vec<SignedTx> {
    let mut nonces = vec![0u64; keys.len()];
    (0..n)
        .map(|i| {
            let from = i % keys.len();
            let to = keys[(i * 7 + 1) % keys.len()].account();
            let to = if to == keys[from].account() {
                keys[(from + 1) % keys.len()].account()
            } else {
                to
            };
            let t = Tx {
                chain_id: CHAIN,
                from: keys[from].account(),
                nonce: nonces[from],
                body: TxBody::Transfer {
                    to,
                    amount: Amount::new(1),
                },
            };
            nonces[from] += 1;
            t.sign(&keys[from])
        })
        .collect()
}

/// Raw ed25519-dalek `verify_strict` over the same messages: the reference rate.
fn anchor(txs: &[SignedTx]) -> (f64, f64) {
    use ed25519_dalek::{Signature, VerifyingKey};
    let msgs: Vec<(VerifyingKey, Vec<u8>, Signature)> = txs
        .iter()
        .filter_map(|t| {
            let key = VerifyingKey::from_bytes(t.tx.from.as_bytes()).ok()?;
            let msg = agora_core::codec::signing_bytes(agora_ledger::tx::TX_DOMAIN, &t.tx);
            Some((key, msg, Signature::from_bytes(t.sig.as_bytes())))
        })
        .collect();
    let check = |c: &[(VerifyingKey, Vec<u8>, Signature)]| {
        c.iter()
            .filter(|(k, m, s)| k.verify_strict(m, s).is_ok())
            .count()
    };
    let start = Instant::now();
    let ok = check(&msgs);
    let one = ok as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ok, txs.len());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let ok: usize = std::thread::scope(|s| {
        let hs: Vec<_> = msgs
            .chunks(msgs.len().div_ceil(threads))
            .map(|c| s.spawn(move || check(c)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    (one, ok as f64 / start.elapsed().as_secs_f64())
}

/// Through the real sequencer: submissions queued, batched, verified, applied, committed,
/// each acknowledged only after its block is durable.
fn run_node(batch: usize, n: usize, keys: &[Keypair], genesis: &Genesis) -> (f64, u64) {
    use agora_ledger::server::{Node, SequencerConfig};
    let txs = transfers(keys, n);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = SequencerConfig {
        max_batch: batch,
        max_wait: Duration::from_millis(5),
        queue: n + 1,
        epoch_interval: None,
    };
    let node = Node::start(&dir.path().join("node.redb"), Some(genesis), None, cfg)
        .unwrap_or_else(|e| panic!("start: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let start = Instant::now();
    let acked = rt.block_on(async {
        let handles: Vec<_> = txs
            .into_iter()
            .map(|t| {
                let node = node.clone();
                tokio::spawn(async move { node.submit(t).await.is_ok() })
            })
            .collect();
        let mut acked = 0usize;
        for h in handles {
            acked += usize::from(h.await.unwrap_or(false));
        }
        acked
    });
    let rate = acked as f64 / start.elapsed().as_secs_f64();
    assert_eq!(acked, n, "every benchmark transaction must be acknowledged");
    (rate, node.with_ledger(|l| l.height))
}

fn run(batch: usize, blocks: usize, keys: &[Keypair], genesis: &Genesis) -> (f64, [Duration; 3]) {
    let txs = transfers(keys, batch * blocks);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (store, mut ledger) = Store::open(&dir.path().join("bench.redb"), Some(genesis))
        .unwrap_or_else(|e| panic!("open: {e}"));
    let mut split = [Duration::ZERO; 3];
    let start = Instant::now();
    let mut it = txs.into_iter();
    for _ in 0..blocks {
        let chunk: Vec<SignedTx> = it.by_ref().take(batch).collect();
        let t0 = Instant::now();
        let verified: Vec<_> = verify_all(chunk)
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let t1 = Instant::now();
        let (block, outcomes) = ledger.build_block(verified, 0);
        let events: Vec<TxEvents> = outcomes
            .into_iter()
            .filter_map(|(tx_id, r)| r.ok().map(|events| TxEvents { tx_id, events }))
            .collect();
        assert_eq!(
            block.txs.len(),
            batch,
            "every benchmark transaction must be accepted"
        );
        let t2 = Instant::now();
        store
            .commit(&block, &events, &ledger)
            .unwrap_or_else(|e| panic!("commit: {e}"));
        let t3 = Instant::now();
        split[0] += t1 - t0;
        split[1] += t2 - t1;
        split[2] += t3 - t2;
    }
    let rate = (batch * blocks) as f64 / start.elapsed().as_secs_f64();
    ledger
        .state
        .check_invariants()
        .unwrap_or_else(|e| panic!("invariants: {e}"));
    (rate, split)
}

fn main() {
    let keys = keys();
    let genesis = Genesis {
        chain_id: CHAIN,
        sequencer: keys[0].account(),
        params: Params::default(),
        allocations: keys
            .iter()
            .map(|k| Allocation {
                account: k.account(),
                amount: Amount::new(1_000_000),
            })
            .collect(),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (one, all) = anchor(&transfers(&keys, 8_000));
    println!(
        "anchor: ed25519-dalek verify_strict {one:.0}/s on 1 core, {all:.0}/s on {threads} cores"
    );
    for (batch, n) in [(100usize, 10_000usize), (1000, 30_000), (4096, 40_000)] {
        let (rate, blocks) = run_node(batch, n, &keys, &genesis);
        println!(
            "ledger::commit/batch={batch}: {rate:.0} tx/s through the sequencer, {n} txs in {blocks} blocks ({:.2}x the {threads}-core verify_strict anchor)",
            rate / all
        );
    }
    {
        let (batch, blocks) = (1000usize, 30usize);
        let (rate, [v, a, c]) = run(batch, blocks, &keys, &genesis);
        println!(
            "ledger::commit_inline/batch={batch}: {rate:.0} tx/s, stages in series ({:.2}x anchor; per block: verify {:.1} ms, apply {:.1} ms, commit {:.1} ms)",
            rate / all,
            v.as_secs_f64() * 1e3 / blocks as f64,
            a.as_secs_f64() * 1e3 / blocks as f64,
            c.as_secs_f64() * 1e3 / blocks as f64,
        );
    }
}
