use crate::common::{amt, keys, ledger, tx, CHAIN};
use agora_core::{merkle, Hash32, Keypair};
use agora_ledger::tx::channel_id;
use agora_ledger::{
    audit_commitment, Event, Fault, Ledger, SignedTx, Tx, TxBody, TxError, Verdict, Voucher,
};
use agora_wire::SignedReceipt;

/// `ok!(ledger, &tx)`: the transaction is built before the ledger is borrowed mutably.
macro_rules! ok {
    ($l:expr, $t:expr) => {{
        let t = $t;
        ok_fn(&mut $l, t)
    }};
}

macro_rules! rejected {
    ($l:expr, $t:expr) => {{
        let t = $t;
        rejected_fn(&mut $l, t)
    }};
}

/// Applies and asserts success and the invariants.
pub(crate) fn ok_fn(l: &mut Ledger, t: &SignedTx) -> Vec<Event> {
    let ctx = l.next_ctx();
    let ev = l
        .state
        .apply(t, &ctx)
        .unwrap_or_else(|e| panic!("expected success, got {e}"));
    l.state.check_invariants().expect("invariants");
    ev
}

/// Applies, asserts the rejection and that nothing changed.
pub(crate) fn rejected_fn(l: &mut Ledger, t: &SignedTx) -> TxError {
    let before = l.state.hash();
    let ctx = l.next_ctx();
    let e = l.state.apply(t, &ctx).expect_err("expected rejection");
    assert_eq!(l.state.hash(), before, "rejected {e} changed state");
    e
}

pub(crate) fn balance(l: &Ledger, k: &Keypair) -> u128 {
    l.state
        .account(&k.account())
        .map_or(0, |a| a.balance.units())
}

pub(crate) fn advance(l: &mut Ledger, seq: &Keypair, n: usize) {
    for _ in 0..n {
        let t = tx(l, seq, TxBody::AdvanceEpoch);
        ok_fn(l, &t);
    }
}

/// The epoch of the audit world's root: verifiers register in epoch 0, so the set frozen at
/// the start of epoch 1 holds them.
pub(crate) const R: u64 = 1;

/// Advances until the verdict window of the epoch-R root opens.
pub(crate) fn to_verdicts(l: &mut Ledger, seq: &Keypair) {
    let open = agora_ledger::Windows::of(&l.state.params, R)
        .expect("windows")
        .verdict
        .0;
    while l.state.epoch < open {
        advance(l, seq, 1);
    }
}

/// Advances until the verdict window of root `R` has closed.
pub(crate) fn past_verdicts(l: &mut Ledger, seq: &Keypair) {
    let closes = agora_ledger::Windows::of(&l.state.params, R)
        .expect("windows")
        .verdict
        .1;
    while l.state.epoch <= closes {
        advance(l, seq, 1);
    }
}

#[test]
fn rejections_name_their_reason_and_change_nothing() {
    let k = keys(3);
    let mut l = ledger(&k, 100);
    let to = k[1].account();
    let transfer = |amount| TxBody::Transfer {
        to,
        amount: amt(amount),
    };

    let e = rejected!(l, &tx(&l, &k[2], transfer(101)));
    assert!(matches!(e, TxError::Overdraft { .. }), "{e}");

    let mut t = tx(&l, &k[2], transfer(1));
    t.tx.chain_id = CHAIN + 1;
    let t = t.tx.sign(&k[2]);
    assert!(
        matches!(rejected!(l, &t), TxError::WrongChainId { expected: CHAIN, got } if got == CHAIN + 1)
    );

    // Signed by the wrong key.
    let forged = Tx {
        chain_id: CHAIN,
        from: k[2].account(),
        nonce: 0,
        body: transfer(1),
    }
    .sign(&k[1]);
    assert!(matches!(
        rejected!(l, &forged),
        TxError::BadSignature { .. }
    ));

    // A tampered body breaks the signature.
    let mut tampered = tx(&l, &k[2], transfer(1));
    tampered.tx.body = transfer(99);
    assert!(matches!(
        rejected!(l, &tampered),
        TxError::BadSignature { .. }
    ));

    let future = Tx {
        chain_id: CHAIN,
        from: k[2].account(),
        nonce: 1,
        body: transfer(1),
    }
    .sign(&k[2]);
    assert!(matches!(
        rejected!(l, &future),
        TxError::FutureNonce {
            expected: 0,
            got: 1
        }
    ));

    let first = tx(&l, &k[2], transfer(10));
    ok!(l, &first);
    assert!(matches!(
        rejected!(l, &first),
        TxError::StaleNonce {
            expected: 1,
            got: 0
        }
    ));
    assert_eq!((balance(&l, &k[1]), balance(&l, &k[2])), (110, 90));

    let stranger = Keypair::from_seed([99; 32]);
    let t = tx(&l, &stranger, transfer(1));
    assert!(matches!(rejected!(l, &t), TxError::UnknownAccount(_)));

    let zero = tx(&l, &k[2], transfer(0));
    assert!(matches!(rejected!(l, &zero), TxError::Malformed { .. }));
    let selfpay = tx(&l, &k[1], TxBody::Transfer { to, amount: amt(1) });
    assert!(matches!(rejected!(l, &selfpay), TxError::Malformed { .. }));

    // Overflow: a channel timeout past u64::MAX epochs.
    advance(&mut l, &k[0], 1);
    let t = tx(
        &l,
        &k[2],
        TxBody::OpenChannel {
            provider: to,
            amount: amt(1),
            timeout_epochs: u64::MAX,
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::Overflow { .. }));

    let t = tx(&l, &k[2], TxBody::AdvanceEpoch);
    assert!(matches!(rejected!(l, &t), TxError::NotSequencer(_)));
    l.state.check_invariants().expect("invariants");
}

#[test]
fn json_transactions_refuse_malformed_bodies() {
    let k = keys(2);
    let l = ledger(&k, 100);
    let t = tx(
        &l,
        &k[0],
        TxBody::Transfer {
            to: k[1].account(),
            amount: amt(5),
        },
    );
    let json = serde_json::to_string(&t).expect("json");
    let back: SignedTx = serde_json::from_str(&json).expect("round trip");
    assert_eq!(back, t);
    for bad in [
        json.replace("\"5\"", "\"-5\""),
        json.replace("\"5\"", "5.5"),
        json.replace("transfer", "mint"),
        json.replace(&k[1].account().to_string(), "abcd"),
        "{}".to_string(),
    ] {
        assert!(
            serde_json::from_str::<SignedTx>(&bad).is_err(),
            "accepted {bad}"
        );
    }
}

pub(crate) struct Chan {
    pub(crate) payer: Keypair,
    pub(crate) provider: Keypair,
    pub(crate) id: Hash32,
}

pub(crate) fn open_channel(
    l: &mut Ledger,
    payer: &Keypair,
    provider: &Keypair,
    amount: u128,
    timeout: u64,
) -> Chan {
    let t = tx(
        l,
        payer,
        TxBody::OpenChannel {
            provider: provider.account(),
            amount: amt(amount),
            timeout_epochs: timeout,
        },
    );
    let id = channel_id(CHAIN, &payer.account(), t.tx.nonce);
    let ev = ok_fn(l, &t);
    assert!(matches!(ev[0], Event::ChannelOpened { channel, .. } if channel == id));
    Chan {
        payer: payer.clone(),
        provider: provider.clone(),
        id,
    }
}

pub(crate) fn claim(l: &Ledger, c: &Chan, cumulative: u128, signer: &Keypair) -> SignedTx {
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: c.id,
        cumulative: amt(cumulative),
    };
    let payer_sig = voucher.sign(signer);
    tx(
        l,
        &c.provider,
        TxBody::ClaimVoucher {
            voucher,
            payer: c.payer.account(),
            payer_sig,
        },
    )
}

#[test]
fn voucher_rules_double_over_forged_and_after_close() {
    let k = keys(4);
    let mut l = ledger(&k, 1000);
    let c = open_channel(&mut l, &k[1], &k[2], 100, 3);
    assert_eq!(balance(&l, &k[1]), 900);

    let ev = ok!(l, &claim(&l, &c, 30, &c.payer));
    assert!(matches!(ev[0], Event::VoucherClaimed { amount, .. } if amount == amt(30)));
    assert_eq!(balance(&l, &k[2]), 1030);

    // The same voucher again, and an older one: double claims.
    assert!(matches!(
        rejected!(l, &claim(&l, &c, 30, &c.payer)),
        TxError::DoubleClaim { .. }
    ));
    assert!(matches!(
        rejected!(l, &claim(&l, &c, 20, &c.payer)),
        TxError::DoubleClaim { .. }
    ));
    // More than the channel ever held.
    assert!(matches!(
        rejected!(l, &claim(&l, &c, 101, &c.payer)),
        TxError::OverClaim { .. }
    ));
    // Forged: signed by the provider itself, or by a third party naming itself as payer.
    assert!(matches!(
        rejected!(l, &claim(&l, &c, 60, &c.provider)),
        TxError::ForgedVoucher { .. }
    ));
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: c.id,
        cumulative: amt(60),
    };
    let t = tx(
        &l,
        &c.provider,
        TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&k[3]),
            voucher,
            payer: k[3].account(),
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::ForgedVoucher { .. }));
    // A voucher for another chain.
    let voucher = Voucher {
        chain_id: CHAIN + 1,
        channel: c.id,
        cumulative: amt(60),
    };
    let t = tx(
        &l,
        &c.provider,
        TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&c.payer),
            voucher,
            payer: c.payer.account(),
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::WrongChainId { .. }));
    // Only the provider claims.
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: c.id,
        cumulative: amt(60),
    };
    let t = tx(
        &l,
        &k[3],
        TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&c.payer),
            voucher,
            payer: c.payer.account(),
        },
    );
    assert!(matches!(
        rejected!(l, &t),
        TxError::NotChannelProvider { .. }
    ));

    // Top up, then claim beyond the first deposit: only the increase is paid.
    ok!(
        l,
        &tx(
            &l,
            &c.payer,
            TxBody::TopUpChannel {
                channel: c.id,
                amount: amt(50)
            }
        )
    );
    let ev = ok!(l, &claim(&l, &c, 120, &c.payer));
    assert!(matches!(ev[0], Event::VoucherClaimed { amount, .. } if amount == amt(90)));
    assert_eq!(balance(&l, &k[2]), 1120);

    // Close before the timeout is refused; after it, the rest (150 - 120) is refunded.
    let close = tx(&l, &c.payer, TxBody::CloseChannel { channel: c.id });
    assert!(matches!(
        rejected!(l, &close),
        TxError::ChannelNotExpired { .. }
    ));
    let by_provider = tx(&l, &c.provider, TxBody::CloseChannel { channel: c.id });
    advance(&mut l, &k[0], 3);
    assert!(matches!(
        rejected!(l, &by_provider),
        TxError::NotChannelPayer { .. }
    ));
    let close = tx(&l, &c.payer, TxBody::CloseChannel { channel: c.id });
    let ev = ok!(l, &close);
    assert!(matches!(ev[0], Event::ChannelClosing { .. }));
    let window = l.state.params.claim_window_epochs as usize;
    advance(&mut l, &k[0], window - 1);
    assert_eq!(balance(&l, &k[1]), 850);
    let t = tx(&l, &k[0], TxBody::AdvanceEpoch);
    let ev = ok!(l, &t);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::ChannelClosed { refund, .. } if *refund == amt(30))));
    assert_eq!(balance(&l, &k[1]), 880);

    // After close: no claim, no top-up, no second close.
    assert!(matches!(
        rejected!(l, &claim(&l, &c, 150, &c.payer)),
        TxError::ChannelClosed(_)
    ));
    let t = tx(
        &l,
        &c.payer,
        TxBody::TopUpChannel {
            channel: c.id,
            amount: amt(1),
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::ChannelClosed(_)));
    let t = tx(&l, &c.payer, TxBody::CloseChannel { channel: c.id });
    assert!(matches!(rejected!(l, &t), TxError::ChannelClosed(_)));
    let t = tx(
        &l,
        &c.payer,
        TxBody::CloseChannel {
            channel: Hash32::of(b"nope"),
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::UnknownChannel(_)));
}

#[test]
fn unstake_waits_the_unbonding_delay() {
    let k = keys(2);
    let mut l = ledger(&k, 1000);
    ok!(l, &tx(&l, &k[1], TxBody::Stake { amount: amt(300) }));
    let t = tx(&l, &k[1], TxBody::Unstake { amount: amt(301) });
    assert!(matches!(
        rejected!(l, &t),
        TxError::InsufficientStake { .. }
    ));
    let ev = ok!(l, &tx(&l, &k[1], TxBody::Unstake { amount: amt(100) }));
    let u = l.state.params.unbonding_epochs;
    assert!(matches!(
        ev[0],
        Event::Unstaked {
            release_epoch,
            ..
        } if release_epoch == u
    ));
    assert_eq!(balance(&l, &k[1]), 700);
    advance(&mut l, &k[0], u as usize - 1);
    assert_eq!(balance(&l, &k[1]), 700);
    advance(&mut l, &k[0], 1);
    assert_eq!(balance(&l, &k[1]), 800);
    let a = l.state.account(&k[1].account()).expect("account");
    assert_eq!((a.stake, a.unbonding.len()), (amt(200), 0));
}

#[test]
fn beacon_is_hash_chained_over_epoch_and_parent() {
    let k = keys(1);
    let mut a = ledger(&k, 1);
    let mut b = a.clone();
    let b0 = a.state.beacon;
    advance(&mut a, &k[0], 1);
    assert_ne!(a.state.beacon, b0);
    assert_eq!(a.state.epoch, 1);
    // Same history, same beacon; another parent block, another beacon.
    advance(&mut b, &k[0], 1);
    assert_eq!(a.state.beacon, b.state.beacon);
    let mut c = ledger(&k, 1);
    c.tip = Hash32::of(b"other parent");
    advance(&mut c, &k[0], 1);
    assert_ne!(c.state.beacon, a.state.beacon);
}

/// Provider k[1] with a posted root of 4 receipts in epoch R; verifiers k[2], k[3] (registered
/// in epoch 0); payer k[4]; the ledger is in epoch R + 1, so the root's selecting beacon exists.
pub(crate) fn audit_world() -> (Ledger, Vec<Keypair>, Vec<SignedReceipt>, Hash32) {
    audit_world_with(agora_ledger::Params::default())
}

pub(crate) fn audit_world_with(
    params: agora_ledger::Params,
) -> (Ledger, Vec<Keypair>, Vec<SignedReceipt>, Hash32) {
    audit_world_then(params, |_, _| {})
}

/// [`audit_world_with`], running `then` in the root's epoch, before the beacon that selects.
pub(crate) fn audit_world_then(
    params: agora_ledger::Params,
    then: impl FnOnce(&mut Ledger, &[Keypair]),
) -> (Ledger, Vec<Keypair>, Vec<SignedReceipt>, Hash32) {
    let k = keys(5);
    let mut g = crate::common::genesis(&k, 10_000);
    g.params = params;
    let mut l = Ledger::from_genesis(&g).expect("genesis");
    ok!(l, &tx(&l, &k[1], TxBody::Stake { amount: amt(1000) }));
    for v in [&k[2], &k[3]] {
        ok!(l, &tx(&l, v, TxBody::RegisterVerifier { stake: amt(100) }));
    }
    advance(&mut l, &k[0], 1);
    let c = open_channel(&mut l, &k[4], &k[1], 500, 10);
    // Four receipts of 50 units each, paid from k[4]'s channel.
    let receipts: Vec<SignedReceipt> = (0..4u8)
        .map(|i| crate::common::receipt(&k[1], &k[4], c.id, 50, i))
        .collect();
    let root = merkle::root(&hashes(&receipts));
    ok!(
        l,
        &tx(
            &l,
            &k[1],
            TxBody::PostReceiptRoot {
                epoch: R,
                root,
                receipts: 4
            }
        )
    );
    then(&mut l, &k);
    advance(&mut l, &k[0], 1);
    (l, k, receipts, c.id)
}

/// The index in `k` of the verifier assigned to leaf `i` of k[1]'s epoch-R root.
pub(crate) fn assigned(l: &Ledger, k: &[Keypair], i: u64) -> usize {
    let v = l
        .state
        .leaf_assignee(&k[1].account(), R, i)
        .expect("every leaf of a new provider is selected");
    k.iter()
        .position(|x| x.account() == v)
        .expect("a known key")
}

pub(crate) fn salt(i: u64) -> Hash32 {
    Hash32::of(&i.to_le_bytes())
}

/// The assigned verifiers of `leaves` commit to `passed`, the epoch advances, they reveal.
/// Returns (assigned verifier, the other one) per leaf.
pub(crate) fn audit_leaves(
    l: &mut Ledger,
    k: &[Keypair],
    leaves: &[u64],
    passed: bool,
) -> Vec<(usize, usize)> {
    let provider = k[1].account();
    let mut who = Vec::new();
    for &i in leaves {
        let by = assigned(l, k, i);
        let commitment =
            audit_commitment(CHAIN, &k[by].account(), &provider, R, i, passed, &salt(i));
        let t = tx(
            l,
            &k[by],
            TxBody::CommitAudit {
                provider,
                epoch: R,
                index: i,
                commitment,
            },
        );
        ok_fn(l, &t);
        who.push((by, 5 - by));
    }
    advance(l, &k[0], 1);
    for (&i, &(by, _)) in leaves.iter().zip(&who) {
        let t = tx(
            l,
            &k[by],
            TxBody::RevealAudit {
                provider,
                epoch: R,
                index: i,
                passed,
                receipt: Hash32::of(&i.to_le_bytes()),
                salt: salt(i),
            },
        );
        ok_fn(l, &t);
    }
    who
}

/// The leaf hashes of receipts.
pub(crate) fn hashes(receipts: &[SignedReceipt]) -> Vec<Hash32> {
    receipts.iter().map(|r| r.hash()).collect()
}

/// The provider k[1] claims `cumulative` from the payer k[4]'s channel `ch`.
pub(crate) fn world_claim(l: &mut Ledger, k: &[Keypair], ch: Hash32, cumulative: u128) {
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: ch,
        cumulative: amt(cumulative),
    };
    let t = tx(
        l,
        &k[1],
        TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&k[4]),
            voucher,
            payer: k[4].account(),
        },
    );
    ok_fn(l, &t);
}

pub(crate) fn verdict_tx(
    l: &Ledger,
    k: &[Keypair],
    receipts: &[SignedReceipt],
    i: usize,
    _ch: Hash32,
    by: usize,
    conf: usize,
) -> SignedTx {
    let v = Verdict {
        chain_id: CHAIN,
        provider: k[1].account(),
        epoch: R,
        index: i as u64,
        fault: Fault::Fraud {
            receipt: receipts[i].clone(),
            proof: merkle::proof(&hashes(receipts), i).expect("proof"),
        },
    };
    confirmed_verdict(l, &k[by], &k[conf], v)
}

/// `v` confirmed by `confirmer` and submitted by `by`, as an audit verdict transaction.
pub(crate) fn confirmed_verdict(
    l: &Ledger,
    by: &Keypair,
    confirmer: &Keypair,
    v: Verdict,
) -> SignedTx {
    tx(
        l,
        by,
        TxBody::AuditVerdict {
            confirmer_sig: v.sign(confirmer),
            verdict: v,
            confirmer: confirmer.account(),
        },
    )
}

#[test]
fn audit_verdict_slashes_pays_bounty_and_refunds_once() {
    let (mut l, k, receipts, ch) = audit_world();
    let payer_before = balance(&l, &k[4]);
    let who = audit_leaves(&mut l, &k, &[1, 3], false);

    // Refusals first.
    let t = tx(
        &l,
        &k[1],
        TxBody::PostReceiptRoot {
            epoch: R + 2,
            root: Hash32::ZERO,
            receipts: 1,
        },
    );
    ok!(l, &t);
    let t = tx(
        &l,
        &k[1],
        TxBody::PostReceiptRoot {
            epoch: R + 2,
            root: Hash32::ZERO,
            receipts: 1,
        },
    );
    assert!(matches!(
        rejected!(l, &t),
        TxError::RootAlreadyPosted { .. }
    ));
    let t = tx(
        &l,
        &k[1],
        TxBody::PostReceiptRoot {
            epoch: R + 3,
            root: Hash32::ZERO,
            receipts: 1,
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::WrongEpoch { .. }));
    let t = tx(
        &l,
        &k[4],
        TxBody::PostReceiptRoot {
            epoch: R + 2,
            root: Hash32::ZERO,
            receipts: 1,
        },
    );
    assert!(matches!(
        rejected!(l, &t),
        TxError::InsufficientStake { .. }
    ));
    // Verdicts wait until every plant of the root could be opened.
    let (by1, other1) = who[0];
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 1, ch, by1, other1)),
        TxError::AuditWindow { .. }
    ));
    to_verdicts(&mut l, &k[0]);
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 0, ch, 2, 2)),
        TxError::ConflictedVerdict { .. }
    ));
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 0, ch, 2, 4)),
        TxError::NotVerifier(_)
    ));
    let mut bad_proof = verdict_tx(&l, &k, &receipts, 1, ch, 2, 3);
    if let TxBody::AuditVerdict {
        verdict,
        confirmer_sig,
        ..
    } = &mut bad_proof.tx.body
    {
        verdict.index = 2;
        *confirmer_sig = verdict.sign(&k[3]);
    }
    let bad_proof = bad_proof.tx.sign(&k[2]);
    assert!(matches!(
        rejected!(l, &bad_proof),
        TxError::BadReceiptProof { .. }
    ));
    // Leaf 0 was never audited with a revealed failure: no verdict without one.
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 0, ch, 2, 3)),
        TxError::UnrevealedVerdict
    ));
    // Only the verifier that revealed the failure may bring the verdict.
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 1, ch, other1, by1)),
        TxError::UnrevealedVerdict
    ));
    // A confirmer signature over another verdict.
    let mut forged = verdict_tx(&l, &k, &receipts, 1, ch, by1, other1);
    if let TxBody::AuditVerdict { verdict, .. } = &mut forged.tx.body {
        verdict.index = 3;
    }
    let forged = forged.tx.sign(&k[by1]);
    assert!(matches!(
        rejected!(l, &forged),
        TxError::BadSignature { .. }
    ));

    world_claim(&mut l, &k, ch, 200);
    let verifier_before = balance(&l, &k[by1]);
    let ev = ok!(l, &verdict_tx(&l, &k, &receipts, 1, ch, by1, other1));
    // 50% of 1000 slashed; 20% of that to the verifier; 50 refunded; the rest burned.
    assert!(
        matches!(&ev[0], Event::Slashed { amount, bounty, refund, burned, .. }
            if *amount == amt(500) && *bounty == amt(100) && *refund == amt(50) && *burned == amt(350)),
        "{ev:?}"
    );
    assert_eq!(balance(&l, &k[by1]), verifier_before + 100);
    assert_eq!(balance(&l, &k[4]), payer_before + 50);
    assert_eq!(
        l.state.account(&k[1].account()).map(|a| a.stake),
        Some(amt(500))
    );
    assert_eq!(l.state.burned, amt(350));

    // The same receipt cannot be judged twice, even by other verifiers.
    assert!(matches!(
        rejected!(l, &verdict_tx(&l, &k, &receipts, 1, ch, by1, other1)),
        TxError::AlreadyJudged(_)
    ));
    // Another receipt can: 50% of the remaining 500.
    let (by3, other3) = who[1];
    let ev = ok!(l, &verdict_tx(&l, &k, &receipts, 3, ch, by3, other3));
    assert!(matches!(&ev[0], Event::Slashed { amount, .. } if *amount == amt(250)));
}

#[test]
fn unbonding_stake_is_still_slashable() {
    let (mut l, k, receipts, ch) = audit_world();
    ok!(l, &tx(&l, &k[1], TxBody::Unstake { amount: amt(800) }));
    let (by, other) = audit_leaves(&mut l, &k, &[0], false)[0];
    to_verdicts(&mut l, &k[0]);
    let ev = ok!(l, &verdict_tx(&l, &k, &receipts, 0, ch, by, other));
    assert!(matches!(&ev[0], Event::Slashed { amount, .. } if *amount == amt(500)));
    let a = l.state.account(&k[1].account()).expect("provider");
    assert_eq!(a.stake, amt(0));
    assert_eq!(a.unbonding_total().ok(), Some(amt(500)));
}

#[test]
fn batch_verification_agrees_with_single_verification() {
    let k = keys(4);
    let l = ledger(&k, 1000);
    let mut txs = Vec::new();
    for i in 0..600u64 {
        let from = &k[(i % 3) as usize + 1];
        let mut t = Tx {
            chain_id: CHAIN,
            from: from.account(),
            nonce: i,
            body: TxBody::Stake { amount: amt(1) },
        }
        .sign(from);
        match i % 97 {
            5 => t.sig = k[0].sign_bytes(b"not this"),
            17 => t.tx.nonce += 1_000_000,
            23 => t.tx.body = TxBody::Stake { amount: amt(0) },
            _ => {}
        }
        txs.push(t);
    }
    // A claim with a forged voucher inside an otherwise valid batch.
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: Hash32::ZERO,
        cumulative: amt(1),
    };
    txs.push(tx(
        &l,
        &k[2],
        TxBody::ClaimVoucher {
            payer_sig: voucher.sign(&k[2]),
            voucher,
            payer: k[1].account(),
        },
    ));
    let batch = agora_ledger::block::verify_all(txs.clone());
    let mut bad = 0;
    for (t, b) in txs.into_iter().zip(batch) {
        let single = t.verify().map(|v| v.id());
        bad += usize::from(single.is_err());
        assert_eq!(b.map(|v| v.id()), single);
    }
    // 7 bad signatures, 7 tampered nonces, 6 zero amounts, 1 forged voucher.
    assert_eq!(bad, 21);
}

#[test]
fn audits_are_assigned_committed_revealed_and_paid() {
    let params = agora_ledger::Params {
        audit_fee_bps: 1_000,
        audit_fee: amt(7),
        ..agora_ledger::Params::default()
    };
    let (mut l, k, _receipts, ch) = audit_world_with(params);
    let provider = k[1].account();
    // A claim of 100 puts 10 in the audit pool and pays the provider 90.
    let voucher = Voucher {
        chain_id: CHAIN,
        channel: ch,
        cumulative: amt(100),
    };
    let provider_before = balance(&l, &k[1]);
    ok!(
        l,
        &tx(
            &l,
            &k[1],
            TxBody::ClaimVoucher {
                payer_sig: voucher.sign(&k[4]),
                voucher,
                payer: k[4].account(),
            }
        )
    );
    assert_eq!(balance(&l, &k[1]), provider_before + 90);
    assert_eq!(l.state.audit_pool, amt(10));

    // The plan lists every leaf of a new provider, each with one of the two verifiers.
    let plan = l.state.audit_plan(&provider, R).expect("plan");
    assert_eq!(plan.leaves.len(), 4);
    let by = assigned(&l, &k, 2);
    let other = 5 - by;
    let commit = |l: &Ledger, who: usize, index: u64, passed: bool| {
        tx(
            l,
            &k[who],
            TxBody::CommitAudit {
                provider,
                epoch: R,
                index,
                commitment: audit_commitment(
                    CHAIN,
                    &k[who].account(),
                    &provider,
                    R,
                    index,
                    passed,
                    &salt(index),
                ),
            },
        )
    };
    assert!(matches!(
        rejected!(l, &commit(&l, other, 2, true)),
        TxError::NotAssigned { .. }
    ));
    assert!(matches!(
        rejected!(l, &commit(&l, by, 9, true)),
        TxError::NotAssigned { .. }
    ));
    ok!(l, &commit(&l, by, 2, true));
    assert!(matches!(
        rejected!(l, &commit(&l, by, 2, false)),
        TxError::AlreadyCommitted { .. }
    ));
    let reveal = |l: &Ledger, passed: bool| {
        tx(
            l,
            &k[by],
            TxBody::RevealAudit {
                provider,
                epoch: R,
                index: 2,
                passed,
                receipt: Hash32::of(b"leaf 2"),
                salt: salt(2),
            },
        )
    };
    // Not in the epoch it committed in; never another outcome than the one committed.
    assert!(matches!(
        rejected!(l, &reveal(&l, true)),
        TxError::AuditWindow { .. }
    ));
    advance(&mut l, &k[0], 1);
    assert!(matches!(
        rejected!(l, &reveal(&l, false)),
        TxError::BadReveal
    ));
    let before = balance(&l, &k[by]);
    let ev = ok!(l, &reveal(&l, true));
    assert!(matches!(&ev[0], Event::AuditRevealed { passed: true, fee, .. } if *fee == amt(7)));
    assert_eq!(balance(&l, &k[by]), before + 7);
    assert_eq!(l.state.audit_pool, amt(3));
    assert_eq!(l.state.account(&provider).map(|a| a.clean_audits), Some(1));
    assert!(matches!(
        rejected!(l, &reveal(&l, true)),
        TxError::BadReveal
    ));
    // Commitments close after the window (epochs 1..=2); we are in 2, then 3.
    advance(&mut l, &k[0], 1);
    let late = assigned(&l, &k, 0);
    assert!(matches!(
        rejected!(l, &commit(&l, late, 0, true)),
        TxError::AuditWindow { .. }
    ));
}

#[test]
fn a_withheld_leaf_is_slashed_without_a_receipt() {
    let (mut l, k, _receipts, _ch) = audit_world();
    // The assigned verifier gets no material and demands it on the ledger; no answer comes.
    let by = assigned(&l, &k, 2);
    let t = tx(
        &l,
        &k[by],
        TxBody::DemandMaterial {
            provider: k[1].account(),
            epoch: R,
            index: 2,
        },
    );
    ok!(l, &t);
    let other = 5 - by;
    to_verdicts(&mut l, &k[0]);
    let v = Verdict {
        chain_id: CHAIN,
        provider: k[1].account(),
        epoch: R,
        index: 2,
        fault: Fault::Withheld,
    };
    let before = balance(&l, &k[by]);
    let ev = ok!(l, &confirmed_verdict(&l, &k[by], &k[other], v.clone()));
    // 50% of 1000; 20% bounty; nothing refunded; 400 burned.
    assert!(
        matches!(&ev[0], Event::Slashed { receipt: None, amount, bounty, refund, burned, .. }
            if *amount == amt(500) && *bounty == amt(100) && refund.is_zero() && *burned == amt(400)),
        "{ev:?}"
    );
    assert_eq!(balance(&l, &k[by]), before + 100);
    assert_eq!(l.state.account(&k[1].account()).map(|a| a.frauds), Some(1));
    // A leaf index past the root is refused.
    let past = Verdict { index: 4, ..v };
    assert!(matches!(
        rejected!(l, &confirmed_verdict(&l, &k[by], &k[other], past)),
        TxError::Malformed { .. }
    ));
}
