//! Judging one leaf without I/O: whether the provider's answer holds together under the
//! ledger's root, whether the receipt is one this provider may be audited on, the audit
//! itself, and the second verifier's decision to co-sign a verdict.
//!
//! Three outcomes, never two: an answer passes, fails (the provider's fault, with evidence a
//! second verifier can re-check), or cannot be judged here (a model this verifier lacks, an
//! audit that could not run, a provider that cannot be reached). "Cannot judge" is never
//! counted against the provider.

use std::collections::HashMap;
use std::sync::Arc;

use agora_core::{merkle, AccountId, Hash32};
use agora_ledger::Fault;
use agora_model::{LoadedModel, SamplingParams};
use agora_net::protocol::{Material, NextLeaf, RequestId, SignedReceipt};
use agora_verify::{audit, Answer, Fingerprint, Thresholds};

/// The largest fingerprint a receipt may carry, in bytes.
const MAX_FINGERPRINT_BYTES: usize = 1 << 16;

/// The result of judging one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The answer is honest.
    Passed,
    /// The answer is the provider's fault; why.
    Failed(String),
    /// This verifier cannot tell (no such model here, the audit could not run); why.
    CannotJudge(String),
}

/// What a provider answered to an audit request.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The material, its Merkle path and the next leaf.
    Material {
        /// The material.
        material: Box<Material>,
        /// Its Merkle path.
        proof: Vec<Hash32>,
        /// The next leaf, for the uniqueness check.
        next: Option<Box<NextLeaf>>,
    },
    /// The provider said it will not or cannot hand the material over.
    Refused(String),
    /// No answer that says anything about the provider: unreachable, timed out, or it
    /// denied the request (busy, not yet able to check who asks).
    Unreachable(String),
}

/// A posted root as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedRoot {
    /// The root.
    pub root: Hash32,
    /// Leaves under it.
    pub receipts: u64,
    /// A late root (`PostLateRoot`, every leaf audited): like the ledger's inclusion
    /// challenge, it may hold receipts of epochs before the one it is for. A root audited in
    /// full only because its provider is on probation is not one: its passes count toward
    /// leaving probation, so an old receipt re-posted under it would count again.
    pub full_audit: bool,
}

/// The Merkle tree a posted root is over: what says whether a receipt is leaf `index` of a
/// root over `leaves` receipts by a path. Each settlement has its own (BLAKE3 over the
/// receipts' hashes on the ledger, keccak over their `ReceiptLeaf`s on an EVM chain), so a
/// verifier checks paths in the tree of the settlement the root was posted on.
pub trait ReceiptTree {
    /// Whether `receipt` is leaf `index` of `root` (a root over `leaves` receipts) by `proof`.
    fn holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> bool;
    /// The leaf this tree holds for `receipt`: what a reveal names as the receipt it judged.
    fn leaf(&self, receipt: &SignedReceipt) -> Hash32;
}

/// The ledger's tree: BLAKE3 over the signed receipts' hashes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blake3Tree;

impl ReceiptTree for Blake3Tree {
    fn holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> bool {
        index < leaves && merkle::verify(root, &receipt.hash(), index, proof)
    }

    fn leaf(&self, receipt: &SignedReceipt) -> Hash32 {
        receipt.hash()
    }
}

/// The root a plan on the ledger describes, with the receipt epochs it may hold: older ones
/// only under a late root, as the ledger's inclusion challenge has it.
pub fn posted_root(plan: &agora_ledger::AuditPlan) -> PostedRoot {
    PostedRoot {
        root: plan.root,
        receipts: plan.receipts,
        full_audit: plan.late && plan.audit_ppm == agora_ledger::FULL_AUDIT_PPM,
    }
}

/// The audit itself: replays an answer with the model its receipt names. The real one is
/// [`ModelAuditor`]; the deterministic simulation (`agora-sim`) plugs in its modelled
/// generation, so every rule around the replay is the same code in both.
pub trait Auditor {
    /// Whether it can replay answers of `model`.
    fn audits(&self, model: &Hash32) -> bool;
    /// Judges `material`, which holds together, names a model it [`audits`](Auditor::audits),
    /// and whose fingerprint parsed as `print`.
    fn audit(&self, material: &Material, print: &Fingerprint) -> Judgement;
}

/// The real audit: `agora_verify`'s replay on the models this verifier loaded.
pub struct ModelAuditor {
    /// The models it can audit, by ModelId.
    pub models: HashMap<Hash32, Arc<LoadedModel>>,
    /// Where honest ends and fraud begins.
    pub thresholds: Thresholds,
}

impl Auditor for ModelAuditor {
    fn audits(&self, model: &Hash32) -> bool {
        self.models.contains_key(model)
    }

    fn audit(&self, material: &Material, print: &Fingerprint) -> Judgement {
        let r = &material.receipt.receipt;
        let Some(model) = self.models.get(&r.model) else {
            return Judgement::CannotJudge(format!("model {} is not loaded", r.model));
        };
        let answer = Answer {
            model: agora_model::ModelId(*r.model.as_bytes()),
            prompt: &material.prompt,
            resumed: &material.resumed,
            output: &material.output,
            claimed_tokens: r.output_tokens as usize,
            sampling: SamplingParams {
                temperature: f64::from(r.sampling.temperature),
                top_k: 0,
                top_p: f64::from(r.sampling.top_p),
                seed: r.sampling.seed,
                constraint: r.sampling.constraint.clone(),
                logprobs: None,
            },
            fingerprint: print,
            // The receipt does not say how the answer ended, so no end-of-sequence claim is
            // checked (an empty output still implies one).
            ended_at_eos: false,
        };
        match audit(model, &answer, &self.thresholds) {
            // No verdict (another model, the auditor's own model failing): never a failure.
            Err(e) => Judgement::CannotJudge(format!("no verdict: {e}")),
            Ok(report) if report.passed => Judgement::Passed,
            Ok(report) => Judgement::Failed(report.reasons.join("; ")),
        }
    }
}

/// What one verifier judges with: its chain and its audit.
pub struct Judge<A = ModelAuditor> {
    /// The chain.
    pub chain_id: u64,
    /// The audit.
    pub auditor: A,
}

/// How one leaf's audit came out for the verifier it was assigned to.
#[derive(Debug)]
pub enum LeafOutcome {
    /// Passed: committed as passed, revealed naming the receipt judged (on probation a
    /// receipt earns its provider a clean audit once, whatever roots hold it).
    Passed {
        /// The audited receipt, as the leaf the settlement's tree holds for it.
        receipt: Hash32,
    },
    /// Failed, with the material and path the provider handed over (a fraud).
    Failed(String, Box<(Material, Vec<Hash32>)>),
    /// No material that holds together came (refused, unreachable, or not what the root
    /// holds): nothing is committed; the material is demanded on the ledger instead, where
    /// only an unanswered demand is a fault.
    Demand(String),
    /// Not judged here: nothing is committed.
    Skip(String),
}

/// The assigned verifier's first look at what the provider answered for leaf `index` of
/// `posted`: the material and its path when they hold together under the root, or the
/// outcome without an audit (a demand when nothing that holds together came, a failure
/// when the leaves are out of order).
pub fn take_material(
    posted: &PostedRoot,
    index: u64,
    fetched: Fetched,
) -> Result<(Material, Vec<Hash32>), LeafOutcome> {
    take_material_in(&Blake3Tree, posted, index, fetched)
}

/// [`take_material`] with paths checked in `tree` (the settlement's own).
pub fn take_material_in(
    tree: &(impl ReceiptTree + ?Sized),
    posted: &PostedRoot,
    index: u64,
    fetched: Fetched,
) -> Result<(Material, Vec<Hash32>), LeafOutcome> {
    let (material, proof, next) = match fetched {
        Fetched::Material {
            material,
            proof,
            next,
        } => (*material, proof, next),
        Fetched::Refused(why) => return Err(LeafOutcome::Demand(format!("refused: {why}"))),
        // Unreachable is not a failure: a false alarm costs stake, and the provider gets its
        // chance to answer on the ledger.
        Fetched::Unreachable(why) => return Err(LeafOutcome::Demand(why)),
    };
    if let Err(why) = holds_together_in(tree, posted, index, &material, &proof) {
        // Not what the provider committed to: no evidence a second verifier could check.
        return Err(LeafOutcome::Demand(format!(
            "the material does not hold together: {why}"
        )));
    }
    if let Err(why) = check_order_in(tree, posted, index, &material.receipt, next.as_deref()) {
        return Err(LeafOutcome::Failed(why, Box::new((material, proof))));
    }
    Ok((material, proof))
}

/// The assigned verifier's outcome once the audit judged `material` (a pass names its
/// receipt's leaf in `tree`, the settlement's own): "cannot judge" is not committed at all.
pub fn leaf_outcome(
    tree: &(impl ReceiptTree + ?Sized),
    judged: Judgement,
    material: Material,
    proof: Vec<Hash32>,
) -> LeafOutcome {
    match judged {
        Judgement::Passed => LeafOutcome::Passed {
            receipt: tree.leaf(&material.receipt),
        },
        Judgement::Failed(why) => LeafOutcome::Failed(why, Box::new((material, proof))),
        Judgement::CannotJudge(why) => LeafOutcome::Skip(why),
    }
}

/// The receipts a verifier has audited, by (provider, request id), and the leaf each was
/// under: one met again under another leaf is not counted as another clean audit.
#[derive(Debug, Default)]
pub struct Seen(HashMap<(AccountId, RequestId), (u64, u64)>);

impl Seen {
    /// `Some(skip)` when `material`'s receipt was already audited under another leaf;
    /// otherwise records it under leaf `index` of `provider`'s root of `epoch`.
    pub fn elsewhere(
        &mut self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        material: &Material,
    ) -> Option<LeafOutcome> {
        let id = material.receipt.receipt.request_id;
        match self.0.get(&(provider, id)) {
            Some(&(e, i)) if (e, i) != (epoch, index) => Some(LeafOutcome::Skip(format!(
                "a receipt already audited under leaf {i} of epoch {e}"
            ))),
            _ => {
                self.0.insert((provider, id), (epoch, index));
                None
            }
        }
    }
}

/// Whether material is what the provider committed to under `root` at leaf `index`: the
/// receipt's hash is that leaf, its signature is the one it names, and the token ids and
/// fingerprint hash to what the receipt says.
pub fn holds_together(
    root: &Hash32,
    index: u64,
    material: &Material,
    proof: &[Hash32],
) -> Result<(), String> {
    if !merkle::verify(root, &material.receipt.hash(), index, proof) {
        return Err("the receipt is not under the posted root".into());
    }
    material_matches(material)
}

/// [`holds_together`] under `posted` (its root and leaf count as settlement recorded them),
/// the path checked in `tree`.
pub fn holds_together_in(
    tree: &(impl ReceiptTree + ?Sized),
    posted: &PostedRoot,
    index: u64,
    material: &Material,
    proof: &[Hash32],
) -> Result<(), String> {
    if !tree.holds(
        &posted.root,
        posted.receipts,
        index,
        &material.receipt,
        proof,
    ) {
        return Err("the receipt is not under the posted root".into());
    }
    material_matches(material)
}

fn material_matches(material: &Material) -> Result<(), String> {
    if material.receipt.verify().is_err() {
        return Err("the receipt's signature is bad".into());
    }
    material.matches_receipt().map_err(str::to_string)
}

/// Leaves are in strictly increasing request id order, so no receipt appears twice under
/// one root: checks leaf `index` against the next one (the provider must show it unless
/// `index` is the last leaf).
pub fn check_order(
    posted: &PostedRoot,
    index: u64,
    this: &SignedReceipt,
    next: Option<&NextLeaf>,
) -> Result<(), String> {
    check_order_in(&Blake3Tree, posted, index, this, next)
}

/// [`check_order`] with the next leaf's path checked in `tree`.
pub fn check_order_in(
    tree: &(impl ReceiptTree + ?Sized),
    posted: &PostedRoot,
    index: u64,
    this: &SignedReceipt,
    next: Option<&NextLeaf>,
) -> Result<(), String> {
    let last = index.saturating_add(1) >= posted.receipts;
    match next {
        None if last => Ok(()),
        None => Err("the provider did not show the next leaf".into()),
        Some(_) if last => Ok(()),
        Some(n) => {
            if !tree.holds(
                &posted.root,
                posted.receipts,
                index + 1,
                &n.receipt,
                &n.proof,
            ) {
                return Err("the next leaf is not under the posted root".into());
            }
            if n.receipt.receipt.request_id <= this.receipt.request_id {
                return Err(format!(
                    "leaves {index} and {} are not in increasing request id order (a receipt \
                     appears twice, or leaves are out of order)",
                    index + 1
                ));
            }
            Ok(())
        }
    }
}

impl<A: Auditor> Judge<A> {
    /// Judges material that holds together under `provider`'s root of `epoch`, a root
    /// sampled at the floor.
    pub fn judge(&self, provider: &AccountId, epoch: u64, material: &Material) -> Judgement {
        self.judge_under(provider, epoch, false, material)
    }

    /// Judges material that holds together under `provider`'s root of `epoch`, a late root
    /// (every leaf audited) when `full_audit`.
    pub fn judge_under(
        &self,
        provider: &AccountId,
        epoch: u64,
        full_audit: bool,
        material: &Material,
    ) -> Judgement {
        let r = &material.receipt.receipt;
        if r.provider != *provider {
            return Judgement::Failed(format!(
                "the receipt under {provider}'s root is {}'s",
                r.provider
            ));
        }
        if r.chain_id != self.chain_id {
            return Judgement::Failed(format!("the receipt is for chain {}", r.chain_id));
        }
        // A receipt of epoch r belongs under the root of r or r + 1, or of a later late root
        // (what an inclusion challenge accepts: a provider back from an outage posts its
        // overdue receipts so; its passes earn no probation credit): one named for another
        // epoch could sit under more roots and count again.
        let own = r.epoch == epoch || r.epoch.checked_add(1) == Some(epoch);
        let overdue = full_audit && r.epoch < epoch;
        if !(own || overdue) {
            return Judgement::Failed(format!(
                "the receipt names epoch {} but is under the root of epoch {epoch}",
                r.epoch
            ));
        }
        if material.receipt.verify().is_err() {
            return Judgement::Failed("the receipt's signature is bad".into());
        }
        if let Err(e) = material.matches_receipt() {
            return Judgement::Failed(e.into());
        }
        if !self.auditor.audits(&r.model) {
            return Judgement::CannotJudge(format!(
                "model {} is not one this verifier audits",
                r.model
            ));
        }
        let Some(print) = Fingerprint::from_bytes(&material.fingerprint, MAX_FINGERPRINT_BYTES)
        else {
            return Judgement::Failed("the fingerprint does not parse".into());
        };
        self.auditor.audit(material, &print)
    }

    /// The second verifier's decision on a verdict about leaf `index` of `posted` (read from
    /// the ledger, never from the requester): `Ok(why it fails)` to co-sign, `Err(why not)`.
    /// `fetched` is what the provider answered this verifier; `hint` is the requester's
    /// material, used only when the provider could not be reached and only if it holds
    /// together under the ledger's root.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        provider: &AccountId,
        epoch: u64,
        index: u64,
        fault: &Fault,
        posted: &PostedRoot,
        fetched: Fetched,
        hint: Option<&Material>,
    ) -> Result<String, String> {
        self.decide_in(
            &Blake3Tree,
            provider,
            epoch,
            index,
            fault,
            posted,
            fetched,
            hint,
        )
    }

    /// [`Judge::decide`] with every path checked in `tree` (the settlement's own).
    #[allow(clippy::too_many_arguments)]
    pub fn decide_in(
        &self,
        tree: &(impl ReceiptTree + ?Sized),
        provider: &AccountId,
        epoch: u64,
        index: u64,
        fault: &Fault,
        posted: &PostedRoot,
        fetched: Fetched,
        hint: Option<&Material>,
    ) -> Result<String, String> {
        if index >= posted.receipts {
            return Err("the leaf is past the root's receipt count".into());
        }
        // What the provider itself showed, if it showed anything that holds together.
        let (material, next) = match fetched {
            Fetched::Material {
                material,
                proof,
                next,
            } => match holds_together_in(tree, posted, index, &material, &proof) {
                Ok(()) => (Some(material), Some(next)),
                // The provider answered with something that is not what it committed to:
                // the committed material is withheld from this verifier too.
                Err(why) => return withheld(fault, &format!("its answer to me: {why}")),
            },
            Fetched::Refused(why) => return withheld(fault, &format!("it refused me too: {why}")),
            Fetched::Unreachable(why) => {
                if matches!(fault, Fault::Withheld) {
                    return Err(format!(
                        "cannot judge: the provider did not answer me ({why})"
                    ));
                }
                (None, None)
            }
        };
        let Fault::Fraud { receipt, proof } = fault else {
            return Err("the provider handed the material over to me".into());
        };
        let material: Material = match material {
            Some(m) => *m,
            None => {
                let Some(h) = hint else {
                    return Err("cannot judge: the provider is unreachable and no material came with the request".into());
                };
                holds_together_in(tree, posted, index, h, proof)
                    .map_err(|why| format!("the evidence does not hold together: {why}"))?;
                h.clone()
            }
        };
        // The ledger refunds from the verdict's receipt: it must be the leaf's own.
        if *receipt != material.receipt {
            return Err("the verdict names another receipt than the leaf's".into());
        }
        if let Some(next) = next {
            if let Err(why) =
                check_order_in(tree, posted, index, &material.receipt, next.as_deref())
            {
                return Ok(why);
            }
        }
        match self.judge_under(provider, epoch, posted.full_audit, &material) {
            Judgement::Failed(why) => Ok(why),
            Judgement::Passed => Err("the answer passes my audit".into()),
            Judgement::CannotJudge(why) => Err(format!("cannot judge: {why}")),
        }
    }
}

fn withheld(fault: &Fault, why: &str) -> Result<String, String> {
    match fault {
        Fault::Withheld => Ok(format!("the material is withheld: {why}")),
        Fault::Fraud { .. } => Err(format!(
            "the evidence does not match the fault (a fraud, but {why})"
        )),
    }
}
