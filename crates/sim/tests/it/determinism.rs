//! Same seed, same final hash, bit for bit; different seeds, different runs; the thread count
//! never changes a result.

use agora_sim::{run_seeds, scenario};

#[test]
fn same_seed_same_hash_in_every_scenario() {
    for sc in agora_sim::SCENARIOS {
        for seed in [3, 11] {
            let a = sc.run(seed);
            let b = sc.run(seed);
            assert_eq!(a.hash, b.hash, "{} seed {seed}", sc.name);
            assert_eq!(a.violations, b.violations, "{} seed {seed}", sc.name);
            assert_eq!(a.attacker_gain, b.attacker_gain, "{} seed {seed}", sc.name);
        }
    }
}

#[test]
fn different_seeds_differ() {
    let sc = scenario("mixed").expect("mixed");
    let hashes: std::collections::BTreeSet<String> = (0..12).map(|s| sc.run(s).hash).collect();
    assert_eq!(hashes.len(), 12);
    let honest = scenario("honest").expect("honest");
    assert_ne!(honest.run(1).hash, honest.run(2).hash);
}

#[test]
fn thread_count_does_not_change_results() {
    let sc = scenario("mixed").expect("mixed");
    let seeds: Vec<u64> = (100..116).collect();
    let one: Vec<String> = run_seeds(sc, &seeds, 1)
        .into_iter()
        .map(|r| r.hash)
        .collect();
    let three: Vec<String> = run_seeds(sc, &seeds, 3)
        .into_iter()
        .map(|r| r.hash)
        .collect();
    assert_eq!(one, three);
    let alone: Vec<String> = seeds.iter().map(|&s| sc.run(s).hash).collect();
    assert_eq!(one, alone);
}

#[test]
fn unknown_scenario_names_the_known_ones() {
    let e = scenario("nope").expect_err("no such scenario");
    assert!(e.to_string().contains("mixed"), "{e}");
}
