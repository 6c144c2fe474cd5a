//! Keys, account ids, signatures and content hashes.

use crate::{codec, CoreError};
use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, SigningKey};
use std::fmt;
use std::str::FromStr;

fn parse_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N], CoreError> {
    if s.len() != 2 * N {
        return Err(CoreError::InvalidLength {
            what,
            expected: N,
            got: s.len() / 2,
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| CoreError::InvalidHex { what })?;
    Ok(out)
}

macro_rules! hex_bytes {
    ($name:ident, $n:expr, $what:expr) => {
        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }
            /// Builds from raw bytes.
            pub const fn from_bytes(b: [u8; $n]) -> Self {
                $name(b)
            }
            /// Builds from a slice of exactly the right length.
            pub fn from_slice(b: &[u8]) -> Result<Self, CoreError> {
                <[u8; $n]>::try_from(b)
                    .map($name)
                    .map_err(|_| CoreError::InvalidLength {
                        what: $what,
                        expected: $n,
                        got: b.len(),
                    })
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }
        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                parse_hex::<$n>($what, s).map($name)
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A BLAKE3 hash of 32 bytes; hex in text.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct Hash32([u8; 32]);
hex_bytes!(Hash32, 32, "hash");

impl Hash32 {
    /// The all-zero hash, used as "no parent".
    pub const ZERO: Hash32 = Hash32([0; 32]);

    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Hash32(*blake3::hash(bytes).as_bytes())
    }
}

/// An account: the 32 bytes of an ed25519 public key; hex in text.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct AccountId([u8; 32]);
hex_bytes!(AccountId, 32, "account id");

impl AccountId {
    /// Checks `sig` over `signing_bytes(domain, value)` with this account's key, under the
    /// rule of [`crate::sig`] (cofactored, canonical `s`, no small-order keys).
    pub fn verify<T: BorshSerialize + ?Sized>(
        &self,
        domain: &[u8],
        value: &T,
        sig: &Signature,
    ) -> Result<(), CoreError> {
        self.verify_bytes(&codec::signing_bytes(domain, value), sig)
    }

    /// Checks `sig` over raw `msg` bytes.
    pub fn verify_bytes(&self, msg: &[u8], sig: &Signature) -> Result<(), CoreError> {
        if crate::sig::verify_one(self, msg, sig) {
            Ok(())
        } else {
            Err(CoreError::BadSignature {
                account: self.to_string(),
            })
        }
    }
}

/// An ed25519 signature of 64 bytes; hex in text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Signature([u8; 64]);
hex_bytes!(Signature, 64, "signature");

/// An ed25519 signing key with its account id.
#[derive(Clone)]
pub struct Keypair {
    key: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.account())
    }
}

impl Keypair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, CoreError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| CoreError::InvalidPublicKey(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose 32-byte secret seed is `seed` (deterministic; for tests and key files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Keypair {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed; keep it private.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The account this key controls.
    pub fn account(&self) -> AccountId {
        AccountId(self.key.verifying_key().to_bytes())
    }

    /// Signs `signing_bytes(domain, value)`.
    pub fn sign<T: BorshSerialize + ?Sized>(&self, domain: &[u8], value: &T) -> Signature {
        self.sign_bytes(&codec::signing_bytes(domain, value))
    }

    /// Signs raw bytes. The signature is remembered as valid on this thread
    /// ([`crate::sig::remember_signed`]), so checking it here again costs no curve arithmetic.
    pub fn sign_bytes(&self, msg: &[u8]) -> Signature {
        let sig = Signature(self.key.sign(msg).to_bytes());
        crate::sig::remember_signed(&self.account(), msg, &sig);
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_length_checks() {
        let k = Keypair::from_seed([1; 32]);
        let a = k.account();
        let s = a.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<AccountId>(), Ok(a));
        assert!(matches!(
            "abcd".parse::<AccountId>(),
            Err(CoreError::InvalidLength { .. })
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<AccountId>(),
            Err(CoreError::InvalidHex { .. })
        ));
    }

    #[test]
    fn signature_is_bound_to_domain_value_and_key() {
        let k = Keypair::from_seed([2; 32]);
        let other = Keypair::from_seed([3; 32]);
        let sig = k.sign(b"d1", &42u64);
        assert!(k.account().verify(b"d1", &42u64, &sig).is_ok());
        assert!(k.account().verify(b"d2", &42u64, &sig).is_err());
        assert!(k.account().verify(b"d1", &43u64, &sig).is_err());
        assert!(other.account().verify(b"d1", &42u64, &sig).is_err());
    }

    #[test]
    fn invalid_public_key_bytes_fail_verification() {
        let k = Keypair::from_seed([2; 32]);
        let sig = k.sign(b"d", &1u8);
        // Not a point on the curve.
        let bogus = AccountId::from_bytes([0xff; 32]);
        assert!(bogus.verify(b"d", &1u8, &sig).is_err());
    }
}
