//! Agora's market: signed provider offers, the live offer book, and the reverse auction that
//! picks a provider for each request.
//!
//! - [`Offer`] / [`SignedOffer`]: what a provider sells (a ModelId, prices per million tokens,
//!   hardware class, region, capacity, where to dial it), signed by its ledger account under
//!   [`OFFER_DOMAIN`], living at most [`MAX_OFFER_TTL_MS`], ordered by a per-provider `seq`.
//! - [`cost_micros`] / [`micros_to_amount`]: exact integer pricing.
//! - [`OfferBook`]: the offers a gateway knows, indexed by model, with what the gateway has
//!   measured of each provider (load, latency, failures, reputation), and
//!   [`OfferBook::auction`], which ranks the eligible offers for a [`Bid`] by expected cost
//!   adjusted for service quality.
//!
//! The crate reads no clock: every time-dependent call takes `now_ms` (unix milliseconds).
//!
//! ```
//! use agora_core::{Amount, Hash32, Keypair};
//! use agora_market::{Bid, Features, Offer, OfferBook};
//! let key = Keypair::from_seed([1; 32]);
//! let model = Hash32::of(b"manifest");
//! let offer = Offer {
//!     chain_id: 1, provider: key.account(), peer_id: vec![], addrs: vec![],
//!     model, model_name: "agora-shakespeare".into(), context_len: 2048,
//!     price_in: Amount::new(10), price_out: Amount::new(20),
//!     hardware: "cpu-avx2".into(), region: "eu".into(), capacity: 4,
//!     features: Features::ALL, seq: 1, issued_ms: 1_000, expires_ms: 61_000,
//! }.sign(&key);
//! let mut book = OfferBook::new().with_chain(1);
//! book.insert(offer, 2_000).unwrap();
//! assert_eq!(book.resolve("agora-shakespeare", 2_000), Some(model));
//! let best = book.auction(&Bid::new(model), 2_000, 4);
//! assert_eq!(best[0].provider(), key.account());
//! assert!(book.auction(&Bid::new(model), 61_000, 4).is_empty()); // expired
//! ```

pub mod book;
pub mod offer;

pub use agora_wire::price::{self, cost_micros, micros_to_amount, MICROS_PER_UNIT};
pub use book::{
    Bid, Candidate, ModelSummary, OfferBook, ProviderStats, DEFAULT_REPUTATION, FAILURE_ALPHA,
    LATENCY_ALPHA, LATENCY_SCALE_MS, LOAD_WEIGHT, MAX_FAILURE_RATE, MAX_LATENCY_MS,
    MAX_MODELS_PER_PROVIDER, REPUTATION_BASE, UNKNOWN_LATENCY_MS,
};
pub use offer::{
    valid_model_name, Features, Offer, OfferError, SignedOffer, MAX_ADDRS, MAX_ADDR_BYTES,
    MAX_CLOCK_SKEW_MS, MAX_LABEL_BYTES, MAX_MODEL_NAME_BYTES, MAX_OFFER_BYTES, MAX_OFFER_TTL_MS,
    MAX_PEER_ID_BYTES, OFFER_DOMAIN, SIGNED_OFFER_DOMAIN,
};
