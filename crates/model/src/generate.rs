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
struct TextStream {
    emitted: usize,
}

impl TextStream {
    /// Returns (new text to emit, whether a stop sequence was found, final text length).
    fn advance(&mut self, text: &str, stop: &[String]) -> (std::ops::Range<usize>, bool) {
        if let Some(at) = stop
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
        for s in stop {
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

/// What a [`Sequence`] needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Its next prefill pass ([`Sequence::prefill_step`]).
    Prefill,
    /// A decode step feeding this token ([`Llama::decode_batch`](crate::Llama::decode_batch)
    /// through [`Sequence::decode_many`]).
    Decode(u32),
    /// Nothing: it ended.
    Finished(FinishReason),
}

/// What [`Sequence::pass_many`] computed.
pub struct MixedPass {
    /// Per prefilling sequence, the hidden states of the positions computed, (t, hidden).
    pub prefill: Vec<Tensor>,
    /// The decoding sequences' hidden states, (b, hidden).
    pub decode: Tensor,
    /// Their logits, row i for decoding sequence i.
    pub decode_logits: Vec<Vec<f32>>,
}

/// One generation between forward passes: its cache, its output so far, its text stream.
/// [`generate`] drives one; a serving scheduler drives many, running each one's prefill
/// passes on their own and their decode steps together ([`Sequence::decode_many`]). Each
/// computes the same bits either way, so its tokens, text and hidden states do not depend on
/// its neighbours.
pub struct Sequence {
    opts: GenerateOptions,
    prompt_len: usize,
    /// Prompt then resumed tokens: what the prefill computes.
    input: Vec<u32>,
    max_tokens: usize,
    eos: Vec<u32>,
    /// The sampler with its constraint's state (the grammar), advanced by every token.
    sampler: SamplerState,
    cache: crate::Cache,
    tokens: Vec<u32>,
    text: String,
    stream: TextStream,
    next: Next,
    started: Instant,
    prefilled_at: Option<Instant>,
}

impl Sequence {
    /// Checks the request against the model and replays the resumed tokens through the text
    /// stream. Allocates nothing large: the cache grows as positions are computed.
    pub fn new(model: &LoadedModel, prompt: &[u32], opts: &GenerateOptions) -> Result<Self> {
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
        // Replay the resumed tokens through the text stream so what the first provider held
        // back is held back (and later emitted) exactly as it would have been.
        let mut stream = TextStream { emitted: 0 };
        let mut tokens = Vec::with_capacity(max_tokens);
        let mut text = String::new();
        for &t in &opts.resume {
            sampler.advance(t).map_err(|_| {
                ModelError::InvalidRequest("the resumed output breaks the constraint".into())
            })?;
            tokens.push(t);
            text = model.tokenizer.decode(&tokens)?;
            if stream.advance(&text, &opts.stop).1 {
                return Err(ModelError::InvalidRequest(
                    "the resumed output already contains a stop sequence".into(),
                ));
            }
        }
        Ok(Sequence {
            opts: opts.clone(),
            prompt_len: prompt.len(),
            input: prompt.iter().chain(&opts.resume).copied().collect(),
            max_tokens,
            eos,
            sampler,
            cache: llama.new_cache(),
            tokens,
            text,
            stream,
            next: Next::Prefill,
            started: Instant::now(),
            prefilled_at: None,
        })
    }

    /// Positions this sequence may come to hold in its cache: prompt, resumed and new tokens.
    pub fn max_positions(&self) -> usize {
        self.prompt_len + self.max_tokens
    }

    /// Positions its cache holds now.
    pub fn positions(&self) -> usize {
        self.cache.len()
    }

    /// Prefill positions still to compute.
    pub fn prefill_left(&self) -> usize {
        self.input.len().saturating_sub(self.cache.len())
    }

    pub fn next(&self) -> Next {
        self.next
    }

    /// Output tokens so far, the resumed ones first.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Runs the next prefill pass (up to the next multiple of
    /// [`PREFILL_CHUNK`](crate::llama::PREFILL_CHUNK)) and returns the hidden states of its
    /// positions, (t, hidden). After the last pass, feed the last row to [`Sequence::step`].
    pub fn prefill_step(&mut self, llama: &crate::Llama) -> Result<Tensor> {
        let at = self.cache.len();
        if self.next != Next::Prefill || at >= self.input.len() {
            return Err(ModelError::InvalidRequest(
                "the sequence has no prefill left".into(),
            ));
        }
        let n = crate::llama::prefill_chunk_len(at, self.input.len() - at);
        let input = Tensor::new(&self.input[at..at + n], llama.device())?.unsqueeze(0)?;
        let hidden = llama
            .forward_hidden(&input, Some(&mut self.cache), Mode::Serve)?
            .i(0)?;
        if self.cache.len() == self.input.len() {
            self.prefilled_at = Some(Instant::now());
        }
        Ok(hidden)
    }

    /// Decode steps of several sequences in one pass (each must be at [`Next::Decode`]):
    /// returns their hidden states (b, hidden) and logits, row i for `seqs[i]`, each the
    /// bits a decode of that sequence alone computes.
    pub fn decode_many(
        llama: &crate::Llama,
        seqs: &mut [&mut Sequence],
    ) -> Result<(Tensor, Vec<Vec<f32>>)> {
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs.iter_mut() {
            let Next::Decode(token) = s.next else {
                return Err(ModelError::InvalidRequest(
                    "a sequence in the batch is not decoding".into(),
                ));
            };
            rows.push((token, &mut s.cache));
        }
        let hidden = llama.decode_batch(&mut rows)?;
        if hidden.dim(0)? == 0 {
            return Ok((hidden, vec![]));
        }
        let logits = llama.logits_audit(&hidden)?.to_vec2()?;
        Ok((hidden, logits))
    }

    /// One pass over the next prefill chunk of each of `prefill` (each at [`Next::Prefill`])
    /// and a decode step of each of `decode` (each at [`Next::Decode`]): returns the hidden
    /// states of each prefill's positions, (t, hidden) as [`Sequence::prefill_step`] does,
    /// and those of the decode rows with their logits as [`Sequence::decode_many`] does,
    /// every one the bits its sequence computes alone. The rows share one forward pass where
    /// the model's kernels allow it ([`crate::Llama::mixes_rows`]); otherwise each prefill
    /// runs its own pass, then the decodes one together.
    pub fn pass_many(
        llama: &crate::Llama,
        prefill: &mut [&mut Sequence],
        decode: &mut [&mut Sequence],
    ) -> Result<MixedPass> {
        if prefill.is_empty() || !llama.mixes_rows() {
            let mut hidden = Vec::with_capacity(prefill.len());
            for s in prefill.iter_mut() {
                hidden.push(s.prefill_step(llama)?);
            }
            let (decode_hidden, decode_logits) = Sequence::decode_many(llama, decode)?;
            return Ok(MixedPass {
                prefill: hidden,
                decode: decode_hidden,
                decode_logits,
            });
        }
        let mut chunks = Vec::with_capacity(prefill.len());
        for s in prefill.iter_mut() {
            let at = s.cache.len();
            if s.next != Next::Prefill || at >= s.input.len() {
                return Err(ModelError::InvalidRequest(
                    "a sequence in the batch has no prefill left".into(),
                ));
            }
            let n = crate::llama::prefill_chunk_len(at, s.input.len() - at);
            chunks.push((&s.input[at..at + n], &mut s.cache));
        }
        let mut rows = Vec::with_capacity(decode.len());
        for s in decode.iter_mut() {
            let Next::Decode(token) = s.next else {
                return Err(ModelError::InvalidRequest(
                    "a sequence in the batch is not decoding".into(),
                ));
            };
            rows.push((token, &mut s.cache));
        }
        let (hidden, decode_hidden) = llama.forward_mixed(&mut chunks, &mut rows)?;
        for s in prefill.iter_mut() {
            if s.cache.len() == s.input.len() {
                s.prefilled_at = Some(Instant::now());
            }
        }
        let decode_logits = if decode_hidden.dim(0)? == 0 {
            vec![]
        } else {
            llama.logits_audit(&decode_hidden)?.to_vec2()?
        };
        Ok(MixedPass {
            prefill: hidden,
            decode: decode_hidden,
            decode_logits,
        })
    }

    /// Samples the next token from `logits` (those of the state `hidden`, (hidden,), of the
    /// last position computed), reports it, and decides what comes next.
    pub fn step(
        &mut self,
        model: &LoadedModel,
        hidden: &Tensor,
        logits: &[f32],
        mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        if matches!(self.next, Next::Finished(_)) {
            return Ok(());
        }
        let index = self.tokens.len();
        // The constraint masks a copy: the caller's logits stay those the model computed.
        let mut logits = logits.to_vec();
        let s = self.sampler.sample(&mut logits, index as u64)?;
        if self.eos.contains(&s.token) {
            self.next = Next::Finished(FinishReason::Stop);
            return Ok(());
        }
        self.sampler.advance(s.token)?;
        let lp = self
            .opts
            .sampling
            .logprobs
            .map(|top| logprobs(&logits, s.token, usize::from(top)));
        self.tokens.push(s.token);
        self.text = model.tokenizer.decode(&self.tokens)?;
        let (range, stopped) = self.stream.advance(&self.text, &self.opts.stop);
        let flow = on_event(Event::Token {
            index,
            token: s.token,
            text: &self.text[range],
            hidden,
            sample: s,
            logprobs: lp,
        });
        self.next = if stopped {
            self.text.truncate(self.stream.emitted);
            Next::Finished(FinishReason::Stop)
        } else if flow.is_break() {
            Next::Finished(FinishReason::Cancelled)
        } else if self.tokens.len() >= self.max_tokens {
            Next::Finished(FinishReason::Length)
        } else {
            Next::Decode(s.token)
        };
        Ok(())
    }

    /// Stops it where it is (the caller went away).
    pub fn cancel(&mut self) {
        if !matches!(self.next, Next::Finished(_)) {
            self.next = Next::Finished(FinishReason::Cancelled);
        }
    }

    /// Ends it: reports held-back text (unless a stop sequence ended it) and returns what was
    /// generated.
    pub fn finish(self, mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>) -> Generation {
        let finish = match self.next {
            Next::Finished(f) => f,
            // Ended from outside before its last step.
            Next::Prefill | Next::Decode(_) => FinishReason::Cancelled,
        };
        if finish != FinishReason::Stop && self.stream.emitted < self.text.len() {
            let _ = on_event(Event::Tail {
                text: &self.text[self.stream.emitted..],
            });
        }
        let prefilled = self.prefilled_at.unwrap_or_else(Instant::now);
        Generation {
            tokens: self.tokens,
            text: self.text,
            finish_reason: finish,
            prompt_tokens: self.prompt_len,
            prefill_time: prefilled.duration_since(self.started),
            decode_time: prefilled.elapsed(),
        }
    }
}

pub fn generate(
    model: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<Generation> {
    let llama = &model.model;
    let mut seq = Sequence::new(model, prompt, opts)?;
    let mut parts = vec![];
    while seq.prefill_left() > 0 {
        parts.push(seq.prefill_step(llama)?);
    }
    let hidden = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(&parts, 0)?
    };
    let mut last_hidden = hidden.i(hidden.dim(0)? - 1)?;
    let mut logits: Vec<f32> = llama
        .logits(&last_hidden.unsqueeze(0)?)?
        .squeeze(0)?
        .to_vec1()?;
    if on_event(Event::Prefill { hidden: &hidden }).is_break() {
        seq.cancel();
    }
    loop {
        seq.step(model, &last_hidden, &logits, &mut on_event)?;
        let Next::Decode(token) = seq.next() else {
            break;
        };
        let input = Tensor::new(&[token], llama.device())?.unsqueeze(0)?;
        last_hidden = llama
            .forward_hidden(&input, Some(&mut seq.cache), Mode::Serve)?
            .i((0, 0))?;
        logits = llama
            .logits(&last_hidden.unsqueeze(0)?)?
            .squeeze(0)?
            .to_vec1()?;
    }
    Ok(seq.finish(on_event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_holds_back_possible_stop_sequences() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        let mut s = TextStream { emitted: 0 };
        assert_eq!(s.advance("Hello E", &stop), (0..6, false));
        assert_eq!(s.advance("Hello EN", &stop), (6..6, false));
        assert_eq!(s.advance("Hello ENT", &stop), (6..9, false));
        assert_eq!(s.advance("Hello ENT\n", &stop), (9..9, false));
        assert_eq!(s.advance("Hello ENT\n\nmore", &stop), (9..9, true));
        assert_eq!(s.emitted, 9);
    }

    #[test]
    fn stream_holds_back_incomplete_characters() {
        let mut s = TextStream { emitted: 0 };
        assert_eq!(s.advance("ab\u{FFFD}", &[]), (0..2, false));
        assert_eq!(s.advance("abé", &[]), (2..4, false));
    }
}
