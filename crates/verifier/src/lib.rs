//! An Agora verifier. It follows the ledger: when a provider posts a receipt root, the next
//! epoch's beacon (unknown when the root was posted) selects the leaves to audit, with the
//! probability the ledger fixed from the provider's record (every job while it is new, then a
//! floor), and assigns each to one verifier (`agora_ledger::audit`). For each leaf assigned
//! to it, the verifier fetches the material from the provider over libp2p, checks the Merkle
//! path and the receipt, audits the answer with one prefill, and commits to the outcome on
//! the ledger. In the next epoch it reveals the outcome (and is paid the audit fee), gossips
//! it, and takes a failure to a second verifier, which re-audits the evidence itself (or asks
//! the provider itself when the material was withheld) and co-signs the verdict; the verdict
//! slashes the provider, pays the bounty and refunds the payer. A refused or lost audit counts
//! as failed.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::{codec, merkle, AccountId, Amount, Hash32, Keypair};
use agora_ledger::client::Client;
use agora_ledger::{audit_commitment, Event, Fault, Tx, TxBody, Verdict};
use agora_market::SignedOffer;
use agora_model::{LoadOptions, LoadedModel, SamplingParams};
use agora_net::protocol::{
    now_ms, read_frame, write_frame, AuditGossip, AuditOutcome, AuditRequest, AuditResponse,
    ConfirmRequest, ConfirmResponse, Material, Signed, VerifierHello, AUDIT_PROTOCOL,
    CONFIRM_PROTOCOL,
};
use agora_net::{audits_topic, offers_topic, GossipMessage, Multiaddr, NetConfig, Node, PeerId};
use agora_verify::{audit, Answer, Fingerprint, Thresholds};
use futures::StreamExt;

const SALT_DOMAIN: &[u8] = b"agora/verifier/salt/v1";
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// How a verifier runs.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The chain.
    pub chain_id: u64,
    /// The ledger node.
    pub ledger_url: String,
    /// The verifier's ledger key seed.
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
}

/// Why the verifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(String),
    /// A model could not load.
    #[error("model: {0}")]
    Model(String),
}

/// An audit committed on the ledger and not yet revealed.
struct Committed {
    provider: AccountId,
    epoch: u64,
    index: u64,
    root: Hash32,
    passed: bool,
    reason: String,
    salt: Hash32,
    committed_epoch: u64,
    evidence: Option<(Material, Vec<Hash32>)>,
}

struct Shared {
    cfg: VerifierConfig,
    key: Keypair,
    ledger: Client,
    node: Node,
    models: HashMap<Hash32, Arc<LoadedModel>>,
    providers: Mutex<HashMap<AccountId, (PeerId, Vec<Multiaddr>)>>,
    verifiers: Mutex<HashMap<AccountId, (PeerId, Vec<Multiaddr>)>>,
    committed: Mutex<Vec<Committed>>,
    submitting: tokio::sync::Mutex<()>,
}

/// A running verifier.
pub struct Verifier {
    shared: Arc<Shared>,
    gossip: tokio::sync::mpsc::Receiver<GossipMessage>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

impl Verifier {
    /// Loads the models, registers on the ledger (bonding the stake) and joins the network.
    pub async fn start(cfg: VerifierConfig) -> Result<Verifier, VerifierError> {
        let key = Keypair::from_seed(cfg.account_seed);
        let ledger =
            Client::new(&cfg.ledger_url).map_err(|e| VerifierError::Ledger(e.to_string()))?;
        let mut models = HashMap::new();
        for path in &cfg.models {
            let m = agora_model::load(path, &LoadOptions::default())
                .map_err(|e| VerifierError::Model(format!("{}: {e}", path.display())))?;
            let id =
                Hash32::from_slice(&m.id.0).map_err(|e| VerifierError::Model(e.to_string()))?;
            tracing::info!(model = %id, path = %path.display(), "can audit");
            models.insert(id, Arc::new(m));
        }
        let (l, k, chain, stake) = (ledger.clone(), key.clone(), cfg.chain_id, cfg.stake);
        blocking(move || {
            let me = k.account();
            let acct = l
                .account(&me)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("account {me} does not exist; fund it first"))?;
            if acct.verifier {
                return Ok(());
            }
            let tx = Tx {
                chain_id: chain,
                from: me,
                nonce: acct.nonce,
                body: TxBody::RegisterVerifier { stake },
            }
            .sign(&k);
            l.submit(&tx).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(VerifierError::Ledger)?;
        let mut net = cfg.net.clone();
        net.topics.push(offers_topic(cfg.chain_id));
        net.topics.push(audits_topic(cfg.chain_id));
        let (node, gossip) = Node::start(net).await?;
        tracing::info!(account = %key.account(), peer = %node.peer_id(), "verifier registered");
        Ok(Verifier {
            shared: Arc::new(Shared {
                cfg,
                key,
                ledger,
                node,
                models,
                providers: Mutex::default(),
                verifiers: Mutex::default(),
                committed: Mutex::default(),
                submitting: tokio::sync::Mutex::new(()),
            }),
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
            .map_err(|e| VerifierError::Ledger(e.to_string()))?;
        let s2 = shared.clone();
        let confirm_task = tokio::spawn(async move {
            while let Some((_, stream)) = confirms.next().await {
                tokio::spawn(s2.clone().answer_confirm(stream));
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
        let follow_task = tokio::spawn(async move { s5.follow_ledger().await });
        shutdown.await;
        for t in [confirm_task, gossip_task, hello_task, follow_task] {
            t.abort();
        }
        tracing::info!("verifier stopped");
        Ok(())
    }
}

/// The audit probability for a provider with this record.
impl Shared {
    async fn say_hello(&self) {
        let Ok(addrs) = self.node.listen_addrs().await else {
            return;
        };
        let hello = VerifierHello {
            chain_id: self.cfg.chain_id,
            peer_id: self.node.peer_id().to_bytes(),
            addrs: addrs.iter().take(8).map(|a| a.to_string()).collect(),
            issued_ms: now_ms(),
        };
        let msg = AuditGossip::Hello(Signed::new(hello, &self.key));
        let _ = self
            .node
            .publish(&audits_topic(self.cfg.chain_id), codec::encode(&msg))
            .await;
    }

    async fn listen(self: Arc<Self>, mut gossip: tokio::sync::mpsc::Receiver<GossipMessage>) {
        while let Some(msg) = gossip.recv().await {
            if msg.topic == offers_topic(self.cfg.chain_id) {
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
                if h.verify().is_err() || h.signer == self.key.account() {
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
        let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        for a in &addrs {
            let _ = self.node.add_address(peer, a.clone()).await;
        }
        Some((peer, addrs))
    }

    /// Follows the ledger's events: roots wait for the next beacon, then get audited.
    async fn follow_ledger(self: Arc<Self>) {
        let mut from = 0u64;
        let mut waiting: Vec<(AccountId, u64)> = vec![];
        loop {
            let ledger = self.ledger.clone();
            let batch = blocking(move || {
                ledger
                    .events(from, Duration::from_secs(5))
                    .map_err(|e| e.to_string())
            })
            .await;
            let blocks = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("following the ledger: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for block in blocks {
                from = from.max(block.height + 1);
                for tx in &block.txs {
                    for ev in &tx.events {
                        match ev {
                            Event::ReceiptRootPosted {
                                provider, epoch, ..
                            } if *provider != self.key.account() => {
                                waiting.push((*provider, *epoch))
                            }
                            Event::EpochAdvanced { epoch, .. } => {
                                // Reveal first: those commitments were made in earlier epochs.
                                self.clone().reveal_due(*epoch).await;
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
        }
    }

    /// Submits one transaction from this verifier with its next nonce.
    async fn submit(&self, body: TxBody) -> Result<agora_ledger::api::SubmitReceipt, String> {
        let (ledger, key, chain) = (self.ledger.clone(), self.key.clone(), self.cfg.chain_id);
        // Audits of several roots commit at once: one submission at a time keeps nonces in
        // order.
        let _turn = self.submitting.lock().await;
        blocking(move || {
            let me = key.account();
            let nonce = ledger.next_nonce(&me).map_err(|e| e.to_string())?;
            let tx = Tx {
                chain_id: chain,
                from: me,
                nonce,
                body,
            }
            .sign(&key);
            ledger.submit(&tx).map_err(|e| e.to_string())
        })
        .await
    }

    /// Audits the leaves of `provider`'s `epoch` root that the ledger assigned to this
    /// verifier, and commits to each outcome.
    async fn audit_root(self: Arc<Self>, provider: AccountId, epoch: u64) {
        let ledger = self.ledger.clone();
        let plan = match blocking(move || {
            ledger
                .audit_plan(&provider, epoch)
                .map_err(|e| e.to_string())
        })
        .await
        {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%provider, epoch, "no audit plan: {e}");
                return;
            }
        };
        let me = self.key.account();
        let mine: Vec<u64> = plan
            .leaves
            .iter()
            .filter(|(_, v)| *v == me)
            .map(|(i, _)| *i)
            .collect();
        if !mine.is_empty() {
            tracing::info!(%provider, epoch, leaves = mine.len(), of = plan.receipts, "auditing my assigned leaves");
        }
        for index in mine {
            let (passed, reason, evidence) =
                self.audit_leaf(provider, epoch, index, plan.root).await;
            let salt = codec::hash(
                SALT_DOMAIN,
                &(self.cfg.account_seed, provider, epoch, index),
            );
            let commitment = audit_commitment(
                self.cfg.chain_id,
                &me,
                &provider,
                epoch,
                index,
                passed,
                &salt,
            );
            let body = TxBody::CommitAudit {
                provider,
                epoch,
                index,
                commitment,
            };
            match self.submit(body).await {
                Ok(_) => {
                    tracing::info!(%provider, epoch, index, "audit committed");
                    let committed_epoch = self.current_epoch().await;
                    lock(&self.committed).push(Committed {
                        provider,
                        epoch,
                        index,
                        root: plan.root,
                        passed,
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

    /// The epoch the ledger is in now (at or after the block just committed; a later epoch
    /// only delays the reveal, which stays inside its window).
    async fn current_epoch(&self) -> u64 {
        let ledger = self.ledger.clone();
        blocking(move || ledger.status().map_err(|e| e.to_string()))
            .await
            .map(|s| s.epoch)
            .unwrap_or(u64::MAX)
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
            let body = TxBody::RevealAudit {
                provider: c.provider,
                epoch: c.epoch,
                index: c.index,
                passed: c.passed,
                salt: c.salt,
            };
            let (provider, e, index) = (c.provider, c.epoch, c.index);
            match self.submit(body).await {
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
                chain_id: self.cfg.chain_id,
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
                .publish(&audits_topic(self.cfg.chain_id), codec::encode(&msg))
                .await;
            if !c.passed {
                let me = self.clone();
                tokio::spawn(async move {
                    me.escalate(provider, e, index, c.root, c.evidence).await;
                });
            }
        }
    }

    /// Fetches and audits one leaf: (passed, reason, the evidence when there is some).
    async fn audit_leaf(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        root: Hash32,
    ) -> (bool, String, Option<(Material, Vec<Hash32>)>) {
        #[cfg(feature = "adversary")]
        if self.cfg.lazy {
            return (true, String::new(), None);
        }
        let (material, proof) = match self.fetch_with_retries(provider, epoch, index).await {
            Ok(x) => x,
            Err(reason) => return (false, format!("no material: {reason}"), None),
        };
        let leaf = material.receipt.hash();
        if !merkle::verify(&root, &leaf, index, &proof) {
            return (
                false,
                "the receipt is not under the posted root".into(),
                None,
            );
        }
        match self.judge(&material) {
            Ok(()) => (true, String::new(), None),
            Err(reason) => (false, reason, Some((material, proof))),
        }
    }

    async fn fetch_with_retries(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(Material, Vec<Hash32>), String> {
        // A stream can be dropped when several verifiers ask at once (the provider's
        // accept queue overflows): ask a few times before counting the audit as refused.
        let mut fetched = Err(String::new());
        for attempt in 0..4u64 {
            fetched = self.fetch(provider, epoch, index).await;
            match &fetched {
                Err(e) if !e.starts_with("refused") => {
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                }
                _ => break,
            }
        }
        fetched
    }

    /// The checks on material already proven under a root.
    fn judge(&self, material: &Material) -> Result<(), String> {
        #[cfg(feature = "adversary")]
        if self.cfg.lazy {
            return Ok(());
        }
        if material.receipt.verify().is_err() {
            return Err("the receipt's signature is bad".into());
        }
        material.matches_receipt().map_err(str::to_string)?;
        let r = &material.receipt.receipt;
        let model = self
            .models
            .get(&r.model)
            .ok_or_else(|| format!("model {} is not one this verifier audits", r.model))?;
        let print = Fingerprint::from_bytes(&material.fingerprint, 1 << 16)
            .ok_or("the fingerprint does not parse")?;
        let report = audit(
            model,
            &Answer {
                prompt: &material.prompt,
                resumed: &material.resumed,
                output: &material.output,
                claimed_tokens: r.output_tokens as usize,
                sampling: SamplingParams {
                    temperature: f64::from(r.sampling.temperature),
                    top_k: 0,
                    top_p: f64::from(r.sampling.top_p),
                    seed: r.sampling.seed,
                },
                fingerprint: &print,
            },
            &self.cfg.thresholds,
        )
        .map_err(|e| format!("the audit could not run: {e}"))?;
        if report.passed {
            Ok(())
        } else {
            Err(report.reasons.join("; "))
        }
    }

    async fn fetch(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
    ) -> Result<(Material, Vec<Hash32>), String> {
        let (peer, _) = lock(&self.providers)
            .get(&provider)
            .cloned()
            .ok_or("the provider is not on the network")?;
        let req = AuditRequest {
            chain_id: self.cfg.chain_id,
            verifier: self.key.account(),
            provider,
            epoch,
            index,
            issued_ms: now_ms(),
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
        match tokio::time::timeout(PEER_TIMEOUT, exchange).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(AuditResponse::Refused { reason })) => Err(format!("refused: {reason}")),
            Ok(Ok(AuditResponse::Material { material, proof })) => Ok((*material, proof)),
        }
    }

    /// A failed audit: a second verifier re-checks and co-signs; then the verdict goes to
    /// the ledger. Without evidence the material was withheld.
    async fn escalate(
        &self,
        provider: AccountId,
        epoch: u64,
        index: u64,
        root: Hash32,
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
            chain_id: self.cfg.chain_id,
            provider,
            epoch,
            index,
            fault,
        };
        let request = ConfirmRequest {
            verdict: verdict.clone(),
            root,
            material,
        };
        // Other verifiers may not have announced themselves yet, or a stream may drop: try
        // for a while before giving up on this receipt.
        for round in 0..10u64 {
            if self.try_confirm(&request, &verdict).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * (round + 1))).await;
        }
        tracing::warn!(%provider, epoch, index, "no second verifier confirmed the failure");
    }

    /// One round of asking the known verifiers to co-sign; true once the verdict is settled.
    async fn try_confirm(&self, request: &ConfirmRequest, verdict: &Verdict) -> bool {
        let (provider, epoch, index) = (verdict.provider, verdict.epoch, verdict.index);
        let others: Vec<(AccountId, PeerId)> = lock(&self.verifiers)
            .iter()
            .filter(|(a, _)| **a != provider)
            .map(|(a, (p, _))| (*a, *p))
            .collect();
        for (confirmer, peer) in others {
            let signed = Signed::new(request.clone(), &self.key);
            let verdict = verdict.clone();
            let exchange = async {
                let mut s = self
                    .node
                    .control()
                    .open_stream(peer, agora_net::StreamProtocol::new(CONFIRM_PROTOCOL))
                    .await
                    .map_err(|e| e.to_string())?;
                write_frame(&mut s, &signed)
                    .await
                    .map_err(|e| e.to_string())?;
                read_frame::<_, ConfirmResponse>(&mut s)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "closed".to_string())
            };
            let sig = match tokio::time::timeout(PEER_TIMEOUT * 4, exchange).await {
                Ok(Ok(ConfirmResponse::Confirmed { sig })) => sig,
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
            let result = self
                .submit(TxBody::AuditVerdict {
                    verdict: verdict.clone(),
                    confirmer,
                    confirmer_sig: sig,
                })
                .await;
            match result {
                Ok(_) => {
                    tracing::warn!(%provider, epoch, index, %confirmer, "fraud confirmed: provider slashed, payer refunded");
                    return true;
                }
                Err(e) if e.contains("already_judged") => {
                    tracing::info!(%provider, epoch, index, "already judged by another verifier");
                    return true;
                }
                Err(e) => tracing::warn!("submitting the verdict: {e}"),
            }
        }
        false
    }

    /// The second verifier's own check of a failure: `Ok(why it fails)` to co-sign, or
    /// `Err(why not)`.
    async fn recheck(self: &Arc<Self>, c: &ConfirmRequest) -> Result<String, String> {
        let v = &c.verdict;
        if v.chain_id != self.cfg.chain_id || v.provider == self.key.account() {
            return Err("not a verdict this verifier can judge".into());
        }
        let material = match (&v.fault, &c.material) {
            (Fault::Fraud { receipt, proof }, Some(m)) => {
                if *receipt != m.receipt
                    || !merkle::verify(&c.root, &receipt.hash(), v.index, proof)
                    || m.receipt.receipt.provider != v.provider
                {
                    return Err("the evidence does not hold together".into());
                }
                (**m).clone()
            }
            (Fault::Withheld, None) => {
                // Ask the provider itself: if it hands the material over now, the failure
                // is not confirmed.
                match self.fetch_with_retries(v.provider, v.epoch, v.index).await {
                    Err(reason) => return Ok(format!("the material is withheld: {reason}")),
                    Ok((m, proof)) => {
                        if !merkle::verify(&c.root, &m.receipt.hash(), v.index, &proof) {
                            return Ok("the material is not under the root".into());
                        }
                        m
                    }
                }
            }
            _ => return Err("the evidence does not match the fault".into()),
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.judge(&material)).await {
            Ok(Err(reason)) => Ok(reason),
            Ok(Ok(())) => Err("the answer passes my audit".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A second verifier re-checks the evidence itself before co-signing.
    async fn answer_confirm(self: Arc<Self>, mut stream: agora_net::Stream) {
        let Ok(Ok(Some(req))) = tokio::time::timeout(
            PEER_TIMEOUT,
            read_frame::<_, Signed<ConfirmRequest>>(&mut stream),
        )
        .await
        else {
            return;
        };
        let response = if req.verify().is_err() {
            ConfirmResponse::Declined {
                reason: "bad signature".into(),
            }
        } else {
            let requester = req.signer;
            match self.recheck(&req.value).await {
                Ok(reason) => {
                    let v = &req.value.verdict;
                    tracing::warn!(provider = %v.provider, %requester, "confirming the failure: {reason}");
                    ConfirmResponse::Confirmed {
                        sig: v.sign(&self.key),
                    }
                }
                Err(reason) => ConfirmResponse::Declined { reason },
            }
        };
        let _ = write_frame(&mut stream, &response).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
    }
}
