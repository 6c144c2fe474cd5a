//! An Agora provider: joins the network, announces signed offers for its model, serves
//! inference streams from one model thread, signs a receipt for every answer, and claims the
//! vouchers that pay for them on settlement: the embedded ledger or the Agora contracts on an
//! EVM chain (`ProviderConfig::settlement`), through the provider's role trait
//! [`ProviderSettlement`].

pub mod audits;
pub mod canary;
pub mod duties;
pub mod inclusion;
pub mod payments;
pub mod receipts;
pub mod serve;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::{Amount, Hash32, Keypair};
use agora_market::{Features, Offer, MAX_OFFER_TTL_MS};
use agora_model::LoadedModel;
use agora_net::protocol::now_ms;
use agora_net::{offers_topic, NetConfig, Node};
use agora_settlement::open::{Opened, SettlementTarget};
use agora_settlement::role_provider::ProviderSettlement;
use agora_settlement::Refusal;
use futures::StreamExt;
use tokio::sync::Semaphore;

/// Inference streams open at once, per request the model queue holds.
const INFERENCE_STREAMS_PER_SLOT: usize = 4;
/// Audit streams open at once.
const AUDIT_STREAMS: usize = 16;
/// Inclusion queries answered at once.
const INCLUSION_STREAMS: usize = 8;
/// The longest the provider's view of the ledger epoch may go unrefreshed.
const EPOCH_POLL: Duration = Duration::from_secs(1);

pub use payments::Payments;
pub use serve::Service;
pub use worker::Worker;

/// How a provider runs.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Where settlement lives (the chain id comes from it).
    pub settlement: SettlementTarget,
    /// The provider's key seed: its ed25519 network key (the ledger account), and on an EVM
    /// chain the seed its account is derived from.
    pub account_seed: [u8; 32],
    /// The network.
    pub net: NetConfig,
    /// The name clients ask for.
    pub model_name: String,
    /// Price per million prompt tokens, in base units.
    pub price_in: Amount,
    /// Price per million output tokens, in base units.
    pub price_out: Amount,
    /// Stake to hold bonded (topped up at start if short).
    pub stake: Amount,
    /// Requests that may wait for the model thread.
    pub capacity: u32,
    /// Hardware class announced.
    pub hardware: String,
    /// Region announced.
    pub region: String,
    /// How long each offer lives.
    pub offer_ttl: Duration,
    /// How often offers are renewed.
    pub renew_every: Duration,
    /// How often vouchers are claimed and the epoch's receipt root is considered.
    pub claim_every: Duration,
    /// Where the receipt log lives.
    pub data_dir: std::path::PathBuf,
    /// Plant a fake fraud in about one answer in this many (on the ledger the account must be
    /// its planter; a chain takes plants from any account, one opened per root): the canary that catches verifiers who approve without auditing.
    pub plant_one_in: Option<u32>,
    /// Test builds only: refuse every audit request and every on-ledger demand for material,
    /// to show a withheld leaf is slashed.
    #[cfg(feature = "adversary")]
    pub refuse_audits: bool,
    /// Test builds only: leave every second receipt out of the posted roots.
    #[cfg(feature = "adversary")]
    pub omit_receipts: bool,
    /// Test builds only: claim a thousand times the prompt's token count.
    #[cfg(feature = "adversary")]
    pub overcharge: bool,
}

/// Why the provider stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// Settlement refused or could not be reached.
    #[error("settlement: {0}")]
    Ledger(String),
    /// The model thread could not start.
    #[error("model thread: {0}")]
    Worker(#[from] std::io::Error),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// A running provider.
pub struct Provider {
    node: Node,
    service: Arc<Service>,
    /// Where receipt roots are posted and vouchers claimed, in this provider's account.
    settlement: Arc<dyn ProviderSettlement>,
}

impl Provider {
    /// Starts the network and the model thread and bonds the stake. Nothing is served until
    /// [`Provider::run`].
    pub async fn start(
        cfg: &ProviderConfig,
        model: LoadedModel,
    ) -> Result<Provider, ProviderError> {
        let key = Keypair::from_seed(cfg.account_seed);
        let opened = Opened::open(&cfg.settlement, &key)
            .await
            .map_err(|e| ProviderError::Ledger(format!("opening settlement: {e}")))?;
        let settlement = opened.provider();
        let chain_id = settlement.network_chain_id();
        settlement
            .bond_provider_stake(&key, cfg.stake)
            .await
            .map_err(|e| match e.refusal() {
                Some(Refusal::Overdraft) => ProviderError::Ledger(format!(
                    "account {} cannot bond {} stake: fund it first",
                    key.account(),
                    cfg.stake
                )),
                _ => ProviderError::Ledger(format!("bonding {} stake: {e}", cfg.stake)),
            })?;
        tracing::info!(stake = %cfg.stake, settlement = %settlement.kind(), "stake bonded");
        // Receipts name the epoch their answer ends in: know it before serving any.
        let epoch = settlement
            .current_epoch()
            .await
            .map_err(|e| ProviderError::Config(format!("reading the settlement's epoch: {e}")))?;
        let model = Arc::new(model);
        let model_id =
            Hash32::from_slice(&model.id.0).map_err(|e| ProviderError::Config(e.to_string()))?;
        let worker = Worker::start(model.clone(), cfg.capacity.max(1) as usize)?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let receipts =
            receipts::ReceiptLog::open_on(&cfg.data_dir.join("receipts.redb"), settlement.clone())
                .map_err(|e| ProviderError::Config(e.to_string()))?;
        let payments = Payments::open(
            key.account(),
            opened.network(),
            &cfg.data_dir.join("vouchers.redb"),
        )
        .await
        .map_err(|e| ProviderError::Config(e.to_string()))?;
        let mut net = cfg.net.clone();
        net.topics.push(offers_topic(chain_id));
        let (node, _gossip) = Node::start(net).await?;
        let service = Arc::new(Service {
            chain_id,
            key: key.clone(),
            model,
            model_id,
            price_in: cfg.price_in,
            price_out: cfg.price_out,
            worker,
            payments,
            seen: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicU64::new(epoch),
            receipts,
            audit_gate: audits::AuditGate::default(),
            canary: cfg
                .plant_one_in
                .map(|n| canary::Canary::new(cfg.account_seed, n)),
            #[cfg(feature = "adversary")]
            refuse_audits: cfg.refuse_audits,
            #[cfg(feature = "adversary")]
            omit_receipts: cfg
                .omit_receipts
                .then(|| std::sync::atomic::AtomicU64::new(0)),
            #[cfg(feature = "adversary")]
            overcharge: cfg.overcharge,
        });
        tracing::info!(
            account = %key.account(),
            peer = %node.peer_id(),
            model = %model_id,
            "provider started"
        );
        Ok(Provider {
            node,
            service,
            settlement,
        })
    }

    /// The network handle.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The service (payments, model).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The offer this provider announces now.
    pub async fn offer(&self, cfg: &ProviderConfig, seq: u64) -> Result<Offer, ProviderError> {
        let addrs = self.node.listen_addrs().await?;
        let now = now_ms();
        let ttl = (cfg.offer_ttl.as_millis() as u64).clamp(1, MAX_OFFER_TTL_MS);
        Ok(Offer {
            chain_id: self.service.chain_id,
            provider: self.service.key.account(),
            peer_id: self.node.peer_id().to_bytes(),
            addrs: addrs.iter().take(8).map(|a| a.to_string()).collect(),
            model: self.service.model_id,
            model_name: cfg.model_name.clone(),
            context_len: self.service.model.model.config().max_seq_len as u32,
            price_in: cfg.price_in,
            price_out: cfg.price_out,
            hardware: cfg.hardware.clone(),
            region: cfg.region.clone(),
            capacity: cfg.capacity.max(1),
            features: features(&self.service.model),
            seq,
            issued_ms: now,
            expires_ms: now + ttl,
        })
    }

    /// Serves until `shutdown` resolves: accepts inference streams, renews the offer, claims
    /// vouchers; claims once more before returning.
    pub async fn run(
        self,
        cfg: ProviderConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ProviderError> {
        // Streams beyond these bounds are dropped unread (see `accept_bounded`).
        let accept = self.accept_bounded(
            agora_net::protocol::INFERENCE_PROTOCOL,
            INFERENCE_STREAMS_PER_SLOT * cfg.capacity.max(1) as usize,
            |service, stream| service.handle(stream),
        )?;
        // The epoch receipts name is followed apart from the claim loop, whose ledger calls
        // take long under load: a stale view would stamp receipts the gateway refuses.
        let follow = tokio::spawn(follow_epoch(
            self.service.clone(),
            self.settlement.clone(),
            cfg.claim_every.min(EPOCH_POLL),
        ));
        let audit_accept = self.accept_bounded(
            agora_net::protocol::AUDIT_PROTOCOL,
            AUDIT_STREAMS,
            |service, stream| service.answer_audit(stream),
        )?;
        let inclusion_accept = self.accept_bounded(
            agora_net::protocol::INCLUSION_PROTOCOL,
            INCLUSION_STREAMS,
            |service, stream| service.answer_inclusion(stream),
        )?;
        // Demands and inclusion challenges left unanswered slash even an honest provider.
        // (The adversary that refuses audits refuses them on settlement too.)
        #[cfg(feature = "adversary")]
        let answers_duties = !cfg.refuse_audits;
        #[cfg(not(feature = "adversary"))]
        let answers_duties = true;
        let _duties = match answers_duties {
            true => Some(
                duties::Duties::new(
                    self.settlement.clone(),
                    self.service.clone(),
                    Some(cfg.data_dir.join("duties.height")),
                )
                .spawn()?,
            ),
            false => None,
        };
        let topic = offers_topic(self.service.chain_id);
        let mut claim = tokio::time::interval(cfg.claim_every);
        // Sequence numbers only grow, across restarts too.
        let mut seq = now_ms();
        // Until the first offer gets out (gossip needs a peer on the topic), retry quickly.
        let mut next_offer = tokio::time::Instant::now();
        let mut last_root_epoch = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(next_offer) => {
                    seq += 1;
                    let offer = self.offer(&cfg, seq).await?.sign(&self.service.key);
                    next_offer = match self.node.publish(&topic, offer.to_bytes()).await {
                        Ok(()) => tokio::time::Instant::now() + cfg.renew_every,
                        Err(e) => {
                            tracing::debug!("offer not published yet: {e}");
                            tokio::time::Instant::now() + Duration::from_millis(250)
                        }
                    };
                }
                _ = claim.tick() => {
                    self.claim().await;
                    self.post_root(&mut last_root_epoch).await;
                    self.open_plants().await;
                }
            }
        }
        accept.abort();
        audit_accept.abort();
        inclusion_accept.abort();
        follow.abort();
        self.claim().await;
        tracing::info!("provider stopped");
        Ok(())
    }

    /// Answers streams of `protocol` with `answer`, at most `limit` at once: streams beyond
    /// that are dropped unread, so an unauthenticated peer cannot make the provider hold
    /// unbounded tasks.
    fn accept_bounded<F, Fut>(
        &self,
        protocol: &'static str,
        limit: usize,
        answer: F,
    ) -> Result<tokio::task::JoinHandle<()>, ProviderError>
    where
        F: Fn(Arc<Service>, agora_net::Stream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut incoming = self
            .node
            .control()
            .accept(agora_net::StreamProtocol::new(protocol))
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let service = self.service.clone();
        let streams = Arc::new(Semaphore::new(limit));
        Ok(tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Ok(permit) = streams.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, protocol, "too many streams; dropped one");
                    continue;
                };
                tracing::debug!(%peer, protocol, "stream");
                let work = answer(service.clone(), stream);
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
        }))
    }

    /// Claims every voucher that adds to what was claimed.
    pub async fn claim(&self) {
        match self.service.payments.claim_all(&*self.settlement).await {
            Ok(total) if !total.is_zero() => tracing::info!(%total, "claimed"),
            Ok(_) => {}
            Err(e) => tracing::warn!("claiming vouchers: {e}"),
        }
    }
}

impl Provider {
    /// Once per epoch: posts the Merkle root of the receipts waiting for one, then files
    /// their material under that epoch for audits.
    pub async fn post_root(&self, last: &mut Option<u64>) {
        match self.try_post_root(*last).await {
            Ok(Some(epoch)) => *last = Some(epoch),
            Ok(None) => {}
            Err(e) => tracing::warn!("posting the receipt root: {e}"),
        }
    }

    async fn try_post_root(&self, done: Option<u64>) -> Result<Option<u64>, String> {
        let epoch = self
            .settlement
            .current_epoch()
            .await
            .map_err(|e| e.to_string())?;
        // Receipts name the epoch their answer ended in; the root that holds them must be
        // for that epoch or the next (the ledger's non-inclusion challenge).
        self.service
            .epoch
            .fetch_max(epoch, std::sync::atomic::Ordering::Relaxed);
        if done.is_some_and(|d| d >= epoch) {
            return Ok(None);
        }
        let service = self.service.clone();
        let batch = tokio::task::spawn_blocking(move || service.receipts.pending_batch())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(batch) = batch else {
            return Ok(None);
        };
        let (root, receipts) = (batch.root, batch.leaves.len() as u64);
        // Back from an outage: receipts that missed the roots of their epoch and the next
        // answer a challenge only under a late root, whose every leaf is audited.
        let late = batch.oldest_epoch.saturating_add(1) < epoch;
        match self
            .settlement
            .post_receipt_root(epoch, root, receipts, late)
            .await
        {
            Ok(()) => {}
            Err(e) if e.refusal() == Some(&Refusal::RootAlreadyPosted) => return Ok(Some(epoch)),
            Err(e) => return Err(e.to_string()),
        }
        let (service, leaves) = (self.service.clone(), batch.leaves.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            service
                .receipts
                .mark_posted(&batch, epoch)
                .map_err(|e| e.to_string())?;
            tracing::info!(epoch, receipts = batch.leaves.len(), root = %batch.root, "posted receipt root");
            agora_metrics::provider().receipt_roots.inc();
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())??;
        if let Some(canary) = &self.service.canary {
            commit_plants(&*self.settlement, canary, &leaves, epoch).await?;
        }
        Ok(Some(epoch))
    }
}

/// Commits, in the root's own epoch, to the planted leaves under the root just posted (as
/// many as the settlement opens per root).
async fn commit_plants(
    settlement: &dyn ProviderSettlement,
    canary: &canary::Canary,
    leaves: &[Hash32],
    epoch: u64,
) -> Result<(), String> {
    let most = settlement.plants_per_root().unwrap_or(usize::MAX);
    let mut committed = 0;
    for (index, leaf) in leaves.iter().enumerate() {
        if !canary::lock(&canary.planted).remove(leaf) || committed >= most {
            continue;
        }
        let index = index as u64;
        settlement
            .commit_plant(epoch, index, canary.salt(epoch, index))
            .await
            .map_err(|e| e.to_string())?;
        committed += 1;
        tracing::info!(epoch, index, "planted a fake fraud (canary)");
        canary::lock(&canary.committed).push((epoch, index));
    }
    Ok(())
}

impl Provider {
    /// Opens every committed plant whose reveals are all in; settlement slashes a verifier
    /// that passed one. Plants not yet openable stay for the next tick.
    pub async fn open_plants(&self) {
        let Some(canary) = &self.service.canary else {
            return;
        };
        if let Err(e) = open_due_plants(&*self.settlement, canary).await {
            tracing::warn!("opening plants: {e}");
        }
    }
}

async fn open_due_plants(
    settlement: &dyn ProviderSettlement,
    canary: &canary::Canary,
) -> Result<(), String> {
    let due: Vec<(u64, u64)> = canary::lock(&canary.committed).clone();
    if due.is_empty() {
        return Ok(());
    }
    let now = settlement
        .current_epoch()
        .await
        .map_err(|e| e.to_string())?;
    for (epoch, index) in due {
        let at = settlement
            .plant_epoch(epoch)
            .await
            .map_err(|e| e.to_string())?;
        match canary::plant_step_at(at, now) {
            canary::PlantStep::Wait => continue,
            canary::PlantStep::Missed => {
                tracing::warn!(epoch, index, now, "missed the plant's opening epoch");
                canary::lock(&canary.committed).retain(|p| *p != (epoch, index));
                continue;
            }
            canary::PlantStep::Open => {}
        }
        match settlement
            .reveal_plant_at(epoch, index, canary.salt(epoch, index))
            .await
        {
            Ok(()) => tracing::info!(epoch, index, "plant opened"),
            Err(e) => tracing::warn!(epoch, index, "opening a plant: {e}"),
        }
        canary::lock(&canary.committed).retain(|p| *p != (epoch, index));
    }
    Ok(())
}

/// The request features `model` is served with: log-probabilities always; tools when the
/// model has its own chat template (it was taught turns); grammar-constrained decoding when
/// its tokenizer allows masking (the same check a constrained request meets in `serve`).
pub fn features(model: &LoadedModel) -> Features {
    let mut f = Features::LOGPROBS;
    if model.chat_template.is_some() {
        f = f.union(Features::TOOLS);
    }
    if agora_model::constrain::vocab(model).is_ok() {
        f = f.union(Features::GRAMMAR);
    }
    f
}

/// Keeps `service.epoch` at the settlement's epoch, read every `every`.
async fn follow_epoch(
    service: Arc<Service>,
    settlement: Arc<dyn ProviderSettlement>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match settlement.current_epoch().await {
            Ok(epoch) => {
                service
                    .epoch
                    .fetch_max(epoch, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("reading the settlement's epoch: {e}"),
        }
    }
}
