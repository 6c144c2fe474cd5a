//! Integration tests of the simulation; each module says what it covers.

mod determinism;
mod econ;
mod parts;
mod scenarios;
