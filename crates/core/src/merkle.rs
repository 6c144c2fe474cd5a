//! Binary BLAKE3 Merkle trees over 32-byte leaves, as used for receipt roots.
//!
//! Leaves are hashed under a leaf domain, inner nodes under a node domain (so a leaf can never
//! pass for a node), and the leaf level is padded with [`Hash32::ZERO`] to a power of two.

use crate::{codec, Hash32};

const LEAF: &[u8] = b"agora/merkle/leaf/v1";
const NODE: &[u8] = b"agora/merkle/node/v1";
/// The deepest proof accepted: trees of at most 2^32 leaves.
pub const MAX_DEPTH: usize = 32;

fn leaf(h: &Hash32) -> Hash32 {
    codec::hash(LEAF, h)
}

fn node(l: &Hash32, r: &Hash32) -> Hash32 {
    codec::hash(NODE, &(l, r))
}

fn level0(leaves: &[Hash32]) -> Vec<Hash32> {
    let n = leaves.len().max(1).next_power_of_two();
    let mut v: Vec<Hash32> = leaves.iter().map(leaf).collect();
    v.resize(n, Hash32::ZERO);
    v
}

/// The root of `leaves` (the root of no leaves is the root of one padding leaf).
pub fn root(leaves: &[Hash32]) -> Hash32 {
    let mut level = level0(leaves);
    while level.len() > 1 {
        level = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
    }
    level[0]
}

/// The sibling path of leaf `index`, bottom up; `None` when `index` is out of range.
pub fn proof(leaves: &[Hash32], index: usize) -> Option<Vec<Hash32>> {
    if index >= leaves.len() {
        return None;
    }
    let mut level = level0(leaves);
    let mut i = index;
    let mut path = Vec::new();
    while level.len() > 1 {
        path.push(level[i ^ 1]);
        level = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        i /= 2;
    }
    Some(path)
}

/// A tree built once, for many proofs of the same leaves (a proof from [`proof`] rebuilds
/// the tree each time).
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash32>>,
    leaves: usize,
}

impl Tree {
    /// Builds the tree of `leaves`.
    pub fn new(leaves: &[Hash32]) -> Tree {
        let mut levels = vec![level0(leaves)];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let next = top.chunks(2).map(|p| node(&p[0], &p[1])).collect();
            levels.push(next);
        }
        Tree {
            levels,
            leaves: leaves.len(),
        }
    }

    /// The root, as [`root`] computes it.
    pub fn root(&self) -> Hash32 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or(Hash32::ZERO)
    }

    /// The path of leaf `index`, as [`proof`] computes it.
    pub fn proof(&self, index: usize) -> Option<Vec<Hash32>> {
        if index >= self.leaves {
            return None;
        }
        let mut i = index;
        let mut path = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            path.push(*level.get(i ^ 1)?);
            i /= 2;
        }
        Some(path)
    }
}

/// True when `path` proves that `item` is leaf `index` of the tree with root `root`.
pub fn verify(root: &Hash32, item: &Hash32, index: u64, path: &[Hash32]) -> bool {
    if path.len() > MAX_DEPTH || (path.len() < 64 && index >> path.len() != 0) {
        return false;
    }
    let mut h = leaf(item);
    for (depth, sib) in path.iter().enumerate() {
        h = if (index >> depth) & 1 == 0 {
            node(&h, sib)
        } else {
            node(sib, &h)
        };
    }
    h == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_and_nothing_else_does() {
        for n in 1..9usize {
            let leaves: Vec<Hash32> = (0..n as u8).map(|i| Hash32::of(&[i])).collect();
            let r = root(&leaves);
            let tree = Tree::new(&leaves);
            assert_eq!(tree.root(), r);
            assert!(tree.proof(n).is_none());
            for i in 0..n {
                let p = proof(&leaves, i).unwrap_or_default();
                assert_eq!(tree.proof(i), Some(p.clone()));
                assert!(verify(&r, &leaves[i], i as u64, &p), "n={n} i={i}");
                assert!(!verify(&r, &Hash32::of(b"x"), i as u64, &p));
                assert!(!verify(&r, &leaves[i], (i as u64) ^ 1 | 64, &p));
            }
            assert!(proof(&leaves, n).is_none());
        }
    }
}
