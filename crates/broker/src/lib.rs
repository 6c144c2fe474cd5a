//! The gateway's buyer. For each request it runs the reverse auction over the live offers it
//! has heard on gossip, streams the answer from the winner over libp2p, fails over to the
//! next provider if the stream dies or stalls (resuming from the tokens already delivered),
//! checks each provider's signed receipt, and pays it with a cumulative voucher on a payment
//! channel, on either settlement (the embedded ledger or the Agora contracts on an EVM
//! chain, through `agora_settlement::role_broker::BrokerSettlement`). It then follows each
//! paid receipt until it is proven under its provider's posted root, or challenges its
//! inclusion on settlement ([`inclusion`]). It implements the gateway's [`Backend`].

pub mod channels;
pub mod inclusion;
pub mod routing;
pub mod rules;
pub mod stakes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_core::{AccountId, Amount, Hash32, Keypair};
use agora_gateway::{
    Backend, BackendError, Budget, Caller, Capabilities, FinishReason, Job, ModelInfo, PriceRange,
    Pricing, Prompt, ProviderPrefs, ReceiptRef, Started, StreamEvent, Usage,
};
use agora_ledger::client::Client;
use agora_market::{Bid, Candidate, Features, OfferBook, SignedOffer};
use agora_model::{PromptModel, TextRenderer};
use agora_net::protocol::{
    new_request_id, now_ms, read_frame, tokens_hash, write_frame, ErrorCode, Finish, Frame,
    InferenceRequest, PromptSpec, RequestId, Sampling, SignedReceipt,
};
use agora_net::{
    inference_protocol, offers_topic, GossipMessage, Multiaddr, NetConfig, Node, PeerId, Stream,
};
use agora_settlement::ledger::LedgerSettlement;
use agora_settlement::network::{SettlementEvent, SharedSettlement};
use agora_settlement::open::{Opened, SettlementTarget};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

pub use channels::{ChannelError, Channels};
pub use inclusion::{Inclusion, PayerSeeds};
pub use rules::{check_receipt, most_micros, PromptCount};
pub use stakes::Stakes;

/// How the broker behaves.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where settlement lives (its chain id is read from it).
    pub settlement: SettlementTarget,
    /// The network.
    pub net: NetConfig,
    /// Escrow added at least when a channel opens or is topped up, in base units.
    pub min_deposit: Amount,
    /// A stream with no frame for this long is abandoned for another provider.
    pub stall_timeout: Duration,
    /// How long to wait for a provider to accept.
    pub accept_timeout: Duration,
    /// Most providers tried for one answer.
    pub max_attempts: usize,
    /// How long to keep retrying while every provider is busy.
    pub busy_wait: Duration,
    /// Highest price per million prompt tokens the gateway pays (None: any).
    pub max_price_in: Option<Amount>,
    /// Highest price per million output tokens (None: any).
    pub max_price_out: Option<Amount>,
    /// Models whose tokenizer and chat template the gateway holds (loaded from their files,
    /// so bound to their ModelId): for these it counts prompt tokens and renders text itself.
    /// For any other model the prompt charge is capped by [`prompt_bound`] and the text is
    /// the provider's.
    pub models: Vec<Arc<PromptModel>>,
    /// The least bonded stake (on the ledger) a provider needs to be routed to or to have
    /// its offers kept.
    pub min_stake: Amount,
    /// Where the channel books are kept across restarts (redb); `None`: memory only.
    pub channel_store: Option<std::path::PathBuf>,
    /// A channel no answer used for this long is closed (once the ledger allows and its
    /// provider has claimed what it was vouched) and its escrow returned.
    pub idle_channel: Duration,
    /// The ledger's `escalation_epochs`: a receipt naming epoch `r` may be challenged for
    /// leaving the provider's roots until epoch `r + 1 + escalation_epochs`.
    pub escalation_epochs: u64,
    /// Finds a payer's key by account after a restart, to challenge the receipts it paid
    /// before (`None`: only payers seen since the start can challenge).
    pub payer_seeds: Option<PayerSeeds>,
}

impl BrokerConfig {
    /// Defaults for settlement at `settlement` and the network `net`.
    pub fn new(settlement: SettlementTarget, net: NetConfig) -> BrokerConfig {
        BrokerConfig {
            settlement,
            net,
            min_deposit: Amount::new(1_000_000),
            stall_timeout: Duration::from_secs(10),
            accept_timeout: Duration::from_secs(30),
            max_attempts: 4,
            busy_wait: Duration::from_secs(120),
            max_price_in: None,
            max_price_out: None,
            models: Vec::new(),
            min_stake: Amount::new(100),
            channel_store: None,
            idle_channel: Duration::from_secs(600),
            escalation_epochs: agora_ledger::Params::default().escalation_epochs,
            payer_seeds: None,
        }
    }
}

/// How often paid receipts are checked against their providers' roots.
const INCLUSION_SWEEP: Duration = Duration::from_secs(2);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

/// The running broker; clone the `Arc` freely.
pub struct Broker {
    cfg: BrokerConfig,
    /// The chain id requests and receipts name (the settlement's).
    chain_id: u64,
    /// Tokenizer and template by ModelId.
    models: std::collections::HashMap<Hash32, Arc<PromptModel>>,
    node: Node,
    book: Arc<Mutex<OfferBook>>,
    channels: Channels,
    /// Paid receipts followed until they are proven under their roots or challenged.
    inclusion: Arc<Inclusion>,
    stakes: Stakes,
    /// The settlement's current epoch, as `follow_settlement` last saw it.
    epoch: Arc<AtomicU64>,
    /// Output tokens per second by provider (a moving average over its answers), for
    /// `provider.sort: throughput`.
    throughput: Mutex<std::collections::HashMap<AccountId, f64>>,
}

impl Broker {
    /// Joins the network and starts listening for offers.
    pub async fn start(cfg: BrokerConfig) -> Result<Arc<Broker>, BrokerError> {
        // Stake and the events the market follows come through the settlement interface,
        // which names providers by their network keys on either settlement; payers' accounts
        // are opened per API key by the channels.
        let (settlement, opener): (SharedSettlement, channels::AccountOpener) = match &cfg
            .settlement
        {
            SettlementTarget::Ledger { url } => {
                let ledger = Client::new(url).map_err(|e| BrokerError::Config(e.to_string()))?;
                let l = ledger.clone();
                let status = tokio::task::spawn_blocking(move || l.status())
                    .await
                    .map_err(|e| BrokerError::Config(e.to_string()))?
                    .map_err(|e| BrokerError::Config(format!("asking the ledger at {url}: {e}")))?;
                let reader = LedgerSettlement::reader(ledger.clone(), status.chain_id)
                    .map_err(|e| BrokerError::Config(e.to_string()))?;
                (
                    Arc::new(reader),
                    channels::ledger_opener(ledger, status.chain_id),
                )
            }
            SettlementTarget::Evm { .. } => {
                // Reads and checks only: a fresh key with no funds.
                let key = Keypair::generate().map_err(|e| BrokerError::Config(e.to_string()))?;
                let reader = Opened::open(&cfg.settlement, &key)
                    .await
                    .map_err(|e| BrokerError::Config(format!("opening settlement: {e}")))?;
                (
                    reader.network(),
                    channels::opener_for(cfg.settlement.clone()),
                )
            }
        };
        let chain_id = settlement.network_chain_id();
        let mut net = cfg.net.clone();
        net.topics.push(offers_topic(chain_id));
        let (node, gossip) = Node::start(net).await?;
        let book = Arc::new(Mutex::new(OfferBook::new().with_chain(chain_id)));
        let banned = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let reader = settlement.clone();
        let runtime = tokio::runtime::Handle::current();
        let stakes = Stakes::new(
            // Runs on a blocking thread (`Stakes::check`), so it may wait on the runtime.
            Arc::new(move |a: &AccountId| runtime.block_on(reader.stake_of_key(*a)).ok().flatten()),
            cfg.min_stake,
        );
        tokio::spawn(ingest_gossip(
            gossip,
            book.clone(),
            node.clone(),
            banned.clone(),
            stakes.clone(),
        ));
        // The epoch receipts are checked against: read once now, then followed.
        let epoch = Arc::new(AtomicU64::new(
            settlement.current_epoch().await.unwrap_or(0),
        ));
        let channels = match &cfg.channel_store {
            Some(path) => {
                let store = channels::ChannelStore::open(path)
                    .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
                Channels::durable(opener, cfg.min_deposit, store)
                    .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?
            }
            None => Channels::new(opener, cfg.min_deposit),
        };
        let inclusion = Arc::new(
            Inclusion::new(
                settlement.clone(),
                channels.store(),
                cfg.escalation_epochs,
                cfg.payer_seeds.clone(),
            )
            .map_err(|e| BrokerError::Config(format!("inclusion store: {e}")))?,
        );
        tokio::spawn(follow_settlement(
            settlement,
            book.clone(),
            banned.clone(),
            epoch.clone(),
            inclusion.clone(),
        ));
        let (checker, node_for_checks, channels_for_checks) =
            (inclusion.clone(), node.clone(), channels.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INCLUSION_SWEEP).await;
                checker.sweep(&node_for_checks, &channels_for_checks).await;
            }
        });
        let sweeper = channels.clone();
        let idle = cfg.idle_channel;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                sweeper.close_idle(idle).await;
            }
        });
        let mut models = std::collections::HashMap::new();
        for m in &cfg.models {
            let id = Hash32::from_slice(&m.id.0).map_err(|e| BrokerError::Config(e.to_string()))?;
            models.insert(id, m.clone());
        }
        Ok(Arc::new(Broker {
            models,
            cfg,
            chain_id,
            node,
            book,
            channels,
            inclusion,
            stakes,
            epoch,
            throughput: Mutex::default(),
        }))
    }

    /// The network handle.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The payer's channels.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The paid receipts awaiting proof of inclusion.
    pub fn inclusion(&self) -> &Inclusion {
        &self.inclusion
    }

    /// Runs `f` on the offer book.
    pub fn with_book<T>(&self, f: impl FnOnce(&mut OfferBook) -> T) -> T {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut book)
    }

    /// Live offers now.
    pub fn live_offers(&self) -> usize {
        let now = now_ms();
        self.with_book(|b| b.models(now).iter().map(|m| m.providers).sum::<usize>())
    }

    /// The bid for `model` under the gateway's and the request's price limits, for offers
    /// that serve the features the request `needs`.
    fn bid(
        &self,
        model: Hash32,
        exclude: &[AccountId],
        max_tokens: u32,
        prefs: &ProviderPrefs,
        needs: Features,
    ) -> Bid {
        let limit = |gateway: Option<Amount>, request: Option<u128>| match (gateway, request) {
            (Some(g), Some(r)) => Some(g.min(Amount::new(r))),
            (g, r) => g.or(r.map(Amount::new)),
        };
        Bid {
            model,
            max_price_in: limit(self.cfg.max_price_in, prefs.max_price_prompt),
            max_price_out: limit(self.cfg.max_price_out, prefs.max_price_completion),
            expected_prompt_tokens: 64,
            expected_output_tokens: u64::from(max_tokens),
            exclude: exclude.to_vec(),
            hardware: None,
            region: None,
            features: needs,
        }
    }

    fn candidates(
        &self,
        model: Hash32,
        exclude: &[AccountId],
        max_tokens: u32,
        prefs: &ProviderPrefs,
        needs: Features,
    ) -> Vec<Candidate> {
        let bid = self.bid(model, exclude, max_tokens, prefs, needs);
        let now = now_ms();
        let throughput = self
            .throughput
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let started = Instant::now();
        let winners = self.with_book(|b| routing::route(b, &bid, prefs, &throughput, now, 8));
        agora_metrics::gateway()
            .auction
            .observe(started.elapsed().as_secs_f64());
        winners
    }

    /// Whether a live offer for `model` that the request's preferences and price limits
    /// admit exists, outside `failed`.
    fn admissible_live(
        &self,
        model: Hash32,
        failed: &[AccountId],
        prefs: &ProviderPrefs,
        max_tokens: u32,
        needs: Features,
    ) -> bool {
        let bid = self.bid(model, &[], max_tokens, prefs, needs);
        let now = now_ms();
        self.with_book(|b| {
            b.offers_for(&model).any(|o| {
                let o = &o.offer;
                o.expires_ms > now
                    && !failed.contains(&o.provider)
                    && prefs.admits(&o.provider.to_string())
                    && bid.max_price_in.is_none_or(|m| o.price_in <= m)
                    && bid.max_price_out.is_none_or(|m| o.price_out <= m)
                    && o.features.contains(bid.features)
            })
        })
    }

    fn record_throughput(&self, provider: AccountId, tokens: u32, secs: f64) {
        if tokens == 0 || secs.is_nan() || secs <= 0.0 {
            return;
        }
        let x = f64::from(tokens) / secs;
        let mut t = self.throughput.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() > 65_536 {
            t.clear();
        }
        let e = t.entry(provider).or_insert(x);
        *e += 0.3 * (x - *e);
    }

    /// Serves one job to its end, sending events as they come. `first` gets the outcome of
    /// the first acceptance (so HTTP can still answer with an error status).
    async fn run_job(
        self: Arc<Self>,
        caller: Caller,
        job: Job,
        model: Hash32,
        first: oneshot::Sender<Result<Started, BackendError>>,
    ) {
        let payer = Keypair::from_seed(caller.account_seed);
        let request_id = new_request_id();
        let seed = job.seed.unwrap_or_else(|| seed_for(&request_id));
        let prompt = match &job.prompt {
            Prompt::Text(t) => PromptSpec::Text(t.clone()),
            Prompt::Chat(m) => PromptSpec::Chat(
                m.iter()
                    .map(|c| (c.role.clone(), c.content.clone()))
                    .collect(),
            ),
        };
        let known = self.models.get(&model).cloned();
        let counted = match count_prompt(known.as_deref(), &prompt) {
            Ok(c) => c,
            Err(e) => {
                let _ = first.send(Err(e));
                return;
            }
        };
        let (events_tx, events_rx) = mpsc::channel(64);
        let mut answer = Answer {
            first: Some((first, events_rx)),
            events: events_tx,
            delivered: Vec::new(),
            prompt: counted,
            reported_prompt: None,
            render: known.map(|m| (m, TextRenderer::new(&job.stop))),
            max_tokens: job.max_tokens,
            client_gone: false,
            epoch: self.epoch.load(Ordering::Relaxed),
            ledger_epoch: self.epoch.clone(),
        };
        let mut receipts = Vec::new();
        // Providers that failed this answer are not asked again; busy ones are, after a pause.
        let mut failed: Vec<AccountId> = Vec::new();
        let mut busy: Vec<AccountId> = Vec::new();
        let mut last_error =
            BackendError::NoCapacity(format!("no live provider serves model {}", job.model));
        let busy_deadline = Instant::now() + self.cfg.busy_wait;
        let needs = needs(&job);
        if job.routing != ProviderPrefs::default()
            && !self.admissible_live(model, &[], &job.routing, job.max_tokens, needs)
        {
            last_error = BackendError::NoMatchingProvider(format!(
                "No live provider of `{}` meets the request's routing constraints (provider.only, ignore, order with allow_fallbacks false, max_price).",
                job.model
            ));
        }
        while failed.len() < self.cfg.max_attempts {
            let exclude: Vec<AccountId> = failed.iter().chain(&busy).copied().collect();
            let mut cand = None;
            for c in self.candidates(model, &exclude, job.max_tokens, &job.routing, needs) {
                let p = c.provider();
                if self.stakes.check(p).await {
                    cand = Some(c);
                    break;
                }
                // Its stake is gone (unbonded, slashed): no work, no room in the book.
                tracing::info!(provider = %p, "bonded stake under the minimum; dropped from the book");
                self.with_book(|b| b.remove_provider(&p));
            }
            let Some(cand) = cand else {
                let others_live =
                    self.admissible_live(model, &failed, &job.routing, job.max_tokens, needs);
                if others_live && Instant::now() < busy_deadline {
                    busy.clear();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                break;
            };
            let provider = cand.provider();
            let req = InferenceRequest {
                chain_id: self.chain_id,
                request_id,
                payer: payer.account(),
                channel: Hash32::default(),
                provider,
                model,
                prompt: prompt.clone(),
                resume: answer.delivered.clone(),
                max_tokens: job.max_tokens,
                stop: job.stop.clone(),
                sampling: Sampling {
                    temperature: job.temperature,
                    top_p: job.top_p,
                    seed,
                    constraint: job.constraint.clone(),
                    top_logprobs: job.top_logprobs,
                },
                price_in: cand.offer.offer.price_in,
                price_out: cand.offer.offer.price_out,
                issued_ms: now_ms(),
            };
            // This attempt starts now: after a busy wait or a failover the epoch may have moved.
            answer.epoch = self.epoch.load(Ordering::Relaxed);
            self.with_book(|b| b.begin_request(&provider));
            let outcome = self
                .attempt(&payer, &cand.offer, req, &mut answer, job.budget.as_ref())
                .await;
            self.with_book(|b| b.end_request(&provider));
            match outcome {
                Outcome::Done {
                    finish,
                    receipt,
                    chain_sig,
                    paid_micros,
                } => {
                    self.with_book(|b| b.record_success(&provider));
                    // Paid: it must now show up under the provider's root.
                    self.inclusion
                        .track(&payer, &receipt, chain_sig, &cand.offer);
                    receipts.push(ReceiptRef {
                        provider: provider.to_string(),
                        receipt: receipt.hash().to_string(),
                        completion_tokens: receipt.receipt.output_tokens,
                        charged: agora_market::micros_to_amount(paid_micros).to_string(),
                        signed: Some(receipt_document(&receipt)),
                    });
                    answer.finished(finish, receipts).await;
                    return;
                }
                Outcome::Cut(error) => {
                    // The provider streamed past max_tokens or a stop sequence: the client
                    // has its whole answer; the provider, without a receipt for it, is
                    // not paid.
                    self.with_book(|b| b.record_failure(&provider));
                    tracing::warn!(%provider, "stream cut: {error}");
                    answer.finished(Finish::Length, receipts).await;
                    return;
                }
                Outcome::Fatal(e) => {
                    last_error = e;
                    break;
                }
                Outcome::Busy(error) => {
                    busy.push(provider);
                    last_error = error;
                }
                Outcome::Unreachable(error) => {
                    // Forget its offers until it announces again: a dead provider must not
                    // keep winning auctions until its offer expires.
                    self.with_book(|b| {
                        b.record_failure(&provider);
                        b.remove_provider(&provider);
                    });
                    tracing::warn!(%provider, "unreachable; dropped from the book: {error}");
                    failed.push(provider);
                    last_error = error;
                }
                Outcome::Failed(error) => {
                    self.with_book(|b| b.record_failure(&provider));
                    tracing::warn!(
                        %provider,
                        delivered = answer.delivered.len(),
                        "failing over: {error}"
                    );
                    failed.push(provider);
                    last_error = error;
                }
            }
        }
        match answer.first.take() {
            Some((first, _)) => {
                let _ = first.send(Err(last_error));
            }
            None => {
                let _ = answer.events.send(Err(last_error)).await;
            }
        }
    }

    /// One provider's part of an answer: reserve the key's budget and escrow, stream, check
    /// the receipt, pay, settle the budget with the charge.
    async fn attempt(
        &self,
        payer: &Keypair,
        offer: &SignedOffer,
        mut req: InferenceRequest,
        answer: &mut Answer,
        budget: Option<&Budget>,
    ) -> Outcome {
        let provider = offer.offer.provider;
        let Ok(peer) = PeerId::from_bytes(&offer.offer.peer_id) else {
            return Outcome::Failed(BackendError::Upstream(
                "offer has an unreadable peer id".into(),
            ));
        };
        // The most this answer could cost, reserved in escrow before asking: the prompt as
        // the gateway counted (or bounded) it, resumed tokens prefilled at the prompt price,
        // and every token max_tokens leaves.
        let Some(need) = rules::reservation(&req, answer.prompt) else {
            return Outcome::Fatal(BackendError::InvalidRequest {
                message: "the request's cost overflows".into(),
                param: Some("max_tokens".into()),
            });
        };
        // The key's budget first: a refused reservation costs the ledger nothing.
        let hold = match budget.map(|b| b.reserve(need.units())).transpose() {
            Ok(h) => h,
            Err(e) => return Outcome::Fatal(BackendError::BudgetExceeded(e.to_string())),
        };
        let reservation = match self.channels.reserve(payer, provider, need).await {
            Ok(r) => r,
            Err(ChannelError::Insufficient { balance, need }) => {
                return Outcome::Fatal(BackendError::InsufficientCredit(format!(
                    "You exceeded your current quota: the balance is {balance} and this request may cost up to {need}."
                )))
            }
            Err(ChannelError::NoAccount(a)) => {
                return Outcome::Fatal(BackendError::InsufficientCredit(format!(
                    "The account {a} behind this key has no funds."
                )))
            }
            Err(e) => return Outcome::Fatal(BackendError::Internal(e.to_string())),
        };
        req.channel = reservation.channel;
        for addr in &offer.offer.addrs {
            if let Ok(a) = addr.parse::<Multiaddr>() {
                let _ = self.node.add_address(peer, a).await;
            }
        }
        let request_id = hex::encode(req.request_id);
        let result = self.stream_answer(payer, peer, &req, answer).await;
        let cost = match &result {
            Ok((_, _, _, paid, _)) => *paid,
            Err(_) => 0,
        };
        // A provider that did not finish is not paid: without its receipt nothing proves
        // what it served, and the next provider charges for the rest.
        let settled = self
            .channels
            .settle(payer, provider, reservation, cost)
            .await;
        // What was charged, capped at the reservation: the figure the budget and the client
        // see, never the receipt's cost before the cap.
        let paid_micros = settled.charged_micros;
        // Rounded up: vouchers pay accumulated micro-units, so a budget counting each
        // answer's floor could fall behind what actually left the account.
        if let Some(h) = hold {
            h.settle(paid_micros.div_ceil(agora_market::MICROS_PER_UNIT));
        }
        let voucher = settled.voucher;
        let (finish, receipt, chain_sig, mut stream) = match result {
            Ok((finish, receipt, chain_sig, _, stream)) => (finish, receipt, chain_sig, stream),
            Err(outcome) => return outcome,
        };
        if let Some(v) = voucher {
            if let Err(e) = write_frame(&mut stream, &v).await {
                tracing::warn!(%provider, "voucher not delivered: {e}");
            }
        }
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
        tracing::info!(
            request = %request_id,
            %provider,
            tokens = receipt.receipt.output_tokens,
            cost_micros = paid_micros,
            "answer complete"
        );
        Outcome::Done {
            finish,
            receipt: Box::new(receipt),
            chain_sig,
            paid_micros,
        }
    }

    /// Opens the stream, sends the request and relays frames until the answer ends.
    async fn stream_answer(
        &self,
        payer: &Keypair,
        peer: PeerId,
        req: &InferenceRequest,
        answer: &mut Answer,
    ) -> Result<(Finish, SignedReceipt, Option<Vec<u8>>, u128, Stream), Outcome> {
        let provider = req.provider;
        let started = Instant::now();
        let mut control = self.node.control();
        let open = tokio::time::timeout(
            self.cfg.accept_timeout,
            control.open_stream(peer, inference_protocol()),
        )
        .await;
        let mut stream = match open {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Outcome::Unreachable(BackendError::Upstream(format!(
                    "cannot reach provider {provider}: {e}"
                ))))
            }
            Err(_) => {
                return Err(Outcome::Failed(BackendError::Upstream(format!(
                    "provider {provider} did not answer"
                ))))
            }
        };
        let timeouts = Timeouts {
            accept: self.cfg.accept_timeout,
            stall: self.cfg.stall_timeout,
        };
        let (finish, receipt, chain_sig, paid) =
            relay(&mut stream, payer, req, answer, timeouts, || {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                self.with_book(|b| b.record_latency(&provider, ms));
            })
            .await?;
        // A receipt whose omission could not be challenged on this settlement (on a chain:
        // no valid EIP-712 signature by the provider's account) is not paid for.
        let holds = match self.channels.account(payer).await {
            Ok(a) => a
                .receipt_commitment_holds(&receipt, chain_sig.as_deref())
                .await
                .unwrap_or(false),
            Err(_) => false,
        };
        if !holds {
            return Err(Outcome::Failed(BackendError::Upstream(format!(
                "provider {provider} sent no valid {} commitment to its receipt",
                self.channels_kind()
            ))));
        }
        self.record_throughput(
            provider,
            receipt.receipt.output_tokens,
            started.elapsed().as_secs_f64(),
        );
        Ok((finish, receipt, chain_sig, paid, stream))
    }

    /// Which settlement the channels pay on.
    fn channels_kind(&self) -> agora_settlement::network::SettlementKind {
        self.cfg.settlement.kind()
    }
}

/// How long the relay waits for a provider.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// For the acceptance.
    accept: Duration,
    /// Between frames once accepted.
    stall: Duration,
}

/// Sends the signed request on `stream` and relays the provider's frames into `answer` until
/// its receipt; returns how it finished, the receipt and what to pay for it (micro-units).
/// Every number that costs money is the gateway's own: the prompt count, the tokens it
/// received (never past `max_tokens` or a stop sequence), and the text it renders from them.
async fn relay<S>(
    stream: &mut S,
    payer: &Keypair,
    req: &InferenceRequest,
    answer: &mut Answer,
    timeouts: Timeouts,
    mut first_token: impl FnMut(),
) -> Result<(Finish, SignedReceipt, Option<Vec<u8>>, u128), Outcome>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let provider = req.provider;
    let failed = |m: String| Outcome::Failed(BackendError::Upstream(m));
    // A stream dropped before the provider accepted is a full inbound queue on its side
    // (a burst of streams), not a dead provider: ask again shortly.
    let dropped = |m: String| Outcome::Busy(BackendError::NoCapacity(m));
    let signed = req.clone().sign(payer);
    if let Err(e) = write_frame(stream, &signed).await {
        return Err(dropped(format!("sending to provider {provider}: {e}")));
    }
    let resumed = req.resume.len();
    let mut accepted = false;
    loop {
        let wait = if accepted {
            timeouts.stall
        } else {
            timeouts.accept
        };
        let frame: Frame = match tokio::time::timeout(wait, read_frame(stream)).await {
            Err(_) => return Err(failed(format!("provider {provider} stalled"))),
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) if !accepted => {
                return Err(dropped(format!("provider {provider} dropped the stream")))
            }
            Ok(Err(e)) if !accepted => return Err(dropped(format!("provider {provider}: {e}"))),
            Ok(Ok(None)) => return Err(failed(format!("provider {provider} closed the stream"))),
            Ok(Err(e)) => return Err(failed(format!("provider {provider}: {e}"))),
        };
        match frame {
            Frame::Accepted { prompt_tokens } => {
                if accepted {
                    return Err(failed(format!("provider {provider} accepted twice")));
                }
                if !answer.prompt.admits(prompt_tokens) {
                    return Err(failed(format!(
                        "provider {provider} claims {prompt_tokens} prompt tokens; the gateway counted {:?}",
                        answer.prompt
                    )));
                }
                accepted = true;
                answer.accepted(&req.request_id, prompt_tokens);
            }
            Frame::Token {
                index,
                token,
                text,
                logprobs,
            } => {
                if !accepted || index as usize != answer.delivered.len() {
                    return Err(failed(format!(
                        "provider {provider} sent token {index} out of order"
                    )));
                }
                if answer.delivered.len() >= answer.max_tokens as usize || answer.stopped() {
                    return Err(Outcome::Cut(BackendError::Upstream(format!(
                        "provider {provider} streamed past max_tokens or a stop sequence"
                    ))));
                }
                if answer.delivered.len() == resumed {
                    first_token();
                }
                answer.delivered.push(token);
                if req.sampling.top_logprobs.is_some() {
                    if let Some(lp) = logprobs {
                        let lp =
                            token_logprob(answer.render.as_ref().map(|r| &r.0), token, &text, lp);
                        answer.emit(StreamEvent::Logprob(lp)).await;
                    }
                }
                let text = match &mut answer.render {
                    Some((model, r)) => match r.push(&model.tokenizer, token) {
                        Ok(t) => t,
                        Err(e) => {
                            return Err(failed(format!(
                                "provider {provider} sent token {token} the tokenizer cannot render: {e}"
                            )))
                        }
                    },
                    None => text,
                };
                answer.emit(StreamEvent::Text(text)).await;
            }
            Frame::Done {
                finish,
                tail,
                receipt,
                chain_sig,
            } => {
                if !accepted {
                    return Err(failed(format!("provider {provider} finished unasked")));
                }
                let paid = match check_receipt(
                    &receipt,
                    req,
                    &answer.delivered,
                    answer.prompt,
                    (answer.epoch, answer.ledger_epoch.load(Ordering::Relaxed)),
                ) {
                    Ok(p) => p,
                    Err(m) => {
                        return Err(failed(format!(
                            "provider {provider} sent a bad receipt: {m}"
                        )))
                    }
                };
                let tail = match &mut answer.render {
                    Some((_, r)) => r.finish(),
                    None => tail,
                };
                answer.emit(StreamEvent::Text(tail)).await;
                return Ok((finish, *receipt, chain_sig, paid));
            }
            Frame::Error { code, message } => {
                // A provider's words never reach the API client: logged, answered generically.
                tracing::info!(%provider, ?code, "provider refused: {message}");
                return Err(match code {
                    ErrorCode::ContextLength => {
                        Outcome::Fatal(BackendError::ContextLengthExceeded(
                            "The prompt and max_tokens do not fit this model's context length."
                                .into(),
                        ))
                    }
                    ErrorCode::BadRequest if !accepted && answer.first.is_some() => {
                        Outcome::Fatal(BackendError::InvalidRequest {
                            message: "The provider refused the request as invalid.".into(),
                            param: None,
                        })
                    }
                    ErrorCode::Busy => Outcome::Busy(BackendError::NoCapacity(message)),
                    _ => failed(format!("provider {provider} refused: {message} ({code:?})")),
                });
            }
        }
    }
}

/// What the client's stream carries.
type Event = Result<StreamEvent, BackendError>;
/// Where the first acceptance (or the error before it) is reported.
type FirstReply = oneshot::Sender<Result<Started, BackendError>>;

/// The state of one answer across the providers that serve it.
struct Answer {
    /// Until the first provider accepts: where to report that, and the event receiver to
    /// hand over with it.
    first: Option<(FirstReply, mpsc::Receiver<Event>)>,
    events: mpsc::Sender<Event>,
    /// Output tokens the client has been sent.
    delivered: Vec<u32>,
    /// The prompt as the gateway counted it.
    prompt: PromptCount,
    /// The first provider's count, where the gateway only has a bound.
    reported_prompt: Option<u32>,
    /// The model's tokenizer and the text rendered so far, when the gateway holds the model.
    render: Option<(Arc<PromptModel>, TextRenderer)>,
    /// The most output tokens, resumed ones included.
    max_tokens: u32,
    /// The client went away; the answer still runs to its receipt so the provider is paid
    /// for what it served.
    client_gone: bool,
    /// The ledger epoch when the current attempt started: its receipt must name it or a
    /// neighbour.
    epoch: u64,
    /// The ledger's epoch as the gateway follows it.
    ledger_epoch: Arc<AtomicU64>,
}

impl Answer {
    /// The first acceptance starts the client's answer; `claimed` is the provider's count,
    /// reported only where the gateway could not count (it is within the bound).
    fn accepted(&mut self, request_id: &RequestId, claimed: u32) {
        if let Some((tx, rx)) = self.first.take() {
            if let PromptCount::Bound(_) = self.prompt {
                self.reported_prompt = Some(claimed);
            }
            let _ = tx.send(Ok(Started {
                request_id: hex::encode(request_id),
                model: String::new(),
                prompt_tokens: self.prompt_tokens(),
                events: rx,
            }));
        }
    }

    /// Prompt tokens for `usage`.
    fn prompt_tokens(&self) -> u32 {
        match self.prompt {
            PromptCount::Exact { tokens, .. } => tokens,
            PromptCount::Bound(b) => self.reported_prompt.unwrap_or(b).min(b),
        }
    }

    /// A stop sequence ended the rendered text.
    fn stopped(&self) -> bool {
        self.render.as_ref().is_some_and(|(_, r)| r.stopped())
    }

    async fn emit(&mut self, event: StreamEvent) {
        if matches!(&event, StreamEvent::Text(t) if t.is_empty()) || self.client_gone {
            return;
        }
        if self.events.send(Ok(event)).await.is_err() {
            self.client_gone = true;
        }
    }

    /// Ends the answer with its usage and receipts.
    async fn finished(&mut self, finish: Finish, receipts: Vec<ReceiptRef>) {
        let finish_reason = if self.stopped() {
            FinishReason::Stop
        } else {
            match finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            }
        };
        let completion = self.delivered.len() as u32;
        let prompt_tokens = self.prompt_tokens();
        self.emit(StreamEvent::Finished {
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens: completion,
                total_tokens: prompt_tokens.saturating_add(completion),
            },
            receipts,
        })
        .await;
    }
}

/// How one provider's part of an answer ended.
enum Outcome {
    /// Complete, with a valid receipt; paid `paid_micros`.
    Done {
        finish: Finish,
        receipt: Box<SignedReceipt>,
        /// The provider's EIP-712 receipt signature on a chain (what a challenge carries).
        chain_sig: Option<Vec<u8>>,
        paid_micros: u128,
    },
    /// The provider streamed past the answer's end (max_tokens or a stop sequence): the
    /// client's answer is complete; the provider is not paid.
    Cut(BackendError),
    /// The request itself is at fault; no other provider will do better.
    Fatal(BackendError),
    /// The provider is busy; ask another or wait.
    Busy(BackendError),
    /// The provider failed (died, stalled, refused, or lied); go on elsewhere.
    Failed(BackendError),
    /// No stream could be opened to the provider: it is gone.
    Unreachable(BackendError),
}

/// A token's log-probabilities as the gateway renders them: each id as its own text and
/// bytes (from the model's tokenizer when the gateway holds it; the frame's text otherwise).
fn token_logprob(
    model: Option<&Arc<PromptModel>>,
    token: u32,
    text: &str,
    lp: agora_net::protocol::TokenLogprobs,
) -> agora_gateway::TokenLogprob {
    let alt = |id: u32, logprob: f32, fallback: &str| {
        let bytes = model
            .and_then(|m| m.tokenizer.token_bytes(id))
            .unwrap_or_else(|| fallback.as_bytes().to_vec());
        agora_gateway::LogprobAlt {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob,
        }
    };
    agora_gateway::TokenLogprob {
        chosen: alt(token, lp.logprob, text),
        top: lp
            .top
            .iter()
            .take(usize::from(agora_net::protocol::MAX_TOP_LOGPROBS))
            .map(|&(id, l)| alt(id, l, ""))
            .collect(),
    }
}

/// Template tokens allowed per chat message when the gateway cannot render the template.
pub const BOUND_TOKENS_PER_MESSAGE: u32 = 32;
/// Template tokens allowed per prompt (a default system turn) beside those per message.
pub const BOUND_TOKENS_PER_PROMPT: u32 = 64;

/// The most prompt tokens a provider may charge for a model whose tokenizer the gateway
/// does not hold: one token per byte of text (what a byte-level or byte-fallback tokenizer
/// makes at most) plus [`BOUND_TOKENS_PER_MESSAGE`] per message and
/// [`BOUND_TOKENS_PER_PROMPT`] for the template.
pub fn prompt_bound(prompt: &PromptSpec) -> u32 {
    let (bytes, messages) = match prompt {
        PromptSpec::Text(t) => (t.len(), 0usize),
        PromptSpec::Chat(m) => (prompt.byte_len(), m.len()),
    };
    let total = (bytes as u64)
        .saturating_add((messages as u64).saturating_mul(u64::from(BOUND_TOKENS_PER_MESSAGE)))
        .saturating_add(u64::from(BOUND_TOKENS_PER_PROMPT));
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// Counts a prompt with the model's tokenizer and template when the gateway holds them;
/// bounds it otherwise.
fn count_prompt(
    model: Option<&PromptModel>,
    prompt: &PromptSpec,
) -> Result<PromptCount, BackendError> {
    let Some(model) = model else {
        return Ok(PromptCount::Bound(prompt_bound(prompt)));
    };
    let (ids, param) = match prompt {
        PromptSpec::Text(t) => (model.text_ids(t), "prompt"),
        PromptSpec::Chat(m) => {
            let messages: Vec<agora_model::ChatMessage> = m
                .iter()
                .map(|(role, content)| agora_model::ChatMessage::new(role, content))
                .collect();
            (model.chat_ids(&messages), "messages")
        }
    };
    let ids = ids.map_err(|e| BackendError::InvalidRequest {
        message: format!("The prompt cannot be tokenized for this model: {e}"),
        param: Some(param.into()),
    })?;
    if ids.is_empty() {
        return Err(BackendError::InvalidRequest {
            message: "The prompt is empty.".into(),
            param: Some(param.into()),
        });
    }
    if ids.len() >= model.context_len {
        return Err(BackendError::ContextLengthExceeded(format!(
            "This model's maximum context length is {} tokens; the prompt has {}.",
            model.context_len,
            ids.len()
        )));
    }
    Ok(PromptCount::Exact {
        tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        hash: tokens_hash(&ids),
    })
}

/// The signed receipt as a JSON document anyone can check without trusting the gateway:
/// the receipt's fields, the provider's signature, the exact bytes it signed and the bytes
/// the receipt id hashes (see `docs/gateway.md`, "Checking a receipt").
fn receipt_document(r: &SignedReceipt) -> serde_json::Value {
    let signed = agora_core::codec::signing_bytes(agora_net::protocol::RECEIPT_DOMAIN, &r.receipt);
    let whole = borsh::to_vec(r).unwrap_or_default();
    serde_json::json!({
        "object": "receipt",
        "id": r.hash().to_string(),
        "provider": r.receipt.provider.to_string(),
        "receipt": serde_json::to_value(&r.receipt).unwrap_or(serde_json::Value::Null),
        "signature": serde_json::to_value(r.sig).unwrap_or(serde_json::Value::Null),
        "signed_message": hex::encode(signed),
        "signature_domain": String::from_utf8_lossy(agora_net::protocol::RECEIPT_DOMAIN),
        "encoded": hex::encode(whole),
        "id_domain": RECEIPT_ID_DOMAIN,
    })
}

/// The domain the receipt id (its hash) is computed under (agora-wire's receipt-hash domain).
const RECEIPT_ID_DOMAIN: &str = "agora/net/receipt-hash/v1";

/// A seed for a request that gave none: a hash of the request id.
fn seed_for(request_id: &RequestId) -> u64 {
    let h = blake3::hash(request_id);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Offers into the book, unless their provider was slashed or its bonded stake on the
/// ledger is under the minimum (checked before an unknown key's offer takes any room).
/// Reputation does not come from gossip: see [`follow_settlement`].
async fn ingest_gossip(
    mut gossip: mpsc::Receiver<GossipMessage>,
    book: Arc<Mutex<OfferBook>>,
    node: Node,
    banned: Arc<Mutex<std::collections::HashSet<AccountId>>>,
    stakes: Stakes,
) {
    let mut last_prune = Instant::now();
    while let Some(msg) = gossip.recv().await {
        let offer = match SignedOffer::from_bytes(&msg.data) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(source = ?msg.source, "unreadable offer: {e}");
                continue;
            }
        };
        let provider = offer.offer.provider;
        if banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&provider)
        {
            continue;
        }
        if last_prune.elapsed() > Duration::from_secs(5) {
            lock_book(&book).prune(now_ms());
            last_prune = Instant::now();
        }
        match stakes.cached(&provider) {
            Some(true) => insert_offer(&book, &node, offer).await,
            Some(false) => tracing::debug!(%provider, "offer from an unstaked key ignored"),
            None => {
                // The signature first, so a forged provider costs no ledger read.
                if offer.verify().is_err() {
                    continue;
                }
                let (book, node) = (book.clone(), node.clone());
                stakes.check_then(provider, move || {
                    tokio::spawn(async move { insert_offer(&book, &node, offer).await });
                });
            }
        }
    }
}

async fn insert_offer(book: &Mutex<OfferBook>, node: &Node, offer: SignedOffer) {
    let provider = offer.offer.provider;
    let peer = PeerId::from_bytes(&offer.offer.peer_id).ok();
    let addrs: Vec<Multiaddr> = offer
        .offer
        .addrs
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let result = lock_book(book).insert(offer, now_ms());
    match result {
        Ok(()) => {
            if let Some(peer) = peer {
                for a in addrs {
                    let _ = node.add_address(peer, a).await;
                }
            }
            tracing::debug!(%provider, "offer");
        }
        Err(e) => tracing::debug!(%provider, "offer refused: {e}"),
    }
}

fn lock_book(book: &Mutex<OfferBook>) -> std::sync::MutexGuard<'_, OfferBook> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

/// Audits passed per provider, as settlement revealed them. Only a pass moves reputation: a
/// revealed failure is an allegation until a verdict confirms it, and a confirmed one ends in
/// `Slashed` (the provider leaves the market). A verifier that also serves could otherwise
/// reveal "failed" on its rivals' leaves and take their traffic for the price of a
/// false-alarm charge. The event stream does not say when a failure is confirmed, so
/// failures are not counted at all.
#[derive(Debug, Default)]
struct AuditTally(std::collections::HashMap<AccountId, u64>);

impl AuditTally {
    /// The provider's reputation after `event`, if it moves it: (passes + 1) / (passes + 2),
    /// so an unaudited provider sits at the market's middle.
    fn apply(&mut self, event: &SettlementEvent) -> Option<(AccountId, f64)> {
        let SettlementEvent::AuditRevealed {
            provider,
            passed: true,
            ..
        } = event
        else {
            return None;
        };
        let passes = self.0.entry(*provider).or_default();
        *passes = passes.saturating_add(1);
        Some((*provider, (*passes as f64 + 1.0) / (*passes as f64 + 2.0)))
    }
}

/// Watches settlement: a slashed provider leaves the market for good; audits settlement
/// records as passed become reputation ([`AuditTally`]). Nothing gossiped moves reputation.
async fn follow_settlement(
    settlement: SharedSettlement,
    book: Arc<Mutex<OfferBook>>,
    banned: Arc<Mutex<std::collections::HashSet<AccountId>>>,
    epoch: Arc<AtomicU64>,
    inclusion: Arc<Inclusion>,
) {
    let mut from = 0u64;
    let mut audits = AuditTally::default();
    loop {
        let got = match settlement.events_from(from, Duration::from_secs(5)).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        from = from.max(got.next);
        for ev in &got.events {
            inclusion.observe(ev);
            match ev {
                SettlementEvent::EpochAdvanced { epoch: e } => {
                    epoch.fetch_max(*e, Ordering::Relaxed);
                }
                SettlementEvent::AuditRevealed { .. } => {
                    if let Some((provider, rep)) = audits.apply(ev) {
                        lock_book(&book).set_reputation(&provider, rep);
                    }
                }
                SettlementEvent::Slashed {
                    provider, amount, ..
                } => {
                    banned
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*provider);
                    let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                    b.remove_provider(provider);
                    b.set_reputation(provider, 0.0);
                    tracing::warn!(%provider, %amount, "provider slashed for fraud; dropped from the market");
                }
                SettlementEvent::ReceiptRootPosted { .. } => {}
            }
        }
    }
}

/// The request features `job` needs its provider to serve.
fn needs(job: &Job) -> Features {
    let mut f = Features::NONE;
    if job.tools {
        f = f.union(Features::TOOLS);
    }
    if job.constraint.is_some() {
        f = f.union(Features::GRAMMAR);
    }
    if job.top_logprobs.is_some() {
        f = f.union(Features::LOGPROBS);
    }
    f
}

/// What of `need` no offer in `served` supports, in the API's words; `None` when all is.
fn unserved(served: Features, need: Features) -> Option<String> {
    let missing = served.missing(need);
    if missing == Features::NONE {
        return None;
    }
    let words: Vec<&str> = missing
        .names()
        .into_iter()
        .map(|n| match n {
            "tools" => "tool calling (tools)",
            "grammar" => "structured output (response_format, or a required tool call)",
            _ => "log-probabilities (logprobs)",
        })
        .collect();
    Some(words.join(" and "))
}

/// The features at least one of `offers` serves.
fn features_served<'a>(offers: impl Iterator<Item = &'a SignedOffer>) -> Features {
    offers.fold(Features::NONE, |f, o| f.union(o.offer.features))
}

/// What some live offer serves, as the gateway lists it.
fn capabilities(f: Features) -> Capabilities {
    Capabilities {
        tools: f.contains(Features::TOOLS),
        structured_output: f.contains(Features::GRAMMAR),
        logprobs: f.contains(Features::LOGPROBS),
    }
}

/// The broker as the gateway's backend.
#[derive(Clone)]
pub struct BrokerBackend(pub Arc<Broker>);

impl Backend for BrokerBackend {
    fn models(&self) -> Vec<ModelInfo> {
        let now = now_ms();
        let broker = &self.0;
        broker.with_book(|b| {
            b.models(now)
                .into_iter()
                .map(|m| {
                    let live: Vec<&SignedOffer> = b
                        .offers_for(&m.model)
                        .filter(|o| o.offer.expires_ms > now)
                        .collect();
                    ModelInfo {
                        id: m.model_name.clone(),
                        model_id: m.model.to_string(),
                        created: 0,
                        owned_by: "agora".into(),
                        context_length: m.context_len,
                        providers: m.providers,
                        quantization: broker.models.get(&m.model).map(|p| p.quantization.clone()),
                        capabilities: capabilities(features_served(live.iter().copied())),
                        pricing: Pricing {
                            prompt: PriceRange::of(
                                live.iter().map(|o| o.offer.price_in.units()).collect(),
                            ),
                            completion: PriceRange::of(
                                live.iter().map(|o| o.offer.price_out.units()).collect(),
                            ),
                        },
                    }
                })
                .collect()
        })
    }

    fn start(&self, caller: Caller, job: Job) -> BoxFuture<'static, Result<Started, BackendError>> {
        let broker = self.0.clone();
        Box::pin(async move {
            let now = now_ms();
            let model = broker
                .with_book(|b| b.resolve(&job.model, now))
                .ok_or_else(|| BackendError::UnknownModel(job.model.clone()))?;
            // A quantization the gateway cannot vouch for (no model file) admits nothing.
            let quantization = broker.models.get(&model).map(|m| m.quantization.as_str());
            if !job.routing.admits_quantization(quantization) {
                return Err(BackendError::NoMatchingProvider(format!(
                    "The model `{}` is {}, not one of provider.quantizations.",
                    job.model,
                    quantization.unwrap_or("of a quantization this gateway does not know")
                )));
            }
            let need = needs(&job);
            let served = broker.with_book(|b| {
                features_served(b.offers_for(&model).filter(|o| o.offer.expires_ms > now))
            });
            // Needs no live offer meets are refused before any auction: a provider that
            // cannot apply a constraint must never be asked to (and could not be paid for
            // an answer it did not constrain).
            if let Some(what) = unserved(served, need) {
                return Err(BackendError::NoMatchingProvider(format!(
                    "No live provider of `{}` supports {what}.",
                    job.model
                )));
            }
            let name = job.model.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(broker.run_job(caller, job, model, tx));
            let mut started = rx
                .await
                .map_err(|_| BackendError::Internal("the job ended without an answer".into()))??;
            started.model = name;
            Ok(started)
        })
    }
}

#[cfg(test)]
mod tests;
