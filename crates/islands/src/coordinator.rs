//! The coordinator: orders rounds, collects signed commitments then reveals, closes each
//! round at a quorum or its deadline, aggregates, checkpoints, and serves the state and the
//! accepted contributions by hash.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_core::AccountId;
use agora_diloco::run::{aggregate_round, screen_round};
use agora_diloco::{Contribution, GlobalState, Island, RoundCollector, StateHash};
use agora_net::protocol::{read_frame_max, write_frame_max};
use agora_net::{NetConfig, Node, StreamProtocol};
use agora_train::data::{split_holdout, tokenize, Corpus};
use agora_train::Trainer;
use futures::StreamExt;
use serde::Serialize;

use crate::protocol::{Request, Response, RoundStatus, SignedRequest, MAX_MESSAGE_BYTES, PROTOCOL};
use crate::{now_ms, IslandsError, RunSpec};

/// How the coordinator runs.
pub struct CoordinatorConfig {
    /// The run.
    pub spec: RunSpec,
    /// The training text (its hash must match the spec).
    pub text: String,
    /// Checkpoints, the round log, the loss curve and the exported model go here.
    pub run_dir: PathBuf,
    /// Continue from the checkpoint in `run_dir`.
    pub resume: bool,
}

/// One island the coordinator knows.
#[derive(Debug, Clone)]
struct Member {
    key: AccountId,
    /// Eligible to contribute to rounds that start after this time (a joiner or a resynced
    /// island sits out the round in progress); `u64::MAX` while it is dropped.
    eligible_from_ms: u64,
}

/// What was decided in a closed round.
#[derive(Debug, Clone)]
struct Closed {
    accepted: Vec<(u64, [u8; 32])>,
    next: [u8; 32],
}

/// One line of `rounds.jsonl`, and a point of the loss curve.
#[derive(Debug, Clone, Serialize)]
pub struct RoundLog {
    /// The round that closed.
    pub round: u64,
    /// Islands whose contributions were accepted.
    pub accepted: Vec<u64>,
    /// Islands refused, with the reason.
    pub refused: Vec<(u64, String)>,
    /// Islands that committed but did not reveal in time, or did not commit.
    pub missing: Vec<u64>,
    /// Mean training loss of the accepted islands' check batches at the round's start.
    pub loss_before: Option<f64>,
    /// The same after their own deltas.
    pub loss_after: Option<f64>,
    /// Held-out bits per byte of the new global state.
    pub heldout_bits_per_byte: f64,
    /// Encoded delta bytes accepted this round.
    pub delta_bytes: u64,
    /// The new state's hash.
    pub hash: String,
}

struct State {
    global: GlobalState,
    blob: Arc<Vec<u8>>,
    hash: [u8; 32],
    collector: RoundCollector,
    /// When the current round's commit phase began (`None` until enough islands joined).
    started_ms: Option<u64>,
    revealing: bool,
    closing: bool,
    members: BTreeMap<u64, Member>,
    history: BTreeMap<u64, Closed>,
    /// Contributions of recent rounds by commitment.
    blobs: HashMap<[u8; 32], (u64, Arc<Vec<u8>>)>,
    finished: bool,
}

/// A running coordinator. Cloning shares it.
#[derive(Clone)]
pub struct Coordinator {
    spec: Arc<RunSpec>,
    run: [u8; 32],
    run_dir: PathBuf,
    corpus: Arc<Corpus>,
    state: Arc<Mutex<State>>,
    /// Evaluates and exports the global state (it never trains).
    scorer: Arc<Mutex<Island>>,
    log: Arc<Mutex<Vec<RoundLog>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IslandsError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The trainer every party builds from a spec (the weights are replaced by the global ones).
pub fn trainer_for(spec: &RunSpec) -> Result<Trainer, IslandsError> {
    let tokenizer = agora_model::TextTokenizer::from_json(spec.tokenizer_json.as_bytes())?;
    Ok(Trainer::new(
        spec.model.clone(),
        spec.settings.clone(),
        tokenizer,
    )?)
}

/// The corpus every party cuts from the same text.
pub fn corpus_for(spec: &RunSpec, text: &str) -> Result<Corpus, IslandsError> {
    if crate::data_hash(text) != spec.data_hash {
        return Err(IslandsError::Spec(
            "the training text differs from the run's (its blake3 does not match)".into(),
        ));
    }
    let tokenizer = agora_model::TextTokenizer::from_json(spec.tokenizer_json.as_bytes())?;
    let (train, val) = split_holdout(text, spec.holdout)?;
    Ok(Corpus {
        train: tokenize(&tokenizer, train)?,
        val: tokenize(&tokenizer, val)?,
    })
}

const CHECKPOINT: &str = "global-state.bin";
/// The final model's score on every held-out token, written by [`Coordinator::export`].
pub const FINAL_EVAL: &str = "final-eval.json";
/// Held-out tokens evaluated after every round.
const EVAL_TOKENS: usize = 8_192;

impl Coordinator {
    /// Sets up the run (or resumes it from `run_dir`).
    pub fn new(cfg: CoordinatorConfig) -> Result<Coordinator, IslandsError> {
        let spec = cfg.spec;
        let run = spec.id()?;
        std::fs::create_dir_all(&cfg.run_dir)?;
        let spec_path = cfg.run_dir.join("run.json");
        let corpus = corpus_for(&spec, &cfg.text)?;
        let mut scorer = Island::new(u64::MAX, trainer_for(&spec)?, spec.island.clone())?;
        let global = if cfg.resume {
            let saved: RunSpec = serde_json::from_slice(&std::fs::read(&spec_path)?)
                .map_err(|e| IslandsError::Spec(e.to_string()))?;
            if saved.id()? != run {
                return Err(IslandsError::Spec(
                    "--resume with settings other than the run's".into(),
                ));
            }
            let bytes = std::fs::read(cfg.run_dir.join(CHECKPOINT))?;
            GlobalState::from_bytes(&bytes)?
        } else {
            if cfg.run_dir.join(CHECKPOINT).exists() {
                return Err(IslandsError::Spec(format!(
                    "{} already holds a run: pass --resume or another directory",
                    cfg.run_dir.display()
                )));
            }
            let json =
                serde_json::to_vec_pretty(&spec).map_err(|e| IslandsError::Spec(e.to_string()))?;
            write_atomic(&spec_path, &json)?;
            GlobalState::from_weights(&scorer.trainer().weights())?
        };
        scorer.apply(&global)?;
        let blob = global.to_bytes()?;
        let hash = *blake3::hash(&blob).as_bytes();
        if !cfg.resume {
            write_atomic(&cfg.run_dir.join(CHECKPOINT), &blob)?;
        }
        tracing::info!(run = %hex::encode(run), round = global.round, state = %hex::encode(hash), "run ready");
        let collector = RoundCollector::new(global.round, StateHash(hash), usize::MAX, u64::MAX);
        let finished = global.round >= spec.rounds;
        Ok(Coordinator {
            run,
            run_dir: cfg.run_dir,
            corpus: Arc::new(corpus),
            state: Arc::new(Mutex::new(State {
                global,
                blob: Arc::new(blob),
                hash,
                collector,
                started_ms: None,
                revealing: false,
                closing: false,
                members: BTreeMap::new(),
                history: BTreeMap::new(),
                blobs: HashMap::new(),
                finished,
            })),
            scorer: Arc::new(Mutex::new(scorer)),
            log: Arc::new(Mutex::new(Vec::new())),
            spec: Arc::new(spec),
        })
    }

    /// The run id.
    pub fn run_id(&self) -> [u8; 32] {
        self.run
    }

    /// The spec.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Whether every round is done.
    pub fn finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// The current state's hash and rounds completed.
    pub fn current(&self) -> ([u8; 32], u64) {
        let s = lock(&self.state);
        (s.hash, s.global.round)
    }

    /// Answers one request.
    pub fn handle(&self, req: &SignedRequest) -> Response {
        let refuse = |reason: String| Response::Refused { reason };
        if req.run != self.run {
            return refuse("another run".into());
        }
        if !req.verify() {
            return refuse("bad signature".into());
        }
        let now = now_ms();
        let mut s = lock(&self.state);
        let member_ok =
            |s: &State, island: u64| s.members.get(&island).is_some_and(|m| m.key == req.signer);
        match &req.request {
            Request::Join { island } => {
                if let Some(m) = s.members.get(island) {
                    if m.key != req.signer {
                        return refuse(format!("island {island} is another key's"));
                    }
                }
                let entry = s.members.entry(*island).or_insert(Member {
                    key: req.signer,
                    eligible_from_ms: now,
                });
                entry.eligible_from_ms = entry.eligible_from_ms.min(now);
                tracing::info!(island, key = %req.signer, "island joined");
                match serde_json::to_string(&*self.spec) {
                    Ok(json) => Response::Spec { json },
                    Err(e) => refuse(e.to_string()),
                }
            }
            Request::State { have } => {
                // Any signer may read the state (a joiner fetches it before it is a member).
                let current = s.hash;
                if let Some(m) = s
                    .members
                    .values_mut()
                    .find(|m| m.key == req.signer && m.eligible_from_ms == u64::MAX)
                {
                    // A dropped island is back: it sits out the round in progress.
                    m.eligible_from_ms = now;
                }
                Response::State {
                    round: s.global.round,
                    hash: current,
                    blob: if *have == Some(current) {
                        Vec::new()
                    } else {
                        s.blob.to_vec()
                    },
                    finished: s.finished,
                }
            }
            Request::Commit {
                island,
                round,
                base,
                commitment,
            } => {
                if !member_ok(&s, *island) {
                    return refuse("join first, with the island's key".into());
                }
                if s.finished || *round != s.global.round || *base != s.hash || s.closing {
                    return refuse(format!(
                        "round {round} from {} is not open: round {} from {} is",
                        hex::encode(base),
                        s.global.round,
                        hex::encode(s.hash)
                    ));
                }
                let eligible = s
                    .members
                    .get(island)
                    .map_or(u64::MAX, |m| m.eligible_from_ms);
                if s.started_ms.is_some_and(|t| eligible > t) {
                    return refuse("joined during this round: contribute from the next one".into());
                }
                match s.collector.commit(*island, *commitment) {
                    Ok(()) => Response::Ack,
                    Err(r) => refuse(r.to_string()),
                }
            }
            Request::Reveal {
                island,
                round,
                contribution,
            } => {
                if !member_ok(&s, *island) {
                    return refuse("join first, with the island's key".into());
                }
                let c = match Contribution::from_bytes(contribution) {
                    Ok(c) => c,
                    Err(e) => return refuse(e.to_string()),
                };
                if c.island != *island || c.round != *round {
                    return refuse("the contribution names another island or round".into());
                }
                let commitment = c.commitment;
                match s.collector.reveal(c, now) {
                    Ok(()) => {
                        s.blobs
                            .insert(commitment, (*round, Arc::new(contribution.clone())));
                        Response::Ack
                    }
                    Err(r) => refuse(r.to_string()),
                }
            }
            Request::Status { round } => {
                if let Some(c) = s.history.get(round) {
                    Response::Status(RoundStatus::Closed {
                        accepted: c.accepted.clone(),
                        next: c.next,
                    })
                } else if *round == s.global.round && !s.finished {
                    Response::Status(if s.revealing {
                        RoundStatus::Revealing {
                            committed: s.collector.commitments().keys().copied().collect(),
                        }
                    } else {
                        RoundStatus::Committing
                    })
                } else {
                    Response::Status(RoundStatus::Gone {
                        current: s.global.round,
                        finished: s.finished,
                    })
                }
            }
            Request::Blob { commitment } => match s.blobs.get(commitment) {
                Some((_, bytes)) => Response::Blob(bytes.to_vec()),
                None => refuse("no such contribution (too old, or never revealed)".into()),
            },
        }
    }

    /// Moves the round along: starts it, closes commitments, closes it. Called on a timer.
    pub async fn tick(&self) -> Result<(), IslandsError> {
        let now = now_ms();
        let phase = self.spec.phase_ms;
        let to_close = {
            let mut s = lock(&self.state);
            if s.finished || s.closing {
                return Ok(());
            }
            match s.started_ms {
                None => {
                    if s.members.len() as u64 >= self.spec.islands {
                        s.started_ms = Some(now);
                        tracing::info!(
                            round = s.global.round,
                            islands = s.members.len(),
                            "round started"
                        );
                    }
                    return Ok(());
                }
                Some(started) if !s.revealing => {
                    let eligible: Vec<u64> = s
                        .members
                        .iter()
                        .filter(|(_, m)| m.eligible_from_ms <= started)
                        .map(|(i, _)| *i)
                        .collect();
                    let committed = s.collector.commitments();
                    let all_in =
                        !eligible.is_empty() && eligible.iter().all(|i| committed.contains_key(i));
                    let late = now >= started.saturating_add(phase);
                    if !committed.is_empty() && (all_in || late) {
                        let n = committed.len();
                        s.collector.close_commits();
                        s.collector.quorum = n;
                        s.collector.deadline_ms = now.saturating_add(phase);
                        s.revealing = true;
                        tracing::info!(
                            round = s.global.round,
                            committed = n,
                            "commitments closed; revealing"
                        );
                    }
                    return Ok(());
                }
                Some(_) => {
                    if !s.collector.is_closed(now) {
                        return Ok(());
                    }
                    s.closing = true;
                    let contributions = s.collector.close();
                    let missing: Vec<u64> = s
                        .members
                        .keys()
                        .filter(|i| !contributions.iter().any(|c| c.island == **i))
                        .copied()
                        .collect();
                    (s.global.clone(), contributions, missing)
                }
            }
        };
        let (global, contributions, missing) = to_close;
        let me = self.clone();
        let result =
            tokio::task::spawn_blocking(move || me.close_round(global, contributions, missing))
                .await
                .map_err(|e| IslandsError::Coordinator(e.to_string()))?;
        if let Err(e) = &result {
            tracing::error!("closing the round: {e}");
            lock(&self.state).closing = false;
        }
        result
    }

    /// Screens, aggregates, checkpoints and logs a closed round (blocking work).
    fn close_round(
        &self,
        global: GlobalState,
        contributions: Vec<Contribution>,
        missing: Vec<u64>,
    ) -> Result<(), IslandsError> {
        let round = global.round;
        let screened = screen_round(&global, contributions, &self.spec.checks, None)?;
        let next = aggregate_round(&global, &screened.accepted, &self.spec.outer)?;
        let blob = next.to_bytes()?;
        let hash = *blake3::hash(&blob).as_bytes();
        write_atomic(&self.run_dir.join(CHECKPOINT), &blob)?;
        let eval = {
            let mut scorer = lock(&self.scorer);
            scorer.apply(&next)?;
            scorer.trainer().evaluate(&self.corpus, EVAL_TOKENS)?
        };
        let n = screened.accepted.len().max(1) as f64;
        let mean = |f: fn(&Contribution) -> f64| {
            (!screened.accepted.is_empty())
                .then(|| screened.accepted.iter().map(|(c, _)| f(c)).sum::<f64>() / n)
        };
        let entry = RoundLog {
            round,
            accepted: screened.accepted.iter().map(|(c, _)| c.island).collect(),
            refused: screened
                .refused
                .iter()
                .map(|(i, r)| (*i, r.to_string()))
                .collect(),
            missing,
            loss_before: mean(|c| c.loss_before),
            loss_after: mean(|c| c.loss_after),
            heldout_bits_per_byte: eval.bits_per_byte,
            delta_bytes: screened
                .accepted
                .iter()
                .map(|(c, _)| c.payload.len() as u64)
                .sum(),
            hash: hex::encode(hash),
        };
        tracing::info!(
            round,
            accepted = ?entry.accepted,
            refused = ?entry.refused,
            missing = ?entry.missing,
            loss = entry.loss_before.map(|l| format!("{l:.4}")).unwrap_or_default(),
            heldout_bpb = format!("{:.4}", entry.heldout_bits_per_byte),
            state = %entry.hash,
            "round closed"
        );
        agora_metrics::diloco().round_closed(
            round + 1,
            [
                entry.accepted.len(),
                entry.refused.len(),
                entry.missing.len(),
            ],
            entry.delta_bytes,
            entry.heldout_bits_per_byte,
        );
        let line = serde_json::to_string(&entry).map_err(|e| IslandsError::Spec(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join("rounds.jsonl"))?;
        writeln!(f, "{line}")?;
        let points = {
            let mut log = lock(&self.log);
            log.push(entry);
            log.clone()
        };
        crate::curve::write_svg(&self.run_dir.join("loss.svg"), &points)?;

        let accepted: Vec<(u64, [u8; 32])> = screened
            .accepted
            .iter()
            .map(|(c, _)| (c.island, c.commitment))
            .collect();
        let mut s = lock(&self.state);
        let started = s.started_ms.unwrap_or(0);
        let committed: Vec<u64> = s.collector.commitments().keys().copied().collect();
        // Islands that were expected and did not even commit are dropped until they fetch
        // the state again, so later rounds do not wait for them.
        for (island, m) in s.members.iter_mut() {
            if m.eligible_from_ms <= started && !committed.contains(island) {
                m.eligible_from_ms = u64::MAX;
            }
        }
        s.history.insert(
            round,
            Closed {
                accepted,
                next: hash,
            },
        );
        s.blobs.retain(|_, (r, _)| *r + 1 >= round);
        s.global = next;
        s.blob = Arc::new(blob);
        s.hash = hash;
        s.collector = RoundCollector::new(s.global.round, StateHash(hash), usize::MAX, u64::MAX);
        s.revealing = false;
        s.closing = false;
        s.started_ms = Some(now_ms());
        if s.global.round >= self.spec.rounds {
            s.finished = true;
            tracing::info!(rounds = s.global.round, state = %hex::encode(hash), "run finished");
        }
        Ok(())
    }

    /// Exports the global model (Hugging Face layout and a Q8_0 GGUF) into `run_dir/model`,
    /// and scores it on every held-out token into `run_dir/final-eval.json` (the per-round
    /// figures use the first 8,192 only), as single-machine `agora train` does at its end.
    pub fn export(&self) -> Result<(PathBuf, agora_train::Eval), IslandsError> {
        let dir = self.run_dir.join("model");
        let global = lock(&self.state).global.clone();
        let mut scorer = lock(&self.scorer);
        scorer.apply(&global)?;
        let manifest = scorer.trainer().export(
            &dir,
            &self.spec.name,
            Some(agora_model::chat::CHATML_TEMPLATE),
            &[agora_gguf::TensorType::Q8_0],
        )?;
        let eval = scorer.trainer().evaluate(&self.corpus, usize::MAX)?;
        let summary = serde_json::json!({
            "model_id": manifest.model_id().to_string(),
            "rounds": global.round,
            "heldout_bits_per_byte": eval.bits_per_byte,
            "heldout_loss": eval.loss,
            "heldout_tokens": eval.tokens,
            "heldout_bytes": eval.bytes,
        });
        let body =
            serde_json::to_vec_pretty(&summary).map_err(|e| IslandsError::Spec(e.to_string()))?;
        write_atomic(&self.run_dir.join(FINAL_EVAL), &body)?;
        tracing::info!(
            dir = %dir.display(),
            model = %manifest.model_id(),
            heldout_bpb = format!("{:.4}", eval.bits_per_byte),
            heldout_tokens = eval.tokens,
            "exported"
        );
        Ok((dir, eval))
    }

    /// Serves requests over libp2p and moves rounds along until the run is finished and
    /// `linger` has passed (so islands can fetch the final state), or `shutdown` resolves.
    pub async fn serve(
        &self,
        node: &Node,
        linger: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), IslandsError> {
        let mut incoming = node
            .control()
            .accept(StreamProtocol::new(PROTOCOL))
            .map_err(|e| IslandsError::Coordinator(e.to_string()))?;
        let me = self.clone();
        let accept = tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(Ok(Some(req))) = tokio::time::timeout(
                        Duration::from_secs(60),
                        read_frame_max::<_, SignedRequest>(&mut stream, MAX_MESSAGE_BYTES),
                    )
                    .await
                    else {
                        return;
                    };
                    let response = me.handle(&req);
                    let _ = write_frame_max(&mut stream, &response, MAX_MESSAGE_BYTES).await;
                    let _ = futures::AsyncWriteExt::close(&mut stream).await;
                });
            }
        });
        tokio::pin!(shutdown);
        let mut finished_at = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    self.tick().await?;
                    if self.finished() {
                        let t = *finished_at.get_or_insert_with(tokio::time::Instant::now);
                        if t.elapsed() >= linger {
                            break;
                        }
                    }
                }
            }
        }
        accept.abort();
        Ok(())
    }
}

/// Starts the coordinator's libp2p node.
pub async fn start_node(net: NetConfig) -> Result<Node, IslandsError> {
    let (node, _gossip) = Node::start(net).await?;
    Ok(node)
}
