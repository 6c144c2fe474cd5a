//! One island: a local copy of the model with its inner AdamW state and error-feedback
//! residual. A round starts from the global parameters, takes `H` inner steps on the island's
//! seeded batches and ends in a [`Contribution`]: the encoded pseudo-gradient, its commitment,
//! and the loss on the island's own first batches before and after the (decoded) delta, which
//! any peer holding the global state can recompute.
//!
//! The inner optimizer state persists across rounds (as in DiLoCo); an island that missed a
//! round keeps it and only resyncs its parameters. The inner learning rate follows the global
//! inner step `round·H + step`, so islands that skipped rounds stay on the same schedule.

use std::io::Write;
use std::path::{Path, PathBuf};

use agora_train::data::Corpus;
use agora_train::Trainer;
use borsh::{BorshDeserialize, BorshSerialize};
use candle_core::Tensor;

use crate::codec::{self, Codec, Delta, ErrorFeedback};
use crate::data::{self, BatchKey};
use crate::error::{DilocoError, Result};
use crate::outer::{GlobalState, StateHash};

/// What an island contributes per round.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IslandConfig {
    pub run_seed: u64,
    /// Inner steps per round (H).
    pub inner_steps: u64,
    pub codec: Codec,
    /// Batches (the round's first ones) on which the before/after losses are measured.
    pub check_batches: u64,
}

impl Default for IslandConfig {
    fn default() -> Self {
        Self {
            run_seed: 1,
            inner_steps: 100,
            codec: Codec::default(),
            check_batches: 1,
        }
    }
}

/// An island's round result, as sent to peers (borsh): first its `commitment` alone, then the
/// whole contribution.
#[derive(Clone, Debug, PartialEq, BorshSerialize, BorshDeserialize)]
pub struct Contribution {
    pub island: u64,
    /// The round trained (the global state's `round` it started from).
    pub round: u64,
    /// Hash of the global state it started from.
    pub base: StateHash,
    /// Training tokens consumed: the aggregation weight.
    pub tokens: u64,
    /// The encoded pseudo-gradient ([`codec`] wire format).
    pub payload: Vec<u8>,
    /// blake3 of `payload`.
    pub commitment: [u8; 32],
    /// Mean loss of the island's check batches at the global parameters.
    pub loss_before: f64,
    /// The same at `global − decoded delta`.
    pub loss_after: f64,
}

impl Contribution {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        borsh::to_vec(self).map_err(|e| DilocoError::malformed("contribution", e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        borsh::from_slice(bytes).map_err(|e| DilocoError::malformed("contribution", e.to_string()))
    }

    /// Whether the payload hashes to the commitment.
    pub fn commitment_holds(&self) -> bool {
        codec::commitment(&self.payload) == self.commitment
    }
}

pub struct Island {
    pub id: u64,
    pub cfg: IslandConfig,
    trainer: Trainer,
    feedback: ErrorFeedback,
    synced: Option<StateHash>,
}

impl Island {
    /// An island around a trainer (its settings give the batch size, sequence length and
    /// inner schedule; its weights are replaced by the global ones before training).
    pub fn new(id: u64, trainer: Trainer, cfg: IslandConfig) -> Result<Self> {
        if cfg.inner_steps == 0 {
            return Err(DilocoError::Setting("inner steps must be positive".into()));
        }
        Ok(Self {
            id,
            cfg,
            trainer,
            feedback: ErrorFeedback::default(),
            synced: None,
        })
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn feedback(&self) -> &ErrorFeedback {
        &self.feedback
    }

    /// Hash of the global state last applied.
    pub fn synced(&self) -> Option<StateHash> {
        self.synced
    }

    /// Tokens per round.
    pub fn tokens_per_round(&self) -> u64 {
        self.cfg.inner_steps
            * (self.trainer.settings.batch_size * self.trainer.settings.seq_len) as u64
    }

    /// Set the local parameters to `params` (by name; all must match).
    fn load_params<'a>(
        &self,
        params: impl Iterator<Item = (&'a String, &'a [f32], &'a [usize])>,
    ) -> Result<()> {
        let vars = self.trainer.vars();
        let mut seen = 0;
        for (name, values, shape) in params {
            let var = vars.get(name).ok_or_else(|| DilocoError::Shape {
                name: name.clone(),
                reason: "not a parameter of the island's model".into(),
            })?;
            if var.dims() != shape {
                return Err(DilocoError::Shape {
                    name: name.clone(),
                    reason: format!("shape {shape:?}, the model has {:?}", var.dims()),
                });
            }
            var.set(&Tensor::from_slice(values, shape, var.device())?)?;
            seen += 1;
        }
        if seen != vars.len() {
            return Err(DilocoError::Shape {
                name: "*".into(),
                reason: format!("{seen} tensors for a model of {}", vars.len()),
            });
        }
        Ok(())
    }

    /// Resync: take the global parameters (the inner optimizer and residual stay).
    pub fn apply(&mut self, global: &GlobalState) -> Result<()> {
        self.load_params(
            global
                .tensors
                .iter()
                .map(|(k, p)| (k, p.values.as_slice(), p.shape.as_slice())),
        )?;
        self.synced = Some(global.hash()?);
        Ok(())
    }

    fn local_params(&self) -> Result<Delta> {
        self.trainer
            .vars()
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_tensor()
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                ))
            })
            .collect()
    }

    fn key(&self, round: u64, island: u64, step: u64) -> BatchKey {
        BatchKey {
            run_seed: self.cfg.run_seed,
            round,
            island,
            step,
        }
    }

    /// Mean loss of `island`'s check batches of `round` at the current parameters.
    fn check_loss(&self, corpus: &Corpus, round: u64, island: u64) -> Result<f64> {
        let s = &self.trainer.settings;
        let n = self.cfg.check_batches.max(1);
        let mut sum = 0.0;
        for step in 0..n {
            let (x, y) = data::batch(
                corpus,
                self.key(round, island, step),
                s.batch_size,
                s.seq_len,
                self.trainer.model().device(),
            )?;
            sum += self.trainer.loss(&x, &y)?.to_scalar::<f32>()? as f64;
        }
        Ok(sum / n as f64)
    }

    /// The losses of `island`'s check batches of round `global.round`, at `global` and at
    /// `global − delta`: what the island claims, recomputed (by any island of the same model
    /// and settings). Leaves this island's parameters at `global`.
    pub fn check_losses(
        &mut self,
        corpus: &Corpus,
        global: &GlobalState,
        island: u64,
        delta: &Delta,
    ) -> Result<(f64, f64)> {
        let after = global.minus(delta)?;
        self.load_params(
            global
                .tensors
                .iter()
                .map(|(k, p)| (k, after[k].as_slice(), p.shape.as_slice())),
        )?;
        let loss_after = self.check_loss(corpus, global.round, island)?;
        self.apply(global)?;
        let loss_before = self.check_loss(corpus, global.round, island)?;
        Ok((loss_before, loss_after))
    }

    /// One round: `H` inner steps from `global`, then the encoded pseudo-gradient (with error
    /// feedback) and the before/after losses. Leaves the parameters at `global`.
    pub fn train_round(&mut self, corpus: &Corpus, global: &GlobalState) -> Result<Contribution> {
        let round = global.round;
        self.apply(global)?;
        let base = self
            .synced
            .ok_or_else(|| DilocoError::Protocol("no base".into()))?;
        let (batch, seq) = (
            self.trainer.settings.batch_size,
            self.trainer.settings.seq_len,
        );
        let device = self.trainer.model().device().clone();
        for step in 0..self.cfg.inner_steps {
            let (x, y) = data::batch(corpus, self.key(round, self.id, step), batch, seq, &device)?;
            let lr = self
                .trainer
                .settings
                .lr_at(round * self.cfg.inner_steps + step);
            self.trainer.train_step_on(&x, &y, lr)?;
        }
        let local = self.local_params()?;
        // Global minus local in f64: exact for f32 operands of similar magnitude.
        let delta: Delta = global
            .tensors
            .iter()
            .map(|(k, p)| {
                let l = local.get(k).ok_or_else(|| DilocoError::Shape {
                    name: k.clone(),
                    reason: "missing from the island's model".into(),
                })?;
                Ok((
                    k.clone(),
                    p.values
                        .iter()
                        .zip(l)
                        .map(|(&g, &l)| g as f64 - l)
                        .collect(),
                ))
            })
            .collect::<Result<_>>()?;
        let payload = self.feedback.encode(&delta, self.cfg.codec)?;
        let decoded = codec::decode(&payload)?;
        let (loss_before, loss_after) = self.check_losses(corpus, global, self.id, &decoded)?;
        Ok(Contribution {
            island: self.id,
            round,
            base,
            tokens: self.tokens_per_round(),
            commitment: codec::commitment(&payload),
            payload,
            loss_before,
            loss_after,
        })
    }

    /// Save the inner state (weights, AdamW moments, settings, tokenizer via the trainer's
    /// checkpoint, and the residual) under `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| DilocoError::io(dir, e))?;
        self.trainer.save_checkpoint(dir)?;
        write_atomic(&dir.join("residual.bin"), &self.feedback.to_bytes()?)
    }

    /// Restore an island saved by [`Self::save`].
    pub fn restore(id: u64, dir: &Path, cfg: IslandConfig) -> Result<Self> {
        let trainer = Trainer::resume(dir, None)?;
        let path = dir.join("residual.bin");
        let bytes = std::fs::read(&path).map_err(|e| DilocoError::io(&path, e))?;
        let mut island = Self::new(id, trainer, cfg)?;
        island.feedback = ErrorFeedback::from_bytes(&bytes)?;
        Ok(island)
    }
}

/// Write `bytes` to `path` through a synced temporary file renamed into place, so a crash
/// leaves the old file or the new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| DilocoError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DilocoError::io(&tmp, e))?;
    f.sync_all().map_err(|e| DilocoError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DilocoError::io(path, e))
}
