//! Providers: the honest one, and its byzantine variants (overcharging, omitting receipts from
//! the root, unstaking right after posting, withholding audit material, serving a cheaper
//! model), plus the canary that plants fake frauds to catch lazy verifiers.

use crate::model;
use crate::net::NodeId;
use crate::rng::Rng;
use crate::runtime::{Msg, Req, Runtime, Timer, EPOCH_MS};
use crate::world::{Dir, Knobs};
use agora_core::{merkle, AccountId, Amount, Hash32, Signature};
use agora_ledger::audit::Windows;
use agora_ledger::{leaf_key, plant_commitment, Event, TxBody};
use agora_provider::payments::Escrow;
use agora_provider::receipts::leaf_order;
use agora_verifier::judge::Judgement;
use agora_wire::price::{cost_micros, micros_to_amount};
use agora_wire::protocol::{fingerprint_hash, tokens_hash, Material, NextLeaf, Receipt, RequestId};
use agora_wire::settle::Voucher;
use std::collections::{BTreeMap, BTreeSet};

/// How a provider behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Serves the model asked for, charges what it served, posts every receipt.
    Honest,
    /// Claims four times the prompt tokens it was sent.
    Overcharge,
    /// Serves a cheaper model with probability `cheat_ppm` and leaves those receipts out of
    /// its root.
    OmitReceipt,
    /// Serves a cheaper model with probability `cheat_ppm`, holds those receipts back from its
    /// roots, and puts one under its next root only once the payer challenges it (hoping the
    /// late root is audited at the floor like an ordinary one).
    LateOmit,
    /// Serves a cheaper model with probability `cheat_ppm`, posts, then unstakes everything.
    UnstakeEarly,
    /// Serves a cheaper model with probability `cheat_ppm` and never hands over the material
    /// of those answers.
    Withhold,
    /// Serves a cheaper model with probability `cheat_ppm` and answers audits honestly.
    CheapModel,
    /// An honest provider that holds the planter key and plants fake frauds (cheap answers it
    /// commits to on the ledger) to catch verifiers that pass without auditing.
    Canary,
}

impl ProviderKind {
    /// Whether this kind ever departs from the protocol.
    pub fn byzantine(self) -> bool {
        !matches!(self, ProviderKind::Honest | ProviderKind::Canary)
    }
}

/// One served answer, kept for its root and its audits.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The signed receipt and everything behind it.
    pub material: Material,
    /// Its hash (the Merkle leaf).
    pub hash: Hash32,
    /// Served by the cheaper model (or planted).
    pub cheated: bool,
}

/// A provider node.
pub struct Provider {
    /// Its node.
    pub node: NodeId,
    /// Its behaviour.
    pub kind: ProviderKind,
    /// Probability of serving the cheaper model, ppm.
    pub cheat_ppm: u32,
    rng: Rng,
    seen: BTreeSet<[u8; 16]>,
    pending: Vec<Leaf>,
    /// Leaves under each posted root, by epoch.
    pub posted: BTreeMap<u64, Vec<Leaf>>,
    /// Every receipt it served (posted or not), for the eligibility check.
    pub served: Vec<Hash32>,
    vouchers: BTreeMap<Hash32, (Amount, Signature, AccountId)>,
    /// Honest cost of what it served per channel, micro-units: what it is owed.
    pub owed_micros: BTreeMap<Hash32, u128>,
    /// What cheating saved it, micro-units.
    pub saved_micros: u128,
    /// Answers served from the cheaper model.
    pub cheats: u64,
    /// Requests served twice (replays accepted): must stay 0.
    pub replays_served: u64,
    plants: Vec<(u64, u64, Hash32)>,
    answered: BTreeSet<Hash32>,
    unstaked: bool,
    held: Vec<Leaf>,
}

impl Provider {
    /// A provider at `node`.
    pub fn new(node: NodeId, kind: ProviderKind, cheat_ppm: u32, seed: u64) -> Provider {
        Provider {
            node,
            kind,
            cheat_ppm,
            rng: Rng::new(seed, &format!("provider/{node}")),
            seen: BTreeSet::new(),
            pending: Vec::new(),
            posted: BTreeMap::new(),
            served: Vec::new(),
            vouchers: BTreeMap::new(),
            owed_micros: BTreeMap::new(),
            saved_micros: 0,
            cheats: 0,
            replays_served: 0,
            plants: Vec::new(),
            answered: BTreeSet::new(),
            unstaked: false,
            held: Vec::new(),
        }
    }

    fn me(&self, rt: &Runtime) -> AccountId {
        rt.accounts[self.node]
    }

    /// Schedules the first close of each epoch (root and claims).
    pub fn start(&self, rt: &mut Runtime, k: &Knobs) {
        rt.submit(
            self.node,
            TxBody::Stake {
                amount: Amount::new(k.provider_stake),
            },
        );
        rt.timer(self.node, EPOCH_MS - 900, Timer::CloseEpoch);
    }

    fn take_voucher(&mut self, rt: &Runtime, from: NodeId, v: (Hash32, Amount, Signature)) {
        let (channel, cumulative, sig) = v;
        let payer = rt.accounts[from];
        let better = self
            .vouchers
            .get(&channel)
            .is_none_or(|(c, _, _)| cumulative > *c);
        if !better {
            return;
        }
        let voucher = Voucher {
            chain_id: rt.ledger.state.chain_id,
            channel,
            cumulative,
        };
        if payer
            .verify(agora_wire::settle::VOUCHER_DOMAIN, &voucher, &sig)
            .is_err()
        {
            return;
        }
        self.vouchers.insert(channel, (cumulative, sig, payer));
    }

    /// A message arrived.
    pub fn on_msg(&mut self, rt: &mut Runtime, k: &Knobs, from: NodeId, msg: Msg) {
        match msg {
            Msg::Request(req) => self.serve(rt, k, from, *req),
            Msg::Voucher {
                channel,
                cumulative,
                sig,
            } => self.take_voucher(rt, from, (channel, cumulative, sig)),
            Msg::AuditReq { epoch, index } => self.send_material(rt, from, epoch, index),
            Msg::InclusionReq { receipt } => {
                if let Some((epoch, index, proof)) = self.inclusion(&receipt) {
                    rt.send(
                        self.node,
                        from,
                        Msg::InclusionProof {
                            receipt,
                            epoch,
                            index,
                            proof,
                        },
                    );
                }
            }
            Msg::PlantConfirmed { epoch, index, sig } => {
                if let Some(pos) = self
                    .plants
                    .iter()
                    .position(|(e, i, _)| *e == epoch && *i == index)
                {
                    let (_, _, salt) = self.plants.remove(pos);
                    let confirmation = Some((rt.accounts[from], sig));
                    self.submit_reveal(rt, epoch, index, salt, confirmation);
                }
            }
            _ => {}
        }
    }

    fn leaf(&self, epoch: u64, index: u64) -> Option<&Leaf> {
        self.posted.get(&epoch)?.get(usize::try_from(index).ok()?)
    }

    fn proof(&self, epoch: u64, index: u64) -> Option<Vec<Hash32>> {
        let hashes: Vec<Hash32> = self.posted.get(&epoch)?.iter().map(|l| l.hash).collect();
        merkle::proof(&hashes, usize::try_from(index).ok()?)
    }

    /// Where a receipt sits under its posted roots.
    fn inclusion(&self, receipt: &Hash32) -> Option<(u64, u64, Vec<Hash32>)> {
        let (epoch, index) = self.posted.iter().find_map(|(e, ls)| {
            ls.iter()
                .position(|l| l.hash == *receipt)
                .map(|i| (*e, i as u64))
        })?;
        Some((epoch, index, self.proof(epoch, index)?))
    }

    fn withholds(&self, leaf: &Leaf) -> bool {
        self.kind == ProviderKind::Withhold && leaf.cheated
    }

    fn send_material(&self, rt: &mut Runtime, to: NodeId, epoch: u64, index: u64) {
        let Some(leaf) = self.leaf(epoch, index) else {
            return;
        };
        if self.withholds(leaf) {
            return;
        }
        let Some(proof) = self.proof(epoch, index) else {
            return;
        };
        let material = Box::new(leaf.material.clone());
        let next = index.checked_add(1).and_then(|i| {
            let receipt = self.leaf(epoch, i)?.material.receipt.clone();
            let proof = self.proof(epoch, i)?;
            Some(Box::new(NextLeaf { receipt, proof }))
        });
        rt.send(
            self.node,
            to,
            Msg::Material {
                epoch,
                index,
                material,
                proof,
                next,
            },
        );
    }

    /// Answers on the ledger every demand for its material and every inclusion challenge it
    /// can (the fair chance the ledger gives before a `Withheld` verdict or an omission slash).
    fn answer_ledger(&mut self, rt: &mut Runtime, dir: &Dir) {
        let me = self.me(rt);
        let st = &rt.ledger.state;
        let mut txs = Vec::new();
        let mut pushes = Vec::new();
        let from = st.epoch.saturating_sub(4);
        for (&epoch, leaves) in self.posted.range(from..) {
            for (i, leaf) in leaves.iter().enumerate() {
                let index = i as u64;
                let key = leaf_key(&me, epoch, index);
                let Some(d) = st.demands.get(&key) else {
                    continue;
                };
                if d.answered.is_some() || self.answered.contains(&key) || self.withholds(leaf) {
                    continue;
                }
                let Some(proof) = self.proof(epoch, index) else {
                    continue;
                };
                self.answered.insert(key);
                txs.push(TxBody::AnswerDemand {
                    epoch,
                    index,
                    receipt: leaf.material.receipt.clone(),
                    proof,
                    material: material_hash(&leaf.material),
                });
                if let Some(&v) = dir.by_account.get(&d.verifier) {
                    pushes.push((v, epoch, index));
                }
            }
        }
        for h in &self.served {
            let Some(c) = st.challenges.get(h) else {
                continue;
            };
            let _ = c;
            if self.answered.contains(h) {
                continue;
            }
            if let Some((epoch, index, proof)) = self.inclusion(h) {
                self.answered.insert(*h);
                txs.push(TxBody::AnswerInclusion {
                    receipt: *h,
                    epoch,
                    index,
                    proof,
                });
            }
        }
        for tx in txs {
            rt.submit(self.node, tx);
        }
        for (v, epoch, index) in pushes {
            self.send_material(rt, v, epoch, index);
        }
    }

    /// Events of a new block: demands, challenges, and (the canary) its plant epochs.
    pub fn on_block(&mut self, rt: &mut Runtime, dir: &Dir, events: &[Event]) {
        let me = self.me(rt);
        let mut ledger_work = false;
        for e in events {
            match e {
                Event::MaterialDemanded { provider, .. }
                | Event::InclusionChallenged { provider, .. }
                    if *provider == me =>
                {
                    ledger_work = true
                }
                Event::EpochAdvanced { epoch, .. } => {
                    ledger_work = true;
                    self.open_plants(rt, dir, *epoch);
                }
                _ => {}
            }
        }
        if ledger_work {
            self.answer_ledger(rt, dir);
        }
    }

    /// The plants (root epoch, leaf index, salt) whose root's plant epoch is `epoch`.
    fn plants_opening_in(&self, rt: &Runtime, epoch: u64) -> Vec<(u64, u64, Hash32)> {
        self.plants
            .iter()
            .filter(|(e, _, _)| {
                Windows::of(&rt.ledger.state.params, *e).is_ok_and(|w| w.plant == epoch)
            })
            .copied()
            .collect()
    }

    /// In a root's one plant epoch, the canary opens its plant: with a second verifier's
    /// signed re-audit when the assigned verifier passed it, so that verifier is slashed.
    fn open_plants(&mut self, rt: &mut Runtime, dir: &Dir, epoch: u64) {
        let me = self.me(rt);
        let due = self.plants_opening_in(rt, epoch);
        for (e, index, salt) in due {
            let audit = rt
                .ledger
                .state
                .audits
                .get(&leaf_key(&me, e, index))
                .cloned();
            let passed_by = audit
                .as_ref()
                .filter(|a| a.revealed == Some(true))
                .map(|a| a.verifier);
            let confirmers: Vec<NodeId> = passed_by.map_or_else(Vec::new, |lazy| {
                dir.verifiers
                    .iter()
                    .copied()
                    .filter(|&v| {
                        rt.accounts[v] != lazy
                            && rt.ledger.state.verifiers.contains(&rt.accounts[v])
                    })
                    .collect()
            });
            match (self.leaf(e, index), self.proof(e, index)) {
                (Some(leaf), Some(proof)) if !confirmers.is_empty() => {
                    // Every other verifier re-audits; the first signature opens the plant.
                    for v in confirmers {
                        let material = Box::new((leaf.material.clone(), proof.clone()));
                        rt.send(
                            self.node,
                            v,
                            Msg::PlantConfirmReq {
                                epoch: e,
                                index,
                                material,
                            },
                        );
                    }
                }
                _ => self.reveal_plant(rt, e, index, salt),
            }
        }
    }

    fn reveal_plant(&mut self, rt: &mut Runtime, epoch: u64, index: u64, salt: Hash32) {
        self.plants
            .retain(|(pe, pi, _)| !(*pe == epoch && *pi == index));
        self.submit_reveal(rt, epoch, index, salt, None);
    }

    /// Opens the plant at leaf `index` of the `epoch` root on the ledger, with a second
    /// verifier's confirmation when there is one.
    fn submit_reveal(
        &self,
        rt: &mut Runtime,
        epoch: u64,
        index: u64,
        salt: Hash32,
        confirmation: Option<(AccountId, Signature)>,
    ) {
        let me = self.me(rt);
        rt.submit(
            self.node,
            TxBody::RevealPlant {
                provider: me,
                epoch,
                index,
                salt,
                confirmation,
            },
        );
    }

    /// The checks an honest provider makes before serving (the rules of issue 13 item 4 as
    /// the simulated provider keeps them): a channel of this payer to it, open well past the
    /// claim window, escrow for the reservation, and no more than this one request's credit
    /// outstanding beyond the vouchers it holds.
    fn admit(&self, rt: &Runtime, k: &Knobs, from: NodeId, req: &Req) -> bool {
        let st = &rt.ledger.state;
        let Some(ch) = st.channel(&req.request.channel) else {
            return false;
        };
        if ch.closed || ch.provider != self.me(rt) || ch.payer != rt.accounts[from] {
            return false;
        }
        if ch.expires_epoch < st.epoch + k.claim_margin_epochs {
            return false;
        }
        // The service's own arithmetic (`agora_provider::payments::Escrow`); the simulated
        // provider answers each request before the next one arrives, so none is in flight.
        let escrow = Escrow {
            deposit: ch.deposit,
            claimed: ch.claimed,
            vouched: self
                .vouchers
                .get(&req.request.channel)
                .map_or(Amount::ZERO, |v| v.0),
            served_micros: self
                .owed_micros
                .get(&req.request.channel)
                .copied()
                .unwrap_or(0),
            inflight: Amount::ZERO,
        };
        let reservation = micros_to_amount(k.reservation_micros(req.prompt.len()));
        escrow.unpaid().is_zero() && escrow.free() >= reservation
    }

    fn serve(&mut self, rt: &mut Runtime, k: &Knobs, from: NodeId, req: Req) {
        let r = &req.request;
        if let Some(v) = req.voucher {
            self.take_voucher(rt, from, (r.channel, v.0, v.1));
        }
        if !self.seen.insert(r.request_id) {
            return;
        }
        if !self.admit(rt, k, from, &req) {
            rt.send(self.node, from, Msg::Refused { id: r.request_id });
            return;
        }
        // One plant per root: at most one planted answer among those its next root holds.
        let planted = self.kind == ProviderKind::Canary
            && !self.pending.iter().any(|l| l.cheated)
            && self.rng.chance_ppm(k.plant_ppm);
        let cheat = planted || (self.kind.byzantine() && self.rng.chance_ppm(self.cheat_ppm));
        let model = if cheat {
            model::cheap_model()
        } else {
            model::real_model()
        };
        let seed = r.sampling.seed;
        let n = model::answer_len(&req.prompt, seed, r.max_tokens);
        let output = model::generate(&model, &req.prompt, seed, n);
        let fp = model::fingerprint(&model, &req.prompt, &output);
        let honest_prompt = u32::try_from(req.prompt.len()).unwrap_or(u32::MAX);
        let prompt_tokens = if self.kind == ProviderKind::Overcharge {
            honest_prompt.saturating_mul(4)
        } else {
            honest_prompt
        };
        let (price_in, price_out) = (r.price_in, r.price_out);
        let honest_cost = cost_micros(price_in, price_out, u64::from(honest_prompt), u64::from(n))
            .unwrap_or(u128::MAX);
        let cost = cost_micros(price_in, price_out, u64::from(prompt_tokens), u64::from(n))
            .unwrap_or(u128::MAX);
        if cheat && !planted {
            self.cheats += 1;
            self.saved_micros += honest_cost * u128::from(k.cheat_saving_ppm) / 1_000_000;
        }
        *self.owed_micros.entry(r.channel).or_insert(0) += honest_cost;
        let receipt = Receipt {
            chain_id: rt.ledger.state.chain_id,
            epoch: rt.ledger.state.epoch,
            request_id: r.request_id,
            provider: self.me(rt),
            payer: rt.accounts[from],
            channel: r.channel,
            // The model asked for, whichever ran.
            model: r.model,
            prompt_hash: tokens_hash(&req.prompt),
            output_hash: tokens_hash(&output),
            prompt_tokens,
            resumed_tokens: 0,
            output_tokens: n,
            sampling: r.sampling.clone(),
            fingerprint_hash: fingerprint_hash(&fp),
            price_in,
            price_out,
            cost_micros: cost,
            started_ms: rt.now,
            finished_ms: rt.now,
        }
        .sign(&rt.keys[self.node]);
        let material = Material {
            receipt: receipt.clone(),
            prompt: req.prompt.clone(),
            resumed: Vec::new(),
            output: output.clone(),
            fingerprint: fp,
        };
        debug_assert!(cheat || model::audit(&material, r.max_tokens) == Judgement::Passed);
        let hash = receipt.hash();
        self.served.push(hash);
        self.pending.push(Leaf {
            material,
            hash,
            cheated: cheat,
        });
        rt.send(
            self.node,
            from,
            Msg::Answer {
                id: r.request_id,
                output,
                receipt: Box::new(receipt),
            },
        );
    }

    /// Near the end of each epoch: post the root of this epoch's receipts, claim vouchers, and
    /// (the canary) commit and open plants.
    pub fn close_epoch(&mut self, rt: &mut Runtime, dir: &Dir) {
        // Anchored to the epoch, so a retry after a crash does not shift later closes.
        let into = rt.now % EPOCH_MS;
        let next_close = rt.now - into + EPOCH_MS + (EPOCH_MS - 900);
        rt.at(
            next_close,
            crate::runtime::Ev::Timer {
                node: self.node,
                timer: Timer::CloseEpoch,
            },
        );
        // Too late in the epoch for the root to land before the epoch advances.
        let late = into > EPOCH_MS - 600;
        self.answer_ledger(rt, dir);
        let now = rt.ledger.state.epoch;
        let unopened = self.plants_opening_in(rt, now);
        for (e, index, salt) in unopened {
            self.reveal_plant(rt, e, index, salt);
        }
        let epoch = rt.ledger.state.epoch;
        let me = self.me(rt);
        let staked = rt
            .ledger
            .state
            .account(&me)
            .is_some_and(|a| a.stake >= rt.ledger.state.params.min_provider_stake);
        let mut leaves: Vec<Leaf> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|l| !(self.kind == ProviderKind::OmitReceipt && l.cheated))
            .collect();
        if self.kind == ProviderKind::LateOmit {
            let (cheated, kept): (Vec<Leaf>, Vec<Leaf>) =
                leaves.into_iter().partition(|l| l.cheated);
            self.held.extend(cheated);
            leaves = kept;
            // Only what the payer challenged comes out, under this epoch's root.
            let st = &rt.ledger.state;
            let (out, still): (Vec<Leaf>, Vec<Leaf>) = std::mem::take(&mut self.held)
                .into_iter()
                .partition(|l| st.challenges.get(&l.hash).is_some_and(|c| c.open));
            self.held = still;
            leaves.extend(out);
        }
        // The production provider's leaf order: by request id, one receipt per request.
        let ids: Vec<RequestId> = leaves
            .iter()
            .map(|l| l.material.receipt.receipt.request_id)
            .collect();
        let (order, _) = leaf_order(&ids);
        let mut slots: Vec<Option<Leaf>> = leaves.into_iter().map(Some).collect();
        let leaves: Vec<Leaf> = order.iter().filter_map(|&i| slots[i].take()).collect();
        if late {
            self.pending = leaves;
        } else if !leaves.is_empty() && staked && !self.posted.contains_key(&epoch) {
            let hashes: Vec<Hash32> = leaves.iter().map(|l| l.hash).collect();
            let (root, receipts) = (merkle::root(&hashes), hashes.len() as u64);
            // Back from an outage with receipts that missed the roots of their epoch and
            // the next: only a late root (every leaf audited) still answers for them.
            let overdue = leaves
                .iter()
                .any(|l| l.material.receipt.receipt.epoch + 1 < epoch);
            rt.submit(
                self.node,
                TxBody::receipt_root(epoch, root, receipts, overdue),
            );
            if self.kind == ProviderKind::Canary {
                // One plant per root, committed before the selecting beacon.
                if let Some(i) = leaves.iter().position(|l| l.cheated) {
                    let salt = Hash32::of(&self.rng.bytes32());
                    let commitment =
                        plant_commitment(rt.ledger.state.chain_id, &me, epoch, i as u64, &salt);
                    rt.submit(self.node, TxBody::PlantFraud { commitment });
                    self.plants.push((epoch, i as u64, salt));
                }
            }
            let any_cheat = leaves.iter().any(|l| l.cheated);
            self.posted.insert(epoch, leaves);
            if self.kind == ProviderKind::UnstakeEarly && any_cheat && !self.unstaked {
                self.unstaked = true;
                let stake = rt
                    .ledger
                    .state
                    .account(&me)
                    .map_or(Amount::ZERO, |a| a.stake);
                if !stake.is_zero() {
                    rt.submit(self.node, TxBody::Unstake { amount: stake });
                }
            }
        } else if !leaves.is_empty() {
            // Not staked: these receipts can never be posted.
            self.pending = leaves;
        }
        for (channel, (cumulative, sig, payer)) in &self.vouchers {
            let claimed = rt
                .ledger
                .state
                .channel(channel)
                .map_or(Amount::MAX, |c| c.claimed);
            if *cumulative > claimed {
                rt.submit(
                    self.node,
                    TxBody::ClaimVoucher {
                        voucher: Voucher {
                            chain_id: rt.ledger.state.chain_id,
                            channel: *channel,
                            cumulative: *cumulative,
                        },
                        payer: *payer,
                        payer_sig: *sig,
                    },
                );
            }
        }
    }

    /// The honest cost of everything served, whole units per channel: what it is owed.
    pub fn owed(&self) -> u128 {
        self.owed_micros
            .values()
            .map(|m| micros_to_amount(*m).units())
            .sum()
    }
}

/// Whether a provider-signed receipt hash is under one of the roots the ledger holds for
/// `provider` (the provider's own record of a root counts only if the ledger accepted it).
pub fn eligible(
    p: &Provider,
    st: &agora_ledger::State,
    provider: &AccountId,
    receipt: &Hash32,
) -> bool {
    p.posted.iter().any(|(epoch, leaves)| {
        leaves.iter().any(|l| l.hash == *receipt)
            && st.roots.get(&(*provider, *epoch)).is_some_and(|r| {
                let hashes: Vec<Hash32> = leaves.iter().map(|l| l.hash).collect();
                r.root == merkle::root(&hashes)
            })
    })
}

/// What a provider commits to when it answers a demand: the hash of the material it serves.
pub fn material_hash(m: &Material) -> Hash32 {
    agora_core::codec::hash(b"agora/sim/material/v1", m)
}
