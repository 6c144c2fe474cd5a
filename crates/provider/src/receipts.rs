//! The provider's durable receipt log: every answer's audit material, batched under one
//! Merkle root per epoch (posted on settlement), kept so verifiers can fetch any leaf with
//! its proof. Roots and paths are in the settlement's own tree: BLAKE3 over the receipts'
//! hashes on the ledger, keccak over their `ReceiptLeaf`s on a chain (what its contract and
//! verifiers check). Leaves are in strictly increasing request id order, one receipt per request,
//! so an auditor shown a leaf and the next one knows no receipt is counted twice.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use agora_core::{merkle, Hash32};
use agora_net::protocol::{Material, NextLeaf, RequestId, SignedReceipt};
use agora_settlement::network::SettlementKind;
use agora_settlement::role_provider::ProviderSettlement;
use borsh::BorshDeserialize;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
const POSTED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("posted");
const LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("leaves");
/// Per posted epoch, the receipts in leaf order (a chain's tree is over more than the hashes).
const LEAF_RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("leaf_receipts");

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database failed.
    #[error("receipt log: {0}")]
    Db(String),
}

fn db_err<E: std::fmt::Display>(e: E) -> LogError {
    LogError::Db(e.to_string())
}

/// A batch ready to post: its root, size, and the pending keys it covers.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Merkle root of the receipt hashes, in order.
    pub root: Hash32,
    /// The receipt hashes (the leaves).
    pub leaves: Vec<Hash32>,
    /// The receipts, in leaf order.
    pub receipts: Vec<SignedReceipt>,
    /// The pending keys, in leaf order.
    keys: Vec<u64>,
    /// Pending keys of receipts for a request already in the batch: dropped, not posted.
    dropped: Vec<u64>,
    /// The earliest epoch a receipt in the batch names.
    pub oldest_epoch: u64,
}

/// The leaves of a root from the answers waiting for it, given their request ids in the order
/// they were recorded: in strictly increasing request id order, the first answer recorded for
/// a request id kept. Returns the positions kept, in leaf order, and the positions dropped.
/// Pure, so the deterministic simulation builds its roots with it too.
pub fn leaf_order(request_ids: &[RequestId]) -> (Vec<usize>, Vec<usize>) {
    let mut by_request: BTreeMap<RequestId, usize> = BTreeMap::new();
    let mut dropped = vec![];
    for (i, id) in request_ids.iter().enumerate() {
        match by_request.entry(*id) {
            std::collections::btree_map::Entry::Occupied(_) => dropped.push(i),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    (by_request.into_values().collect(), dropped)
}

/// Trees of recent epochs kept built, so an audit request costs a lookup, not a rebuild.
const CACHED_TREES: usize = 8;

/// One posted root's tree, kept built.
enum EpochTree {
    /// The ledger's: BLAKE3 over the receipt hashes.
    Blake3(merkle::Tree),
    /// A chain's, computed by its settlement from the receipts.
    Receipts(Vec<SignedReceipt>),
}

/// Receipts and their material, durable in redb.
pub struct ReceiptLog {
    db: Database,
    next: Mutex<u64>,
    trees: Mutex<HashMap<u64, Arc<EpochTree>>>,
    /// Whose tree roots and paths are in (`None`: the ledger's BLAKE3 tree).
    settlement: Option<Arc<dyn ProviderSettlement>>,
}

impl ReceiptLog {
    /// Opens (or creates) the log at `path`, its roots in the ledger's BLAKE3 tree.
    pub fn open(path: &Path) -> Result<ReceiptLog, LogError> {
        ReceiptLog::open_with(path, None)
    }

    /// Opens (or creates) the log at `path`, its roots and paths in `settlement`'s tree.
    pub fn open_on(
        path: &Path,
        settlement: Arc<dyn ProviderSettlement>,
    ) -> Result<ReceiptLog, LogError> {
        ReceiptLog::open_with(path, Some(settlement))
    }

    fn open_with(
        path: &Path,
        settlement: Option<Arc<dyn ProviderSettlement>>,
    ) -> Result<ReceiptLog, LogError> {
        let db = Database::create(path).map_err(db_err)?;
        let w = db.begin_write().map_err(db_err)?;
        let next = {
            let pending = w.open_table(PENDING).map_err(db_err)?;
            let _ = w.open_table(POSTED).map_err(db_err)?;
            let _ = w.open_table(LEAVES).map_err(db_err)?;
            let _ = w.open_table(LEAF_RECEIPTS).map_err(db_err)?;
            let last = pending.last().map_err(db_err)?.map(|(k, _)| k.value());
            last.map_or(0, |k| k + 1)
        };
        w.commit().map_err(db_err)?;
        Ok(ReceiptLog {
            db,
            next: Mutex::new(next),
            trees: Mutex::default(),
            settlement,
        })
    }

    /// The settlement whose tree this log builds, if not the ledger's default.
    pub fn settlement(&self) -> Option<&Arc<dyn ProviderSettlement>> {
        self.settlement.as_ref()
    }

    /// Whether paths are in a chain's tree (over the receipts, not only their hashes).
    fn chain_tree(&self) -> bool {
        self.settlement
            .as_ref()
            .is_some_and(|s| s.kind() != SettlementKind::Ledger)
    }

    /// The root over `receipts` (leaf order) in this log's tree.
    pub fn root_of(&self, receipts: &[SignedReceipt]) -> Hash32 {
        match &self.settlement {
            Some(s) => s.receipt_root_of(receipts),
            None => merkle::root(&receipts.iter().map(SignedReceipt::hash).collect::<Vec<_>>()),
        }
    }

    /// The chain's commitment to a receipt served (`None` on the ledger).
    pub fn chain_receipt_sig(&self, receipt: &SignedReceipt) -> Option<Vec<u8>> {
        self.settlement.as_ref()?.chain_receipt_sig(receipt)
    }

    fn path(&self, tree: &EpochTree, index: u64) -> Option<Vec<Hash32>> {
        let i = usize::try_from(index).ok()?;
        match tree {
            EpochTree::Blake3(t) => t.proof(i),
            EpochTree::Receipts(receipts) => {
                self.settlement.as_ref()?.receipt_proof_of(receipts, i)
            }
        }
    }

    /// Records one answer's material durably, waiting for the next root.
    pub fn record(&self, material: &Material) -> Result<(), LogError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = borsh::to_vec(material).map_err(db_err)?;
        let w = self.db.begin_write().map_err(db_err)?;
        w.open_table(PENDING)
            .map_err(db_err)?
            .insert(*next, bytes.as_slice())
            .map_err(db_err)?;
        w.commit().map_err(db_err)?;
        *next += 1;
        Ok(())
    }

    /// The receipts waiting for a root, as a batch (None when there are none).
    pub fn pending_batch(&self) -> Result<Option<Batch>, LogError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(PENDING).map_err(db_err)?;
        let mut rows = vec![];
        let mut oldest_epoch = u64::MAX;
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let m = Material::try_from_slice(v.value()).map_err(db_err)?;
            oldest_epoch = oldest_epoch.min(m.receipt.receipt.epoch);
            rows.push((k.value(), m.receipt.receipt.request_id, m.receipt));
        }
        let ids: Vec<RequestId> = rows.iter().map(|r| r.1).collect();
        let (kept, dropped) = leaf_order(&ids);
        if kept.is_empty() {
            return Ok(None);
        }
        let (keys, receipts): (Vec<u64>, Vec<SignedReceipt>) =
            kept.iter().map(|&i| (rows[i].0, rows[i].2.clone())).unzip();
        let leaves: Vec<Hash32> = receipts.iter().map(SignedReceipt::hash).collect();
        Ok(Some(Batch {
            root: self.root_of(&receipts),
            leaves,
            receipts,
            keys,
            dropped: dropped.iter().map(|&i| rows[i].0).collect(),
            oldest_epoch,
        }))
    }

    /// After the batch's root was accepted for `epoch`: file its material under the epoch.
    pub fn mark_posted(&self, batch: &Batch, epoch: u64) -> Result<(), LogError> {
        let w = self.db.begin_write().map_err(db_err)?;
        {
            let mut pending = w.open_table(PENDING).map_err(db_err)?;
            let mut posted = w.open_table(POSTED).map_err(db_err)?;
            for (i, k) in batch.keys.iter().enumerate() {
                let bytes = pending
                    .remove(*k)
                    .map_err(db_err)?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| LogError::Db(format!("pending receipt {k} vanished")))?;
                posted
                    .insert((epoch, i as u64), bytes.as_slice())
                    .map_err(db_err)?;
            }
            for k in &batch.dropped {
                pending.remove(*k).map_err(db_err)?;
            }
            let leaves = borsh::to_vec(&batch.leaves).map_err(db_err)?;
            w.open_table(LEAVES)
                .map_err(db_err)?
                .insert(epoch, leaves.as_slice())
                .map_err(db_err)?;
            if self.chain_tree() {
                let receipts = borsh::to_vec(&batch.receipts).map_err(db_err)?;
                w.open_table(LEAF_RECEIPTS)
                    .map_err(db_err)?
                    .insert(epoch, receipts.as_slice())
                    .map_err(db_err)?;
            }
        }
        w.commit().map_err(db_err)
    }

    /// The tree of `epoch`'s root, built once and kept for the next requests.
    fn tree(
        &self,
        r: &redb::ReadTransaction,
        epoch: u64,
    ) -> Result<Option<Arc<EpochTree>>, LogError> {
        if let Some(t) = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&epoch)
        {
            return Ok(Some(t.clone()));
        }
        let tree = if self.chain_tree() {
            let Some(receipts) = r
                .open_table(LEAF_RECEIPTS)
                .map_err(db_err)?
                .get(epoch)
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            EpochTree::Receipts(
                Vec::<SignedReceipt>::try_from_slice(receipts.value()).map_err(db_err)?,
            )
        } else {
            let Some(leaves) = r
                .open_table(LEAVES)
                .map_err(db_err)?
                .get(epoch)
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let leaves = Vec::<Hash32>::try_from_slice(leaves.value()).map_err(db_err)?;
            EpochTree::Blake3(merkle::Tree::new(&leaves))
        };
        let tree = Arc::new(tree);
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        if trees.len() >= CACHED_TREES {
            if let Some(oldest) = trees.keys().min().copied() {
                trees.remove(&oldest);
            }
        }
        trees.insert(epoch, tree.clone());
        Ok(Some(tree))
    }

    /// The material of leaf `index` under the root of `epoch`, with its Merkle path and the
    /// next leaf's receipt and path (`None` for the last leaf).
    #[allow(clippy::type_complexity)]
    pub fn material(
        &self,
        epoch: u64,
        index: u64,
    ) -> Result<Option<(Material, Vec<Hash32>, Option<NextLeaf>)>, LogError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let Some(tree) = self.tree(&r, epoch)? else {
            return Ok(None);
        };
        let posted = r.open_table(POSTED).map_err(db_err)?;
        let Some(bytes) = posted.get((epoch, index)).map_err(db_err)? else {
            return Ok(None);
        };
        let material = Material::try_from_slice(bytes.value()).map_err(db_err)?;
        let Some(proof) = self.path(&tree, index) else {
            return Ok(None);
        };
        let next = match index.checked_add(1) {
            Some(n) => match posted.get((epoch, n)).map_err(db_err)? {
                Some(bytes) => {
                    let m = Material::try_from_slice(bytes.value()).map_err(db_err)?;
                    let proof = self
                        .path(&tree, n)
                        .ok_or_else(|| LogError::Db(format!("leaf {n} has no path")))?;
                    Some(NextLeaf {
                        receipt: m.receipt,
                        proof,
                    })
                }
                None => None,
            },
            None => None,
        };
        Ok(Some((material, proof, next)))
    }
}

impl ReceiptLog {
    /// Where a posted receipt sits: the epoch of its root, its leaf index and its Merkle path.
    /// Newest roots first (a challenged receipt is under a recent one); `None` if no posted
    /// root holds it.
    pub fn locate(&self, receipt: &Hash32) -> Result<Option<(u64, u64, Vec<Hash32>)>, LogError> {
        self.locate_between(receipt, 0, u64::MAX)
    }

    /// [`ReceiptLog::locate`] among the roots of epochs `from ..= to` only.
    pub fn locate_between(
        &self,
        receipt: &Hash32,
        from: u64,
        to: u64,
    ) -> Result<Option<(u64, u64, Vec<Hash32>)>, LogError> {
        let r = self.db.begin_read().map_err(db_err)?;
        let t = r.open_table(LEAVES).map_err(db_err)?;
        for row in t.range(from..=to).map_err(db_err)?.rev() {
            let (epoch, leaves) = row.map_err(db_err)?;
            let leaves = Vec::<Hash32>::try_from_slice(leaves.value()).map_err(db_err)?;
            let Some(index) = leaves.iter().position(|l| l == receipt) else {
                continue;
            };
            let Some(tree) = self.tree(&r, epoch.value())? else {
                continue;
            };
            let Some(proof) = self.path(&tree, index as u64) else {
                continue;
            };
            return Ok(Some((epoch.value(), index as u64, proof)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::leaf_order;

    #[test]
    fn leaves_go_in_request_id_order_and_a_repeated_request_is_dropped() {
        // A provider that recorded one request twice must not post it twice: the verifier's
        // order check would fail the root.
        let ids = [[5u8; 16], [1; 16], [5; 16], [3; 16]];
        let (kept, dropped) = leaf_order(&ids);
        assert_eq!(kept, vec![1, 3, 0]);
        assert_eq!(dropped, vec![2]);
        assert_eq!(leaf_order(&[]), (vec![], vec![]));
    }
}
