//! DiLoCo across islands, independent of the transport: each island trains `H` inner AdamW
//! steps from the global parameters on batches chosen by hash(run seed, round, island, step),
//! sends its pseudo-gradient (global minus local) as int8 blocks with error feedback after
//! committing to its hash, and every island averages the accepted deltas weighted by tokens in
//! island order and applies outer Nesterov momentum, so the global state is bit-identical
//! everywhere and is checked by hash.
//!
//! - [`codec`]: the pseudo-gradient wire format, its error feedback and commitment.
//! - [`outer`]: the global state, its canonical hash and blob, aggregation and the outer step.
//! - [`data`]: seeded batch selection.
//! - [`island`]: one island's model, inner optimizer and residual; a round of training.
//! - [`checks`]: honesty checks that refuse a contribution with a reason.
//! - [`run`]: the per-round protocol steps (commit, reveal, close, screen, aggregate, verify)
//!   and an in-process driver with drop-outs, checkpoints and export.
//!
//! See `docs/diloco.md` for the scheme and its bounds.

pub mod checks;
pub mod codec;
pub mod curve;
pub mod data;
pub mod error;
pub mod island;
pub mod outer;
pub mod run;

pub use checks::{CheckConfig, Refusal};
pub use codec::{Codec, Delta, ErrorFeedback};
pub use error::{DilocoError, Result};
pub use island::{Contribution, Island, IslandConfig};
pub use outer::{GlobalState, OuterConfig, StateHash};
pub use run::{Driver, RoundCollector, RunConfig};
