use crate::common::{amt, genesis, keys, tx};
use agora_ledger::block::Ledger;
use agora_ledger::{Store, StoreError, TxBody, TxEvents};

/// Builds `blocks` blocks of transfers and commits each; returns the ledger after them.
fn fill(store: &Store, mut l: Ledger, blocks: usize) -> Ledger {
    let k = keys(3);
    for b in 0..blocks {
        let txs = (0..3)
            .map(|i| {
                let t = tx(
                    &l,
                    &k[1],
                    TxBody::Transfer {
                        to: k[2].account(),
                        amount: amt(1),
                    },
                );
                let t = if i == 0 {
                    t
                } else {
                    agora_ledger::Tx {
                        nonce: t.tx.nonce + i,
                        ..t.tx
                    }
                    .sign(&k[1])
                };
                t.verify().expect("valid")
            })
            .collect();
        let (block, outcomes) = l.build_block(txs, b as u64);
        let events: Vec<TxEvents> = outcomes
            .into_iter()
            .map(|(tx_id, r)| TxEvents {
                tx_id,
                events: r.expect("accepted"),
            })
            .collect();
        store.commit(&block, &events, &l).expect("commit");
    }
    l
}

#[test]
fn reopen_recovers_snapshot_plus_log_and_rebuild_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let g = genesis(&keys(3), 1000);
    let (store, l) = Store::open(&path, Some(&g)).expect("open");
    // 70 blocks: one snapshot at 64, six blocks replayed after it.
    let l = fill(&store, l, 70);
    assert_eq!(store.tip_height().expect("tip"), 70);
    drop(store);

    let (store, recovered) = Store::open(&path, None).expect("reopen");
    assert_eq!(recovered, l);
    let rebuilt = store.rebuild_and_check(&recovered).expect("rebuild");
    assert_eq!(rebuilt.state.hash(), l.state.hash());
    recovered.state.check_invariants().expect("invariants");
    let b = store.block(70).expect("read").expect("block 70");
    assert_eq!(b.header.hash(), l.tip);
    assert_eq!(store.events(69, 10).expect("events").len(), 2);
    let id = b.txs[0].id();
    assert_eq!(store.tx_height(&id).expect("index"), Some(70));
}

#[test]
fn another_genesis_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    Store::open(&path, Some(&genesis(&keys(3), 1000))).expect("create");
    let err = Store::open(&path, Some(&genesis(&keys(3), 999))).expect_err("mismatch");
    assert!(matches!(err, StoreError::GenesisMismatch { .. }), "{err}");
    let empty = dir.path().join("empty.redb");
    assert!(matches!(
        Store::open(&empty, None),
        Err(StoreError::NoGenesis)
    ));
}

#[test]
fn tampered_block_log_fails_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.redb");
    let g = genesis(&keys(3), 1000);
    let (store, l) = Store::open(&path, Some(&g)).expect("open");
    let l = fill(&store, l, 3);
    // A ledger that claims another state must not match the log.
    let mut fake = l.clone();
    fake.state.burned = amt(1);
    assert!(matches!(
        store.rebuild_and_check(&fake),
        Err(StoreError::RebuildMismatch { .. })
    ));
    // A block whose header lies about the state is refused on replay.
    let mut b = store.block(2).expect("read").expect("block");
    b.header.state_hash = agora_core::Hash32::of(b"lie");
    let mut replay = Ledger::from_genesis(&g).expect("genesis");
    replay
        .apply_block(&store.block(1).expect("read").expect("b1"))
        .expect("b1 applies");
    assert!(replay.apply_block(&b).is_err());
}
