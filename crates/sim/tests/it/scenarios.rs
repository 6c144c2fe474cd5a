//! Each attack of issue 13 Part A as a scenario over a few dozen seeds: no honest party
//! slashed, no payer overcharged, money conserved, every paid answer audit-eligible, no
//! audit steered, and every cheating strategy losing money. A scenario whose fix has not
//! landed is ignored here, naming the rule (the gap stays visible in `agora sim`).

use agora_sim::scenario::{summarize, Summary};
use agora_sim::{run_seeds, scenario};

const SEEDS: u64 = 24;

fn run(name: &str) -> Summary {
    let sc = scenario(name).expect("scenario");
    let seeds: Vec<u64> = (0..SEEDS).collect();
    summarize(sc, &run_seeds(sc, &seeds, 2))
}

fn clean(name: &str) -> Summary {
    let s = run(name);
    assert_eq!(
        s.violations, 0,
        "{name}: first violation at seed {:?}: {:?}",
        s.first_violation, s.first_violation_reason
    );
    assert!(s.conserved, "{name}: money not conserved");
    assert_eq!(s.honest_slashed, 0, "{name}");
    assert_eq!(s.overcharge, 0, "{name}");
    assert!(s.answers > 0, "{name}: nothing was served");
    s
}

#[test]
fn honest_network_slashes_nobody() {
    let s = clean("honest");
    assert_eq!(s.slashes, 0);
    assert_eq!(s.cheats, 0);
    assert!(s.audits > 0, "probation audits every leaf");
}

#[test]
fn overcharging_provider_is_never_paid_for_an_inflated_receipt() {
    // The broker's receipt check refuses the inflated prompt count, so nothing is paid for
    // it. The verifier demands the material (its counts do not match the receipt) rather
    // than failing it, so no slash is asserted here.
    let s = clean("overcharge");
    assert!(s.mean_attacker_gain < 0.0);
}

#[test]
fn cheap_model_provider_loses_money() {
    let s = clean("cheap-model");
    assert!(s.cheats > 0 && s.slashes > 0);
    assert!(s.mean_attacker_gain < 0.0);
}

#[test]
fn withholding_material_is_a_fault() {
    let s = clean("withhold-material");
    assert!(s.slashes > 0);
}

#[test]
fn nonpaying_payer_gains_at_most_one_reservation_per_channel() {
    clean("nonpaying-payer");
}

#[test]
fn spam_gossip_changes_nothing() {
    let s = clean("spam-gossip");
    assert_eq!(s.slashes, 0);
}

#[test]
fn omitted_receipts_are_caught() {
    let s = clean("omit-receipt");
    assert!(
        s.slashes > 0,
        "the payer's non-inclusion challenge slashes the omitter"
    );
    assert!(s.mean_attacker_gain < 0.0);
}

/// The attack a late root must not open: held-back receipts come out only once challenged,
/// and then under a root audited in full, so they are caught as surely as under probation.
#[test]
fn receipts_held_back_until_challenged_are_audited_in_full() {
    let s = clean("late-omit");
    assert!(s.cheats > 0 && s.slashes > 0);
    assert!(s.mean_attacker_gain < 0.0);
}

#[test]
fn unstaking_before_the_verdict_does_not_save_the_stake() {
    clean("unstake-before-verdict");
}

#[test]
fn honest_provider_cannot_be_framed() {
    let s = clean("frame-honest-provider");
    assert!(s.mean_attacker_gain < 0.0, "false alarms cost the framer");
}

#[test]
fn sybil_verifiers_cannot_steer_audits() {
    clean("sybil-verifiers");
}

#[test]
fn lazy_verifiers_lose_and_the_canary_is_never_slashed() {
    clean("lazy-verifier");
}

#[test]
fn planter_key_cannot_slash_honest_verifiers() {
    clean("canary-abuse");
}

/// The design brief's goal, in CI: the randomized adversary over 10,000 seeds with no
/// violation. (No few-seed variant: the mixed adversary draws a strategy per actor, so a
/// strategy's mean gain over a couple of dozen seeds rests on a handful of runs and a change of
/// message bytes reshuffles it; 24 seeds once showed the lazy verifier at +4 units where
/// 10,000 show -758.) About a minute in release on two idle cores (docs/BENCHMARKS.md); every core
/// this machine has is used.
#[test]
fn mixed_adversary_over_10000_seeds_breaks_no_invariant() {
    let sc = scenario("mixed").expect("scenario");
    let seeds: Vec<u64> = (0..10_000).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    let s = summarize(sc, &run_seeds(sc, &seeds, threads));
    eprintln!(
        "mixed, 10,000 seeds on {threads} threads: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        s.violations, 0,
        "first violation at seed {:?}: {:?} (replay: agora sim --scenario mixed --seed S --trace)",
        s.first_violation, s.first_violation_reason
    );
    assert!(s.conserved);
    assert_eq!(s.honest_slashed, 0);
    assert_eq!(s.overcharge, 0);
    assert!(s.mean_attacker_gain < 0.0);
}

/// An honest provider down across the roots of its receipts' epoch and the next used to be
/// slashed for omission; it now answers under a late root, audited in full.
#[test]
fn provider_outage_over_a_root_deadline_is_not_an_omission() {
    clean("provider-outage");
}
