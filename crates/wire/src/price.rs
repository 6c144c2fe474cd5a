//! Exact pricing in integers: prices are per million tokens, costs are counted in millionths
//! of a base unit so that no rounding happens until money actually moves.

use agora_core::Amount;

/// Millionths of a base unit in one base unit (prices are per million tokens).
pub const MICROS_PER_UNIT: u128 = 1_000_000;

/// The exact cost of `prompt_tokens` and `output_tokens` at these prices, in millionths of a
/// base unit: `prompt_tokens * price_in + output_tokens * price_out`. Prices are per million
/// tokens, so this is an exact integer. `None` when it does not fit in a `u128` (checked,
/// never saturating).
pub fn cost_micros(
    price_in: Amount,
    price_out: Amount,
    prompt_tokens: u64,
    output_tokens: u64,
) -> Option<u128> {
    let a = u128::from(prompt_tokens).checked_mul(price_in.units())?;
    let b = u128::from(output_tokens).checked_mul(price_out.units())?;
    a.checked_add(b)
}

/// Whole base units owed for an accumulated micro-unit total: `floor(micros / 1_000_000)`.
/// Accumulate micros across requests and convert once, so rounding never compounds.
pub fn micros_to_amount(micros: u128) -> Amount {
    Amount::new(micros / MICROS_PER_UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_checked() {
        assert_eq!(
            cost_micros(Amount::new(3), Amount::new(7), 1_000_000, 2),
            Some(3_000_014)
        );
        assert_eq!(micros_to_amount(3_000_014), Amount::new(3));
        assert_eq!(micros_to_amount(999_999), Amount::ZERO);
        assert_eq!(cost_micros(Amount::MAX, Amount::ZERO, 2, 0), None);
        assert_eq!(cost_micros(Amount::MAX, Amount::MAX, 1, 1), None);
        assert_eq!(cost_micros(Amount::MAX, Amount::MAX, 1, 0), Some(u128::MAX));
    }
}
