//! Verifiers: the honest one (audits the leaves the ledger's plan assigns it, commits,
//! reveals, asks a second verifier to confirm a failure, confirms others' failures from
//! material it fetched itself against the ledger's root), and its byzantine variants: lazy
//! (passes without auditing), always-fail (fails without auditing), framer (accuses honest
//! providers and co-signs any accusation), and sybil (a provider's own verifier: passes all).
//!
//! The honest verifier's decisions are the production verifier's ([`agora_verifier::judge`]):
//! what it makes of the material a provider sends for an assigned leaf (`take_material`,
//! the receipt seen under another leaf, `Judge::judge`, `leaf_outcome`) and whether it
//! co-signs another's failure (`Judge::decide`), with the audit's replay modelled
//! ([`model::Replay`]). Scheduling (fetch retries, commit and reveal timing, whom to ask)
//! and the ledger-fact checks before a re-check are modelled here.

use crate::model;
use crate::net::NodeId;
use crate::rng::Rng;
use crate::runtime::{Claim, Msg, Runtime, Timer};
use crate::world::{Dir, Knobs};
use agora_core::{AccountId, Amount, Hash32};
use agora_ledger::audit::Windows;
use agora_ledger::tx::sign_plant_confirmation;
use agora_ledger::{audit_commitment, leaf_key, Event, TxBody};
use agora_verifier::judge::{self, Fetched, LeafOutcome, PostedRoot, Seen};
use agora_wire::protocol::Material;
use agora_wire::settle::{Fault, Verdict};
use std::collections::BTreeMap;

/// How a verifier behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifierKind {
    /// Audits every assigned leaf and confirms only what it re-checked.
    Honest,
    /// Reveals "passed" without auditing; co-signs nothing.
    Lazy,
    /// Reveals "failed" without auditing.
    AlwaysFail,
    /// Claims the material of honest providers' leaves was withheld, and co-signs any claim.
    Framer,
    /// Controlled by a provider: passes everything assigned to it, co-signs nothing.
    Sybil,
}

impl VerifierKind {
    /// Whether this kind departs from the protocol.
    pub fn byzantine(self) -> bool {
        self != VerifierKind::Honest
    }
}

type LeafId = (AccountId, u64, u64);

struct Commit {
    passed: bool,
    /// The judged receipt's ledger leaf (zero for a failure; one of its own per leaf when
    /// nothing was judged).
    receipt: Hash32,
    salt: Hash32,
    claim: Claim,
    revealed: bool,
}

struct Confirm {
    requester: NodeId,
    /// The requester's material and path: evidence used only if the provider cannot be
    /// reached, and only if it holds together under the ledger's root.
    hint: Option<(Material, Vec<Hash32>)>,
}

/// A co-signed verdict waiting for its window.
struct Held {
    verdict: Verdict,
    confirmer: AccountId,
    sig: agora_core::Signature,
}

/// A verifier node.
pub struct Verifier {
    /// Its node.
    pub node: NodeId,
    /// Its behaviour.
    pub kind: VerifierKind,
    rng: Rng,
    fetching: BTreeMap<LeafId, u32>,
    commits: BTreeMap<LeafId, Commit>,
    confirming: BTreeMap<LeafId, Confirm>,
    material: BTreeMap<LeafId, (Material, Vec<Hash32>)>,
    demanded: BTreeMap<LeafId, bool>,
    held: Vec<Held>,
    seen: Seen,
    /// Audits it ran.
    pub audits_run: u64,
    /// Assigned leaves it judged without running the audit.
    pub audits_skipped: u64,
    /// Fees the ledger paid it.
    pub fees: u128,
}

/// Attempts to fetch material before giving up on it.
pub const FETCH_ATTEMPTS: u32 = 5;
/// Ms between attempts.
pub const FETCH_TIMEOUT_MS: u64 = 1_500;

impl Verifier {
    /// A verifier at `node`.
    pub fn new(node: NodeId, kind: VerifierKind, seed: u64) -> Verifier {
        Verifier {
            node,
            kind,
            rng: Rng::new(seed, &format!("verifier/{node}")),
            fetching: BTreeMap::new(),
            commits: BTreeMap::new(),
            confirming: BTreeMap::new(),
            material: BTreeMap::new(),
            demanded: BTreeMap::new(),
            held: Vec::new(),
            seen: Seen::default(),
            audits_run: 0,
            audits_skipped: 0,
            fees: 0,
        }
    }

    /// Registers with its stake.
    pub fn start(&self, rt: &mut Runtime, k: &Knobs) {
        if self.kind != VerifierKind::Sybil {
            rt.submit(
                self.node,
                TxBody::RegisterVerifier {
                    stake: Amount::new(k.verifier_stake),
                },
            );
        }
    }

    fn me(&self, rt: &Runtime) -> AccountId {
        rt.accounts[self.node]
    }

    /// Events of a new block.
    pub fn on_block(&mut self, rt: &mut Runtime, dir: &Dir, events: &[Event]) {
        let me = self.me(rt);
        for e in events {
            match e {
                Event::EpochAdvanced { epoch, .. } => self.on_epoch(rt, dir, *epoch),
                Event::AuditRevealed {
                    verifier,
                    provider,
                    epoch,
                    index,
                    passed,
                    fee,
                } if *verifier == me => {
                    self.fees += fee.units();
                    if !passed {
                        self.ask_confirm(rt, dir, (*provider, *epoch, *index));
                    }
                }
                _ => {}
            }
        }
    }

    fn on_epoch(&mut self, rt: &mut Runtime, dir: &Dir, epoch: u64) {
        let me = self.me(rt);
        let chain = rt.ledger.state.chain_id;
        // Reveal what was committed in an earlier epoch.
        let mut reveals = Vec::new();
        for (id, c) in self.commits.iter_mut() {
            let key = leaf_key(&id.0, id.1, id.2);
            let committed = rt.ledger.state.audits.get(&key);
            if !c.revealed
                && committed.is_some_and(|a| a.verifier == me && a.committed_epoch < epoch)
            {
                c.revealed = true;
                reveals.push(TxBody::RevealAudit {
                    provider: id.0,
                    epoch: id.1,
                    index: id.2,
                    passed: c.passed,
                    receipt: c.receipt,
                    salt: c.salt,
                });
            }
        }
        for r in reveals {
            rt.submit(self.node, r);
        }
        // Verdicts land in their window, after the plants are open.
        let params = rt.ledger.state.params.clone();
        let mut keep = Vec::new();
        for h in std::mem::take(&mut self.held) {
            match Windows::of(&params, h.verdict.epoch) {
                Ok(w) if epoch >= w.verdict.0 && epoch <= w.verdict.1 => rt.submit(
                    self.node,
                    TxBody::AuditVerdict {
                        verdict: h.verdict,
                        confirmer: h.confirmer,
                        confirmer_sig: h.sig,
                    },
                ),
                Ok(w) if epoch < w.verdict.0 => keep.push(h),
                _ => {}
            }
        }
        self.held = keep;
        // A demand left unanswered past its deadline: a withheld-material fault to confirm.
        let due: Vec<LeafId> = self
            .demanded
            .iter()
            .filter(|(_, asked)| !**asked)
            .map(|(id, _)| *id)
            .filter(|id| {
                rt.ledger
                    .state
                    .demands
                    .get(&leaf_key(&id.0, id.1, id.2))
                    .is_some_and(|d| d.answered.is_none() && epoch > d.due_epoch)
            })
            .collect();
        for id in due {
            self.demanded.insert(id, true);
            self.send_confirm(rt, dir, id, Claim::Withheld);
        }
        // A failure nobody confirmed yet: ask another verifier, while verdicts may still land.
        let me = self.me(rt);
        let retry: Vec<LeafId> = self
            .commits
            .iter()
            .filter(|(id, c)| {
                let key = leaf_key(&id.0, id.1, id.2);
                !c.passed
                    && c.revealed
                    && !rt.ledger.state.judged.contains(&key)
                    && rt
                        .ledger
                        .state
                        .audits
                        .get(&key)
                        .is_some_and(|a| a.verifier == me && a.revealed == Some(false))
                    && !self
                        .held
                        .iter()
                        .any(|h| (h.verdict.provider, h.verdict.epoch, h.verdict.index) == **id)
                    && Windows::of(&params, id.1).is_ok_and(|w| epoch < w.verdict.1)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in retry {
            self.ask_confirm_all(rt, dir, id);
        }
        // Audit the leaves of last epoch's roots the ledger assigns to it.
        let Some(root_epoch) = epoch.checked_sub(1) else {
            return;
        };
        let providers: Vec<AccountId> = rt
            .ledger
            .state
            .roots
            .keys()
            .filter(|(_, e)| *e == root_epoch)
            .map(|(p, _)| *p)
            .collect();
        for p in providers {
            let Some(plan) = rt.ledger.state.audit_plan(&p, root_epoch) else {
                continue;
            };
            for (index, v) in plan.leaves {
                if v != me {
                    continue;
                }
                let id = (p, root_epoch, index);
                let honest_target = dir.honest_provider(&p);
                match self.kind {
                    // Nothing judged: they name a receipt of their own per leaf, the most
                    // credit a pass earns.
                    VerifierKind::Lazy | VerifierKind::Sybil => {
                        self.audits_skipped += 1;
                        let receipt = unjudged_receipt(&id);
                        self.commit(rt, chain, id, true, receipt, Claim::Fraud);
                    }
                    VerifierKind::AlwaysFail => {
                        self.audits_skipped += 1;
                        self.commit(rt, chain, id, false, Hash32::ZERO, Claim::Fraud);
                    }
                    VerifierKind::Framer if honest_target => {
                        // Accuse, and demand the material on the ledger hoping the provider
                        // cannot answer in time.
                        self.audits_skipped += 1;
                        self.commit(rt, chain, id, false, Hash32::ZERO, Claim::Withheld);
                        self.submit_demand(rt, id);
                    }
                    _ => self.fetch(rt, dir, id, 0, false),
                }
            }
        }
    }

    fn fetch(&mut self, rt: &mut Runtime, dir: &Dir, id: LeafId, attempt: u32, confirm: bool) {
        let Some(&pnode) = dir.by_account.get(&id.0) else {
            return;
        };
        if !confirm {
            self.fetching.insert(id, attempt);
        }
        rt.send(
            self.node,
            pnode,
            Msg::AuditReq {
                epoch: id.1,
                index: id.2,
            },
        );
        rt.timer(
            self.node,
            FETCH_TIMEOUT_MS,
            Timer::AuditTimeout {
                provider: id.0,
                epoch: id.1,
                index: id.2,
                attempt,
                confirm,
            },
        );
    }

    fn commit(
        &mut self,
        rt: &mut Runtime,
        chain: u64,
        id: LeafId,
        passed: bool,
        receipt: Hash32,
        claim: Claim,
    ) {
        if self.commits.contains_key(&id) {
            return;
        }
        let me = self.me(rt);
        let salt = Hash32::of(&self.rng.bytes32());
        let commitment = audit_commitment(chain, &me, &id.0, id.1, id.2, passed, &salt);
        rt.submit(
            self.node,
            TxBody::CommitAudit {
                provider: id.0,
                epoch: id.1,
                index: id.2,
                commitment,
            },
        );
        self.commits.insert(
            id,
            Commit {
                passed,
                receipt,
                salt,
                claim,
                revealed: false,
            },
        );
    }

    /// A message arrived.
    pub fn on_msg(&mut self, rt: &mut Runtime, k: &Knobs, dir: &Dir, from: NodeId, msg: Msg) {
        let chain = rt.ledger.state.chain_id;
        match msg {
            Msg::Material {
                epoch,
                index,
                material,
                proof,
                next,
            } => {
                let id = (rt.accounts[from], epoch, index);
                let Some(posted) = posted_root(rt, id) else {
                    return;
                };
                let fetched = || Fetched::Material {
                    material: material.clone(),
                    proof: proof.clone(),
                    next: next.clone(),
                };
                if self.fetching.remove(&id).is_some() {
                    self.assess(rt, k, id, &posted, fetched());
                }
                if let Some(c) = self.confirming.remove(&id) {
                    self.recheck(rt, k, id, &posted, c, fetched());
                }
            }
            Msg::PlantConfirmReq {
                epoch,
                index,
                material,
            } => {
                let id = (rt.accounts[from], epoch, index);
                let Some(posted) = posted_root(rt, id) else {
                    return;
                };
                let (m, proof) = *material;
                let fault = Fault::Fraud {
                    receipt: m.receipt.clone(),
                    proof,
                };
                // The canary's material is evidence, judged against the ledger's root.
                let fetched = Fetched::Unreachable("the provider sent the material itself".into());
                let fails = model::judge(chain, k.max_tokens)
                    .decide(&id.0, epoch, index, &fault, &posted, fetched, Some(&m))
                    .is_ok();
                if self.kind == VerifierKind::Honest && fails {
                    self.audits_run += 1;
                    let sig =
                        sign_plant_confirmation(&rt.keys[self.node], chain, &id.0, epoch, index);
                    rt.send(self.node, from, Msg::PlantConfirmed { epoch, index, sig });
                }
            }
            Msg::ConfirmReq {
                provider,
                epoch,
                index,
                claim,
                material,
            } => {
                let id = (provider, epoch, index);
                let key = leaf_key(&provider, epoch, index);
                let requester = rt.accounts[from];
                let st = &rt.ledger.state;
                if st.judged.contains(&key) {
                    return;
                }
                if self.kind == VerifierKind::Framer {
                    let fault = match (claim, material) {
                        (Claim::Fraud, Some(m)) => Fault::Fraud {
                            receipt: m.0.receipt.clone(),
                            proof: m.1.clone(),
                        },
                        _ => Fault::Withheld,
                    };
                    self.cosign(rt, from, id, fault);
                    return;
                }
                if self.kind != VerifierKind::Honest {
                    return;
                }
                match claim {
                    // Only what the ledger shows: a demand by the requester, unanswered, due.
                    Claim::Withheld => {
                        let unanswered = st.demands.get(&key).is_some_and(|d| {
                            d.verifier == requester
                                && d.answered.is_none()
                                && st.epoch > d.due_epoch
                        });
                        if unanswered {
                            self.cosign(rt, from, id, Fault::Withheld);
                        }
                    }
                    Claim::Fraud => {
                        // Only a failure its requester revealed on the ledger is worth a re-check.
                        let revealed_failed = st
                            .audits
                            .get(&key)
                            .is_some_and(|a| a.verifier == requester && a.revealed == Some(false));
                        if !revealed_failed {
                            return;
                        }
                        let hint = material.map(|m| *m);
                        self.confirming.insert(
                            id,
                            Confirm {
                                requester: from,
                                hint,
                            },
                        );
                        self.fetch(rt, dir, id, 0, true);
                    }
                }
            }
            Msg::Confirmed { verdict, sig } => {
                let dup = self.held.iter().any(|h| {
                    (h.verdict.provider, h.verdict.epoch, h.verdict.index)
                        == (verdict.provider, verdict.epoch, verdict.index)
                });
                if !dup {
                    let open = Windows::of(&rt.ledger.state.params, verdict.epoch).is_ok_and(|w| {
                        (w.verdict.0..=w.verdict.1).contains(&rt.ledger.state.epoch)
                    });
                    let held = Held {
                        verdict: *verdict,
                        confirmer: rt.accounts[from],
                        sig,
                    };
                    if open {
                        rt.submit(
                            self.node,
                            TxBody::AuditVerdict {
                                verdict: held.verdict.clone(),
                                confirmer: held.confirmer,
                                confirmer_sig: held.sig,
                            },
                        );
                        // Kept so a duplicate confirmation is not submitted twice.
                        self.held.push(Held {
                            verdict: Verdict {
                                epoch: u64::MAX,
                                ..held.verdict
                            },
                            ..held
                        });
                    } else {
                        self.held.push(held);
                    }
                }
            }
            _ => {}
        }
    }

    /// The production verifier's decision on an assigned leaf from what the provider sent.
    fn assess(&mut self, rt: &mut Runtime, k: &Knobs, id: LeafId, posted: &PostedRoot, f: Fetched) {
        let chain = rt.ledger.state.chain_id;
        let outcome = match judge::take_material(posted, id.2, f) {
            Err(outcome) => outcome,
            Ok((m, proof)) => match self.seen.elsewhere(id.0, id.1, id.2, &m) {
                Some(skip) => skip,
                None => {
                    self.audits_run += 1;
                    let judged = model::judge(chain, k.max_tokens).judge_under(
                        &id.0,
                        id.1,
                        posted.full_audit,
                        &m,
                    );
                    judge::leaf_outcome(&judge::Blake3Tree, judged, m, proof)
                }
            },
        };
        match outcome {
            LeafOutcome::Passed { receipt } => {
                self.commit(rt, chain, id, true, receipt, Claim::Fraud)
            }
            LeafOutcome::Failed(_, evidence) => {
                self.material.insert(id, *evidence);
                self.commit(rt, chain, id, false, Hash32::ZERO, Claim::Fraud)
            }
            // Nothing that holds together came: demand it on the ledger.
            LeafOutcome::Demand(_) => self.demand(rt, id),
            LeafOutcome::Skip(_) => {}
        }
    }

    /// The production verifier's re-check of another's failure: co-signs only what its own
    /// audit of the provider's material (or, the provider unreachable, the requester's
    /// evidence under the ledger's root) fails.
    fn recheck(
        &mut self,
        rt: &mut Runtime,
        k: &Knobs,
        id: LeafId,
        posted: &PostedRoot,
        c: Confirm,
        fetched: Fetched,
    ) {
        // The verdict names the requester's evidence, or the leaf as the provider showed it.
        let fault = match (&c.hint, &fetched) {
            (Some((m, proof)), _) => Fault::Fraud {
                receipt: m.receipt.clone(),
                proof: proof.clone(),
            },
            (
                None,
                Fetched::Material {
                    material, proof, ..
                },
            ) => Fault::Fraud {
                receipt: material.receipt.clone(),
                proof: proof.clone(),
            },
            (None, _) => return,
        };
        if matches!(fetched, Fetched::Material { .. }) {
            self.audits_run += 1;
        }
        let hint = c.hint.as_ref().map(|(m, _)| m);
        let chain = rt.ledger.state.chain_id;
        let decided = model::judge(chain, k.max_tokens)
            .decide(&id.0, id.1, id.2, &fault, posted, fetched, hint);
        if decided.is_ok() {
            self.cosign(rt, c.requester, id, fault);
        }
    }

    fn cosign(&self, rt: &mut Runtime, requester: NodeId, id: LeafId, fault: Fault) {
        let verdict = Verdict {
            chain_id: rt.ledger.state.chain_id,
            provider: id.0,
            epoch: id.1,
            index: id.2,
            fault,
        };
        let sig = verdict.sign(&rt.keys[self.node]);
        rt.send(
            self.node,
            requester,
            Msg::Confirmed {
                verdict: Box::new(verdict),
                sig,
            },
        );
    }

    fn ask_confirm(&mut self, rt: &mut Runtime, dir: &Dir, id: LeafId) {
        let Some(c) = self.commits.get(&id) else {
            return;
        };
        let claim = c.claim.clone();
        self.send_confirm(rt, dir, id, claim);
    }

    /// Asks every other verifier at once (a silent one cannot make the failure expire).
    fn ask_confirm_all(&mut self, rt: &mut Runtime, dir: &Dir, id: LeafId) {
        let Some(c) = self.commits.get(&id) else {
            return;
        };
        let claim = c.claim.clone();
        let others = self.confirmers(rt, dir, id);
        let material = self.material.get(&id).cloned().map(Box::new);
        for to in others {
            rt.send(
                self.node,
                to,
                Msg::ConfirmReq {
                    provider: id.0,
                    epoch: id.1,
                    index: id.2,
                    claim: claim.clone(),
                    material: material.clone(),
                },
            );
        }
    }

    /// The nodes of the registered verifiers that may confirm a claim on `id`: all but this
    /// verifier and the audited provider.
    fn confirmers(&self, rt: &Runtime, dir: &Dir, id: LeafId) -> Vec<NodeId> {
        let me = self.me(rt);
        rt.ledger
            .state
            .verifiers
            .iter()
            .filter(|v| **v != me && **v != id.0)
            .filter_map(|v| dir.by_account.get(v).copied())
            .collect()
    }

    fn send_confirm(&mut self, rt: &mut Runtime, dir: &Dir, id: LeafId, claim: Claim) {
        let others = self.confirmers(rt, dir, id);
        if others.is_empty() {
            return;
        }
        let to = others[self.rng.below(others.len() as u64) as usize];
        let material = self.material.get(&id).cloned().map(Box::new);
        rt.send(
            self.node,
            to,
            Msg::ConfirmReq {
                provider: id.0,
                epoch: id.1,
                index: id.2,
                claim,
                material,
            },
        );
    }

    /// Asks for the material on the ledger (in the commit window) and keeps trying to fetch.
    fn demand(&mut self, rt: &mut Runtime, id: LeafId) {
        if self.demanded.contains_key(&id) {
            return;
        }
        let in_window = Windows::of(&rt.ledger.state.params, id.1)
            .is_ok_and(|w| rt.ledger.state.epoch <= w.commit.1);
        if in_window {
            self.submit_demand(rt, id);
        }
    }

    /// Puts a material demand for `id` on the ledger and remembers it, unanswered.
    fn submit_demand(&mut self, rt: &mut Runtime, id: LeafId) {
        rt.submit(
            self.node,
            TxBody::DemandMaterial {
                provider: id.0,
                epoch: id.1,
                index: id.2,
            },
        );
        self.demanded.insert(id, false);
    }

    /// A fetch timed out: try again; after the last try, demand the material on the ledger
    /// and keep fetching while the commit window is open.
    pub fn on_timeout(
        &mut self,
        rt: &mut Runtime,
        k: &Knobs,
        dir: &Dir,
        id: LeafId,
        attempt: u32,
        confirm: bool,
    ) {
        let pending = if confirm {
            self.confirming.contains_key(&id)
        } else {
            self.fetching.get(&id) == Some(&attempt)
        };
        if !pending {
            return;
        }
        if confirm {
            if attempt + 1 < FETCH_ATTEMPTS {
                self.fetch(rt, dir, id, attempt + 1, true);
            } else if let Some(c) = self.confirming.remove(&id) {
                // The provider is unreachable: only the requester's evidence is left.
                if let Some(posted) = posted_root(rt, id) {
                    let down = Fetched::Unreachable("no answer".into());
                    self.recheck(rt, k, id, &posted, c, down);
                }
            }
            return;
        }
        if attempt + 1 >= FETCH_ATTEMPTS {
            self.demand(rt, id);
        }
        let open = Windows::of(&rt.ledger.state.params, id.1)
            .is_ok_and(|w| rt.ledger.state.epoch <= w.commit.1);
        if open {
            self.fetch(rt, dir, id, attempt + 1, false);
        } else {
            self.fetching.remove(&id);
        }
    }
}

/// The root the ledger holds for `id`'s provider and epoch, never one a peer names.
fn posted_root(rt: &Runtime, id: LeafId) -> Option<PostedRoot> {
    let r = rt.ledger.state.roots.get(&(id.0, id.1))?;
    Some(PostedRoot {
        root: r.root,
        receipts: r.receipts,
        // As `agora_verifier::judge::posted_root`: only a late root holds older receipts.
        full_audit: r.late && r.audit_ppm == agora_ledger::FULL_AUDIT_PPM,
    })
}

/// What a verifier that judged nothing names as the receipt of leaf `id`: one of its own per
/// leaf, so each of its passes claims the most probation credit a pass can earn.
pub(crate) fn unjudged_receipt(id: &LeafId) -> Hash32 {
    agora_core::codec::hash(b"agora/sim/unjudged-receipt", id)
}
