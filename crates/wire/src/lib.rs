//! Agora's signed protocol messages without any transport: inference requests, token frames,
//! receipts, vouchers, verdicts, audit material, and the one escrow rounding rule.
//!
//! Everything here is data and signature checks; no I/O. The ledger, the libp2p layer, the
//! broker, the provider and the verifier all read these types, so none of them needs another
//! to speak the protocol.
//!
//! ```
//! use agora_core::{Amount, Hash32, Keypair};
//! use agora_wire::{SignedVoucher, Voucher};
//!
//! let payer = Keypair::from_seed([7; 32]);
//! let v = Voucher { chain_id: 1, channel: Hash32::ZERO, cumulative: Amount::new(5) };
//! assert!(SignedVoucher::new(v, &payer).verify().is_ok());
//! ```

pub mod price;
pub mod protocol;
pub mod settle;

pub use price::{cost_micros, micros_to_amount, MICROS_PER_UNIT};
pub use protocol::*;
pub use settle::{Fault, Verdict, Voucher, VERDICT_DOMAIN, VOUCHER_DOMAIN};
