//! Loss curves as SVG, drawn without a plotting library: the picture beside a networked run
//! (`agora-islands` writes `loss.svg`) and the benchmark's DiLoCo-against-DP curves.

use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

/// One line of the picture: `(x, y)` points, drawn in `color`.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The lowest and highest finite y of `points`, or `(0, 1)` when there is none.
fn y_range<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (f64, f64) {
    let (lo, hi) = points
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

fn polyline(points: &[(f64, f64)], x_max: f64, (lo, hi): (f64, f64), color: &str) -> String {
    let span = (hi - lo).max(1e-9);
    let xy: Vec<String> = points
        .iter()
        .filter(|(_, y)| y.is_finite())
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

/// The SVG text. With `shared_scale` every series is drawn on one y range (labelled on the
/// left); otherwise each is scaled to its own range (for quantities in different units) and
/// the legend gives each one's first and last value.
pub fn svg(title: &str, x_label: &str, series: &[Series<'_>], shared_scale: bool) -> String {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let shared = y_range(series.iter().flat_map(|s| s.points.iter()));
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <line x1=\"{PAD}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"black\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{y}\" stroke=\"black\"/>\
         <text x=\"{PAD}\" y=\"20\">{title}</text>\
         <text x=\"{x2}\" y=\"{yl}\" text-anchor=\"end\">{x_label} {x_max}</text>",
        y = H - PAD,
        x2 = W - PAD,
        yl = H - PAD + 16.0,
    );
    if shared_scale {
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{PAD}\">{:.3}</text><text x=\"4\" y=\"{y}\">{:.3}</text>",
            shared.1,
            shared.0,
            y = H - PAD
        );
    }
    for (k, s) in series.iter().enumerate() {
        let range = if shared_scale {
            shared
        } else {
            y_range(s.points.iter())
        };
        out.push_str(&polyline(&s.points, x_max, range, s.color));
        let finite = || s.points.iter().map(|p| p.1).filter(|y| y.is_finite());
        let first = finite().next().unwrap_or(f64::NAN);
        let last = finite().next_back().unwrap_or(f64::NAN);
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{y}\" text-anchor=\"end\" fill=\"{c}\">{label}: {first:.3} to {last:.3}</text>",
            x = W - PAD,
            y = PAD + 16.0 * k as f64,
            c = s.color,
            label = s.label,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Writes [`svg`] to `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[Series<'_>],
    shared_scale: bool,
) -> std::io::Result<()> {
    std::fs::write(path, svg(title, x_label, series, shared_scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_skips_non_finite_points() {
        let a = Series {
            label: "dp",
            color: "#000",
            points: vec![(1.0, 3.0), (2.0, f64::NAN), (3.0, 2.0)],
        };
        let b = Series {
            label: "diloco",
            color: "#f00",
            points: vec![(1.0, 3.5), (3.0, 2.5)],
        };
        let text = svg("t", "round", &[a, b], true);
        assert_eq!(text.matches("<polyline").count(), 2);
        assert!(text.contains("dp: 3.000 to 2.000"));
        assert!(text.contains("diloco: 3.500 to 2.500"));
        assert!(!text.contains("NaN"));
        // The shared axis spans both series.
        assert!(text.contains(">3.500</text>") && text.contains(">2.000</text>"));
    }
}
