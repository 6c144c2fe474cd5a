//! `agora sim`: the deterministic simulation of the trust protocol over many seeds.
use agora_sim::scenario::{summarize, Summary};
use agora_sim::{econ, SCENARIOS};
use anyhow::bail;
use std::time::Instant;

/// Runs each scenario over many seeds and reports attacker profit, honest parties slashed,
/// payer overcharge, conservation and the first violating seed.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Scenarios: honest, overcharge, omit-receipt, withhold-material, \
unstake-before-verdict, frame-honest-provider, provider-outage, nonpaying-payer, sybil-verifiers, lazy-verifier, \
canary-abuse, spam-gossip, cheap-model, mixed, econ, all. A violation prints its seed; replay \
it alone with --seed S (same seed, same final hash). See docs/sim.md."
)]
pub struct SimArgs {
    /// Seeds per scenario (0, 1, ..., N-1).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// Run this one seed only (and print its run in full).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A scenario name, `econ`, or `all` (every scenario but econ).
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 0 even when a scenario has violations.
    #[arg(long)]
    pub no_fail: bool,
    /// With --seed: print every ledger event of the run to stderr.
    #[arg(long, requires = "seed")]
    pub trace: bool,
}

pub fn run(a: SimArgs, threads: usize) -> anyhow::Result<()> {
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (0..a.seeds).collect(),
    };
    if a.scenario == "econ" {
        return econ_table(&seeds, threads, a.json);
    }
    let chosen: Vec<_> = if a.scenario == "all" {
        SCENARIOS.iter().collect()
    } else {
        vec![agora_sim::scenario(&a.scenario)?]
    };
    let started = Instant::now();
    let mut summaries: Vec<Summary> = Vec::new();
    for sc in chosen {
        let runs = if a.trace {
            seeds.iter().map(|&s| sc.trace(s)).collect()
        } else {
            agora_sim::run_seeds(sc, &seeds, threads)
        };
        if a.seed.is_some() && !a.json {
            for r in &runs {
                println!("{}", serde_json::to_string_pretty(r)?);
            }
        }
        summaries.push(summarize(sc, &runs));
    }
    let elapsed = started.elapsed();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "seeds": seeds.len(),
                "seconds": elapsed.as_secs_f64(),
                "scenarios": summaries,
            }))?
        );
    } else {
        print_table(&summaries);
        println!(
            "{} seeds per scenario in {:.1} s on {threads} threads",
            seeds.len(),
            elapsed.as_secs_f64()
        );
    }
    let bad: Vec<&str> = summaries
        .iter()
        .filter(|s| s.violations > 0)
        .map(|s| s.scenario.as_str())
        .collect();
    if !bad.is_empty() && !a.no_fail {
        bail!("invariants violated in: {}", bad.join(", "));
    }
    Ok(())
}

fn print_table(rows: &[Summary]) {
    println!(
        "{:<24} {:>4} {:>12} {:>8} {:>10} {:>9} {:>10}  first violation",
        "scenario", "item", "attacker", "honest", "payer", "conserved", "violations"
    );
    println!(
        "{:<24} {:>4} {:>12} {:>8} {:>10} {:>9} {:>10}",
        "", "", "gain/run", "slashed", "overcharge", "", ""
    );
    for s in rows {
        let first = match (&s.first_violation, &s.first_violation_reason) {
            (Some(seed), Some(why)) => format!("seed {seed}: {why}"),
            _ => "-".into(),
        };
        println!(
            "{:<24} {:>4} {:>12.1} {:>8} {:>10} {:>9} {:>10}  {}",
            s.scenario,
            s.item,
            s.mean_attacker_gain,
            s.honest_slashed,
            s.overcharge,
            if s.conserved { "yes" } else { "NO" },
            s.violations,
            first
        );
        for (k, g) in &s.strategy_gain {
            println!("    {k:<36} mean gain {g:>10.1} units/run");
        }
    }
}

fn econ_table(seeds: &[u64], threads: usize, json: bool) -> anyhow::Result<()> {
    let rows = econ::table(seeds, threads);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "A provider past probation serving a cheaper model vs honest (default ledger parameters)."
    );
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>12} {:>10} {:>14}",
        "saving C", "cheat p", "saving/run", "gain/run", "runs caught", "margin", "agora econ"
    );
    for r in &rows {
        println!(
            "{:>9.0}% {:>9.0}% {:>12.1} {:>12.1} {:>12} {:>9.1}x {:>13.1}x",
            f64::from(r.saving_ppm) / 1e4,
            f64::from(r.cheat_ppm) / 1e4,
            r.mean_saving,
            r.mean_gain,
            format!("{}/{}", r.runs_caught, r.runs),
            r.margin,
            r.formula_margin
        );
    }
    let worst = rows.iter().map(|r| r.margin).fold(f64::INFINITY, f64::min);
    println!("smallest margin {worst:.1}x (wanted at least 2x)");
    if worst < 2.0 {
        bail!("cheating is not deterred with a 2x margin");
    }
    Ok(())
}
