//! Receipt roots the chain can check: a keccak Merkle tree over receipt leaves, each leaf
//! binding the BLAKE3 hash of a provider-signed receipt to the channel and cost it names.
//!
//! The chain cannot check BLAKE3 or ed25519 cheaply, so a root on the EVM settlement is not
//! `agora_core::merkle`'s BLAKE3 root of receipt hashes but this tree, of the same shape
//! (leaves padded with zero to a power of two, index-ordered paths) with keccak and leaves
//! `keccak(0x00 || receipt hash || channel || cost as uint256)`, nodes
//! `keccak(0x01 || left || right)`. The provider posts it, so the provider itself commits to
//! each receipt's channel and cost: a verdict that names another channel or cost does not
//! reach the root (`BadReceiptProof`). That the leaf's fields are the ones inside the signed
//! receipt is checked off chain by the assigned verifier and by the confirmer, who both hold
//! the signed receipt: a leaf whose fields differ from its receipt fails the audit.

use agora_wire::protocol::SignedReceipt;
use alloy::primitives::{keccak256, B256, U256};

/// What one leaf of an EVM receipt root commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiptLeaf {
    /// BLAKE3 hash of the provider-signed receipt (`SignedReceipt::hash`).
    pub receipt: B256,
    /// The settlement channel the receipt names (its refund goes to that channel's payer).
    pub channel: B256,
    /// The receipt's cost in whole base units (`micros_to_amount(cost_micros)`).
    pub cost: u128,
}

impl ReceiptLeaf {
    /// The leaf of a signed receipt: its hash, its channel, its cost.
    pub fn of(receipt: &SignedReceipt) -> ReceiptLeaf {
        ReceiptLeaf {
            receipt: B256::from(*receipt.hash().as_bytes()),
            channel: B256::from(*receipt.receipt.channel.as_bytes()),
            cost: agora_wire::micros_to_amount(receipt.receipt.cost_micros).units(),
        }
    }

    /// The leaf's hash, as the contract's `receiptLeaf` computes it.
    pub fn hash(&self) -> B256 {
        let mut b = [0u8; 97];
        b[1..33].copy_from_slice(self.receipt.as_slice());
        b[33..65].copy_from_slice(self.channel.as_slice());
        b[65..97].copy_from_slice(&U256::from(self.cost).to_be_bytes::<32>());
        keccak256(b)
    }
}

fn node(l: &B256, r: &B256) -> B256 {
    let mut b = [1u8; 65];
    b[1..33].copy_from_slice(l.as_slice());
    b[33..65].copy_from_slice(r.as_slice());
    keccak256(b)
}

fn levels(leaves: &[ReceiptLeaf]) -> Vec<Vec<B256>> {
    let n = leaves.len().max(1).next_power_of_two();
    let mut level: Vec<B256> = leaves.iter().map(ReceiptLeaf::hash).collect();
    level.resize(n, B256::ZERO);
    let mut all = vec![level];
    while let Some(last) = all.last().filter(|l| l.len() > 1) {
        let up = last.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        all.push(up);
    }
    all
}

/// The root the provider posts for `leaves`.
pub fn receipt_root(leaves: &[ReceiptLeaf]) -> B256 {
    levels(leaves)
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or(B256::ZERO)
}

/// The sibling path of leaf `index`, bottom up; `None` when out of range.
pub fn receipt_proof(leaves: &[ReceiptLeaf], index: usize) -> Option<Vec<B256>> {
    if index >= leaves.len() {
        return None;
    }
    let all = levels(leaves);
    let mut i = index;
    let mut path = Vec::with_capacity(all.len());
    for level in &all[..all.len() - 1] {
        path.push(level[i ^ 1]);
        i /= 2;
    }
    Some(path)
}

/// Whether `leaf` is leaf `index` under `root` of `receipts` leaves by `proof` (what the
/// contract checks).
pub fn verify_receipt_proof(
    root: &B256,
    receipts: u64,
    index: u64,
    leaf: &ReceiptLeaf,
    proof: &[B256],
) -> bool {
    let depth = receipts.max(1).next_power_of_two().trailing_zeros() as usize;
    if index >= receipts || proof.len() != depth {
        return false;
    }
    let mut h = leaf.hash();
    for (i, sib) in proof.iter().enumerate() {
        h = if (index >> i) & 1 == 0 {
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

    fn leaf(i: u8) -> ReceiptLeaf {
        ReceiptLeaf {
            receipt: B256::repeat_byte(i),
            channel: B256::repeat_byte(100),
            cost: u128::from(i) * 7,
        }
    }

    #[test]
    fn every_leaf_proves_and_no_other_does() {
        for n in [1usize, 2, 3, 5, 8, 9] {
            let leaves: Vec<_> = (0..n as u8).map(leaf).collect();
            let root = receipt_root(&leaves);
            for (i, l) in leaves.iter().enumerate() {
                let p = receipt_proof(&leaves, i).expect("in range");
                assert!(verify_receipt_proof(&root, n as u64, i as u64, l, &p));
                let moved = ReceiptLeaf {
                    cost: l.cost + 1,
                    ..*l
                };
                assert!(!verify_receipt_proof(&root, n as u64, i as u64, &moved, &p));
                if n > 1 {
                    let other = (i + 1) % n;
                    assert!(!verify_receipt_proof(&root, n as u64, other as u64, l, &p));
                }
            }
            assert!(receipt_proof(&leaves, n).is_none());
        }
    }
}
