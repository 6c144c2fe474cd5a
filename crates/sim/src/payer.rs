//! Payers: the gateway and its broker, modelled. The honest payer counts tokens itself, pays
//! (counted tokens) x (agreed price) and never the provider's claim, routes only to providers
//! bonded on the ledger with no confirmed fraud, and checks every receipt. The non-paying
//! payer takes answers and signs no voucher, or closes its channel as soon as it may.

use crate::model;
use crate::net::NodeId;
use crate::rng::Rng;
use crate::runtime::{Msg, Req, Runtime, Timer};
use crate::world::{Dir, Knobs};
use agora_core::{merkle, AccountId, Amount, Hash32, Signature};
use agora_ledger::{Event, TxBody};
use agora_wire::price::{cost_micros, micros_to_amount};
use agora_wire::protocol::{tokens_hash, SignedReceipt};
use agora_wire::settle::Voucher;
use std::collections::{BTreeMap, BTreeSet};

/// How a payer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayerKind {
    /// Pays for what it counted.
    Honest,
    /// Never signs a voucher.
    NonPaying,
    /// Opens short channels, pays, and closes each the moment it may, before the claim.
    CloseEarly,
}

/// A payer node.
pub struct Payer {
    /// Its node.
    pub node: NodeId,
    /// Its behaviour.
    pub kind: PayerKind,
    rng: Rng,
    inflight: BTreeMap<[u8; 16], (NodeId, Req)>,
    /// Counted cost per channel, micro-units.
    pub counted_micros: BTreeMap<Hash32, u128>,
    vouched: BTreeMap<Hash32, (Amount, Signature)>,
    banned: BTreeSet<NodeId>,
    /// (provider node, receipt hash) of every answer it paid for.
    pub paid: Vec<(NodeId, Hash32)>,
    receipts: BTreeMap<Hash32, (NodeId, SignedReceipt)>,
    proven: BTreeSet<Hash32>,
    challenged: BTreeSet<Hash32>,
    /// Answers received.
    pub answers: u64,
    /// Receipts that did not match what it counted.
    pub bad_receipts: u64,
    stop_at: u64,
}

impl Payer {
    /// A payer at `node`.
    pub fn new(node: NodeId, kind: PayerKind, seed: u64) -> Payer {
        Payer {
            node,
            kind,
            rng: Rng::new(seed, &format!("payer/{node}")),
            inflight: BTreeMap::new(),
            counted_micros: BTreeMap::new(),
            vouched: BTreeMap::new(),
            banned: BTreeSet::new(),
            paid: Vec::new(),
            receipts: BTreeMap::new(),
            proven: BTreeSet::new(),
            challenged: BTreeSet::new(),
            answers: 0,
            bad_receipts: 0,
            stop_at: 0,
        }
    }

    /// Opens a channel to every provider and starts asking.
    pub fn start(&mut self, rt: &mut Runtime, k: &Knobs, dir: &Dir) {
        self.stop_at = k.traffic_ms();
        let timeout_epochs = if self.kind == PayerKind::CloseEarly {
            rt.ledger.state.params.claim_window_epochs + 1
        } else {
            k.channel_epochs
        };
        for &p in &dir.providers {
            rt.submit(
                self.node,
                TxBody::OpenChannel {
                    provider: rt.accounts[p],
                    amount: Amount::new(k.deposit),
                    timeout_epochs,
                },
            );
        }
        let first = self.rng.range(1_000, 2_000);
        rt.timer(self.node, first, Timer::NextRequest);
    }

    fn channel_to(&self, rt: &Runtime, provider: AccountId) -> Option<Hash32> {
        let me = rt.accounts[self.node];
        rt.ledger
            .state
            .channels
            .iter()
            .find(|(_, c)| c.payer == me && c.provider == provider && !c.closed)
            .map(|(id, _)| *id)
    }

    /// Sends the next request to a provider it may route to.
    pub fn next_request(&mut self, rt: &mut Runtime, k: &Knobs, dir: &Dir) {
        if rt.now >= self.stop_at {
            return;
        }
        let gap = self.rng.range(k.request_gap_ms.0, k.request_gap_ms.1);
        rt.timer(self.node, gap, Timer::NextRequest);
        if self.kind == PayerKind::CloseEarly {
            self.close_expired(rt);
        }
        let st = &rt.ledger.state;
        let min = st.params.min_provider_stake;
        let routable: Vec<(NodeId, Hash32)> = dir
            .providers
            .iter()
            .filter(|p| !self.banned.contains(p))
            .filter(|&&p| {
                st.account(&rt.accounts[p])
                    .is_some_and(|a| a.stake >= min && a.frauds == 0)
            })
            .filter_map(|&p| Some((p, self.channel_to(rt, rt.accounts[p])?)))
            .collect();
        if routable.is_empty() {
            return;
        }
        let (provider, channel) = routable[self.rng.below(routable.len() as u64) as usize];
        let plen = self.rng.range(4, 48) as usize;
        let prompt: Vec<u32> = (0..plen)
            .map(|_| u32::try_from(self.rng.below(49_152)).unwrap_or(0))
            .collect();
        // Top up when the escrow left would not cover the reservation.
        let reservation = micros_to_amount(k.reservation_micros(plen));
        if let Some(ch) = rt.ledger.state.channel(&channel) {
            let counted = micros_to_amount(self.counted_micros.get(&channel).copied().unwrap_or(0));
            let left = ch.deposit.checked_sub(counted).unwrap_or(Amount::ZERO);
            if left < reservation.checked_add(reservation).unwrap_or(Amount::MAX) {
                rt.submit(
                    self.node,
                    TxBody::TopUpChannel {
                        channel,
                        amount: Amount::new(k.deposit),
                    },
                );
            }
        }
        let req = Req {
            id: self.rng.bytes16(),
            channel,
            prompt,
            max_tokens: k.max_tokens,
            seed: self.rng.next_u64(),
            voucher: self.vouched.get(&channel).copied(),
        };
        self.inflight.insert(req.id, (provider, req.clone()));
        rt.send(self.node, provider, Msg::Request(req));
    }

    fn close_expired(&self, rt: &mut Runtime) {
        let me = rt.accounts[self.node];
        let epoch = rt.ledger.state.epoch;
        let due: Vec<Hash32> = rt
            .ledger
            .state
            .channels
            .iter()
            .filter(|(_, c)| c.payer == me && !c.closed && c.expires_epoch <= epoch)
            .map(|(id, _)| *id)
            .collect();
        for channel in due {
            rt.submit(self.node, TxBody::CloseChannel { channel });
        }
    }

    /// What the gateway checks in a receipt against what it sent and counted.
    fn receipt_ok(
        rt: &Runtime,
        provider: AccountId,
        req: &Req,
        out: &[u32],
        r: &SignedReceipt,
    ) -> bool {
        let x = &r.receipt;
        model::receipt_signed(r)
            && x.chain_id == rt.ledger.state.chain_id
            && x.provider == provider
            && x.channel == req.channel
            && x.request_id == req.id
            && x.model == model::real_model()
            && x.prompt_hash == tokens_hash(&req.prompt)
            && x.output_hash == tokens_hash(out)
            && x.prompt_tokens as usize == req.prompt.len()
            && x.output_tokens as usize == out.len()
    }

    /// At each epoch: ask each provider to show its receipts under its roots once they are
    /// due. On every block of the challenge window: challenge on the ledger those it could not
    /// show (a payer down when the window opened still challenges when it is back).
    pub fn on_block(&mut self, rt: &mut Runtime, events: &[Event]) {
        let epoch = rt.ledger.state.epoch;
        let new_epoch = events
            .iter()
            .any(|e| matches!(e, Event::EpochAdvanced { .. }));
        let x = rt.ledger.state.params.escalation_epochs;
        let mut asks = Vec::new();
        let mut challenges = Vec::new();
        for (h, (p, r)) in &self.receipts {
            if self.proven.contains(h) || self.challenged.contains(h) {
                continue;
            }
            let served = r.receipt.epoch;
            if new_epoch && epoch == served + 2 {
                asks.push((*p, *h));
            } else if epoch >= served + 3 && epoch <= served + 1 + x {
                challenges.push(r.clone());
            }
        }
        for (p, h) in asks {
            rt.send(self.node, p, Msg::InclusionReq { receipt: h });
        }
        for receipt in challenges {
            self.challenged.insert(receipt.hash());
            rt.submit(self.node, TxBody::ChallengeInclusion { receipt });
        }
    }

    /// An answer arrived: count it, check the receipt, pay for what was counted.
    pub fn on_msg(&mut self, rt: &mut Runtime, k: &Knobs, from: NodeId, msg: Msg) {
        if let Msg::InclusionProof {
            receipt,
            epoch,
            index,
            proof,
        } = &msg
        {
            let provider = rt.accounts[from];
            let root = rt.ledger.state.roots.get(&(provider, *epoch));
            let under = root.is_some_and(|r| merkle::verify(&r.root, receipt, *index, proof));
            // The ledger's rule: the receipt's epoch or the next, or later under a root
            // audited in full.
            let full = root.is_some_and(|r| r.audit_ppm == agora_ledger::FULL_AUDIT_PPM);
            let ok_epoch = self.receipts.get(receipt).is_some_and(|(_, r)| {
                let served = r.receipt.epoch;
                *epoch == served || *epoch == served + 1 || (*epoch > served && full)
            });
            if under && ok_epoch {
                self.proven.insert(*receipt);
            }
            return;
        }
        let Msg::Answer {
            id,
            output,
            receipt,
        } = msg
        else {
            return;
        };
        let Some((provider, req)) = self.inflight.remove(&id) else {
            return;
        };
        if provider != from {
            return;
        }
        self.answers += 1;
        // The gateway counts: prompt tokens it tokenized, output tokens it received, capped.
        let out_n = output.len().min(req.max_tokens as usize);
        let price = Amount::new(k.price_per_mtok);
        let cost = cost_micros(price, price, req.prompt.len() as u64, out_n as u64).unwrap_or(0);
        let ok = Self::receipt_ok(rt, rt.accounts[from], &req, &output, &receipt)
            && receipt.receipt.payer == rt.accounts[self.node];
        if !ok {
            self.bad_receipts += 1;
            self.banned.insert(from);
        }
        let total = self.counted_micros.entry(req.channel).or_insert(0);
        *total += cost;
        let cumulative = micros_to_amount(*total);
        self.paid.push((from, receipt.hash()));
        if ok {
            self.receipts.insert(receipt.hash(), (from, *receipt));
        }
        if self.kind == PayerKind::NonPaying {
            return;
        }
        let voucher = Voucher {
            chain_id: rt.ledger.state.chain_id,
            channel: req.channel,
            cumulative,
        };
        let sig = voucher.sign(&rt.keys[self.node]);
        self.vouched.insert(req.channel, (cumulative, sig));
        rt.send(
            self.node,
            from,
            Msg::Voucher {
                channel: req.channel,
                cumulative,
                sig,
            },
        );
    }

    /// What it counted, whole units per channel.
    pub fn counted(&self, channel: &Hash32) -> Amount {
        micros_to_amount(self.counted_micros.get(channel).copied().unwrap_or(0))
    }
}
