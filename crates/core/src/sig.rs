//! ed25519 verification with one rule for single and batch checks.
//!
//! The rule is the cofactored equation `[8](s·B − R − k·A) = 0` with `k = SHA-512(R ‖ A ‖ M)`,
//! `s` canonical (`s < ℓ`), `R` and `A` valid point encodings, and `A` not of small order
//! (the ZIP-215 style of validation). Batch verification checks a random linear combination of
//! the same equations, so a batch accepts exactly the signatures the single check accepts
//! (a false accept has probability about 2^-128). That equivalence matters: the sequencer
//! checks whole submissions in batches while a replay checks a block's transactions, and both
//! must reach the same verdict on every signature. (Cofactorless batch checks do not have this
//! property: a signature with a torsion component can pass or fail depending on the batch.)

use crate::{AccountId, Signature};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// A signature's decoded parts, or `None` when the encoding alone makes it invalid.
struct Parsed {
    a: EdwardsPoint,
    r: EdwardsPoint,
    /// The encodings of `a` and `r` as given (they bind the batch weights without the cost of
    /// compressing the points again).
    a_bytes: [u8; 32],
    r_bytes: [u8; 32],
    s: Scalar,
    k: Scalar,
}

/// Most decoded account keys a thread keeps (about 200 bytes each).
const KEY_CACHE: usize = 4096;

thread_local! {
    /// Account keys already decoded on this thread, `None` for an invalid or small-order one:
    /// a node checks the same few senders over and over, and decoding a key (a square root in
    /// the field) is a tenth of a verification. Decoding is a pure function of the bytes, so a
    /// remembered answer is the one a fresh decode gives.
    static KEYS: RefCell<HashMap<[u8; 32], Option<EdwardsPoint>>> = RefCell::new(HashMap::new());
}

/// Most verified signatures a thread remembers (32 bytes each, plus the table's overhead).
const VERIFIED_CACHE: usize = 1 << 14;

thread_local! {
    /// Digests of (key, signature, message) triples this thread has verified as valid. The
    /// same signature is often checked again on one thread (a receipt by the payer, then by
    /// the verifier's material check and its judgement; a voucher by the provider, then by the
    /// ledger in the claim that carries it). A triple's verdict is a pure function of its
    /// bytes, and the digest binds all of them (a BLAKE3 collision is needed to reuse an
    /// entry for other bytes), so a hit answers what a fresh check would. Only acceptances
    /// are kept: a bad signature costs its full check every time, and costs no memory.
    static VERIFIED: RefCell<HashSet<[u8; 32]>> = RefCell::new(HashSet::new());
}

/// The cache key of one (key, message, signature) triple.
fn triple_digest(account: &AccountId, msg: &[u8], sig: &Signature) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("agora ed25519 verified triple v1");
    h.update(account.as_bytes());
    h.update(sig.as_bytes());
    h.update(msg);
    *h.finalize().as_bytes()
}

fn known_valid(digest: &[u8; 32]) -> bool {
    VERIFIED.with(|v| v.borrow().contains(digest))
}

fn remember_valid(digest: [u8; 32]) {
    VERIFIED.with(|v| {
        let mut v = v.borrow_mut();
        if v.len() >= VERIFIED_CACHE {
            v.clear();
        }
        v.insert(digest);
    });
}

/// Records a signature this thread just made with the key of `account` as valid. An honest
/// key (a clamped scalar times the base point: of large order) signing gives a canonical `s`
/// and `R = r·B`, which the rule above always accepts; so a later check of the same triple on
/// this thread (a simulation's actors, a node reading back what it signed) answers what a
/// fresh one would, without its curve arithmetic. Only the signer calls this: a received
/// signature enters the cache only by passing a check.
pub(crate) fn remember_signed(account: &AccountId, msg: &[u8], sig: &Signature) {
    remember_valid(triple_digest(account, msg, sig));
}

/// The account's key as a point, if it is a valid encoding of a point of large order.
fn account_point(account: &AccountId) -> Option<EdwardsPoint> {
    let bytes = *account.as_bytes();
    if let Some(known) = KEYS.with(|k| k.borrow().get(&bytes).copied()) {
        return known;
    }
    let a = CompressedEdwardsY(bytes)
        .decompress()
        .filter(|a| !a.is_small_order());
    KEYS.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= KEY_CACHE {
            k.clear();
        }
        k.insert(bytes, a);
    });
    a
}

fn parse(account: &AccountId, msg: &[u8], sig: &Signature) -> Option<Parsed> {
    let a = account_point(account)?;
    let sb = sig.as_bytes();
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sb[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&sb[32..]);
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(account.as_bytes());
    h.update(msg);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Parsed {
        a,
        r,
        a_bytes: *account.as_bytes(),
        r_bytes,
        s,
        k,
    })
}

fn check(p: &Parsed) -> bool {
    // k·(−A) + s·B − R, times the cofactor.
    let q = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &-p.a, &p.s) - p.r;
    q.mul_by_cofactor().is_identity()
}

/// Verifies one signature over raw `msg`.
pub fn verify_one(account: &AccountId, msg: &[u8], sig: &Signature) -> bool {
    let digest = triple_digest(account, msg, sig);
    if known_valid(&digest) {
        return true;
    }
    let ok = check_one(account, msg, sig);
    if ok {
        remember_valid(digest);
    }
    ok
}

/// The single check proper, without the cache.
fn check_one(account: &AccountId, msg: &[u8], sig: &Signature) -> bool {
    parse(account, msg, sig).is_some_and(|p| check(&p))
}

/// Verifies many signatures; `out[i]` is exactly `verify_one(items[i])`. When all are valid it
/// costs one multi-scalar multiplication instead of one check per signature; signatures this
/// thread already verified are not checked again.
pub fn verify_many(items: &[(AccountId, &[u8], Signature)]) -> Vec<bool> {
    let digests: Vec<[u8; 32]> = items
        .iter()
        .map(|(a, m, s)| triple_digest(a, m, s))
        .collect();
    let mut out = vec![true; items.len()];
    let fresh: Vec<usize> = (0..items.len())
        .filter(|&i| !known_valid(&digests[i]))
        .collect();
    let checked = check_many(fresh.iter().map(|&i| &items[i]));
    for (&i, ok) in fresh.iter().zip(checked) {
        out[i] = ok;
        if ok {
            remember_valid(digests[i]);
        }
    }
    out
}

/// The batch check proper, without the cache: one verdict per item, in order.
fn check_many<'a, 'm: 'a>(
    items: impl Iterator<Item = &'a (AccountId, &'m [u8], Signature)>,
) -> Vec<bool> {
    let parsed: Vec<Option<Parsed>> = items.map(|(a, m, s)| parse(a, m, s)).collect();
    let live: Vec<&Parsed> = parsed.iter().flatten().collect();
    if live.len() >= 2 {
        // Weights derived from every input, so no signer can choose them.
        let mut t = blake3::Hasher::new_derive_key("agora ed25519 cofactored batch v1");
        for p in &live {
            t.update(&p.r_bytes);
            t.update(&p.a_bytes);
            t.update(p.s.as_bytes());
            t.update(p.k.as_bytes());
        }
        let mut xof = t.finalize_xof();
        let zs: Vec<Scalar> = live
            .iter()
            .map(|_| {
                let mut b = [0u8; 32];
                xof.fill(&mut b[..16]);
                b[0] |= 1; // never zero
                Scalar::from_bytes_mod_order(b)
            })
            .collect();
        let b_coef: Scalar = live.iter().zip(&zs).map(|(p, z)| z * p.s).sum();
        let scalars = std::iter::once(-b_coef)
            .chain(zs.iter().copied())
            .chain(live.iter().zip(&zs).map(|(p, z)| z * p.k));
        let points = std::iter::once(curve25519_dalek::constants::ED25519_BASEPOINT_POINT)
            .chain(live.iter().map(|p| p.r))
            .chain(live.iter().map(|p| p.a));
        let sum = EdwardsPoint::vartime_multiscalar_mul(scalars, points);
        if sum.mul_by_cofactor().is_identity() {
            return parsed.iter().map(Option::is_some).collect();
        }
    }
    parsed
        .iter()
        .map(|p| p.as_ref().is_some_and(check))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn batch_agrees_with_single_on_valid_and_invalid() {
        let keys: Vec<Keypair> = (0..20u8).map(|i| Keypair::from_seed([i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 40]).collect();
        let mut items: Vec<(AccountId, &[u8], Signature)> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| (k.account(), m.as_slice(), k.sign_bytes(m)))
            .collect();
        assert!(check_many(items.iter()).iter().all(|ok| *ok));
        // Break some: wrong message, wrong key, non-canonical s, invalid point.
        items[3].1 = b"other";
        items[7].0 = keys[8].account();
        let mut s = *items[11].2.as_bytes();
        s[63] = 0xff;
        items[11].2 = Signature::from_bytes(s);
        items[15].0 = AccountId::from_bytes([0xff; 32]);
        let got = check_many(items.iter());
        for (i, (a, m, s)) in items.iter().enumerate() {
            assert_eq!(got[i], check_one(a, m, s), "item {i}");
            assert_eq!(got[i], ![3, 7, 11, 15].contains(&i), "item {i}");
        }
    }

    /// A signature whose R carries a torsion component: valid under the cofactored rule, not
    /// under the cofactorless one. Whatever batch it sits in, the verdict must be the same.
    fn torsion_signature(seed: [u8; 32], msg: &[u8]) -> (AccountId, Signature) {
        let h: [u8; 64] = Sha512::digest(seed).into();
        let mut a_bytes = [0u8; 32];
        a_bytes.copy_from_slice(&h[..32]);
        a_bytes[0] &= 248;
        a_bytes[31] &= 127;
        a_bytes[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a_bytes);
        let pk = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * a;
        let r = Scalar::from_bytes_mod_order([7; 32]);
        // A point of order 8.
        let t = curve25519_dalek::constants::EIGHT_TORSION[1];
        let big_r = (curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r + t).compress();
        let mut hk = Sha512::new();
        hk.update(big_r.as_bytes());
        hk.update(pk.compress().as_bytes());
        hk.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&hk.finalize().into());
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        (
            AccountId::from_bytes(pk.compress().to_bytes()),
            Signature::from_bytes(sig),
        )
    }

    #[test]
    fn torsion_signature_gets_one_verdict_in_every_batch() {
        let (acct, sig) = torsion_signature([5; 32], b"torsion");
        // Cofactored: valid. dalek's cofactorless verify_strict: refused.
        assert!(check_one(&acct, b"torsion", &sig));
        let vk = ed25519_dalek::VerifyingKey::from_bytes(acct.as_bytes())
            .map_err(|_| ())
            .and_then(|vk| {
                vk.verify_strict(
                    b"torsion",
                    &ed25519_dalek::Signature::from_bytes(sig.as_bytes()),
                )
                .map_err(|_| ())
            });
        assert!(vk.is_err());
        let keys: Vec<Keypair> = (0..9u8).map(|i| Keypair::from_seed([i + 40; 32])).collect();
        for n in 1..9 {
            let mut items: Vec<(AccountId, &[u8], Signature)> = keys[..n]
                .iter()
                .map(|k| (k.account(), b"m".as_slice(), k.sign_bytes(b"m")))
                .collect();
            items.insert(n / 2, (acct, b"torsion".as_slice(), sig));
            assert!(
                check_many(items.iter()).iter().all(|ok| *ok),
                "batch of {}",
                n + 1
            );
        }
    }

    /// The decoded-key cache answers what a fresh decode does: for a valid key, a small-order
    /// key and a non-point, checked again from the cache, and after the cache was cleared.
    #[test]
    fn cached_keys_give_the_verdicts_of_a_fresh_decode() {
        let k = Keypair::from_seed([21; 32]);
        let sig = k.sign_bytes(b"m");
        let mut small = [0u8; 32];
        small[0] = 1;
        let cases = [
            (k.account(), true),
            (AccountId::from_bytes(small), false),
            (AccountId::from_bytes([0xff; 32]), false),
        ];
        for round in 0..3 {
            for (a, want) in &cases {
                assert_eq!(check_one(a, b"m", &sig), *want, "round {round}");
                let batch =
                    check_many([(*a, &b"m"[..], sig), (k.account(), &b"m"[..], sig)].iter());
                assert_eq!(batch, vec![*want, true], "round {round}");
            }
            if round == 1 {
                // Past the cap the cache starts over.
                for i in 0..KEY_CACHE as u64 {
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&i.to_le_bytes());
                    let _ = account_point(&AccountId::from_bytes(b));
                }
            }
        }
    }

    #[test]
    fn dalek_signatures_verify_and_small_order_keys_are_refused() {
        let k = Keypair::from_seed([9; 32]);
        let sig = k.sign_bytes(b"m");
        assert!(verify_one(&k.account(), b"m", &sig));
        // The identity point as a key with the trivial signature (R = identity, s = 0).
        let mut id = [0u8; 32];
        id[0] = 1;
        let mut trivial = [0u8; 64];
        trivial[0] = 1;
        assert!(!verify_one(
            &AccountId::from_bytes(id),
            b"anything",
            &Signature::from_bytes(trivial)
        ));
    }

    /// The attack on a cache of verdicts: get one signature accepted, then present it with
    /// another message, another key or altered bytes and hope the cache answers. Every variant
    /// must get the verdict a fresh check gives (refused), alone and in a batch, before and
    /// after the valid triple is cached, and after the cache starts over.
    #[test]
    fn cached_verdicts_never_accept_other_bytes() {
        let k = Keypair::from_seed([31; 32]);
        let other = Keypair::from_seed([32; 32]);
        let sig = k.sign_bytes(b"pay 5");
        let other_sig = k.sign_bytes(b"pay 6");
        let mut flipped_r = *sig.as_bytes();
        flipped_r[0] ^= 1;
        let mut flipped_s = *sig.as_bytes();
        flipped_s[40] ^= 1;
        let variants: Vec<(AccountId, &[u8], Signature)> = vec![
            (k.account(), b"pay 50", sig),
            (k.account(), b"pay 5 ", sig),
            (k.account(), b"pay ", sig),
            (other.account(), b"pay 5", sig),
            (k.account(), b"pay 5", other_sig),
            (k.account(), b"pay 5", Signature::from_bytes(flipped_r)),
            (k.account(), b"pay 5", Signature::from_bytes(flipped_s)),
        ];
        for round in 0..3 {
            assert!(verify_one(&k.account(), b"pay 5", &sig), "round {round}");
            for (i, (a, m, s)) in variants.iter().enumerate() {
                assert!(!check_one(a, m, s), "variant {i} is not a valid signature");
                assert!(!verify_one(a, m, s), "round {round} variant {i}");
            }
            let mut batch = variants.clone();
            batch.insert(3, (k.account(), b"pay 5", sig));
            let got = verify_many(&batch);
            for (i, ok) in got.iter().enumerate() {
                assert_eq!(*ok, i == 3, "round {round} batch item {i}");
            }
            if round == 1 {
                for i in 0..VERIFIED_CACHE as u64 {
                    let m = i.to_le_bytes();
                    let _ = verify_one(&k.account(), &m, &sig);
                    remember_valid(triple_digest(&k.account(), &m, &other_sig));
                }
            }
        }
    }

    /// What a key signs is remembered on the signing thread, and only with the verdict a fresh
    /// check gives: every signature made is valid under the cofactored rule, and a tampered
    /// copy of it is neither remembered nor accepted.
    #[test]
    fn signatures_made_here_are_remembered_with_the_fresh_verdict() {
        for i in 0..64u8 {
            let k = Keypair::from_seed([i; 32]);
            let msg = [i; 40];
            let sig = k.sign_bytes(&msg);
            assert!(
                known_valid(&triple_digest(&k.account(), &msg, &sig)),
                "key {i}"
            );
            assert!(check_one(&k.account(), &msg, &sig), "key {i}: fresh check");
            let mut bent = *sig.as_bytes();
            bent[63 - usize::from(i % 32)] ^= 0x40;
            let bent = Signature::from_bytes(bent);
            assert!(
                !known_valid(&triple_digest(&k.account(), &msg, &bent)),
                "key {i}"
            );
            assert!(!verify_one(&k.account(), &msg, &bent), "key {i}: tampered");
        }
    }

    /// A batch that mixes remembered and fresh signatures gives every item the single check's
    /// verdict, and remembers only the valid ones.
    #[test]
    fn batches_mixing_cached_and_fresh_items_agree_with_single_checks() {
        let keys: Vec<Keypair> = (0..12u8)
            .map(|i| Keypair::from_seed([i + 60; 32]))
            .collect();
        let msgs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 33]).collect();
        let mut items: Vec<(AccountId, &[u8], Signature)> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| (k.account(), m.as_slice(), k.sign_bytes(m)))
            .collect();
        items[5].1 = b"forged";
        for (a, m, s) in items.iter().step_by(3) {
            let _ = verify_one(a, m, s);
        }
        for pass in 0..2 {
            let got = verify_many(&items);
            for (i, (a, m, s)) in items.iter().enumerate() {
                assert_eq!(got[i], check_one(a, m, s), "pass {pass} item {i}");
                assert_eq!(got[i], i != 5, "pass {pass} item {i}");
            }
        }
        let (a, m, s) = &items[5];
        assert!(!known_valid(&triple_digest(a, m, s)));
    }
}
