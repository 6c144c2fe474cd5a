//! Verifiers: the honest one (audits the leaves the ledger's plan assigns it, commits,
//! reveals, asks a second verifier to confirm a failure, confirms others' failures from
//! material it fetched itself against the ledger's root), and its byzantine variants: lazy
//! (passes without auditing), always-fail (fails without auditing), framer (accuses honest
//! providers and co-signs any accusation), and sybil (a provider's own verifier: passes all).

use crate::model::{self, Audit};
use crate::net::NodeId;
use crate::rng::Rng;
use crate::runtime::{Claim, Msg, Runtime, Timer};
use crate::world::{Dir, Knobs};
use agora_core::{merkle, AccountId, Amount, Hash32};
use agora_ledger::{audit_commitment, leaf_key, Event, TxBody};
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
    salt: Hash32,
    claim: Claim,
    revealed: bool,
}

struct Confirm {
    requester: NodeId,
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
                    salt: c.salt,
                });
            }
        }
        for r in reveals {
            rt.submit(self.node, r);
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
                    VerifierKind::Lazy | VerifierKind::Sybil => {
                        self.audits_skipped += 1;
                        self.commit(rt, chain, id, true, Claim::Fraud);
                    }
                    VerifierKind::AlwaysFail => {
                        self.audits_skipped += 1;
                        self.commit(rt, chain, id, false, Claim::Withheld);
                    }
                    VerifierKind::Framer if honest_target => {
                        self.audits_skipped += 1;
                        self.commit(rt, chain, id, false, Claim::Withheld);
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

    fn commit(&mut self, rt: &mut Runtime, chain: u64, id: LeafId, passed: bool, claim: Claim) {
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
                salt,
                claim,
                revealed: false,
            },
        );
    }

    /// Material checked against the root the ledger holds, never one a peer names.
    fn judge(rt: &Runtime, k: &Knobs, id: LeafId, m: &Material, proof: &[Hash32]) -> Option<Audit> {
        let root = rt.ledger.state.roots.get(&(id.0, id.1))?;
        let leaf = m.receipt.hash();
        if m.receipt.receipt.provider != id.0 || !merkle::verify(&root.root, &leaf, id.2, proof) {
            return None;
        }
        Some(model::audit(m, k.max_tokens))
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
            } => {
                let id = (rt.accounts[from], epoch, index);
                let Some(outcome) = Self::judge(rt, k, id, &material, &proof) else {
                    return;
                };
                if self.fetching.remove(&id).is_some() {
                    self.audits_run += 1;
                    match outcome {
                        Audit::Pass => self.commit(rt, chain, id, true, Claim::Fraud),
                        Audit::Fail => self.commit(rt, chain, id, false, Claim::Fraud),
                        // The provider's own signed receipt under its own root, with material
                        // that does not match it: as good as withheld.
                        Audit::CannotJudge => self.commit(rt, chain, id, false, Claim::Withheld),
                    }
                }
                if let Some(c) = self.confirming.remove(&id) {
                    self.audits_run += 1;
                    let fault = match outcome {
                        Audit::Pass => return,
                        Audit::Fail => Fault::Fraud {
                            receipt: material.receipt.clone(),
                            proof,
                        },
                        Audit::CannotJudge => Fault::Withheld,
                    };
                    self.cosign(rt, c.requester, id, fault);
                }
            }
            Msg::ConfirmReq {
                provider,
                epoch,
                index,
                claim,
            } => {
                let id = (provider, epoch, index);
                // Only a failure its requester revealed on the ledger is worth a re-check.
                let key = leaf_key(&provider, epoch, index);
                let revealed_failed =
                    rt.ledger.state.audits.get(&key).is_some_and(|a| {
                        a.verifier == rt.accounts[from] && a.revealed == Some(false)
                    });
                if !revealed_failed || rt.ledger.state.judged.contains(&key) {
                    return;
                }
                match self.kind {
                    VerifierKind::Framer => {
                        let fault = match claim {
                            Claim::Withheld | Claim::Fraud => Fault::Withheld,
                        };
                        self.cosign(rt, from, id, fault);
                    }
                    VerifierKind::Honest => {
                        self.confirming.insert(id, Confirm { requester: from });
                        self.fetch(rt, dir, id, 0, true);
                    }
                    _ => {}
                }
            }
            Msg::Confirmed { verdict, sig } => {
                rt.submit(
                    self.node,
                    TxBody::AuditVerdict {
                        verdict: *verdict,
                        confirmer: rt.accounts[from],
                        confirmer_sig: sig,
                    },
                );
            }
            _ => {}
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
        let me = self.me(rt);
        let others: Vec<NodeId> = rt
            .ledger
            .state
            .verifiers
            .iter()
            .filter(|v| **v != me && **v != id.0)
            .filter_map(|v| dir.by_account.get(v).copied())
            .collect();
        if others.is_empty() {
            return;
        }
        let to = others[self.rng.below(others.len() as u64) as usize];
        let claim = c.claim.clone();
        rt.send(
            self.node,
            to,
            Msg::ConfirmReq {
                provider: id.0,
                epoch: id.1,
                index: id.2,
                claim,
            },
        );
    }

    /// A fetch timed out: try again, then judge it withheld.
    pub fn on_timeout(
        &mut self,
        rt: &mut Runtime,
        dir: &Dir,
        id: LeafId,
        attempt: u32,
        confirm: bool,
    ) {
        let chain = rt.ledger.state.chain_id;
        let pending = if confirm {
            self.confirming.contains_key(&id)
        } else {
            self.fetching.get(&id) == Some(&attempt)
        };
        if !pending {
            return;
        }
        if attempt + 1 < FETCH_ATTEMPTS {
            self.fetch(rt, dir, id, attempt + 1, confirm);
            return;
        }
        if confirm {
            // Today's confirmer: material it could not get is confirmed as withheld (the
            // provider had no on-ledger chance to answer; issue 13 item 3).
            if let Some(c) = self.confirming.remove(&id) {
                self.cosign(rt, c.requester, id, Fault::Withheld);
            }
        } else {
            self.fetching.remove(&id);
            self.commit(rt, chain, id, false, Claim::Withheld);
        }
    }
}
