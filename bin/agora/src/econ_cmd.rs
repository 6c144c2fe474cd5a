//! `agora econ`: the audit rate at which cheating loses money (DESIGN.md, "Economics").
use agora_verify::econ::{self, EconInputs};
use anyhow::Context;
/// What a cheat saves and a caught cheater loses; amounts are integer base units.
#[derive(clap::Args, Debug)]
pub struct EconArgs {
    #[arg(long, help = "Price, base units per million tokens.")]
    pub price_per_mtok: u128,
    #[arg(long, help = "Tokens in one job.", default_value_t = 1_000)]
    pub tokens_per_job: u64,
    #[arg(
        long,
        help = "Share of the job's price a cheat saves (1 = all of it).",
        default_value_t = 1.0
    )]
    pub cost_saved_share: f64,
    #[arg(
        long,
        help = "Base units a cheat saves per job (instead of --cost-saved-share).",
        conflicts_with = "cost_saved_share"
    )]
    pub cheat_saving: Option<u128>,
    #[arg(
        long,
        help = "Slash per fraud, base units [default: 1000 jobs' price]."
    )]
    pub slash: Option<u128>,
    #[arg(
        long,
        help = "The provider's bonded stake: the slash is then what the ledger takes from it, --slash-bps of it (instead of --slash).",
        conflicts_with = "slash"
    )]
    pub stake: Option<u128>,
    #[arg(
        long,
        help = "The ledger's slash share of stake, in basis points (genesis `slash_bps`).",
        default_value_t = agora_ledger::Params::default().slash_bps
    )]
    pub slash_bps: u16,
    #[arg(
        long,
        help = "Escrowed earnings forfeited on fraud, base units [default: one job's price]."
    )]
    pub reward: Option<u128>,
    #[arg(long, help = "Share of verifiers assumed to collude, in [0, 1).", default_value_t = 1.0 / 3.0)]
    pub colluding_share: f64,
    #[arg(
        long,
        help = "The expected loss must exceed the saving this many times.",
        default_value_t = 2.0
    )]
    pub margin: f64,
    #[arg(
        long,
        help = "Most unaudited jobs in flight, for the stake needed.",
        default_value_t = 64
    )]
    pub jobs_in_flight: u64,
}
pub fn run(a: EconArgs) -> anyhow::Result<()> {
    let d = econ::defaults();
    let price = econ::price_per_job(a.price_per_mtok, a.tokens_per_job)
        .context("price per job overflows")?;
    let c = match a.cheat_saving {
        Some(c) => c,
        None => econ::share_of_amount(price, a.cost_saved_share)?,
    };
    // On the ledger a confirmed fraud takes `slash_bps` of the provider's stake.
    let slash = match (a.slash, a.stake) {
        (Some(s), _) => s,
        (None, Some(stake)) => agora_core::Amount::new(stake).bps(a.slash_bps).units(),
        (None, None) => d.slash_for(price).context("slash overflows")?,
    };
    let i = EconInputs {
        price_per_job: price,
        cost_saved_per_job: c,
        reward_at_risk: a.reward.unwrap_or(price),
        slash,
        colluding_share: a.colluding_share,
        margin: a.margin,
    };
    let o = econ::min_audit_probability(&i)?;
    let stake = o
        .stake_needed_for_jobs_in_flight(a.jobs_in_flight)
        .context("stake overflows")?;
    let (floor, ratio) = (
        d.audit_probability_floor,
        econ::deterrence_ratio(&i, d.audit_probability_floor),
    );
    let share = econ::audit_share_of_compute(
        o.min_audit_probability.clamp(floor, 1.0),
        d.audit_cost_over_generation,
    );
    for (k, v) in [
        ("price per job".to_string(), price.to_string()),
        ("cost saved (C)".into(), c.to_string()),
        ("reward at risk (R)".into(), i.reward_at_risk.to_string()),
        ("slash (S)".into(), slash.to_string()),
        (
            "min audit probability".into(),
            format!("{:.6}", o.min_audit_probability),
        ),
        ("feasible".into(), o.feasible.to_string()),
        (format!("loss/gain at p = {floor}"), format!("{ratio:.2}x")),
        (
            "audit share of compute".into(),
            format!("{:.4}%", 100.0 * share),
        ),
        (
            format!("stake for {} jobs in flight", a.jobs_in_flight),
            stake.to_string(),
        ),
    ] {
        println!("{k:<32} {v}");
    }
    println!(
        "{}",
        serde_json::json!({ "price_per_job": price.to_string(), "cost_saved_per_job": c.to_string(), "reward_at_risk": i.reward_at_risk.to_string(), "slash": slash.to_string(), "colluding_share": a.colluding_share, "margin": a.margin, "min_audit_probability": o.min_audit_probability, "feasible": o.feasible, "expected_loss_per_cheat": o.expected_loss_per_cheat, "expected_gain_per_cheat": o.expected_gain_per_cheat, "audit_probability_floor": floor, "deterrence_ratio_at_floor": ratio, "audit_share_of_compute": share, "jobs_in_flight": a.jobs_in_flight, "stake_needed": stake.to_string() })
    );
    Ok(())
}
