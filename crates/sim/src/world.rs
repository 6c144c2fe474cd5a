//! One run: the nodes, their actors, the event loop, and what the run measured.

use crate::adversary::Adversary;
use crate::net::{LinkSpec, Network, NodeId};
use crate::payer::{Payer, PayerKind};
use crate::provider::{eligible, Provider, ProviderKind};
use crate::rng::Rng;
use crate::runtime::{Ev, PendingBlock, Runtime, Timer, BLOCK_MS, EPOCH_MS};
use crate::verifier::{Verifier, VerifierKind};
use agora_core::{codec, AccountId, Amount, Hash32, Keypair};
use agora_ledger::audit::assignee;
use agora_ledger::tx::verify_batch;
use agora_ledger::{Allocation, Event, Genesis, Ledger, Params, TxError, VerifiedTx};
use agora_wire::price::micros_to_amount;
use std::collections::{BTreeMap, BTreeSet};

/// The chain id of every simulated ledger.
pub const CHAIN: u64 = 0x5151;

/// Economic and traffic settings of a run (the ledger's rules are its [`Params`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Knobs {
    /// Agreed price per million tokens, prompt and output alike, base units.
    pub price_per_mtok: u128,
    /// Stake each provider bonds.
    pub provider_stake: u128,
    /// Stake each verifier bonds.
    pub verifier_stake: u128,
    /// Each channel's deposit (and each top-up).
    pub deposit: u128,
    /// Channel timeout, epochs.
    pub channel_epochs: u64,
    /// A provider serves a channel only while it stays open this many epochs more.
    pub claim_margin_epochs: u64,
    /// Most output tokens per request.
    pub max_tokens: u32,
    /// What one audit costs a verifier to run, base units.
    pub audit_cost: u128,
    /// Share of an answer's price that serving the cheaper model saves, ppm.
    pub cheat_saving_ppm: u32,
    /// Share of the canary's answers that are planted frauds, ppm.
    pub plant_ppm: u32,
    /// Epochs with traffic.
    pub traffic_epochs: u64,
    /// Epochs in all (the rest lets every audit, verdict and plant finish).
    pub total_epochs: u64,
    /// Gap between a payer's requests, ms (uniform in the range).
    pub request_gap_ms: (u64, u64),
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            price_per_mtok: 100_000,
            provider_stake: 100_000,
            verifier_stake: 10_000,
            deposit: 2_000,
            channel_epochs: 32,
            claim_margin_epochs: 0,
            max_tokens: 64,
            audit_cost: 1,
            cheat_saving_ppm: 500_000,
            plant_ppm: 100_000,
            traffic_epochs: 3,
            total_epochs: 11,
            request_gap_ms: (600, 1_400),
        }
    }
}

impl Knobs {
    /// When payers stop sending, virtual ms.
    pub fn traffic_ms(&self) -> u64 {
        self.traffic_epochs * EPOCH_MS
    }

    /// The most a request with `prompt` tokens can cost, micro-units.
    pub fn reservation_micros(&self, prompt: usize) -> u128 {
        (prompt as u128 + u128::from(self.max_tokens)) * self.price_per_mtok
    }
}

/// Who is who.
#[derive(Debug, Default)]
pub struct Dir {
    /// Provider nodes.
    pub providers: Vec<NodeId>,
    /// Payer nodes.
    pub payers: Vec<NodeId>,
    /// Verifier nodes.
    pub verifiers: Vec<NodeId>,
    /// Node of each account.
    pub by_account: BTreeMap<AccountId, NodeId>,
    /// Nodes that follow the protocol.
    pub honest: BTreeSet<NodeId>,
}

impl Dir {
    /// Whether `a` is an honest provider.
    pub fn honest_provider(&self, a: &AccountId) -> bool {
        self.by_account
            .get(a)
            .is_some_and(|n| self.honest.contains(n) && self.providers.contains(n))
    }
}

/// Network faults of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Faults {
    /// Loss on every link, ppm.
    pub loss_ppm: u32,
    /// Random crashes (1 to 3 s, then restart).
    pub crashes: u32,
    /// Random partitions between two nodes (1 to 3 s).
    pub partitions: u32,
    /// Crash this provider (index) from the start of epoch `.1` for `.2` ms.
    pub outage: Option<(usize, u64, u64)>,
}

/// Who takes part in a run.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Ledger rules.
    pub params: Params,
    /// Economics and traffic.
    pub knobs: Knobs,
    /// Providers and their cheating probability (ppm).
    pub providers: Vec<(ProviderKind, u32)>,
    /// Payers.
    pub payers: Vec<PayerKind>,
    /// Verifiers.
    pub verifiers: Vec<VerifierKind>,
    /// The holder of the planter key plants on honest leaves.
    pub planter_abuse: bool,
    /// Sybil verifiers steered by provider 0.
    pub sybils: usize,
    /// A spam gossiper.
    pub spam: bool,
    /// Faults.
    pub faults: Faults,
    /// Providers start past probation (their `clean_audits` set at genesis).
    pub warm_start: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            params: Params::default(),
            knobs: Knobs::default(),
            providers: vec![(ProviderKind::Honest, 0); 3],
            payers: vec![PayerKind::Honest; 2],
            verifiers: vec![VerifierKind::Honest; 4],
            planter_abuse: false,
            sybils: 0,
            spam: false,
            faults: Faults::default(),
            warm_start: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Sequencer,
    Provider(usize),
    Payer(usize),
    Verifier(usize),
    Adversary(usize),
    Sybil,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// Hash of the final ledger tip, state and run counters: equal for equal seeds.
    pub hash: String,
    /// Sum of the attackers' gains over honest behaviour, base units (negative: cheating lost).
    pub attacker_gain: i128,
    /// Gain by strategy, base units.
    pub gains: BTreeMap<String, i128>,
    /// Slashes (and lazy-verifier penalties) that hit honest parties.
    pub honest_slashed: u64,
    /// What honest payers paid above (counted tokens) x (price), base units.
    pub overcharge: u128,
    /// The ledger's conservation check held after every block.
    pub conserved: bool,
    /// Every invariant this run broke, one line each.
    pub violations: Vec<String>,
    /// Answers delivered.
    pub answers: u64,
    /// Answers served from the cheaper model.
    pub cheats: u64,
    /// Slash events.
    pub slashes: u64,
    /// Audits run.
    pub audits: u64,
    /// What the attackers' cheating saved them, base units.
    pub saving: i128,
}

/// A world of nodes, ready to run.
pub struct World {
    rt: Runtime,
    dir: Dir,
    knobs: Knobs,
    seed: u64,
    roles: Vec<Role>,
    providers: Vec<Provider>,
    payers: Vec<Payer>,
    verifiers: Vec<Verifier>,
    adversaries: Vec<Adversary>,
    attackers: BTreeMap<NodeId, String>,
    start_wealth: Vec<u128>,
    frozen: BTreeMap<u64, Vec<AccountId>>,
    steered: u64,
    faults: Faults,
}

fn key(seed: u64, node: usize) -> Keypair {
    let b = codec::hash(b"agora/sim/key/v1", &(seed, node as u64));
    Keypair::from_seed(*b.as_bytes())
}

impl World {
    /// Builds the world of `setup` for `seed`.
    pub fn new(setup: &Setup, seed: u64) -> World {
        let mut roles = vec![Role::Sequencer];
        let mut names = vec!["sequencer".to_string()];
        let mut dir = Dir::default();
        let mut attackers = BTreeMap::new();
        let mut providers = Vec::new();
        for (i, (kind, q)) in setup.providers.iter().enumerate() {
            let n = roles.len();
            roles.push(Role::Provider(i));
            names.push(format!("provider-{i}"));
            dir.providers.push(n);
            if kind.byzantine() {
                attackers.insert(n, format!("provider:{}", kebab(kind)));
            } else {
                dir.honest.insert(n);
            }
            providers.push(Provider::new(n, *kind, *q, seed));
        }
        let mut payers = Vec::new();
        for (i, kind) in setup.payers.iter().enumerate() {
            let n = roles.len();
            roles.push(Role::Payer(i));
            names.push(format!("payer-{i}"));
            dir.payers.push(n);
            if *kind == PayerKind::Honest {
                dir.honest.insert(n);
            } else {
                attackers.insert(n, format!("payer:{}", kebab(kind)));
            }
            payers.push(Payer::new(n, *kind, seed));
        }
        let mut verifiers = Vec::new();
        for (i, kind) in setup.verifiers.iter().enumerate() {
            let n = roles.len();
            roles.push(Role::Verifier(i));
            names.push(format!("verifier-{i}"));
            dir.verifiers.push(n);
            if kind.byzantine() {
                attackers.insert(n, format!("verifier:{}", kebab(kind)));
            } else {
                dir.honest.insert(n);
            }
            verifiers.push(Verifier::new(n, *kind, seed));
        }
        let mut adversaries = Vec::new();
        let mut planter = None;
        if setup.planter_abuse {
            let n = roles.len();
            roles.push(Role::Adversary(adversaries.len()));
            names.push("planter".into());
            attackers.insert(n, "planter-abuse".into());
            planter = Some(n);
            adversaries.push(Adversary::PlanterAbuse {
                node: n,
                plants: Vec::new(),
                rng: Rng::new(seed, "planter"),
            });
        }
        if setup.sybils > 0 {
            let ctrl = roles.len();
            roles.push(Role::Adversary(adversaries.len()));
            names.push("sybil-controller".into());
            let mut sybils = Vec::new();
            for i in 0..setup.sybils {
                let n = roles.len();
                roles.push(Role::Sybil);
                names.push(format!("sybil-{i}"));
                attackers.insert(n, "provider:sybil-verifiers".into());
                sybils.push(n);
            }
            if let Some(&p0) = dir.providers.first() {
                attackers.insert(p0, "provider:sybil-verifiers".into());
                dir.honest.remove(&p0);
            }
            adversaries.push(Adversary::Sybil {
                node: ctrl,
                provider: 0,
                sybils,
                commits: Vec::new(),
                rng: Rng::new(seed, "sybil"),
            });
        }
        if setup.spam {
            let n = roles.len();
            roles.push(Role::Adversary(adversaries.len()));
            names.push("spammer".into());
            attackers.insert(n, "spam-gossip".into());
            adversaries.push(Adversary::Spam {
                node: n,
                rng: Rng::new(seed, "spam"),
                sent: 0,
            });
        }
        let keys: Vec<Keypair> = (0..roles.len()).map(|i| key(seed, i)).collect();
        for (i, k) in keys.iter().enumerate() {
            dir.by_account.insert(k.account(), i);
        }
        let params = setup.params.clone();
        let _ = planter;
        let genesis = Genesis {
            chain_id: CHAIN,
            sequencer: keys[0].account(),
            params,
            allocations: keys
                .iter()
                .skip(1)
                .map(|k| Allocation {
                    account: k.account(),
                    amount: Amount::new(1_000_000),
                })
                .collect(),
        };
        let mut ledger = match Ledger::from_genesis(&genesis) {
            Ok(l) => l,
            Err(e) => panic!("the simulation's own genesis is invalid: {e}"),
        };
        if setup.warm_start {
            // Past probation at genesis: the same as 50 clean audits without running them.
            let jobs = ledger.state.params.probation_jobs;
            for &p in &dir.providers {
                if let Some(a) = ledger.state.accounts.get_mut(&keys[p].account()) {
                    a.clean_audits = jobs;
                }
            }
        }
        let spec = LinkSpec {
            loss_ppm: setup.faults.loss_ppm,
            ..LinkSpec::default()
        };
        let net = Network::new(names, spec, seed);
        let rt = Runtime::new(ledger, keys, net);
        let start_wealth = vec![0; roles.len()];
        let mut w = World {
            rt,
            dir,
            knobs: setup.knobs.clone(),
            seed,
            roles,
            providers,
            payers,
            verifiers,
            adversaries,
            attackers,
            start_wealth,
            frozen: BTreeMap::new(),
            steered: 0,
            faults: setup.faults.clone(),
        };
        w.start_wealth = (0..w.roles.len()).map(|n| w.wealth(n)).collect();
        w
    }

    /// What `node` owns on the ledger: balance, stake, unbonding, and its channels' escrow.
    fn wealth(&self, node: NodeId) -> u128 {
        let st = &self.rt.ledger.state;
        let a = self.rt.accounts[node];
        let acct = st.account(&a).map_or(0, |x| {
            x.balance.units() + x.stake.units() + x.unbonding_total().map_or(0, |u| u.units())
        });
        let escrow: u128 = st
            .channels
            .values()
            .filter(|c| c.payer == a)
            .map(|c| c.escrow().units())
            .sum();
        acct + escrow
    }

    fn schedule_faults(&mut self) {
        let mut rng = Rng::new(self.seed, "faults");
        let end = self.knobs.traffic_ms() + EPOCH_MS;
        let nodes = self.roles.len();
        for _ in 0..self.faults.crashes {
            let n = 1 + rng.below(nodes as u64 - 1) as usize;
            let at = rng.range(1_000, end);
            let dur = rng.range(1_000, 3_000);
            self.timer(at, n, Timer::Restart);
            // A crash is a restart timer's mirror: down at `at`, up at `at + dur`.
            self.crash_for(n, at, dur);
        }
        for _ in 0..self.faults.partitions {
            let a = 1 + rng.below(nodes as u64 - 1) as usize;
            let b = 1 + rng.below(nodes as u64 - 1) as usize;
            let at = rng.range(1_000, end);
            let dur = rng.range(1_000, 3_000);
            self.timer(at, a, Timer::Heal(b | (1 << 40)));
            self.timer(at + dur, a, Timer::Heal(b));
        }
        if let Some((i, epoch, dur)) = self.faults.outage {
            if let Some(&n) = self.dir.providers.get(i) {
                self.crash_for(n, epoch * EPOCH_MS + 1, dur);
            }
        }
    }

    /// Fires `timer` on `node` at virtual time `at`.
    fn timer(&mut self, at: u64, node: NodeId, timer: Timer) {
        self.rt.at(at, Ev::Timer { node, timer });
    }

    /// Takes `node` down at `at` and restarts it at `at + dur`.
    fn crash_for(&mut self, node: NodeId, at: u64, dur: u64) {
        self.timer(at, node, Timer::Heal(usize::MAX));
        self.timer(at + dur, node, Timer::Restart);
    }

    /// Runs to the end and reports.
    pub fn run(self) -> RunResult {
        self.run_traced(false)
    }

    /// Runs to the end; with `trace`, prints every ledger event and refusal to stderr.
    pub fn run_traced(mut self, trace: bool) -> RunResult {
        self.start();
        let end = self.end();
        while let Some(ev) = self.rt.pop(end) {
            self.step(ev, trace);
        }
        if trace {
            eprintln!("refused: {:?}", self.rt.rejected);
        }
        self.finish()
    }

    /// Every actor's first timers, the faults, and the first block.
    fn start(&mut self) {
        let k = self.knobs.clone();
        for p in &self.providers {
            p.start(&mut self.rt, &k);
        }
        for v in &self.verifiers {
            v.start(&mut self.rt, &k);
        }
        for i in 0..self.payers.len() {
            let (payers, rt, dir) = (&mut self.payers, &mut self.rt, &self.dir);
            payers[i].start(rt, &k, dir);
        }
        for a in &self.adversaries {
            a.start(&mut self.rt, &k);
        }
        self.schedule_faults();
        self.rt.at(BLOCK_MS, Ev::Block);
    }

    /// The virtual time the run ends at.
    fn end(&self) -> u64 {
        self.knobs.total_epochs * EPOCH_MS + 1
    }

    /// A block's first half: freezes the verifier set at an epoch's last block, and signs the
    /// block's transactions.
    fn begin_block(&mut self) -> PendingBlock {
        let height = self.rt.ledger.height + 1;
        if height.is_multiple_of(crate::runtime::EPOCH_BLOCKS) {
            // The set as it stood before the next beacon was known.
            let e = self.rt.ledger.state.epoch;
            let set = self
                .rt
                .ledger
                .state
                .verifier_set_at(e)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            self.frozen.insert(e, set);
        }
        self.rt.sign_block()
    }

    /// A block's second half: applies the transactions whose signatures `checked` accepted,
    /// checks the assignments, lets every actor that is up see the block, and schedules the
    /// next one.
    fn end_block(
        &mut self,
        block: PendingBlock,
        checked: Vec<Result<VerifiedTx, TxError>>,
        trace: bool,
    ) {
        let events = self.rt.apply_block(block, checked);
        if trace {
            let names: BTreeMap<AccountId, String> = self
                .dir
                .by_account
                .iter()
                .map(|(a, n)| (*a, self.rt.net.names[*n].clone()))
                .collect();
            for e in &events {
                let mut line = format!("{e:?}");
                for (a, n) in &names {
                    line = line.replace(&format!("{a:?}"), n);
                }
                eprintln!(
                    "t={} epoch={} {line}",
                    self.rt.now, self.rt.ledger.state.epoch
                );
            }
        }
        self.check_assignments(&events);
        for v in self.verifiers.iter_mut() {
            if self.rt.net.is_up(v.node) {
                v.on_block(&mut self.rt, &self.dir, &events);
            }
        }
        for p in self.providers.iter_mut() {
            if self.rt.net.is_up(p.node) {
                p.on_block(&mut self.rt, &self.dir, &events);
            }
        }
        for p in self.payers.iter_mut() {
            if self.rt.net.is_up(p.node) {
                p.on_block(&mut self.rt, &events);
            }
        }
        self.rt.at(self.rt.now + BLOCK_MS, Ev::Block);
    }

    fn step(&mut self, ev: Ev, trace: bool) {
        let k = &self.knobs;
        match ev {
            Ev::Block => {
                let block = self.begin_block();
                let checked = verify_batch(block.signed.clone());
                self.end_block(block, checked, trace);
            }
            Ev::TxArrive { from, body } => self.rt.arrive(from, body),
            Ev::Deliver { from, to, msg } => {
                if !self.rt.net.is_up(to) {
                    self.rt.net.dropped += 1;
                    return;
                }
                match self.roles.get(to).copied() {
                    Some(Role::Provider(i)) => self.providers[i].on_msg(&mut self.rt, k, from, msg),
                    Some(Role::Payer(i)) => self.payers[i].on_msg(&mut self.rt, from, msg),
                    Some(Role::Verifier(i)) => {
                        self.verifiers[i].on_msg(&mut self.rt, k, &self.dir, from, msg)
                    }
                    _ => {}
                }
            }
            Ev::Timer { node, timer } => self.on_timer(node, timer),
        }
    }

    fn on_timer(&mut self, node: NodeId, timer: Timer) {
        let k = &self.knobs;
        match timer {
            Timer::Restart => {
                self.rt.net.set_up(node, true);
                return;
            }
            Timer::Heal(x) if x == usize::MAX => {
                self.rt.net.set_up(node, false);
                return;
            }
            Timer::Heal(x) => {
                let cut = x & (1 << 40) != 0;
                self.rt.net.set_cut(node, x & !(1 << 40), cut);
                return;
            }
            _ => {}
        }
        if !self.rt.net.is_up(node) {
            // A crashed node's periodic work resumes after the restart.
            match timer {
                // Retried soon: a short crash must not cost the provider its root.
                Timer::CloseEpoch => self.rt.timer(node, 250, Timer::CloseEpoch),
                Timer::NextRequest => self.rt.timer(node, 1_000, Timer::NextRequest),
                Timer::Adversary(s) => self.rt.timer(node, EPOCH_MS, Timer::Adversary(s)),
                _ => {}
            }
            return;
        }
        match (self.roles.get(node).copied(), timer) {
            (Some(Role::Provider(i)), Timer::CloseEpoch) => {
                self.providers[i].close_epoch(&mut self.rt, &self.dir)
            }
            (Some(Role::Payer(i)), Timer::NextRequest) => {
                self.payers[i].next_request(&mut self.rt, k, &self.dir)
            }
            (
                Some(Role::Verifier(i)),
                Timer::AuditTimeout {
                    provider,
                    epoch,
                    index,
                    attempt,
                    confirm,
                },
            ) => self.verifiers[i].on_timeout(
                &mut self.rt,
                &self.knobs,
                &self.dir,
                (provider, epoch, index),
                attempt,
                confirm,
            ),
            (Some(Role::Adversary(i)), Timer::Adversary(s)) => {
                self.adversaries[i].on_timer(&mut self.rt, k, &self.dir, &self.providers, s)
            }
            _ => {}
        }
    }

    /// Trust rule: the verifier that audits a leaf is the one the verifier set frozen before
    /// the selecting beacon names; nobody may steer it afterwards.
    fn check_assignments(&mut self, events: &[Event]) {
        for e in events {
            if let Event::AuditCommitted {
                verifier,
                provider,
                epoch,
                index,
            } = e
            {
                let st = &self.rt.ledger.state;
                let (Some(set), Some(beacon)) =
                    (self.frozen.get(epoch), st.beacons.get(&(epoch + 1)))
                else {
                    continue;
                };
                let set: Vec<AccountId> = set.iter().filter(|v| *v != provider).copied().collect();
                if assignee(beacon, provider, *epoch, *index, &set) != Some(*verifier) {
                    self.steered += 1;
                }
            }
        }
    }

    fn finish(self) -> RunResult {
        let st = &self.rt.ledger.state;
        let mut violations = Vec::new();
        let mut slashed_nodes: BTreeMap<NodeId, u128> = BTreeMap::new();
        let mut honest_slashed = 0u64;
        let mut slashes = 0u64;
        for e in &self.rt.events {
            let hit = match e {
                Event::Slashed {
                    provider, amount, ..
                } => {
                    slashes += 1;
                    Some((*provider, amount.units()))
                }
                Event::PlantRevealed {
                    lazy: Some(v),
                    slashed,
                    ..
                } => Some((*v, slashed.units())),
                Event::OmissionSlashed {
                    provider, amount, ..
                } => {
                    slashes += 1;
                    Some((*provider, amount.units()))
                }
                Event::FalseAlarm {
                    verifier, slashed, ..
                } => Some((*verifier, slashed.units())),
                _ => None,
            };
            if let Some((who, amount)) = hit {
                if let Some(&n) = self.dir.by_account.get(&who) {
                    *slashed_nodes.entry(n).or_insert(0) += amount;
                    if self.dir.honest.contains(&n) {
                        honest_slashed += 1;
                        violations
                            .push(format!("honest {} slashed {amount}", self.rt.net.names[n]));
                    }
                }
            }
        }
        let conserved = self.rt.invariant_failures.is_empty();
        for f in &self.rt.invariant_failures {
            violations.push(format!("conservation: {f}"));
        }
        // No honest payer pays more than (tokens it counted) x (agreed price).
        let mut overcharge = 0u128;
        for p in &self.payers {
            let me = self.rt.accounts[p.node];
            for (id, c) in st.channels.iter().filter(|(_, c)| c.payer == me) {
                let counted = p.counted(id);
                if c.claimed > counted && p.kind == PayerKind::Honest {
                    overcharge += c.claimed.units() - counted.units();
                }
            }
        }
        if overcharge > 0 {
            violations.push(format!("honest payers overcharged {overcharge}"));
        }
        // Every paid answer is audit-eligible: its receipt is under a posted root, or leaving
        // it out cost the provider its slash.
        let omissions: BTreeSet<Hash32> = self
            .rt
            .events
            .iter()
            .filter_map(|e| match e {
                Event::OmissionSlashed { receipt, .. } => Some(*receipt),
                _ => None,
            })
            .collect();
        let mut missing = 0u64;
        for p in &self.payers {
            for (pn, h) in &p.paid {
                if let Some(Role::Provider(i)) = self.roles.get(*pn).copied() {
                    let account = self.rt.accounts[*pn];
                    if !eligible(&self.providers[i], st, &account, h) && !omissions.contains(h) {
                        missing += 1;
                    }
                }
            }
        }
        if missing > 0 {
            violations.push(format!("{missing} paid answers never under a posted root"));
        }
        if self.steered > 0 {
            violations.push(format!(
                "{} audits went to a verifier other than the one the frozen set names",
                self.steered
            ));
        }
        for pr in &self.providers {
            if pr.replays_served > 0 {
                violations.push(format!("{} replayed requests served", pr.replays_served));
            }
        }
        // What an honest verifier in the same seat would also have earned: bounties on leaves
        // that really were cheated, and the bonds of plants it caught.
        let cheated: BTreeSet<(AccountId, u64, u64)> = self
            .providers
            .iter()
            .flat_map(|p| {
                let a = self.rt.accounts[p.node];
                p.posted.iter().flat_map(move |(e, ls)| {
                    ls.iter()
                        .enumerate()
                        .filter(|(_, l)| l.cheated)
                        .map(move |(i, _)| (a, *e, i as u64))
                })
            })
            .collect();
        let mut earned: BTreeMap<AccountId, u128> = BTreeMap::new();
        // Refunds for a provider's fraud or omission: an honest payer in the same seat gets
        // them too, so they are no payer strategy's gain (they pay back answers that were not
        // worth their price, or were never made audit-eligible).
        let mut refunded: BTreeMap<AccountId, u128> = BTreeMap::new();
        for e in &self.rt.events {
            if let Event::Slashed { payer, refund, .. }
            | Event::OmissionSlashed { payer, refund, .. } = e
            {
                *refunded.entry(*payer).or_insert(0) += refund.units();
            }
            match e {
                Event::Slashed {
                    provider,
                    epoch,
                    index,
                    verifier,
                    bounty,
                    ..
                } if cheated.contains(&(*provider, *epoch, *index)) => {
                    *earned.entry(*verifier).or_insert(0) += bounty.units();
                }
                Event::PlantRevealed {
                    caught: Some(v), ..
                } => {
                    *earned.entry(*v).or_insert(0) += st.params.plant_bond.units();
                }
                _ => {}
            }
        }
        // Gains over honest behaviour, per attacker node.
        let mut gains: BTreeMap<String, i128> = BTreeMap::new();
        let mut cheats = 0;
        let mut audits = 0;
        for pr in &self.providers {
            cheats += pr.cheats;
        }
        for v in &self.verifiers {
            audits += v.audits_run;
        }
        for (&n, strategy) in &self.attackers {
            let delta = self.wealth(n) as i128 - self.start_wealth[n] as i128;
            let gain = match self.roles[n] {
                Role::Provider(i) => {
                    let p = &self.providers[i];
                    delta - p.owed() as i128 + micros_to_amount(p.saved_micros).units() as i128
                }
                Role::Payer(i) => {
                    let p = &self.payers[i];
                    let value: u128 = p
                        .counted_micros
                        .values()
                        .map(|m| micros_to_amount(*m).units())
                        .sum();
                    let refunds = refunded.get(&self.rt.accounts[n]).copied().unwrap_or(0);
                    delta + value as i128 - refunds as i128
                }
                Role::Verifier(i) => {
                    let v = &self.verifiers[i];
                    let legit = earned.get(&self.rt.accounts[n]).copied().unwrap_or(0);
                    delta - v.fees as i128 - legit as i128
                        + (v.audits_skipped as i128) * self.knobs.audit_cost as i128
                }
                _ => delta,
            };
            *gains.entry(strategy.clone()).or_insert(0) += gain;
        }
        let attacker_gain = gains.values().sum();
        let saving: i128 = self
            .providers
            .iter()
            .filter(|p| self.attackers.contains_key(&p.node))
            .map(|p| micros_to_amount(p.saved_micros).units() as i128)
            .sum();
        let mut h = blake3::Hasher::new_derive_key("agora/sim/run/v1");
        h.update(self.rt.ledger.tip.as_bytes());
        h.update(st.hash().as_bytes());
        h.update(&self.rt.net.sent.to_le_bytes());
        h.update(&self.rt.net.dropped.to_le_bytes());
        for (k, v) in &self.rt.rejected {
            h.update(k.as_bytes());
            h.update(&v.to_le_bytes());
        }
        RunResult {
            seed: self.seed,
            hash: Hash32::from_bytes(*h.finalize().as_bytes()).to_string(),
            attacker_gain,
            gains,
            honest_slashed,
            overcharge,
            conserved,
            violations,
            answers: self.payers.iter().map(|p| p.answers).sum(),
            cheats,
            slashes,
            audits,
            saving,
        }
    }
}

fn kebab<T: serde::Serialize>(k: &T) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
