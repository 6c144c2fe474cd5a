//! What can go wrong when asking for a simulation.

use thiserror::Error;

/// A bad request to the simulator.
#[derive(Debug, Error)]
pub enum SimError {
    /// No scenario has that name.
    #[error("no scenario named {name:?} (try one of: {known})")]
    UnknownScenario {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
}
