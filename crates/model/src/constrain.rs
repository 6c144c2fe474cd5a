//! Grammar-constrained sampling for a loaded model: the vocabulary's token bytes (built once
//! per model) and the per-request state that masks each step.
//!
//! The state lives in [`crate::sampler::SamplerState`], beside the seed, so any loop that
//! samples (one request or a batch) carries it; provider and auditor compute the same masks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use agora_grammar::{byte_level_bytes, byte_level_decoder, Grammar, Mask, Matcher, Vocab};
use tokenizers::DecoderWrapper;

use crate::error::{ModelError, Result};
use crate::{LoadedModel, ModelId};

/// The vocabulary of `model` as byte strings, arranged for masking; built on first use and
/// kept for the life of the process.
pub fn vocab(model: &LoadedModel) -> Result<Arc<Vocab>> {
    static CACHE: OnceLock<Mutex<HashMap<ModelId, Arc<Vocab>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(v) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&model.id)
    {
        return Ok(v.clone());
    }
    let built = Arc::new(build_vocab(model)?);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(model.id, built.clone());
    Ok(built)
}

fn build_vocab(model: &LoadedModel) -> Result<Vocab> {
    let inner = model.tokenizer.inner();
    if !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
        return Err(ModelError::InvalidRequest(
            "constrained decoding needs a byte-level BPE tokenizer; this model has another".into(),
        ));
    }
    let decoder = byte_level_decoder();
    let size = model.model.config().vocab_size;
    let tokens = model.tokenizer.vocab_by_id()?;
    let bytes: Vec<Option<Vec<u8>>> = (0..size)
        .map(|id| match tokens.get(id) {
            // Control tokens (type 3) are never text.
            Some((t, ty)) if *ty != 3 => byte_level_bytes(t, &decoder),
            _ => None,
        })
        .collect();
    Ok(Vocab::new(bytes, model.stop_token_ids()))
}

/// Compiles a constraint (a JSON Schema's text) or says why not.
pub fn compile(schema: &str) -> Result<Grammar> {
    if schema.len() > agora_grammar::MAX_CONSTRAINT_BYTES {
        return Err(ModelError::InvalidRequest(format!(
            "the constraint has {} bytes; the limit is {}",
            schema.len(),
            agora_grammar::MAX_CONSTRAINT_BYTES
        )));
    }
    Grammar::compile(schema).map_err(|e| ModelError::InvalidRequest(e.to_string()))
}

/// One request's place in its grammar.
#[derive(Debug, Clone)]
pub struct Constrained {
    grammar: Arc<Grammar>,
    vocab: Arc<Vocab>,
    state: Matcher,
}

impl Constrained {
    /// At the start of an answer to `schema` from `model`.
    pub fn new(model: &LoadedModel, schema: &str) -> Result<Constrained> {
        let grammar = Arc::new(compile(schema)?);
        let state = Matcher::new(&grammar);
        Ok(Constrained {
            grammar,
            vocab: vocab(model)?,
            state,
        })
    }

    /// The tokens allowed next.
    pub fn mask(&self) -> Mask {
        self.vocab.mask(&self.grammar, &self.state)
    }

    /// Moves past `token`; an error when the grammar refuses it (the state is unchanged).
    pub fn advance(&mut self, token: u32) -> Result<()> {
        let mut next = self.state.clone();
        if !self.vocab.advance(&self.grammar, &mut next, token) {
            return Err(ModelError::InvalidRequest(format!(
                "token {token} breaks the constraint"
            )));
        }
        self.state = next;
        Ok(())
    }
}
