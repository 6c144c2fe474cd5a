//! The canonical encoding: Borsh, with a domain tag in front of everything signed or hashed.

use crate::Hash32;
use borsh::BorshSerialize;

/// The canonical bytes of `value`.
pub fn encode<T: BorshSerialize + ?Sized>(value: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    borsh::to_vec(value).unwrap_or_default()
}

/// The bytes a signature covers: `len(domain) as u32 LE || domain || encode(value)`.
pub fn signing_bytes<T: BorshSerialize + ?Sized>(domain: &[u8], value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_signing_bytes(&mut out, domain, value);
    out
}

/// BLAKE3 of [`signing_bytes`]: the content hash of `value` under `domain`.
pub fn hash<T: BorshSerialize + ?Sized>(domain: &[u8], value: &T) -> Hash32 {
    // The bytes go into a buffer this thread reuses: hashing a whole ledger state each block
    // otherwise grows a fresh vector from 64 bytes by doubling (a realloc and copy each time).
    // Same bytes, same hash; a nested call (a value whose encoding hashes) gets its own vector.
    HASH_BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            write_signing_bytes(&mut out, domain, value);
            let h = Hash32::of(&out);
            if out.capacity() > HASH_BUF_KEEP {
                *out = Vec::new();
            }
            h
        }
        Err(_) => Hash32::of(&signing_bytes(domain, value)),
    })
}

/// Largest buffer [`hash`] keeps between calls.
const HASH_BUF_KEEP: usize = 1 << 20;

thread_local! {
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_signing_bytes<T: BorshSerialize + ?Sized>(out: &mut Vec<u8>, domain: &[u8], value: &T) {
    out.extend_from_slice(&(domain.len() as u32).to_le_bytes());
    out.extend_from_slice(domain);
    // Writing into a Vec cannot fail.
    let _ = value.serialize(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value whose encoding itself hashes (a nested call while the buffer is in use).
    struct Nested(Vec<u8>);
    impl BorshSerialize for Nested {
        fn serialize<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
            hash(b"inner", &self.0).as_bytes().serialize(w)?;
            self.0.serialize(w)
        }
    }

    /// The reused buffer gives the hash of the signing bytes: small after large (no stale
    /// tail), past the kept size, and nested.
    #[test]
    fn hash_is_blake3_of_the_signing_bytes() {
        for len in [0usize, 1, 100, 5_000, 3, HASH_BUF_KEEP + 10, 7] {
            let v = vec![len as u8; len];
            assert_eq!(
                hash(b"d", &v),
                Hash32::of(&signing_bytes(b"d", &v)),
                "{len}"
            );
        }
        let n = Nested(vec![9; 300]);
        assert_eq!(hash(b"o", &n), Hash32::of(&signing_bytes(b"o", &n)));
        assert_ne!(hash(b"o", &n), hash(b"p", &n));
    }
}
