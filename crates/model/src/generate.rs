//! The generation loop: prefill, then sample and decode one token at a time, streaming each
//! token with its text and the last hidden state of the position that produced it.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::llama::Mode;
use crate::sampler::{logprobs, Sample, SamplerState, SamplingParams, TokenLogprobs};
use crate::LoadedModel;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// End at the model's end-of-sequence tokens.
    pub stop_at_eos: bool,
    /// Output tokens already produced elsewhere (a failed-over answer): they are prefilled
    /// after the prompt, count toward `max_tokens`, keep their sampler indices, and their
    /// text is not emitted again.
    pub resume: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 128,
            stop: vec![],
            stop_at_eos: true,
            resume: vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The caller stopped it.
    Cancelled,
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    /// The prompt was processed; hidden states of every prompt position, (t, hidden).
    Prefill { hidden: &'a Tensor },
    /// A token was sampled. `hidden` (hidden,) is the state of the position whose logits
    /// it was sampled from; `text` is the newly settled text (may be empty while a
    /// multi-byte character or a possible stop sequence is incomplete).
    Token {
        index: usize,
        token: u32,
        text: &'a str,
        hidden: &'a Tensor,
        sample: Sample,
        /// With `SamplingParams::logprobs`: the token's log-probability and alternatives.
        logprobs: Option<TokenLogprobs>,
    },
    /// Generation ended with text still held back (an incomplete character at the end).
    Tail { text: &'a str },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Output tokens, the resumed ones first.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes from the prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Text settled so far and how much of it was handed out; holds back an incomplete UTF-8
/// character and any tail that could still become a stop sequence.
struct TextStream<'a> {
    stop: &'a [String],
    emitted: usize,
}

impl<'a> TextStream<'a> {
    /// Returns (new text to emit, whether a stop sequence was found, final text length).
    fn advance(&mut self, text: &str) -> (std::ops::Range<usize>, bool) {
        if let Some(at) = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            let start = self.emitted.min(at);
            self.emitted = at;
            return (start..at, true);
        }
        let mut safe = text.len();
        if text.ends_with('\u{FFFD}') {
            safe = text.len() - '\u{FFFD}'.len_utf8();
        }
        // Hold back the longest suffix that is a proper prefix of a stop sequence.
        for s in self.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        while !text.is_char_boundary(safe) {
            safe -= 1;
        }
        let start = self.emitted;
        if safe > start {
            self.emitted = safe;
            (start..safe, false)
        } else {
            (start..start, false)
        }
    }
}

pub fn generate(
    model: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut sampler = SamplerState::new(model, &opts.sampling)?;
    let llama = &model.model;
    let ctx = llama.config().max_seq_len;
    let vocab = llama.config().vocab_size as u32;
    if prompt.is_empty() {
        return Err(ModelError::InvalidRequest("the prompt is empty".into()));
    }
    if prompt.len() >= ctx {
        return Err(ModelError::InvalidRequest(format!(
            "the prompt has {} tokens; the model's context is {ctx}",
            prompt.len()
        )));
    }
    if prompt.len() + opts.resume.len() >= ctx {
        return Err(ModelError::InvalidRequest(format!(
            "the prompt and resumed output have {} tokens; the model's context is {ctx}",
            prompt.len() + opts.resume.len()
        )));
    }
    if let Some(bad) = prompt.iter().chain(&opts.resume).find(|&&t| t >= vocab) {
        return Err(ModelError::InvalidRequest(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let max_tokens = opts.max_tokens.min(ctx - prompt.len());
    if opts.resume.len() >= max_tokens {
        return Err(ModelError::InvalidRequest(format!(
            "{} resumed tokens leave no room under max_tokens {max_tokens}",
            opts.resume.len()
        )));
    }
    let eos = if opts.stop_at_eos {
        model.stop_token_ids()
    } else {
        vec![]
    };
    let device = llama.device();

    let start = Instant::now();
    let mut cache = llama.new_cache();
    let prefill: Vec<u32> = prompt.iter().chain(&opts.resume).copied().collect();
    let input = Tensor::new(prefill.as_slice(), device)?.unsqueeze(0)?;
    let hidden = llama
        .forward_hidden(&input, Some(&mut cache), Mode::Serve)?
        .i(0)?;
    let mut last_hidden = hidden.i(prefill.len() - 1)?;
    let mut logits: Vec<f32> = llama
        .logits(&last_hidden.unsqueeze(0)?)?
        .squeeze(0)?
        .to_vec1()?;
    let prefill_time = start.elapsed();
    let mut finish = FinishReason::Length;
    if on_event(Event::Prefill { hidden: &hidden }).is_break() {
        finish = FinishReason::Cancelled;
    }

    let decode_start = Instant::now();
    let mut stream = TextStream {
        stop: &opts.stop,
        emitted: 0,
    };
    // Replay the resumed tokens through the text stream so what the first provider held back
    // is held back (and later emitted) exactly as it would have been.
    let mut tokens = Vec::with_capacity(max_tokens);
    let mut text = String::new();
    for &t in &opts.resume {
        sampler.advance(t).map_err(|_| {
            ModelError::InvalidRequest("the resumed output breaks the constraint".into())
        })?;
        tokens.push(t);
        text = model.tokenizer.decode(&tokens)?;
        if stream.advance(&text).1 {
            return Err(ModelError::InvalidRequest(
                "the resumed output already contains a stop sequence".into(),
            ));
        }
    }
    while finish != FinishReason::Cancelled && tokens.len() < max_tokens {
        let index = tokens.len();
        let s = sampler.sample(&mut logits, index as u64)?;
        if eos.contains(&s.token) {
            finish = FinishReason::Stop;
            break;
        }
        sampler.advance(s.token)?;
        let lp = opts
            .sampling
            .logprobs
            .map(|top| logprobs(&logits, s.token, usize::from(top)));
        tokens.push(s.token);
        text = model.tokenizer.decode(&tokens)?;
        let (range, stopped) = stream.advance(&text);
        let flow = on_event(Event::Token {
            index,
            token: s.token,
            text: &text[range],
            hidden: &last_hidden,
            sample: s,
            logprobs: lp,
        });
        if stopped {
            text.truncate(stream.emitted);
            finish = FinishReason::Stop;
            break;
        }
        if flow.is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
        if tokens.len() == max_tokens {
            break;
        }
        let input = Tensor::new(&[s.token], device)?.unsqueeze(0)?;
        last_hidden = llama
            .forward_hidden(&input, Some(&mut cache), Mode::Serve)?
            .i((0, 0))?;
        logits = llama
            .logits(&last_hidden.unsqueeze(0)?)?
            .squeeze(0)?
            .to_vec1()?;
    }
    if finish != FinishReason::Stop && stream.emitted < text.len() {
        let _ = on_event(Event::Tail {
            text: &text[stream.emitted..],
        });
    }
    Ok(Generation {
        tokens,
        text,
        finish_reason: finish,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: decode_start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_holds_back_possible_stop_sequences() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        let mut s = TextStream {
            stop: &stop,
            emitted: 0,
        };
        assert_eq!(s.advance("Hello E"), (0..6, false));
        assert_eq!(s.advance("Hello EN"), (6..6, false));
        assert_eq!(s.advance("Hello ENT"), (6..9, false));
        assert_eq!(s.advance("Hello ENT\n"), (9..9, false));
        assert_eq!(s.advance("Hello ENT\n\nmore"), (9..9, true));
        assert_eq!(s.emitted, 9);
    }

    #[test]
    fn stream_holds_back_incomplete_characters() {
        let mut s = TextStream {
            stop: &[],
            emitted: 0,
        };
        assert_eq!(s.advance("ab\u{FFFD}"), (0..2, false));
        assert_eq!(s.advance("abé"), (2..4, false));
    }
}
