//! A deterministic simulation of the Agora trust protocol: seeded single-threaded runtime,
//! virtual clock, simulated links, the real ledger state machine, honest and byzantine
//! actors, and the invariants every run must keep.
//!
//! Each run is one seed: a [`world::World`] of a sequencer, providers, payers, verifiers and
//! adversaries on simulated links (latency, loss, partitions, crashes), advanced by one event
//! queue on a virtual clock. Settlement is the real [`agora_ledger::State`]: every transaction
//! is signed with the sender's real key and applied by the real rules, blocks are sealed and
//! hash-chained, epochs advance on the virtual clock. Receipts and vouchers are the real
//! `agora_wire` messages with real signatures; roots and proofs are real Merkle trees.
//!
//! Production decision code runs in the loop: the broker's [`agora_broker::rules`] (the
//! reservation, the receipt check, the charge to a channel's books) decides what the payer
//! pays; the provider builds its roots with [`agora_provider::receipts::leaf_order`]; the
//! verifier decides with [`agora_verifier::judge`] (what it makes of a provider's material,
//! the judgement, whether to co-sign another's failure). So a regression in those functions
//! shows up here as a violation.
//!
//! Modelled rather than run: generation and the audit's replay, transport, and scheduling.
//! Token `i` of an answer is a hash of (model, prompt, seed, i); the replay ([`model::Replay`],
//! the production `Auditor` trait) regenerates it with the model the receipt names, so an
//! honest answer always passes and an answer from another model always fails. Messages are
//! [`runtime::Msg`]s on simulated links rather than libp2p and HTTP, and each actor's timing
//! (fetch retries, commit and reveal, routing, top-ups, inclusion follow-up, claims) is the
//! simulation's own (see each module); the provider's admission counts escrow with the
//! service's own [`agora_provider::payments::Escrow`]. Same seed, same final
//! hash, bit for bit.
//!
//! ```
//! let sc = agora_sim::scenario::find("honest").unwrap();
//! let a = sc.run(7);
//! assert_eq!(a.hash, sc.run(7).hash);
//! assert!(a.violations.is_empty());
//! ```

pub mod adversary;
pub mod econ;
pub mod error;
pub mod model;
pub mod net;
pub mod payer;
pub mod provider;
pub mod rng;
pub mod runtime;
pub mod scenario;
pub mod verifier;
pub mod world;

pub use error::SimError;
pub use scenario::{Scenario, Summary, SCENARIOS};
pub use world::{RunResult, World};

/// Runs `sc` on `seeds` seeds, spread over `threads` threads; results in seed order, so the
/// outcome does not depend on the thread count. Threads take the next seed as they finish
/// (runs differ in length), so none idles while another has a long queue.
pub fn run_seeds(sc: &Scenario, seeds: &[u64], threads: usize) -> Vec<RunResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = threads.clamp(1, seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, RunResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else {
                            break out;
                        };
                        out.push((i, World::new(&sc.setup(seed), seed).run()));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// The scenario called `name`, or an error naming the ones there are.
pub fn scenario(name: &str) -> Result<&'static Scenario, SimError> {
    scenario::find(name).ok_or_else(|| SimError::UnknownScenario {
        name: name.to_string(),
        known: SCENARIOS
            .iter()
            .map(|s| s.name)
            .chain(["econ", "all"])
            .collect::<Vec<_>>()
            .join(", "),
    })
}
