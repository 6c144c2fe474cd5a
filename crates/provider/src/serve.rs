//! One inference stream: check the signed request, queue it on the model thread's batch, stream the
//! tokens, sign the receipt, and take the voucher that pays for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::{Amount, Hash32, Keypair};
use agora_model::chat::ChatMessage;
use agora_model::generate::{FinishReason, GenerateOptions};
use agora_model::{LoadedModel, SamplingParams};
use agora_net::protocol::{
    fingerprint_hash, now_ms, read_frame, tokens_hash, write_frame, ErrorCode, Finish, Frame,
    Material, PromptSpec, Receipt, RequestId, SignedRequest, SignedVoucher, REQUEST_WINDOW_MS,
};
use futures::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::payments::Payments;
use crate::worker::{Job, QueueError, Worker, WorkerEvent};

/// How long a peer may take to send its request or its voucher.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every stream of this provider shares.
pub struct Service {
    /// The chain.
    pub chain_id: u64,
    /// The provider's ledger key: signs offers and receipts.
    pub key: Keypair,
    /// The model served.
    pub model: Arc<LoadedModel>,
    /// The model's id as the network names it.
    pub model_id: Hash32,
    /// Current price per million prompt tokens.
    pub price_in: Amount,
    /// Current price per million output tokens.
    pub price_out: Amount,
    /// The model thread.
    pub worker: Worker,
    /// Channels and vouchers.
    pub payments: Payments,
    /// Request ids seen recently (replay protection), with when they were seen.
    pub seen: Mutex<HashMap<RequestId, u64>>,
    /// The ledger epoch as last read (kept fresh apart from the claim loop); a receipt names
    /// its value when the answer ends, so it lands in the root of that epoch or the next.
    pub epoch: std::sync::atomic::AtomicU64,
    /// Every answer's audit material.
    pub receipts: crate::receipts::ReceiptLog,
    /// Who may read which leaf's material.
    pub audit_gate: crate::audits::AuditGate,
    /// Set when this provider is the ledger's planter.
    pub canary: Option<crate::canary::Canary>,
    /// Test builds only: refuse every audit.
    #[cfg(feature = "adversary")]
    pub refuse_audits: bool,
    /// Test builds only: leave every second receipt out of the receipt log, so out of the
    /// posted roots (the answers are still served and paid).
    #[cfg(feature = "adversary")]
    pub omit_receipts: Option<std::sync::atomic::AtomicU64>,
    /// Test builds only: claim a thousand times the prompt's real token count, in the
    /// acceptance and in the receipt (and its cost).
    #[cfg(feature = "adversary")]
    pub overcharge: bool,
}

/// What the model thread produced for one answer.
struct Finished {
    tokens: Vec<u32>,
    tail: String,
    finish: Finish,
    fingerprint: Vec<u8>,
}

/// A refusal sent back as [`Frame::Error`].
struct Refusal(ErrorCode, String);

impl Service {
    /// The prompt tokens this provider charges for: the prompt's own count (test builds: the
    /// overcharging adversary claims a thousand times more).
    fn claimed_prompt(&self, real: usize) -> u32 {
        let real = u32::try_from(real).unwrap_or(u32::MAX);
        #[cfg(feature = "adversary")]
        if self.overcharge {
            return real.saturating_mul(1000);
        }
        real
    }

    /// Serves one inference stream to its end. Errors are logged, never propagated: a bad
    /// peer cannot take the provider down.
    pub async fn handle<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let request: SignedRequest =
            match tokio::time::timeout(PEER_TIMEOUT, read_frame(&mut stream)).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let _ = write_frame(&mut stream, &error_frame(ErrorCode::BadRequest, e)).await;
                    return;
                }
                Err(_) => return,
            };
        let id = hex::encode(request.request.request_id);
        match self.serve(&mut stream, request).await {
            Ok(()) => agora_metrics::provider().request("served"),
            Err(Refusal(code, message)) => {
                agora_metrics::provider().request(&format!("{code:?}").to_lowercase());
                tracing::info!(request = %id, ?code, "refused: {message}");
                let _ = write_frame(&mut stream, &Frame::Error { code, message }).await;
            }
        }
    }

    async fn serve<S>(&self, stream: &mut S, signed: SignedRequest) -> Result<(), Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let started_ms = now_ms();
        let (prompt, opts, reservation) = self.admit(&signed, started_ms).await?;
        // Held until the answer is recorded as served (or fails).
        let _reservation = reservation;
        let r = &signed.request;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let prompt_tokens = self.claimed_prompt(prompt.len());
        self.worker
            .submit(Job {
                prompt: prompt.clone(),
                opts,
                events: tx,
            })
            .map_err(|e| match e {
                QueueError::TooLarge { .. } => Refusal(ErrorCode::ContextLength, e.to_string()),
                QueueError::Busy(_) | QueueError::Stopped => {
                    Refusal(ErrorCode::Busy, e.to_string())
                }
            })?;
        tracing::debug!(request = %hex::encode(r.request_id), "accepted");
        write_frame(stream, &Frame::Accepted { prompt_tokens })
            .await
            .map_err(|e| Refusal(ErrorCode::Internal, e.to_string()))?;
        let (accepted, mut first) = (std::time::Instant::now(), None);
        while let Some(ev) = rx.recv().await {
            match ev {
                WorkerEvent::Token {
                    index,
                    token,
                    text,
                    logprobs,
                } => {
                    first.get_or_insert_with(|| agora_metrics::provider().first_token(accepted));
                    // A write error means the reader left; dropping `rx` cancels the job.
                    if write_frame(
                        stream,
                        &Frame::Token {
                            index,
                            token,
                            text,
                            logprobs,
                        },
                    )
                    .await
                    .is_err()
                    {
                        return Ok(());
                    }
                }
                WorkerEvent::Failed(message) => return Err(Refusal(ErrorCode::Internal, message)),
                WorkerEvent::Done {
                    tokens,
                    tail,
                    finish,
                    fingerprint,
                } => {
                    let finish = match finish {
                        FinishReason::Stop => Finish::Stop,
                        FinishReason::Length | FinishReason::Cancelled => Finish::Length,
                    };

                    agora_metrics::provider().answered(prompt.len(), tokens.len(), first);
                    let answer = Finished {
                        tokens,
                        tail,
                        finish,
                        fingerprint,
                    };
                    return self
                        .finish(stream, &signed, &prompt, answer, started_ms)
                        .await;
                }
            }
        }
        Err(Refusal(
            ErrorCode::Internal,
            "the model thread stopped".into(),
        ))
    }

    /// Checks a request and prepares its job: (prompt ids, options, most it could cost).
    async fn admit(
        &self,
        signed: &SignedRequest,
        now: u64,
    ) -> Result<(Vec<u32>, GenerateOptions, crate::payments::Reservation), Refusal> {
        let bad = |m: &str| Refusal(ErrorCode::BadRequest, m.to_string());
        signed
            .verify()
            .map_err(|e| Refusal(ErrorCode::BadRequest, e.to_string()))?;
        let r = &signed.request;
        if r.chain_id != self.chain_id {
            return Err(bad("request for another chain"));
        }
        if r.provider != self.key.account() {
            return Err(bad("request addressed to another provider"));
        }
        if r.model != self.model_id {
            return Err(Refusal(
                ErrorCode::UnknownModel,
                format!("this provider serves {}, not {}", self.model_id, r.model),
            ));
        }
        if r.issued_ms.abs_diff(now) > REQUEST_WINDOW_MS {
            return Err(bad("request issued outside the replay window"));
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, t| now.saturating_sub(*t) <= 2 * REQUEST_WINDOW_MS);
            if seen.insert(r.request_id, now).is_some() {
                return Err(bad("request id already used (replay)"));
            }
        }
        // A constraint this provider cannot apply is refused before any work or payment.
        if let Some(c) = &r.sampling.constraint {
            agora_model::constrain::compile(c)
                .and_then(|_| agora_model::constrain::vocab(&self.model))
                .map_err(|e| Refusal(ErrorCode::BadRequest, e.to_string()))?;
        }
        if r.price_in < self.price_in || r.price_out < self.price_out {
            return Err(Refusal(
                ErrorCode::Price,
                format!(
                    "price is {}/{} per million tokens",
                    self.price_in, self.price_out
                ),
            ));
        }
        let prompt = self.tokenize(&r.prompt)?;
        let ctx = self.model.model.config().max_seq_len;
        if prompt.len() + r.resume.len() >= ctx {
            return Err(Refusal(
                ErrorCode::ContextLength,
                format!(
                    "the prompt has {} tokens (plus {} resumed); the model's context is {ctx}",
                    prompt.len(),
                    r.resume.len()
                ),
            ));
        }
        let vocab = self.model.model.config().vocab_size as u32;
        if r.resume.iter().any(|&t| t >= vocab) {
            return Err(bad("resumed token outside the vocabulary"));
        }
        let new_tokens = u64::from(r.max_tokens).saturating_sub(r.resume.len() as u64);
        let need = agora_market::cost_micros(
            r.price_in,
            r.price_out,
            (prompt.len() + r.resume.len()) as u64,
            new_tokens,
        )
        .map(|m| agora_market::micros_to_amount(m.saturating_add(999_999)))
        .ok_or_else(|| bad("cost overflows"))?;
        let reservation = self
            .payments
            .check_at(
                r.channel,
                r.payer,
                need,
                self.epoch.load(std::sync::atomic::Ordering::Relaxed),
            )
            .await
            .map_err(|e| Refusal(ErrorCode::Payment, e.to_string()))?;
        let opts = GenerateOptions {
            sampling: SamplingParams {
                temperature: f64::from(r.sampling.temperature),
                top_k: 0,
                top_p: f64::from(r.sampling.top_p),
                seed: r.sampling.seed,
                constraint: r.sampling.constraint.clone(),
                logprobs: r.sampling.top_logprobs,
            },
            max_tokens: r.max_tokens as usize,
            stop: r.stop.clone(),
            stop_at_eos: true,
            resume: r.resume.clone(),
        };
        Ok((prompt, opts, reservation))
    }

    fn tokenize(&self, prompt: &PromptSpec) -> Result<Vec<u32>, Refusal> {
        // The same function the gateway counts with (`agora_model::prompt`): message content
        // stays text, so typed control tokens cannot open a new turn.
        let ids = match prompt {
            PromptSpec::Text(t) => self.model.tokenizer.encode(t),
            PromptSpec::Chat(messages) => {
                let messages: Vec<ChatMessage> = messages
                    .iter()
                    .map(|(role, content)| ChatMessage::new(role, content))
                    .collect();
                self.model.chat_prompt_ids(&messages)
            }
        }
        .map_err(|e| Refusal(ErrorCode::BadRequest, e.to_string()))?;
        if ids.is_empty() {
            return Err(Refusal(ErrorCode::BadRequest, "the prompt is empty".into()));
        }
        Ok(ids)
    }

    async fn finish<S>(
        &self,
        stream: &mut S,
        signed: &SignedRequest,
        prompt: &[u32],
        answer: Finished,
        started_ms: u64,
    ) -> Result<(), Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let r = &signed.request;
        let Finished {
            tokens,
            tail,
            finish,
            fingerprint,
        } = answer;
        // Resumed tokens are prefilled like the prompt and priced like it.
        let prompt_tokens = self.claimed_prompt(prompt.len());
        let cost_micros = agora_market::cost_micros(
            r.price_in,
            r.price_out,
            u64::from(prompt_tokens) + r.resume.len() as u64,
            tokens.len() as u64,
        )
        .unwrap_or(u128::MAX);
        let all: Vec<u32> = r.resume.iter().chain(&tokens).copied().collect();
        // A canary files perturbed fingerprints for a secret few answers; the tokens the
        // user gets are the honest ones.
        let planted = match &self.canary {
            Some(c) if c.chosen(&r.request_id) => crate::canary::corrupt(&fingerprint),
            _ => None,
        };
        let is_plant = planted.is_some();
        let fingerprint = planted.unwrap_or(fingerprint);
        let receipt = Receipt {
            chain_id: self.chain_id,
            epoch: self.epoch.load(std::sync::atomic::Ordering::Relaxed),
            request_id: r.request_id,
            provider: self.key.account(),
            payer: r.payer,
            channel: r.channel,
            model: self.model_id,
            prompt_hash: tokens_hash(prompt),
            output_hash: tokens_hash(&all),
            prompt_tokens,
            resumed_tokens: r.resume.len() as u32,
            output_tokens: tokens.len() as u32,
            sampling: r.sampling.clone(),
            fingerprint_hash: fingerprint_hash(&fingerprint),
            price_in: r.price_in,
            price_out: r.price_out,
            cost_micros,
            started_ms,
            finished_ms: now_ms(),
        }
        .sign(&self.key);
        self.payments.served(&r.channel, cost_micros);
        if let (true, Some(c)) = (is_plant, &self.canary) {
            crate::canary::lock(&c.planted).insert(receipt.hash());
        }
        let material = Material {
            receipt: receipt.clone(),
            prompt: prompt.to_vec(),
            resumed: r.resume.clone(),
            output: tokens,
            fingerprint,
        };
        #[cfg(feature = "adversary")]
        let omitted = self
            .omit_receipts
            .as_ref()
            .is_some_and(|n| n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 1);
        #[cfg(not(feature = "adversary"))]
        let omitted = false;
        if omitted {
            tracing::info!(receipt = %receipt.hash(), "adversary: receipt left out of the roots");
        } else if let Err(e) = self.receipts.record(&material) {
            // Without its material the answer cannot pass an audit; refuse to go on silently.
            tracing::error!("recording a receipt: {e}");
            return Err(Refusal(
                ErrorCode::Internal,
                "the receipt log failed".into(),
            ));
        }
        write_frame(
            stream,
            &Frame::Done {
                finish,
                tail,
                chain_sig: self.receipts.chain_receipt_sig(&receipt),
                receipt: Box::new(receipt),
            },
        )
        .await
        .map_err(|e| Refusal(ErrorCode::Internal, e.to_string()))?;
        let voucher: Option<SignedVoucher> =
            match tokio::time::timeout(PEER_TIMEOUT, read_frame(stream)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::warn!("unreadable voucher: {e}");
                    None
                }
                Err(_) => None,
            };
        match voucher {
            None => tracing::warn!(payer = %r.payer, "no voucher for an answer"),
            Some(v) => match self.payments.accept_voucher(v) {
                Ok(short) if short.is_zero() => {}
                Ok(short) => tracing::warn!(payer = %r.payer, %short, "payer is behind"),
                Err(e) => tracing::warn!(payer = %r.payer, "{e}"),
            },
        }
        Ok(())
    }
}

fn error_frame(code: ErrorCode, e: impl std::fmt::Display) -> Frame {
    Frame::Error {
        code,
        message: e.to_string(),
    }
}
