//! Errors of the core types.

/// Why a core value could not be built, parsed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A hex string had a character outside `[0-9a-fA-F]` or an odd length.
    #[error("invalid hex in {what}")]
    InvalidHex {
        /// What was being parsed.
        what: &'static str,
    },
    /// Bytes of the wrong length for a fixed-size value.
    #[error("{what} must be {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being parsed.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// 32 bytes that are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key: {0}")]
    InvalidPublicKey(String),
    /// A signature that does not verify for this key and message.
    #[error("signature does not verify for account {account}")]
    BadSignature {
        /// The account whose signature was expected.
        account: String,
    },
    /// An amount did not parse as a non-negative integer of base units.
    #[error("invalid amount {0:?}: expected a non-negative integer of base units")]
    InvalidAmount(String),
    /// Checked arithmetic overflowed.
    #[error("amount overflow: {a} + {b}")]
    Overflow {
        /// Left operand.
        a: u128,
        /// Right operand.
        b: u128,
    },
    /// Checked subtraction would go below zero.
    #[error("insufficient amount: {have} < {need}")]
    Insufficient {
        /// What is there.
        have: u128,
        /// What was asked for.
        need: u128,
    },
}
