//! Adversaries that are not a provider, payer or verifier: the holder of the planter key
//! that plants on honest providers' leaves, the provider that steers audits to its own sybil
//! verifiers, and the spam gossiper.

use crate::net::NodeId;
use crate::provider::Provider;
use crate::rng::Rng;
use crate::runtime::{Claim, Msg, Runtime, Timer, EPOCH_MS};
use crate::world::{Dir, Knobs};
use agora_core::{AccountId, Amount, Hash32};
use agora_ledger::audit::{assignee, selected};
use agora_ledger::{audit_commitment, leaf_key, plant_commitment, TxBody};
use std::collections::BTreeSet;

/// What an adversary node does.
pub enum Adversary {
    /// Holds the planter key and plants on every leaf an honest provider may post, then opens
    /// the plants an honest verifier passed.
    PlanterAbuse {
        /// Its node.
        node: NodeId,
        /// Open plants: (provider, epoch, index, salt).
        plants: Vec<(AccountId, u64, u64, Hash32)>,
        /// Randomness.
        rng: Rng,
    },
    /// Registers and deregisters its sybil verifiers after the selecting beacon is known, so
    /// that its provider's cheated leaves land on them, then passes them.
    Sybil {
        /// Its node (the controller; its sybils are `sybils`).
        node: NodeId,
        /// The provider it steers for (an index into the world's providers).
        provider: usize,
        /// The sybil verifier nodes.
        sybils: Vec<NodeId>,
        /// Commits to reveal: (sybil node, provider, epoch, index, salt).
        commits: Vec<(NodeId, AccountId, u64, u64, Hash32, bool)>,
        /// Randomness.
        rng: Rng,
    },
    /// Floods verifiers with unauthenticated confirm requests and payers with false outcomes.
    Spam {
        /// Its node.
        node: NodeId,
        /// Randomness.
        rng: Rng,
        /// Messages sent.
        sent: u64,
    },
}

/// Plants per honest provider per epoch (indices 0..PLANTS).
const PLANTS: u64 = 8;

impl Adversary {
    /// Its node.
    pub fn node(&self) -> NodeId {
        match self {
            Adversary::PlanterAbuse { node, .. }
            | Adversary::Sybil { node, .. }
            | Adversary::Spam { node, .. } => *node,
        }
    }

    /// Sets its first timers (and stakes the sybils).
    pub fn start(&self, rt: &mut Runtime, k: &Knobs) {
        match self {
            Adversary::PlanterAbuse { node, .. } => {
                rt.timer(*node, EPOCH_MS - 900, Timer::Adversary(0));
            }
            Adversary::Sybil { node, sybils, .. } => {
                for &s in sybils {
                    rt.submit(
                        s,
                        TxBody::Stake {
                            amount: Amount::new(k.verifier_stake),
                        },
                    );
                }
                rt.timer(*node, EPOCH_MS + 50, Timer::Adversary(0));
            }
            Adversary::Spam { node, .. } => rt.timer(*node, 1_000, Timer::Adversary(0)),
        }
    }

    /// A timer fired.
    pub fn on_timer(
        &mut self,
        rt: &mut Runtime,
        k: &Knobs,
        dir: &Dir,
        providers: &[Provider],
        step: u32,
    ) {
        let chain = rt.ledger.state.chain_id;
        let epoch = rt.ledger.state.epoch;
        match self {
            Adversary::PlanterAbuse { node, plants, rng } => {
                rt.timer(*node, EPOCH_MS, Timer::Adversary(0));
                let w = rt.ledger.state.params.audit_window_epochs;
                let mut keep = Vec::new();
                for (p, e, i, salt) in plants.drain(..) {
                    if epoch < e + 3 + w {
                        keep.push((p, e, i, salt));
                        continue;
                    }
                    let passed = rt
                        .ledger
                        .state
                        .audits
                        .get(&leaf_key(&p, e, i))
                        .is_some_and(|a| a.revealed == Some(true));
                    if passed {
                        rt.submit(
                            *node,
                            TxBody::RevealPlant {
                                provider: p,
                                epoch: e,
                                index: i,
                                salt,
                                confirmation: None,
                            },
                        );
                    }
                }
                *plants = keep;
                if rt.now < k.traffic_ms() + EPOCH_MS {
                    for &pn in &dir.providers {
                        let p = rt.accounts[pn];
                        for i in 0..PLANTS {
                            let salt = Hash32::of(&rng.bytes32());
                            let commitment = plant_commitment(chain, &p, epoch, i, &salt);
                            rt.submit(*node, TxBody::PlantFraud { commitment });
                            plants.push((p, epoch, i, salt));
                        }
                    }
                }
            }
            Adversary::Sybil {
                node,
                provider,
                sybils,
                commits,
                rng,
            } => {
                let Some(prov) = providers.get(*provider) else {
                    return;
                };
                let pacct = rt.accounts[prov.node];
                if step == 0 {
                    rt.timer(*node, EPOCH_MS, Timer::Adversary(0));
                    rt.timer(
                        *node,
                        2 * crate::runtime::BLOCK_MS + 200,
                        Timer::Adversary(1),
                    );
                    // Reveal last epoch's commits: the sybils judged nothing and name a
                    // receipt of their own per leaf, the most credit a pass earns.
                    for (s, p, e, i, salt, passed) in commits.drain(..) {
                        rt.submit(
                            s,
                            TxBody::RevealAudit {
                                provider: p,
                                epoch: e,
                                index: i,
                                passed,
                                receipt: crate::verifier::unjudged_receipt(&(p, e, i)),
                                salt,
                            },
                        );
                    }
                    steer(rt, k, prov, pacct, sybils, epoch);
                } else {
                    // The registrations landed: commit "passed" on every leaf of its provider
                    // now assigned to a sybil.
                    let Some(root_epoch) = epoch.checked_sub(1) else {
                        return;
                    };
                    let n = rt
                        .ledger
                        .state
                        .roots
                        .get(&(pacct, root_epoch))
                        .map_or(0, |r| r.receipts);
                    for i in 0..n {
                        let Some(v) = rt.ledger.state.leaf_assignee(&pacct, root_epoch, i) else {
                            continue;
                        };
                        let Some(&s) = sybils.iter().find(|&&s| rt.accounts[s] == v) else {
                            continue;
                        };
                        let salt = Hash32::of(&rng.bytes32());
                        let c = audit_commitment(chain, &v, &pacct, root_epoch, i, true, &salt);
                        rt.submit(
                            s,
                            TxBody::CommitAudit {
                                provider: pacct,
                                epoch: root_epoch,
                                index: i,
                                commitment: c,
                            },
                        );
                        commits.push((s, pacct, root_epoch, i, salt, true));
                    }
                }
            }
            Adversary::Spam { node, rng, sent } => {
                if rt.now < k.traffic_ms() + 2 * EPOCH_MS {
                    rt.timer(*node, 200, Timer::Adversary(0));
                }
                let pick = |rng: &mut Rng, v: &[NodeId]| v[rng.below(v.len() as u64) as usize];
                if !dir.verifiers.is_empty() && !dir.providers.is_empty() {
                    let to = pick(rng, &dir.verifiers);
                    let p = rt.accounts[pick(rng, &dir.providers)];
                    let msg = Msg::ConfirmReq {
                        provider: p,
                        epoch: epoch.saturating_sub(1),
                        index: rng.below(8),
                        claim: Claim::Withheld,
                        material: None,
                    };
                    rt.send(*node, to, msg);
                    *sent += 1;
                }
                if !dir.payers.is_empty() && !dir.providers.is_empty() {
                    let to = pick(rng, &dir.payers);
                    let p = rt.accounts[pick(rng, &dir.providers)];
                    rt.send(
                        *node,
                        to,
                        Msg::Gossip {
                            provider: p,
                            passed: false,
                        },
                    );
                    *sent += 1;
                }
            }
        }
    }
}

/// Chooses which sybils are registered for the coming commits, knowing the beacon: the
/// subset that lands most of the provider's cheated leaves on sybils.
fn steer(
    rt: &mut Runtime,
    k: &Knobs,
    prov: &Provider,
    pacct: AccountId,
    sybils: &[NodeId],
    epoch: u64,
) {
    let Some(root_epoch) = epoch.checked_sub(1) else {
        return;
    };
    let st = &rt.ledger.state;
    let (Some(root), Some(beacon), Some(leaves)) = (
        st.roots.get(&(pacct, root_epoch)),
        st.beacons.get(&epoch),
        prov.posted.get(&root_epoch),
    ) else {
        return;
    };
    let sybil_accts: Vec<AccountId> = sybils.iter().map(|&s| rt.accounts[s]).collect();
    let honest: BTreeSet<AccountId> = st
        .verifiers
        .iter()
        .filter(|v| !sybil_accts.contains(v) && **v != pacct)
        .copied()
        .collect();
    let cheated: Vec<u64> = leaves
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            l.cheated && selected(beacon, &pacct, root_epoch, *i as u64, root.audit_ppm)
        })
        .map(|(i, _)| i as u64)
        .collect();
    let n = sybils.len().min(8);
    let mut best = (0usize, 0u32);
    for mask in 0u32..(1 << n) {
        let mut set = honest.clone();
        for (b, a) in sybil_accts.iter().enumerate().take(n) {
            if mask & (1 << b) != 0 {
                set.insert(*a);
            }
        }
        let set: Vec<AccountId> = set.into_iter().collect();
        let hits = cheated
            .iter()
            .filter(|&&i| {
                assignee(beacon, &pacct, root_epoch, i, &set)
                    .is_some_and(|v| sybil_accts.contains(&v))
            })
            .count();
        if hits > best.0 {
            best = (hits, mask);
        }
    }
    let min = st.params.min_verifier_stake;
    let mut txs = Vec::new();
    for (b, &s) in sybils.iter().enumerate().take(n) {
        let acct = rt.accounts[s];
        let registered = st.verifiers.contains(&acct);
        let want = best.1 & (1 << b) != 0;
        let stake = st.account(&acct).map_or(Amount::ZERO, |a| a.stake);
        if want && !registered {
            let need = min.checked_sub(stake).unwrap_or(Amount::ZERO);
            txs.push((s, TxBody::RegisterVerifier { stake: need }));
        } else if !want && registered && !stake.is_zero() {
            txs.push((
                s,
                TxBody::Unstake {
                    amount: Amount::new(1),
                },
            ));
        }
    }
    let _ = k;
    for (s, tx) in txs {
        rt.submit(s, tx);
    }
}
