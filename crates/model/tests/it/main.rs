//! Integration tests of the model crate: one binary, a module per concern.

/// Batch invariance: a request computes the same bits alone and in any batch.
mod batching;
mod common;
/// Grammar-constrained generation: answers stay in the schema, resume exactly; SmolLM2's
/// mask overhead.
mod constrained;
/// GGUF and safetensors writers and loaders agree with the f32 reference.
mod formats;
/// Generation: KV cache consistency, seeded reproducibility, hidden states, stops.
mod generation;
/// Corrupt, truncated and unsupported files give clear errors, never panics.
mod robustness;
