//! An Agora verifier. It follows settlement (the embedded ledger or the Agora contracts on an
//! EVM chain, through [`VerifierSettlement`]; "the ledger" below is either): when a provider posts a receipt root, the next
//! epoch's beacon (unknown when the root was posted) selects the leaves to audit, with the
//! probability the ledger fixed from the provider's record (every job while it is new, then a
//! floor), and assigns each to one verifier (`agora_ledger::audit`). For each leaf assigned
//! to it, the verifier fetches the material from the provider over libp2p, checks the Merkle
//! path, that the receipt is this provider's, on this chain and not repeated under the root,
//! audits the answer with one prefill, and commits to the outcome on the ledger. An answer it
//! cannot judge (a model it lacks, an audit that could not run) is not committed at all. In
//! the next epoch it reveals the outcome (and is paid the audit fee), gossips it, and takes a
//! failure to a second, registered verifier. The second verifier reads the root and the
//! failed reveal from the ledger itself, fetches the material from the provider itself, and
//! co-signs only a failure it can show: an answer that fails its own audit, or material the
//! provider refuses it too. The verdict slashes the provider, pays the bounty and refunds the
//! payer.

pub mod judge;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_core::{codec, AccountId, Amount, Hash32, Keypair};
use agora_ledger::{Fault, Verdict};
use agora_market::SignedOffer;
use agora_model::LoadOptions;
use agora_net::protocol::{
    now_ms, read_frame, write_frame, AuditGossip, AuditOutcome, AuditRequest, AuditResponse,
    ConfirmRequest, ConfirmResponse, Material, Signed, VerifierHello, AUDIT_PROTOCOL,
    CONFIRM_PROTOCOL,
};
use agora_net::{audits_topic, offers_topic, GossipMessage, Multiaddr, NetConfig, Node, PeerId};
use agora_settlement::open::{Opened, SettlementTarget};
use agora_settlement::role_verifier::{
    AuditTimeline, VerdictSignature, VerifierEvent, VerifierSettlement,
};
use agora_settlement::{Refusal, SettlementError};
use agora_verify::Thresholds;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::Semaphore;

pub use judge::{
    Auditor, Fetched, Judge, Judgement, LeafOutcome, ModelAuditor, PostedRoot, ReceiptTree,
};

const SALT_DOMAIN: &[u8] = b"agora/verifier/salt/v1";
/// One exchange with a provider (open, ask, read the material).
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Opening a stream to a candidate confirmer: a peer that does not answer this fast is
/// skipped, so fake or dead verifiers cannot stall an escalation.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole confirmation (the confirmer fetches and audits).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a confirmer waits for the requester's failed reveal to reach it from the ledger.
const REVEAL_WAIT: Duration = Duration::from_secs(20);
/// How long a ledger answer on whether a key is a registered verifier is trusted.
const REGISTRY_TTL: Duration = Duration::from_secs(30);
/// Most keys whose registration is remembered (Hellos from unknown keys cost one lookup).
const REGISTRY_CAP: usize = 4096;
/// Confirmations audited at once; more are declined as busy.
const CONFIRM_SLOTS: usize = 2;
/// Inbound confirm streams open at once; more are dropped unread.
const CONFIRM_STREAMS: usize = 16;

/// How a verifier runs.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Where settlement lives (the chain id comes from it).
    pub settlement: SettlementTarget,
    /// The verifier's key seed (its ed25519 network key; on an EVM chain its account is the
    /// secp256k1 key derived from it).
    pub account_seed: [u8; 32],
    /// The network.
    pub net: NetConfig,
    /// Models it can audit (a .gguf file or a Hugging Face directory each).
    pub models: Vec<PathBuf>,
    /// Stake to bond when registering.
    pub stake: Amount,
    /// Where honest ends and fraud begins.
    pub thresholds: Thresholds,
    /// Test builds only: approve every leaf without fetching or auditing it, the way a lazy
    /// verifier would, so the tests can show planted frauds catch it.
    #[cfg(feature = "adversary")]
    pub lazy: bool,
    /// Test builds only: reveal every leaf it audited as failed, honest or not, and ask
    /// another verifier to confirm, so the tests can show a framer neither gets an honest
    /// provider slashed nor goes unpunished.
    #[cfg(feature = "adversary")]
    pub framer: bool,
}

/// Why the verifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// Settlement failed.
    #[error("settlement: {0}")]
    Settlement(String),
    /// A model could not load.
    #[error("model: {0}")]
    Model(String),
}

/// What the verifier asks settlement about other verifiers (settlement in production, a
/// fake in tests).
pub trait RegistryView: Send + Sync + 'static {
    /// Whether network key `who` stands for a registered verifier now.
    fn is_verifier(&self, who: AccountId) -> BoxFuture<'_, Result<bool, String>>;
}

/// The registry as settlement keeps it.
struct SettlementRegistry(Arc<dyn VerifierSettlement>);

impl RegistryView for SettlementRegistry {
    fn is_verifier(&self, who: AccountId) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move { self.0.is_verifier_key(who).await.map_err(|e| e.to_string()) })
    }
}

/// Paths are checked in the tree of the settlement the root was posted on.
impl ReceiptTree for dyn VerifierSettlement {
    fn holds(
        &self,
        root: &Hash32,
        leaves: u64,
        index: u64,
        receipt: &agora_net::protocol::SignedReceipt,
        proof: &[Hash32],
    ) -> bool {
        self.receipt_proof_holds(root, leaves, index, receipt, proof)
    }

    fn leaf(&self, receipt: &agora_net::protocol::SignedReceipt) -> Hash32 {
        self.receipt_leaf_of(receipt)
    }
}

/// Where a verifier gets a leaf's material (the provider over libp2p in production).
pub trait MaterialSource: Send + Sync + 'static {
    /// Asks `provider` for leaf `index` of its `epoch` root; a confirmer names the ledger
    /// transaction that revealed the failed audit it confirms.
    fn fetch(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        reveal_tx: Option<Hash32>,
    ) -> BoxFuture<'_, Fetched>;
}

/// An audit committed on the ledger and not yet revealed.
struct Committed {
    provider: AccountId,
    epoch: u64,
    index: u64,
    passed: bool,
    /// The judged receipt's leaf in the settlement's tree (zero for a failure).
    receipt: Hash32,
    reason: String,
    salt: Hash32,
    committed_epoch: u64,
    evidence: Option<(Material, Vec<Hash32>)>,
}

/// A verdict waiting for its window: a revealed failure with its evidence (a fraud), or a
/// leaf whose material this verifier demanded on the ledger (withheld if the demand goes
/// unanswered past its deadline).
struct Pending {
    provider: AccountId,
    epoch: u64,
    index: u64,
    evidence: Option<(Material, Vec<Hash32>)>,
}

/// A material demand as the ledger recorded it.
#[derive(Debug, Clone, Copy)]
struct Demanded {
    verifier: AccountId,
    due_epoch: u64,
    answered: bool,
}

/// What the verifier learned from the ledger's own event stream.
#[derive(Default)]
struct Record {
    /// Posted roots by (provider, epoch).
    roots: HashMap<(AccountId, u64), PostedRoot>,
    /// Failed reveals by leaf: the verifier that revealed and the transaction.
    failed: HashMap<(AccountId, u64, u64), (AccountId, Hash32)>,
    /// Material demands by leaf.
    demands: HashMap<(AccountId, u64, u64), Demanded>,
    /// Settlement's epoch, as its events say.
    epoch: u64,
}

type Peers = Arc<Mutex<HashMap<AccountId, (PeerId, Vec<Multiaddr>)>>>;

struct Shared {
    cfg: VerifierConfig,
    /// The chain receipts, requests and verdicts name (settlement's).
    chain_id: u64,
    key: Keypair,
    settlement: Arc<dyn VerifierSettlement>,
    view: Arc<dyn RegistryView>,
    source: Arc<dyn MaterialSource>,
    node: Node,
    judge: Judge,
    providers: Peers,
    verifiers: Peers,
    /// Whether keys are registered verifiers, and when the ledger said so.
    registry: Mutex<HashMap<AccountId, (bool, Instant)>>,
    record: Mutex<Record>,
    /// Receipts this verifier audited, by (provider, request id): the leaf it was under.
    seen: Mutex<judge::Seen>,
    committed: Mutex<Vec<Committed>>,
    /// Failures and demands waiting for their verdict window.
    pending: Mutex<Vec<Pending>>,
    /// Settlement's audit windows, read at start.
    timeline: AuditTimeline,
    submitting: tokio::sync::Mutex<()>,
    confirm_slots: Arc<Semaphore>,
    /// How long a confirmer waits for a failed reveal to reach it.
    reveal_wait: Duration,
}

/// A running verifier.
pub struct Verifier {
    shared: Arc<Shared>,
    gossip: tokio::sync::mpsc::Receiver<GossipMessage>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fetches material from providers over libp2p.
struct NetSource {
    chain_id: u64,
    key: Keypair,
    node: Node,
    providers: Peers,
}

impl MaterialSource for NetSource {
    fn fetch(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        reveal_tx: Option<Hash32>,
    ) -> BoxFuture<'_, Fetched> {
        Box::pin(async move {
            let Some((peer, _)) = lock(&self.providers).get(&provider).cloned() else {
                return Fetched::Unreachable("the provider is not on the network".into());
            };
            let req = AuditRequest {
                chain_id: self.chain_id,
                verifier: self.key.account(),
                provider,
                epoch,
                index,
                issued_ms: now_ms(),
                reveal_tx,
            }
            .sign(&self.key);
            let exchange = async {
                let mut s = self
                    .node
                    .control()
                    .open_stream(peer, agora_net::StreamProtocol::new(AUDIT_PROTOCOL))
                    .await
                    .map_err(|e| e.to_string())?;
                write_frame(&mut s, &req).await.map_err(|e| e.to_string())?;
                read_frame::<_, AuditResponse>(&mut s)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "closed".to_string())
            };
            match tokio::time::timeout(FETCH_TIMEOUT, exchange).await {
                Err(_) => Fetched::Unreachable("timed out".into()),
                Ok(Err(e)) => Fetched::Unreachable(e),
                Ok(Ok(AuditResponse::Refused { reason })) => Fetched::Refused(reason),
                Ok(Ok(AuditResponse::Denied { reason })) => {
                    Fetched::Unreachable(format!("denied: {reason}"))
                }
                Ok(Ok(AuditResponse::Material {
                    material,
                    proof,
                    next,
                })) => Fetched::Material {
                    material,
                    proof,
                    next,
                },
            }
        })
    }
}

impl Verifier {
    /// Loads the models, opens settlement, registers there (bonding the stake; on an EVM
    /// chain binding the network key first) and joins the network.
    pub async fn start(cfg: VerifierConfig) -> Result<Verifier, VerifierError> {
        let key = Keypair::from_seed(cfg.account_seed);
        let settlement = Opened::open(&cfg.settlement, &key)
            .await
            .map_err(|e| VerifierError::Settlement(e.to_string()))?
            .verifier();
        let mut models = HashMap::new();
        for path in &cfg.models {
            let m = agora_model::load(path, &LoadOptions::default())
                .map_err(|e| VerifierError::Model(format!("{}: {e}", path.display())))?;
            let id =
                Hash32::from_slice(&m.id.0).map_err(|e| VerifierError::Model(e.to_string()))?;
            tracing::info!(model = %id, path = %path.display(), "can audit");
            models.insert(id, Arc::new(m));
        }
        settlement
            .register_verifier_key(&key, cfg.stake)
            .await
            .map_err(|e| VerifierError::Settlement(format!("registering: {e}")))?;
        let timeline = settlement
            .audit_timeline()
            .await
            .map_err(|e| VerifierError::Settlement(e.to_string()))?;
        let chain_id = settlement.network_chain_id();
        let mut net = cfg.net.clone();
        net.topics.push(offers_topic(chain_id));
        net.topics.push(audits_topic(chain_id));
        let (node, gossip) = Node::start(net).await?;
        tracing::info!(account = %key.account(), peer = %node.peer_id(), settlement = %settlement.kind(), "verifier registered");
        let providers = Peers::default();
        let source = Arc::new(NetSource {
            chain_id,
            key: key.clone(),
            node: node.clone(),
            providers: providers.clone(),
        });
        let view = Arc::new(SettlementRegistry(settlement.clone()));
        let mut shared = Shared::new(cfg, key, settlement, view, source, node, models, providers);
        shared.timeline = timeline;
        Ok(Verifier {
            shared: Arc::new(shared),
            gossip,
        })
    }

    /// The network handle.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// Audits until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), VerifierError> {
        let shared = self.shared.clone();
        let mut confirms = shared
            .node
            .control()
            .accept(agora_net::StreamProtocol::new(CONFIRM_PROTOCOL))
            .map_err(|e| VerifierError::Settlement(e.to_string()))?;
        let s2 = shared.clone();
        let confirm_task = tokio::spawn(async move {
            let streams = Arc::new(Semaphore::new(CONFIRM_STREAMS));
            while let Some((peer, stream)) = confirms.next().await {
                // Over the bound the stream is dropped unread: work per unauthenticated
                // stream stays bounded.
                let Ok(permit) = streams.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many confirm streams; dropped one");
                    continue;
                };
                let s = s2.clone();
                tokio::spawn(async move {
                    s.answer_confirm(stream).await;
                    drop(permit);
                });
            }
        });
        let s3 = shared.clone();
        let gossip_task = tokio::spawn(s3.listen(self.gossip));
        let s4 = shared.clone();
        let hello_task = tokio::spawn(async move {
            loop {
                s4.say_hello().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
        let s5 = shared.clone();
        let follow_task = tokio::spawn(async move { s5.follow_settlement().await });
        shutdown.await;
        for t in [confirm_task, gossip_task, hello_task, follow_task] {
            t.abort();
        }
        tracing::info!("verifier stopped");
        Ok(())
    }
}

/// The metrics label of an audit's outcome.
fn outcome_label(o: &LeafOutcome) -> &'static str {
    match o {
        LeafOutcome::Passed { .. } => "passed",
        LeafOutcome::Failed(..) => "failed",
        LeafOutcome::Demand(_) => "demanded",
        LeafOutcome::Skip(_) => "not_judged",
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: VerifierConfig,
        key: Keypair,
        settlement: Arc<dyn VerifierSettlement>,
        view: Arc<dyn RegistryView>,
        source: Arc<dyn MaterialSource>,
        node: Node,
        models: HashMap<Hash32, Arc<agora_model::LoadedModel>>,
        providers: Peers,
    ) -> Shared {
        let chain_id = settlement.network_chain_id();
        let judge = Judge {
            chain_id,
            auditor: ModelAuditor {
                models,
                thresholds: cfg.thresholds,
            },
        };
        Shared {
            cfg,
            chain_id,
            key,
            settlement,
            view,
            source,
            node,
            judge,
            providers,
            verifiers: Peers::default(),
            registry: Mutex::default(),
            record: Mutex::default(),
            seen: Mutex::default(),
            committed: Mutex::default(),
            pending: Mutex::default(),
            timeline: AuditTimeline {
                audit_window_epochs: agora_ledger::Params::default().audit_window_epochs,
                escalation_epochs: agora_ledger::Params::default().escalation_epochs,
            },
            submitting: tokio::sync::Mutex::new(()),
            confirm_slots: Arc::new(Semaphore::new(CONFIRM_SLOTS)),
            reveal_wait: REVEAL_WAIT,
        }
    }

    async fn say_hello(&self) {
        let Ok(addrs) = self.node.listen_addrs().await else {
            return;
        };
        let hello = VerifierHello {
            chain_id: self.chain_id,
            peer_id: self.node.peer_id().to_bytes(),
            addrs: addrs.iter().take(8).map(|a| a.to_string()).collect(),
            issued_ms: now_ms(),
        };
        let msg = AuditGossip::Hello(Signed::new(hello, &self.key));
        let _ = self
            .node
            .publish(&audits_topic(self.chain_id), codec::encode(&msg))
            .await;
    }

    /// Whether the ledger lists `who` as a registered verifier (cached for a while; an
    /// unreachable ledger answers no).
    async fn registered(&self, who: AccountId) -> bool {
        if let Some((yes, at)) = lock(&self.registry).get(&who).copied() {
            if at.elapsed() < REGISTRY_TTL {
                return yes;
            }
        }
        let Ok(yes) = self.view.is_verifier(who).await else {
            return false;
        };
        let mut reg = lock(&self.registry);
        if reg.len() >= REGISTRY_CAP {
            reg.retain(|_, (_, at)| at.elapsed() < REGISTRY_TTL);
            if reg.len() >= REGISTRY_CAP {
                reg.clear();
            }
        }
        reg.insert(who, (yes, Instant::now()));
        yes
    }

    async fn listen(self: Arc<Self>, mut gossip: tokio::sync::mpsc::Receiver<GossipMessage>) {
        while let Some(msg) = gossip.recv().await {
            if msg.topic == offers_topic(self.chain_id) {
                let Ok(offer) = SignedOffer::from_bytes(&msg.data) else {
                    continue;
                };
                if offer.verify().is_err() {
                    continue;
                }
                if let Some(at) = self.reach(&offer.offer.peer_id, &offer.offer.addrs).await {
                    lock(&self.providers).insert(offer.offer.provider, at);
                }
            } else if let Ok(AuditGossip::Hello(h)) = borsh::from_slice::<AuditGossip>(&msg.data) {
                if h.verify().is_err()
                    || h.signer == self.key.account()
                    || h.value.chain_id != self.chain_id
                {
                    continue;
                }
                // Only keys the ledger lists as verifiers are asked to confirm.
                if !self.registered(h.signer).await {
                    lock(&self.verifiers).remove(&h.signer);
                    continue;
                }
                if let Some(at) = self.reach(&h.value.peer_id, &h.value.addrs).await {
                    lock(&self.verifiers).insert(h.signer, at);
                }
            }
        }
    }

    async fn reach(&self, peer: &[u8], addrs: &[String]) -> Option<(PeerId, Vec<Multiaddr>)> {
        let peer = PeerId::from_bytes(peer).ok()?;
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .take(8)
            .filter_map(|a| a.parse().ok())
            .collect();
        for a in &addrs {
            let _ = self.node.add_address(peer, a.clone()).await;
        }
        Some((peer, addrs))
    }

    /// Records what settlement's events say about roots, failed reveals and demands.
    fn note_event(&self, ev: &VerifierEvent) {
        match ev {
            VerifierEvent::RootPosted {
                provider,
                epoch,
                root,
                receipts,
            } => {
                lock(&self.record).roots.insert(
                    (*provider, *epoch),
                    PostedRoot {
                        root: *root,
                        receipts: *receipts,
                        // Not in the event: a re-check reads it from settlement.
                        full_audit: false,
                    },
                );
            }
            VerifierEvent::AuditRevealed {
                verifier,
                provider,
                epoch,
                index,
                passed: false,
                tx,
            } => {
                lock(&self.record)
                    .failed
                    .insert((*provider, *epoch, *index), (*verifier, *tx));
            }
            VerifierEvent::MaterialDemanded {
                verifier,
                provider,
                epoch,
                index,
                due_epoch,
            } => {
                lock(&self.record).demands.insert(
                    (*provider, *epoch, *index),
                    Demanded {
                        verifier: *verifier,
                        due_epoch: *due_epoch,
                        answered: false,
                    },
                );
            }
            VerifierEvent::MaterialAnswered {
                provider,
                epoch,
                index,
            } => {
                if let Some(d) = lock(&self.record)
                    .demands
                    .get_mut(&(*provider, *epoch, *index))
                {
                    d.answered = true;
                }
            }
            VerifierEvent::EpochAdvanced { epoch } => {
                let mut r = lock(&self.record);
                r.epoch = r.epoch.max(*epoch);
            }
            VerifierEvent::AuditRevealed { passed: true, .. } => {}
        }
    }

    /// Follows settlement's events: roots wait for the next beacon, then get audited.
    async fn follow_settlement(self: Arc<Self>) {
        let mut from = 0u64;
        let mut waiting: Vec<(AccountId, u64)> = vec![];
        loop {
            let batch = self
                .settlement
                .verifier_events_from(from, Duration::from_secs(5))
                .await;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("following settlement: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            from = from.max(batch.next);
            for ev in &batch.events {
                self.note_event(ev);
                match ev {
                    VerifierEvent::RootPosted {
                        provider, epoch, ..
                    } if *provider != self.key.account() => waiting.push((*provider, *epoch)),
                    VerifierEvent::EpochAdvanced { epoch } => {
                        // Reveal first: those commitments were made in earlier epochs.
                        self.clone().reveal_due(*epoch).await;
                        self.clone().verdicts_due(*epoch);
                        let due: Vec<_> =
                            waiting.iter().filter(|w| w.1 < *epoch).copied().collect();
                        waiting.retain(|w| w.1 >= *epoch);
                        for (provider, e) in due {
                            // Audits run beside the loop, so reveals stay on time.
                            tokio::spawn(self.clone().audit_root(provider, e));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends one operation of this verifier to settlement (`kind` names it in the metrics).
    async fn send<T>(
        &self,
        kind: &'static str,
        op: agora_settlement::network::SettlementFuture<'_, T>,
    ) -> Result<T, SettlementError> {
        // Audits of several roots commit at once: one submission at a time keeps nonces in
        // order.
        let _turn = self.submitting.lock().await;
        let result = op.await;
        agora_metrics::verifier().ledger_tx(kind, result.is_ok());
        result
    }

    /// Audits the leaves of `provider`'s `epoch` root that settlement assigned to this
    /// verifier, and commits to each outcome.
    async fn audit_root(self: Arc<Self>, provider: AccountId, epoch: u64) {
        let me = self.key.account();
        let mine = match self
            .settlement
            .leaves_assigned_to_me(me, provider, epoch)
            .await
        {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(%provider, epoch, "no audit assignment: {e}");
                return;
            }
        };
        if mine.is_empty() {
            return;
        }
        // The root and its leaf count as settlement recorded them, never as anyone says.
        let posted = match self.settlement.posted_root(provider, epoch).await {
            Ok(Some(r)) => PostedRoot {
                root: r.root,
                receipts: r.receipts,
                full_audit: r.full_audit,
            },
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%provider, epoch, "reading the posted root: {e}");
                return;
            }
        };
        tracing::info!(%provider, epoch, leaves = mine.len(), of = posted.receipts, "auditing my assigned leaves");
        for index in mine {
            self.clone()
                .commit_leaf(provider, epoch, index, posted)
                .await;
        }
    }

    /// Audits one assigned leaf and commits to the outcome, or demands the material on the
    /// ledger when none that holds together came.
    async fn commit_leaf(
        self: Arc<Self>,
        provider: AccountId,
        epoch: u64,
        index: u64,
        posted: PostedRoot,
    ) {
        {
            let audit_started = std::time::Instant::now();
            let outcome = self.audit_leaf(provider, epoch, index, posted).await;
            agora_metrics::verifier().audit_outcome(outcome_label(&outcome), audit_started);
            let (passed, receipt, reason, evidence) = match outcome {
                LeafOutcome::Passed { receipt } => (true, receipt, String::new(), None),
                LeafOutcome::Failed(reason, evidence) => {
                    (false, Hash32::ZERO, reason, Some(*evidence))
                }
                LeafOutcome::Demand(reason) => {
                    self.demand(provider, epoch, index, &reason).await;
                    return;
                }
                LeafOutcome::Skip(reason) => {
                    tracing::warn!(%provider, epoch, index, "not judged, not committed: {reason}");
                    return;
                }
            };
            let salt = codec::hash(
                SALT_DOMAIN,
                &(self.cfg.account_seed, provider, epoch, index),
            );
            let op = self
                .settlement
                .commit_leaf_audit(provider, epoch, index, passed, salt);
            match self.send("CommitAudit", op).await {
                Ok(committed_epoch) => {
                    tracing::info!(%provider, epoch, index, "audit committed");
                    lock(&self.committed).push(Committed {
                        provider,
                        epoch,
                        index,
                        passed,
                        receipt,
                        reason,
                        salt,
                        committed_epoch,
                        evidence,
                    });
                }
                Err(e) => tracing::warn!(%provider, epoch, index, "committing the audit: {e}"),
            }
        }
    }

    /// Reveals every commitment made before `epoch`, gossips the outcome, and takes failures
    /// to a second verifier.
    async fn reveal_due(self: Arc<Self>, epoch: u64) {
        let due: Vec<Committed> = {
            let mut all = lock(&self.committed);
            let (due, keep) = all.drain(..).partition(|c| c.committed_epoch < epoch);
            *all = keep;
            due
        };
        for c in due {
            let (provider, e, index) = (c.provider, c.epoch, c.index);
            let op = self
                .settlement
                .reveal_leaf_audit(provider, e, index, c.passed, c.receipt, c.salt);
            match self.send("RevealAudit", op).await {
                Ok(_) if c.passed => {
                    tracing::info!(%provider, epoch = e, index, "audit passed (revealed)")
                }
                Ok(_) => {
                    tracing::warn!(%provider, epoch = e, index, "AUDIT FAILED (revealed): {}", c.reason)
                }
                Err(err) => {
                    tracing::warn!(%provider, epoch = e, index, "revealing the audit: {err}");
                    continue;
                }
            }
            let outcome = AuditOutcome {
                chain_id: self.chain_id,
                provider,
                epoch: e,
                index,
                passed: c.passed,
                reason: c.reason.clone(),
                issued_ms: now_ms(),
            };
            let msg = AuditGossip::Outcome(Signed::new(outcome, &self.key));
            let _ = self
                .node
                .publish(&audits_topic(self.chain_id), codec::encode(&msg))
                .await;
            if !c.passed {
                // The verdict waits for its window, after the canary's plant epoch.
                lock(&self.pending).push(Pending {
                    provider,
                    epoch: e,
                    index,
                    evidence: c.evidence,
                });
            }
        }
    }

    /// Demands a leaf's material on the ledger (in the commit window, where the leaf's audit
    /// is still open); the verdict waits until the demand's deadline has passed unanswered.
    async fn demand(&self, provider: AccountId, epoch: u64, index: u64, why: &str) {
        tracing::warn!(%provider, epoch, index, "no material ({why}): demanding it on the ledger");
        let op = self.settlement.demand_leaf_material(provider, epoch, index);
        match self.send("DemandMaterial", op).await {
            Ok(_) => lock(&self.pending).push(Pending {
                provider,
                epoch,
                index,
                evidence: None,
            }),
            Err(e) => tracing::warn!(%provider, epoch, index, "demanding the material: {e}"),
        }
    }

    /// At the start of `epoch`: takes each failure whose verdict window is open to a second
    /// verifier, each demand left unanswered past its deadline too; re-audits leaves whose
    /// demand the provider answered; drops what is past its window.
    fn verdicts_due(self: Arc<Self>, epoch: u64) {
        let pending: Vec<Pending> = std::mem::take(&mut *lock(&self.pending));
        let mut keep = vec![];
        for p in pending {
            let Some(w) = self.timeline.windows(p.epoch) else {
                continue;
            };
            if epoch > w.verdict.1 {
                tracing::warn!(provider = %p.provider, epoch = p.epoch, index = p.index, "the verdict window closed");
                continue;
            }
            match &p.evidence {
                Some(_) if epoch >= w.verdict.0 => {
                    tokio::spawn(
                        self.clone()
                            .escalate(p.provider, p.epoch, p.index, p.evidence),
                    );
                }
                Some(_) => keep.push(p),
                None => {
                    let leaf = (p.provider, p.epoch, p.index);
                    let demand = lock(&self.record).demands.get(&leaf).copied();
                    match demand {
                        // Not seen on the ledger yet.
                        None => keep.push(p),
                        Some(d) if d.answered => {
                            if epoch <= w.commit.1 {
                                // The provider answered on the ledger: ask again and audit.
                                tokio::spawn(self.clone().reaudit(p.provider, p.epoch, p.index));
                            } else {
                                tracing::warn!(provider = %p.provider, epoch = p.epoch, index = p.index,
                                    "the demand was answered after the commit window: not judged");
                            }
                        }
                        Some(d) if epoch > d.due_epoch && epoch >= w.verdict.0 => {
                            tokio::spawn(self.clone().escalate(p.provider, p.epoch, p.index, None));
                        }
                        Some(_) => keep.push(p),
                    }
                }
            }
        }
        lock(&self.pending).extend(keep);
    }

    /// Audits a leaf again once its provider answered the demand for it on the ledger. If
    /// the material still does not come, the leaf is not judged (an answered demand is
    /// never withheld).
    async fn reaudit(self: Arc<Self>, provider: AccountId, epoch: u64, index: u64) {
        let Some(posted) = lock(&self.record).roots.get(&(provider, epoch)).copied() else {
            return;
        };
        // Still no material: the second demand is refused by the ledger (one per leaf), so
        // the leaf stays unjudged.
        self.commit_leaf(provider, epoch, index, posted).await;
    }

    /// Fetches and audits one leaf.
    async fn audit_leaf(
        self: &Arc<Self>,
        provider: AccountId,
        epoch: u64,
        index: u64,
        posted: PostedRoot,
    ) -> LeafOutcome {
        #[cfg(feature = "adversary")]
        if self.cfg.lazy {
            // Judges nothing: names a receipt of its own per leaf, the most credit a pass
            // can earn.
            return LeafOutcome::Passed {
                receipt: codec::hash(b"agora/lazy-verifier", &(provider, epoch, index)),
            };
        }
        let fetched = self.fetch_with_retries(provider, epoch, index, None).await;
        let (material, proof) =
            match judge::take_material_in(&*self.settlement, &posted, index, fetched) {
                Ok(taken) => taken,
                Err(outcome) => return outcome,
            };
        if let Some(skip) = self.seen_elsewhere(provider, epoch, index, &material) {
            return skip;
        }
        // The audit is CPU work; run it off the async threads.
        let (me, m) = (self.clone(), material.clone());
        let full = posted.full_audit;
        let judged =
            tokio::task::spawn_blocking(move || me.judge.judge_under(&provider, epoch, full, &m))
                .await
                .unwrap_or_else(|e| Judgement::CannotJudge(e.to_string()));
        #[cfg(feature = "adversary")]
        if self.cfg.framer && matches!(judged, Judgement::Passed) {
            tracing::info!(%provider, epoch, index, "adversary: an honest leaf revealed as failed");
            return LeafOutcome::Failed("framed".into(), Box::new((material, proof)));
        }
        judge::leaf_outcome(&*self.settlement, judged, material, proof)
    }

    /// A receipt this verifier already audited under another leaf is not counted again.
    fn seen_elsewhere(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        material: &Material,
    ) -> Option<LeafOutcome> {
        lock(&self.seen).elsewhere(provider, epoch, index, material)
    }

    async fn fetch_with_retries(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        reveal_tx: Option<Hash32>,
    ) -> Fetched {
        // A stream can be dropped when several verifiers ask at once (the provider's
        // accept queue overflows): ask a few times before giving up.
        let mut fetched = Fetched::Unreachable(String::new());
        for attempt in 0..3u64 {
            fetched = self.source.fetch(provider, epoch, index, reveal_tx).await;
            match &fetched {
                Fetched::Unreachable(_) => {
                    tokio::time::sleep(Duration::from_millis(300 * (attempt + 1))).await;
                }
                _ => break,
            }
        }
        fetched
    }

    /// A failed audit: a second verifier re-checks and co-signs; then the verdict goes to
    /// the ledger, inside its window. Without evidence, the demand went unanswered.
    async fn escalate(
        self: Arc<Self>,
        provider: AccountId,
        epoch: u64,
        index: u64,
        evidence: Option<(Material, Vec<Hash32>)>,
    ) {
        let (fault, material) = match evidence {
            Some((material, proof)) => (
                Fault::Fraud {
                    receipt: material.receipt.clone(),
                    proof,
                },
                Some(Box::new(material)),
            ),
            None => (Fault::Withheld, None),
        };
        let verdict = Verdict {
            chain_id: self.chain_id,
            provider,
            epoch,
            index,
            fault,
        };
        let request = ConfirmRequest {
            verdict: verdict.clone(),
            material,
        };
        // Other verifiers may not have announced themselves yet, or a stream may drop: try
        // until the verdict window closes.
        let last = self.timeline.windows(epoch).map_or(0, |w| w.verdict.1);
        let mut round = 0u64;
        while lock(&self.record).epoch <= last {
            if self.try_confirm(&request, &verdict).await {
                return;
            }
            round = (round + 1).min(8);
            tokio::time::sleep(Duration::from_millis(250 * round)).await;
        }
        tracing::warn!(%provider, epoch, index, "no second verifier confirmed the failure");
    }

    /// One round of asking the known, registered verifiers to co-sign; true once the verdict
    /// is settled.
    async fn try_confirm(&self, request: &ConfirmRequest, verdict: &Verdict) -> bool {
        let (provider, epoch, index) = (verdict.provider, verdict.epoch, verdict.index);
        let others: Vec<(AccountId, PeerId)> = lock(&self.verifiers)
            .iter()
            .filter(|(a, _)| **a != provider)
            .map(|(a, (p, _))| (*a, *p))
            .collect();
        for (confirmer, peer) in others {
            if !self.registered(confirmer).await {
                lock(&self.verifiers).remove(&confirmer);
                continue;
            }
            let signed = Signed::new(request.clone(), &self.key);
            let verdict = verdict.clone();
            let opened = tokio::time::timeout(
                OPEN_TIMEOUT,
                self.node
                    .control()
                    .open_stream(peer, agora_net::StreamProtocol::new(CONFIRM_PROTOCOL)),
            )
            .await;
            let mut s = match opened {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%confirmer, "cannot reach: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%confirmer, "cannot reach: timed out");
                    continue;
                }
            };
            let exchange = async {
                write_frame(&mut s, &signed)
                    .await
                    .map_err(|e| e.to_string())?;
                read_frame::<_, ConfirmResponse>(&mut s)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "closed".to_string())
            };
            let sig = match tokio::time::timeout(CONFIRM_TIMEOUT, exchange).await {
                Ok(Ok(ConfirmResponse::Confirmed { sig })) => VerdictSignature::Ed25519(sig),
                Ok(Ok(ConfirmResponse::ConfirmedEip712 { sig })) => {
                    match <[u8; 65]>::try_from(sig.as_slice()) {
                        Ok(sig) => VerdictSignature::Eip712(sig),
                        Err(_) => {
                            tracing::warn!(%confirmer, "a confirmation signature of the wrong length");
                            continue;
                        }
                    }
                }
                Ok(Ok(ConfirmResponse::Declined { reason })) => {
                    tracing::warn!(%confirmer, "declined to confirm: {reason}");
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%confirmer, "confirm failed: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            let op = self.settlement.submit_verdict(&verdict, confirmer, &sig);
            match self.send("AuditVerdict", op).await {
                Ok(()) => {
                    tracing::warn!(%provider, epoch, index, %confirmer, withheld = matches!(verdict.fault, Fault::Withheld), "verdict confirmed: provider slashed");
                    return true;
                }
                Err(SettlementError::Refused(Refusal::AlreadyJudged)) => {
                    tracing::info!(%provider, epoch, index, "already judged by another verifier");
                    return true;
                }
                Err(e) => tracing::warn!("submitting the verdict: {e}"),
            }
        }
        false
    }

    /// The failed reveal of a leaf by `requester`, as this verifier read it from the ledger,
    /// waiting a while for the ledger's events to reach it.
    async fn failed_reveal_by(
        &self,
        requester: AccountId,
        leaf: (AccountId, u64, u64),
    ) -> Option<Hash32> {
        let deadline = Instant::now() + self.reveal_wait;
        loop {
            if let Some((v, tx)) = lock(&self.record).failed.get(&leaf).copied() {
                return (v == requester).then_some(tx);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether the ledger shows `requester`'s demand for `leaf` unanswered past its deadline
    /// (waiting a while for the ledger's events to reach this verifier).
    async fn unanswered_demand_by(
        &self,
        requester: AccountId,
        leaf: (AccountId, u64, u64),
    ) -> Result<String, String> {
        let deadline = Instant::now() + self.reveal_wait;
        loop {
            let (demand, now) = {
                let r = lock(&self.record);
                (r.demands.get(&leaf).copied(), r.epoch)
            };
            match demand {
                Some(d) if d.verifier != requester => {
                    return Err("the demand for this leaf is another verifier's".into())
                }
                Some(d) if d.answered => {
                    return Err("the provider answered the demand on the ledger".into())
                }
                Some(d) if now > d.due_epoch => {
                    return Ok(format!(
                    "the material is withheld: the demand was due by epoch {} and is unanswered",
                    d.due_epoch
                ))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(match demand {
                    None => "the ledger shows no demand for this leaf by the requester".into(),
                    Some(_) => "the provider may still answer the demand".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The second verifier's own check of a failure: `Ok(why it fails)` to co-sign, or
    /// `Err(why not)`. Everything it judges on comes from the ledger and the provider;
    /// the requester's material is only a hint.
    async fn recheck(
        self: &Arc<Self>,
        requester: AccountId,
        c: &ConfirmRequest,
    ) -> Result<String, String> {
        let v = &c.verdict;
        let me = self.key.account();
        if v.chain_id != self.chain_id
            || v.provider == me
            || requester == me
            || requester == v.provider
        {
            return Err("not a verdict this verifier can judge".into());
        }
        if !self.registered(requester).await {
            return Err("the requester is not a registered verifier".into());
        }
        if matches!(v.fault, Fault::Withheld) {
            // The fault is a ledger fact: the requester's demand, unanswered past its
            // deadline. Nothing to fetch (the provider's material would not change it).
            return self
                .unanswered_demand_by(requester, (v.provider, v.epoch, v.index))
                .await;
        }
        let Some(reveal_tx) = self
            .failed_reveal_by(requester, (v.provider, v.epoch, v.index))
            .await
        else {
            return Err("the ledger shows no failed reveal of this leaf by the requester".into());
        };
        // The root, its leaf count and whether it is a late root (which decides the receipt
        // epochs it may hold), read from settlement itself: never the requester's.
        let followed = lock(&self.record)
            .roots
            .get(&(v.provider, v.epoch))
            .copied();
        let posted = match (
            self.settlement.posted_root(v.provider, v.epoch).await,
            followed,
        ) {
            (Ok(Some(r)), _) => PostedRoot {
                root: r.root,
                receipts: r.receipts,
                full_audit: r.full_audit,
            },
            // Settlement not answering now: the root its events showed, under the floor
            // root's stricter rule.
            (_, Some(followed)) => followed,
            (_, None) => return Err("the ledger shows no such root".into()),
        };
        // Audits are expensive: a few at a time, the rest declined as busy.
        let Ok(_slot) = self.confirm_slots.clone().try_acquire_owned() else {
            return Err("busy: try again later".into());
        };
        let fetched = self
            .fetch_with_retries(v.provider, v.epoch, v.index, Some(reveal_tx))
            .await;
        let me2 = self.clone();
        let tree = self.settlement.clone();
        let (provider, epoch, index, fault, hint) = (
            v.provider,
            v.epoch,
            v.index,
            v.fault.clone(),
            c.material.clone(),
        );
        tokio::task::spawn_blocking(move || {
            me2.judge.decide_in(
                &*tree,
                &provider,
                epoch,
                index,
                &fault,
                &posted,
                fetched,
                hint.as_deref(),
            )
        })
        .await
        .map_err(|e| format!("cannot judge: {e}"))?
    }

    /// A second verifier re-checks the evidence itself before co-signing.
    async fn answer_confirm(self: Arc<Self>, mut stream: agora_net::Stream) {
        let Ok(Ok(Some(req))) = tokio::time::timeout(
            FETCH_TIMEOUT,
            read_frame::<_, Signed<ConfirmRequest>>(&mut stream),
        )
        .await
        else {
            return;
        };
        let response = self.confirm_response(req).await;
        let _ = write_frame(&mut stream, &response).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
    }

    async fn confirm_response(self: &Arc<Self>, req: Signed<ConfirmRequest>) -> ConfirmResponse {
        if req.verify().is_err() {
            return ConfirmResponse::Declined {
                reason: "bad signature".into(),
            };
        }
        let requester = req.signer;
        match self.recheck(requester, &req.value).await {
            Ok(reason) => {
                let v = &req.value.verdict;
                // The settlement's own signature kind: ed25519 on the ledger, EIP-712 on a
                // chain.
                match self.settlement.confirm_verdict(v).await {
                    Ok(VerdictSignature::Ed25519(sig)) => {
                        tracing::warn!(provider = %v.provider, %requester, "confirming the failure: {reason}");
                        ConfirmResponse::Confirmed { sig }
                    }
                    Ok(VerdictSignature::Eip712(sig)) => {
                        tracing::warn!(provider = %v.provider, %requester, "confirming the failure: {reason}");
                        ConfirmResponse::ConfirmedEip712 { sig: sig.to_vec() }
                    }
                    Err(e) => ConfirmResponse::Declined {
                        reason: format!("cannot sign on settlement: {e}"),
                    },
                }
            }
            Err(reason) => ConfirmResponse::Declined { reason },
        }
    }
}

#[cfg(test)]
mod tests;
