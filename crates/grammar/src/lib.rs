//! Grammar-constrained decoding: JSON Schemas compiled to a byte-level pushdown matcher,
//! exact token masks over a vocabulary, and validation of finished answers.
//!
//! A provider masks every token the grammar refuses before it samples; an auditor replays
//! the same masks (they are integer work, identical everywhere), so an answer that left
//! the grammar fails its audit. The gateway compiles the schema to refuse unsupported
//! features with a 400 naming them, and validates the finished answer.
//!
//! ```
//! use agora_grammar::{Grammar, Matcher, Vocab};
//! let g = Grammar::compile(r#"{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}"#)?;
//! let vocab = Vocab::new(vec![Some(b"{\"ok\":".to_vec()), Some(b"true}".to_vec()), Some(b"1".to_vec()), None], vec![3]);
//! let mut state = Matcher::new(&g);
//! assert!(vocab.mask(&g, &state).allows(0));
//! assert!(!vocab.mask(&g, &state).allows(2));
//! assert!(vocab.advance(&g, &mut state, 0) && vocab.advance(&g, &mut state, 1));
//! assert!(vocab.mask(&g, &state).allows(3)); // the answer is whole: only the stop token
//! # Ok::<(), agora_grammar::GrammarError>(())
//! ```

pub mod error;
pub mod matcher;
pub mod schema;
pub mod vocab;

pub use error::GrammarError;
pub use matcher::Matcher;
pub use schema::Grammar;
pub use vocab::{byte_level_bytes, byte_level_decoder, Mask, Vocab};

/// The schema that stands for `response_format: {"type": "json_object"}`: any object.
pub const JSON_OBJECT_SCHEMA: &str = r#"{"type":"object"}"#;

/// Longest constraint (schema text) a request may carry.
pub const MAX_CONSTRAINT_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests;
