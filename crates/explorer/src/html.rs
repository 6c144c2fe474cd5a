//! HTML building blocks: escaping, the page frame, tables and inline SVG charts.
//!
//! Every string that reaches a page goes through [`esc`] (text and attribute values alike):
//! model names, regions, hardware labels and ids come from peers and must render inert.

use std::fmt::Write;

/// Escapes text for HTML text and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for a URL path segment or query value (everything but unreserved bytes).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A link.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// The first 12 characters of an id, the whole in a tooltip.
pub fn short(id: &str) -> String {
    let s: String = id.chars().take(12).collect();
    format!("<code title=\"{}\">{}</code>", esc(id), esc(&s))
}

/// A table with a header row; cells are HTML already escaped by the caller.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "<div class=\"scroll\"><table id=\"{}\"><thead><tr>",
        esc(id)
    );
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"empty\">nothing yet</td></tr>",
            head.len()
        );
    }
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The navigation: (path under the base, label).
pub const NAV: [(&str, &str); 10] = [
    ("", "Overview"),
    ("/providers", "Providers"),
    ("/verifiers", "Verifiers"),
    ("/models", "Models"),
    ("/requests", "Requests"),
    ("/blocks", "Blocks"),
    ("/epochs", "Epochs"),
    ("/audits", "Audits"),
    ("/diloco", "DiLoCo"),
    ("/lookup", "Lookup"),
];

/// A whole page: the frame, the navigation and `body` inside `<main id="live">`, which the
/// page's script replaces with what the server sends on `events` (server-sent events).
pub fn page(base: &str, title: &str, current: &str, body: &str, events: &str) -> String {
    let mut nav = String::new();
    for (p, label) in NAV {
        let href = format!("{base}{p}");
        let class = if p == current { " class=\"here\"" } else { "" };
        let _ = write!(nav, "<a href=\"{}\"{class}>{}</a>", esc(&href), esc(label));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · Agora explorer</title>\
<link rel=\"stylesheet\" href=\"{b}/style.css\"></head><body>\
<header><a class=\"brand\" href=\"{b}\">Agora explorer</a>\
<span id=\"status\" class=\"status\">static</span>\
<form class=\"search\" action=\"{b}/lookup\" method=\"get\"><input name=\"q\" placeholder=\"receipt, request, key, account, tx or block\" aria-label=\"look up\"></form>\
<nav>{nav}</nav></header>\
<main id=\"live\" data-events=\"{e}\">{body}</main>\
<footer>Read-only view of the ledger and the gateway's offer book; tables work without JavaScript, and update live with it.</footer>\
<script src=\"{b}/app.js\" defer></script></body></html>",
        t = esc(title),
        b = esc(base),
        e = esc(events),
    )
}

/// One line of a chart.
pub struct Series {
    /// Legend.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// CSS class of the line (`s0`..`s3`).
    pub class: &'static str,
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// An inline SVG line chart (no script), with the y range and the x labels as text.
pub fn chart(id: &str, title: &str, x_label: &str, series: &[Series]) -> String {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut out = format!(
        "<figure class=\"chart\" id=\"{}\"><figcaption>{}</figcaption>",
        esc(id),
        esc(title)
    );
    if pts.is_empty() {
        out.push_str("<p class=\"empty\">no data yet</p></figure>");
        return out;
    }
    let (w, h, pad_l, pad_b, pad_t, pad_r) = (600.0, 200.0, 56.0, 24.0, 8.0, 8.0);
    let x0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y0 = pts
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let mut y1 = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let xs = if x1 > x0 { x1 - x0 } else { 1.0 };
    let px = |x: f64| pad_l + (x - x0) / xs * (w - pad_l - pad_r);
    let py = |y: f64| pad_t + (1.0 - (y - y0) / (y1 - y0)) * (h - pad_t - pad_b);
    let _ = write!(
        out,
        "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">\
<line class=\"axis\" x1=\"{pad_l}\" y1=\"{yb}\" x2=\"{xr}\" y2=\"{yb}\"/>\
<line class=\"axis\" x1=\"{pad_l}\" y1=\"{pad_t}\" x2=\"{pad_l}\" y2=\"{yb}\"/>\
<text x=\"{tx}\" y=\"{ty0}\" class=\"tick\" text-anchor=\"end\">{}</text>\
<text x=\"{tx}\" y=\"{ty1}\" class=\"tick\" text-anchor=\"end\">{}</text>\
<text x=\"{pad_l}\" y=\"{h}\" class=\"tick\">{}</text>\
<text x=\"{xr}\" y=\"{h}\" class=\"tick\" text-anchor=\"end\">{}</text>",
        esc(title),
        esc(&fmt_num(y0)),
        esc(&fmt_num(y1)),
        esc(&format!("{} {}", x_label, fmt_num(x0))),
        esc(&fmt_num(x1)),
        yb = h - pad_b,
        xr = w - pad_r,
        tx = pad_l - 4.0,
        ty0 = h - pad_b,
        ty1 = pad_t + 10.0,
    );
    for s in series {
        let mut line = String::new();
        for &(x, y) in s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let _ = write!(line, "{:.1},{:.1} ", px(x), py(y));
        }
        let _ = write!(
            out,
            "<polyline class=\"line {}\" points=\"{}\"><title>{}</title></polyline>",
            s.class,
            line.trim_end(),
            esc(&s.label)
        );
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(
                out,
                "<circle class=\"dot {}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"/>",
                s.class,
                px(x),
                py(y)
            );
        }
    }
    out.push_str("</svg><p class=\"legend\">");
    for s in series {
        let _ = write!(
            out,
            "<span class=\"key {}\">{}</span> ",
            s.class,
            esc(&s.label)
        );
    }
    out.push_str("</p></figure>");
    out
}

/// The stylesheet: readable on a phone (tables scroll sideways, navigation wraps).
pub const STYLE: &str = r#"
:root{--fg:#1d2330;--mut:#667085;--bg:#fbfbfd;--card:#fff;--line:#e4e7ec;--acc:#3b5bdb;--bad:#c92a2a;--ok:#2b8a3e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#111827;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}
header a{color:#dbe4ff;text-decoration:none}
.brand{font-weight:700;color:#fff!important;font-size:1.1rem}
nav{display:flex;flex-wrap:wrap;gap:.25rem .8rem;width:100%}
nav a.here{color:#fff;border-bottom:2px solid #91a7ff}
.status{font-size:.8rem;color:#9ca3af}
.search{flex:1;min-width:12rem}
.search input{width:100%;padding:.35rem .5rem;border-radius:6px;border:1px solid #374151;background:#1f2937;color:#fff}
main{padding:1rem;max-width:1200px;margin:0 auto}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(10rem,1fr));gap:.6rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.6rem .8rem}
.card b{display:block;font-size:1.3rem}
.card span{color:var(--mut);font-size:.85rem}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:.4rem .6rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal}
th{background:#f2f4f7;font-weight:600}
.empty{color:var(--mut);font-style:italic}
.bad{color:var(--bad);font-weight:600}
.ok{color:var(--ok)}
code{font:12px ui-monospace,Menlo,Consolas,monospace}
.evidence{background:#fff5f5;border:1px solid #ffc9c9;border-radius:8px;padding:.6rem .8rem;margin:.6rem 0}
.evidence dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}
.evidence dt{color:var(--mut)}
.evidence dd{margin:0;overflow-wrap:anywhere}
.chart{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.5rem;margin:0}
.chart svg{width:100%;height:auto;max-height:15rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:.8rem}
figcaption{font-weight:600;font-size:.9rem}
.axis{stroke:#98a2b3;stroke-width:1}
.tick{font-size:11px;fill:#667085}
.line{fill:none;stroke-width:2}
.s0{stroke:#3b5bdb;color:#3b5bdb;fill:#3b5bdb}.s1{stroke:#e8590c;color:#e8590c;fill:#e8590c}.s2{stroke:#2b8a3e;color:#2b8a3e;fill:#2b8a3e}.s3{stroke:#ae3ec9;color:#ae3ec9;fill:#ae3ec9}
polyline.line{fill:none}
.legend{font-size:.8rem;margin:.2rem 0 0}
.key::before{content:"\25A0 "}
footer{color:var(--mut);font-size:.8rem;padding:1rem;text-align:center}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem}
dl.kv dt{color:var(--mut)} dl.kv dd{margin:0;overflow-wrap:anywhere}
@media (max-width:600px){main{padding:.5rem}th,td{padding:.3rem .4rem}}
"#;

/// The page script: replaces `<main id="live">` with each `page` event (the server renders
/// and escapes; the script only swaps), and shows the connection state.
pub const SCRIPT: &str = r#"(function(){
  var live=document.getElementById('live'),status=document.getElementById('status');
  if(!live||!window.EventSource){return;}
  var es=new EventSource(live.getAttribute('data-events'));
  es.addEventListener('page',function(e){
    var d=JSON.parse(e.data);
    live.innerHTML=d.html;
    if(status){status.textContent='live \u00b7 height '+d.height;}
    document.documentElement.setAttribute('data-updates',String((+document.documentElement.getAttribute('data-updates')||0)+1));
  });
  es.addEventListener('open',function(){if(status){status.textContent='live';}});
  es.addEventListener('error',function(){if(status){status.textContent='reconnecting\u2026';}});
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>\"&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
        assert_eq!(url("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn a_chart_of_hostile_labels_is_inert() {
        let svg = chart(
            "c",
            "<img src=x onerror=alert(1)>",
            "x",
            &[Series {
                label: "</title><script>alert(1)</script>".into(),
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
                class: "s0",
            }],
        );
        assert!(!svg.contains("<script>"));
        assert!(!svg.contains("<img"));
        assert!(!svg.contains("NaN"));
    }
}
