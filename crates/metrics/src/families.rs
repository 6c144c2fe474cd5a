//! The metric families of each service, registered on first use.
//!
//! Counters are encoded with a `_total` suffix (`agora_provider_tokens_out` is scraped as
//! `agora_provider_tokens_out_total`); histograms as `_bucket`, `_sum` and `_count`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Metric;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

/// Label pairs; every value is bounded by the code that records it (routes, outcomes, kinds),
/// never a string a client or peer chose.
pub type Labels = Vec<(&'static str, String)>;
/// A counter per label set.
pub type CounterFamily = Family<Labels, Counter>;
/// A histogram per label set.
pub type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn register<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    // The encoder ends every help text with a full stop itself.
    let help = help.strip_suffix('.').unwrap_or(help);
    crate::registry().register(name, help, metric.clone());
    metric
}

fn counter(name: &str, help: &str) -> Counter {
    register(name, help, Counter::default())
}

fn gauge(name: &str, help: &str) -> Gauge {
    register(name, help, Gauge::default())
}

fn counters(name: &str, help: &str) -> CounterFamily {
    register(name, help, CounterFamily::default())
}

/// 1 ms to about 65 s: latencies from a loopback token to a slow first token.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// 1 to 512: batch sizes and queue lengths.
fn size_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

fn latency(name: &str, help: &str) -> Histogram {
    register(name, help, latency_buckets())
}

fn latencies(name: &str, help: &str) -> HistogramFamily {
    register(
        name,
        help,
        HistogramFamily::new_with_constructor(latency_buckets as fn() -> Histogram),
    )
}

/// HTTP servers (gateway, ledger, explorer, every `/metrics` listener).
#[derive(Debug)]
pub struct HttpMetrics {
    /// `agora_http_requests{route,method,status}`.
    pub requests: CounterFamily,
    /// `agora_http_errors{route,method,status}`: answers with status 400 and up.
    pub errors: CounterFamily,
    /// `agora_http_request_duration_seconds{route}`: until the response head (a stream's
    /// body may go on after).
    pub duration: HistogramFamily,
}

static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics {
    requests: counters(
        "agora_http_requests",
        "HTTP requests answered, by route template, method and status.",
    ),
    errors: counters(
        "agora_http_errors",
        "HTTP answers with status 400 or higher, by route template, method and status.",
    ),
    duration: latencies(
        "agora_http_request_duration_seconds",
        "Time to the response head, by route template.",
    ),
});

/// The HTTP families.
pub fn http() -> &'static HttpMetrics {
    &HTTP
}

/// The gateway: answers, tokens, latency, auctions.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// `agora_gateway_jobs{outcome}`: `completed`, `failed` (after a start), or the error
    /// kind that refused it before any token (`unknown_model`, `no_capacity`, ...).
    pub jobs: CounterFamily,
    /// `agora_gateway_jobs_in_flight`.
    pub in_flight: Gauge,
    /// `agora_gateway_tokens_in`: prompt tokens of completed answers.
    pub tokens_in: Counter,
    /// `agora_gateway_tokens_out`: completion tokens of completed answers.
    pub tokens_out: Counter,
    /// `agora_gateway_time_to_first_token_seconds`: from the job's arrival to its first text.
    pub time_to_first_token: Histogram,
    /// `agora_gateway_token_latency_seconds`: per answer, (last text - first text) divided by
    /// the completion tokens after the first.
    pub token_latency: Histogram,
    /// `agora_gateway_charged_base_units`: what completed answers cost their payers.
    pub charged: Counter,
    /// `agora_gateway_receipts`: signed receipts behind completed answers.
    pub receipts: Counter,
    /// `agora_gateway_auction_seconds`: one reverse auction over the offer book.
    pub auction: Histogram,
    /// `agora_gateway_live_offers`: offers in the book at the last scrape or auction.
    pub live_offers: Gauge,
    /// `agora_gateway_inclusion{outcome}`: paid receipts the broker followed to their roots,
    /// by how that ended: `proven` (the provider showed the leaf), `challenged`
    /// (`ChallengeInclusion` submitted), `expired` (the challenge window passed first),
    /// `untracked` (refused at the cap), `unverified` (the provider named a root past the
    /// roots the broker remembers: not challenged).
    pub inclusion: CounterFamily,
    /// `agora_gateway_inclusion_pending`: paid receipts awaiting their roots.
    pub inclusion_pending: Gauge,
}

static GATEWAY: LazyLock<GatewayMetrics> = LazyLock::new(|| {
    GatewayMetrics {
    jobs: counters(
        "agora_gateway_jobs",
        "Generation jobs, by outcome (completed, failed, or the error that refused them).",
    ),
    in_flight: gauge("agora_gateway_jobs_in_flight", "Jobs streaming now."),
    tokens_in: counter(
        "agora_gateway_tokens_in",
        "Prompt tokens of completed answers.",
    ),
    tokens_out: counter(
        "agora_gateway_tokens_out",
        "Completion tokens of completed answers.",
    ),
    time_to_first_token: latency(
        "agora_gateway_time_to_first_token_seconds",
        "From a job's arrival at the gateway to its first text.",
    ),
    token_latency: latency(
        "agora_gateway_token_latency_seconds",
        "Per answer: time between its first and last text over the tokens after the first.",
    ),
    charged: counter(
        "agora_gateway_charged_base_units",
        "What completed answers cost their payers, in base units.",
    ),
    receipts: counter(
        "agora_gateway_receipts",
        "Signed provider receipts behind completed answers.",
    ),
    auction: latency(
        "agora_gateway_auction_seconds",
        "Time of one reverse auction over the offer book.",
    ),
    live_offers: gauge(
        "agora_gateway_live_offers",
        "Live offers in the gateway's book.",
    ),
    inclusion: counters(
        "agora_gateway_inclusion",
        "Paid receipts followed to their providers' roots, by outcome (proven, challenged, expired, untracked, unverified).",
    ),
    inclusion_pending: gauge(
        "agora_gateway_inclusion_pending",
        "Paid receipts awaiting proof that they sit under their providers' roots.",
    ),
}
});

/// The gateway families.
pub fn gateway() -> &'static GatewayMetrics {
    &GATEWAY
}

/// A provider: requests, tokens, its queue and batches, receipts and claims.
#[derive(Debug)]
pub struct ProviderMetrics {
    /// `agora_provider_requests{outcome}`: `accepted`, or the refusal's kind.
    pub requests: CounterFamily,
    /// `agora_provider_tokens_in`: prompt tokens of served requests.
    pub tokens_in: Counter,
    /// `agora_provider_tokens_out`: tokens generated.
    pub tokens_out: Counter,
    /// `agora_provider_time_to_first_token_seconds`: from acceptance to the first token frame.
    pub time_to_first_token: Histogram,
    /// `agora_provider_token_latency_seconds`: per answer, mean time per token after the first.
    pub token_latency: Histogram,
    /// `agora_provider_queue_depth`: jobs waiting for the model thread.
    pub queue_depth: Gauge,
    /// `agora_provider_batch_size`: sequences decoded together per step.
    pub batch_size: Histogram,
    /// `agora_provider_receipts`: receipts signed.
    pub receipts: Counter,
    /// `agora_provider_receipt_roots`: receipt roots posted on the ledger.
    pub receipt_roots: Counter,
    /// `agora_provider_claimed_base_units`: voucher increases claimed on the ledger.
    pub claimed: Counter,
    /// `agora_provider_audit_requests{outcome}`: audit material served or refused.
    pub audit_requests: CounterFamily,
}

static PROVIDER: LazyLock<ProviderMetrics> = LazyLock::new(|| ProviderMetrics {
    requests: counters(
        "agora_provider_requests",
        "Inference requests, by outcome (accepted, or why they were refused).",
    ),
    tokens_in: counter(
        "agora_provider_tokens_in",
        "Prompt tokens of accepted requests.",
    ),
    tokens_out: counter("agora_provider_tokens_out", "Tokens generated."),
    time_to_first_token: latency(
        "agora_provider_time_to_first_token_seconds",
        "From accepting a request to sending its first token.",
    ),
    token_latency: latency(
        "agora_provider_token_latency_seconds",
        "Per answer: mean time per token after the first.",
    ),
    queue_depth: gauge(
        "agora_provider_queue_depth",
        "Jobs waiting for the model thread.",
    ),
    batch_size: register(
        "agora_provider_batch_size",
        "Sequences decoded together in one step.",
        size_buckets(),
    ),
    receipts: counter("agora_provider_receipts", "Receipts signed."),
    receipt_roots: counter(
        "agora_provider_receipt_roots",
        "Receipt roots posted on the ledger.",
    ),
    claimed: counter(
        "agora_provider_claimed_base_units",
        "Voucher increases claimed on the ledger, in base units.",
    ),
    audit_requests: counters(
        "agora_provider_audit_requests",
        "Audit material requests, by outcome (served or refused).",
    ),
});

/// The provider families.
pub fn provider() -> &'static ProviderMetrics {
    &PROVIDER
}

/// A verifier: its audits and ledger transactions.
#[derive(Debug)]
pub struct VerifierMetrics {
    /// `agora_verifier_audits{outcome}`: `passed`, `failed`, `withheld`, `error` (could not
    /// judge: nothing committed).
    pub audits: CounterFamily,
    /// `agora_verifier_audit_seconds`: one audit, fetching the material included.
    pub audit_time: Histogram,
    /// `agora_verifier_ledger_txs{kind,outcome}`: what it submitted (commit, reveal, demand,
    /// verdict) and whether the ledger took it.
    pub ledger_txs: CounterFamily,
}

static VERIFIER: LazyLock<VerifierMetrics> = LazyLock::new(|| VerifierMetrics {
    audits: counters(
        "agora_verifier_audits",
        "Audits run, by outcome (passed, failed, withheld, error).",
    ),
    audit_time: latency(
        "agora_verifier_audit_seconds",
        "Time of one audit, fetching the material included.",
    ),
    ledger_txs: counters(
        "agora_verifier_ledger_txs",
        "Transactions the verifier submitted, by kind and outcome.",
    ),
});

/// The verifier families.
pub fn verifier() -> &'static VerifierMetrics {
    &VERIFIER
}

/// The ledger: blocks, transactions, audits, slashes, escrow.
#[derive(Debug)]
pub struct LedgerMetrics {
    /// `agora_ledger_height`.
    pub height: Gauge,
    /// `agora_ledger_epoch`.
    pub epoch: Gauge,
    /// `agora_ledger_blocks`: blocks committed (its rate is the block rate).
    pub blocks: Counter,
    /// `agora_ledger_txs{kind}`: transactions committed (its rate is the transaction rate).
    pub txs: CounterFamily,
    /// `agora_ledger_rejected_txs{code}`: transactions the rules refused.
    pub rejected: CounterFamily,
    /// `agora_ledger_audits{outcome}`: revealed audits, `passed` or `failed`.
    pub audits: CounterFamily,
    /// `agora_ledger_slashes{kind}`: `fraud`, `omission`, `false_alarm`, `lazy_verifier`.
    pub slashes: CounterFamily,
    /// `agora_ledger_slashed_base_units`: stake taken by slashes.
    pub slashed: Counter,
    /// `agora_ledger_channel_escrow_base_units`: held in open payment channels.
    pub escrow: Gauge,
    /// `agora_ledger_open_channels`.
    pub open_channels: Gauge,
    /// `agora_ledger_staked_base_units`: bonded stake over all accounts.
    pub staked: Gauge,
    /// `agora_ledger_verifiers`: registered verifiers.
    pub verifiers: Gauge,
    /// `agora_ledger_accounts`.
    pub accounts: Gauge,
    /// `agora_ledger_commit_seconds`: applying and durably committing one block.
    pub commit_time: Histogram,
}

static LEDGER: LazyLock<LedgerMetrics> = LazyLock::new(|| LedgerMetrics {
    height: gauge("agora_ledger_height", "Height of the last committed block."),
    epoch: gauge("agora_ledger_epoch", "Current epoch."),
    blocks: counter("agora_ledger_blocks", "Blocks committed."),
    txs: counters(
        "agora_ledger_txs",
        "Transactions committed, by kind; its rate is the transaction rate.",
    ),
    rejected: counters(
        "agora_ledger_rejected_txs",
        "Transactions the rules refused, by error code.",
    ),
    audits: counters(
        "agora_ledger_audits",
        "Audits revealed on the ledger, by outcome (passed, failed).",
    ),
    slashes: counters(
        "agora_ledger_slashes",
        "Slashes, by kind (fraud, omission, false_alarm, lazy_verifier).",
    ),
    slashed: counter(
        "agora_ledger_slashed_base_units",
        "Stake taken by slashes, in base units.",
    ),
    escrow: gauge(
        "agora_ledger_channel_escrow_base_units",
        "Held in open payment channels, in base units.",
    ),
    open_channels: gauge("agora_ledger_open_channels", "Open payment channels."),
    staked: gauge(
        "agora_ledger_staked_base_units",
        "Bonded stake over all accounts, in base units.",
    ),
    verifiers: gauge("agora_ledger_verifiers", "Registered verifiers."),
    accounts: gauge("agora_ledger_accounts", "Accounts."),
    commit_time: latency(
        "agora_ledger_commit_seconds",
        "Applying and durably committing one block.",
    ),
});

/// The ledger families.
pub fn ledger() -> &'static LedgerMetrics {
    &LEDGER
}

/// A DiLoCo coordinator: rounds, islands, bytes, loss.
#[derive(Debug)]
pub struct DilocoMetrics {
    /// `agora_diloco_round`: the round in progress.
    pub round: Gauge,
    /// `agora_diloco_rounds_closed`.
    pub rounds_closed: Counter,
    /// `agora_diloco_island_rounds{outcome}`: per closed round and island, `accepted`,
    /// `refused` or `missing`.
    pub island_rounds: CounterFamily,
    /// `agora_diloco_delta_bytes`: encoded pseudo-gradient bytes accepted.
    pub delta_bytes: Counter,
    /// `agora_diloco_heldout_bits_per_byte`: held-out loss of the global state after the
    /// last closed round.
    pub heldout_bits_per_byte: Gauge<f64, AtomicU64>,
}

static DILOCO: LazyLock<DilocoMetrics> = LazyLock::new(|| DilocoMetrics {
    round: gauge("agora_diloco_round", "The round in progress."),
    rounds_closed: counter("agora_diloco_rounds_closed", "Rounds closed."),
    island_rounds: counters(
        "agora_diloco_island_rounds",
        "Per closed round and island: accepted, refused or missing.",
    ),
    delta_bytes: counter(
        "agora_diloco_delta_bytes",
        "Encoded pseudo-gradient bytes accepted.",
    ),
    heldout_bits_per_byte: register(
        "agora_diloco_heldout_bits_per_byte",
        "Held-out loss of the global state after the last closed round, in bits per byte.",
        Gauge::<f64, AtomicU64>::default(),
    ),
});

/// The DiLoCo coordinator families.
pub fn diloco() -> &'static DilocoMetrics {
    &DILOCO
}

/// One label pair.
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

impl VerifierMetrics {
    /// One audit ended with `outcome`, begun at `started`.
    pub fn audit_outcome(&self, outcome: &str, started: std::time::Instant) {
        self.audits.get_or_create(&label("outcome", outcome)).inc();
        self.audit_time.observe(started.elapsed().as_secs_f64());
    }

    /// A transaction of `kind` was submitted; `ok` if the ledger took it.
    pub fn ledger_tx(&self, kind: &'static str, ok: bool) {
        let outcome = if ok { "committed" } else { "refused" };
        self.ledger_txs
            .get_or_create(&vec![
                ("kind", kind.to_string()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }
}

impl ProviderMetrics {
    /// A request ended: `outcome` is `served` or the refusal's code.
    pub fn request(&self, outcome: &str) {
        self.requests
            .get_or_create(&label("outcome", outcome))
            .inc();
    }

    /// The first token of an answer accepted at `accepted` leaves now.
    pub fn first_token(&self, accepted: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.time_to_first_token
            .observe((now - accepted).as_secs_f64());
        now
    }

    /// An answer was signed: its prompt and new tokens, and when its first token left.
    pub fn answered(&self, prompt: usize, output: usize, first: Option<std::time::Instant>) {
        self.tokens_in.inc_by(prompt as u64);
        self.tokens_out.inc_by(output as u64);
        self.receipts.inc();
        if let (Some(f), true) = (first, output > 1) {
            self.token_latency
                .observe(f.elapsed().as_secs_f64() / (output - 1) as f64);
        }
    }
}

impl DilocoMetrics {
    /// A round closed: islands accepted, refused and missing, bytes, held-out loss.
    pub fn round_closed(&self, next_round: u64, islands: [usize; 3], bytes: u64, heldout_bpb: f64) {
        self.rounds_closed.inc();
        self.round
            .set(i64::try_from(next_round).unwrap_or(i64::MAX));
        for (outcome, n) in ["accepted", "refused", "missing"].iter().zip(islands) {
            self.island_rounds
                .get_or_create(&label("outcome", *outcome))
                .inc_by(n as u64);
        }
        self.delta_bytes.inc_by(bytes);
        self.heldout_bits_per_byte.set(heldout_bpb);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_help_text_ends_in_one_full_stop() {
        // Touch every service's families so that all are registered.
        super::http();
        super::gateway();
        super::provider();
        super::verifier();
        super::ledger();
        super::diloco();
        let text = crate::encode();
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        assert!(helps.len() > 30, "{text}");
        for help in helps {
            assert!(help.ends_with('.') && !help.ends_with(".."), "{help}");
        }
    }
}
