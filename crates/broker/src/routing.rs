//! Which providers may serve a request and in what order: the market's auction, narrowed
//! and reordered by the request's `provider` object (`only`, `ignore`, `order`, `sort`,
//! `allow_fallbacks`; `max_price` is already in the bid).

use std::collections::HashMap;

use agora_core::AccountId;
use agora_gateway::{ProviderPrefs, SortBy};
use agora_market::{Bid, Candidate, OfferBook};

/// How many offers the auction ranks before the preferences narrow them.
const WIDE: usize = 64;

/// The candidates for `bid` under `prefs`, best first, at most `k`. `throughput` is the
/// measured output tokens per second by provider (for `sort: throughput`).
pub fn route(
    book: &OfferBook,
    bid: &Bid,
    prefs: &ProviderPrefs,
    throughput: &HashMap<AccountId, f64>,
    now_ms: u64,
    k: usize,
) -> Vec<Candidate> {
    let mut bid = bid.clone();
    bid.exclude.extend(
        prefs
            .ignore
            .iter()
            .filter_map(|p| p.parse::<AccountId>().ok()),
    );
    // A closed list of providers: score each one's offer directly (the auction's top k
    // might not reach them in a large book).
    let closed: Option<Vec<&String>> = match (prefs.only.is_empty(), prefs.allow_fallbacks) {
        (true, true) => None,
        (false, true) => Some(prefs.only.iter().collect()),
        (true, false) => Some(prefs.order.iter().collect()),
        (false, false) => Some(
            prefs
                .order
                .iter()
                .filter(|p| prefs.only.contains(p))
                .collect(),
        ),
    };
    let mut cands: Vec<Candidate> = match closed {
        Some(list) => {
            let mut out: Vec<Candidate> = list
                .into_iter()
                .filter_map(|p| p.parse::<AccountId>().ok())
                .filter_map(|a| {
                    let offer = book.offer(&a, &bid.model)?;
                    let score = book.score(&bid, offer, now_ms)?;
                    Some(Candidate {
                        offer: offer.clone(),
                        score,
                    })
                })
                .collect();
            out.sort_by(|a, b| {
                a.score
                    .total_cmp(&b.score)
                    .then_with(|| a.provider().cmp(&b.provider()))
            });
            out.dedup_by(|a, b| a.provider() == b.provider());
            out
        }
        None => book.auction(&bid, now_ms, WIDE.max(k)),
    };
    cands.retain(|c| prefs.admits(&c.provider().to_string()));
    match prefs.sort {
        None => {}
        Some(SortBy::Price) => {
            let cost = |c: &Candidate| {
                let o = &c.offer.offer;
                o.price_in
                    .units()
                    .saturating_mul(u128::from(bid.expected_prompt_tokens.max(1)))
                    .saturating_add(
                        o.price_out
                            .units()
                            .saturating_mul(u128::from(bid.expected_output_tokens.max(1))),
                    )
            };
            cands.sort_by_key(cost);
        }
        Some(SortBy::Latency) => {
            let key = |c: &Candidate| {
                book.stats(&c.provider())
                    .latency_ms
                    .unwrap_or(f64::INFINITY)
            };
            cands.sort_by(|a, b| key(a).total_cmp(&key(b)));
        }
        Some(SortBy::Throughput) => {
            let key = |c: &Candidate| -throughput.get(&c.provider()).copied().unwrap_or(0.0);
            cands.sort_by(|a, b| key(a).total_cmp(&key(b)));
        }
    }
    if !prefs.order.is_empty() {
        // Stable: the listed providers first, in the list's order; the rest keep theirs.
        let rank = |c: &Candidate| {
            let p = c.provider().to_string();
            prefs
                .order
                .iter()
                .position(|o| *o == p)
                .unwrap_or(usize::MAX)
        };
        cands.sort_by_key(rank);
    }
    cands.truncate(k);
    cands
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_core::{Amount, Hash32, Keypair};
    use agora_market::{Features, Offer, SignedOffer};

    fn offer(seed: u8, price: u128, model: Hash32, now: u64) -> SignedOffer {
        let key = Keypair::from_seed([seed; 32]);
        Offer {
            chain_id: 1,
            provider: key.account(),
            peer_id: vec![1, 2, 3],
            addrs: vec![],
            model,
            model_name: "m".into(),
            context_len: 256,
            price_in: Amount::new(price),
            price_out: Amount::new(price),
            hardware: "cpu".into(),
            region: String::new(),
            capacity: 4,
            features: agora_market::Features::ALL,
            seq: 1,
            issued_ms: now,
            expires_ms: now + 60_000,
        }
        .sign(&key)
    }

    fn book() -> (OfferBook, Bid, Vec<String>, u64) {
        let now = 1_000_000;
        let model = Hash32::of(b"m");
        let mut b = OfferBook::new().with_chain(1);
        let mut ids = Vec::new();
        for (seed, price) in [(1u8, 300u128), (2, 100), (3, 200)] {
            let o = offer(seed, price, model, now);
            ids.push(o.offer.provider.to_string());
            b.insert(o, now).expect("insert");
        }
        (b, Bid::new(model), ids, now)
    }

    fn winners(prefs: &ProviderPrefs) -> Vec<String> {
        let (b, bid, _, now) = book();
        route(&b, &bid, prefs, &HashMap::new(), now, 8)
            .iter()
            .map(|c| c.provider().to_string())
            .collect()
    }

    #[test]
    fn the_chosen_provider_honours_order_only_ignore_and_max_price() {
        let (_, _, ids, _) = book();
        let (p300, p100, p200) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
        // The market alone picks the cheapest.
        assert_eq!(winners(&ProviderPrefs::default())[0], p100);
        // `order` puts the listed ones first, the rest after (fallbacks allowed).
        let w = winners(&ProviderPrefs {
            order: vec![p300.clone(), p200.clone()],
            ..ProviderPrefs::default()
        });
        assert_eq!(w, vec![p300.clone(), p200.clone(), p100.clone()]);
        // Without fallbacks, only the listed ones.
        let w = winners(&ProviderPrefs {
            order: vec![p300.clone()],
            allow_fallbacks: false,
            ..ProviderPrefs::default()
        });
        assert_eq!(w, vec![p300.clone()]);
        // `only` and `ignore`.
        assert_eq!(
            winners(&ProviderPrefs {
                only: vec![p200.clone(), p300.clone()],
                ..ProviderPrefs::default()
            }),
            vec![p200.clone(), p300.clone()]
        );
        assert_eq!(
            winners(&ProviderPrefs {
                ignore: vec![p100.clone()],
                ..ProviderPrefs::default()
            })[0],
            p200
        );
        // max_price is the bid's: an `order`ed provider over it is never chosen.
        let (b, mut bid, _, now) = book();
        bid.max_price_in = Some(Amount::new(250));
        let w: Vec<String> = route(
            &b,
            &bid,
            &ProviderPrefs {
                order: vec![p300.clone()],
                ..ProviderPrefs::default()
            },
            &HashMap::new(),
            now,
            8,
        )
        .iter()
        .map(|c| c.provider().to_string())
        .collect();
        assert!(!w.contains(&p300), "{w:?}");
        assert_eq!(w[0], p100);
    }

    #[test]
    fn sort_by_price_latency_and_throughput() {
        let (mut b, bid, ids, now) = book();
        let prefs = |sort| ProviderPrefs {
            sort: Some(sort),
            ..ProviderPrefs::default()
        };
        let ranked = |b: &OfferBook, t: &HashMap<AccountId, f64>, sort| -> Vec<String> {
            route(b, &bid, &prefs(sort), t, now, 8)
                .iter()
                .map(|c| c.provider().to_string())
                .collect()
        };
        assert_eq!(
            ranked(&b, &HashMap::new(), SortBy::Price),
            vec![ids[1].clone(), ids[2].clone(), ids[0].clone()]
        );
        let acct = |s: &String| s.parse::<AccountId>().expect("id");
        b.record_latency(&acct(&ids[0]), 5.0);
        b.record_latency(&acct(&ids[2]), 50.0);
        assert_eq!(
            ranked(&b, &HashMap::new(), SortBy::Latency),
            vec![ids[0].clone(), ids[2].clone(), ids[1].clone()]
        );
        let t: HashMap<AccountId, f64> = [(acct(&ids[2]), 90.0), (acct(&ids[0]), 10.0)].into();
        assert_eq!(ranked(&b, &t, SortBy::Throughput)[0], ids[2]);
    }

    /// The book of `book()`, except that the cheapest provider's offer serves plain text
    /// only: it would win every auction on price.
    fn book_with_a_plain_provider() -> (OfferBook, Bid, Vec<String>, u64) {
        let (mut b, bid, ids, now) = book();
        let key = Keypair::from_seed([2; 32]);
        let mut o = offer(2, 100, bid.model, now).offer;
        o.features = agora_market::Features::NONE;
        o.seq = 2;
        b.insert(o.sign(&key), now).expect("insert");
        (b, bid, ids, now)
    }

    #[test]
    fn constrained_requests_never_go_to_a_provider_without_the_capability() {
        let (b, bid, ids, now) = book_with_a_plain_provider();
        let plain = ids[1].clone();
        let route_for = |need, prefs: &ProviderPrefs| -> Vec<String> {
            let bid = Bid {
                features: need,
                ..bid.clone()
            };
            route(&b, &bid, prefs, &HashMap::new(), now, 8)
                .iter()
                .map(|c| c.provider().to_string())
                .collect()
        };
        // A plain request: the cheap plain provider wins, as before.
        assert_eq!(
            route_for(Features::NONE, &ProviderPrefs::default())[0],
            plain
        );
        for need in [
            Features::GRAMMAR,
            Features::TOOLS,
            Features::LOGPROBS,
            Features::TOOLS.union(Features::GRAMMAR),
        ] {
            let w = route_for(need, &ProviderPrefs::default());
            assert_eq!(w.len(), 2, "{need:?}: {w:?}");
            assert!(!w.contains(&plain), "{need:?}: {w:?}");
            // Not even when the request puts it first, or names it alone.
            let order = ProviderPrefs {
                order: vec![plain.clone()],
                ..ProviderPrefs::default()
            };
            assert!(!route_for(need, &order).contains(&plain));
            let only = ProviderPrefs {
                only: vec![plain.clone()],
                ..ProviderPrefs::default()
            };
            assert!(route_for(need, &only).is_empty());
            let no_fallback = ProviderPrefs {
                order: vec![plain.clone()],
                allow_fallbacks: false,
                ..ProviderPrefs::default()
            };
            assert!(route_for(need, &no_fallback).is_empty());
        }
    }
}
