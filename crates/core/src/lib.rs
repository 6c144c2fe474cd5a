//! Identities, content hashes, amounts and the canonical encoding shared by every Agora crate; no I/O.
//!
//! - [`Keypair`] / [`AccountId`]: ed25519 identities; an account is its 32-byte public key,
//!   shown as lowercase hex.
//! - [`Signature`]: ed25519 signatures over the canonical encoding of a value, prefixed by a
//!   domain tag so a signature made for one purpose is never valid for another.
//! - [`Amount`]: integer base units (`u128`) with checked arithmetic only; never floats.
//! - [`Hash32`]: BLAKE3 content hashes.
//! - [`codec`]: the canonical encoding, which is [Borsh](https://borsh.io): fixed-width
//!   little-endian integers, `u32` length prefixes, enum tags as one byte, fields in
//!   declaration order, maps sorted by key. It is deterministic and one-to-one, so equal values
//!   always hash and sign the same.
//!
//! ```
//! use agora_core::{Amount, Keypair};
//! let alice = Keypair::from_seed([7; 32]);
//! let sig = alice.sign(b"agora/example", &Amount::new(5));
//! assert!(alice.account().verify(b"agora/example", &Amount::new(5), &sig).is_ok());
//! assert!(alice.account().verify(b"agora/example", &Amount::new(6), &sig).is_err());
//! ```

pub mod amount;
pub mod codec;
pub mod error;
pub mod id;
pub mod merkle;
pub mod sig;

pub use amount::Amount;
pub use error::CoreError;
pub use id::{AccountId, Hash32, Keypair, Signature};
