//! The seeded single-threaded runtime: a virtual clock in ms, one event queue, the simulated
//! network, and the real ledger with the simulation as its sequencer.

use crate::net::{Network, NodeId};
use crate::rng::Rng;
use agora_core::{AccountId, Hash32, Keypair, Signature};
use agora_ledger::block::tx_root;
use agora_ledger::tx::VerifiedTx;
use agora_ledger::{BlockCtx, BlockHeader, Event, Ledger, SignedTx, Tx, TxBody, TxError};
use agora_wire::protocol::{InferenceRequest, Material, NextLeaf, SignedReceipt};
use agora_wire::settle::Verdict;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// Virtual ms between blocks.
pub const BLOCK_MS: u64 = 500;
/// Blocks per epoch (the sequencer advances the epoch in the first block of each).
pub const EPOCH_BLOCKS: u64 = 10;
/// Virtual ms per epoch.
pub const EPOCH_MS: u64 = BLOCK_MS * EPOCH_BLOCKS;

/// A request from a payer (the gateway's broker) to a provider.
#[derive(Debug, Clone)]
pub struct Req {
    /// The request as the broker sends it: its id, channel, model, sampling, prices and
    /// `max_tokens` are what the receipt must repeat (its `prompt` text is unused here: the
    /// simulation's prompts are the token ids in `prompt`).
    pub request: InferenceRequest,
    /// Prompt token ids (the gateway counts them itself).
    pub prompt: Vec<u32>,
    /// The payer's latest voucher on this channel, so a lost one is made good.
    pub voucher: Option<(agora_core::Amount, Signature)>,
}

/// What a failed audit claims, when it asks a second verifier to confirm.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The answer failed its audit.
    Fraud,
    /// The provider did not hand over the material.
    Withheld,
}

/// A message on a simulated link.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Payer to provider.
    Request(Box<Req>),
    /// Provider to payer: the tokens and the signed receipt.
    Answer {
        /// The request.
        id: [u8; 16],
        /// Output token ids.
        output: Vec<u32>,
        /// The receipt.
        receipt: Box<SignedReceipt>,
    },
    /// Provider to payer: not served.
    Refused {
        /// The request.
        id: [u8; 16],
    },
    /// Payer to provider: a cumulative voucher and the payer's signature.
    Voucher {
        /// The channel.
        channel: Hash32,
        /// Cumulative amount.
        cumulative: agora_core::Amount,
        /// Signature.
        sig: Signature,
    },
    /// Verifier to provider: the material behind a leaf, please.
    AuditReq {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
    },
    /// Provider to verifier.
    Material {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The material.
        material: Box<Material>,
        /// Merkle path to the posted root.
        proof: Vec<Hash32>,
        /// The next leaf and its path (none for the last), for the verifier's order check.
        next: Option<Box<NextLeaf>>,
    },
    /// Verifier to verifier: confirm this failed leaf.
    ConfirmReq {
        /// Audited provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// What is claimed.
        claim: Claim,
        /// The material the requester audited and its path (judged against the ledger's
        /// root, so the requester cannot tamper with it).
        material: Option<Box<(Material, Vec<Hash32>)>>,
    },
    /// Payer to provider: prove this receipt is under one of your roots.
    InclusionReq {
        /// The receipt's hash.
        receipt: Hash32,
    },
    /// Provider to payer: the leaf and its path.
    InclusionProof {
        /// The receipt's hash.
        receipt: Hash32,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// Path.
        proof: Vec<Hash32>,
    },
    /// Canary to verifier: re-audit my planted leaf and sign that it fails.
    PlantConfirmReq {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// The planted material and its path.
        material: Box<(Material, Vec<Hash32>)>,
    },
    /// Verifier to canary: the signed plant confirmation.
    PlantConfirmed {
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// Signature over `plant_confirmation`.
        sig: Signature,
    },
    /// Confirmer to requester: the co-signed verdict.
    Confirmed {
        /// The verdict.
        verdict: Box<Verdict>,
        /// The confirmer's signature.
        sig: Signature,
    },
    /// Gossip of an audit outcome (anyone can send one; only the ledger's count).
    Gossip {
        /// Provider the outcome is about.
        provider: AccountId,
        /// Claimed outcome.
        passed: bool,
    },
}

/// A timer an actor set.
#[derive(Debug, Clone)]
pub enum Timer {
    /// A payer's next request.
    NextRequest,
    /// A provider posts its root and claims its vouchers.
    CloseEpoch,
    /// A verifier's audit fetch timed out.
    AuditTimeout {
        /// Provider.
        provider: AccountId,
        /// Root epoch.
        epoch: u64,
        /// Leaf.
        index: u64,
        /// Attempt number.
        attempt: u32,
        /// For a confirmation (true) or an audit (false).
        confirm: bool,
    },
    /// Restart after a crash.
    Restart,
    /// Heal a partition between the node and another.
    Heal(NodeId),
    /// A scheduled adversary step.
    Adversary(u32),
}

/// What happens next.
// A delivered message can carry a verdict with its signed receipt; events are few and short
// lived, so boxing them would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Ev {
    /// A message arrives.
    Deliver {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
        /// Message.
        msg: Msg,
    },
    /// A transaction reaches the sequencer's mempool.
    TxArrive {
        /// Sender node.
        from: NodeId,
        /// Body (signed with the sender's next nonce when the block is built, as a client that
        /// re-signs on a nonce conflict would).
        body: TxBody,
    },
    /// A timer fires.
    Timer {
        /// Node.
        node: NodeId,
        /// Which.
        timer: Timer,
    },
    /// The sequencer builds a block.
    Block,
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A block's transactions, signed and waiting for their signature check.
pub struct PendingBlock {
    ctx: BlockCtx,
    /// The signed transactions, in block order.
    pub signed: Vec<SignedTx>,
    senders: Vec<NodeId>,
}

/// The runtime every actor acts through.
pub struct Runtime {
    /// Virtual now, ms.
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Item>,
    /// The network.
    pub net: Network,
    /// The real ledger.
    pub ledger: Ledger,
    /// Every node's key (node 0 is the sequencer).
    pub keys: Vec<Keypair>,
    /// Account of each node.
    pub accounts: Vec<AccountId>,
    mempool: Vec<(NodeId, TxBody)>,
    /// Transactions the ledger refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Ledger invariant failures (conservation), with the block height.
    pub invariant_failures: Vec<String>,
    /// Events of every block so far, in order.
    pub events: Vec<Event>,
    /// The state hash of the last block.
    state_hash: Option<Hash32>,
}

impl Runtime {
    /// A runtime over `ledger` with `keys` (node i has `keys[i]`).
    pub fn new(ledger: Ledger, keys: Vec<Keypair>, net: Network) -> Runtime {
        let accounts = keys.iter().map(Keypair::account).collect();
        Runtime {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net,
            ledger,
            keys,
            accounts,
            mempool: Vec::new(),
            rejected: BTreeMap::new(),
            invariant_failures: Vec::new(),
            events: Vec::new(),
            state_hash: None,
        }
    }

    /// Schedules `ev` at virtual time `at`.
    pub fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Sets a timer `after` ms from now.
    pub fn timer(&mut self, node: NodeId, after: u64, timer: Timer) {
        self.at(self.now + after, Ev::Timer { node, timer });
    }

    /// Sends a message over the simulated link (it may be lost).
    pub fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        if let Some(d) = self.net.transit(from, to) {
            self.at(self.now + d, Ev::Deliver { from, to, msg });
        }
    }

    /// Submits a transaction to the sequencer. Clients retry until it arrives, so only the
    /// latency is simulated; a crashed node submits nothing.
    pub fn submit(&mut self, from: NodeId, body: TxBody) {
        if !self.net.is_up(from) {
            return;
        }
        let d = self.net.spec.max_latency_ms;
        self.at(self.now + d, Ev::TxArrive { from, body });
    }

    /// The next event, advancing the clock; `None` past `end`.
    pub fn pop(&mut self, end: u64) -> Option<Ev> {
        let top = self.queue.peek()?;
        if top.at > end {
            return None;
        }
        let item = self.queue.pop()?;
        self.now = item.at;
        Some(item.ev)
    }

    /// The next event, without taking it; `None` past `end`.
    pub fn peek(&self, end: u64) -> Option<&Ev> {
        self.queue
            .peek()
            .filter(|top| top.at <= end)
            .map(|top| &top.ev)
    }

    pub(crate) fn arrive(&mut self, from: NodeId, body: TxBody) {
        self.mempool.push((from, body));
    }

    /// The sequencer's step, first half: the block's pending transactions, each signed with
    /// its sender's key and the nonce the sender expects, for [`agora_ledger::tx::verify_batch`].
    pub fn sign_block(&mut self) -> PendingBlock {
        let ctx = self.ledger.next_ctx();
        let mut txs = std::mem::take(&mut self.mempool);
        if ctx.height.is_multiple_of(EPOCH_BLOCKS) {
            txs.insert(0, (0, TxBody::AdvanceEpoch));
        }
        let chain_id = self.ledger.state.chain_id;
        let mut next: BTreeMap<AccountId, u64> = BTreeMap::new();
        let mut signed = Vec::with_capacity(txs.len());
        let mut senders = Vec::with_capacity(txs.len());
        for (node, body) in txs {
            let Some(key) = self.keys.get(node) else {
                continue;
            };
            let from = key.account();
            let nonce = next
                .entry(from)
                .or_insert_with(|| self.ledger.state.account(&from).map_or(0, |a| a.nonce));
            signed.push(
                Tx {
                    chain_id,
                    from,
                    nonce: *nonce,
                    body,
                }
                .sign(key),
            );
            *nonce += 1;
            senders.push(node);
        }
        PendingBlock {
            ctx,
            signed,
            senders,
        }
    }

    /// The sequencer's step, second half: applies through the real state machine each
    /// transaction whose signatures `checked` (the verdicts of [`agora_ledger::tx::verify_batch`] on
    /// `block.signed`, in order) accepted, seals the block, and checks the ledger's
    /// conservation invariant. Returns the block's events.
    pub fn apply_block(
        &mut self,
        block: PendingBlock,
        checked: Vec<Result<VerifiedTx, TxError>>,
    ) -> Vec<Event> {
        let PendingBlock {
            ctx,
            signed,
            senders,
        } = block;
        let chain_id = self.ledger.state.chain_id;
        let mut ids = Vec::with_capacity(signed.len());
        let mut events = Vec::new();
        for (node, (checked, stx)) in senders.into_iter().zip(checked.into_iter().zip(signed)) {
            let mut applied =
                checked.and_then(|v| Ok((v.id(), self.ledger.state.apply_verified(&v, &ctx)?)));
            if let Err(TxError::FutureNonce { expected, .. }) = applied {
                // An earlier transaction of this sender was refused: re-sign, as its client would.
                let stx = Tx {
                    nonce: expected,
                    ..stx.tx
                }
                .sign(&self.keys[node]);
                applied = stx
                    .verify()
                    .and_then(|v| Ok((v.id(), self.ledger.state.apply_verified(&v, &ctx)?)));
            }
            match applied {
                Ok((id, ev)) => {
                    ids.push(id);
                    events.extend(ev);
                }
                Err(e) => {
                    let name = format!("{e:?}");
                    let kind = name.split([' ', '{', '(']).next().unwrap_or("").to_string();
                    *self.rejected.entry(kind).or_insert(0) += 1;
                }
            }
        }
        // A block that applied nothing left the state as it was (a refused transaction
        // changes nothing): its state hash is the last one, and the invariants still hold.
        let state_hash = match self.state_hash {
            Some(h) if ids.is_empty() => h,
            _ => {
                if let Err(e) = self.ledger.state.check_invariants() {
                    self.invariant_failures
                        .push(format!("block {}: {e}", ctx.height));
                }
                self.ledger.state.hash()
            }
        };
        self.state_hash = Some(state_hash);
        let header = BlockHeader {
            chain_id,
            height: ctx.height,
            parent: ctx.parent,
            tx_root: tx_root(&ids),
            state_hash,
            timestamp_ms: self.now,
        };
        self.ledger.height = ctx.height;
        self.ledger.tip = header.hash();
        self.events.extend(events.iter().cloned());
        events
    }

    /// Whether the next event is the sequencer's block (and no later than `end`).
    pub fn block_next(&self, end: u64) -> bool {
        self.queue
            .peek()
            .is_some_and(|top| top.at <= end && matches!(top.ev, Ev::Block))
    }

    /// A per-run stream of randomness for one purpose.
    pub fn rng(seed: u64, name: &str) -> Rng {
        Rng::new(seed, name)
    }
}
