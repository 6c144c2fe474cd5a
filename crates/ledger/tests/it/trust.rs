//! The trust protocol's attacks, each written as the attacker would play it.

use crate::common::{amt, keys, tx};
use crate::rules::{advance, audit_leaves, audit_world_then, ok_fn, to_verdicts, verdict_tx, R};
use agora_core::Keypair;
use agora_ledger::{Event, GenesisError, Ledger, Params, TxBody};

/// A provider posts a root, unstakes everything in the same epoch, and waits for its stake:
/// the genesis that would let it leave first is refused, and under a valid one its unbonding
/// stake is still there for the last verdict.
#[test]
fn unstake_in_the_epoch_of_the_root_does_not_escape_the_verdict() {
    let k = keys(5);
    let mut g = crate::common::genesis(&k, 10_000);
    g.params = Params {
        unbonding_epochs: 2,
        ..Params::default()
    };
    assert!(matches!(
        Ledger::from_genesis(&g),
        Err(GenesisError::UnbondingTooShort { need, .. }) if need == Params::default().min_unbonding_epochs().expect("fits")
    ));
    g.params.escalation_epochs = 0;
    assert!(matches!(
        Ledger::from_genesis(&g),
        Err(GenesisError::ZeroWindow { .. })
    ));

    // The root is posted in epoch R and all the stake unstaked in the same epoch.
    let (mut l, k, receipts, ch) = audit_world_then(Params::default(), |l, k| {
        let t = tx(l, &k[1], TxBody::Unstake { amount: amt(1000) });
        ok_fn(l, &t);
    });
    let (by, other) = audit_leaves(&mut l, &k, &[0], false)[0];
    to_verdicts(&mut l, &k[0]);
    // Wait until the very last epoch a verdict may land in.
    let last = agora_ledger::Windows::of(&l.state.params, R)
        .expect("windows")
        .verdict
        .1;
    while l.state.epoch < last {
        advance(&mut l, &k[0], 1);
    }
    let a = l.state.account(&k[1].account()).expect("provider");
    assert_eq!(
        a.unbonding_total().ok(),
        Some(amt(1000)),
        "stake left early"
    );
    let t = verdict_tx(&l, &k, &receipts, 0, ch, by, other);
    let ev = ok_fn(&mut l, &t);
    assert!(matches!(&ev[0], Event::Slashed { amount, .. } if *amount == amt(500)));
}

/// A provider registers 20 sybil verifiers in the epoch of its root, before the beacon that
/// selects is drawn: the assignment uses the set frozen at the start of that epoch, so none of
/// its selected leaves lands on a sybil (under the live set, 20 of 22 verifiers would be its).
#[test]
fn sybil_verifiers_registered_in_the_roots_epoch_get_none_of_its_leaves() {
    let sybils: Vec<Keypair> = (0..20u8)
        .map(|i| Keypair::from_seed([100 + i; 32]))
        .collect();
    let (l, k, _receipts, _ch) = audit_world_then(Params::default(), |l, k| {
        for s in &sybils {
            let t = tx(
                l,
                &k[1],
                TxBody::Transfer {
                    to: s.account(),
                    amount: amt(100),
                },
            );
            ok_fn(l, &t);
            let t = tx(l, s, TxBody::RegisterVerifier { stake: amt(100) });
            ok_fn(l, &t);
        }
    });
    assert_eq!(l.state.verifiers.len(), 22, "the sybils are registered");
    let plan = l
        .state
        .audit_plan(&k[1].account(), R)
        .expect("the plan exists");
    assert_eq!(
        plan.leaves.len(),
        4,
        "every leaf of a new provider is selected"
    );
    let honest = [k[2].account(), k[3].account()];
    for (i, v) in &plan.leaves {
        assert!(honest.contains(v), "leaf {i} assigned to sybil {v}");
    }
    // They count from the next epoch's roots on: frozen before those roots' beacons too.
    assert_eq!(l.state.verifier_set_at(R + 1).map(|s| s.len()), Some(22));
}
