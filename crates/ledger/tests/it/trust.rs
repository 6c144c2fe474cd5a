//! The trust protocol's attacks, each written as the attacker would play it.

use crate::common::{amt, keys, tx};
use crate::rules::{advance, audit_leaves, audit_world_then, ok_fn, to_verdicts, verdict_tx};
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

    // The root is posted in epoch 0 and all the stake unstaked in the same epoch.
    let (mut l, k, receipts, ch) = audit_world_then(Params::default(), |l, k| {
        let t = tx(l, &k[1], TxBody::Unstake { amount: amt(1000) });
        ok_fn(l, &t);
    });
    let (by, other) = audit_leaves(&mut l, &k, &[0], false)[0];
    to_verdicts(&mut l, &k[0]);
    // Wait until the very last epoch a verdict may land in.
    let last = agora_ledger::Windows::of(&l.state.params, 0)
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
