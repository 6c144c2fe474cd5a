//! Why a schema cannot be used as a constraint.

/// A schema the compiler refuses; the message names the feature, for a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The schema is not JSON.
    #[error("the schema is not valid JSON: {0}")]
    NotJson(String),
    /// A keyword or form this compiler does not support.
    #[error("unsupported JSON Schema feature `{feature}` at {path}")]
    Unsupported {
        /// The keyword or form, e.g. `pattern`.
        feature: String,
        /// Where in the schema (a JSON pointer).
        path: String,
    },
    /// A keyword with a value of the wrong shape.
    #[error("invalid JSON Schema at {path}: {message}")]
    Invalid {
        /// Where in the schema.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The compiled grammar is over the size limit.
    #[error("the schema compiles to {nodes} grammar nodes; the limit is {limit}")]
    TooLarge {
        /// Nodes the schema needs.
        nodes: usize,
        /// The limit.
        limit: usize,
    },
}
