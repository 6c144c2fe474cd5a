//! What the gateway needs from the network behind it.
//!
//! The HTTP layer only speaks the OpenAI dialect; everything about finding a provider, paying
//! it and failing over lives behind [`Backend`] (implemented by `agora-broker`). Keeping the
//! boundary this small lets the HTTP face be tested against a fake network.

use agora_core::AccountId;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A model the network can serve, as `GET /v1/models` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The name clients put in `model` (e.g. `llama-3.2-1b-instruct`).
    pub id: String,
    /// The content-addressed `ModelId`, hex.
    pub model_id: String,
    /// Unix seconds when the model was registered.
    pub created: u64,
    /// Who published it.
    pub owned_by: String,
    /// The longest prompt plus completion, in tokens.
    pub context_length: u32,
    /// How many providers offer it right now.
    pub providers: usize,
    /// The weights' quantization (`Q4_1`, `Q8_0`, `F32`, ...), known when the gateway holds
    /// the model's file (the ModelId commits to it); `None` otherwise.
    pub quantization: Option<String>,
    /// What at least one live offer serves beyond plain text.
    #[serde(skip)]
    pub capabilities: Capabilities,
    /// Prices over the live offers, base units per million tokens.
    #[serde(skip)]
    pub pricing: Pricing,
}

/// The request features at least one live offer of a model serves (providers sign what
/// they serve into their offers; routing sends a request only to offers serving what it
/// uses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `tools` (calls rendered into the prompt, parsed from the answer).
    pub tools: bool,
    /// Grammar-constrained decoding: `response_format` json_object / json_schema, and a
    /// required or named tool call.
    pub structured_output: bool,
    /// `logprobs` / `top_logprobs`.
    pub logprobs: bool,
}

impl Capabilities {
    /// Everything.
    pub const ALL: Capabilities = Capabilities {
        tools: true,
        structured_output: true,
        logprobs: true,
    };
}

/// Prices over a model's live offers, in base units per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pricing {
    /// Per million prompt (input) tokens.
    pub prompt: PriceRange,
    /// Per million completion (output) tokens.
    pub completion: PriceRange,
}

/// The lowest and the median of one price over live offers (the median of an even count is
/// the lower middle one, so it is always a price someone offers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceRange {
    /// The cheapest offer.
    pub lowest: u128,
    /// The median offer.
    pub median: u128,
}

impl PriceRange {
    /// The range of `prices` (zero when empty).
    pub fn of(mut prices: Vec<u128>) -> PriceRange {
        prices.sort_unstable();
        PriceRange {
            lowest: prices.first().copied().unwrap_or(0),
            median: prices
                .get(prices.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(0),
        }
    }
}

/// One chat turn, after the gateway flattened content parts to text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (the gateway maps `developer` to `system`).
    pub role: String,
    /// The text.
    pub content: String,
}

/// What to continue: a chat (the provider applies the model's template) or raw text.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `/v1/chat/completions`.
    Chat(Vec<ChatMessage>),
    /// `/v1/completions`.
    Text(String),
}

/// One generation job, validated by the gateway.
#[derive(Debug, Clone)]
pub struct Job {
    /// The model name as the client gave it.
    pub model: String,
    /// The prompt.
    pub prompt: Prompt,
    /// The most tokens to generate (at least 1, at most the gateway's cap).
    pub max_tokens: u32,
    /// Sampling temperature in `0..=2`; 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`.
    pub top_p: f32,
    /// The client's sampling seed; `None` lets the network derive one.
    pub seed: Option<u64>,
    /// Up to four stop strings, none empty.
    pub stop: Vec<String>,
    /// Which providers may serve it and in what order (the request's `provider` object).
    pub routing: crate::routing::ProviderPrefs,
    /// The key's spending budget: the backend reserves each attempt's most cost from it
    /// before paying and settles the charge after (`None`: nothing to account).
    pub budget: Option<crate::spend::Budget>,
    /// A JSON Schema's text that constrains decoding (`response_format`, a required tool);
    /// the gateway compiled it already.
    pub constraint: Option<String>,
    /// Per-token log-probabilities with this many alternatives (`logprobs`).
    pub top_logprobs: Option<u8>,
    /// The prompt carries tools the model may call (`tools` with a `tool_choice` other than
    /// `none`): only providers whose offers serve tools may take it.
    pub tools: bool,
}

/// One alternative of a token's log-probability report.
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobAlt {
    /// The token's text.
    pub token: String,
    /// The token's bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
}

/// A generated token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token itself.
    pub chosen: LogprobAlt,
    /// The most likely tokens at that step, most likely first.
    pub top: Vec<LogprobAlt>,
}

/// Who is asking: the API key's id and the ledger account that pays (custodial: the gateway
/// holds its key seed).
#[derive(Clone)]
pub struct Caller {
    /// The API key's id (`key_...`), for logs and accounting.
    pub key_id: String,
    /// The ledger account that pays for this key's requests.
    pub account: AccountId,
    /// The ed25519 seed of `account`, so the broker can sign payment vouchers.
    pub account_seed: [u8; 32],
}

impl fmt::Debug for Caller {
    /// Never prints the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("key_id", &self.key_id)
            .field("account", &self.account)
            .field("account_seed", &"<redacted>")
            .finish()
    }
}

/// Why generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum.
    pub total_tokens: u32,
}

/// One signed receipt behind an answer (an answer that failed over has several).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiptRef {
    /// The provider's account, hex.
    pub provider: String,
    /// The receipt hash, hex; anyone can look it up and check it.
    pub receipt: String,
    /// Tokens this provider generated.
    pub completion_tokens: u32,
    /// What the caller paid this provider, in base units, as a decimal string (it is a u128).
    pub charged: String,
    /// The signed receipt as a JSON document anyone can check (served by
    /// `GET /v1/receipts/{id}`; see `docs/gateway.md`); `None` where the backend has none.
    #[serde(skip)]
    pub signed: Option<serde_json::Value>,
}

impl ReceiptRef {
    /// `charged` as a number (0 when unreadable).
    pub fn charged_units(&self) -> u128 {
        self.charged.parse().unwrap_or(0)
    }
}

/// What a running job reports, in order: text pieces, then exactly one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More output text (may be empty; the gateway skips empty pieces).
    Text(String),
    /// The log-probabilities of the next output token (sent before its `Text`, only when
    /// the job asked for them).
    Logprob(TokenLogprob),
    /// The job is done; nothing follows.
    Finished {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts over the whole answer.
        usage: Usage,
        /// The receipts that cover it.
        receipts: Vec<ReceiptRef>,
    },
}

/// A job a provider accepted.
pub struct Started {
    /// The network's request id (the response id is `chatcmpl-<request_id>`).
    pub request_id: String,
    /// The model name to echo back.
    pub model: String,
    /// Prompt tokens, known once the prompt is tokenized.
    pub prompt_tokens: u32,
    /// The job's events; dropping this cancels the job.
    pub events: tokio::sync::mpsc::Receiver<Result<StreamEvent, BackendError>>,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started")
            .field("request_id", &self.request_id)
            .field("model", &self.model)
            .field("prompt_tokens", &self.prompt_tokens)
            .finish_non_exhaustive()
    }
}

/// Why the network could not serve a job; each maps to one HTTP status and OpenAI error type
/// (see `docs/gateway.md`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// No such model name: 404 `model_not_found`.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    /// The job is invalid for this model: 400.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The request field at fault, if one.
        param: Option<String>,
    },
    /// Prompt plus `max_tokens` exceed the model's context: 400 `context_length_exceeded`.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// The paying account cannot cover the job: 429 `insufficient_quota`, as OpenAI does.
    #[error("{0}")]
    InsufficientCredit(String),
    /// The API key's budget (or an ancestor key's) cannot cover the job: 402.
    #[error("{0}")]
    BudgetExceeded(String),
    /// The model is served, but no live provider meets the request's routing constraints
    /// (`provider.only`, `ignore`, `max_price`, `quantizations`, `allow_fallbacks: false`):
    /// 404 `no_matching_provider`.
    #[error("{0}")]
    NoMatchingProvider(String),
    /// No provider can take the job now: 503 `no_capacity` (clients retry).
    #[error("{0}")]
    NoCapacity(String),
    /// The providers failed and failover ran out: 502.
    #[error("{0}")]
    Upstream(String),
    /// A bug or local failure in the gateway or broker: 500.
    #[error("{0}")]
    Internal(String),
}

/// The network, as the gateway sees it.
pub trait Backend: Send + Sync + 'static {
    /// The models currently served (at least one live offer).
    fn models(&self) -> Vec<ModelInfo>;

    /// Starts a job; resolves once the first provider accepted it (so errors before any
    /// token get a proper HTTP status even when streaming). Dropping `events` cancels the job.
    fn start(&self, caller: Caller, job: Job) -> BoxFuture<'static, Result<Started, BackendError>>;
}
