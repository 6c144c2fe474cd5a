//! `ledger::commit/batch=N`: transactions verified (ed25519, on all cores), applied and durably
//! committed per second, batched as the sequencer does. Anchor, measured in the same run: raw
//! ed25519 verifications per second on one core and on all cores.
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

fn anchor(txs: &[SignedTx]) -> (f64, f64) {
    let msgs: Vec<(agora_core::AccountId, Vec<u8>, agora_core::Signature)> = txs
        .iter()
        .map(|t| {
            (
                t.tx.from,
                agora_core::codec::signing_bytes(agora_ledger::tx::TX_DOMAIN, &t.tx),
                t.sig,
            )
        })
        .collect();
    let start = Instant::now();
    let ok = msgs
        .iter()
        .filter(|(a, m, s)| a.verify_bytes(m, s).is_ok())
        .count();
    let one = ok as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ok, msgs.len());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let ok: usize = std::thread::scope(|s| {
        let hs: Vec<_> = msgs
            .chunks(msgs.len().div_ceil(threads))
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .filter(|(a, m, s)| a.verify_bytes(m, s).is_ok())
                        .count()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    (one, ok as f64 / start.elapsed().as_secs_f64())
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
        "anchor ed25519 verify (strict, raw): {one:.0}/s on 1 core, {all:.0}/s on {threads} cores"
    );
    for (batch, blocks) in [(100usize, 100usize), (1000, 30), (4096, 8)] {
        let (rate, [v, a, c]) = run(batch, blocks, &keys, &genesis);
        println!(
            "ledger::commit/batch={batch}: {rate:.0} tx/s  ({:.2}x the {threads}-core raw verify rate; per block: verify {:.1} ms, apply {:.1} ms, commit {:.1} ms)",
            rate / all,
            v.as_secs_f64() * 1e3 / blocks as f64,
            a.as_secs_f64() * 1e3 / blocks as f64,
            c.as_secs_f64() * 1e3 / blocks as f64,
        );
    }
}
