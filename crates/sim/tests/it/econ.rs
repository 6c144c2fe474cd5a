//! `agora econ` confirmed by simulation: past probation, cheating loses at least twice what
//! it saves at the default parameters.

#[test]
fn cheating_is_deterred_with_a_2x_margin() {
    let seeds: Vec<u64> = (0..60).collect();
    let rows = agora_sim::econ::table(&seeds, 2);
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r.mean_saving > 0.0, "{r:?}");
        assert!(r.runs_caught > 0, "{r:?}");
        assert!(r.margin >= 2.0, "{r:?}");
    }
}
