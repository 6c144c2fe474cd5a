//! Payers: the gateway and its broker. The broker's decisions are production code
//! ([`agora_broker::rules`]): the escrow reserved before asking, the receipt check (prompt
//! count, output within `max_tokens`, token counts and hashes, prices, the epoch window, and
//! a charge no more than tokens times prices), and what a charge adds to the channel's books.
//! Routing (bonded on the ledger, no confirmed fraud) and the inclusion follow-up are
//! modelled here. The honest payer pays what the receipt check returns and nothing for a
//! receipt it refuses; the non-paying payer takes answers and signs no voucher, or closes
//! its channel as soon as it may.

use crate::model;
use crate::net::NodeId;
use crate::rng::Rng;
use crate::runtime::{Msg, Req, Runtime, Timer};
use crate::world::{Dir, Knobs};
use agora_broker::rules::{self, PromptCount};
use agora_core::{merkle, AccountId, Amount, Hash32, Signature};
use agora_ledger::{Event, TxBody};
use agora_wire::price::{cost_micros, micros_to_amount};
use agora_wire::protocol::{tokens_hash, InferenceRequest, PromptSpec, Sampling};
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

/// A request awaiting its answer.
struct Inflight {
    provider: NodeId,
    req: Req,
    /// The ledger epoch when it was sent: the receipt must name an epoch the answer ran in.
    started_epoch: u64,
    /// Escrow reserved for it.
    reserved: Amount,
}

/// A payer node.
pub struct Payer {
    /// Its node.
    pub node: NodeId,
    /// Its behaviour.
    pub kind: PayerKind,
    rng: Rng,
    inflight: BTreeMap<[u8; 16], Inflight>,
    /// Counted cost per channel, micro-units: the tokens it counted times the agreed price.
    pub counted_micros: BTreeMap<Hash32, u128>,
    /// What its vouchers promise per channel, micro-units (the broker's books).
    spent_micros: BTreeMap<Hash32, u128>,
    vouched: BTreeMap<Hash32, (Amount, Signature)>,
    banned: BTreeSet<NodeId>,
    /// (provider node, receipt hash) of every answer it paid for.
    pub paid: Vec<(NodeId, Hash32)>,
    receipts: BTreeMap<Hash32, (NodeId, agora_wire::protocol::SignedReceipt)>,
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
            spent_micros: BTreeMap::new(),
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
        let price = Amount::new(k.price_per_mtok);
        let request = InferenceRequest {
            chain_id: rt.ledger.state.chain_id,
            request_id: self.rng.bytes16(),
            payer: rt.accounts[self.node],
            channel,
            provider: rt.accounts[provider],
            model: model::real_model(),
            prompt: PromptSpec::Text(String::new()),
            resume: Vec::new(),
            max_tokens: k.max_tokens,
            stop: Vec::new(),
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                seed: self.rng.next_u64(),
                ..Default::default()
            },
            price_in: price,
            price_out: price,
            issued_ms: rt.now,
        };
        let Some(reserved) = rules::reservation(&request, prompt_count(&prompt)) else {
            return;
        };
        // Top up when the escrow left would not cover the reservation.
        if let Some(ch) = rt.ledger.state.channel(&channel) {
            let spent = micros_to_amount(self.spent_micros.get(&channel).copied().unwrap_or(0));
            let left = ch.deposit.checked_sub(spent).unwrap_or(Amount::ZERO);
            if left < reserved.checked_add(reserved).unwrap_or(Amount::MAX) {
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
            request,
            prompt,
            voucher: self.vouched.get(&channel).copied(),
        };
        self.inflight.insert(
            req.request.request_id,
            Inflight {
                provider,
                req: req.clone(),
                started_epoch: rt.ledger.state.epoch,
                reserved,
            },
        );
        rt.send(self.node, provider, Msg::Request(Box::new(req)));
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
    pub fn on_msg(&mut self, rt: &mut Runtime, from: NodeId, msg: Msg) {
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
            // The ledger's rule: the receipt's epoch or the next, or later under a late root.
            let ok_epoch = self.receipts.get(receipt).is_some_and(|(_, r)| {
                root.is_some_and(|root| root.may_hold(*epoch, r.receipt.epoch))
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
        let Some(Inflight {
            provider,
            req,
            started_epoch,
            reserved,
        }) = self.inflight.remove(&id)
        else {
            return;
        };
        if provider != from {
            return;
        }
        self.answers += 1;
        let r = &req.request;
        // What the answer is worth by the gateway's own count: the prompt it tokenized, the
        // output tokens it received up to max_tokens, at the agreed price.
        let out_n = output.len().min(r.max_tokens as usize);
        let worth = cost_micros(
            r.price_in,
            r.price_out,
            req.prompt.len() as u64,
            out_n as u64,
        )
        .unwrap_or(0);
        *self.counted_micros.entry(r.channel).or_insert(0) += worth;
        // The broker's receipt check decides what is paid; a refused receipt is not paid.
        let window = (started_epoch, rt.ledger.state.epoch);
        let checked = rules::check_receipt(&receipt, r, &output, prompt_count(&req.prompt), window);
        let Ok(paid) = checked else {
            self.bad_receipts += 1;
            self.banned.insert(from);
            return;
        };
        self.paid.push((from, receipt.hash()));
        self.receipts.insert(receipt.hash(), (from, *receipt));
        if self.kind == PayerKind::NonPaying {
            return;
        }
        let deposit = rt
            .ledger
            .state
            .channel(&r.channel)
            .map_or(Amount::ZERO, |c| c.deposit);
        let spent = self.spent_micros.entry(r.channel).or_insert(0);
        *spent = rules::charge(*spent, paid, reserved, deposit);
        let cumulative = micros_to_amount(*spent);
        let voucher = Voucher {
            chain_id: rt.ledger.state.chain_id,
            channel: r.channel,
            cumulative,
        };
        let sig = voucher.sign(&rt.keys[self.node]);
        self.vouched.insert(r.channel, (cumulative, sig));
        rt.send(
            self.node,
            from,
            Msg::Voucher {
                channel: r.channel,
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

/// The gateway counted the prompt itself: a provider must claim exactly these tokens.
fn prompt_count(prompt: &[u32]) -> PromptCount {
    PromptCount::Exact {
        tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
        hash: tokens_hash(prompt),
    }
}
