//! The economics that keep sampled audits honest.
//!
//! A provider that cheats on a job (smaller model, skipped work, truncated answer) saves a cost
//! C. The job is audited with probability p, and an audit by an honest verifier catches the
//! fraud; a colluding share r of verifiers waves it through, so a cheat is caught with
//! probability p(1 - r). When caught, the provider loses the slash S and its escrowed rewards R
//! (one epoch's earnings, forfeited on fraud). Cheating does not pay when
//! p(1 - r)(R + S) > C; Agora keeps a margin m (2 by default) and requires
//! p(1 - r)(R + S) > m·C, strictly. The provider's stake must cover S for every unaudited
//! job it can have in flight, or a burst of cheats could outrun the slash.
//!
//! Amounts are integer base units (`u128`) and every integer step is checked; only
//! probabilities, shares and the expected values derived from them are `f64`.

use thiserror::Error;

/// Micro-units per unit: prices are quoted per million tokens and shares are applied in
/// parts per million, so both conversions are exact integer arithmetic.
const MILLION: u128 = 1_000_000;

/// One economic scenario: what a cheat saves and what a caught cheater loses. Kept as plain
/// numbers so the CLI, the tests and the ledger's parameters can all feed the same check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EconInputs {
    /// What the job pays, in base units; lets reports express C, R and S in jobs' prices.
    pub price_per_job: u128,
    /// C: the cost a cheat saves on one job, in base units (at worst the whole price).
    pub cost_saved_per_job: u128,
    /// R: escrowed earnings forfeited when a fraud is confirmed, in base units.
    pub reward_at_risk: u128,
    /// S: stake slashed per confirmed fraud, in base units.
    pub slash: u128,
    /// r in [0, 1): the share of verifiers assumed to collude with the cheater.
    pub colluding_share: f64,
    /// m >= 1: how many times the expected loss must exceed the saving (2 by default).
    pub margin: f64,
}

/// What the check says about one [`EconInputs`]: the audit rate that deters cheating and the
/// expected values at that rate, so operators see the margin rather than a bare yes or no.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EconOutcome {
    /// The smallest `f64` p with p(1 - r)(R + S) > m·C (strict, as [`deters`] evaluates it);
    /// always > 0. Above 1 (possibly infinite) means no audit rate can deter the cheat.
    pub min_audit_probability: f64,
    /// Whether some audit probability in (0, 1] deters the cheat.
    pub feasible: bool,
    /// p(1 - r)(R + S) at p = min(min_audit_probability, 1): what a cheat is expected to cost
    /// the cheater, in base units.
    pub expected_loss_per_cheat: f64,
    /// C: what a cheat saves, in base units (saved whether or not it is caught).
    pub expected_gain_per_cheat: f64,
    /// S, kept so the stake requirement can be derived from the outcome.
    pub slash: u128,
}

impl EconOutcome {
    /// Stake the provider must hold so that S can be taken for each of `unaudited_jobs_in_flight`
    /// jobs; `None` on overflow. Without it, cheating on many jobs at once outruns the slash.
    pub fn stake_needed_for_jobs_in_flight(&self, unaudited_jobs_in_flight: u64) -> Option<u128> {
        stake_needed(self.slash, unaudited_jobs_in_flight)
    }
}

/// Why an economic scenario was rejected: each variant names the input to fix, because a
/// silently clamped parameter would make the network look safer than it is.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum EconError {
    /// r must be in [0, 1): at r = 1 no cheat is ever caught.
    #[error("colluding share must be in [0, 1), got {0}")]
    ColludingShare(f64),
    /// m must be finite and at least 1: below 1 the check would accept losing trades.
    #[error("margin must be a finite number of at least 1, got {0}")]
    Margin(f64),
    /// R + S = 0: a caught cheater would lose nothing, so no audit rate deters.
    #[error("slash and reward at risk are both zero: a caught cheater would lose nothing")]
    NothingAtRisk,
    /// A share of an amount must be finite and non-negative.
    #[error("share must be a finite number of at least 0, got {0}")]
    Share(f64),
    /// An integer amount did not fit in a `u128`.
    #[error("{0} overflows u128 base units")]
    Overflow(&'static str),
}

/// Checks the inputs and finds the audit probability that deters the cheat with the margin.
/// Rejects r outside [0, 1), m < 1 or not finite, R = S = 0, and R + S overflowing `u128`.
pub fn min_audit_probability(inputs: &EconInputs) -> Result<EconOutcome, EconError> {
    let at_risk = validate(inputs)?;
    let need = inputs.margin * inputs.cost_saved_per_job as f64;
    let p = smallest_deterring(at_risk, need);
    let feasible = p <= 1.0;
    Ok(EconOutcome {
        min_audit_probability: p,
        feasible,
        expected_loss_per_cheat: p.min(1.0) * at_risk,
        expected_gain_per_cheat: inputs.cost_saved_per_job as f64,
        slash: inputs.slash,
    })
}

/// Whether audit probability `p` deters the cheat: p(1 - r)(R + S) > m·C, strictly (at equality
/// the cheater is indifferent, which is not deterrence). False for invalid inputs.
pub fn deters(inputs: &EconInputs, p: f64) -> bool {
    match validate(inputs) {
        Ok(at_risk) => p * at_risk > inputs.margin * inputs.cost_saved_per_job as f64,
        Err(_) => false,
    }
}

/// p(1 - r)(R + S) / C: how many times the expected loss exceeds the saving at audit rate `p`,
/// so an operator sees the margin actually achieved (infinite when C = 0, NaN when invalid).
pub fn deterrence_ratio(inputs: &EconInputs, p: f64) -> f64 {
    match validate(inputs) {
        Ok(at_risk) => p * at_risk / inputs.cost_saved_per_job as f64,
        Err(_) => f64::NAN,
    }
}

/// S times the most unaudited jobs in flight, checked: the stake a provider must bond so every
/// fraud it could have outstanding can still be slashed in full. `None` on overflow.
pub fn stake_needed(slash: u128, unaudited_jobs_in_flight: u64) -> Option<u128> {
    slash.checked_mul(u128::from(unaudited_jobs_in_flight))
}

/// Share of the network's compute spent on audits, p·a / (1 + p·a), where `a` is an audit's cost
/// over the generation it checks: the price of honesty the design caps at 1%. `p` is clamped to
/// [0, 1] and `a` to [0, ∞); NaN propagates.
pub fn audit_share_of_compute(p: f64, audit_cost_over_generation: f64) -> f64 {
    let load = p.clamp(0.0, 1.0) * audit_cost_over_generation.max(0.0);
    load / (1.0 + load)
}

/// Probability that at least one of `cheated_jobs` cheats is caught, 1 - (1 - p·d)^n, where a
/// single audit catches the fraud with probability `d`: why persistent cheaters are caught
/// even at a low audit rate. `p` and `d` are clamped to [0, 1]; NaN propagates.
pub fn detection_probability(p: f64, per_audit_detection: f64, cheated_jobs: u64) -> f64 {
    if cheated_jobs == 0 {
        return 0.0;
    }
    let q = p.clamp(0.0, 1.0) * per_audit_detection.clamp(0.0, 1.0);
    if q >= 1.0 {
        return 1.0;
    }
    // 1 - (1 - q)^n, computed without cancellation for small q.
    -(cheated_jobs as f64 * (-q).ln_1p()).exp_m1()
}

/// What a job of `tokens_per_job` tokens costs at `price_per_mtok` base units per million
/// tokens, rounded up to whole base units (a fraction still puts a unit at stake); `None` on
/// overflow. Lets the CLI take prices the way offers quote them.
pub fn price_per_job(price_per_mtok: u128, tokens_per_job: u64) -> Option<u128> {
    let micros = price_per_mtok.checked_mul(u128::from(tokens_per_job))?;
    Some(ceil_div_million(micros))
}

/// `share` of `amount`, applied in parts per million and rounded up, checked: turns "a cheat
/// saves 30% of the price" into integer base units without float amounts.
pub fn share_of_amount(amount: u128, share: f64) -> Result<u128, EconError> {
    if !share.is_finite() || share < 0.0 {
        return Err(EconError::Share(share));
    }
    let ppm = (share * MILLION as f64).round();
    if ppm >= u128::MAX as f64 {
        return Err(EconError::Overflow("share of amount"));
    }
    let micros = amount
        .checked_mul(ppm as u128)
        .ok_or(EconError::Overflow("share of amount"))?;
    Ok(ceil_div_million(micros))
}

/// The network's default parameters, in one place so the ledger, the auditors and the
/// `agora econ` report agree, and so a test can prove they deter cheating with the margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Audit probability for established providers: the floor the audit sampler never goes under.
    pub audit_probability_floor: f64,
    /// Audit probability for a new provider's first jobs: every one is checked.
    pub new_provider_audit_probability: f64,
    /// How many jobs a new provider serves at the new-provider audit probability.
    pub new_provider_jobs: u64,
    /// S per confirmed fraud, as a multiple of the cheated job's price.
    pub slash_in_job_prices: u128,
    /// How many epochs of earnings stay in escrow, forfeited on fraud (R).
    pub reward_escrow_epochs: u64,
    /// r the network is designed to withstand.
    pub colluding_share: f64,
    /// m: the expected loss must exceed the saving this many times.
    pub margin: f64,
    /// An audit's cost over the generation it checks: the design's bound (at least 20x cheaper).
    pub audit_cost_over_generation: f64,
}

/// The defaults: p = 0.02 for established providers, p = 1 for a new provider's first 50 jobs,
/// S = 1000 jobs' price, R = one epoch's earnings, r = 1/3, m = 2, audits at most 1/20 of a
/// generation. At p = 0.02 they deter a cheat saving the whole price about 6.7 times over.
pub fn defaults() -> Defaults {
    Defaults {
        audit_probability_floor: 0.02,
        new_provider_audit_probability: 1.0,
        new_provider_jobs: 50,
        slash_in_job_prices: 1_000,
        reward_escrow_epochs: 1,
        colluding_share: 1.0 / 3.0,
        margin: 2.0,
        audit_cost_over_generation: 0.05,
    }
}

impl Defaults {
    /// Audit probability for a provider that has served `jobs_served` jobs: every job while it
    /// is new (it has no stake history to lose yet), the floor afterwards.
    pub fn audit_probability(&self, jobs_served: u64) -> f64 {
        if jobs_served < self.new_provider_jobs {
            self.new_provider_audit_probability
        } else {
            self.audit_probability_floor
        }
    }

    /// S for a job of `price_per_job` base units; `None` on overflow.
    pub fn slash_for(&self, price_per_job: u128) -> Option<u128> {
        price_per_job.checked_mul(self.slash_in_job_prices)
    }

    /// The scenario these defaults set for one job: S from the price, R = the escrowed epoch's
    /// `epoch_earnings` (at least the job's own price in practice), C as given.
    pub fn inputs(
        &self,
        price_per_job: u128,
        cost_saved_per_job: u128,
        epoch_earnings: u128,
    ) -> Result<EconInputs, EconError> {
        let slash = self
            .slash_for(price_per_job)
            .ok_or(EconError::Overflow("slash"))?;
        let reward_at_risk = epoch_earnings
            .checked_mul(u128::from(self.reward_escrow_epochs))
            .ok_or(EconError::Overflow("reward at risk"))?;
        Ok(EconInputs {
            price_per_job,
            cost_saved_per_job,
            reward_at_risk,
            slash,
            colluding_share: self.colluding_share,
            margin: self.margin,
        })
    }
}

/// Validates the inputs and returns (1 - r)(R + S) as `f64`.
fn validate(inputs: &EconInputs) -> Result<f64, EconError> {
    let r = inputs.colluding_share;
    if !(0.0..1.0).contains(&r) {
        return Err(EconError::ColludingShare(r));
    }
    let m = inputs.margin;
    if !m.is_finite() || m < 1.0 {
        return Err(EconError::Margin(m));
    }
    let lost = inputs
        .reward_at_risk
        .checked_add(inputs.slash)
        .ok_or(EconError::Overflow("reward at risk + slash"))?;
    if lost == 0 {
        return Err(EconError::NothingAtRisk);
    }
    Ok((1.0 - r) * lost as f64)
}

/// The smallest non-negative `f64` p with `p * at_risk > need`, found by bisection over the
/// bit patterns of non-negative floats (ordered like their values, and `p * at_risk` is
/// monotone in p under rounding), so the strict inequality holds exactly as [`deters`]
/// evaluates it and fails for the next float down. Requires `at_risk > 0` and `need >= 0`.
fn smallest_deterring(at_risk: f64, need: f64) -> f64 {
    let ok = |bits: u64| f64::from_bits(bits) * at_risk > need;
    let (mut lo, mut hi) = (0u64, f64::INFINITY.to_bits());
    if ok(lo) {
        return 0.0;
    }
    if !ok(hi) {
        return f64::INFINITY;
    }
    // Invariant: !ok(lo) && ok(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    f64::from_bits(hi)
}

fn ceil_div_million(micros: u128) -> u128 {
    micros / MILLION + u128::from(!micros.is_multiple_of(MILLION))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(c: u128, r_escrow: u128, s: u128, r: f64, m: f64) -> EconInputs {
        EconInputs {
            price_per_job: c,
            cost_saved_per_job: c,
            reward_at_risk: r_escrow,
            slash: s,
            colluding_share: r,
            margin: m,
        }
    }

    fn next_down(x: f64) -> f64 {
        f64::from_bits(x.to_bits() - 1)
    }

    fn min_p(i: &EconInputs) -> f64 {
        min_audit_probability(i).unwrap().min_audit_probability
    }

    #[test]
    fn exact_threshold_is_not_enough() {
        // C = 1, R + S = 4, r = 0, m = 2: the threshold is exactly 0.5.
        let i = inputs(1, 3, 1, 0.0, 2.0);
        assert!(!deters(&i, 0.5), "equality must not count as deterrence");
        let p = min_p(&i);
        assert!(p > 0.5 && p - 0.5 < 1e-15, "{p}");
        assert!(deters(&i, p));
        assert!(!deters(&i, next_down(p)));
        assert!(0.5 * 4.0 == 2.0 * 1.0 && p * 4.0 > 2.0);
    }

    #[test]
    fn min_probability_is_tight_for_awkward_numbers() {
        for (c, re, s, r) in [
            (7u128, 0u128, 1_000u128, 1.0 / 3.0),
            (1, 1, 1, 0.9),
            (123_456_789, 987_654_321, 55, 0.1),
            (3, 0, 10, 0.0),
            (u64::MAX as u128, u64::MAX as u128, u64::MAX as u128, 0.25),
        ] {
            let i = inputs(c, re, s, r, 2.0);
            let o = min_audit_probability(&i).unwrap();
            let p = o.min_audit_probability;
            assert!(p > 0.0);
            assert!(deters(&i, p), "{i:?}");
            assert!(!deters(&i, next_down(p)), "{i:?}");
            let exact = 2.0 * c as f64 / ((1.0 - r) * (re + s) as f64);
            assert!((p - exact).abs() <= exact * 1e-12, "{p} vs {exact}");
            assert_eq!(o.feasible, p <= 1.0);
        }
    }

    #[test]
    fn outcome_fields() {
        let i = inputs(10, 100, 900, 0.5, 2.0);
        let o = min_audit_probability(&i).unwrap();
        // 2·10 / (0.5 · 1000) = 0.04.
        assert!((o.min_audit_probability - 0.04).abs() < 1e-15);
        assert!(o.feasible);
        assert_eq!(o.expected_gain_per_cheat, 10.0);
        assert!(o.expected_loss_per_cheat > 2.0 * o.expected_gain_per_cheat);
        assert!((o.expected_loss_per_cheat - 20.0).abs() < 1e-9);
        assert_eq!(o.slash, 900);
        assert_eq!(o.stake_needed_for_jobs_in_flight(7), Some(6_300));
        assert!((deterrence_ratio(&i, 0.04) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn infeasible_when_loss_cannot_cover_the_saving() {
        // C = 100, R + S = 150, r = 0: even p = 1 gives 150 < 200.
        let i = inputs(100, 50, 100, 0.0, 2.0);
        let o = min_audit_probability(&i).unwrap();
        assert!(!o.feasible);
        assert!(o.min_audit_probability > 1.0);
        assert!(!deters(&i, 1.0));
        assert_eq!(o.expected_loss_per_cheat, 150.0);
        // Exactly at p = 1 is still not enough: C = 100, R + S = 200, m = 2.
        let edge = inputs(100, 100, 100, 0.0, 2.0);
        let o = min_audit_probability(&edge).unwrap();
        assert!(!o.feasible && o.min_audit_probability > 1.0);
        // One more base unit at risk makes it feasible at p = 1.
        let o = min_audit_probability(&inputs(100, 101, 100, 0.0, 2.0)).unwrap();
        assert!(o.feasible && o.min_audit_probability < 1.0);
    }

    #[test]
    fn free_cheat_needs_only_some_audit() {
        let o = min_audit_probability(&inputs(0, 0, 1, 0.0, 2.0)).unwrap();
        assert!(o.feasible);
        assert!(o.min_audit_probability > 0.0 && o.min_audit_probability < 1e-300);
        assert!(deterrence_ratio(&inputs(0, 0, 1, 0.0, 2.0), 0.02).is_infinite());
    }

    #[test]
    fn monotone_in_colluding_share() {
        let mut last = 0.0;
        for k in 0..100 {
            let r = f64::from(k) / 100.0;
            let p = min_p(&inputs(10, 0, 1_000, r, 2.0));
            assert!(p > last, "r = {r}: {p} <= {last}");
            last = p;
        }
        // Near r = 1 the cheat becomes undeterrable.
        assert!(
            !min_audit_probability(&inputs(10, 0, 1_000, 0.999, 2.0))
                .unwrap()
                .feasible
        );
    }

    #[test]
    fn monotone_in_slash_reward_cost_and_margin() {
        let mut last = f64::INFINITY;
        for s in [1u128, 2, 10, 100, 1_000, 1_000_000, u64::MAX as u128] {
            let p = min_p(&inputs(10, 0, s, 0.2, 2.0));
            assert!(p < last, "S = {s}");
            last = p;
        }
        let mut last = f64::INFINITY;
        for re in [0u128, 1, 10, 100, 10_000] {
            let p = min_p(&inputs(10, re, 50, 0.2, 2.0));
            assert!(p < last, "R = {re}");
            last = p;
        }
        let mut last = 0.0;
        for c in [1u128, 2, 3, 10, 500, 100_000] {
            let p = min_p(&inputs(c, 10, 1_000, 0.2, 2.0));
            assert!(p > last, "C = {c}");
            last = p;
        }
        let mut last = 0.0;
        for m in [1.0, 1.5, 2.0, 3.0, 10.0] {
            let p = min_p(&inputs(10, 10, 1_000, 0.2, m));
            assert!(p > last, "m = {m}");
            last = p;
        }
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let bad_r = [1.0, 1.5, -0.1, -0.0 - 1e-300, f64::NAN, f64::INFINITY];
        for r in bad_r {
            let i = inputs(10, 10, 10, r, 2.0);
            assert!(
                matches!(min_audit_probability(&i), Err(EconError::ColludingShare(_))),
                "r = {r}"
            );
            assert!(!deters(&i, 1.0));
            assert!(deterrence_ratio(&i, 1.0).is_nan());
        }
        for m in [0.0, 0.5, 0.999, -2.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    min_audit_probability(&inputs(10, 10, 10, 0.0, m)),
                    Err(EconError::Margin(_))
                ),
                "m = {m}"
            );
        }
        assert_eq!(
            min_audit_probability(&inputs(10, 0, 0, 0.0, 2.0)),
            Err(EconError::NothingAtRisk)
        );
        assert_eq!(
            min_audit_probability(&inputs(10, u128::MAX, 1, 0.0, 2.0)),
            Err(EconError::Overflow("reward at risk + slash"))
        );
        // The boundaries themselves are valid.
        assert!(min_audit_probability(&inputs(10, 10, 10, 0.0, 1.0)).is_ok());
        assert!(min_audit_probability(&inputs(10, 0, u128::MAX, 0.0, 1.0)).is_ok());
        let msg = EconError::ColludingShare(1.0).to_string();
        assert!(msg.contains("[0, 1)"), "{msg}");
    }

    #[test]
    fn defaults_deter_a_cheat_saving_the_whole_price_twice_over() {
        let d = defaults();
        assert_eq!(d.audit_probability_floor, 0.02);
        assert_eq!(d.margin, 2.0);
        assert!((d.colluding_share - 1.0 / 3.0).abs() < 1e-15);
        for price in [1u128, 7, 1_000, 123_456_789, u64::MAX as u128] {
            // Worst case escrow: the epoch's earnings are this job alone; also with none at all.
            for epoch_earnings in [price, 0] {
                let i = d.inputs(price, price, epoch_earnings).unwrap();
                assert_eq!(i.cost_saved_per_job, i.price_per_job);
                let p = d.audit_probability_floor;
                // p(1 - r)(R + S) > 2C, evaluated in exact integer arithmetic: with p = 1/50
                // and r = 1/3 this is (R + S)·2/150 > 2C, i.e. R + S > 150·C.
                assert!(i.reward_at_risk + i.slash > 150 * i.cost_saved_per_job);
                // And as the f64 check sees it.
                assert!(deters(&i, p), "price {price}");
                let o = min_audit_probability(&i).unwrap();
                assert!(o.feasible && o.min_audit_probability < p);
                assert!(
                    o.min_audit_probability < 0.0031,
                    "{}",
                    o.min_audit_probability
                );
                assert!(deterrence_ratio(&i, p) > 6.6);
            }
        }
        // R = S = price·1000 + price: min p = 2·3 / (2·1001) = 3/1001.
        let o = min_audit_probability(&d.inputs(1_000, 1_000, 1_000).unwrap()).unwrap();
        assert!((o.min_audit_probability - 3.0 / 1001.0).abs() < 1e-15);
    }

    #[test]
    fn defaults_schedule_and_audit_cost() {
        let d = defaults();
        assert_eq!(d.audit_probability(0), 1.0);
        assert_eq!(d.audit_probability(49), 1.0);
        assert_eq!(d.audit_probability(50), 0.02);
        assert_eq!(d.audit_probability(u64::MAX), 0.02);
        assert_eq!(d.slash_for(3), Some(3_000));
        assert_eq!(d.slash_for(u128::MAX), None);
        assert_eq!(d.inputs(u128::MAX, 1, 1), Err(EconError::Overflow("slash")));
        // Audits at the floor stay under the design's 1% of network compute.
        let share = audit_share_of_compute(d.audit_probability_floor, d.audit_cost_over_generation);
        assert!(share < 0.01, "{share}");
    }

    #[test]
    fn detection_probability_numbers() {
        let p = detection_probability(0.02, 1.0, 100);
        assert!((p - 0.867_380_444).abs() < 1e-9, "{p}");
        assert!((p - (1.0 - 0.98f64.powi(100))).abs() < 1e-14);
        assert_eq!(detection_probability(0.02, 1.0, 0), 0.0);
        assert!((detection_probability(0.02, 1.0, 1) - 0.02).abs() < 1e-15);
        assert!((detection_probability(0.02, 0.5, 1) - 0.01).abs() < 1e-15);
        assert_eq!(detection_probability(1.0, 1.0, 3), 1.0);
        assert_eq!(detection_probability(0.0, 1.0, 1_000_000), 0.0);
        assert_eq!(detection_probability(2.0, 1.0, 1), 1.0);
        assert_eq!(detection_probability(-1.0, 1.0, 1), 0.0);
        // With r = 1/3 colluding, the effective detection is 2/3: 1 - (1 - 0.02·2/3)^300.
        let q = detection_probability(0.02, 2.0 / 3.0, 300);
        assert!((q - (1.0 - (1.0 - 0.04 / 3.0f64).powi(300))).abs() < 1e-12);
        let mut last = 0.0;
        for n in [1u64, 10, 100, 1_000, 10_000] {
            let q = detection_probability(0.02, 1.0, n);
            assert!(q > last);
            last = q;
        }
        assert!(last > 1.0 - 1e-12);
        assert!(detection_probability(f64::NAN, 1.0, 5).is_nan());
    }

    #[test]
    fn audit_share_numbers() {
        assert_eq!(audit_share_of_compute(0.0, 0.05), 0.0);
        assert!((audit_share_of_compute(0.02, 0.05) - 0.001 / 1.001).abs() < 1e-15);
        assert!((audit_share_of_compute(1.0, 1.0) - 0.5).abs() < 1e-15);
        assert!((audit_share_of_compute(0.1, 1.0) - 0.1 / 1.1).abs() < 1e-15);
        // A new provider's first jobs are all audited: 1/21 of its compute at a = 0.05.
        assert!((audit_share_of_compute(1.0, 0.05) - 0.05 / 1.05).abs() < 1e-15);
        assert_eq!(audit_share_of_compute(2.0, 1.0), 0.5);
        assert_eq!(audit_share_of_compute(0.5, -1.0), 0.0);
    }

    #[test]
    fn stake_is_checked() {
        assert_eq!(stake_needed(10, 5), Some(50));
        assert_eq!(stake_needed(10, 0), Some(0));
        assert_eq!(stake_needed(u128::MAX, 1), Some(u128::MAX));
        assert_eq!(stake_needed(u128::MAX, 2), None);
        assert_eq!(
            stake_needed(u128::MAX / u128::from(u64::MAX), u64::MAX),
            Some(u128::MAX / u128::from(u64::MAX) * u128::from(u64::MAX))
        );
    }

    #[test]
    fn integer_prices_and_shares() {
        assert_eq!(price_per_job(1_000_000, 1), Some(1));
        assert_eq!(price_per_job(1_000_000, 1_000), Some(1_000));
        assert_eq!(price_per_job(1, 1), Some(1));
        assert_eq!(price_per_job(0, 1_000), Some(0));
        assert_eq!(price_per_job(2_500_000, 1_000), Some(2_500));
        assert_eq!(price_per_job(1_500_001, 1), Some(2));
        assert_eq!(price_per_job(u128::MAX, 2), None);
        assert_eq!(share_of_amount(1_000, 1.0), Ok(1_000));
        assert_eq!(share_of_amount(1_000, 0.3), Ok(300));
        assert_eq!(share_of_amount(10, 0.33), Ok(4));
        assert_eq!(share_of_amount(1_000, 0.0), Ok(0));
        assert_eq!(share_of_amount(1_000, 2.5), Ok(2_500));
        assert_eq!(share_of_amount(1, -0.5), Err(EconError::Share(-0.5)));
        assert!(matches!(
            share_of_amount(1, f64::NAN),
            Err(EconError::Share(_))
        ));
        assert_eq!(
            share_of_amount(u128::MAX, 1.0),
            Err(EconError::Overflow("share of amount"))
        );
        assert_eq!(
            share_of_amount(1, 1e300),
            Err(EconError::Overflow("share of amount"))
        );
    }
}
