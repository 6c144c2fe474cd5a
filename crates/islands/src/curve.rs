//! The loss curve beside the run: the islands' training loss at the start of each round and
//! the held-out bits per byte after it, each on its own scale.

use std::path::Path;

use agora_diloco::curve::{write_svg as draw, Series};

use crate::coordinator::RoundLog;

/// Writes `path` (an SVG) from the rounds so far.
pub fn write_svg(path: &Path, rounds: &[RoundLog]) -> std::io::Result<()> {
    let train = Series {
        label: "training loss (nats)",
        color: "#1f77b4",
        points: rounds
            .iter()
            .filter_map(|r| r.loss_before.map(|l| (r.round as f64 + 1.0, l)))
            .collect(),
    };
    let heldout = Series {
        label: "held-out bits per byte",
        color: "#ff7f0e",
        points: rounds
            .iter()
            .map(|r| (r.round as f64 + 1.0, r.heldout_bits_per_byte))
            .collect(),
    };
    draw(
        path,
        "DiLoCo: training loss and held-out bits per byte, by round",
        "round",
        &[train, heldout],
        false,
    )
}
