//! The loss curve beside the run: an SVG with the islands' training loss at the start of
//! each round and the held-out bits per byte after it, drawn without a plotting library.

use std::fmt::Write as _;
use std::path::Path;

use crate::coordinator::RoundLog;

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

fn polyline(points: &[(f64, f64)], x_max: f64, (lo, hi): (f64, f64), color: &str) -> String {
    let span = (hi - lo).max(1e-9);
    let xy: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            let px = PAD + (x / x_max.max(1.0)) * (W - 2.0 * PAD);
            let py = H - PAD - ((y - lo) / span) * (H - 2.0 * PAD);
            format!("{px:.1},{py:.1}")
        })
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
        xy.join(" ")
    )
}

/// Writes `path` (an SVG) from the rounds so far.
pub fn write_svg(path: &Path, rounds: &[RoundLog]) -> std::io::Result<()> {
    let train: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.loss_before.map(|l| (r.round as f64 + 1.0, l)))
        .collect();
    let heldout: Vec<(f64, f64)> = rounds
        .iter()
        .map(|r| (r.round as f64 + 1.0, r.heldout_bits_per_byte))
        .collect();
    let x_max = rounds.last().map_or(1.0, |r| r.round as f64 + 1.0);
    let range = |v: &[(f64, f64)]| {
        let lo = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = v.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <line x1=\"{PAD}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"black\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{y}\" stroke=\"black\"/>\
         <text x=\"{PAD}\" y=\"20\">DiLoCo: training loss (blue, nats) and held-out bits per byte (orange), by round</text>\
         <text x=\"{x2}\" y=\"{yl}\" text-anchor=\"end\">round {x_max}</text>",
        y = H - PAD,
        x2 = W - PAD,
        yl = H - PAD + 16.0,
    );
    let (tl, th) = range(&train);
    let (hl, hh) = range(&heldout);
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{PAD}\">{th:.3}</text><text x=\"4\" y=\"{y}\">{tl:.3}</text>",
        y = H - PAD
    );
    if !train.is_empty() {
        svg.push_str(&polyline(&train, x_max, (tl, th), "#1f77b4"));
    }
    if !heldout.is_empty() {
        svg.push_str(&polyline(&heldout, x_max, (hl, hh), "#ff7f0e"));
        let _ = write!(
            svg,
            "<text x=\"{x}\" y=\"{PAD}\" text-anchor=\"end\" fill=\"#ff7f0e\">{hh:.3} bpb</text>\
             <text x=\"{x}\" y=\"{y}\" text-anchor=\"end\" fill=\"#ff7f0e\">{hl:.3} bpb</text>",
            x = W - 4.0,
            y = H - PAD - 4.0
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}
