//! Integration tests: the real router over real HTTP, with a fake network behind it.

// Tests and their helpers may unwrap: failing loudly is the point.
#![allow(clippy::unwrap_used)]

mod common;

mod anthropic;
mod api;
mod chat;
mod completions;
mod errors;
mod extras;
mod keys;
mod robustness;
