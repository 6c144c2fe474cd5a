//! DiLoCo over the network. One process starts a run and coordinates it; islands, each a
//! separate process, join it over libp2p and train. Each round:
//!
//! 1. an island fetches the global state (content-addressed: it checks the blob's hash), and
//!    trains H inner steps on the batches `agora_diloco::data` picks for (run, round, island);
//! 2. it commits to its encoded pseudo-gradient's hash; once every expected island has
//!    committed, or the round's deadline passed, commitments close;
//! 3. it reveals the contribution; it is checked against its commitment, round and base;
//! 4. at a quorum of reveals or the deadline the coordinator closes the round: it screens
//!    the contributions (claimed losses, norm and direction outliers, refusals logged with
//!    their reason), aggregates the accepted ones in island order with outer Nesterov, and
//!    announces the accepted commitments and the next state's hash;
//! 5. every island fetches the accepted contributions, aggregates them itself and checks
//!    that it reached the same hash.
//!
//! An island that is late or was dropped fetches the state and trains from the next round; a
//! joiner does the same, so it contributes nothing to the round it joined in. The
//! coordinator checkpoints the state every round and resumes from it; at the end it exports
//! the model (servable by `agora provider`) and draws the loss curve.
//!
//! The coordinator orders rounds and picks the accepted set; it cannot forge an island's
//! contribution (commitments and requests are signed by island keys) and every island checks
//! the aggregate itself.

pub mod coordinator;
pub mod curve;
pub mod island;
pub mod protocol;

use agora_diloco::{CheckConfig, IslandConfig, OuterConfig};
use agora_model::LlamaConfig;
use agora_train::TrainSettings;
use serde::{Deserialize, Serialize};

pub use coordinator::{Coordinator, CoordinatorConfig};
pub use island::{run_island, IslandOptions, IslandOutcome, Link, Traffic};

/// Everything that defines a run; its hash is the run id every request carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// A name for logs and the exported model.
    pub name: String,
    /// The model's shape.
    pub model: LlamaConfig,
    /// Inner training settings (batch, sequence length, AdamW schedule, init seed).
    pub settings: TrainSettings,
    /// Per-island settings: run seed, H, codec, check batches.
    pub island: IslandConfig,
    /// Outer Nesterov.
    pub outer: OuterConfig,
    /// Honesty checks.
    pub checks: CheckConfig,
    /// Rounds to train.
    pub rounds: u64,
    /// Islands expected each round: commitments close once this many committed.
    pub islands: u64,
    /// Milliseconds each phase (commit, reveal) waits at most.
    pub phase_ms: u64,
    /// blake3 of the training text: every island must train on the same file.
    pub data_hash: String,
    /// Share of the text's end held out.
    pub holdout: f64,
    /// The tokenizer, as tokenizer.json.
    pub tokenizer_json: String,
}

impl RunSpec {
    /// The run id: blake3 of the spec's JSON.
    pub fn id(&self) -> Result<[u8; 32], IslandsError> {
        let json = serde_json::to_vec(self).map_err(|e| IslandsError::Spec(e.to_string()))?;
        Ok(*blake3::hash(&json).as_bytes())
    }
}

/// The blake3 of a data file's bytes, as the spec records it.
pub fn data_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// Why a run, an island or the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum IslandsError {
    /// DiLoCo itself refused.
    #[error(transparent)]
    Diloco(#[from] agora_diloco::DilocoError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] agora_train::TrainError),
    /// The model crate failed.
    #[error(transparent)]
    Model(#[from] agora_model::ModelError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The spec is unusable or does not match.
    #[error("run spec: {0}")]
    Spec(String),
    /// The coordinator refused or could not be reached.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// Peers disagree on the state.
    #[error("state mismatch in round {round}: {detail}")]
    Mismatch {
        /// The round.
        round: u64,
        /// What differed.
        detail: String,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    agora_net::protocol::now_ms()
}
