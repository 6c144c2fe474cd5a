//! Text to token ids and back: a Hugging Face `tokenizer.json`, the vocabulary embedded in a
//! GGUF file, or a byte-level BPE trained here.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{ModelError, Result};

/// The special tokens of models this project trains (ChatML, as Qwen2 uses).
pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer with special-token parsing off: text typed by a user that spells a
    /// control token (`<|im_end|>`) stays text. Built on first use.
    plain: std::sync::OnceLock<Tokenizer>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer(vocab={})", self.vocab_size())
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self::wrap(inner)
    }

    fn wrap(inner: Tokenizer) -> Self {
        Self {
            inner,
            plain: std::sync::OnceLock::new(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&bytes)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Ok(Self::wrap(Tokenizer::from_bytes(bytes).map_err(tok_err)?))
    }

    /// The `tokenizer.json` form.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added (special) tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode without adding BOS/EOS (templates and callers add what they need); special
    /// tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Encode text that must stay text: special tokens written in it are split into ordinary
    /// tokens, never parsed as control tokens (chat content; see `prompt::chat_prompt_ids`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        Ok(plain
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// The text of every special (control) token, e.g. `<|im_end|>`.
    pub fn special_tokens(&self) -> Vec<String> {
        self.inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect()
    }

    /// The bytes token `id` stands for on its own (a token may hold part of a character);
    /// `None` for an unknown id. Byte-level BPE tokens map through the byte alphabet;
    /// others decode alone.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        static DECODER: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
        let piece = self.inner.id_to_token(id)?;
        if matches!(
            self.inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        ) {
            let decoder = DECODER.get_or_init(agora_grammar::byte_level_decoder);
            if let Some(b) = agora_grammar::byte_level_bytes(&piece, decoder) {
                return Some(b);
            }
        }
        self.decode(&[id]).ok().map(String::into_bytes)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Train a byte-level BPE (GPT-2 pre-tokenization, no unknown tokens) on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials = [END_OF_TEXT, IM_START, IM_END];
        if vocab_size < 256 + specials.len() + 1 {
            return Err(ModelError::Tokenizer(format!(
                "vocab size {vocab_size} is too small for a byte-level BPE (at least 260)"
            )));
        }
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(
                specials
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .build()
            .into();
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.train(&mut trainer, texts).map_err(tok_err)?;
        Ok(Self::wrap(tokenizer))
    }

    /// Vocabulary in id order, with each token's GGUF type (1 normal, 3 control).
    pub fn vocab_by_id(&self) -> Result<Vec<(String, i32)>> {
        let vocab = self.inner.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![None; n];
        for (token, id) in vocab {
            tokens[id as usize] = Some(token);
        }
        let specials: std::collections::HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                let t = t.ok_or_else(|| {
                    ModelError::Tokenizer(format!("vocabulary has no token with id {id}"))
                })?;
                Ok((
                    t,
                    if specials.contains(&(id as u32)) {
                        3
                    } else {
                        1
                    },
                ))
            })
            .collect()
    }

    /// BPE merges as "left right" strings, for GGUF export.
    pub fn bpe_merges(&self) -> Result<Vec<String>> {
        let json: serde_json::Value = serde_json::from_str(&self.to_json()?)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let merges = json["model"]["merges"]
            .as_array()
            .ok_or_else(|| ModelError::Tokenizer("tokenizer model has no BPE merges".into()))?;
        merges
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(pair) if pair.len() == 2 => Ok(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or_default(),
                    pair[1].as_str().unwrap_or_default()
                )),
                other => Err(ModelError::Tokenizer(format!(
                    "unexpected merge entry {other}"
                ))),
            })
            .collect()
    }

    /// Build a byte-level BPE from a GGUF-style vocabulary (tokens in id order, types,
    /// merges): the `gpt2` tokenizer model of llama.cpp, loading what llama.cpp loads. A
    /// merge is split at its first space after the first character, as llama.cpp splits it; one
    /// with no such space, or naming a token (either side, or their join) missing from the
    /// vocabulary, can never produce a token and is skipped. A token spelled twice maps to
    /// its last id, as in llama.cpp.
    pub fn from_bpe_parts(tokens: &[String], types: &[i32], merges: &[String]) -> Result<Self> {
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| {
                // A space never sits inside a UTF-8 sequence, so this is llama.cpp's
                // byte-wise `find(' ', 1)`.
                let first = m.chars().next()?.len_utf8();
                let at = m[first..].find(' ')? + first;
                let (a, b) = (&m[..at], &m[at + 1..]);
                let known = |t: &str| vocab.contains_key(t);
                (known(a) && known(b) && known(&format!("{a}{b}")))
                    .then(|| (a.to_string(), b.to_string()))
            })
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(tokenizers::models::bpe::Vocab::from_iter(vocab), merges)
            .build()
            .map_err(tok_err)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == 3))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(tok_err)?;
        Ok(Self::wrap(tokenizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "To be, or not to be, that is the question:\n\
        Whether 'tis nobler in the mind to suffer\n\
        The slings and arrows of outrageous fortune,\n";

    #[test]
    fn trained_bpe_round_trips_any_text() {
        let tok = TextTokenizer::train_bpe(std::iter::repeat_n(TEXT, 20), 300).expect("train");
        assert!(tok.vocab_size() > 259 && tok.vocab_size() <= 300);
        for text in [
            TEXT,
            "unseen: ünïcödé ✓ 日本語\t\r\n",
            "",
            "<|im_start|>user\nhi<|im_end|>",
        ] {
            let ids = tok.encode(text).expect("encode");
            let back = tok.inner.decode(&ids, false).expect("decode");
            assert_eq!(back, text);
        }
        // Special tokens written in text become one id.
        let ids = tok.encode("<|im_end|>").expect("encode");
        assert_eq!(ids, vec![tok.token_id(IM_END).expect("special")]);
    }

    #[test]
    fn gguf_parts_rebuild_the_same_tokenizer() {
        let tok = TextTokenizer::train_bpe(std::iter::repeat_n(TEXT, 20), 320).expect("train");
        let (tokens, types): (Vec<String>, Vec<i32>) =
            tok.vocab_by_id().expect("vocab").into_iter().unzip();
        let merges = tok.bpe_merges().expect("merges");
        let rebuilt = TextTokenizer::from_bpe_parts(&tokens, &types, &merges).expect("rebuild");
        for text in [TEXT, "fortune's slings ✓", "<|im_start|>x<|im_end|>"] {
            assert_eq!(
                tok.encode(text).expect("a"),
                rebuilt.encode(text).expect("b")
            );
        }
    }
    /// llama.cpp loads GGUFs whose merges name tokens missing from the vocabulary (or are
    /// malformed) and never applies them; refusing the file was the bug.
    #[test]
    fn merges_naming_tokens_missing_from_the_vocabulary_are_skipped() {
        let tok = TextTokenizer::train_bpe(std::iter::repeat_n(TEXT, 20), 320).expect("train");
        let (tokens, types): (Vec<String>, Vec<i32>) =
            tok.vocab_by_id().expect("vocab").into_iter().unzip();
        let good = tok.bpe_merges().expect("merges");
        let mut merges = vec![
            "Ġ zzzqqq".to_string(), // right side missing
            "zzzqqq Ġ".to_string(), // left side missing
            "nospace".to_string(),  // no separator
            " ".to_string(),        // only a space
            String::new(),          // empty
        ];
        // A pair of known tokens whose join is not a token.
        assert!(!tokens.contains(&"QZ".to_string()));
        merges.push("Q Z".to_string());
        merges.extend(good.iter().cloned());
        let loaded = TextTokenizer::from_bpe_parts(&tokens, &types, &merges).expect("loads");
        for text in [TEXT, "fortune's slings ✓", "<|im_start|>x<|im_end|>"] {
            assert_eq!(
                tok.encode(text).expect("a"),
                loaded.encode(text).expect("b")
            );
        }
        // A token spelled twice loads too (the last id wins, as in llama.cpp).
        let mut dup = tokens.clone();
        dup.push(tokens[100].clone());
        let loaded = TextTokenizer::from_bpe_parts(&dup, &types, &good).expect("loads");
        assert_eq!(loaded.token_id(&tokens[100]), Some(tokens.len() as u32));
    }
}
