//! Training data: a text split into training and held-out parts, tokenized, and batches of
//! windows drawn with a seeded generator.

use agora_model::init::SeededRng;
use agora_model::TextTokenizer;
use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};

/// Split `text` so the last `holdout` fraction (cut at a line start) is held out.
pub fn split_holdout(text: &str, holdout: f64) -> Result<(&str, &str)> {
    if !(0.0..0.5).contains(&holdout) || holdout == 0.0 {
        return Err(TrainError::Setting(format!(
            "holdout fraction {holdout} must be in (0, 0.5)"
        )));
    }
    let mut cut = ((text.len() as f64) * (1.0 - holdout)) as usize;
    while cut < text.len() && !text.is_char_boundary(cut) {
        cut += 1;
    }
    let cut = text[cut..].find('\n').map_or(text.len(), |i| cut + i + 1);
    let (train, val) = text.split_at(cut);
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Data(format!(
            "{} bytes of text are too few to hold out {holdout} of them",
            text.len()
        )));
    }
    Ok((train, val))
}

/// Tokenize in line-aligned chunks, so memory stays bounded on large files.
pub fn tokenize(tokenizer: &TextTokenizer, text: &str) -> Result<Vec<u32>> {
    const CHUNK: usize = 1 << 16;
    let mut ids = Vec::with_capacity(text.len() / 3);
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(CHUNK);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let end = if end < rest.len() {
            rest[end..].find('\n').map_or(rest.len(), |i| end + i + 1)
        } else {
            end
        };
        ids.extend(tokenizer.encode(&rest[..end])?);
        rest = &rest[end..];
    }
    Ok(ids)
}

/// Tokenized training and held-out text.
pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    /// A batch of `batch` windows of `seq_len + 1` tokens: inputs and next-token targets.
    pub fn batch(
        &self,
        rng: &mut SeededRng,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if self.train.len() <= seq_len + 1 {
            return Err(TrainError::Data(format!(
                "{} training tokens are too few for windows of {}",
                self.train.len(),
                seq_len + 1
            )));
        }
        let mut inputs = Vec::with_capacity(batch * seq_len);
        let mut targets = Vec::with_capacity(batch * seq_len);
        for _ in 0..batch {
            let start = rng.below((self.train.len() - seq_len - 1) as u64) as usize;
            inputs.extend_from_slice(&self.train[start..start + seq_len]);
            targets.extend_from_slice(&self.train[start + 1..start + seq_len + 1]);
        }
        Ok((
            Tensor::from_vec(inputs, (batch, seq_len), device)?,
            Tensor::from_vec(targets, (batch, seq_len), device)?,
        ))
    }
}
