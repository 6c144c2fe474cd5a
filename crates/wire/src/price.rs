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

/// Serde for a `u128` micro-unit count: a JSON number while it fits in `u64` (so the JSON of
/// every realistic receipt is unchanged), else a decimal string; both read back. Serde's
/// buffered `u128` is unsupported, so a plain `u128` inside an internally tagged enum (the
/// ledger's `TxBody`, which carries receipts) could not be parsed at all.
pub mod micros_serde {
    /// Writes `v`.
    pub fn serialize<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(*v) {
            Ok(small) => s.serialize_u64(small),
            Err(_) => s.serialize_str(&v.to_string()),
        }
    }

    /// Reads a number or a decimal string.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = u128;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative integer or its decimal string")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u128, E> {
                Ok(u128::from(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<u128, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u128, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom("not a decimal integer"));
                }
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    #[serde(tag = "type")]
    enum Tagged {
        Carries {
            #[serde(with = "micros_serde")]
            micros: u128,
        },
    }

    /// A receipt inside the ledger's internally tagged `TxBody` could not be parsed: serde's
    /// buffered content has no `u128`.
    #[test]
    fn micros_survive_an_internally_tagged_enum() {
        for micros in [
            0,
            50_000_000,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            u128::MAX,
        ] {
            let t = Tagged::Carries { micros };
            let j = serde_json::to_string(&t).unwrap_or_default();
            assert_eq!(serde_json::from_str::<Tagged>(&j).ok(), Some(t), "{j}");
        }
        assert_eq!(
            serde_json::to_string(&Tagged::Carries { micros: 7 })
                .ok()
                .as_deref(),
            Some(r#"{"type":"Carries","micros":7}"#)
        );
        for bad in [
            r#"{"type":"Carries","micros":"-1"}"#,
            r#"{"type":"Carries","micros":"+1"}"#,
            r#"{"type":"Carries","micros":""}"#,
        ] {
            assert!(serde_json::from_str::<Tagged>(bad).is_err(), "{bad}");
        }
    }

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
