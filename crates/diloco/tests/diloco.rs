//! DiLoCo end to end on a tiny model: exactness against plain training, the codec's bound and
//! its refusal of malformed bytes, order-independent aggregation, drop-outs, joiners,
//! checkpoint/resume and the honesty checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use agora_diloco::checks::{self, CheckConfig, Refusal};
use agora_diloco::codec::{self, Codec, Delta, ErrorFeedback};
use agora_diloco::data::{self, BatchKey};
use agora_diloco::island::{Contribution, Island, IslandConfig};
use agora_diloco::outer::{self, GlobalState, OuterConfig, Weighted};
use agora_diloco::run::{self, Driver, RoundCollector, RunConfig};
use agora_model::TextTokenizer;
use agora_train::data::{split_holdout, tokenize, Corpus};
use agora_train::trainer::{model_config, TrainSettings, Trainer};
use proptest::prelude::*;

const TEXT: &str = "KING. What say you, lords? Speak, speak.\nLORD. We say the king is good.\n\
QUEEN. And I say so too; the king is good and wise.\nKING. Then we are all agreed.\n\
FOOL. Agreed on what? The king is a fool, and so am I.\nKING. Away with him.\n";

fn setup() -> (TextTokenizer, Corpus) {
    let text = TEXT.repeat(30);
    let (train, val) = split_holdout(&text, 0.1).expect("split");
    let tok = TextTokenizer::train_bpe(std::iter::once(train), 260).expect("tokenizer");
    let corpus = Corpus {
        train: tokenize(&tok, train).expect("t"),
        val: tokenize(&tok, val).expect("v"),
    };
    (tok, corpus)
}

fn trainer(tok: &TextTokenizer) -> Trainer {
    let cfg = model_config(tok.vocab_size(), 1, 32, 4, 2, 64, 32);
    let settings = TrainSettings {
        steps: 100,
        batch_size: 2,
        seq_len: 16,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 2,
        eval_every: 0,
        eval_tokens: 256,
        checkpoint_every: 0,
        seed: 7,
        ..TrainSettings::default()
    };
    Trainer::new(cfg, settings, tok.clone()).expect("trainer")
}

fn run_config(islands: usize, rounds: u64, inner: u64) -> RunConfig {
    RunConfig {
        islands,
        inner_steps: inner,
        rounds,
        run_seed: 11,
        ..RunConfig::default()
    }
}

fn driver(tok: &TextTokenizer, cfg: RunConfig) -> Driver {
    Driver::new(cfg, |_| Ok(trainer(tok))).expect("driver")
}

fn params(t: &Trainer) -> BTreeMap<String, Vec<f32>> {
    t.vars()
        .iter()
        .map(|(k, v)| {
            let x = v.as_tensor().flatten_all().expect("flat").to_vec1::<f32>();
            (k.clone(), x.expect("vec"))
        })
        .collect()
}

fn global_params(g: &GlobalState) -> BTreeMap<String, Vec<f32>> {
    g.tensors
        .iter()
        .map(|(k, p)| (k.clone(), p.values.clone()))
        .collect()
}

/// Plain training over the same batches island 0 draws: rounds × H steps, one AdamW.
fn plain_training(tok: &TextTokenizer, corpus: &Corpus, rounds: u64, inner: u64) -> Trainer {
    let mut t = trainer(tok);
    t.settings.steps = rounds * inner;
    let (b, s) = (t.settings.batch_size, t.settings.seq_len);
    for round in 0..rounds {
        for step in 0..inner {
            let key = BatchKey {
                run_seed: 11,
                round,
                island: 0,
                step,
            };
            let (x, y) = data::batch(corpus, key, b, s, &candle_core::Device::Cpu).expect("batch");
            let lr = t.settings.lr_at(round * inner + step);
            t.train_step_on(&x, &y, lr).expect("step");
        }
    }
    t
}

#[test]
fn one_island_with_outer_lr_1_and_no_momentum_is_plain_training_bit_for_bit() {
    let (tok, corpus) = setup();
    let (rounds, inner) = (3, 4);
    let plain = params(&plain_training(&tok, &corpus, rounds, inner));
    let mut cfg = run_config(1, rounds, inner);
    cfg.outer = OuterConfig {
        lr: 1.0,
        momentum: 0.0,
        nesterov: true,
        lr_islands: None,
    };
    cfg.codec = Codec::Raw;
    let mut d = driver(&tok, cfg.clone());
    d.run(&corpus, |_| BTreeSet::new(), None, |_| {})
        .expect("run");
    assert_eq!(global_params(d.global()), plain, "raw codec must be exact");

    // int8 with error feedback: close, not exact.
    cfg.codec = Codec::default();
    let mut d = driver(&tok, cfg);
    d.run(&corpus, |_| BTreeSet::new(), None, |_| {})
        .expect("run");
    let (mut err, mut norm) = (0f64, 0f64);
    for (k, p) in global_params(d.global()) {
        for (a, b) in p.iter().zip(&plain[&k]) {
            err = err.max((a - b).abs() as f64);
            norm = norm.max(b.abs() as f64);
        }
    }
    assert!(
        err > 0.0 && err < 2e-3 * norm,
        "max error {err} (max |w| {norm})"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every decoded element is within s/2 of the input (s its block's scale), up to the
    /// rounding of one f64 division; the raw codec is exact.
    #[test]
    fn int8_round_trip_error_is_within_half_a_scale(
        values in prop::collection::vec(prop_oneof![-1e3f64..1e3, -1e-6f64..1e-6, Just(0.0)], 0..700),
        block in 1u32..300,
    ) {
        let delta: Delta = [("a.weight".to_string(), values.clone()), ("b".to_string(), values.iter().map(|x| x * 0.5).collect())].into();
        let bytes = codec::encode(&delta, Codec::Int8 { block }).expect("encode");
        let back = codec::decode(&bytes).expect("decode");
        prop_assert_eq!(back.len(), 2);
        for (name, x) in &delta {
            let y = &back[name];
            prop_assert_eq!(x.len(), y.len());
            for (xb, yb) in x.chunks(block as usize).zip(y.chunks(block as usize)) {
                let s = codec::block_scale(xb).expect("scale") as f64;
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= s / 2.0 + a.abs() * 1e-15, "{a} -> {b}, scale {s}");
                }
            }
        }
        let raw = codec::decode(&codec::encode(&delta, Codec::Raw).expect("raw")).expect("raw back");
        prop_assert_eq!(raw, delta);
    }

    /// Arbitrary bytes, and any corruption of a valid payload, decode to an error or a value,
    /// never a panic.
    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), flip in 0usize..400, bit in 0u8..8) {
        let _ = codec::decode(&bytes);
        let _ = GlobalState::from_bytes(&bytes);
        let _ = Contribution::from_bytes(&bytes);
        let delta: Delta = [("w".to_string(), vec![0.5, -0.25, 3.0, 1e-3, 0.0])].into();
        let mut good = codec::encode(&delta, Codec::Int8 { block: 2 }).expect("encode");
        let i = flip % good.len();
        good[i] ^= 1 << bit;
        let _ = codec::decode(&good);
    }
}

#[test]
fn malformed_payloads_are_refused_with_an_error() {
    let delta: Delta = [
        ("a".to_string(), vec![1.0, -2.0, 3.0]),
        ("b".to_string(), vec![0.5; 5]),
    ]
    .into();
    // On the wire deltas are deflated: a cut stream never inflates into a delta.
    let packed = codec::encode(&delta, Codec::Int8 { block: 2 }).expect("encode");
    assert_eq!(codec::decode(&packed).expect("decodes"), {
        codec::decode(&codec::encode_plain(&delta, Codec::Int8 { block: 2 }).expect("plain"))
            .expect("plain decodes")
    });
    for cut in 0..packed.len() {
        assert!(
            codec::decode(&packed[..cut]).is_err(),
            "deflated, truncated at {cut}"
        );
    }
    // The format itself, before deflate.
    let good = codec::encode_plain(&delta, Codec::Int8 { block: 2 }).expect("encode");
    assert!(codec::decode(&good).is_ok());
    for cut in 0..good.len() {
        assert!(codec::decode(&good[..cut]).is_err(), "truncated at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(codec::decode(&trailing).is_err(), "trailing byte");
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(codec::decode(&magic).is_err(), "magic");
    let mut version = good.clone();
    version[4] = 9;
    assert!(codec::decode(&version).is_err(), "version");
    // The last byte is the last int8 code of `b`: -128 is outside the code range.
    let mut code = good.clone();
    let last = code.len() - 1;
    code[last] = 0x80;
    let err = codec::decode(&code).expect_err("code -128");
    assert!(err.to_string().contains("-128"), "{err}");
    // A NaN scale: the first scale of `b` follows its name, len, tag, block and length.
    let mut nan = good.clone();
    let at = nan.windows(1).rposition(|w| w == b"b").expect("name b") + 1 + 8 + 1 + 4 + 4;
    nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(codec::decode(&nan).is_err(), "NaN scale");
    // Names out of order are refused.
    let swapped: Delta = [("a".to_string(), vec![1.0])].into();
    let one = codec::encode_plain(&swapped, Codec::Raw).expect("encode");
    let mut two = one.clone();
    two[6] = 2; // tensor count 2, then the same tensor twice
    two.extend_from_slice(&one[10..]);
    let err = codec::decode(&two).expect_err("repeated name");
    assert!(err.to_string().contains("out of order"), "{err}");
    // Non-finite deltas cannot be encoded.
    let bad: Delta = [("a".to_string(), vec![f64::NAN])].into();
    assert!(codec::encode(&bad, Codec::default()).is_err());
    assert!(codec::encode(&delta, Codec::Int8 { block: 0 }).is_err());
}

#[test]
fn error_feedback_carries_what_int8_dropped_into_the_next_round() {
    let x: Vec<f64> = (0..256)
        .map(|i| ((i * 37 % 101) as f64 - 50.0) * 1e-3)
        .collect();
    let delta: Delta = [("w".to_string(), x.clone())].into();
    let mut fb = ErrorFeedback::default();
    let mut sent = vec![0f64; x.len()];
    let rounds = 20;
    for _ in 0..rounds {
        let back = codec::decode(
            &fb.encode(&delta, Codec::Int8 { block: 64 })
                .expect("encode"),
        )
        .expect("decode");
        for (s, b) in sent.iter_mut().zip(&back["w"]) {
            *s += b;
        }
    }
    // Sum sent = rounds·x − residual, so the mean error shrinks like 1/rounds.
    for ((s, x), r) in sent.iter().zip(&x).zip(&fb.residual["w"]) {
        assert!((s - rounds as f64 * x + r).abs() < 1e-12);
        assert!((s / rounds as f64 - x).abs() <= 0.05 / 127.0 / rounds as f64 * 1.01);
    }
    let restored = ErrorFeedback::from_bytes(&fb.to_bytes().expect("bytes")).expect("restore");
    assert_eq!(restored, fb);
}

fn random_state(seed: u64) -> (GlobalState, Vec<Delta>) {
    let mut rng = agora_model::init::SeededRng::new(seed);
    let mut w = HashMap::new();
    for (name, shape) in [("b.weight", vec![3usize, 5]), ("a.bias", vec![7])] {
        let n: usize = shape.iter().product();
        let t =
            candle_core::Tensor::from_vec(rng.normals(n, 0.1), shape, &candle_core::Device::Cpu)
                .expect("tensor");
        w.insert(name.to_string(), t);
    }
    let g = GlobalState::from_weights(&w).expect("state");
    let deltas = (0..5)
        .map(|_| {
            g.tensors
                .iter()
                .map(|(k, p)| {
                    let v = rng
                        .normals(p.values.len(), 1e-2)
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    (k.clone(), v)
                })
                .collect()
        })
        .collect();
    (g, deltas)
}

#[test]
fn aggregation_does_not_depend_on_arrival_order() {
    let (g, deltas) = random_state(3);
    let cfg = OuterConfig::default();
    let inputs: Vec<Weighted<'_>> = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| Weighted {
            island: (i as u64) * 7 % 5,
            tokens: 100 + 37 * i as u64,
            delta: d,
        })
        .collect();
    let mut hashes = BTreeSet::new();
    for rot in 0..inputs.len() {
        for rev in [false, true] {
            let mut order = inputs.clone();
            order.rotate_left(rot);
            if rev {
                order.reverse();
            }
            let mut s = g.clone();
            outer::aggregate(&mut s, &order, &cfg).expect("aggregate");
            outer::aggregate(&mut s, &order, &cfg).expect("twice, with momentum");
            hashes.insert(s.hash().expect("hash"));
        }
    }
    assert_eq!(hashes.len(), 1);
    // The state blob round-trips and is content-addressed by its hash.
    let mut s = g.clone();
    outer::aggregate(&mut s, &inputs, &cfg).expect("aggregate");
    let h = s.hash().expect("hash");
    let blob = s.to_bytes().expect("blob");
    assert_eq!(GlobalState::from_blob(h, &blob).expect("blob"), s);
    assert!(GlobalState::from_blob(g.hash().expect("h"), &blob).is_err());
    // A duplicate island is an error; no contribution moves by momentum only.
    let dup = [inputs[0], inputs[0]];
    assert!(outer::aggregate(&mut g.clone(), &dup, &cfg).is_err());
    let mut idle = s.clone();
    outer::aggregate(&mut idle, &[], &cfg).expect("empty round");
    assert_eq!(idle.round, s.round + 1);
    for (k, p) in &idle.tensors {
        for (i, (&m, &m0)) in p.momentum.iter().zip(&s.tensors[k].momentum).enumerate() {
            assert_eq!(m, (0.9 * m0 as f64) as f32);
            let want = (s.tensors[k].values[i] as f64 - 0.7 * 0.9 * m as f64) as f32;
            assert!((p.values[i] - want).abs() <= 1e-7);
        }
    }
}

#[test]
fn the_outer_lr_scales_with_the_square_root_of_participation() {
    let (g, deltas) = random_state(4);
    let inputs: Vec<Weighted<'_>> = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| Weighted {
            island: i as u64,
            tokens: 64,
            delta: d,
        })
        .collect();
    let plain = |lr: f64| OuterConfig {
        lr,
        ..OuterConfig::default()
    };
    let scaled = OuterConfig {
        lr_islands: Some(4),
        ..plain(1.2)
    };
    let after = |inputs: &[Weighted<'_>], cfg: &OuterConfig| {
        let mut s = g.clone();
        outer::aggregate(&mut s, inputs, cfg).expect("aggregate");
        outer::aggregate(&mut s, inputs, cfg).expect("again, with momentum");
        s
    };
    // Two of four: the step of lr·sqrt(1/2), bit for bit.
    let two = &inputs[..2];
    assert_eq!(after(two, &scaled), after(two, &plain(1.2 * 0.5f64.sqrt())));
    assert_ne!(after(two, &scaled), after(two, &plain(1.2)));
    // All four (or more), or an empty round (momentum only): the configured lr.
    assert_eq!(
        after(&inputs[..4], &scaled),
        after(&inputs[..4], &plain(1.2))
    );
    assert_eq!(after(&inputs, &scaled), after(&inputs, &plain(1.2)));
    assert_eq!(after(&[], &scaled), after(&[], &plain(1.2)));
    // An unset field stays out of the JSON, so run ids made before it existed stand.
    let json = serde_json::to_string(&plain(0.7)).expect("json");
    assert!(!json.contains("lr_islands"), "{json}");
    let back: OuterConfig = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, plain(0.7));
}

#[test]
fn a_dropped_island_resyncs_and_everyone_agrees() {
    let (tok, corpus) = setup();
    let mut d = driver(&tok, run_config(3, 3, 3));
    let r0 = d.run_round(&corpus, &BTreeSet::new()).expect("round 0");
    assert_eq!(r0.accepted, vec![0, 1, 2], "{:?}", r0.refused);
    // Island 2 is killed in round 1: the survivors close the round and agree.
    let r1 = d.run_round(&corpus, &[2].into()).expect("round 1");
    assert_eq!(r1.accepted, vec![0, 1]);
    for i in 0..3 {
        assert_eq!(d.view(i).expect("view").hash().expect("h"), r1.hash);
        assert_eq!(d.islands()[i].synced(), Some(r1.hash));
    }
    let r2 = d.run_round(&corpus, &BTreeSet::new()).expect("round 2");
    assert_eq!(r2.accepted, vec![0, 1, 2]);
    assert!(r2.mean_loss_before < r0.mean_loss_before);
}

#[test]
fn a_late_reveal_is_refused_and_the_round_closes_at_quorum_or_deadline() {
    let (tok, corpus) = setup();
    let d = driver(&tok, run_config(3, 1, 2));
    let global = d.global().clone();
    let base = global.hash().expect("hash");
    let mut islands: Vec<Island> = (0..3)
        .map(|i| {
            let cfg = IslandConfig {
                run_seed: 11,
                inner_steps: 2,
                ..IslandConfig::default()
            };
            Island::new(i, trainer(&tok), cfg).expect("island")
        })
        .collect();
    let cs: Vec<Contribution> = islands
        .iter_mut()
        .map(|i| i.train_round(&corpus, &global).expect("train"))
        .collect();
    // Contributions travel as borsh bytes.
    let wire = cs[0].to_bytes().expect("bytes");
    assert_eq!(Contribution::from_bytes(&wire).expect("parse"), cs[0]);
    assert!(Contribution::from_bytes(&wire[..wire.len() - 1]).is_err());
    let mut col = RoundCollector::new(0, base, 2, 1_000);
    for c in &cs {
        col.commit(c.island, c.commitment).expect("commit");
    }
    assert_eq!(
        col.reveal(cs[0].clone(), 5),
        Err(Refusal::Uncommitted),
        "reveal before the commit phase ends"
    );
    col.close_commits();
    assert_eq!(col.commit(9, [0; 32]), Err(Refusal::Late));
    let mut forged = cs[1].clone();
    forged.payload[40] ^= 1;
    assert_eq!(col.reveal(forged, 5), Err(Refusal::CommitmentMismatch));
    col.reveal(cs[0].clone(), 5).expect("reveal 0");
    assert!(!col.is_closed(10));
    col.reveal(cs[1].clone(), 10).expect("reveal 1");
    assert!(col.is_closed(10), "quorum of 2");
    assert_eq!(col.reveal(cs[2].clone(), 11), Err(Refusal::Late));
    let closed = col.close();
    assert_eq!(closed.len(), 2);
    let screened =
        run::screen_round(&global, closed, &CheckConfig::default(), None).expect("screen");
    assert_eq!(screened.accepted.len(), 2);
    let next =
        run::aggregate_round(&global, &screened.accepted, &OuterConfig::default()).expect("agg");
    // The late island fetches the blob and resyncs.
    let hash = next.hash().expect("hash");
    let fetched = GlobalState::from_blob(hash, &next.to_bytes().expect("blob")).expect("fetch");
    islands[2].apply(&fetched).expect("resync");
    assert_eq!(islands[2].synced(), Some(hash));
    run::verify_state(&fetched, hash).expect("verify");
    // A deadline closes a round without a quorum.
    let col = RoundCollector::new(1, hash, 3, 1_000);
    assert!(!col.is_closed(999) && col.is_closed(1_000));
}

#[test]
fn a_joiner_catches_up() {
    let (tok, corpus) = setup();
    let mut d = driver(&tok, run_config(2, 4, 2));
    d.run_round(&corpus, &BTreeSet::new()).expect("round 0");
    let id = d.join(trainer(&tok)).expect("join");
    assert_eq!(
        d.islands()[id as usize].synced(),
        Some(d.global().hash().expect("h"))
    );
    let r1 = d.run_round(&corpus, &BTreeSet::new()).expect("round 1");
    assert_eq!(
        r1.accepted,
        vec![0, 1],
        "the joiner sits its first round out"
    );
    let r2 = d.run_round(&corpus, &BTreeSet::new()).expect("round 2");
    assert_eq!(r2.accepted, vec![0, 1, 2], "{:?}", r2.refused);
    for i in 0..3 {
        assert_eq!(d.islands()[i].synced(), Some(r2.hash));
    }
}

#[test]
fn checkpoint_then_resume_matches_an_uninterrupted_run() {
    let (tok, corpus) = setup();
    let cfg = run_config(2, 4, 2);
    let mut whole = driver(&tok, cfg.clone());
    whole
        .run(&corpus, |_| BTreeSet::new(), None, |_| {})
        .expect("run");
    let dir = tempfile::tempdir().expect("tmp");
    let mut first = driver(&tok, cfg);
    first.run_round(&corpus, &BTreeSet::new()).expect("r0");
    first.run_round(&corpus, &BTreeSet::new()).expect("r1");
    first.checkpoint(dir.path()).expect("checkpoint");
    drop(first);
    let mut resumed = Driver::resume(dir.path()).expect("resume");
    assert_eq!(resumed.global().round, 2);
    resumed
        .run(&corpus, |_| BTreeSet::new(), None, |_| {})
        .expect("rest");
    assert_eq!(
        resumed.global().hash().expect("a"),
        whole.global().hash().expect("b")
    );
    // The final model exports for serving and loads back.
    let out = dir.path().join("export");
    resumed
        .export(&out, "diloco-test", None, &[])
        .expect("export");
    assert!(out.join("model.safetensors").exists() || out.join("manifest.json").exists());
}

#[test]
fn checks_refuse_a_scaled_up_and_a_sign_flipped_delta() {
    let (tok, corpus) = setup();
    let d = driver(&tok, run_config(4, 1, 3));
    let global = d.global().clone();
    let cfg = IslandConfig {
        run_seed: 11,
        inner_steps: 3,
        ..IslandConfig::default()
    };
    let mut honest: Vec<Contribution> = (0..4)
        .map(|i| {
            let mut island = Island::new(i, trainer(&tok), cfg.clone()).expect("island");
            island.train_round(&corpus, &global).expect("train")
        })
        .collect();
    let screened =
        run::screen_round(&global, honest.clone(), &CheckConfig::default(), None).expect("screen");
    assert!(screened.refused.is_empty(), "{:?}", screened.refused);
    let tamper = |c: &mut Contribution, f: f64| {
        let mut d = codec::decode(&c.payload).expect("decode");
        for v in d.values_mut().flatten() {
            *v *= f;
        }
        c.payload = codec::encode(&d, Codec::default()).expect("encode");
        c.commitment = codec::commitment(&c.payload);
    };
    tamper(&mut honest[1], 100.0);
    tamper(&mut honest[3], -1.0);
    let screened =
        run::screen_round(&global, honest.clone(), &CheckConfig::default(), None).expect("screen");
    let accepted: Vec<u64> = screened.accepted.iter().map(|(c, _)| c.island).collect();
    assert_eq!(accepted, vec![0, 2], "{:?}", screened.refused);
    assert!(
        matches!(screened.refused[0], (1, Refusal::NormOutlier { ratio, .. }) if ratio > 50.0),
        "{:?}",
        screened.refused
    );
    assert!(
        matches!(screened.refused[1], (3, Refusal::Direction { cosine, .. }) if cosine < 0.0),
        "{:?}",
        screened.refused
    );
    println!("{}", screened.refused[1].1);
    // A verifier recomputing the losses catches the flipped delta's false claim too.
    let mut verifier = Island::new(9, trainer(&tok), cfg).expect("verifier");
    let flipped = codec::decode(&honest[3].payload).expect("decode");
    let r = checks::verify_losses(
        &mut verifier,
        &corpus,
        &global,
        &honest[3],
        &flipped,
        &CheckConfig::default(),
    )
    .expect("verify");
    assert!(matches!(r, Some(Refusal::LossMismatch { .. })), "{r:?}");
    let mut fresh = honest[3].clone();
    (fresh.loss_before, fresh.loss_after) = verifier
        .check_losses(&corpus, &global, 3, &flipped)
        .expect("losses");
    let r = checks::verify_losses(
        &mut verifier,
        &corpus,
        &global,
        &fresh,
        &flipped,
        &CheckConfig::default(),
    )
    .expect("verify");
    assert!(
        matches!(r, Some(Refusal::LossNotImproved { before, after }) if after > before),
        "{r:?}"
    );
    let honest0 = codec::decode(&honest[0].payload).expect("decode");
    let r = checks::verify_losses(
        &mut verifier,
        &corpus,
        &global,
        &honest[0],
        &honest0,
        &CheckConfig::default(),
    )
    .expect("verify");
    assert_eq!(r, None, "an honest claim is recomputed exactly");
}
