//! Integration tests of the ledger, compiled as one binary.

/// Shared helpers: keys, genesis, signing.
mod common;
/// Kill -9 the serving node at random points; nothing acknowledged is lost.
mod crash;
/// The HTTP API through the typed client on a bound loopback port.
mod http;
/// Random sequences of valid and invalid transactions keep every invariant.
mod props;
/// One test per rule: each rejection names its reason and changes nothing.
mod rules;
/// The durable store: atomic commits, recovery, rebuild from the log.
mod store;
/// The trust protocol's attacks (issue 13), each failing against the rules.
mod trust;
