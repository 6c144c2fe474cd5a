//! The economics confirmed by simulation: a provider past probation that saves a share C of
//! each answer's price by serving a cheaper model, against the same provider honest, over the
//! same seeds and traffic. It should choose honest with at least a 2x margin: the expected
//! penalty of cheating is at least twice what cheating saves.

use crate::provider::ProviderKind;
use crate::world::{Setup, World};

/// One row: a cost saving and what cheating did to the provider on average.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EconRow {
    /// C: the share of an answer's price cheating saves, ppm.
    pub saving_ppm: u32,
    /// Probability of cheating on an answer, ppm.
    pub cheat_ppm: u32,
    /// Mean saving per run, base units.
    pub mean_saving: f64,
    /// Mean gain of cheating over honest, base units (saving minus penalties).
    pub mean_gain: f64,
    /// Mean penalty / mean saving; at least 2 means cheating is deterred with a 2x margin.
    pub margin: f64,
    /// Runs in which the cheat was caught at least once.
    pub runs_caught: u64,
    /// Runs.
    pub runs: u64,
    /// What `agora econ`'s formula predicts for the margin: p (R + S) / C per cheated answer,
    /// with p the audit floor, S the slash of the bonded stake and R one answer's price.
    pub formula_margin: f64,
}

/// The rows of the table over `seeds`.
pub fn table(seeds: &[u64], threads: usize) -> Vec<EconRow> {
    let mut rows = Vec::new();
    for saving_ppm in [100_000u32, 500_000, 1_000_000] {
        for cheat_ppm in [500_000u32, 1_000_000] {
            // One provider takes all the traffic, so a run holds enough cheats for the 2%
            // audit floor to bite; past probation, as a provider deciding to cheat would be.
            let mut s = Setup {
                warm_start: true,
                providers: vec![(ProviderKind::CheapModel, cheat_ppm)],
                ..Setup::default()
            };
            s.knobs.cheat_saving_ppm = saving_ppm;
            let runs = par(&s, seeds, threads);
            let n = runs.len().max(1) as f64;
            let saving: f64 = runs.iter().map(|r| r.1 as f64).sum::<f64>() / n;
            let runs_caught = runs.iter().filter(|r| r.2).count() as u64;
            let gain: f64 = runs.iter().map(|r| r.0 as f64).sum::<f64>() / n;
            let penalty = saving - gain;
            let margin = if saving > 0.0 {
                penalty / saving
            } else {
                f64::INFINITY
            };
            let p = f64::from(s.params.audit_floor_ppm) / 1e6;
            let stake = s.knobs.provider_stake as f64;
            let slash = stake * f64::from(s.params.slash_bps) / 1e4;
            // One answer: ~26 prompt + ~32 output tokens at the price.
            let price = 58.0 * s.knobs.price_per_mtok as f64 / 1e6;
            let c = price * f64::from(saving_ppm) / 1e6;
            rows.push(EconRow {
                saving_ppm,
                cheat_ppm,
                mean_saving: saving,
                mean_gain: gain,
                margin,
                runs_caught,
                runs: runs.len() as u64,
                formula_margin: p * (price + slash) / c,
            });
        }
    }
    rows
}

/// (gain of the cheating provider over honest, its saving, caught) per seed.
fn par(s: &Setup, seeds: &[u64], threads: usize) -> Vec<(i128, i128, bool)> {
    let threads = threads.clamp(1, seeds.len().max(1));
    let chunk = seeds.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let hs: Vec<_> = seeds
            .chunks(chunk)
            .map(|c| {
                sc.spawn(move || {
                    c.iter()
                        .map(|&seed| {
                            let r = World::new(s, seed).run();
                            (r.attacker_gain, r.saving, r.slashes > 0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}
