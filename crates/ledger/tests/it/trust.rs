//! The trust protocol's attacks, each written as the attacker would play it.

use crate::common::{amt, keys, tx, CHAIN};
use crate::rules::{
    advance, assigned, audit_leaves, audit_world, audit_world_then, audit_world_with, hashes,
    ok_fn, rejected_fn, to_verdicts, verdict_tx, world_claim, R,
};
use agora_core::{merkle, Hash32, Keypair};
use agora_ledger::{
    plant_commitment, sign_plant_confirmation, Event, Fault, GenesisError, Ledger, Params,
    SignedTx, TxBody, TxError, Verdict,
};
use agora_wire::SignedReceipt;

/// The transaction is built before the ledger is borrowed mutably.
macro_rules! ok {
    ($l:expr, $t:expr $(,)?) => {{
        let t = $t;
        ok_fn(&mut $l, t)
    }};
}

macro_rules! rejected {
    ($l:expr, $t:expr $(,)?) => {{
        let t = $t;
        rejected_fn(&mut $l, t)
    }};
}

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
    let ev = ok!(l, &t);
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

pub(crate) fn bal(l: &Ledger, k: &Keypair) -> u128 {
    l.state
        .account(&k.account())
        .map_or(0, |a| a.balance.units())
}

fn fraud(
    l: &Ledger,
    k: &[Keypair],
    receipt: SignedReceipt,
    proof: Vec<Hash32>,
    index: u64,
    by: usize,
    conf: usize,
) -> SignedTx {
    let v = Verdict {
        chain_id: CHAIN,
        provider: k[1].account(),
        epoch: R,
        index,
        fault: Fault::Fraud { receipt, proof },
    };
    crate::rules::confirmed_verdict(l, &k[by], &k[conf], v)
}

/// The verdict used to name the refunded channel and amount: a verifier could pay any payer
/// of the provider any sum. Now the refund is the signed receipt's own cost, to the payer of
/// the receipt's own channel, at most what that channel paid the provider.
#[test]
fn a_verdict_cannot_redirect_or_inflate_the_refund() {
    let (mut l, k, receipts, ch) = audit_world();
    // Another payer (the sequencer's key) also has a channel with the provider.
    crate::rules::open_channel(&mut l, &k[0], &k[1], 500, 10);
    let who = audit_leaves(&mut l, &k, &[0, 1], false);
    to_verdicts(&mut l, &k[0]);
    world_claim(&mut l, &k, ch, 70);
    let proof = |i: usize| merkle::proof(&hashes(&receipts), i).expect("proof");
    let (by, other) = who[0];

    // The receipt's channel and cost changed after the provider signed: refused.
    let mut redirected = receipts[0].clone();
    redirected.receipt.channel = Hash32::of(b"the other channel");
    redirected.receipt.cost_micros *= 100;
    assert!(matches!(
        rejected!(l, &fraud(&l, &k, redirected, proof(0), 0, by, other)),
        TxError::ForgedReceipt { .. }
    ));
    // Re-signed by the provider for another channel: not the leaf under the root.
    let mut resigned = receipts[0].receipt.clone();
    resigned.cost_micros *= 100;
    let resigned = resigned.sign(&k[1]);
    assert!(matches!(
        rejected!(l, &fraud(&l, &k, resigned, proof(0), 0, by, other)),
        TxError::BadReceiptProof { .. }
    ));
    // Another provider's receipt.
    let foreign = crate::common::receipt(&k[2], &k[4], ch, 50, 0);
    assert!(matches!(
        rejected!(l, &fraud(&l, &k, foreign, proof(0), 0, by, other)),
        TxError::ReceiptMismatch { .. }
    ));

    // The real receipt: 50 back to k[4], the payer of the receipt's channel.
    let (payer, other_payer) = (bal(&l, &k[4]), bal(&l, &k[0]));
    let ev = ok!(
        l,
        &fraud(&l, &k, receipts[0].clone(), proof(0), 0, by, other),
    );
    assert!(
        matches!(&ev[0], Event::Slashed { refund, payer, .. } if *refund == amt(50) && *payer == k[4].account())
    );
    assert_eq!(bal(&l, &k[4]), payer + 50);
    assert_eq!(bal(&l, &k[0]), other_payer);
    // The channel paid the provider 70: the second receipt's 50 is refunded only up to 20.
    let (by, other) = who[1];
    let ev = ok!(
        l,
        &fraud(&l, &k, receipts[1].clone(), proof(1), 1, by, other),
    );
    assert!(matches!(&ev[0], Event::Slashed { refund, .. } if *refund == amt(20)));
    assert_eq!(bal(&l, &k[4]), payer + 70);
    assert_eq!(l.state.channel(&ch).map(|c| c.refunded), Some(amt(70)));
}

/// A verifier that reveals "failed" is paid only when a verdict confirms it; a failure nothing
/// confirms by the end of the verdict window costs it `false_alarm_bps` of its stake.
#[test]
fn unconfirmed_fraud_claims_cost_the_accuser() {
    let params = Params {
        audit_fee_bps: 1_000,
        audit_fee: amt(7),
        ..Params::default()
    };
    let (mut l, k, receipts, ch) = audit_world_with(params);
    world_claim(&mut l, &k, ch, 200);
    assert_eq!(l.state.audit_pool, amt(20));
    let who = audit_leaves(&mut l, &k, &[0, 1], false);
    // No fee at the reveal of a failure.
    assert_eq!(l.state.audit_pool, amt(20));
    assert_eq!(l.state.alarms.len(), 2);
    to_verdicts(&mut l, &k[0]);
    // Leaf 0 is confirmed: bounty and the withheld fee.
    let (by, other) = who[0];
    let before = bal(&l, &k[by]);
    let proof = merkle::proof(&hashes(&receipts), 0).expect("proof");
    let ev = ok!(l, &fraud(&l, &k, receipts[0].clone(), proof, 0, by, other),);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::AlarmConfirmed { fee, .. } if *fee == amt(7))));
    assert_eq!(bal(&l, &k[by]), before + 100 + 7);
    // Leaf 1's failure is never confirmed: after the window its verifier loses 1% of its stake.
    let (liar, _) = who[1];
    let stake = l
        .state
        .account(&k[liar].account())
        .map(|a| a.stake.units())
        .unwrap_or(0);
    crate::rules::past_verdicts(&mut l, &k[0]);
    let after = l
        .state
        .account(&k[liar].account())
        .map(|a| a.stake.units())
        .unwrap_or(0);
    assert_eq!(after, stake - stake / 100);
    assert!(l.state.alarms.is_empty());
}

/// `Withheld` used to be confirmed whenever a provider was merely unreachable. Now it needs the
/// assigned verifier's on-ledger demand, left unanswered past its deadline.
#[test]
fn withheld_needs_an_unanswered_demand() {
    let (mut l, k, receipts, _ch) = audit_world();
    let provider = k[1].account();
    let withheld = |l: &Ledger, index: u64, by: usize, conf: usize| {
        let v = Verdict {
            chain_id: CHAIN,
            provider,
            epoch: R,
            index,
            fault: Fault::Withheld,
        };
        crate::rules::confirmed_verdict(l, &k[by], &k[conf], v)
    };
    let demand = |l: &Ledger, by: usize, index: u64| {
        tx(
            l,
            &k[by],
            TxBody::DemandMaterial {
                provider,
                epoch: R,
                index,
            },
        )
    };
    let (b0, b1) = (assigned(&l, &k, 0), assigned(&l, &k, 1));
    // Only the assigned verifier may demand.
    assert!(matches!(
        rejected!(l, &demand(&l, 5 - b0, 0)),
        TxError::NotAssigned { .. }
    ));
    ok!(l, &demand(&l, b0, 0));
    ok!(l, &demand(&l, b1, 1));
    let answer = |l: &Ledger, index: usize, r: &SignedReceipt| {
        tx(
            l,
            &k[1],
            TxBody::AnswerDemand {
                epoch: R,
                index: index as u64,
                receipt: r.clone(),
                proof: merkle::proof(&hashes(&receipts), index).expect("proof"),
                material: Hash32::of(b"material"),
            },
        )
    };
    // The answer must be the leaf's own receipt.
    assert!(matches!(
        rejected!(l, &answer(&l, 1, &receipts[2])),
        TxError::BadReceiptProof { .. }
    ));
    ok!(l, &answer(&l, 1, &receipts[1]));
    to_verdicts(&mut l, &k[0]);
    // Too late to answer leaf 0 now.
    assert!(matches!(
        rejected!(l, &answer(&l, 0, &receipts[0])),
        TxError::Demand { .. }
    ));
    // No demand on leaf 2; leaf 1 was answered: neither can be Withheld.
    let b2 = assigned(&l, &k, 2);
    assert!(matches!(
        rejected!(l, &withheld(&l, 2, b2, 5 - b2)),
        TxError::Demand { .. }
    ));
    assert!(matches!(
        rejected!(l, &withheld(&l, 1, b1, 5 - b1)),
        TxError::Demand { .. }
    ));
    let ev = ok!(l, &withheld(&l, 0, b0, 5 - b0));
    assert!(matches!(&ev[0], Event::Slashed { receipt: None, .. }));
}

/// Every paid answer is audit-eligible: a provider that leaves a receipt out of its roots is
/// slashed when the payer challenges it; an honest provider answers with the Merkle path and
/// takes the challenger's bond, so challenges are not free.
#[test]
fn a_receipt_left_out_of_the_roots_is_slashed_and_an_included_one_costs_the_challenger() {
    let k = keys(5);
    let mut l = crate::common::ledger(&k, 10_000);
    ok!(l, &tx(&l, &k[1], TxBody::Stake { amount: amt(1000) }));
    advance(&mut l, &k[0], 1);
    let c = crate::rules::open_channel(&mut l, &k[4], &k[1], 500, 10);
    let served = |i: u8| crate::common::receipt_at(&k[1], &k[4], c.id, 50, i, R);
    let (kept, omitted) = (served(1), served(2));
    // Root of epoch R: another receipt. Root of R + 1: the kept one (one epoch late is allowed).
    let other = served(3);
    let post = |l: &Ledger, epoch: u64, leaves: &[SignedReceipt]| {
        tx(
            l,
            &k[1],
            TxBody::PostReceiptRoot {
                epoch,
                root: merkle::root(&hashes(leaves)),
                receipts: leaves.len() as u64,
            },
        )
    };
    ok!(l, &post(&l, R, std::slice::from_ref(&other)));
    advance(&mut l, &k[0], 1);
    let late_root = [other.clone(), kept.clone()];
    ok!(l, &post(&l, R + 1, &late_root));
    world_claim(&mut l, &k, c.id, 200);
    let challenge = |l: &Ledger, by: usize, r: &SignedReceipt| {
        tx(l, &k[by], TxBody::ChallengeInclusion { receipt: r.clone() })
    };
    // Too early: the provider may still post the next root.
    assert!(matches!(
        rejected!(l, &challenge(&l, 4, &omitted)),
        TxError::AuditWindow { .. }
    ));
    advance(&mut l, &k[0], 1);
    // Only the channel's payer may challenge; a tampered receipt is refused.
    assert!(matches!(
        rejected!(l, &challenge(&l, 3, &omitted)),
        TxError::NotChannelPayer { .. }
    ));
    let mut forged = omitted.clone();
    forged.receipt.cost_micros *= 10;
    assert!(matches!(
        rejected!(l, &challenge(&l, 4, &forged)),
        TxError::ForgedReceipt { .. }
    ));
    let payer0 = crate::trust::bal(&l, &k[4]);
    ok!(l, &challenge(&l, 4, &kept));
    ok!(l, &challenge(&l, 4, &omitted));
    assert_eq!(
        rejected!(l, &challenge(&l, 4, &omitted)),
        TxError::AlreadyChallenged(omitted.hash())
    );
    assert_eq!(crate::trust::bal(&l, &k[4]), payer0 - 10);
    let answer = |l: &Ledger, r: &SignedReceipt, epoch: u64, leaves: &[SignedReceipt], i: usize| {
        tx(
            l,
            &k[1],
            TxBody::AnswerInclusion {
                receipt: r.hash(),
                epoch,
                index: i as u64,
                proof: merkle::proof(&hashes(leaves), i).expect("proof"),
            },
        )
    };
    // The omitted receipt cannot be proven under either root.
    assert!(matches!(
        rejected!(l, &answer(&l, &omitted, R + 1, &late_root, 1)),
        TxError::BadReceiptProof { .. }
    ));
    let provider0 = crate::trust::bal(&l, &k[1]);
    ok!(l, &answer(&l, &kept, R + 1, &late_root, 1));
    assert_eq!(
        crate::trust::bal(&l, &k[1]),
        provider0 + 5,
        "the bond pays the answer"
    );
    // The omitted one expires unanswered: half the stake, the cost back, the bond back.
    advance(&mut l, &k[0], 1);
    let ev = ok!(l, &tx(&l, &k[0], TxBody::AdvanceEpoch));
    assert!(
        ev.iter().any(
            |e| matches!(e, Event::OmissionSlashed { amount, refund, .. }
            if *amount == amt(500) && *refund == amt(50))
        ),
        "{ev:?}"
    );
    assert_eq!(crate::trust::bal(&l, &k[4]), payer0 - 5 + 50);
    assert_eq!(
        l.state.account(&k[1].account()).map(|a| a.stake),
        Some(amt(500))
    );
}

/// A payer used to close its channel as soon as it expired, right after being served, so the
/// provider's next claim failed. Now a close only starts the claim window: the provider claims
/// the last voucher during it, and a channel cannot be opened shorter than that window.
#[test]
fn a_payer_closing_right_after_being_served_still_pays() {
    let k = keys(3);
    let mut l = crate::common::ledger(&k, 1_000);
    let w = l.state.params.claim_window_epochs;
    let t = tx(
        &l,
        &k[1],
        TxBody::OpenChannel {
            provider: k[2].account(),
            amount: amt(100),
            timeout_epochs: w,
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::ChannelTimeout { .. }));
    let c = crate::rules::open_channel(&mut l, &k[1], &k[2], 100, w + 1);
    advance(&mut l, &k[0], (w + 1) as usize);
    // Served; the payer signs the voucher and closes in the same epoch.
    let claim = crate::rules::claim(&l, &c, 60, &k[1]);
    ok!(l, &tx(&l, &k[1], TxBody::CloseChannel { channel: c.id }));
    let top_up = tx(
        &l,
        &k[1],
        TxBody::TopUpChannel {
            channel: c.id,
            amount: amt(1),
        },
    );
    assert!(matches!(rejected!(l, &top_up), TxError::ChannelClosed(_)));
    advance(&mut l, &k[0], (w - 1) as usize);
    ok!(l, &claim);
    assert_eq!(bal(&l, &k[2]), 1_060);
    advance(&mut l, &k[0], 1);
    assert_eq!(bal(&l, &k[1]), 1_000 - 60);
    // After the window the channel is closed for good.
    assert!(matches!(
        rejected!(l, &crate::rules::claim(&l, &c, 100, &k[1])),
        TxError::ChannelClosed(_)
    ));
}

/// The canary world: the audit world's provider k[1] commits, in its root's epoch R, a plant at
/// leaf `leaf` (from `committer`, any key). Returns the salt.
fn plant_world(leaf: u64, committer: usize) -> (Ledger, Vec<Keypair>, Vec<SignedReceipt>, Hash32) {
    audit_world_then(Params::default(), move |l, k| {
        let c = plant_commitment(CHAIN, &k[1].account(), R, leaf, &Hash32::of(b"plant salt"));
        let t = tx(l, &k[committer], TxBody::PlantFraud { commitment: c });
        ok_fn(l, &t);
        // A second plant under the same root, at leaf 3 (it will not open).
        let c = plant_commitment(CHAIN, &k[1].account(), R, 3, &Hash32::of(b"plant salt"));
        let t = tx(l, &k[committer], TxBody::PlantFraud { commitment: c });
        ok_fn(l, &t);
    })
}

fn open_plant(
    l: &Ledger,
    k: &[Keypair],
    from: usize,
    leaf: u64,
    confirmer: Option<usize>,
) -> SignedTx {
    tx(
        l,
        &k[from],
        TxBody::RevealPlant {
            provider: k[1].account(),
            epoch: R,
            index: leaf,
            salt: Hash32::of(b"plant salt"),
            confirmation: confirmer.map(|c| {
                (
                    k[c].account(),
                    sign_plant_confirmation(&k[c], CHAIN, &k[1].account(), R, leaf),
                )
            }),
        },
    )
}

fn to_plant_epoch(l: &mut Ledger, k: &[Keypair]) {
    let at = agora_ledger::Windows::of(&l.state.params, R)
        .expect("windows")
        .plant;
    while l.state.epoch < at {
        advance(l, &k[0], 1);
    }
}

/// The old planter key could open "plants" for any provider and for future epochs, and so
/// slash any verifier. Now only the provider that posted the root opens a plant under it, the
/// plant was committed before the selecting beacon, and it opens in one past epoch only.
#[test]
fn reveal_plant_for_another_provider_or_a_late_commitment_is_refused() {
    // Committed by a key that is not the canary's (k[4], the payer): the canary stays hidden.
    let (mut l, k, _receipts, _ch) = plant_world(0, 4);
    audit_leaves(&mut l, &k, &[0], true);
    // A plant committed after the root's epoch (now R + 2) cannot open under it.
    let late = plant_commitment(CHAIN, &k[1].account(), R, 1, &Hash32::of(b"plant salt"));
    ok!(l, &tx(&l, &k[1], TxBody::PlantFraud { commitment: late }));
    // Too early: reveals may still come.
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 1, 0, None)),
        TxError::AuditWindow { .. }
    ));
    to_plant_epoch(&mut l, &k);
    // Another key, even the one that committed it, cannot open the provider's plant.
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 4, 0, None)),
        TxError::BadReveal
    ));
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 1, 1, None)),
        TxError::BadReveal
    ));
    // A plant never committed.
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 1, 2, None)),
        TxError::BadReveal
    ));
    ok!(l, &open_plant(&l, &k, 1, 0, None));
    // Past its one epoch.
    advance(&mut l, &k[0], 1);
    let t = tx(
        &l,
        &k[1],
        TxBody::PlantFraud {
            commitment: Hash32::of(b"x"),
        },
    );
    ok!(l, &t);
}

/// A verifier that fails a plant is doing its job: it is paid the bond and its fee, never
/// charged for a false alarm, and the canary is never slashed for the plant.
#[test]
fn an_honest_verifier_that_fails_a_plant_is_paid_and_the_canary_is_not_slashed() {
    let (mut l, k, receipts, _ch) = plant_world(2, 1);
    let (by, other) = audit_leaves(&mut l, &k, &[2], false)[0];
    to_plant_epoch(&mut l, &k);
    let (stake, bal0) = (
        l.state.account(&k[by].account()).map(|a| a.stake),
        bal(&l, &k[by]),
    );
    let ev = ok!(l, &open_plant(&l, &k, 1, 2, None));
    assert!(
        matches!(&ev[0], Event::PlantRevealed { caught: Some(v), lazy: None, .. } if *v == k[by].account())
    );
    assert_eq!(bal(&l, &k[by]), bal0 + 50, "the plant's bond");
    // The failure cannot become a verdict against the canary.
    to_verdicts(&mut l, &k[0]);
    assert!(matches!(
        rejected!(
            l,
            &verdict_tx(&l, &k, &receipts, 2, Hash32::ZERO, by, other)
        ),
        TxError::AlreadyJudged(_)
    ));
    crate::rules::past_verdicts(&mut l, &k[0]);
    assert_eq!(l.state.account(&k[by].account()).map(|a| a.stake), stake);
    assert_eq!(
        l.state.account(&k[1].account()).map(|a| a.stake),
        Some(amt(1000))
    );
}

/// A verifier that passed a plant loses stake only when a second registered verifier signed
/// that the planted answer fails: the canary's key alone takes nobody's stake.
#[test]
fn a_passed_plant_slashes_only_with_a_second_verifiers_confirmation() {
    let (mut l, k, _receipts, _ch) = plant_world(0, 1);
    let (lazy, other) = audit_leaves(&mut l, &k, &[0], true)[0];
    to_plant_epoch(&mut l, &k);
    let mut alone = l.clone();
    let ev = ok!(alone, &open_plant(&alone, &k, 1, 0, None));
    assert!(
        matches!(&ev[0], Event::PlantRevealed { lazy: None, slashed, .. } if slashed.is_zero())
    );
    // The lazy verifier cannot confirm its own slash's plant, nor the canary.
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 1, 0, Some(lazy))),
        TxError::ConflictedVerdict { .. }
    ));
    let ev = ok!(l, &open_plant(&l, &k, 1, 0, Some(other)));
    assert!(
        matches!(&ev[0], Event::PlantRevealed { lazy: Some(v), slashed, .. }
            if *v == k[lazy].account() && *slashed == amt(50)),
        "{ev:?}"
    );
    // One plant per root: the second cannot shield leaf 3 from a verdict.
    assert!(matches!(
        rejected!(l, &open_plant(&l, &k, 1, 3, None)),
        TxError::Malformed { .. }
    ));
}

/// Roots could claim 2^32 leaves while plans stopped at 2^20, so the rest were never audited.
/// Now a root holds at most as many leaves as a plan considers.
#[test]
fn a_root_cannot_claim_leaves_no_plan_selects() {
    let (mut l, k, _receipts, _ch) = audit_world();
    let post = |l: &Ledger, receipts: u64| {
        tx(
            l,
            &k[1],
            TxBody::PostReceiptRoot {
                epoch: l.state.epoch,
                root: Hash32::ZERO,
                receipts,
            },
        )
    };
    let too_many = agora_ledger::audit::MAX_PLANNED_LEAVES + 1;
    assert!(matches!(
        rejected!(l, &post(&l, too_many)),
        TxError::Malformed { .. }
    ));
    ok!(l, &post(&l, agora_ledger::audit::MAX_PLANNED_LEAVES));
}

/// A provider past probation (2% of leaves audited) and the payer `k[4]` of one of its
/// channels; `k[2]`, `k[3]` are verifiers. The provider served `receipt` in epoch `R`.
fn past_probation_world() -> (Ledger, Vec<Keypair>, Hash32) {
    let k = keys(5);
    let mut g = crate::common::genesis(&k, 10_000);
    g.params.probation_jobs = 0;
    let mut l = Ledger::from_genesis(&g).expect("valid genesis");
    ok!(l, &tx(&l, &k[1], TxBody::Stake { amount: amt(1000) }));
    for v in [2, 3] {
        ok!(
            l,
            &tx(&l, &k[v], TxBody::RegisterVerifier { stake: amt(1000) })
        );
    }
    advance(&mut l, &k[0], 1);
    let c = crate::rules::open_channel(&mut l, &k[4], &k[1], 500, 10);
    (l, k, c.id)
}

fn ppm(l: &Ledger, provider: &Keypair, epoch: u64) -> Option<u32> {
    l.state
        .roots
        .get(&(provider.account(), epoch))
        .map(|r| r.audit_ppm)
}

fn post_root(l: &Ledger, k: &Keypair, leaves: &[SignedReceipt], late: bool) -> SignedTx {
    let (epoch, root, receipts) = (
        l.state.epoch,
        merkle::root(&hashes(leaves)),
        leaves.len() as u64,
    );
    let body = if late {
        TxBody::PostLateRoot {
            epoch,
            root,
            receipts,
        }
    } else {
        TxBody::PostReceiptRoot {
            epoch,
            root,
            receipts,
        }
    };
    tx(l, k, body)
}

fn answer_inclusion(
    l: &Ledger,
    k: &Keypair,
    r: &SignedReceipt,
    leaves: &[SignedReceipt],
) -> SignedTx {
    let i = leaves
        .iter()
        .position(|x| x.hash() == r.hash())
        .expect("under the root");
    tx(
        l,
        k,
        TxBody::AnswerInclusion {
            receipt: r.hash(),
            epoch: l.state.epoch,
            index: i as u64,
            proof: merkle::proof(&hashes(leaves), i).expect("proof"),
        },
    )
}

/// The provider-outage finding: an honest provider that was down across the roots of a
/// receipt's epoch and the next used to be slashed for omission (its first root after the
/// restart was too late to answer the challenge). Now it posts a late root, audited in full,
/// answers the challenge under it, takes the bond, and keeps its stake.
#[test]
fn a_provider_down_across_both_roots_answers_under_a_late_root_and_keeps_its_stake() {
    let (mut l, k, ch) = past_probation_world();
    let served = crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, R);
    // Down in R and R + 1: no roots. Back in R + 2, the payer challenges first.
    advance(&mut l, &k[0], 2);
    ok!(
        l,
        &tx(
            &l,
            &k[4],
            TxBody::ChallengeInclusion {
                receipt: served.clone()
            }
        )
    );
    // Back online in the same epoch: what was pending, with this epoch's receipts.
    let now = crate::common::receipt_at(&k[1], &k[4], ch, 50, 2, R + 2);
    let leaves = [served.clone(), now];
    ok!(l, &post_root(&l, &k[1], &leaves, true));
    assert_eq!(
        ppm(&l, &k[1], R + 2),
        Some(1_000_000),
        "a late root is audited in full"
    );
    let before = bal(&l, &k[1]);
    ok!(l, &answer_inclusion(&l, &k[1], &served, &leaves));
    assert_eq!(bal(&l, &k[1]), before + 5, "the bond pays the answer");
    advance(&mut l, &k[0], 3);
    assert_eq!(
        l.state.account(&k[1].account()).map(|a| a.stake),
        Some(amt(1000)),
        "nobody slashed the provider"
    );
    // Every leaf of the late root is selected by its beacon.
    let plan = l.state.audit_plan(&k[1].account(), R + 2).expect("plan");
    assert_eq!(plan.leaves.len(), 2);
}

/// The attack the late root must not open: a provider past probation (2% audits) holds back
/// a receipt it cheated on, and only when the payer challenges puts it under an ordinary
/// root, where it would face a 2% audit instead of slashing. Refused: only a root audited in
/// full answers for a receipt that missed both its roots, so holding one back buys nothing.
/// Its probability is fixed at posting, before the selecting beacon: there is no choosing
/// after seeing it. Not answering at all is still an omission slash.
#[test]
fn a_receipt_held_back_past_both_roots_counts_only_under_a_root_audited_in_full() {
    let (mut l, k, ch) = past_probation_world();
    let honest = crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, R);
    let cheated = crate::common::receipt_at(&k[1], &k[4], ch, 50, 2, R);
    ok!(
        l,
        &post_root(&l, &k[1], std::slice::from_ref(&honest), false)
    );
    assert_eq!(ppm(&l, &k[1], R), Some(20_000));
    advance(&mut l, &k[0], 2);
    ok!(
        l,
        &tx(
            &l,
            &k[4],
            TxBody::ChallengeInclusion {
                receipt: cheated.clone()
            }
        )
    );
    let leaves = [cheated.clone()];
    ok!(l, &post_root(&l, &k[1], &leaves, false));
    assert!(matches!(
        rejected!(l, &answer_inclusion(&l, &k[1], &cheated, &leaves)),
        TxError::LateReceiptRoot {
            receipt_epoch: R,
            ..
        }
    ));
    // A root of an epoch before the receipt's answers nothing either.
    let t = tx(
        &l,
        &k[1],
        TxBody::AnswerInclusion {
            receipt: cheated.hash(),
            epoch: R - 1,
            index: 0,
            proof: vec![],
        },
    );
    assert!(matches!(rejected!(l, &t), TxError::WrongEpoch { .. }));
    // Unanswered by the deadline: the omission is slashed as before.
    advance(&mut l, &k[0], 1);
    let ev = ok!(l, &tx(&l, &k[0], TxBody::AdvanceEpoch));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::OmissionSlashed { amount, .. } if *amount == amt(500))),
        "{ev:?}"
    );
}

/// A late root is an ordinary root in every other rule: current epoch only, one per epoch,
/// bonded stake, a receipt count a plan can select.
#[test]
fn a_late_root_keeps_the_rules_of_a_root() {
    let (mut l, k, ch) = past_probation_world();
    let leaves = [crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, R)];
    let mut t = post_root(&l, &k[1], &leaves, true);
    if let TxBody::PostLateRoot { epoch, .. } = &mut t.tx.body {
        *epoch -= 1;
    }
    let t = tx(&l, &k[1], t.tx.body);
    assert!(matches!(rejected!(l, &t), TxError::WrongEpoch { .. }));
    ok!(l, &post_root(&l, &k[1], &leaves, false));
    assert!(matches!(
        rejected!(l, &post_root(&l, &k[1], &leaves, true)),
        TxError::RootAlreadyPosted { .. }
    ));
    // Unbonded: no root of either kind.
    ok!(l, &tx(&l, &k[1], TxBody::Unstake { amount: amt(1000) }));
    advance(&mut l, &k[0], 1);
    assert!(matches!(
        rejected!(l, &post_root(&l, &k[1], &leaves, true)),
        TxError::InsufficientStake { .. }
    ));
}

/// A late root's verdicts land later than those of the receipt's own root, so a cheater could
/// serve, unbond most of its stake at once, hold the receipt back, and answer the challenge
/// under a late root at the deadline: the unbonded stake would be released before the late
/// root's last verdict. Posting or answering under a late root holds the unbonding stake for a
/// full unbonding period from the late root's epoch, as if it had been unbonded then.
#[test]
fn unbonding_before_a_late_answer_does_not_outrun_its_verdict() {
    let (mut l, k, ch) = past_probation_world();
    let u = l.state.params.unbonding_epochs;
    let cheated = crate::common::receipt_at(&k[1], &k[4], ch, 50, 2, R);
    // Serve in R, keep 100 bonded (enough to post), unbond 900 now: released at R + u.
    ok!(l, &tx(&l, &k[1], TxBody::Unstake { amount: amt(900) }));
    advance(&mut l, &k[0], 2);
    ok!(
        l,
        &tx(
            &l,
            &k[4],
            TxBody::ChallengeInclusion {
                receipt: cheated.clone()
            }
        )
    );
    // At the challenge's deadline, under a late root.
    advance(&mut l, &k[0], 1);
    let e = l.state.epoch;
    let leaves = [cheated.clone()];
    ok!(l, &post_root(&l, &k[1], &leaves, true));
    ok!(l, &answer_inclusion(&l, &k[1], &cheated, &leaves));
    let last_verdict = agora_ledger::Windows::of(&l.state.params, e)
        .expect("windows")
        .verdict
        .1;
    assert!(R + u <= last_verdict, "the attack needs a late verdict");
    let a = l.state.account(&k[1].account()).expect("provider");
    assert_eq!(a.unbonding.len(), 1);
    assert_eq!(a.unbonding[0].release_epoch, e + u);
    assert!(
        e + u > last_verdict,
        "stake outlives the late root's verdicts"
    );
}

/// A provider on probation (every leaf of its roots audited) and the payer `k[4]` of one of
/// its channels; `k[2]`, `k[3]` are verifiers registered before the first root.
fn probation_world() -> (Ledger, Vec<Keypair>, Hash32) {
    let default = crate::common::genesis(&keys(1), 10_000)
        .params
        .probation_jobs;
    assert!(default > 4, "the default keeps a probation");
    probation_world_of(default)
}

/// [`probation_world`] with a probation of `jobs` clean audits.
fn probation_world_of(jobs: u64) -> (Ledger, Vec<Keypair>, Hash32) {
    let k = keys(5);
    let mut g = crate::common::genesis(&k, 10_000);
    g.params.probation_jobs = jobs;
    let mut l = Ledger::from_genesis(&g).expect("valid genesis");
    ok!(l, &tx(&l, &k[1], TxBody::Stake { amount: amt(1000) }));
    for v in [2, 3] {
        ok!(
            l,
            &tx(&l, &k[v], TxBody::RegisterVerifier { stake: amt(1000) })
        );
    }
    advance(&mut l, &k[0], 1);
    let c = crate::rules::open_channel(&mut l, &k[4], &k[1], 500, 10);
    (l, k, c.id)
}

/// Every selected leaf of k[1]'s root of `epoch`, holding `leaves`, is committed to and
/// revealed as passed by its assigned verifier (the ledger is in the root's epoch: it
/// advances to the beacon).
fn pass_every_leaf(l: &mut Ledger, k: &[Keypair], epoch: u64, leaves: &[SignedReceipt]) {
    advance(l, &k[0], 1);
    commit_every_leaf(l, k, epoch);
    advance(l, &k[0], 1);
    reveal_every_leaf(l, k, epoch, leaves);
}

/// The index in `k` of each selected leaf's assigned verifier, k[1]'s root of `epoch`.
fn assignees(l: &Ledger, k: &[Keypair], epoch: u64) -> Vec<(u64, usize)> {
    let plan = l.state.audit_plan(&k[1].account(), epoch).expect("plan");
    plan.leaves
        .iter()
        .map(|(i, v)| {
            let by = k.iter().position(|x| x.account() == *v).expect("key");
            (*i, by)
        })
        .collect()
}

/// Every selected leaf of k[1]'s root of `epoch` is committed to as passed (in its window).
fn commit_every_leaf(l: &mut Ledger, k: &[Keypair], epoch: u64) {
    let provider = k[1].account();
    for (i, by) in assignees(l, k, epoch) {
        let commitment = agora_ledger::audit_commitment(
            crate::common::CHAIN,
            &k[by].account(),
            &provider,
            epoch,
            i,
            true,
            &crate::rules::salt(i),
        );
        crate::rules::ok_fn(
            l,
            &tx(
                l,
                &k[by],
                TxBody::CommitAudit {
                    provider,
                    epoch,
                    index: i,
                    commitment,
                },
            ),
        );
    }
}

/// The commitments of [`commit_every_leaf`] are revealed, each naming its leaf in `leaves`
/// (the root's receipts, in leaf order) as the ledger's tree holds it.
fn reveal_every_leaf(l: &mut Ledger, k: &[Keypair], epoch: u64, leaves: &[SignedReceipt]) {
    let provider = k[1].account();
    for (i, by) in assignees(l, k, epoch) {
        let receipt = leaves[i as usize].hash();
        crate::rules::ok_fn(
            l,
            &tx(
                l,
                &k[by],
                TxBody::RevealAudit {
                    provider,
                    epoch,
                    index: i,
                    passed: true,
                    receipt,
                    salt: crate::rules::salt(i),
                },
            ),
        );
    }
}

fn clean_audits(l: &Ledger, k: &Keypair) -> u64 {
    l.state.account(&k.account()).map_or(0, |a| a.clean_audits)
}

/// The probation re-post: a provider on probation serves two answers honestly, has them
/// audited under their own root, then posts the same (old, honest) receipts again and again
/// under late roots, every leaf audited and passing, to count its way out of probation
/// without serving new work. A late root holds receipts that missed their own roots: it is
/// audited in full (a fraud in it is slashed), but its passes earn no probation credit, so
/// each receipt counts at most under the roots of its own epoch and the next.
#[test]
fn receipts_reposted_under_late_roots_earn_no_probation_credit() {
    let (mut l, k, ch) = probation_world();
    let e = l.state.epoch;
    let served: Vec<SignedReceipt> = (1..=2)
        .map(|i| crate::common::receipt_at(&k[1], &k[4], ch, 50, i, e))
        .collect();
    ok!(l, &post_root(&l, &k[1], &served, false));
    pass_every_leaf(&mut l, &k, e, &served);
    assert_eq!(clean_audits(&l, &k[1]), 2, "the honest work counts once");
    for _ in 0..3 {
        let late = l.state.epoch;
        ok!(l, &post_root(&l, &k[1], &served, true));
        assert_eq!(ppm(&l, &k[1], late), Some(1_000_000));
        pass_every_leaf(&mut l, &k, late, &served);
        assert_eq!(
            l.state
                .audit_plan(&k[1].account(), late)
                .map(|p| p.leaves.len()),
            Some(2),
            "every leaf of a late root is still audited"
        );
    }
    assert_eq!(
        clean_audits(&l, &k[1]),
        2,
        "re-posted receipts under late roots counted toward probation"
    );
}

/// The probation double count: a provider on probation posts the same honest receipt `a`
/// under its roots of the receipt's epoch and the next (both may hold it), where two
/// different verifiers audit it, so neither meets it twice. Each reveal names the receipt
/// it judged and a receipt earns probation credit once, so `a` counts once (`b`, served in
/// the next epoch, counts too). Before the rule: 3 clean audits.
#[test]
fn a_receipt_under_two_consecutive_roots_earns_probation_credit_once() {
    let (mut l, k, ch) = probation_world();
    let e = l.state.epoch;
    let a = crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, e);
    let first = [a.clone()];
    ok!(l, &post_root(&l, &k[1], &first, false));
    advance(&mut l, &k[0], 1);
    // In leaf order (by request id): b, then a again.
    let b = crate::common::receipt_at(&k[1], &k[4], ch, 50, 0, e + 1);
    let second = [b, a];
    ok!(l, &post_root(&l, &k[1], &second, false));
    assert_eq!(ppm(&l, &k[1], e + 1), Some(1_000_000), "still on probation");
    commit_every_leaf(&mut l, &k, e);
    advance(&mut l, &k[0], 1);
    reveal_every_leaf(&mut l, &k, e, &first);
    commit_every_leaf(&mut l, &k, e + 1);
    advance(&mut l, &k[0], 1);
    reveal_every_leaf(&mut l, &k, e + 1, &second);
    let auditor = |epoch: u64, index: u64| {
        assignees(&l, &k, epoch)
            .into_iter()
            .find(|(i, _)| *i == index)
            .map(|(_, by)| by)
    };
    assert_ne!(auditor(e, 0), auditor(e + 1, 1), "two verifiers audit `a`");
    assert_eq!(
        clean_audits(&l, &k[1]),
        2,
        "a receipt under two consecutive roots counted twice toward probation"
    );
}

/// The honest case: the production provider posts its root of epoch r during r, so most
/// receipts of r sit only under the root of r + 1. Such a receipt earns its probation credit
/// there (a rule crediting only the root of the receipt's own epoch gave it none).
#[test]
fn a_receipt_posted_only_under_the_next_root_earns_probation_credit() {
    let (mut l, k, ch) = probation_world();
    let e = l.state.epoch;
    let a = crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, e);
    advance(&mut l, &k[0], 1);
    let b = crate::common::receipt_at(&k[1], &k[4], ch, 50, 0, e + 1);
    let next = [b, a];
    ok!(l, &post_root(&l, &k[1], &next, false));
    pass_every_leaf(&mut l, &k, e + 1, &next);
    assert_eq!(
        clean_audits(&l, &k[1]),
        2,
        "an honest receipt of epoch r under the root of r + 1 earned nothing"
    );
}

/// The receipts credited are remembered only during probation: the set is dropped when the
/// provider leaves it (so the state holds at most `probation_jobs` per provider).
#[test]
fn the_credited_receipts_are_dropped_when_probation_ends() {
    let (mut l, k, ch) = probation_world_of(3);
    let provider = k[1].account();
    let e = l.state.epoch;
    let first: Vec<SignedReceipt> = (1..=2)
        .map(|i| crate::common::receipt_at(&k[1], &k[4], ch, 50, i, e))
        .collect();
    ok!(l, &post_root(&l, &k[1], &first, false));
    pass_every_leaf(&mut l, &k, e, &first);
    assert_eq!(clean_audits(&l, &k[1]), 2);
    let held = |l: &Ledger| l.state.probation_credited.get(&provider).map(|s| s.len());
    assert_eq!(held(&l), Some(2));
    // The third clean audit ends probation (one new receipt beside an old one).
    let e2 = l.state.epoch;
    let c = crate::common::receipt_at(&k[1], &k[4], ch, 50, 3, e2);
    let second = [first[1].clone(), c];
    ok!(l, &post_root(&l, &k[1], &second, false));
    pass_every_leaf(&mut l, &k, e2, &second);
    assert_eq!(clean_audits(&l, &k[1]), 3, "the old receipt counted again");
    assert_eq!(held(&l), None, "the credited set outlived probation");
    assert!(l.state.probation_credited.is_empty());
    let e3 = l.state.epoch;
    let d = crate::common::receipt_at(&k[1], &k[4], ch, 50, 4, e3);
    ok!(l, &post_root(&l, &k[1], &[d], false));
    assert_eq!(
        ppm(&l, &k[1], e3),
        Some(l.state.params.audit_floor_ppm),
        "out of probation"
    );
}

/// A root posted on probation is audited in full, but it is not a late root: a receipt that
/// missed the roots of its epoch and the next answers its inclusion challenge only under a
/// `PostLateRoot` (whose passes count nothing toward probation). Were a probation root
/// accepted, a provider could re-post old receipts under it and count them again.
#[test]
fn a_probation_root_is_not_a_late_root() {
    let (mut l, k, ch) = probation_world();
    let served = crate::common::receipt_at(&k[1], &k[4], ch, 50, 1, l.state.epoch);
    advance(&mut l, &k[0], 2);
    ok!(
        l,
        &tx(
            &l,
            &k[4],
            TxBody::ChallengeInclusion {
                receipt: served.clone()
            }
        )
    );
    let leaves = [served.clone()];
    ok!(l, &post_root(&l, &k[1], &leaves, false));
    assert_eq!(
        ppm(&l, &k[1], l.state.epoch),
        Some(1_000_000),
        "on probation"
    );
    assert!(matches!(
        rejected!(l, &answer_inclusion(&l, &k[1], &served, &leaves)),
        TxError::LateReceiptRoot { .. }
    ));
}
