//! The simulation's parts on their own: the modelled audit, links, and that the checks can
//! fail (a check that cannot fail proves nothing).

use agora_core::{Amount, Keypair};
use agora_sim::model;
use agora_sim::net::{LinkSpec, Network};
use agora_verifier::judge::Judgement;
use agora_wire::price::cost_micros;
use agora_wire::protocol::{fingerprint_hash, tokens_hash, Material, Receipt, Sampling};

fn material(model_used: agora_core::Hash32, prompt_tokens: u32, n_shift: u32) -> Material {
    let key = Keypair::from_seed([9; 32]);
    let prompt: Vec<u32> = (0..20).collect();
    let n = model::answer_len(&prompt, 5, 64);
    let output = model::generate(&model_used, &prompt, 5, n + n_shift);
    let fp = model::fingerprint(&model_used, &prompt, &output);
    let price = Amount::new(100_000);
    let receipt = Receipt {
        chain_id: 1,
        epoch: 0,
        request_id: [1; 16],
        provider: key.account(),
        payer: key.account(),
        channel: agora_core::Hash32::ZERO,
        model: model::real_model(),
        prompt_hash: tokens_hash(&prompt),
        output_hash: tokens_hash(&output),
        prompt_tokens,
        resumed_tokens: 0,
        output_tokens: n + n_shift,
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 5,
            ..Default::default()
        },
        fingerprint_hash: fingerprint_hash(&fp),
        price_in: price,
        price_out: price,
        cost_micros: cost_micros(
            price,
            price,
            u64::from(prompt_tokens),
            u64::from(n + n_shift),
        )
        .expect("fits"),
        started_ms: 0,
        finished_ms: 0,
    }
    .sign(&key);
    Material {
        receipt,
        prompt,
        resumed: Vec::new(),
        output,
        fingerprint: fp,
    }
}

#[test]
fn production_judge_with_modelled_replay_passes_honest_and_fails_cheats() {
    let passed = |m: &Material| model::audit(m, 64) == Judgement::Passed;
    let failed = |m: &Material| matches!(model::audit(m, 64), Judgement::Failed(_));
    assert!(passed(&material(model::real_model(), 20, 0)));
    assert!(failed(&material(model::cheap_model(), 20, 0)));
    assert!(failed(&material(model::real_model(), 20, 1)));
    // Charging more prompt tokens than the committed prompt has is a fault.
    assert!(failed(&material(model::real_model(), 80, 0)));
    // Material that is not what the receipt commits to, or a receipt whose signature does
    // not verify, is not a pass.
    let mut tampered = material(model::real_model(), 20, 0);
    tampered.output.push(1);
    assert!(failed(&tampered));
    let mut forged = material(model::real_model(), 20, 0);
    forged.receipt.receipt.output_tokens += 1;
    assert!(failed(&forged), "bad signature");
    // A fingerprint that does not parse is a fault, whatever the tokens.
    let mut garbled = material(model::real_model(), 20, 0);
    garbled.fingerprint = vec![0xff; 5];
    let key = Keypair::from_seed([9; 32]);
    let mut r = garbled.receipt.receipt.clone();
    r.fingerprint_hash = fingerprint_hash(&garbled.fingerprint);
    garbled.receipt = r.sign(&key);
    match model::audit(&garbled, 64) {
        Judgement::Failed(why) => assert!(why.contains("fingerprint"), "{why}"),
        j => panic!("an unparseable fingerprint: {j:?}"),
    }
    // Another chain's receipt, or another provider's, never passes.
    let other_chain = model::judge(2, 64);
    let honest = material(model::real_model(), 20, 0);
    assert!(matches!(
        other_chain.judge(&honest.receipt.receipt.provider, 0, &honest),
        Judgement::Failed(_)
    ));
    let thief = Keypair::from_seed([8; 32]).account();
    assert!(matches!(
        model::judge(1, 64).judge(&thief, 0, &honest),
        Judgement::Failed(_)
    ));
}

#[test]
fn empty_answers_are_honest_answers() {
    let prompt: Vec<u32> = (0..3).collect();
    let zero_seed = (0..10_000u64).find(|&s| model::answer_len(&prompt, s, 4) == 0);
    assert!(zero_seed.is_some(), "some answers are empty");
}

#[test]
fn links_lose_partition_and_crash() {
    let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let mut net = Network::new(names.clone(), LinkSpec::default(), 1);
    assert!(net.transit(0, 1).is_some());
    net.set_cut(1, 0, true);
    assert!(net.transit(0, 1).is_none() && net.transit(1, 0).is_none());
    assert!(net.transit(0, 2).is_some());
    net.set_cut(0, 1, false);
    net.set_up(2, false);
    assert!(net.transit(0, 2).is_none());
    let spec = LinkSpec {
        loss_ppm: 500_000,
        ..LinkSpec::default()
    };
    let mut lossy = Network::new(names, spec, 2);
    let lost = (0..1_000).filter(|_| lossy.transit(0, 1).is_none()).count();
    assert!((400..600).contains(&lost), "{lost}");
}

#[test]
fn the_checks_can_fail() {
    // An honest provider cut off for the whole audit and confirmation window cannot hand over
    // its material: its slash must show up as a violation, never be hidden.
    let mut setup = agora_sim::world::Setup::default();
    setup.faults.outage = Some((1, 2, 40_000));
    let hit = (0..6)
        .map(|seed| agora_sim::world::World::new(&setup, seed).run())
        .find(|r| r.honest_slashed > 0)
        .expect("an unreachable provider is slashed in some run");
    assert!(
        hit.violations
            .iter()
            .any(|v| v.contains("honest provider-1")),
        "{:?}",
        hit.violations
    );
}
