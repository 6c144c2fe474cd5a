//! The named scenarios (one per attack of issue 13, Part A, plus `honest` and `mixed`), each a
//! [`Setup`] drawn from the seed, and the verdict over many seeds.

use crate::payer::PayerKind;
use crate::provider::ProviderKind;
use crate::rng::Rng;
use crate::verifier::VerifierKind;
use crate::world::{Faults, RunResult, Setup, World};
use std::collections::BTreeMap;

/// A named scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// The issue 13 item it exercises (0 for none).
    pub item: u8,
    /// What it shows.
    pub what: &'static str,
    build: fn(&mut Rng) -> Setup,
}

fn honest(_: &mut Rng) -> Setup {
    Setup::default()
}

fn with_provider(kind: ProviderKind, q: u32) -> Setup {
    let mut s = Setup::default();
    s.providers[0] = (kind, q);
    s
}

fn overcharge(_: &mut Rng) -> Setup {
    with_provider(ProviderKind::Overcharge, 0)
}
fn cheap_model(_: &mut Rng) -> Setup {
    with_provider(ProviderKind::CheapModel, 300_000)
}
fn omit_receipt(_: &mut Rng) -> Setup {
    with_provider(ProviderKind::OmitReceipt, 500_000)
}
fn late_omit(_: &mut Rng) -> Setup {
    // Past probation: an ordinary root is audited at the 2% floor.
    let mut s = with_provider(ProviderKind::LateOmit, 500_000);
    s.warm_start = true;
    s
}
fn unstake(_: &mut Rng) -> Setup {
    with_provider(ProviderKind::UnstakeEarly, 1_000_000)
}
fn withhold(_: &mut Rng) -> Setup {
    with_provider(ProviderKind::Withhold, 500_000)
}
fn frame(_: &mut Rng) -> Setup {
    let mut s = Setup::default();
    s.verifiers[0] = VerifierKind::Framer;
    // A denial of service on provider 1 while the accusation is being confirmed (shorter
    // than the time to its next root).
    s.faults.outage = Some((1, 3, 3_500));
    s
}
fn outage(_: &mut Rng) -> Setup {
    let mut s = Setup::default();
    // Provider 1 is down across its root for epoch 3.
    s.faults.outage = Some((1, 3, 9_000));
    s
}
fn lazy(_: &mut Rng) -> Setup {
    let mut s = Setup::default();
    s.verifiers[0] = VerifierKind::Lazy;
    s.verifiers[1] = VerifierKind::AlwaysFail;
    s.verifiers.push(VerifierKind::Honest);
    s.providers[1] = (ProviderKind::Canary, 0);
    s
}
fn sybil(_: &mut Rng) -> Setup {
    let mut s = with_provider(ProviderKind::CheapModel, 1_000_000);
    s.sybils = 4;
    s
}
fn canary_abuse(_: &mut Rng) -> Setup {
    Setup {
        planter_abuse: true,
        ..Setup::default()
    }
}
fn nonpaying(_: &mut Rng) -> Setup {
    Setup {
        payers: vec![
            PayerKind::NonPaying,
            PayerKind::CloseEarly,
            PayerKind::Honest,
        ],
        ..Setup::default()
    }
}
fn spam(_: &mut Rng) -> Setup {
    Setup {
        spam: true,
        ..Setup::default()
    }
}

/// The randomized adversary: every seed draws which providers, verifiers and payers cheat,
/// how, how often, and what the network does.
fn mixed(r: &mut Rng) -> Setup {
    let mut s = Setup::default();
    let pk = [
        ProviderKind::Overcharge,
        ProviderKind::OmitReceipt,
        ProviderKind::LateOmit,
        ProviderKind::UnstakeEarly,
        ProviderKind::Withhold,
        ProviderKind::CheapModel,
    ];
    for p in s.providers.iter_mut() {
        if r.chance_ppm(500_000) {
            let kind = pk[r.below(pk.len() as u64) as usize];
            *p = (
                kind,
                u32::try_from(r.range(100_000, 1_000_000)).unwrap_or(0),
            );
        }
    }
    if r.chance_ppm(500_000) {
        let vk = [
            VerifierKind::Lazy,
            VerifierKind::AlwaysFail,
            VerifierKind::Framer,
        ];
        let i = r.below(s.verifiers.len() as u64) as usize;
        s.verifiers[i] = vk[r.below(vk.len() as u64) as usize];
        // Lazy verification is answered by canaries: the network runs one.
        if s.verifiers[i] == VerifierKind::Lazy {
            s.providers[2] = (ProviderKind::Canary, 0);
        }
    }
    for p in s.payers.iter_mut() {
        if r.chance_ppm(250_000) {
            *p = if r.chance_ppm(500_000) {
                PayerKind::NonPaying
            } else {
                PayerKind::CloseEarly
            };
        }
    }
    s.spam = r.chance_ppm(250_000);
    s.planter_abuse = r.chance_ppm(125_000);
    if r.chance_ppm(125_000) {
        s.providers[0] = (ProviderKind::CheapModel, 1_000_000);
        s.sybils = 3;
    }
    s.faults = Faults {
        loss_ppm: u32::try_from(r.below(5_000)).unwrap_or(0),
        crashes: u32::try_from(r.below(3)).unwrap_or(0),
        partitions: u32::try_from(r.below(3)).unwrap_or(0),
        outage: None,
    };
    s
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "honest",
        item: 0,
        what: "every party honest: nobody slashed, nobody overcharged, money conserved",
        build: honest,
    },
    Scenario {
        name: "overcharge",
        item: 1,
        what: "a provider claims 4x the prompt tokens it was sent",
        build: overcharge,
    },
    Scenario {
        name: "omit-receipt",
        item: 2,
        what: "a provider serves a cheaper model and leaves those receipts out of its root",
        build: omit_receipt,
    },
    Scenario {
        name: "late-omit",
        item: 2,
        what: "a provider past probation holds back receipts it cheated on and puts them under a root only once challenged",
        build: late_omit,
    },
    Scenario {
        name: "withhold-material",
        item: 2,
        what: "a provider serves a cheaper model and never hands over that material",
        build: withhold,
    },
    Scenario {
        name: "unstake-before-verdict",
        item: 2,
        what: "a provider cheats on every answer and unstakes right after posting its root",
        build: unstake,
    },
    Scenario {
        name: "frame-honest-provider",
        item: 3,
        what: "a verifier accuses honest providers of withholding, during a denial of service",
        build: frame,
    },
    Scenario {
        name: "provider-outage",
        item: 2,
        what: "an honest provider is down across one root deadline: answers it served late in the epoch before miss both roots they may sit under",
        build: outage,
    },
    Scenario {
        name: "nonpaying-payer",
        item: 4,
        what: "payers that never sign vouchers, or close channels as soon as they may",
        build: nonpaying,
    },
    Scenario {
        name: "sybil-verifiers",
        item: 6,
        what: "a cheating provider registers sybil verifiers after the beacon to audit itself",
        build: sybil,
    },
    Scenario {
        name: "lazy-verifier",
        item: 7,
        what: "verifiers that pass (or fail) without auditing, against a canary's plants",
        build: lazy,
    },
    Scenario {
        name: "canary-abuse",
        item: 7,
        what: "the planter key plants on honest providers' leaves to slash honest verifiers",
        build: canary_abuse,
    },
    Scenario {
        name: "spam-gossip",
        item: 9,
        what: "unauthenticated confirm requests and false audit gossip",
        build: spam,
    },
    Scenario {
        name: "cheap-model",
        item: 0,
        what: "a provider serves a cheaper model on 30% of answers",
        build: cheap_model,
    },
    Scenario {
        name: "mixed",
        item: 0,
        what: "the randomized adversary: strategies, rates and network faults drawn per seed",
        build: mixed,
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

impl Scenario {
    /// The setup of seed `seed`.
    pub fn setup(&self, seed: u64) -> Setup {
        let mut r = Rng::new(seed, self.name);
        (self.build)(&mut r)
    }

    /// One run.
    pub fn run(&self, seed: u64) -> RunResult {
        World::new(&self.setup(seed), seed).run()
    }

    /// One run, printing every ledger event to stderr.
    pub fn trace(&self, seed: u64) -> RunResult {
        World::new(&self.setup(seed), seed).run_traced(true)
    }
}

/// The most a payer strategy may gain: one reservation ahead per channel it opens.
pub fn payer_bound(s: &Setup) -> i128 {
    let per = s.knobs.reservation_micros(48) / 1_000_000 + 1;
    (per * s.providers.len() as u128 * 2) as i128
}

/// A scenario over many seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Issue 13 item.
    pub item: u8,
    /// Seeds run.
    pub seeds: u64,
    /// Mean attacker gain over honest behaviour, base units.
    pub mean_attacker_gain: f64,
    /// Mean gain per strategy, base units.
    pub strategy_gain: BTreeMap<String, f64>,
    /// Honest parties slashed, in all.
    pub honest_slashed: u64,
    /// Honest payers' overcharge, in all.
    pub overcharge: u128,
    /// Conservation held in every run.
    pub conserved: bool,
    /// Runs with at least one violation, plus one per strategy that gained on average.
    pub violations: u64,
    /// The first violating seed (replay with `--seed`).
    pub first_violation: Option<u64>,
    /// What the first violation was.
    pub first_violation_reason: Option<String>,
    /// Answers, cheats, slashes, audits over all runs.
    pub answers: u64,
    /// Cheated answers.
    pub cheats: u64,
    /// Slashes.
    pub slashes: u64,
    /// Audits run.
    pub audits: u64,
}

/// Folds runs (in seed order) into a summary and applies the profit rule: every cheating
/// strategy loses money on average; a payer strategy gains at most one reservation per
/// channel; griefing strategies (spam, planter abuse) gain nothing.
pub fn summarize(sc: &Scenario, runs: &[RunResult]) -> Summary {
    let mut s = Summary {
        scenario: sc.name.to_string(),
        item: sc.item,
        seeds: runs.len() as u64,
        mean_attacker_gain: 0.0,
        strategy_gain: BTreeMap::new(),
        honest_slashed: 0,
        overcharge: 0,
        conserved: true,
        violations: 0,
        first_violation: None,
        first_violation_reason: None,
        answers: 0,
        cheats: 0,
        slashes: 0,
        audits: 0,
    };
    let mut sums: BTreeMap<String, (i128, u64, Option<u64>)> = BTreeMap::new();
    let mut total: i128 = 0;
    for r in runs {
        total += r.attacker_gain;
        s.honest_slashed += r.honest_slashed;
        s.overcharge += r.overcharge;
        s.conserved &= r.conserved;
        s.answers += r.answers;
        s.cheats += r.cheats;
        s.slashes += r.slashes;
        s.audits += r.audits;
        if !r.violations.is_empty() {
            s.violations += 1;
            if s.first_violation.is_none() {
                s.first_violation = Some(r.seed);
                s.first_violation_reason = r.violations.first().cloned();
            }
        }
        let bound = payer_bound(&sc.setup(r.seed));
        for (k, g) in &r.gains {
            let e = sums.entry(k.clone()).or_insert((0, 0, None));
            e.0 += g;
            e.1 += 1;
            let limit = if k.starts_with("payer:") { bound } else { 0 };
            if *g > limit && e.2.is_none() {
                e.2 = Some(r.seed);
            }
        }
    }
    if !runs.is_empty() {
        s.mean_attacker_gain = total as f64 / runs.len() as f64;
    }
    for (k, (sum, n, first)) in sums {
        let mean = sum as f64 / n.max(1) as f64;
        s.strategy_gain.insert(k.clone(), mean);
        let broken = if k.starts_with("payer:") {
            // Bounded by one reservation per channel, never a free ride.
            first.is_some()
        } else if k == "spam-gossip" || k == "planter-abuse" {
            mean > 0.0
        } else {
            mean >= 0.0
        };
        if broken {
            s.violations += 1;
            let seed = first.or(runs.first().map(|r| r.seed));
            if s.first_violation.is_none() || (seed < s.first_violation && seed.is_some()) {
                s.first_violation = seed;
                s.first_violation_reason = Some(format!("{k} gains {mean:.1} on average"));
            }
        }
    }
    s
}
