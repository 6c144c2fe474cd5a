//! Simulated links between named nodes: latency, loss, partitions, and crashed nodes.

use crate::rng::Rng;
use std::collections::BTreeSet;

/// A node's index in the run.
pub type NodeId = usize;

/// How every link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// Least one-way latency, ms.
    pub min_latency_ms: u64,
    /// Most one-way latency, ms.
    pub max_latency_ms: u64,
    /// Share of messages lost, parts per million.
    pub loss_ppm: u32,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            min_latency_ms: 5,
            max_latency_ms: 80,
            loss_ppm: 0,
        }
    }
}

/// The simulated network.
pub struct Network {
    /// Node names, for reports.
    pub names: Vec<String>,
    up: Vec<bool>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Link behaviour.
    pub spec: LinkSpec,
    rng: Rng,
    /// Messages sent.
    pub sent: u64,
    /// Messages lost (loss, partition or a crashed end).
    pub dropped: u64,
}

impl Network {
    /// A network of `names.len()` nodes, all up and connected.
    pub fn new(names: Vec<String>, spec: LinkSpec, seed: u64) -> Network {
        let n = names.len();
        Network {
            names,
            up: vec![true; n],
            cut: BTreeSet::new(),
            spec,
            rng: Rng::new(seed, "net"),
            sent: 0,
            dropped: 0,
        }
    }

    /// Whether `node` is running.
    pub fn is_up(&self, node: NodeId) -> bool {
        self.up.get(node).copied().unwrap_or(false)
    }

    /// Crashes (`false`) or restarts (`true`) a node.
    pub fn set_up(&mut self, node: NodeId, up: bool) {
        if let Some(u) = self.up.get_mut(node) {
            *u = up;
        }
    }

    /// Cuts or heals the link between `a` and `b` (both directions).
    pub fn set_cut(&mut self, a: NodeId, b: NodeId, cut: bool) {
        let k = (a.min(b), a.max(b));
        if cut {
            self.cut.insert(k);
        } else {
            self.cut.remove(&k);
        }
    }

    /// Whether `a` and `b` can talk now.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.is_up(a) && self.is_up(b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The delay of a message sent now from `from` to `to`, or `None` if it is lost.
    pub fn transit(&mut self, from: NodeId, to: NodeId) -> Option<u64> {
        self.sent += 1;
        let lost = self.rng.chance_ppm(self.spec.loss_ppm);
        let delay = self
            .rng
            .range(self.spec.min_latency_ms, self.spec.max_latency_ms);
        if lost || !self.connected(from, to) {
            self.dropped += 1;
            return None;
        }
        Some(delay)
    }
}
