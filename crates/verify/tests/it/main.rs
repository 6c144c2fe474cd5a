//! The audit's integration tests, one binary: each module states what it shows.

mod common;
mod constrained;
mod empty_answers;
mod fingerprint_format;
mod long_answers;
mod no_verdict;
mod strategies;
