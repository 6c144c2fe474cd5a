//! The pages, the server-sent event stream that keeps them live, and the routes.

use crate::html::{chart, esc, link, page, short, table, url, Series, SCRIPT, STYLE};
use crate::index::{Evidence, VerdictRow};
use crate::{Explorer, OfferRow, RequestRow};
use agora_core::{AccountId, Amount, Hash32};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rows shown in long tables.
const ROWS: usize = 100;

/// No inline script, no third-party anything: an escaping slip still runs nothing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

type Q = HashMap<String, String>;

/// The explorer's routes: `{base}` and everything under it.
pub fn router(ex: Arc<Explorer>) -> Router {
    let base = ex.cfg.base.clone();
    Router::new()
        .route(&base, get(any_page))
        .route(&format!("{base}/"), get(any_page))
        .route(&format!("{base}/{{*rest}}"), get(any_page))
        .with_state(ex)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn with_headers(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn any_page(State(ex): State<Arc<Explorer>>, uri: Uri, Query(q): Query<Q>) -> Response {
    let rel = uri
        .path()
        .strip_prefix(ex.cfg.base.as_str())
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    match rel.as_str() {
        "/style.css" => return with_headers(STYLE.into_response(), "text/css; charset=utf-8"),
        "/app.js" => return with_headers(SCRIPT.into_response(), "text/javascript; charset=utf-8"),
        "/events" => return events(ex, q).await,
        _ => {}
    }
    let events_url = format!(
        "{}/events?page={}",
        ex.cfg.base,
        url(uri.path_and_query().map_or(uri.path(), |p| p.as_str()))
    );
    let ex2 = ex.clone();
    let rel2 = rel.clone();
    let rendered = tokio::task::spawn_blocking(move || render(&ex2, &rel2, &q)).await;
    let (status, title, body) = match rendered {
        Ok(Some((t, b))) => (StatusCode::OK, t, b),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "Not found".to_string(),
            "<h1>Not found</h1><p>No such page.</p>".to_string(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "explorer page task");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error".into(),
                "<h1>Internal error</h1>".into(),
            )
        }
    };
    let current = crate::html::NAV
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| rel == *p || (!p.is_empty() && rel.starts_with(p)))
        .max_by_key(|p| p.len())
        .unwrap_or("");
    let html = page(&ex.cfg.base, &title, current, &body, &events_url);
    with_headers((status, html).into_response(), "text/html; charset=utf-8")
}

/// `GET {base}/events?page=PATH`: a `page` event with `{"title","html","height"}` each time
/// the page at PATH (under the base) renders differently.
async fn events(ex: Arc<Explorer>, q: Q) -> Response {
    let target = q.get("page").cloned().unwrap_or_default();
    let Ok(uri) = target.parse::<Uri>() else {
        return (StatusCode::BAD_REQUEST, "bad page").into_response();
    };
    let Some(rel) = uri.path().strip_prefix(ex.cfg.base.as_str()) else {
        return (StatusCode::BAD_REQUEST, "page outside the explorer").into_response();
    };
    let rel = rel.trim_end_matches('/').to_string();
    if matches!(rel.as_str(), "/events" | "/app.js" | "/style.css") {
        return (StatusCode::BAD_REQUEST, "not a page").into_response();
    }
    let query: Q = uri
        .query()
        .and_then(serde_urlencoded_pairs)
        .unwrap_or_default();
    let Ok(permit) = ex.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages; reload later",
        )
            .into_response();
    };
    let rx = ex.version();
    let state = (ex, rx, rel, query, String::new(), permit);
    let stream = futures::stream::unfold(
        state,
        |(ex, mut rx, rel, query, mut last, permit)| async move {
            loop {
                rx.changed().await.ok()?;
                // Coalesce bursts (a block and the accounts it touched).
                tokio::time::sleep(Duration::from_millis(250)).await;
                rx.borrow_and_update();
                let (ex2, rel2, q2) = (ex.clone(), rel.clone(), query.clone());
                let out = tokio::task::spawn_blocking(move || render(&ex2, &rel2, &q2))
                    .await
                    .ok()?;
                let (title, html) = out?;
                if html == last {
                    continue;
                }
                last.clone_from(&html);
                let height = ex.with_index(|i| i.height);
                let data = serde_json::json!({"title": title, "html": html, "height": height});
                let ev = Event::default().event("page").data(data.to_string());
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (ex, rx, rel, query, last, permit),
                ));
            }
        },
    );
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `a=b&c=d` into a map (percent-decoded; `+` is a space).
fn serde_urlencoded_pairs(s: &str) -> Option<Q> {
    let mut out = Q::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k)?, decode(v)?);
    }
    Some(out)
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Renders the page at `rel` (the path under the base): `(title, body)`, or `None` if there
/// is no such page.
pub fn render(ex: &Explorer, rel: &str, q: &Q) -> Option<(String, String)> {
    let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [] => Some(overview(ex)),
        ["providers"] => Some(providers(ex)),
        ["providers", id] => Some(provider(ex, id)),
        ["verifiers"] => Some(verifiers(ex)),
        ["models"] => Some(models(ex)),
        ["requests"] => Some(requests(ex)),
        ["blocks"] => Some(blocks(ex)),
        ["blocks", h] => Some(block(ex, h)),
        ["epochs"] => Some(epochs(ex)),
        ["epochs", e] => Some(epoch(ex, e)),
        ["audits"] => Some(audits(ex)),
        ["receipts", id] => Some(receipt(ex, id)),
        ["keys", id] => Some(key(ex, id)),
        ["diloco"] => Some(diloco(ex)),
        ["lookup"] => Some(lookup(ex, q.get("q").map(String::as_str).unwrap_or(""))),
        _ => None,
    }
}

fn amt(a: Amount) -> String {
    esc(&a.to_string())
}

fn account_link(ex: &Explorer, a: &AccountId) -> String {
    let s = a.to_string();
    format!(
        "<a href=\"{}/providers/{}\">{}</a>",
        esc(&ex.cfg.base),
        url(&s),
        short(&s)
    )
}

/// UTC time of day.
fn time(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn card(value: impl std::fmt::Display, label: &str) -> String {
    format!(
        "<div class=\"card\"><b>{}</b><span>{}</span></div>",
        esc(&value.to_string()),
        esc(label)
    )
}

fn account_views(ex: &Explorer) -> HashMap<AccountId, agora_ledger::api::AccountView> {
    ex.accounts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn overview(ex: &Explorer) -> (String, String) {
    let offers = ex.offers();
    let answers = ex.requests.all();
    let tokens: u64 = answers
        .iter()
        .map(|r| u64::from(r.completion_tokens) + u64::from(r.prompt_tokens))
        .sum();
    let mut b = String::from("<h1>Network</h1>");
    if let Some(e) = ex
        .ledger_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        let _ = write!(b, "<p class=\"bad\">{}</p>", esc(&e));
    }
    ex.with_index(|i| {
        let slashes: u64 = i.actors.values().map(|a| a.slashes).sum();
        let mut providers: Vec<AccountId> = i.providers().into_iter().map(|(a, _)| a).collect();
        providers.extend(offers.iter().map(|o| o.provider));
        providers.sort();
        providers.dedup();
        b.push_str("<div class=\"cards\">");
        b.push_str(&card(i.height, "block height"));
        b.push_str(&card(i.epoch, "epoch"));
        b.push_str(&card(i.tx_count, "transactions"));
        b.push_str(&card(providers.len(), "providers"));
        b.push_str(&card(i.verifiers().len(), "verifiers"));
        b.push_str(&card(offers.len(), "live offers"));
        b.push_str(&card(answers.len(), "answers served here"));
        b.push_str(&card(tokens, "tokens served here"));
        b.push_str(&card(
            i.actors
                .values()
                .map(|a| a.audits_passed + a.audits_failed)
                .sum::<u64>(),
            "audits revealed",
        ));
        b.push_str(&card(slashes, "slashes"));
        b.push_str("</div>");
        b.push_str("<div class=\"charts\">");
        b.push_str(&tokens_chart(&answers));
        let receipts: Vec<(f64, f64)> = i
            .receipts_by_epoch
            .iter()
            .map(|(e, n)| (*e as f64, *n as f64))
            .collect();
        b.push_str(&chart(
            "receipts-chart",
            "Receipts under posted roots, per epoch",
            "epoch",
            &[Series {
                label: "receipts".into(),
                points: receipts,
                class: "s2",
            }],
        ));
        b.push_str("</div>");
        b.push_str("<h2>Latest verdicts</h2>");
        b.push_str(&verdict_table(ex, i.verdicts.iter().rev().take(5)));
        b.push_str("<h2>Latest blocks</h2>");
        b.push_str(&block_table(ex, i, 10));
    });
    ("Overview".into(), b)
}

fn tokens_chart(answers: &[RequestRow]) -> String {
    // Ten-second buckets, so a young network already draws a line.
    let mut per_min: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for r in answers {
        let m = per_min.entry(r.at_ms / 10_000).or_default();
        m.0 += f64::from(r.prompt_tokens);
        m.1 += f64::from(r.completion_tokens);
    }
    let first = per_min.keys().next().copied().unwrap_or(0);
    let pts = |f: fn(&(f64, f64)) -> f64| -> Vec<(f64, f64)> {
        per_min
            .iter()
            .map(|(m, v)| ((m - first) as f64 / 6.0, f(v)))
            .collect()
    };
    chart(
        "tokens-chart",
        "Tokens served through this gateway, per 10 s",
        "minute",
        &[
            Series {
                label: "prompt tokens".into(),
                points: pts(|v| v.0),
                class: "s0",
            },
            Series {
                label: "completion tokens".into(),
                points: pts(|v| v.1),
                class: "s1",
            },
        ],
    )
}

fn block_table(ex: &Explorer, i: &crate::Index, n: usize) -> String {
    let rows: Vec<Vec<String>> = i
        .blocks
        .iter()
        .rev()
        .take(n)
        .map(|b| {
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for t in &b.txs {
                *kinds.entry(t.kind).or_default() += 1;
            }
            let kinds: Vec<String> = kinds
                .iter()
                .map(|(k, n)| {
                    if *n > 1 {
                        format!("{k} ×{n}")
                    } else {
                        k.to_string()
                    }
                })
                .collect();
            vec![
                format!(
                    "<a href=\"{}/blocks/{}\">{}</a>",
                    esc(&ex.cfg.base),
                    b.height,
                    b.height
                ),
                esc(&time(b.time_ms)),
                short(&b.hash.to_string()),
                b.txs.len().to_string(),
                format!("<span class=\"wrap\">{}</span>", esc(&kinds.join(", "))),
            ]
        })
        .collect();
    table(
        "blocks",
        &["height", "time (UTC)", "hash", "txs", "kinds"],
        &rows,
    )
}

/// Every provider the ledger or the offer book knows, with what each says about it.
fn providers(ex: &Explorer) -> (String, String) {
    let offers = ex.offers();
    let views = account_views(ex);
    let mut b = String::from("<h1>Providers</h1>");
    let rows = ex.with_index(|i| {
        let mut ids: Vec<AccountId> = i.providers().into_iter().map(|(a, _)| a).collect();
        ids.extend(offers.iter().map(|o| o.provider));
        ids.sort();
        ids.dedup();
        ids.iter()
            .map(|id| {
                let mine: Vec<&OfferRow> = offers.iter().filter(|o| o.provider == *id).collect();
                let actor = i.actors.get(id).cloned().unwrap_or_default();
                let view = views.get(id);
                let stake = view.map_or(actor.stake, |v| v.stake);
                let models: Vec<String> = mine.iter().map(|o| esc(&o.model_name)).collect();
                let price = |f: fn(&OfferRow) -> Amount| {
                    mine.iter()
                        .map(|o| f(o).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let status = if actor.slashes > 0 {
                    "<span class=\"bad\">slashed</span>".to_string()
                } else if mine.is_empty() {
                    "offline".to_string()
                } else {
                    "<span class=\"ok\">live</span>".to_string()
                };
                vec![
                    account_link(ex, id),
                    models.join(", "),
                    esc(&price(|o| o.price_in)),
                    esc(&price(|o| o.price_out)),
                    esc(&mine
                        .iter()
                        .map(|o| o.hardware.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")),
                    esc(&mine
                        .iter()
                        .map(|o| o.region.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")),
                    amt(stake),
                    mine.first()
                        .map_or(String::new(), |o| format!("{:.2}", o.reputation)),
                    actor.audits_passed.to_string(),
                    if actor.audits_failed > 0 {
                        format!("<span class=\"bad\">{}</span>", actor.audits_failed)
                    } else {
                        "0".into()
                    },
                    if actor.slashes > 0 {
                        format!(
                            "<span class=\"bad slashes\">{}</span> ({})",
                            actor.slashes,
                            amt(actor.slashed)
                        )
                    } else {
                        "0".into()
                    },
                    amt(actor.earned),
                    actor.receipts.to_string(),
                    status,
                ]
            })
            .collect::<Vec<_>>()
    });
    b.push_str(&table(
        "providers",
        &[
            "provider",
            "models",
            "price in /Mtok",
            "price out /Mtok",
            "hardware",
            "region",
            "stake",
            "reputation",
            "audits passed",
            "audits failed",
            "slashes",
            "earned",
            "receipts",
            "status",
        ],
        &rows,
    ));
    b.push_str("<p>Prices are base units per million tokens, from the gateway's offer book; stake, audits, slashes and earnings (voucher claims) from the ledger.</p>");
    ("Providers".into(), b)
}

fn provider(ex: &Explorer, id: &str) -> (String, String) {
    let Ok(account) = id.parse::<AccountId>() else {
        return ("Provider".into(), "<h1>Not an account id</h1>".into());
    };
    let s = account.to_string();
    let view = account_views(ex).get(&account).cloned();
    let offers: Vec<OfferRow> = ex
        .offers()
        .into_iter()
        .filter(|o| o.provider == account)
        .collect();
    let mut b = format!("<h1>Account <code>{}</code></h1>", esc(&s));
    ex.with_index(|i| {
        let a = i.actors.get(&account).cloned().unwrap_or_default();
        b.push_str("<dl class=\"kv\">");
        let mut kv = |k: &str, v: String| {
            let _ = write!(b, "<dt>{}</dt><dd>{v}</dd>", esc(k));
        };
        kv("stake", amt(view.as_ref().map_or(a.stake, |v| v.stake)));
        if let Some(v) = &view {
            kv("balance", amt(v.balance));
            kv("clean audits (ledger)", v.clean_audits.to_string());
            kv("confirmed frauds (ledger)", v.frauds.to_string());
        }
        kv("registered verifier", a.verifier.to_string());
        kv("earned (vouchers claimed)", amt(a.earned));
        kv(
            "receipt roots / receipts",
            format!("{} / {}", a.roots, a.receipts),
        );
        kv(
            "audits passed / failed",
            format!("{} / {}", a.audits_passed, a.audits_failed),
        );
        kv("slashes", format!("{} ({})", a.slashes, amt(a.slashed)));
        if a.verifier {
            kv(
                "as verifier: audits / alarms / fees",
                format!("{} / {} / {}", a.audits_done, a.alarms, amt(a.fees)),
            );
            kv(
                "as verifier: slashes",
                format!("{} ({})", a.verifier_slashes, amt(a.verifier_slashed)),
            );
        }
        if !a.spent.is_zero() {
            kv("spent (as payer)", amt(a.spent));
        }
        b.push_str("</dl>");
        b.push_str("<h2>Offers</h2>");
        b.push_str(&offer_table(&offers));
        b.push_str("<h2>Verdicts</h2>");
        b.push_str(&verdict_table(
            ex,
            i.verdicts.iter().rev().filter(|v| v.provider == account),
        ));
        b.push_str("<h2>Recent audits</h2>");
        let rows: Vec<Vec<String>> = i
            .audits
            .iter()
            .rev()
            .filter(|r| r.provider == account || r.verifier == account)
            .take(ROWS)
            .map(|r| audit_row(ex, r))
            .collect();
        b.push_str(&table("audits", AUDIT_HEAD, &rows));
    });
    ("Provider".into(), b)
}

fn offer_table(offers: &[OfferRow]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = offers
        .iter()
        .map(|o| {
            vec![
                esc(&o.model_name),
                short(&o.model.to_string()),
                amt(o.price_in),
                amt(o.price_out),
                esc(&o.hardware),
                esc(&o.region),
                o.capacity.to_string(),
                o.context_len.to_string(),
                o.load.to_string(),
                o.latency_ms.map_or(String::new(), |l| format!("{l:.0} ms")),
                format!("{} s", o.expires_ms.saturating_sub(now) / 1000),
            ]
        })
        .collect();
    table(
        "offers",
        &[
            "model",
            "ModelId",
            "price in /Mtok",
            "price out /Mtok",
            "hardware",
            "region",
            "capacity",
            "context",
            "load",
            "first token",
            "expires in",
        ],
        &rows,
    )
}

fn verifiers(ex: &Explorer) -> (String, String) {
    let views = account_views(ex);
    let rows = ex.with_index(|i| {
        i.verifiers()
            .into_iter()
            .map(|(id, a)| {
                vec![
                    account_link(ex, &id),
                    amt(views.get(&id).map_or(a.stake, |v| v.stake)),
                    a.audits_done.to_string(),
                    a.alarms.to_string(),
                    amt(a.fees),
                    if a.verifier_slashes > 0 {
                        format!(
                            "<span class=\"bad\">{}</span> ({})",
                            a.verifier_slashes,
                            amt(a.verifier_slashed)
                        )
                    } else {
                        "0".into()
                    },
                ]
            })
            .collect::<Vec<_>>()
    });
    let mut b = String::from("<h1>Verifiers</h1>");
    b.push_str(&table(
        "verifiers",
        &[
            "verifier",
            "stake",
            "audits revealed",
            "failed leaves",
            "fees and bounties",
            "slashes",
        ],
        &rows,
    ));
    ("Verifiers".into(), b)
}

fn models(ex: &Explorer) -> (String, String) {
    let offers = ex.offers();
    let mut by: BTreeMap<Hash32, Vec<&OfferRow>> = BTreeMap::new();
    for o in &offers {
        by.entry(o.model).or_default().push(o);
    }
    let range = |v: &[&OfferRow], f: fn(&OfferRow) -> u128| {
        let lo = v.iter().map(|o| f(o)).min().unwrap_or(0);
        let hi = v.iter().map(|o| f(o)).max().unwrap_or(0);
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo} – {hi}")
        }
    };
    let rows: Vec<Vec<String>> = by
        .iter()
        .map(|(id, v)| {
            let mut names: Vec<&str> = v.iter().map(|o| o.model_name.as_str()).collect();
            names.sort();
            names.dedup();
            vec![
                esc(&names.join(", ")),
                short(&id.to_string()),
                v.len().to_string(),
                esc(&range(v, |o| o.price_in.units())),
                esc(&range(v, |o| o.price_out.units())),
                v.iter()
                    .map(|o| o.context_len)
                    .max()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    let mut b = String::from("<h1>Models</h1>");
    b.push_str(&table(
        "models",
        &[
            "name",
            "ModelId",
            "providers",
            "price in /Mtok",
            "price out /Mtok",
            "context",
        ],
        &rows,
    ));
    let prices = ex.prices.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let t0 = prices.front().map_or(0, |p| p.at_ms);
    let mut series = Vec::new();
    let classes = ["s0", "s1", "s2", "s3"];
    let mut models: Vec<(Hash32, String)> = prices
        .iter()
        .map(|p| (p.model, p.model_name.clone()))
        .collect();
    models.sort();
    models.dedup_by_key(|m| m.0);
    for (k, (id, name)) in models.iter().take(2).enumerate() {
        let pts = |hi: bool| -> Vec<(f64, f64)> {
            prices
                .iter()
                .filter(|p| p.model == *id)
                .map(|p| {
                    (
                        (p.at_ms - t0) as f64 / 60_000.0,
                        (if hi { p.out.1 } else { p.out.0 }) as f64,
                    )
                })
                .collect()
        };
        series.push(Series {
            label: format!("{name}: lowest output price"),
            points: pts(false),
            class: classes[2 * k],
        });
        series.push(Series {
            label: format!("{name}: highest output price"),
            points: pts(true),
            class: classes[2 * k + 1],
        });
    }
    b.push_str(&chart(
        "price-chart",
        "Output price per million tokens over time",
        "minutes",
        &series,
    ));
    ("Models".into(), b)
}

fn request_rows(ex: &Explorer, rows: &[RequestRow]) -> Vec<Vec<String>> {
    let base = esc(&ex.cfg.base);
    rows.iter()
        .map(|r| {
            let receipts: Vec<String> = r
                .receipts
                .iter()
                .map(|x| {
                    format!(
                        "<a class=\"receipt\" href=\"{base}/receipts/{}\">{}</a>",
                        url(&x.receipt),
                        short(&x.receipt)
                    )
                })
                .collect();
            let providers: Vec<String> = r
                .receipts
                .iter()
                .map(|x| {
                    format!(
                        "<a href=\"{base}/providers/{}\">{}</a>",
                        url(&x.provider),
                        short(&x.provider)
                    )
                })
                .collect();
            let charged: u128 = r
                .receipts
                .iter()
                .filter_map(|x| x.charged.parse::<u128>().ok())
                .fold(0, u128::saturating_add);
            vec![
                esc(&time(r.at_ms)),
                format!(
                    "<a href=\"{base}/receipts/{}\">{}</a>",
                    url(&r.request_id),
                    short(&r.request_id)
                ),
                format!(
                    "<a href=\"{base}/keys/{}\">{}</a>",
                    url(&r.key_id),
                    esc(&r.key_id)
                ),
                esc(&r.model),
                r.prompt_tokens.to_string(),
                r.completion_tokens.to_string(),
                r.first_token_ms
                    .map_or(String::new(), |t| format!("{t} ms")),
                providers.join(" "),
                receipts.join(" "),
                esc(&charged.to_string()),
                esc(r.outcome),
            ]
        })
        .collect()
}

const REQUEST_HEAD: &[&str] = &[
    "time (UTC)",
    "request",
    "API key",
    "model",
    "tokens in",
    "tokens out",
    "first token",
    "provider",
    "receipt",
    "charged",
    "outcome",
];

fn requests(ex: &Explorer) -> (String, String) {
    let recent = ex.requests.recent(ROWS);
    let mut b = String::from("<h1>Requests served by this gateway</h1>");
    b.push_str(&table("requests", REQUEST_HEAD, &request_rows(ex, &recent)));
    b.push_str("<p>Each answer names the signed receipts behind it; a receipt's provider commits it under its receipt root for that epoch, which verifiers sample and audit.</p>");
    ("Requests".into(), b)
}

fn blocks(ex: &Explorer) -> (String, String) {
    let mut b = String::from("<h1>Recent blocks</h1>");
    ex.with_index(|i| b.push_str(&block_table(ex, i, ROWS)));
    ("Blocks".into(), b)
}

fn block(ex: &Explorer, h: &str) -> (String, String) {
    let Ok(h) = h.parse::<u64>() else {
        return ("Block".into(), "<h1>Not a height</h1>".into());
    };
    let mut b = format!("<h1>Block {h}</h1>");
    let found = ex.with_index(|i| {
        let Some(blk) = i.blocks.iter().find(|x| x.height == h) else {
            return false;
        };
        let _ = write!(
            b,
            "<dl class=\"kv\"><dt>hash</dt><dd><code>{}</code></dd><dt>state hash</dt><dd><code>{}</code></dd><dt>time (UTC)</dt><dd>{}</dd></dl>",
            esc(&blk.hash.to_string()),
            esc(&blk.state_hash.to_string()),
            esc(&time(blk.time_ms))
        );
        let rows: Vec<Vec<String>> = blk
            .txs
            .iter()
            .map(|t| {
                vec![
                    short(&t.id.to_string()),
                    esc(t.kind),
                    account_link(ex, &t.from),
                    format!(
                        "<span class=\"wrap\">{}</span>",
                        t.events.iter().map(|e| esc(e)).collect::<Vec<_>>().join("<br>")
                    ),
                ]
            })
            .collect();
        b.push_str(&table("txs", &["tx", "kind", "from", "what it did"], &rows));
        true
    });
    if !found {
        b.push_str("<p>Not among the recent blocks the explorer keeps; the ledger's <code>/v1/blocks/{height}</code> has every block.</p>");
    }
    (format!("Block {h}"), b)
}

fn epochs(ex: &Explorer) -> (String, String) {
    let base = esc(&ex.cfg.base);
    let rows = ex.with_index(|i| {
        i.epochs
            .values()
            .rev()
            .take(ROWS)
            .map(|e| {
                vec![
                    format!("<a href=\"{base}/epochs/{}\">{}</a>", e.epoch, e.epoch),
                    if e.height == 0 {
                        String::new()
                    } else {
                        e.height.to_string()
                    },
                    if e.time_ms == 0 {
                        String::new()
                    } else {
                        esc(&time(e.time_ms))
                    },
                    short(&e.beacon.to_string()),
                    e.roots.len().to_string(),
                    e.roots.iter().map(|r| r.receipts).sum::<u64>().to_string(),
                ]
            })
            .collect::<Vec<_>>()
    });
    let mut b = String::from("<h1>Epochs and beacons</h1>");
    b.push_str(&table(
        "epochs",
        &[
            "epoch",
            "began at block",
            "time (UTC)",
            "beacon",
            "receipt roots",
            "receipts",
        ],
        &rows,
    ));
    b.push_str("<p>Each epoch's beacon selects which leaves of the previous epoch's roots are audited, and by whom.</p>");
    ("Epochs".into(), b)
}

fn epoch(ex: &Explorer, e: &str) -> (String, String) {
    let Ok(e) = e.parse::<u64>() else {
        return ("Epoch".into(), "<h1>Not an epoch</h1>".into());
    };
    let roots = ex.with_index(|i| i.epochs.get(&e).map(|r| (r.beacon, r.roots.clone())));
    let mut b = format!("<h1>Epoch {e}</h1>");
    let Some((beacon, roots)) = roots else {
        b.push_str("<p>Not among the epochs the explorer keeps.</p>");
        return (format!("Epoch {e}"), b);
    };
    let _ = write!(
        b,
        "<dl class=\"kv\"><dt>beacon</dt><dd><code>{}</code></dd></dl><h2>Receipt roots and their audit plans</h2>",
        esc(&beacon.to_string())
    );
    let client = agora_ledger::client::Client::new(&ex.cfg.ledger_url)
        .ok()
        .map(|c| c.with_timeout(Duration::from_secs(3)));
    let mut rows = Vec::new();
    for r in roots.iter().take(50) {
        let plan = cached_plan(ex, client.as_ref(), r.provider, e);
        let selected = plan.as_ref().map_or_else(
            || "no plan yet (selected by the next epoch's beacon)".to_string(),
            |p| {
                if p.leaves.is_empty() {
                    format!("none selected ({} ppm)", p.audit_ppm)
                } else {
                    p.leaves
                        .iter()
                        .map(|(leaf, v)| format!("leaf {leaf} → {}", &v.to_string()[..10]))
                        .collect::<Vec<_>>()
                        .join("; ")
                }
            },
        );
        rows.push(vec![
            account_link(ex, &r.provider),
            short(&r.root.to_string()),
            r.receipts.to_string(),
            r.height.to_string(),
            format!("<span class=\"wrap\">{}</span>", esc(&selected)),
        ]);
    }
    b.push_str(&table(
        "roots",
        &[
            "provider",
            "root",
            "receipts",
            "block",
            "audited leaves → verifier",
        ],
        &rows,
    ));
    (format!("Epoch {e}"), b)
}

/// An audit plan, from the cache or the ledger (kept once it exists: it never changes).
fn cached_plan(
    ex: &Explorer,
    client: Option<&agora_ledger::client::Client>,
    provider: AccountId,
    epoch: u64,
) -> Option<agora_ledger::AuditPlan> {
    let lock = || ex.plans.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = lock().get(&(provider, epoch)) {
        return Some(p.clone());
    }
    let plan = client?.audit_plan(&provider, epoch).ok().flatten()?;
    let mut cache = lock();
    if cache.len() >= crate::PLAN_CACHE {
        cache.clear();
    }
    cache.insert((provider, epoch), plan.clone());
    Some(plan)
}

const AUDIT_HEAD: &[&str] = &[
    "block", "verifier", "provider", "epoch", "leaf", "outcome", "fee",
];

fn audit_row(ex: &Explorer, r: &crate::index::AuditRow) -> Vec<String> {
    vec![
        r.height.to_string(),
        account_link(ex, &r.verifier),
        account_link(ex, &r.provider),
        r.epoch.to_string(),
        r.index.to_string(),
        if r.passed {
            "<span class=\"ok\">passed</span>".into()
        } else {
            "<span class=\"bad\">failed</span>".into()
        },
        amt(r.fee),
    ]
}

fn verdict_table<'a>(ex: &Explorer, vs: impl Iterator<Item = &'a VerdictRow>) -> String {
    let mut out = String::new();
    for v in vs {
        out.push_str(&evidence(ex, v));
    }
    if out.is_empty() {
        out.push_str("<p class=\"empty\">no verdicts yet</p>");
    }
    out
}

/// One verdict and what it rests on.
fn evidence(ex: &Explorer, v: &VerdictRow) -> String {
    let (what, detail) = match &v.evidence {
        Evidence::Fraud { receipt, proof_len } => {
            let r = &receipt.receipt;
            (
                "Fraud: the receipt under the root failed its audit (one prefill over prompt and output: fingerprints, sampled tokens or token counts did not match)",
                format!(
                    "<dt>receipt</dt><dd><code>{}</code></dd>\
<dt>request</dt><dd><code>{}</code></dd>\
<dt>model</dt><dd><code>{}</code></dd>\
<dt>tokens</dt><dd>{} prompt, {} resumed, {} output</dd>\
<dt>prompt hash</dt><dd><code>{}</code></dd>\
<dt>output hash</dt><dd><code>{}</code></dd>\
<dt>fingerprint hash</dt><dd><code>{}</code></dd>\
<dt>sampling</dt><dd>temperature {}, top_p {}, seed {}</dd>\
<dt>prices /Mtok</dt><dd>{} in, {} out</dd>\
<dt>payer</dt><dd>{}</dd>\
<dt>Merkle path</dt><dd>{} hashes from the leaf to the root</dd>",
                    esc(&receipt.hash().to_string()),
                    esc(&hex::encode(r.request_id)),
                    esc(&r.model.to_string()),
                    r.prompt_tokens,
                    r.resumed_tokens,
                    r.output_tokens,
                    esc(&r.prompt_hash.to_string()),
                    esc(&r.output_hash.to_string()),
                    esc(&r.fingerprint_hash.to_string()),
                    r.sampling.temperature,
                    r.sampling.top_p,
                    r.sampling.seed,
                    amt(r.price_in),
                    amt(r.price_out),
                    account_link(ex, &r.payer),
                    proof_len
                ),
            )
        }
        Evidence::Withheld => (
            "Withheld: the provider left the assigned verifier's on-ledger demand for the leaf's material unanswered past its deadline",
            String::new(),
        ),
        Evidence::Omission => (
            "Omission: a payer's receipt was missing from the provider's receipt roots",
            v.receipt.map_or(String::new(), |r| {
                format!("<dt>receipt</dt><dd><code>{}</code></dd>", esc(&r.to_string()))
            }),
        ),
    };
    let failed_by: Vec<String> = v.failed_by.iter().map(|a| account_link(ex, a)).collect();
    format!(
        "<div class=\"evidence verdict\"><b class=\"bad\">SLASHED</b> {} at block {}: {}\
<dl><dt>provider</dt><dd>{}</dd><dt>leaf</dt><dd>{} of its root for epoch {}</dd>\
<dt>failed by</dt><dd>{}</dd><dt>accuser</dt><dd>{}</dd><dt>confirmer</dt><dd>{}</dd>\
<dt>slashed</dt><dd>{} (bounty {}, refund {}, burned {})</dd>{}\
<dt>transaction</dt><dd><code>{}</code></dd></dl></div>",
        account_link(ex, &v.provider),
        v.height,
        esc(what),
        account_link(ex, &v.provider),
        v.index,
        v.epoch,
        if failed_by.is_empty() {
            "—".into()
        } else {
            failed_by.join(", ")
        },
        account_link(ex, &v.accuser),
        v.confirmer
            .as_ref()
            .map_or("—".into(), |c| account_link(ex, c)),
        amt(v.slashed),
        amt(v.bounty),
        amt(v.refund),
        amt(v.burned),
        detail,
        esc(&v.tx.to_string()),
    )
}

fn audits(ex: &Explorer) -> (String, String) {
    let mut b = String::from("<h1>Audits and verdicts</h1><h2>Verdicts</h2>");
    ex.with_index(|i| {
        b.push_str(&verdict_table(ex, i.verdicts.iter().rev().take(ROWS)));
        b.push_str("<h2>Revealed audits</h2>");
        let rows: Vec<Vec<String>> = i
            .audits
            .iter()
            .rev()
            .take(ROWS)
            .map(|r| audit_row(ex, r))
            .collect();
        b.push_str(&table("audits", AUDIT_HEAD, &rows));
    });
    ("Audits".into(), b)
}

fn receipt(ex: &Explorer, id: &str) -> (String, String) {
    let mut b = String::from("<h1>Receipt</h1>");
    let Some(r) = ex.requests.find(id) else {
        b.push_str(&format!(
            "<p>No answer with request id or receipt <code>{}</code> among those this gateway served recently.</p>",
            esc(id)
        ));
        return ("Receipt".into(), b);
    };
    b.push_str(&table(
        "request",
        REQUEST_HEAD,
        &request_rows(ex, std::slice::from_ref(&r)),
    ));
    b.push_str("<h2>Receipts behind it</h2>");
    let epoch = ex.with_index(|i| i.epoch_at(r.at_ms));
    let rows: Vec<Vec<String>> = r
        .receipts
        .iter()
        .map(|x| {
            let provider = x.provider.parse::<AccountId>().ok();
            let roots = match (provider, epoch) {
                (Some(p), Some(e)) => ex.with_index(|i| {
                    [e, e + 1]
                        .iter()
                        .filter_map(|ep| {
                            i.epochs
                                .get(ep)
                                .and_then(|row| row.roots.iter().find(|rr| rr.provider == p))
                                .map(|rr| {
                                    format!(
                                        "epoch {ep}: root {} ({} receipts)",
                                        &rr.root.to_string()[..12],
                                        rr.receipts
                                    )
                                })
                        })
                        .collect::<Vec<_>>()
                }),
                _ => Vec::new(),
            };
            vec![
                format!("<code class=\"receipt-hash\">{}</code>", esc(&x.receipt)),
                provider.map_or_else(|| esc(&x.provider), |p| account_link(ex, &p)),
                x.completion_tokens.to_string(),
                esc(&x.charged),
                format!(
                    "<span class=\"wrap\">{}</span>",
                    if roots.is_empty() {
                        "not yet under a posted root".to_string()
                    } else {
                        esc(&roots.join("; "))
                    }
                ),
            ]
        })
        .collect();
    b.push_str(&table(
        "receipts",
        &[
            "receipt hash",
            "provider",
            "tokens",
            "charged",
            "committed under",
        ],
        &rows,
    ));
    b.push_str("<p>The provider signed this receipt (model, prompt and output hashes, token counts, seed, prices); it must commit it under its receipt root for the epoch it served in or the next, where audits sample it. The payer can challenge a missing receipt on the ledger.</p>");
    ("Receipt".into(), b)
}

fn key(ex: &Explorer, id: &str) -> (String, String) {
    let rows = ex.requests.by_key(id);
    let tokens_in: u64 = rows.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let tokens_out: u64 = rows.iter().map(|r| u64::from(r.completion_tokens)).sum();
    let charged: u128 = rows
        .iter()
        .flat_map(|r| r.receipts.iter())
        .filter_map(|x| x.charged.parse::<u128>().ok())
        .fold(0, u128::saturating_add);
    let mut b = format!(
        "<h1>API key <code>{}</code></h1><div class=\"cards\">",
        esc(id)
    );
    b.push_str(&card(rows.len(), "answers"));
    b.push_str(&card(tokens_in, "tokens in"));
    b.push_str(&card(tokens_out, "tokens out"));
    b.push_str(&card(charged, "charged (base units)"));
    b.push_str("</div><h2>Answers</h2>");
    let shown: Vec<RequestRow> = rows.into_iter().take(ROWS).collect();
    b.push_str(&table("requests", REQUEST_HEAD, &request_rows(ex, &shown)));
    ("API key".into(), b)
}

/// One line of a coordinator's `rounds.jsonl`.
#[derive(serde::Deserialize)]
struct Round {
    round: u64,
    #[serde(default)]
    accepted: Vec<u64>,
    #[serde(default)]
    refused: Vec<(u64, String)>,
    #[serde(default)]
    missing: Vec<u64>,
    loss_before: Option<f64>,
    heldout_bits_per_byte: f64,
    #[serde(default)]
    delta_bytes: u64,
    #[serde(default)]
    hash: String,
}

/// The most of `rounds.jsonl` read.
const MAX_ROUNDS_BYTES: u64 = 8 << 20;

fn diloco(ex: &Explorer) -> (String, String) {
    let mut b = String::from("<h1>DiLoCo run</h1>");
    let Some(dir) = &ex.cfg.diloco else {
        b.push_str("<p>No DiLoCo run is attached: start the explorer with <code>--diloco RUN_DIR</code> (the coordinator's <code>--out</code> folder).</p>");
        return ("DiLoCo".into(), b);
    };
    let text = std::fs::File::open(dir.join("rounds.jsonl")).and_then(|f| {
        use std::io::Read;
        let mut s = String::new();
        f.take(MAX_ROUNDS_BYTES).read_to_string(&mut s)?;
        Ok(s)
    });
    let rounds: Vec<Round> = match text {
        Ok(t) => t
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let bytes: u64 = rounds.iter().map(|r| r.delta_bytes).sum();
    b.push_str("<div class=\"cards\">");
    b.push_str(&card(rounds.len(), "rounds closed"));
    b.push_str(&card(bytes, "pseudo-gradient bytes"));
    if let Some(last) = rounds.last() {
        b.push_str(&card(
            format!("{:.4}", last.heldout_bits_per_byte),
            "held-out bits per byte",
        ));
    }
    b.push_str("</div>");
    b.push_str(&chart(
        "loss-chart",
        "Held-out loss (bits per byte) by round",
        "round",
        &[
            Series {
                label: "held-out bits per byte".into(),
                points: rounds
                    .iter()
                    .map(|r| (r.round as f64, r.heldout_bits_per_byte))
                    .collect(),
                class: "s0",
            },
            Series {
                label: "islands' training loss at round start".into(),
                points: rounds
                    .iter()
                    .filter_map(|r| r.loss_before.map(|l| (r.round as f64, l)))
                    .collect(),
                class: "s1",
            },
        ],
    ));
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .rev()
        .take(ROWS)
        .map(|r| {
            vec![
                r.round.to_string(),
                esc(&format!("{:?}", r.accepted)),
                esc(&r
                    .refused
                    .iter()
                    .map(|(i, why)| format!("{i}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")),
                esc(&format!("{:?}", r.missing)),
                r.delta_bytes.to_string(),
                format!("{:.4}", r.heldout_bits_per_byte),
                short(&r.hash),
            ]
        })
        .collect();
    b.push_str(&table(
        "rounds",
        &[
            "round",
            "islands in",
            "refused",
            "missing",
            "bytes",
            "held-out bpb",
            "state",
        ],
        &rows,
    ));
    ("DiLoCo".into(), b)
}

fn lookup(ex: &Explorer, q: &str) -> (String, String) {
    let q = q.trim();
    let base = esc(&ex.cfg.base);
    let mut b = String::from("<h1>Look up</h1>");
    let _ = write!(
        b,
        "<form action=\"{base}/lookup\" method=\"get\"><input name=\"q\" value=\"{}\" size=\"70\" aria-label=\"id\"> <button>Look up</button></form>",
        esc(q)
    );
    if q.is_empty() {
        b.push_str("<p>A receipt hash or request id, an API key id (<code>key_…</code>), an account, a transaction id or a block height.</p>");
        return ("Lookup".into(), b);
    }
    let mut found = Vec::new();
    if q.starts_with("key_") {
        found.push(format!(
            "<a href=\"{base}/keys/{}\">usage of API key {}</a>",
            url(q),
            esc(q)
        ));
    }
    if ex.requests.find(q).is_some() {
        found.push(format!(
            "<a href=\"{base}/receipts/{}\">the answer and its receipts</a>",
            url(q)
        ));
    }
    if let Ok(h) = q.parse::<u64>() {
        found.push(format!("<a href=\"{base}/blocks/{h}\">block {h}</a>"));
    }
    if let Ok(a) = q.parse::<AccountId>() {
        let known =
            ex.with_index(|i| i.actors.contains_key(&a)) || account_views(ex).contains_key(&a);
        if known {
            found.push(format!("account {}", account_link(ex, &a)));
        }
    }
    if let Ok(h) = q.parse::<Hash32>() {
        if let Some(tx) = agora_ledger::client::Client::new(&ex.cfg.ledger_url)
            .ok()
            .and_then(|c| c.with_timeout(Duration::from_secs(3)).tx(&h).ok().flatten())
        {
            found.push(format!(
                "transaction in <a href=\"{base}/blocks/{}\">block {}</a>",
                tx.height, tx.height
            ));
        }
        let in_verdict = ex.with_index(|i| i.verdicts.iter().any(|v| v.receipt == Some(h)));
        if in_verdict {
            found.push(format!(
                "<a href=\"{base}/audits\">a verdict on this receipt</a>"
            ));
        }
    }
    if found.is_empty() {
        let _ = write!(b, "<p>Nothing found for <code>{}</code>.</p>", esc(q));
    } else {
        b.push_str("<ul>");
        for f in found {
            let _ = write!(b, "<li>{f}</li>");
        }
        b.push_str("</ul>");
    }
    ("Lookup".into(), b)
}

/// A link under the base (for tests and callers).
pub fn href(ex: &Explorer, rel: &str) -> String {
    link(&format!("{}{rel}", ex.cfg.base), rel)
}
