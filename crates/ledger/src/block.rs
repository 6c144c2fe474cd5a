//! Blocks and the chain executor: a hash-chained log of transactions over [`State`].

use crate::error::{BlockError, GenesisError, TxError};
use crate::genesis::Genesis;
use crate::state::{BlockCtx, Event, State};
use crate::tx::{SignedTx, VerifiedTx};
use agora_core::{codec, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

const BLOCK_DOMAIN: &[u8] = b"agora/ledger/block/v1";
const TX_ROOT_DOMAIN: &[u8] = b"agora/ledger/txroot/v1";

/// The most transactions one block may hold.
pub const MAX_BLOCK_TXS: usize = 65_536;

/// A block header. Its hash chains the log: each header names its parent's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct BlockHeader {
    /// The chain.
    pub chain_id: u64,
    /// 1 for the first block after genesis.
    pub height: u64,
    /// The parent block's hash (the genesis hash for height 1).
    pub parent: Hash32,
    /// Hash of the ordered transaction ids.
    pub tx_root: Hash32,
    /// The state hash after applying the block.
    pub state_hash: Hash32,
    /// Sequencer wall-clock time in ms since the Unix epoch; informational, not used by rules.
    pub timestamp_ms: u64,
}

impl BlockHeader {
    /// The block hash.
    pub fn hash(&self) -> Hash32 {
        codec::hash(BLOCK_DOMAIN, self)
    }
}

/// A block: a header and the transactions it orders, all of which the rules accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The transactions, in order.
    pub txs: Vec<SignedTx>,
}

/// The hash committing to an ordered list of transaction ids.
pub fn tx_root(ids: &[Hash32]) -> Hash32 {
    codec::hash(TX_ROOT_DOMAIN, ids)
}

/// The outcome of each transaction offered to [`Ledger::build_block`], in offer order.
pub type Outcomes = Vec<(Hash32, Result<Vec<Event>, TxError>)>;

/// The chain: state plus the tip of the block log.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Ledger {
    /// The settlement state.
    pub state: State,
    /// Height of the last applied block (0: genesis).
    pub height: u64,
    /// Hash of the last applied block (the genesis hash at height 0).
    pub tip: Hash32,
    /// The genesis hash.
    pub genesis_hash: Hash32,
}

impl Ledger {
    /// The chain at genesis.
    pub fn from_genesis(g: &Genesis) -> Result<Ledger, GenesisError> {
        let h = g.hash();
        Ok(Ledger {
            state: State::from_genesis(g)?,
            height: 0,
            tip: h,
            genesis_hash: h,
        })
    }

    /// The context for transactions of the next block.
    pub fn next_ctx(&self) -> BlockCtx {
        BlockCtx {
            height: self.height + 1,
            parent: self.tip,
        }
    }

    /// The sequencer's step: applies each verified transaction in order, keeps the accepted
    /// ones, and seals them into the next block. Rejected ones change nothing and are reported.
    pub fn build_block(&mut self, txs: Vec<VerifiedTx>, timestamp_ms: u64) -> (Block, Outcomes) {
        let ctx = self.next_ctx();
        let mut accepted = Vec::with_capacity(txs.len());
        let mut ids = Vec::with_capacity(txs.len());
        let mut outcomes = Vec::with_capacity(txs.len());
        for vtx in txs.into_iter().take(MAX_BLOCK_TXS) {
            let id = vtx.id();
            let r = self.state.apply_verified(&vtx, &ctx);
            if r.is_ok() {
                ids.push(id);
                accepted.push(vtx.into_signed());
            }
            outcomes.push((id, r));
        }
        let header = BlockHeader {
            chain_id: self.state.chain_id,
            height: ctx.height,
            parent: ctx.parent,
            tx_root: tx_root(&ids),
            state_hash: self.state.hash(),
            timestamp_ms,
        };
        self.height = ctx.height;
        self.tip = header.hash();
        (
            Block {
                header,
                txs: accepted,
            },
            outcomes,
        )
    }

    /// Replays a block from the log: every transaction must verify and apply, and the
    /// resulting state hash must match the header. On `Err` this ledger must be discarded.
    pub fn apply_block(&mut self, block: &Block) -> Result<Vec<Vec<Event>>, BlockError> {
        let h = &block.header;
        if h.chain_id != self.state.chain_id {
            return Err(BlockError::WrongChain {
                expected: self.state.chain_id,
                got: h.chain_id,
            });
        }
        let ctx = self.next_ctx();
        if h.height != ctx.height {
            return Err(BlockError::WrongHeight {
                expected: ctx.height,
                got: h.height,
            });
        }
        if h.parent != ctx.parent {
            return Err(BlockError::WrongParent { height: h.height });
        }
        if block.txs.len() > MAX_BLOCK_TXS {
            return Err(BlockError::TooManyTxs {
                height: h.height,
                count: block.txs.len(),
                limit: MAX_BLOCK_TXS,
            });
        }
        let verified = verify_all(block.txs.clone());
        let mut ids = Vec::with_capacity(verified.len());
        let mut events = Vec::with_capacity(verified.len());
        for (index, v) in verified.into_iter().enumerate() {
            let bad = |source| BlockError::BadTx {
                height: h.height,
                index,
                source,
            };
            let v = v.map_err(bad)?;
            ids.push(v.id());
            events.push(self.state.apply_verified(&v, &ctx).map_err(bad)?);
        }
        if tx_root(&ids) != h.tx_root {
            return Err(BlockError::TxRootMismatch { height: h.height });
        }
        let replay = self.state.hash();
        if replay != h.state_hash {
            return Err(BlockError::StateHashMismatch {
                height: h.height,
                header: h.state_hash,
                replay,
            });
        }
        self.height = h.height;
        self.tip = h.hash();
        Ok(events)
    }
}

/// Transactions per batch verification: large enough for a fast multi-scalar multiplication,
/// small enough that one bad signature only sends its own batch to single checks.
const VERIFY_BATCH: usize = 256;

/// Verifies signatures of many transactions in batches on all cores, preserving order.
pub fn verify_all(txs: Vec<SignedTx>) -> Vec<Result<VerifiedTx, TxError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batches = |v: Vec<SignedTx>| {
        let mut out = Vec::with_capacity(v.len());
        let mut it = v.into_iter().peekable();
        while it.peek().is_some() {
            out.extend(crate::tx::verify_batch(
                it.by_ref().take(VERIFY_BATCH).collect(),
            ));
        }
        out
    };
    if threads <= 1 || txs.len() < VERIFY_BATCH / 2 {
        return batches(txs);
    }
    let chunk = txs.len().div_ceil(threads);
    let mut parts: Vec<Vec<SignedTx>> = Vec::with_capacity(threads);
    let mut it = txs.into_iter();
    loop {
        let part: Vec<SignedTx> = it.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| s.spawn(move || batches(p)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}
