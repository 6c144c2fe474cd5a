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
    out.extend_from_slice(&(domain.len() as u32).to_le_bytes());
    out.extend_from_slice(domain);
    // Writing into a Vec cannot fail.
    let _ = value.serialize(&mut out);
    out
}

/// BLAKE3 of [`signing_bytes`]: the content hash of `value` under `domain`.
pub fn hash<T: BorshSerialize + ?Sized>(domain: &[u8], value: &T) -> Hash32 {
    Hash32::of(&signing_bytes(domain, value))
}
