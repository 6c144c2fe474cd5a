//! A strict parser of the Prometheus text exposition formats (0.0.4 and OpenMetrics 1.0),
//! so tests can check that a `/metrics` page is what a scraper accepts, and read its values.
//!
//! It checks names and label syntax, escapes, values, that every sample belongs to a family
//! declared by `# TYPE` when one is, that a family is not declared twice, that an OpenMetrics
//! page ends at `# EOF`, and that each histogram's buckets are cumulative and end at `+Inf`
//! equal to its `_count`.

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`x_total`, `x_bucket`, ...).
    pub name: String,
    /// Its labels, in page order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a page is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number (0: the page as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn err(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "info",
    "stateset",
    "unknown",
];

/// The family a sample name belongs to, given the declared families.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in [
        "_total", "_bucket", "_sum", "_count", "_created", "_info", "_gcount", "_gsum",
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.contains_key(base) {
                return Some(base);
            }
        }
    }
    None
}

type LabelPairs = Vec<(String, String)>;

/// Parses `{k="v",...}` starting at `s[0] == '{'`; returns the labels and the rest.
fn parse_labels(s: &str, line: usize) -> Result<(LabelPairs, &str), ParseError> {
    let mut labels = Vec::new();
    let mut rest = &s[1..];
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| err(line, "label without `=`"))?;
        let key = rest[..eq].trim();
        if !is_label_name(key) {
            return Err(err(line, format!("bad label name {key:?}")));
        }
        if labels.iter().any(|(k, _)| k == key) {
            return Err(err(line, format!("label {key} repeated")));
        }
        rest = rest[eq + 1..].trim_start();
        let mut chars = rest.char_indices();
        if !matches!(chars.next(), Some((_, '"'))) {
            return Err(err(line, "label value not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(err(line, "bad escape in label value")),
                },
                '\n' => return Err(err(line, "newline in label value")),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| err(line, "unterminated label value"))?;
        labels.push((key.to_string(), value));
        rest = rest[end..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(err(line, "expected `,` or `}` after a label"));
        }
    }
}

/// Parses a page; see the module docs for what is checked.
pub fn parse(page: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut eof = false;
    for (i, raw) in page.lines().enumerate() {
        let line = i + 1;
        if eof {
            return Err(err(line, "text after # EOF"));
        }
        if raw.trim().is_empty() {
            continue;
        }
        if let Some(comment) = raw.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("EOF") => eof = true,
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_default();
                    let kind = parts.next().unwrap_or_default().trim();
                    if !is_metric_name(name) {
                        return Err(err(line, format!("bad metric name {name:?} in TYPE")));
                    }
                    if !TYPES.contains(&kind) {
                        return Err(err(line, format!("unknown type {kind:?}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err(line, format!("family {name} declared twice")));
                    }
                }
                Some("HELP") | Some("UNIT") => {
                    let name = parts.next().unwrap_or_default();
                    if !is_metric_name(name) {
                        return Err(err(line, format!("bad metric name {name:?}")));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = raw.find(['{', ' ']).unwrap_or(raw.len());
        let name = &raw[..name_end];
        if !is_metric_name(name) {
            return Err(err(line, format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if raw[name_end..].starts_with('{') {
            parse_labels(&raw[name_end..], line)?
        } else {
            (Vec::new(), &raw[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err(line, "missing or bad value"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|_| err(line, format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err(line, "trailing fields"));
        }
        if !types.is_empty() && family_of(name, &types).is_none() {
            return Err(err(line, format!("sample {name} of no declared family")));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// Each histogram series: buckets non-decreasing in `le` order, one `+Inf` equal to `_count`.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), ParseError> {
    type Series = (Vec<(f64, f64)>, Option<f64>);
    let mut series: BTreeMap<(String, Vec<(String, String)>), Series> = BTreeMap::new();
    for s in samples {
        let Some(family) = family_of(&s.name, types) else {
            continue;
        };
        if types.get(family).map(String::as_str) != Some("histogram") {
            continue;
        }
        let rest: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        let entry = series.entry((family.to_string(), rest)).or_default();
        if s.name.ends_with("_bucket") {
            let le = s
                .label("le")
                .and_then(parse_value)
                .ok_or_else(|| err(0, format!("{} bucket without a numeric le", s.name)))?;
            entry.0.push((le, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        }
    }
    for ((family, _), (buckets, count)) in series {
        let mut prev = (f64::NEG_INFINITY, 0.0);
        for &(le, v) in &buckets {
            if le <= prev.0 || v < prev.1 {
                return Err(err(0, format!("{family}: buckets not cumulative")));
            }
            prev = (le, v);
        }
        match (buckets.last(), count) {
            (Some(&(le, v)), Some(c)) if le.is_infinite() && v == c => {}
            _ => {
                return Err(err(
                    0,
                    format!("{family}: no +Inf bucket equal to its count"),
                ))
            }
        }
    }
    Ok(())
}

/// The sum of the samples named `name` whose labels include every pair of `with`.
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_registry_encodes() {
        let m = crate::verifier();
        m.audits
            .get_or_create(&crate::families::label("outcome", "passed"))
            .inc_by(3);
        m.audit_time.observe(0.02);
        m.audit_time.observe(5.0);
        let page = crate::encode();
        let samples = parse(&page).expect("valid page");
        assert_eq!(
            sum(
                &samples,
                "agora_verifier_audits_total",
                &[("outcome", "passed")]
            ),
            3.0
        );
        assert_eq!(
            sum(&samples, "agora_verifier_audit_seconds_count", &[]),
            2.0
        );
        assert!(page.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn parses_classic_text_with_escapes() {
        let page = "# HELP x_total a counter\n# TYPE x_total counter\nx_total{a=\"q\\\"uote\\\\ \\n\",b=\"\"} 1.5e3 1700000000\nup 1\n";
        // `up` has no TYPE while others do: refused.
        assert!(parse(page).is_err());
        let page = "x_total{a=\"q\\\"uote\\\\ \\n\",b=\"\"} 1.5e3 1700000000\nup +Inf\n";
        let s = parse(page).expect("valid");
        assert_eq!(s[0].label("a"), Some("q\"uote\\ \n"));
        assert_eq!(s[0].value, 1500.0);
        assert!(s[1].value.is_infinite());
    }

    #[test]
    fn refuses_malformed_pages() {
        for bad in [
            "9x 1\n",
            "x{a=1} 1\n",
            "x{a=\"1\" 1\n",
            "x{a=\"1\",a=\"2\"} 1\n",
            "x{a=\"\\q\"} 1\n",
            "x one\n",
            "x 1 2 3\n",
            "# TYPE x counter\n# TYPE x counter\n",
            "# TYPE x flavour\n",
            "# EOF\nx 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}

#[cfg(test)]
mod families_tests {
    use super::*;

    #[test]
    fn a_closed_diloco_round_moves_its_counters() {
        crate::diloco().round_closed(3, [2, 1, 1], 4096, 2.5);
        let s = parse(&crate::encode()).expect("valid page");
        assert!(sum(&s, "agora_diloco_rounds_closed_total", &[]) >= 1.0);
        assert!(sum(&s, "agora_diloco_delta_bytes_total", &[]) >= 4096.0);
        assert!(
            sum(
                &s,
                "agora_diloco_island_rounds_total",
                &[("outcome", "accepted")]
            ) >= 2.0
        );
        assert_eq!(sum(&s, "agora_diloco_heldout_bits_per_byte", &[]), 2.5);
    }
}
