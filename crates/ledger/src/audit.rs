//! Audit sampling on the ledger: which leaves of a receipt root are audited and by whom, the
//! commit-then-reveal of each outcome (with its fee), and planted fake frauds that catch
//! verifiers who approve without auditing.
//!
//! Timeline of a root posted in epoch `e`, with `w = audit_window_epochs` and
//! `x = escalation_epochs` (see [`Windows`]):
//! - the beacon of epoch `e + 1` (unknown when the root was posted) selects leaves with the
//!   root's probability and assigns each to one verifier;
//! - the assigned verifier commits in epochs `e + 1 ..= e + 1 + w`;
//! - it reveals in a later epoch, up to `e + 2 + w`;
//! - in epoch `e + 3 + w` a canary may open its plant: every reveal is in by then, so no
//!   verifier can change its answer after learning which leaf was planted;
//! - verdicts land in epochs `e + 4 + w ..= e + 3 + w + x`, after the plants are open.
//!
//! Stake unbonded in epoch `e` is released at `e + unbonding_epochs >= e + 4 + w + x`
//! (checked at genesis), so it is still there for the last verdict.

use crate::error::TxError;
use crate::state::{leaf_key, Alarm, Demand, Event, Journal, LeafAudit, Plant, State};
use crate::tx::{audit_commitment, plant_commitment};
use agora_core::{codec, AccountId, Amount, Hash32};
use agora_wire::protocol::SignedReceipt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

const SELECT_DOMAIN: &[u8] = b"agora/ledger/audit-select/v1";
const ASSIGN_DOMAIN: &[u8] = b"agora/ledger/audit-assign/v1";

/// Whether leaf `index` of `provider`'s root for `epoch` is audited under `beacon`, with
/// probability `ppm` parts per million.
pub fn selected(beacon: &Hash32, provider: &AccountId, epoch: u64, index: u64, ppm: u32) -> bool {
    let h = codec::hash(SELECT_DOMAIN, &(beacon, provider, epoch, index));
    let mut word = [0u8; 8];
    word.copy_from_slice(&h.as_bytes()[..8]);
    // Exact integer comparison: u64 draw < ppm / 1e6 of the range.
    u128::from(u64::from_le_bytes(word)) * 1_000_000 < u128::from(ppm) << 64
}

/// The verifier, among `verifiers` (sorted, the provider excluded), that audits the leaf.
pub fn assignee(
    beacon: &Hash32,
    provider: &AccountId,
    epoch: u64,
    index: u64,
    verifiers: &[AccountId],
) -> Option<AccountId> {
    if verifiers.is_empty() {
        return None;
    }
    let h = codec::hash(ASSIGN_DOMAIN, &(beacon, provider, epoch, index));
    let mut word = [0u8; 8];
    word.copy_from_slice(&h.as_bytes()[..8]);
    let at = u64::from_le_bytes(word) % verifiers.len() as u64;
    verifiers.get(usize::try_from(at).ok()?).copied()
}

/// The most receipts one root may hold: every leaf of every root is considered for audit.
pub const MAX_PLANNED_LEAVES: u64 = 1 << 20;

/// Which leaves of a root are audited, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPlan {
    /// The provider.
    pub provider: AccountId,
    /// The root's epoch.
    pub epoch: u64,
    /// The root.
    pub root: Hash32,
    /// Leaves under it.
    pub receipts: u64,
    /// The selecting beacon (epoch + 1's).
    pub beacon: Hash32,
    /// Audit probability, parts per million.
    pub audit_ppm: u32,
    /// The selected leaves and their assigned verifiers.
    pub leaves: Vec<(u64, AccountId)>,
    /// A late root (`PostLateRoot`): the only kind that may hold receipts of epochs before
    /// the previous one.
    #[serde(default)]
    pub late: bool,
}

/// The inputs of an audit plan, copied out of the state.
#[derive(Debug, Clone)]
pub struct PlanParts {
    provider: AccountId,
    epoch: u64,
    root: crate::state::ReceiptRoot,
    beacon: Hash32,
    auditors: Vec<AccountId>,
}

impl PlanParts {
    /// The selected leaves and their verifiers. Roots hold at most [`MAX_PLANNED_LEAVES`]
    /// receipts, so every leaf is considered.
    pub fn plan(&self) -> AuditPlan {
        let (provider, epoch, beacon) = (&self.provider, self.epoch, &self.beacon);
        let leaves = (0..self.root.receipts.min(MAX_PLANNED_LEAVES))
            .filter(|&i| selected(beacon, provider, epoch, i, self.root.audit_ppm))
            .filter_map(|i| Some((i, assignee(beacon, provider, epoch, i, &self.auditors)?)))
            .collect();
        AuditPlan {
            provider: *provider,
            epoch,
            root: self.root.root,
            receipts: self.root.receipts,
            beacon: *beacon,
            audit_ppm: self.root.audit_ppm,
            leaves,
            late: self.root.late,
        }
    }
}

/// The epochs in which each step of the audit of a root is open (inclusive ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// Commitments (and material demands) by the assigned verifier: `e+1 ..= e+1+w`.
    pub commit: (u64, u64),
    /// The last epoch a reveal is accepted: `e+2+w`.
    pub reveal_end: u64,
    /// The one epoch a canary opens its plant: `e+3+w`.
    pub plant: u64,
    /// Verdicts: `e+4+w ..= e+3+w+x`.
    pub verdict: (u64, u64),
}

impl Windows {
    /// The windows of a root posted in `epoch` under `params`.
    pub fn of(params: &crate::Params, epoch: u64) -> Result<Windows, TxError> {
        let w = params.audit_window_epochs;
        let x = params.escalation_epochs;
        let at = |n: u64, extra: u64| {
            epoch
                .checked_add(n)
                .and_then(|v| v.checked_add(extra))
                .ok_or(TxError::Overflow {
                    what: "audit window",
                })
        };
        Ok(Windows {
            commit: (at(1, 0)?, at(1, w)?),
            reveal_end: at(2, w)?,
            plant: at(3, w)?,
            verdict: (
                at(4, w)?,
                at(
                    3,
                    w.checked_add(x).ok_or(TxError::Overflow {
                        what: "audit window",
                    })?,
                )?,
            ),
        })
    }
}

impl State {
    /// The verifier set that assigns the audits of roots posted in `epoch`: the one in effect
    /// in that epoch, frozen at its start (before the root, and an epoch before its beacon).
    pub fn verifier_set_at(&self, epoch: u64) -> Option<&BTreeSet<AccountId>> {
        self.verifier_sets
            .range(..=epoch)
            .next_back()
            .map(|(_, s)| s)
    }

    /// The verifiers that may audit `provider`'s root of `epoch`: the frozen set of that epoch
    /// but the provider itself, sorted.
    pub fn auditors_for(&self, provider: &AccountId, epoch: u64) -> Vec<AccountId> {
        self.verifier_set_at(epoch)
            .map(|s| s.iter().filter(|v| *v != provider).copied().collect())
            .unwrap_or_default()
    }

    /// The assigned verifier of a leaf, if the leaf is selected (and its beacon exists).
    pub fn leaf_assignee(&self, provider: &AccountId, epoch: u64, index: u64) -> Option<AccountId> {
        let root = self.roots.get(&(*provider, epoch))?;
        let beacon = self.beacons.get(&epoch.checked_add(1)?)?;
        if index >= root.receipts || !selected(beacon, provider, epoch, index, root.audit_ppm) {
            return None;
        }
        assignee(
            beacon,
            provider,
            epoch,
            index,
            &self.auditors_for(provider, epoch),
        )
    }

    /// The audit plan of a root, once its selecting beacon exists.
    pub fn audit_plan(&self, provider: &AccountId, epoch: u64) -> Option<AuditPlan> {
        self.audit_plan_parts(provider, epoch).map(|p| p.plan())
    }

    /// What [`State::audit_plan`] reads from the state, so the selection (up to
    /// [`MAX_PLANNED_LEAVES`] hashes) can run without holding the state.
    pub fn audit_plan_parts(&self, provider: &AccountId, epoch: u64) -> Option<PlanParts> {
        let root = self.roots.get(&(*provider, epoch))?;
        let beacon = *self.beacons.get(&epoch.checked_add(1)?)?;
        Some(PlanParts {
            provider: *provider,
            epoch,
            root: root.clone(),
            beacon,
            auditors: self.auditors_for(provider, epoch),
        })
    }

    /// The key of `provider`'s leaf `index` of `epoch`, if `from` is its assigned verifier:
    /// only that verifier may commit to or demand the leaf.
    fn assigned_leaf_key(
        &self,
        from: AccountId,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<Hash32, TxError> {
        if self.leaf_assignee(&provider, epoch, index) != Some(from) {
            return Err(TxError::NotAssigned {
                provider,
                epoch,
                index,
                verifier: from,
            });
        }
        Ok(leaf_key(&provider, epoch, index))
    }

    /// The last epoch in which a demanded or challenged provider may still answer.
    pub(crate) fn answer_due_epoch(&self) -> Result<u64, TxError> {
        self.epoch
            .checked_add(self.params.answer_epochs)
            .ok_or(TxError::Overflow {
                what: "answer window",
            })
    }

    pub(crate) fn window(&self, what: &'static str, from: u64, to: u64) -> Result<(), TxError> {
        if self.epoch < from || self.epoch > to {
            return Err(TxError::AuditWindow {
                what,
                epoch: self.epoch,
                from,
                to,
            });
        }
        Ok(())
    }

    fn root_epoch_plus(epoch: u64, n: u64) -> Result<u64, TxError> {
        epoch.checked_add(n).ok_or(TxError::Overflow {
            what: "audit window",
        })
    }

    pub(crate) fn commit_audit(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        provider: AccountId,
        epoch: u64,
        index: u64,
        commitment: Hash32,
    ) -> Result<Vec<Event>, TxError> {
        let win = Windows::of(&self.params, epoch)?;
        self.window("the commitment", win.commit.0, win.commit.1)?;
        let key = self.assigned_leaf_key(from, provider, epoch, index)?;
        if self.audits.contains_key(&key) {
            return Err(TxError::AlreadyCommitted {
                provider,
                epoch,
                index,
            });
        }
        j.audits.push((key, None));
        self.audits.insert(
            key,
            LeafAudit {
                verifier: from,
                commitment,
                committed_epoch: self.epoch,
                revealed: None,
            },
        );
        Ok(vec![Event::AuditCommitted {
            verifier: from,
            provider,
            epoch,
            index,
        }])
    }

    /// A pass under a root that is not late: while the provider is on probation it earns a
    /// clean audit once per receipt, so one receipt under several roots (its epoch's and the
    /// next, audited by different verifiers) counts once. Past probation a pass only counts
    /// on (`clean_audits` keeps counting, as it always did), and the credited set is gone.
    fn credit_clean_audit(&mut self, j: &mut Journal, provider: AccountId, receipt: &Hash32) {
        let jobs = self.params.probation_jobs;
        let done = self.accounts.get(&provider).map_or(0, |a| a.clean_audits);
        if done < jobs {
            let credited = self.probation_credited.get(&provider);
            if credited.is_some_and(|c| c.contains(receipt)) {
                return;
            }
            j.probation_credited.push((provider, credited.cloned()));
            if done.saturating_add(1) >= jobs {
                // Leaving probation: nothing needs remembering any more.
                self.probation_credited.remove(&provider);
            } else {
                self.probation_credited
                    .entry(provider)
                    .or_default()
                    .insert(*receipt);
            }
        }
        let p = Self::acct_mut(&mut self.accounts, j, provider);
        p.clean_audits = p.clean_audits.saturating_add(1);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reveal_audit(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        provider: AccountId,
        epoch: u64,
        index: u64,
        passed: bool,
        receipt: &Hash32,
        salt: &Hash32,
    ) -> Result<Vec<Event>, TxError> {
        let key = leaf_key(&provider, epoch, index);
        let audit = self.audits.get(&key).ok_or(TxError::BadReveal)?.clone();
        let expected =
            audit_commitment(self.chain_id, &from, &provider, epoch, index, passed, salt);
        if audit.verifier != from || audit.revealed.is_some() || audit.commitment != expected {
            return Err(TxError::BadReveal);
        }
        self.window(
            "the reveal",
            Self::root_epoch_plus(audit.committed_epoch, 1)?,
            Windows::of(&self.params, epoch)?.reveal_end,
        )?;
        j.audits.push((key, Some(audit.clone())));
        self.audits.insert(
            key,
            LeafAudit {
                revealed: Some(passed),
                ..audit
            },
        );
        let fee = if passed {
            // A late root may re-post receipts already audited: its passes earn no probation
            // credit.
            let late = self.roots.get(&(provider, epoch)).is_some_and(|r| r.late);
            if !late {
                self.credit_clean_audit(j, provider, receipt);
            }
            self.pay_fee(j, from)?
        } else {
            // A failure is paid only once a verdict or a plant confirms it; unconfirmed by the
            // end of the verdict window, it costs the verifier (`expire_alarms`).
            let due = Self::alarm_due(&self.params, epoch)?;
            j.alarms.push(((due, key), None));
            self.alarms.insert(
                (due, key),
                Alarm {
                    verifier: from,
                    provider,
                    epoch,
                    index,
                },
            );
            Amount::ZERO
        };
        Ok(vec![Event::AuditRevealed {
            verifier: from,
            provider,
            epoch,
            index,
            passed,
            fee,
        }])
    }

    /// Pays the audit fee (as much of it as the pool holds) to `to`.
    fn pay_fee(&mut self, j: &mut Journal, to: AccountId) -> Result<Amount, TxError> {
        let fee = self.params.audit_fee.min(self.audit_pool);
        let pool = self
            .audit_pool
            .checked_sub(fee)
            .map_err(|_| TxError::Overflow { what: "audit pool" })?;
        self.set_audit_pool(j, pool);
        self.credit(j, to, fee)?;
        Ok(fee)
    }

    /// The epoch at whose start an unconfirmed failure of a root of `epoch` costs its verifier:
    /// the first after the verdict window.
    fn alarm_due(params: &crate::Params, epoch: u64) -> Result<u64, TxError> {
        Windows::of(params, epoch)?
            .verdict
            .1
            .checked_add(1)
            .ok_or(TxError::Overflow {
                what: "audit window",
            })
    }

    /// A failure revealed on the leaf is confirmed: its verifier is paid its fee.
    pub(crate) fn confirm_alarm(
        &mut self,
        j: &mut Journal,
        epoch: u64,
        key: Hash32,
    ) -> Result<Vec<Event>, TxError> {
        let at = (Self::alarm_due(&self.params, epoch)?, key);
        let Some(alarm) = self.alarms.remove(&at) else {
            return Ok(Vec::new());
        };
        j.alarms.push((at, Some(alarm.clone())));
        let fee = self.pay_fee(j, alarm.verifier)?;
        Ok(vec![Event::AlarmConfirmed {
            verifier: alarm.verifier,
            fee,
        }])
    }

    /// At the start of epoch `now`: every failure whose verdict window closed unconfirmed
    /// burns `false_alarm_bps` of its verifier's stake.
    pub(crate) fn expire_alarms(
        &mut self,
        j: &mut Journal,
        now: u64,
    ) -> Result<Vec<Event>, TxError> {
        let due: Vec<((u64, Hash32), Alarm)> = self
            .alarms
            .range(..=(now, Hash32::from_bytes([0xff; 32])))
            .map(|(k, a)| (*k, a.clone()))
            .collect();
        let mut events = Vec::with_capacity(due.len());
        for (at, alarm) in due {
            self.alarms.remove(&at);
            j.alarms.push((at, Some(alarm.clone())));
            let slashed = self.slash_stake(j, alarm.verifier, self.params.false_alarm_bps)?;
            self.burn(j, slashed)?;
            events.push(Event::FalseAlarm {
                verifier: alarm.verifier,
                provider: alarm.provider,
                epoch: alarm.epoch,
                index: alarm.index,
                slashed,
            });
        }
        Ok(events)
    }

    pub(crate) fn demand(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<Vec<Event>, TxError> {
        let win = Windows::of(&self.params, epoch)?;
        self.window("the material demand", win.commit.0, win.commit.1)?;
        let key = self.assigned_leaf_key(from, provider, epoch, index)?;
        if self.demands.contains_key(&key) {
            return Err(TxError::Demand {
                reason: "already demanded",
            });
        }
        let due_epoch = self.answer_due_epoch()?;
        j.demands.push((key, None));
        self.demands.insert(
            key,
            Demand {
                verifier: from,
                due_epoch,
                answered: None,
            },
        );
        Ok(vec![Event::MaterialDemanded {
            verifier: from,
            provider,
            epoch,
            index,
            due_epoch,
        }])
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn answer(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
        material: Hash32,
    ) -> Result<Vec<Event>, TxError> {
        let key = leaf_key(&from, epoch, index);
        let d = self.demands.get(&key).cloned().ok_or(TxError::Demand {
            reason: "no demand was made for this leaf",
        })?;
        if d.answered.is_some() {
            return Err(TxError::Demand {
                reason: "already answered",
            });
        }
        if self.epoch > d.due_epoch {
            return Err(TxError::Demand {
                reason: "past its deadline",
            });
        }
        let leaf = self.leaf_receipt(&from, epoch, index, receipt, proof)?;
        j.demands.push((key, Some(d.clone())));
        self.demands.insert(
            key,
            Demand {
                answered: Some(material),
                ..d
            },
        );
        Ok(vec![Event::MaterialAnswered {
            provider: from,
            epoch,
            index,
            receipt: leaf,
            material,
        }])
    }

    /// Checks that `receipt` (its signature checked with the transaction) is `provider`'s, on
    /// this chain, and the leaf `index` of its root of `epoch`; returns its hash.
    pub(crate) fn leaf_receipt(
        &self,
        provider: &AccountId,
        epoch: u64,
        index: u64,
        receipt: &SignedReceipt,
        proof: &[Hash32],
    ) -> Result<Hash32, TxError> {
        if receipt.receipt.provider != *provider {
            return Err(TxError::ReceiptMismatch {
                reason: "the receipt names another provider",
            });
        }
        if receipt.receipt.chain_id != self.chain_id {
            return Err(TxError::ReceiptMismatch {
                reason: "the receipt names another chain",
            });
        }
        let posted = self
            .roots
            .get(&(*provider, epoch))
            .ok_or(TxError::UnknownReceiptRoot {
                provider: *provider,
                epoch,
            })?;
        let leaf = receipt.hash();
        if index >= posted.receipts
            || !agora_core::merkle::verify(&posted.root, &leaf, index, proof)
        {
            return Err(TxError::BadReceiptProof { receipt: leaf });
        }
        Ok(leaf)
    }

    pub(crate) fn plant(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        commitment: Hash32,
    ) -> Result<Vec<Event>, TxError> {
        if self.plants.contains_key(&commitment) {
            return Err(TxError::Malformed {
                reason: "plant already committed",
            });
        }
        let bond = self.params.plant_bond;
        self.debit(j, from, bond)?;
        j.plants.push((commitment, None));
        self.plants.insert(
            commitment,
            Plant {
                planter: from,
                epoch: self.epoch,
                bond,
            },
        );
        Ok(vec![Event::FraudPlanted { commitment }])
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reveal_plant(
        &mut self,
        j: &mut Journal,
        from: AccountId,
        provider: AccountId,
        epoch: u64,
        index: u64,
        salt: &Hash32,
        confirmer: Option<AccountId>,
    ) -> Result<Vec<Event>, TxError> {
        // Only the provider that posted the root opens a plant under it.
        if from != provider {
            return Err(TxError::BadReveal);
        }
        let commitment = plant_commitment(self.chain_id, &provider, epoch, index, salt);
        let plant = self
            .plants
            .get(&commitment)
            .cloned()
            .ok_or(TxError::BadReveal)?;
        // Committed no later than the root's epoch: before the beacon of `epoch + 1` that
        // selected the leaf.
        if plant.epoch > epoch {
            return Err(TxError::BadReveal);
        }
        // One epoch, after every reveal and before any verdict: the root's epoch is past.
        let at = Windows::of(&self.params, epoch)?.plant;
        self.window("the plant reveal", at, at)?;
        if self
            .roots
            .get(&(provider, epoch))
            .is_none_or(|r| index >= r.receipts)
        {
            return Err(TxError::BadReveal);
        }
        // One plant per root: a cheater cannot shield every leaf from verdicts.
        if self.plant_epochs.contains(&(provider, epoch)) {
            return Err(TxError::Malformed {
                reason: "one plant per root",
            });
        }
        j.plant_epochs.push((provider, epoch));
        self.plant_epochs.insert((provider, epoch));
        j.plants.push((commitment, Some(plant.clone())));
        self.plants.remove(&commitment);
        let key = leaf_key(&provider, epoch, index);
        if self.judged.contains(&key) {
            return Err(TxError::AlreadyJudged(key));
        }
        // A caught plant never becomes a verdict against the canary.
        self.mark_judged(j, key);
        let audit = self.audits.get(&key).cloned();
        let passed_by = audit
            .as_ref()
            .filter(|a| a.revealed == Some(true))
            .map(|a| a.verifier);
        let caught = audit
            .as_ref()
            .filter(|a| a.revealed == Some(false))
            .map(|a| a.verifier);
        // A pass is punished only when a second registered verifier re-audited the planted
        // answer and signed that it fails: no single key takes a verifier's stake.
        let lazy = match (passed_by, confirmer) {
            (Some(v), Some(c)) => {
                if c == v || c == provider {
                    return Err(TxError::ConflictedVerdict {
                        reason: "the plant's confirmer must be a third party",
                    });
                }
                if !self.verifiers.contains(&c) {
                    return Err(TxError::NotVerifier(c));
                }
                Some(v)
            }
            _ => None,
        };
        let slashed = match lazy {
            Some(v) => {
                let taken = self.slash_stake(j, v, self.params.lazy_slash_bps)?;
                self.burn(j, taken)?;
                taken
            }
            None => Amount::ZERO,
        };
        let mut events = Vec::new();
        match caught {
            Some(v) => {
                events.extend(self.confirm_alarm(j, epoch, key)?);
                self.credit(j, v, plant.bond)?;
            }
            None => self.credit(j, plant.planter, plant.bond)?,
        }
        events.insert(
            0,
            Event::PlantRevealed {
                provider,
                epoch,
                index,
                lazy,
                slashed,
                caught,
            },
        );
        Ok(events)
    }
}
