//! Behaviour of offers, the offer book and the auction.

use agora_core::{AccountId, Amount, Hash32, Keypair};
use agora_market::*;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

fn model(name: &str) -> Hash32 {
    Hash32::of(name.as_bytes())
}

fn offer(k: &Keypair, m: Hash32, price_in: u128, price_out: u128) -> Offer {
    Offer {
        chain_id: 7,
        provider: k.account(),
        peer_id: vec![1, 2, 3],
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        model: m,
        model_name: "agora-shakespeare".into(),
        context_len: 2048,
        price_in: Amount::new(price_in),
        price_out: Amount::new(price_out),
        hardware: "cpu-avx2".into(),
        region: "eu".into(),
        capacity: 4,
        features: agora_market::Features::ALL,
        seq: 1,
        issued_ms: NOW,
        expires_ms: NOW + 60_000,
    }
}

fn bid(m: Hash32) -> Bid {
    Bid {
        expected_prompt_tokens: 500,
        expected_output_tokens: 200,
        ..Bid::new(m)
    }
}

fn winners(c: &[Candidate]) -> Vec<AccountId> {
    c.iter().map(Candidate::provider).collect()
}

#[test]
fn signed_offer_round_trips_and_verifies() {
    let k = key(1);
    let s = offer(&k, model("a"), 10, 20).sign(&k);
    assert_eq!(s.verify(), Ok(()));
    let b = s.to_bytes();
    assert_eq!(b.len(), s.encoded_len());
    assert_eq!(SignedOffer::from_bytes(&b), Ok(s.clone()));
    assert_eq!(s.hash(), SignedOffer::from_bytes(&b).unwrap().hash());
    let mut trailing = b.clone();
    trailing.push(0);
    assert!(matches!(
        SignedOffer::from_bytes(&trailing),
        Err(OfferError::Decode(_))
    ));
    assert!(matches!(
        SignedOffer::from_bytes(&vec![0; MAX_OFFER_BYTES + 1]),
        Err(OfferError::TooLarge { .. })
    ));
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("agora-shakespeare"));
    assert_eq!(serde_json::from_str::<SignedOffer>(&json).unwrap(), s);
}

#[test]
fn features_are_signed_fixed_size_and_forward_compatible() {
    let k = key(1);
    let o = offer(&k, model("a"), 10, 20);
    // Claiming a capability after signing breaks the signature.
    let mut s = Offer {
        features: Features::LOGPROBS,
        ..o.clone()
    }
    .sign(&k);
    s.offer.features = Features::ALL;
    assert!(matches!(s.verify(), Err(OfferError::BadSignature { .. })));
    // Four bytes whatever is set.
    let plain = Offer {
        features: Features::NONE,
        ..o.clone()
    }
    .sign(&k);
    assert_eq!(plain.encoded_len(), o.clone().sign(&k).encoded_len());
    // Bits this build does not know are kept and signed, never refused, never required.
    let newer = Offer {
        features: Features(Features::ALL.0 | 1 << 31),
        ..o.clone()
    }
    .sign(&k);
    assert_eq!(newer.verify(), Ok(()));
    assert!(newer.offer.features.contains(Features::ALL));
    assert_eq!(
        newer.offer.features.names(),
        vec!["tools", "grammar", "logprobs"]
    );
    // An offer in the v1 layout (no features) is refused as undecodable, never misread.
    let s = o.sign(&k);
    let mut v1 = s.to_bytes();
    let at = s.encoded_len() - 64 - 3 * 8 - 4;
    v1.drain(at..at + 4);
    assert!(matches!(
        SignedOffer::from_bytes(&v1),
        Err(OfferError::Decode(_))
    ));
}

#[test]
fn forged_and_tampered_offers_are_refused() {
    let k = key(1);
    let m = model("a");
    // Signed by someone else than the provider it names.
    let forged = offer(&k, m, 10, 20).sign(&key(2));
    assert_eq!(
        forged.verify(),
        Err(OfferError::BadSignature {
            provider: k.account()
        })
    );
    // Price lowered after signing.
    let mut tampered = offer(&k, m, 10, 20).sign(&k);
    tampered.offer.price_in = Amount::new(1);
    assert!(matches!(
        tampered.verify(),
        Err(OfferError::BadSignature { .. })
    ));
    // Provider swapped to claim another account's offer.
    let mut stolen = offer(&k, m, 10, 20).sign(&k);
    stolen.offer.provider = key(3).account();
    assert!(matches!(
        stolen.verify(),
        Err(OfferError::BadSignature { .. })
    ));
    // A flipped signature bit.
    let good = offer(&k, m, 10, 20).sign(&k);
    let mut sig = *good.sig.as_bytes();
    sig[5] ^= 1;
    let flipped = SignedOffer {
        offer: good.offer.clone(),
        sig: agora_core::Signature::from_bytes(sig),
    };
    let mut book = OfferBook::new();
    for bad in [forged, tampered, stolen, flipped] {
        assert!(matches!(
            book.insert(bad, NOW),
            Err(OfferError::BadSignature { .. })
        ));
    }
    assert!(book.is_empty());
    assert!(book.auction(&bid(m), NOW, 4).is_empty());
}

#[test]
fn shape_limits_are_enforced() {
    let k = key(1);
    let m = model("a");
    let check = |f: &dyn Fn(&mut Offer)| {
        let mut o = offer(&k, m, 1, 1);
        f(&mut o);
        o.sign(&k).verify()
    };
    assert!(matches!(
        check(&|o| o.peer_id = vec![0; 65]),
        Err(OfferError::PeerIdTooLong { .. })
    ));
    assert!(matches!(
        check(&|o| o.addrs = vec!["/x".into(); 9]),
        Err(OfferError::TooManyAddrs { .. })
    ));
    assert!(matches!(
        check(&|o| o.addrs = vec!["a".repeat(257)]),
        Err(OfferError::FieldTooLong { field: "addr", .. })
    ));
    for bad in ["", "has space", "émoji", &"a".repeat(129)] {
        assert!(matches!(
            check(&|o| o.model_name = bad.to_string()),
            Err(OfferError::BadModelName(_))
        ));
    }
    assert_eq!(
        check(&|o| o.model_name = "org/Model-7B.q4:v1_0".into()),
        Ok(())
    );
    assert!(matches!(
        check(&|o| o.hardware = "h".repeat(65)),
        Err(OfferError::FieldTooLong {
            field: "hardware",
            ..
        })
    ));
    assert!(matches!(
        check(&|o| o.region = "eu\n".into()),
        Err(OfferError::ControlCharacter { field: "region" })
    ));
    assert_eq!(check(&|o| o.capacity = 0), Err(OfferError::ZeroCapacity));
    assert!(matches!(
        check(&|o| o.expires_ms = o.issued_ms),
        Err(OfferError::BadLifetime { .. })
    ));
    assert!(matches!(
        check(&|o| o.expires_ms = o.issued_ms + MAX_OFFER_TTL_MS + 1),
        Err(OfferError::TtlTooLong { .. })
    ));
    assert_eq!(
        check(&|o| o.expires_ms = o.issued_ms + MAX_OFFER_TTL_MS),
        Ok(())
    );
    // The largest valid shape still fits the byte limit.
    let largest = check(&|o| {
        o.peer_id = vec![9; MAX_PEER_ID_BYTES];
        o.addrs = vec!["a".repeat(MAX_ADDR_BYTES); MAX_ADDRS];
        o.model_name = "m".repeat(MAX_MODEL_NAME_BYTES);
        o.hardware = "h".repeat(MAX_LABEL_BYTES);
        o.region = "r".repeat(MAX_LABEL_BYTES);
    });
    assert_eq!(largest, Ok(()));
}

#[test]
fn clock_and_chain_checks_on_insert() {
    let k = key(1);
    let m = model("a");
    let mut book = OfferBook::new().with_chain(7);
    let mut o = offer(&k, m, 1, 1);
    o.chain_id = 8;
    assert_eq!(
        book.insert(o.sign(&k), NOW),
        Err(OfferError::WrongChain {
            expected: 7,
            got: 8
        })
    );
    let o = offer(&k, m, 1, 1);
    assert!(matches!(
        book.insert(o.clone().sign(&k), NOW + 60_000),
        Err(OfferError::Expired { .. })
    ));
    assert!(matches!(
        book.insert(o.clone().sign(&k), NOW - MAX_CLOCK_SKEW_MS - 1),
        Err(OfferError::FromTheFuture { .. })
    ));
    // Slightly in the future is tolerated.
    assert_eq!(book.insert(o.sign(&k), NOW - MAX_CLOCK_SKEW_MS), Ok(()));
    assert_eq!(book.len(), 1);
}

#[test]
fn expired_offer_is_never_chosen_even_before_prune() {
    let (a, b) = (key(1), key(2));
    let m = model("a");
    let mut book = OfferBook::new();
    let mut cheap_short = offer(&a, m, 1, 1);
    cheap_short.expires_ms = NOW + 1_000;
    book.insert(cheap_short.sign(&a), NOW).unwrap();
    book.insert(offer(&b, m, 100, 100).sign(&b), NOW).unwrap();
    assert_eq!(winners(&book.auction(&bid(m), NOW, 4))[0], a.account());
    let later = winners(&book.auction(&bid(m), NOW + 1_000, 4));
    assert_eq!(later, vec![b.account()]);
    assert!(book
        .score(&bid(m), book.offer(&a.account(), &m).unwrap(), NOW + 1_000)
        .is_none());
    assert_eq!(book.len(), 2);
    assert_eq!(book.prune(NOW + 1_000), 1);
    assert_eq!(book.len(), 1);
    assert!(book.offer(&a.account(), &m).is_none());
    assert_eq!(book.prune(NOW + 60_000), 1);
    assert!(book.is_empty());
    assert!(book.models(NOW).is_empty());
}

#[test]
fn replayed_older_seq_is_refused() {
    let k = key(1);
    let m = model("a");
    let mut book = OfferBook::new();
    let mut o1 = offer(&k, m, 50, 50);
    o1.seq = 1;
    o1.expires_ms = NOW + 200_000;
    let old = o1.clone().sign(&k);
    let mut o2 = offer(&k, m, 60, 60);
    o2.seq = 2;
    o2.expires_ms = NOW + 10_000;
    book.insert(old.clone(), NOW).unwrap();
    book.insert(o2.clone().sign(&k), NOW).unwrap();
    assert_eq!(book.len(), 1, "same provider and model replaces");
    assert_eq!(
        book.offer(&k.account(), &m).unwrap().offer.price_in,
        Amount::new(60)
    );
    assert_eq!(
        book.insert(old.clone(), NOW),
        Err(OfferError::StaleSeq { seq: 1, stored: 2 })
    );
    assert_eq!(
        book.insert(o2.clone().sign(&k), NOW),
        Err(OfferError::StaleSeq { seq: 2, stored: 2 })
    );
    // After the newer one expires and is pruned, the older (still unexpired) one can't return.
    assert_eq!(book.prune(NOW + 10_000), 1);
    assert_eq!(
        book.insert(old.clone(), NOW + 10_000),
        Err(OfferError::StaleSeq { seq: 1, stored: 2 })
    );
    // Nor after the provider is removed.
    let mut o3 = offer(&k, m, 70, 70);
    o3.seq = 3;
    o3.issued_ms = NOW + 10_000;
    o3.expires_ms = NOW + 70_000;
    book.insert(o3.sign(&k), NOW + 10_000).unwrap();
    book.remove_provider(&k.account());
    assert!(book.is_empty());
    assert!(matches!(
        book.insert(old, NOW + 10_000),
        Err(OfferError::StaleSeq { .. })
    ));
    // The seq is per model: another model starts afresh.
    let mut other = offer(&k, model("b"), 1, 1);
    other.seq = 1;
    assert_eq!(book.insert(other.sign(&k), NOW), Ok(()));
}

#[test]
fn cheaper_wins_and_over_limit_is_excluded() {
    let m = model("a");
    let mut book = OfferBook::new();
    let keys: Vec<Keypair> = (1..=3).map(key).collect();
    for (k, p) in keys.iter().zip([30u128, 10, 20]) {
        book.insert(offer(k, m, p, p * 2).sign(k), NOW).unwrap();
    }
    let got = book.auction(&bid(m), NOW, 4);
    assert_eq!(
        winners(&got),
        vec![keys[1].account(), keys[2].account(), keys[0].account()]
    );
    assert!(got.windows(2).all(|w| w[0].score <= w[1].score));
    assert_eq!(book.auction(&bid(m), NOW, 1).len(), 1);
    assert!(book.auction(&bid(m), NOW, 0).is_empty());
    assert!(book.auction(&bid(model("none")), NOW, 4).is_empty());

    let limited = Bid {
        max_price_in: Some(Amount::new(20)),
        ..bid(m)
    };
    assert_eq!(
        winners(&book.auction(&limited, NOW, 4)),
        vec![keys[1].account(), keys[2].account()]
    );
    let limited_out = Bid {
        max_price_out: Some(Amount::new(39)),
        ..bid(m)
    };
    assert_eq!(
        winners(&book.auction(&limited_out, NOW, 4)),
        vec![keys[1].account()]
    );
    let nothing = Bid {
        max_price_in: Some(Amount::new(9)),
        ..bid(m)
    };
    assert!(book.auction(&nothing, NOW, 4).is_empty());
}

#[test]
fn prices_beyond_u64_are_compared_exactly() {
    let m = model("a");
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    let huge = u128::from(u64::MAX) + 10;
    book.insert(offer(&a, m, huge, 1).sign(&a), NOW).unwrap();
    // Scores are floats: prices this large must differ by more than 1 part in 2^53 to rank.
    book.insert(offer(&b, m, huge * 2, 1).sign(&b), NOW)
        .unwrap();
    assert_eq!(
        winners(&book.auction(&Bid::new(m), NOW, 4)),
        vec![a.account(), b.account()]
    );
    let capped = Bid {
        max_price_in: Some(Amount::new(huge)),
        ..Bid::new(m)
    };
    assert_eq!(winners(&book.auction(&capped, NOW, 4)), vec![a.account()]);
    let low = Bid {
        max_price_in: Some(Amount::new(huge - 1)),
        ..Bid::new(m)
    };
    assert!(book.auction(&low, NOW, 4).is_empty());
    let mut c = offer(&key(3), m, u128::MAX, u128::MAX);
    c.seq = 1;
    book.insert(c.sign(&key(3)), NOW).unwrap();
    let all = book.auction(&Bid::new(m), NOW, 4);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|c| c.score.is_finite()));
}

#[test]
fn excluded_and_at_capacity_providers_are_skipped() {
    let m = model("a");
    let (a, b, c) = (key(1), key(2), key(3));
    let mut book = OfferBook::new();
    let mut oa = offer(&a, m, 1, 1);
    oa.capacity = 2;
    book.insert(oa.sign(&a), NOW).unwrap();
    book.insert(offer(&b, m, 5, 5).sign(&b), NOW).unwrap();
    book.insert(offer(&c, m, 9, 9).sign(&c), NOW).unwrap();
    let ex = Bid {
        exclude: vec![a.account(), c.account()],
        ..bid(m)
    };
    assert_eq!(winners(&book.auction(&ex, NOW, 4)), vec![b.account()]);

    book.begin_request(&a.account());
    assert_eq!(book.stats(&a.account()).load, 1);
    assert_eq!(winners(&book.auction(&bid(m), NOW, 1)), vec![a.account()]);
    book.begin_request(&a.account());
    let got = winners(&book.auction(&bid(m), NOW, 4));
    assert_eq!(got, vec![b.account(), c.account()], "a is at capacity 2");
    book.end_request(&a.account());
    assert_eq!(winners(&book.auction(&bid(m), NOW, 1)), vec![a.account()]);
    book.end_request(&a.account());
    book.end_request(&a.account());
    assert_eq!(book.stats(&a.account()).load, 0, "saturating");
}

#[test]
fn load_spreads_requests_between_equal_offers() {
    let m = model("a");
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    book.insert(offer(&a, m, 10, 10).sign(&a), NOW).unwrap();
    book.insert(offer(&b, m, 10, 10).sign(&b), NOW).unwrap();
    let first = book.auction(&bid(m), NOW, 1)[0].provider();
    assert_eq!(
        first,
        a.account().min(b.account()),
        "ties go to the smaller id"
    );
    book.begin_request(&first);
    let second = book.auction(&bid(m), NOW, 1)[0].provider();
    assert_ne!(first, second);
}

#[test]
fn failures_demote_and_successes_recover() {
    let m = model("a");
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    book.insert(offer(&a, m, 10, 10).sign(&a), NOW).unwrap();
    book.insert(offer(&b, m, 15, 15).sign(&b), NOW).unwrap();
    assert_eq!(book.auction(&bid(m), NOW, 1)[0].provider(), a.account());
    for _ in 0..3 {
        book.record_failure(&a.account());
    }
    assert_eq!(book.stats(&a.account()).failures, 3);
    assert_eq!(book.auction(&bid(m), NOW, 1)[0].provider(), b.account());
    for _ in 0..10 {
        book.record_success(&a.account());
    }
    assert_eq!(book.stats(&a.account()).successes, 10);
    assert_eq!(book.auction(&bid(m), NOW, 1)[0].provider(), a.account());
    // Many failures sink even a much cheaper provider.
    for _ in 0..30 {
        book.record_failure(&a.account());
    }
    let mut c_offer = offer(&key(3), m, 100, 100);
    c_offer.seq = 1;
    book.insert(c_offer.sign(&key(3)), NOW).unwrap();
    let got = winners(&book.auction(&bid(m), NOW, 4));
    assert_eq!(got.last(), Some(&a.account()));
}

#[test]
fn reputation_can_beat_a_small_price_difference_but_not_a_large_one() {
    let m = model("a");
    let (cheap, trusted) = (key(1), key(2));
    let mut book = OfferBook::new();
    book.insert(offer(&cheap, m, 100, 100).sign(&cheap), NOW)
        .unwrap();
    book.insert(offer(&trusted, m, 110, 110).sign(&trusted), NOW)
        .unwrap();
    assert_eq!(book.auction(&bid(m), NOW, 1)[0].provider(), cheap.account());
    book.set_reputation(&trusted.account(), 0.95);
    assert_eq!(
        book.auction(&bid(m), NOW, 1)[0].provider(),
        trusted.account()
    );
    // Twice the price is too much even for a perfect reputation.
    let mut o = offer(&trusted, m, 200, 200);
    o.seq = 2;
    book.insert(o.sign(&trusted), NOW).unwrap();
    book.set_reputation(&trusted.account(), 7.0);
    assert_eq!(book.stats(&trusted.account()).reputation, 1.0, "clamped");
    assert_eq!(book.auction(&bid(m), NOW, 1)[0].provider(), cheap.account());
    book.set_reputation(&trusted.account(), f64::NAN);
    assert_eq!(
        book.stats(&trusted.account()).reputation,
        1.0,
        "NaN ignored"
    );
    assert_eq!(book.stats(&key(9).account()).reputation, DEFAULT_REPUTATION);
}

#[test]
fn latency_counts_and_unknown_latency_is_neutral() {
    let m = model("a");
    let (fast, slow, fresh) = (key(1), key(2), key(3));
    let mut book = OfferBook::new();
    for k in [&fast, &slow, &fresh] {
        book.insert(offer(k, m, 10, 10).sign(k), NOW).unwrap();
    }
    book.record_latency(&fast.account(), 50.0);
    book.record_latency(&slow.account(), 3_000.0);
    book.record_latency(&slow.account(), f64::NAN);
    assert_eq!(book.stats(&slow.account()).latency_ms, Some(3_000.0));
    let got = winners(&book.auction(&bid(m), NOW, 4));
    assert_eq!(got, vec![fast.account(), fresh.account(), slow.account()]);
    book.record_latency(&slow.account(), 0.0);
    let avg = book.stats(&slow.account()).latency_ms.unwrap();
    assert!((avg - 2_100.0).abs() < 1e-9, "EWMA: {avg}");
}

#[test]
fn free_offers_still_rank_by_service() {
    let m = model("a");
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    book.insert(offer(&a, m, 0, 0).sign(&a), NOW).unwrap();
    book.insert(offer(&b, m, 0, 0).sign(&b), NOW).unwrap();
    let loser = a.account().min(b.account());
    book.record_failure(&loser);
    assert_eq!(
        book.auction(&Bid::new(m), NOW, 1)[0].provider(),
        a.account().max(b.account())
    );
}

#[test]
fn hardware_and_region_filters() {
    let m = model("a");
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    book.insert(offer(&a, m, 1, 1).sign(&a), NOW).unwrap();
    let mut ob = offer(&b, m, 5, 5);
    ob.hardware = "cuda-sm90".into();
    ob.region = "us".into();
    book.insert(ob.sign(&b), NOW).unwrap();
    let hw = Bid {
        hardware: Some("cuda-sm90".into()),
        ..bid(m)
    };
    assert_eq!(winners(&book.auction(&hw, NOW, 4)), vec![b.account()]);
    let region = Bid {
        region: Some("eu".into()),
        ..bid(m)
    };
    assert_eq!(winners(&book.auction(&region, NOW, 4)), vec![a.account()]);
    let none = Bid {
        hardware: Some("cuda-sm90".into()),
        region: Some("eu".into()),
        ..bid(m)
    };
    assert!(book.auction(&none, NOW, 4).is_empty());
}

#[test]
fn resolve_by_name_and_hex_id_and_models_listing() {
    let (x, y) = (model("x"), model("y"));
    let mut book = OfferBook::new();
    // Two ModelIds claim the same name; y has more live offers.
    for (i, m) in [(1u8, x), (2, y), (3, y)] {
        let k = key(i);
        book.insert(offer(&k, m, u128::from(i), 10).sign(&k), NOW)
            .unwrap();
    }
    let mut other = offer(&key(4), x, 1, 1);
    other.model_name = "tiny".into();
    other.context_len = 4096;
    book.insert(other.sign(&key(4)), NOW).unwrap();

    assert_eq!(book.resolve("agora-shakespeare", NOW), Some(y));
    assert_eq!(book.resolve("tiny", NOW), Some(x));
    assert_eq!(book.resolve(&x.to_string(), NOW), Some(x));
    assert_eq!(book.resolve(&model("z").to_string(), NOW), None);
    assert_eq!(book.resolve("nope", NOW), None);
    assert_eq!(book.resolve("agora-shakespeare", NOW + 60_000), None);

    // Tie in live offers: the smaller id wins.
    book.remove_provider(&key(3).account());
    let smaller = x.min(y);
    assert_eq!(book.resolve("agora-shakespeare", NOW), Some(smaller));

    let ms = book.models(NOW);
    assert_eq!(ms.len(), 2);
    let sx = ms.iter().find(|s| s.model == x).unwrap();
    assert_eq!(sx.providers, 2);
    assert_eq!(sx.context_len, 4096);
    assert_eq!(sx.min_price_in, Amount::new(1));
    // Equal counts of names: the smaller name.
    assert_eq!(sx.model_name, "agora-shakespeare");
    let names: Vec<&str> = ms.iter().map(|s| s.model_name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn remove_provider_and_stats_survive() {
    let (a, b) = (key(1), key(2));
    let mut book = OfferBook::new();
    for m in [model("x"), model("y")] {
        book.insert(offer(&a, m, 1, 1).sign(&a), NOW).unwrap();
        book.insert(offer(&b, m, 2, 2).sign(&b), NOW).unwrap();
    }
    book.record_latency(&a.account(), 100.0);
    assert_eq!(book.len(), 4);
    book.remove_provider(&a.account());
    assert_eq!(book.len(), 2);
    assert!(book
        .offers_for(&model("x"))
        .all(|o| o.offer.provider == b.account()));
    assert_eq!(book.stats(&a.account()).latency_ms, Some(100.0));
    book.prune(NOW + 1_000_000);
    assert_eq!(book.stats(&a.account()).latency_ms, Some(100.0));
    assert!(book.is_empty());
}

#[test]
fn large_k_uses_selection_and_matches_small_k() {
    let m = model("a");
    let mut book = OfferBook::new();
    for i in 1..=60u8 {
        let k = key(i);
        let p = u128::from(i % 7) * 10;
        book.insert(offer(&k, m, p, 100 - p).sign(&k), NOW).unwrap();
    }
    let all = book.auction(&bid(m), NOW, 1_000);
    assert_eq!(all.len(), 60);
    let some = book.auction(&bid(m), NOW, 40);
    assert_eq!(winners(&some), winners(&all[..40]));
    let few = book.auction(&bid(m), NOW, 4);
    assert_eq!(winners(&few), winners(&all[..4]));
}

const HARDWARE: [&str; 3] = ["cpu-avx2", "cuda-sm90", "rocm"];
const REGIONS: [&str; 2] = ["eu", "us"];

fn naive(book: &OfferBook, b: &Bid, now: u64, k: usize) -> Vec<(AccountId, f64)> {
    let mut v: Vec<(f64, AccountId)> = book
        .offers_for(&b.model)
        .filter_map(|o| book.score(b, o, now).map(|s| (s, o.offer.provider)))
        .collect();
    v.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    v.into_iter().take(k).map(|(s, p)| (p, s)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn from_bytes_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = SignedOffer::from_bytes(&bytes);
    }

    #[test]
    fn from_bytes_never_panics_on_mutated_offers(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        cut in any::<u16>(),
    ) {
        let k = key(1);
        let mut b = offer(&k, model("a"), 1, 2).sign(&k).to_bytes();
        for (at, v) in edits {
            let i = usize::from(at) % b.len();
            b[i] = v;
        }
        b.truncate(usize::from(cut) % (b.len() + 1));
        if let Ok(s) = SignedOffer::from_bytes(&b) {
            let _ = s.verify();
            let mut book = OfferBook::new();
            let _ = book.insert(s, NOW);
        }
    }

    #[test]
    fn cost_micros_is_exact_or_none(pi in any::<u128>(), po in any::<u128>(), p in any::<u64>(), o in any::<u64>()) {
        let want = u128::from(p).checked_mul(pi)
            .and_then(|a| u128::from(o).checked_mul(po).and_then(|b| a.checked_add(b)));
        prop_assert_eq!(cost_micros(Amount::new(pi), Amount::new(po), p, o), want);
    }

    #[test]
    fn cost_micros_small_values(pi in 0u128..1_000_000, po in 0u128..1_000_000, p in 0u64..1_000_000, o in 0u64..1_000_000) {
        let c = cost_micros(Amount::new(pi), Amount::new(po), p, o).unwrap();
        prop_assert_eq!(c, pi * u128::from(p) + po * u128::from(o));
        prop_assert_eq!(micros_to_amount(c).units(), c / 1_000_000);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn auction_equals_full_sort(
        offers in proptest::collection::vec(
            (0u128..50, 0u128..50, 1u32..4, 0u32..4, 0u64..120_000, proptest::option::of(0u32..3000), 0u8..4, 0u32..101),
            1..40),
        max_in in proptest::option::of(prop_oneof![0u128..50, Just(u128::from(u64::MAX)), Just(1u128 << 72), Just(u128::MAX)]),
        hw in proptest::option::of(0usize..4),
        region in proptest::option::of(0usize..3),
        exclude in proptest::collection::vec(1u8..40, 0..4),
        k in 0usize..50,
        p in 0u64..2000,
        o in 0u64..2000,
    ) {
        let m = model("p");
        let mut book = OfferBook::new();
        for (i, (pi, po, cap, load, life, lat, fails, rep)) in offers.iter().enumerate() {
            let key = key(i as u8 + 1);
            // Some prices beyond u64, to exercise the exact path.
            let big = |p: u128| if p >= 45 { u128::from(u64::MAX) - 2 + (p - 45) * (1 << 70) } else { p };
            let mut of = offer(&key, m, big(*pi), big(*po));
            of.hardware = HARDWARE[i % 3].into();
            of.region = REGIONS[(i / 3) % 2].into();
            of.capacity = *cap;
            of.expires_ms = NOW + 1 + life % 60_000;
            book.insert(of.sign(&key), NOW).unwrap();
            let a = key.account();
            for _ in 0..*load { book.begin_request(&a); }
            if let Some(l) = lat { book.record_latency(&a, f64::from(*l)); }
            for _ in 0..*fails { book.record_failure(&a); }
            book.set_reputation(&a, f64::from(*rep) / 100.0);
        }
        let b = Bid {
            max_price_in: max_in.map(Amount::new),
            expected_prompt_tokens: p,
            expected_output_tokens: o,
            exclude: exclude.iter().map(|i| key(*i).account()).collect(),
            hardware: hw.map(|i| HARDWARE.get(i).unwrap_or(&"none").to_string()),
            region: region.map(|i| REGIONS.get(i).unwrap_or(&"none").to_string()),
            ..Bid::new(m)
        };
        let now = NOW + 20_000;
        let got: Vec<(AccountId, f64)> = book.auction(&b, now, k).iter().map(|c| (c.provider(), c.score)).collect();
        prop_assert_eq!(got, naive(&book, &b, now, k));
    }
}
