//! Agora's OpenAI-compatible HTTP face and its API-key store.
//!
//! App developers point any OpenAI client at the gateway with an API key and get chat and
//! text completions, whole or streamed, from open models served by independent providers; no
//! wallet. Each key pays from its own custodial ledger account. The network itself (finding
//! providers, paying them, failing over) sits behind [`Backend`], implemented by
//! `agora-broker`, so this crate is only HTTP, validation, keys and error shapes.
//!
//! - [`router`] / [`serve`]: the routes (`/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions`, `/v1/messages`, `/v1/receipts/{id}`, `/v1/key`, `/v1/keys`,
//!   `/health`); see `docs/gateway.md`.
//! - [`KeyStore`]: API keys hashed with BLAKE3 in a redb file, with their policies (budget,
//!   rate, expiry, models), spend and receipts; [`Budget`]: reserve-then-settle spending.
//! - [`ProviderPrefs`]: the request's routing controls.
//! - [`Backend`]: what the gateway needs from the network.

pub mod backend;
mod extras;
pub mod http;
pub mod keys;
pub mod limit;
mod logprobs;
pub mod models;
pub mod routing;
pub mod spend;
mod structured;
mod tools;

pub use backend::{
    Backend, BackendError, Caller, Capabilities, ChatMessage, FinishReason, Job, LogprobAlt,
    ModelInfo, PriceRange, Pricing, Prompt, ReceiptRef, Started, StreamEvent, TokenLogprob, Usage,
};
pub use http::{router, serve, Limits};
pub use keys::{ChildRequest, KeyError, KeyPolicy, KeyRecord, KeyStore, KeyUsage, SECRET_PREFIX};
pub use limit::{KeyLimits, Limiter};
pub use routing::{ProviderPrefs, SortBy};
pub use spend::{Budget, BudgetExceeded, Hold};
