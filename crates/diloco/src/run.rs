//! The per-round protocol as separate steps a transport can drive, and an in-process driver
//! built from them for tests and benchmarks.
//!
//! A round: every island trains from the same global state and sends its commitment; once
//! the commit phase closes, islands reveal their contributions, each checked against its
//! commitment, round and base ([`RoundCollector`]); the round closes at a quorum of reveals or
//! at the deadline, whichever comes first; every island then decodes and screens the closed
//! set ([`screen_round`]), aggregates it ([`aggregate_round`]) and compares the resulting
//! state hash ([`verify_state`]). An island that missed the round fetches the state blob by
//! its hash from a peer ([`GlobalState::from_blob`]) and resyncs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use agora_gguf::TensorType;
use agora_model::Manifest;
use agora_train::data::Corpus;
use agora_train::Trainer;
use serde::{Deserialize, Serialize};

use crate::checks::{self, CheckConfig, Refusal};
use crate::codec::{self, Codec, Delta};
use crate::error::{DilocoError, Result};
use crate::island::{write_atomic, Contribution, Island, IslandConfig};
use crate::outer::{self, GlobalState, OuterConfig, StateHash, Weighted};

/// Collects one round's commitments, then its reveals.
#[derive(Debug)]
pub struct RoundCollector {
    pub round: u64,
    pub base: StateHash,
    /// Reveals that close the round early.
    pub quorum: usize,
    /// The round closes at this time (milliseconds on the caller's clock) at the latest.
    pub deadline_ms: u64,
    commits: BTreeMap<u64, [u8; 32]>,
    reveals: BTreeMap<u64, Contribution>,
    commits_closed: bool,
    closed: bool,
}

impl RoundCollector {
    pub fn new(round: u64, base: StateHash, quorum: usize, deadline_ms: u64) -> Self {
        Self {
            round,
            base,
            quorum: quorum.max(1),
            deadline_ms,
            commits: BTreeMap::new(),
            reveals: BTreeMap::new(),
            commits_closed: false,
            closed: false,
        }
    }

    /// Record `island`'s commitment; only before [`Self::close_commits`], once per island.
    pub fn commit(
        &mut self,
        island: u64,
        commitment: [u8; 32],
    ) -> std::result::Result<(), Refusal> {
        if self.commits_closed || self.closed {
            return Err(Refusal::Late);
        }
        match self.commits.get(&island) {
            Some(c) if *c != commitment => Err(Refusal::CommitmentMismatch),
            _ => {
                self.commits.insert(island, commitment);
                Ok(())
            }
        }
    }

    /// End the commit phase: from now on reveals are taken, and no one can commit to a delta
    /// derived from another island's reveal.
    pub fn close_commits(&mut self) {
        self.commits_closed = true;
    }

    pub fn commitments(&self) -> &BTreeMap<u64, [u8; 32]> {
        &self.commits
    }

    /// Take a reveal: it must follow the commit phase, match its commitment, and be for this
    /// round and base.
    pub fn reveal(&mut self, c: Contribution, now_ms: u64) -> std::result::Result<(), Refusal> {
        if self.is_closed(now_ms) {
            return Err(Refusal::Late);
        }
        if !self.commits_closed {
            return Err(Refusal::Uncommitted);
        }
        if c.round != self.round {
            return Err(Refusal::WrongRound {
                expected: self.round,
                got: c.round,
            });
        }
        if c.base != self.base {
            return Err(Refusal::WrongBase {
                expected: self.base.to_string(),
                got: c.base.to_string(),
            });
        }
        let committed = self.commits.get(&c.island).ok_or(Refusal::Uncommitted)?;
        if *committed != c.commitment || !c.commitment_holds() {
            return Err(Refusal::CommitmentMismatch);
        }
        self.reveals.insert(c.island, c);
        Ok(())
    }

    /// Whether the round is over: closed, quorum reached, or deadline passed.
    pub fn is_closed(&self, now_ms: u64) -> bool {
        self.closed || self.reveals.len() >= self.quorum || now_ms >= self.deadline_ms
    }

    /// Close the round and take its reveals, in island order.
    pub fn close(&mut self) -> Vec<Contribution> {
        self.closed = true;
        std::mem::take(&mut self.reveals).into_values().collect()
    }
}

/// A round's contributions after screening.
#[derive(Debug, Default)]
pub struct Screened {
    /// Accepted contributions with their decoded deltas, in island order.
    pub accepted: Vec<(Contribution, Delta)>,
    pub refused: Vec<(u64, Refusal)>,
}

/// Decode and check a closed round's contributions against `global`: shapes, claimed losses,
/// optionally recomputed losses on `verifier`, then norm and direction. Refusals are logged.
pub fn screen_round(
    global: &GlobalState,
    contributions: Vec<Contribution>,
    cfg: &CheckConfig,
    mut verifier: Option<(&mut Island, &Corpus)>,
) -> Result<Screened> {
    let mut out = Screened::default();
    let mut decoded = Vec::new();
    let mut by_island: BTreeMap<u64, Contribution> = BTreeMap::new();
    for c in contributions {
        if by_island.contains_key(&c.island) {
            out.refused
                .push((c.island, Refusal::Malformed("second contribution".into())));
            continue;
        }
        let refusal = if c.round != global.round {
            Some(Refusal::WrongRound {
                expected: global.round,
                got: c.round,
            })
        } else if !c.commitment_holds() {
            Some(Refusal::CommitmentMismatch)
        } else {
            None
        };
        if let Some(r) = refusal {
            out.refused.push((c.island, r));
            continue;
        }
        let delta = match codec::decode(&c.payload).and_then(|d| global.check_delta(&d).map(|_| d))
        {
            Ok(d) => d,
            Err(e) => {
                out.refused
                    .push((c.island, Refusal::Malformed(e.to_string())));
                continue;
            }
        };
        let refusal = match verifier.as_mut() {
            Some((island, corpus)) => {
                checks::verify_losses(island, corpus, global, &c, &delta, cfg)?
            }
            None => checks::check_claimed_loss(&c, cfg),
        };
        if let Some(r) = refusal {
            out.refused.push((c.island, r));
            continue;
        }
        decoded.push((c.island, delta));
        by_island.insert(c.island, c);
    }
    decoded.sort_by_key(|(island, _)| *island);
    let view: Vec<(u64, &Delta)> = decoded.iter().map(|(i, d)| (*i, d)).collect();
    let statistical = checks::screen(&view, cfg);
    let refused_now: BTreeSet<u64> = statistical.iter().map(|(i, _)| *i).collect();
    out.refused.extend(statistical);
    for (island, delta) in decoded {
        if let Some(c) = by_island.remove(&island) {
            if !refused_now.contains(&island) {
                out.accepted.push((c, delta));
            }
        }
    }
    out.refused.sort_by_key(|(island, _)| *island);
    for (island, reason) in &out.refused {
        tracing::warn!(round = global.round, island, %reason, "contribution refused");
    }
    Ok(out)
}

/// The next global state from the accepted contributions (in any order).
pub fn aggregate_round(
    global: &GlobalState,
    accepted: &[(Contribution, Delta)],
    cfg: &OuterConfig,
) -> Result<GlobalState> {
    let inputs: Vec<Weighted<'_>> = accepted
        .iter()
        .map(|(c, d)| Weighted {
            island: c.island,
            tokens: c.tokens,
            delta: d,
        })
        .collect();
    let mut next = global.clone();
    outer::aggregate(&mut next, &inputs, cfg)?;
    Ok(next)
}

/// Check a state against the hash peers announced.
pub fn verify_state(state: &GlobalState, expected: StateHash) -> Result<()> {
    let actual = state.hash()?;
    if actual != expected {
        return Err(DilocoError::HashMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// An in-process run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub islands: usize,
    /// Inner steps per round (H).
    pub inner_steps: u64,
    pub rounds: u64,
    pub outer: OuterConfig,
    pub codec: Codec,
    pub checks: CheckConfig,
    pub run_seed: u64,
    pub check_batches: u64,
    /// Recompute every contribution's losses on a verifier island (costs forward passes).
    pub verify_losses: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            islands: 4,
            inner_steps: 100,
            rounds: 10,
            outer: OuterConfig::default(),
            codec: Codec::default(),
            checks: CheckConfig::default(),
            run_seed: 1,
            check_batches: 1,
            verify_losses: false,
        }
    }
}

impl RunConfig {
    fn island_config(&self) -> IslandConfig {
        IslandConfig {
            run_seed: self.run_seed,
            inner_steps: self.inner_steps,
            codec: self.codec,
            check_batches: self.check_batches,
        }
    }
}

/// What a round did.
#[derive(Clone, Debug)]
pub struct RoundReport {
    pub round: u64,
    pub accepted: Vec<u64>,
    pub refused: Vec<(u64, Refusal)>,
    pub dropped: Vec<u64>,
    /// Encoded payload bytes of the revealed contributions.
    pub payload_bytes: u64,
    pub mean_loss_before: f64,
    pub mean_loss_after: f64,
    pub hash: StateHash,
    /// The contributions revealed this round (accepted or not), in island order.
    pub contributions: Vec<Contribution>,
}

/// N islands in one process, each with its own view of the global state.
pub struct Driver {
    pub cfg: RunConfig,
    islands: Vec<Island>,
    views: Vec<GlobalState>,
    /// Islands that joined since the last round: they sit the next one out.
    joining: BTreeSet<u64>,
}

#[derive(Serialize, Deserialize)]
struct RunState {
    cfg: RunConfig,
    round: u64,
    hash: String,
}

impl Driver {
    /// A run whose islands wrap the trainers `make_trainer(id)` returns (same model config);
    /// the global state starts from island 0's weights.
    pub fn new(
        cfg: RunConfig,
        mut make_trainer: impl FnMut(u64) -> Result<Trainer>,
    ) -> Result<Self> {
        if cfg.islands == 0 || cfg.inner_steps == 0 {
            return Err(DilocoError::Setting(
                "islands and inner steps must be positive".into(),
            ));
        }
        let mut islands = Vec::with_capacity(cfg.islands);
        for id in 0..cfg.islands as u64 {
            let mut trainer = make_trainer(id)?;
            trainer.settings.steps = cfg.rounds * cfg.inner_steps;
            islands.push(Island::new(id, trainer, cfg.island_config())?);
        }
        let global = GlobalState::from_weights(&islands[0].trainer().weights())?;
        for island in islands.iter_mut() {
            island.apply(&global)?;
        }
        Ok(Self {
            views: vec![global; cfg.islands],
            cfg,
            islands,
            joining: BTreeSet::new(),
        })
    }

    /// The global state (island 0's view; all views agree after every round).
    pub fn global(&self) -> &GlobalState {
        &self.views[0]
    }

    pub fn islands(&self) -> &[Island] {
        &self.islands
    }

    pub fn view(&self, island: usize) -> Option<&GlobalState> {
        self.views.get(island)
    }

    /// One round; the islands in `dropped` neither train nor aggregate, and resync after it.
    pub fn run_round(&mut self, corpus: &Corpus, dropped: &BTreeSet<u64>) -> Result<RoundReport> {
        let joining = std::mem::take(&mut self.joining);
        let dropped: &BTreeSet<u64> = &dropped.union(&joining).copied().collect();
        let global = self.views[0].clone();
        let base = global.hash()?;
        let round = global.round;
        let live: Vec<usize> = (0..self.islands.len())
            .filter(|&i| !dropped.contains(&(i as u64)))
            .collect();
        let mut collector = RoundCollector::new(round, base, live.len(), u64::MAX);
        if let Some(&i) = live.iter().find(|&&i| self.views[i].round != round) {
            return Err(DilocoError::Protocol(format!("island {i} is not in sync")));
        }
        let contributions = self.train_live(corpus, &live)?;
        for c in &contributions {
            collector
                .commit(c.island, c.commitment)
                .map_err(|r| DilocoError::Protocol(r.to_string()))?;
        }
        collector.close_commits();
        let mut payload_bytes = 0;
        let mut refused = Vec::new();
        let (mut before, mut after) = (0.0, 0.0);
        let revealed = contributions.clone();
        for c in contributions {
            payload_bytes += c.payload.len() as u64;
            before += c.loss_before;
            after += c.loss_after;
            let island = c.island;
            if let Err(r) = collector.reveal(c, 0) {
                refused.push((island, r));
            }
        }
        let closed = collector.close();
        let verifier = if self.cfg.verify_losses {
            live.first().map(|&i| (&mut self.islands[i], corpus))
        } else {
            None
        };
        let screened = screen_round(&global, closed, &self.cfg.checks, verifier)?;
        refused.extend(screened.refused);
        // Every live island aggregates on its own view, the set in a different arrival order.
        let mut hash = None;
        for (k, &i) in live.iter().enumerate() {
            let mut set: Vec<(Contribution, Delta)> = screened.accepted.clone();
            let len = set.len().max(1);
            set.rotate_left(k % len);
            let next = aggregate_round(&self.views[i], &set, &self.cfg.outer)?;
            let h = next.hash()?;
            match hash {
                None => hash = Some(h),
                Some(first) => verify_state(&next, first)?,
            }
            self.views[i] = next;
        }
        let (hash, blob) = match live.first() {
            Some(&i) => (hash.unwrap_or(base), self.views[i].to_bytes()?),
            None => {
                // Nobody live: the round still advances by momentum alone.
                let next = aggregate_round(&global, &[], &self.cfg.outer)?;
                (next.hash()?, next.to_bytes()?)
            }
        };
        // Dropped islands fetch the blob by its hash from a peer and resync.
        for i in 0..self.islands.len() {
            if dropped.contains(&(i as u64)) || live.is_empty() {
                self.views[i] = GlobalState::from_blob(hash, &blob)?;
            }
            self.islands[i].apply(&self.views[i])?;
        }
        let n = live.len().max(1) as f64;
        Ok(RoundReport {
            round,
            accepted: screened.accepted.iter().map(|(c, _)| c.island).collect(),
            refused,
            dropped: dropped.iter().copied().collect(),
            payload_bytes,
            mean_loss_before: before / n,
            mean_loss_after: after / n,
            hash,
            contributions: revealed,
        })
    }

    /// Train the `live` islands' rounds side by side, one thread each (islands are
    /// independent until they reveal); contributions come back in island order.
    fn train_live(&mut self, corpus: &Corpus, live: &[usize]) -> Result<Vec<Contribution>> {
        let views = &self.views;
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .islands
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| live.contains(i))
                .map(|(i, island)| scope.spawn(move || island.train_round(corpus, &views[i])))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(DilocoError::Protocol(
                            "an island's training thread panicked".into(),
                        ))
                    })
                })
                .collect()
        })
    }

    /// Run until `cfg.rounds`, dropping `drop(round)` each round, checkpointing into
    /// `checkpoint_dir` after each round if given.
    pub fn run(
        &mut self,
        corpus: &Corpus,
        mut drop: impl FnMut(u64) -> BTreeSet<u64>,
        checkpoint_dir: Option<&Path>,
        mut report: impl FnMut(&RoundReport),
    ) -> Result<()> {
        while self.global().round < self.cfg.rounds {
            let dropped = drop(self.global().round);
            let r = self.run_round(corpus, &dropped)?;
            report(&r);
            if let Some(dir) = checkpoint_dir {
                self.checkpoint(dir)?;
            }
        }
        Ok(())
    }

    /// Write `dir/checkpoint` (global state blob, run state, every island's inner state)
    /// through a temporary directory renamed into place.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        let final_dir = dir.join("checkpoint");
        let tmp = dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| DilocoError::io(&tmp, e))?;
        let global = self.global();
        write_atomic(&tmp.join("global.state"), &global.to_bytes()?)?;
        for island in &self.islands {
            island.save(&tmp.join(format!("island-{}", island.id)))?;
        }
        let state = RunState {
            cfg: self.cfg.clone(),
            round: global.round,
            hash: global.hash()?.to_string(),
        };
        let body = serde_json::to_vec_pretty(&state)
            .map_err(|e| DilocoError::Setting(format!("run state: {e}")))?;
        write_atomic(&tmp.join("run.json"), &body)?;
        let old = dir.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if final_dir.exists() {
            std::fs::rename(&final_dir, &old).map_err(|e| DilocoError::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| DilocoError::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// A new island joins between rounds: it fetches the global state blob from a peer by
    /// its hash and sits out the next round (it contributes nothing until it has trained a
    /// whole round from the current state). Returns its id.
    pub fn join(&mut self, mut trainer: Trainer) -> Result<u64> {
        let hash = self.views[0].hash()?;
        let blob = self.views[0].to_bytes()?;
        let global = GlobalState::from_blob(hash, &blob)?;
        let id = self.islands.len() as u64;
        trainer.settings.steps = self.cfg.rounds * self.cfg.inner_steps;
        let mut island = Island::new(id, trainer, self.cfg.island_config())?;
        island.apply(&global)?;
        self.islands.push(island);
        self.views.push(global);
        self.joining.insert(id);
        self.cfg.islands = self.islands.len();
        Ok(id)
    }

    /// Continue from `dir/checkpoint`; the global state must match its recorded hash.
    pub fn resume(dir: &Path) -> Result<Self> {
        let dir = dir.join("checkpoint");
        let path = dir.join("run.json");
        let body = std::fs::read(&path).map_err(|e| DilocoError::io(&path, e))?;
        let state: RunState = serde_json::from_slice(&body)
            .map_err(|e| DilocoError::malformed("run state", e.to_string()))?;
        let path = dir.join("global.state");
        let bytes = std::fs::read(&path).map_err(|e| DilocoError::io(&path, e))?;
        let global = GlobalState::from_bytes(&bytes)?;
        let hash = global.hash()?;
        if hash.to_string() != state.hash || global.round != state.round {
            return Err(DilocoError::HashMismatch {
                expected: state.hash,
                actual: hash.to_string(),
            });
        }
        let mut islands = Vec::with_capacity(state.cfg.islands);
        for id in 0..state.cfg.islands as u64 {
            let mut island = Island::restore(
                id,
                &dir.join(format!("island-{id}")),
                state.cfg.island_config(),
            )?;
            island.apply(&global)?;
            islands.push(island);
        }
        Ok(Self {
            views: vec![global; islands.len()],
            cfg: state.cfg,
            islands,
            joining: BTreeSet::new(),
        })
    }

    /// Export the global model (Hugging Face layout plus GGUF files) through the trainer's
    /// export, so `agora provider` can serve it.
    pub fn export(
        &mut self,
        dir: &Path,
        name: &str,
        chat_template: Option<&str>,
        gguf_types: &[TensorType],
    ) -> Result<Manifest> {
        let global = self.views[0].clone();
        self.islands[0].apply(&global)?;
        Ok(self.islands[0]
            .trainer()
            .export(dir, name, chat_template, gguf_types)?)
    }
}
