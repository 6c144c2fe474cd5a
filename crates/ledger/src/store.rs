//! The durable store: a redb database holding the genesis, the hash-chained block log, each
//! block's events, a transaction index and periodic state snapshots.
//!
//! Each block is written in one redb write transaction with the default `Immediate`
//! durability, so once [`Store::commit`] returns the block is on disk and survives `kill -9`
//! or power loss; a crash mid-commit leaves the previous block as the tip. On open, the latest
//! snapshot is loaded and every later block is replayed and checked against its header's
//! state hash.

use crate::block::{Block, Ledger};
use crate::error::StoreError;
use crate::genesis::Genesis;
use crate::state::Event;
use agora_core::{codec, Hash32};
use borsh::{BorshDeserialize, BorshSerialize};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TX_INDEX: TableDefinition<&[u8], u64> = TableDefinition::new("tx_index");

const GENESIS_KEY: &str = "genesis";
const SNAPSHOT_KEY: &str = "snapshot";

/// The events of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct TxEvents {
    /// The transaction id.
    pub tx_id: Hash32,
    /// What it did.
    pub events: Vec<Event>,
}

/// The events of one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct BlockEvents {
    /// The block height.
    pub height: u64,
    /// The block hash.
    pub block_hash: Hash32,
    /// Per transaction, in block order.
    pub txs: Vec<TxEvents>,
}

fn decode<T: BorshDeserialize>(what: impl Into<String>, bytes: &[u8]) -> Result<T, StoreError> {
    borsh::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    })
}

/// The durable store. Writes come from one sequencer; reads may run concurrently.
pub struct Store {
    db: Database,
    snapshot_every: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("snapshot_every", &self.snapshot_every)
            .finish()
    }
}

impl Store {
    /// Opens (or creates with `genesis`) the database at `path`, and recovers the ledger:
    /// the latest snapshot plus a checked replay of every later block.
    pub fn open(path: &Path, genesis: Option<&Genesis>) -> Result<(Store, Ledger), StoreError> {
        let db = Database::create(path).map_err(StoreError::db)?;
        let store = Store {
            db,
            snapshot_every: 64,
        };
        let stored = store.genesis_opt()?;
        let genesis = match (stored, genesis) {
            (Some(s), Some(g)) if s.hash() != g.hash() => {
                return Err(StoreError::GenesisMismatch {
                    stored: s.hash(),
                    given: g.hash(),
                })
            }
            (Some(s), _) => s,
            (None, Some(g)) => {
                g.validate()?;
                let w = store.db.begin_write().map_err(StoreError::db)?;
                {
                    let mut meta = w.open_table(META).map_err(StoreError::db)?;
                    meta.insert(GENESIS_KEY, codec::encode(g).as_slice())
                        .map_err(StoreError::db)?;
                    w.open_table(BLOCKS).map_err(StoreError::db)?;
                    w.open_table(EVENTS).map_err(StoreError::db)?;
                    w.open_table(TX_INDEX).map_err(StoreError::db)?;
                }
                w.commit().map_err(StoreError::db)?;
                g.clone()
            }
            (None, None) => return Err(StoreError::NoGenesis),
        };
        let mut ledger = match store.meta(SNAPSHOT_KEY)? {
            Some(bytes) => decode::<Ledger>("snapshot", &bytes)?,
            None => Ledger::from_genesis(&genesis)?,
        };
        if ledger.genesis_hash != genesis.hash() {
            return Err(StoreError::Corrupt {
                what: "snapshot".into(),
                detail: "genesis hash differs".into(),
            });
        }
        let tip = store.tip_height()?;
        for h in ledger.height + 1..=tip {
            let block = store.block(h)?.ok_or(StoreError::Corrupt {
                what: format!("block {h}"),
                detail: "missing".into(),
            })?;
            ledger.apply_block(&block)?;
        }
        tracing::info!(height = ledger.height, state = %ledger.state.hash(), "ledger store opened");
        Ok((store, ledger))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = match r.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StoreError::db(e)),
        };
        Ok(t.get(key)
            .map_err(StoreError::db)?
            .map(|v| v.value().to_vec()))
    }

    fn genesis_opt(&self) -> Result<Option<Genesis>, StoreError> {
        self.meta(GENESIS_KEY)?
            .map(|b| decode("genesis", &b))
            .transpose()
    }

    /// The genesis this store was created with.
    pub fn genesis(&self) -> Result<Genesis, StoreError> {
        self.genesis_opt()?.ok_or(StoreError::NoGenesis)
    }

    /// Height of the last committed block (0 when none).
    pub fn tip_height(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = r.open_table(BLOCKS).map_err(StoreError::db)?;
        let last = t
            .last()
            .map_err(StoreError::db)?
            .map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Durably commits `block` with its events; `after` is the ledger after the block (a
    /// snapshot of it is stored every few blocks). Atomic: all of it or none of it.
    pub fn commit(
        &self,
        block: &Block,
        events: &[TxEvents],
        after: &Ledger,
    ) -> Result<(), StoreError> {
        let h = block.header.height;
        let w = self.db.begin_write().map_err(StoreError::db)?;
        {
            let mut blocks = w.open_table(BLOCKS).map_err(StoreError::db)?;
            blocks
                .insert(h, codec::encode(block).as_slice())
                .map_err(StoreError::db)?;
            let be = BlockEvents {
                height: h,
                block_hash: block.header.hash(),
                txs: events.to_vec(),
            };
            let mut ev = w.open_table(EVENTS).map_err(StoreError::db)?;
            ev.insert(h, codec::encode(&be).as_slice())
                .map_err(StoreError::db)?;
            let mut idx = w.open_table(TX_INDEX).map_err(StoreError::db)?;
            for e in events {
                idx.insert(e.tx_id.as_bytes().as_slice(), h)
                    .map_err(StoreError::db)?;
            }
            if h.is_multiple_of(self.snapshot_every) {
                let mut meta = w.open_table(META).map_err(StoreError::db)?;
                meta.insert(SNAPSHOT_KEY, codec::encode(after).as_slice())
                    .map_err(StoreError::db)?;
            }
        }
        w.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = r.open_table(BLOCKS).map_err(StoreError::db)?;
        let v = t.get(height).map_err(StoreError::db)?;
        v.map(|v| decode(format!("block {height}"), v.value()))
            .transpose()
    }

    /// Up to `limit` blocks from `from` on.
    pub fn blocks(&self, from: u64, limit: usize) -> Result<Vec<Block>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = r.open_table(BLOCKS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for item in t.range(from..).map_err(StoreError::db)?.take(limit) {
            let (k, v) = item.map_err(StoreError::db)?;
            out.push(decode(format!("block {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Events of up to `limit` blocks from `from` on.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<BlockEvents>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = r.open_table(EVENTS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for item in t.range(from..).map_err(StoreError::db)?.take(limit) {
            let (k, v) = item.map_err(StoreError::db)?;
            out.push(decode(format!("events {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// The height of the block that holds transaction `id`.
    pub fn tx_height(&self, id: &Hash32) -> Result<Option<u64>, StoreError> {
        let r = self.db.begin_read().map_err(StoreError::db)?;
        let t = r.open_table(TX_INDEX).map_err(StoreError::db)?;
        Ok(t.get(id.as_bytes().as_slice())
            .map_err(StoreError::db)?
            .map(|v| v.value()))
    }

    /// Rebuilds the ledger from genesis by replaying the whole log (every signature and state
    /// hash checked), and compares it with `current`.
    pub fn rebuild_and_check(&self, current: &Ledger) -> Result<Ledger, StoreError> {
        let mut ledger = Ledger::from_genesis(&self.genesis()?)?;
        let tip = self.tip_height()?;
        let mut from = 1;
        while from <= tip {
            let batch = self.blocks(from, 256)?;
            if batch.is_empty() {
                break;
            }
            for b in &batch {
                ledger.apply_block(b)?;
            }
            from = ledger.height + 1;
        }
        let (stored, rebuilt) = (current.state.hash(), ledger.state.hash());
        if ledger.height != current.height || stored != rebuilt || ledger.tip != current.tip {
            return Err(StoreError::RebuildMismatch {
                height: ledger.height,
                stored,
                rebuilt,
            });
        }
        Ok(ledger)
    }
}
