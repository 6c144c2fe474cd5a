//! Integer amounts of base units with checked arithmetic.

use crate::CoreError;
use borsh::{BorshDeserialize, BorshSerialize};
use std::fmt;
use std::str::FromStr;

/// An amount of base units. Arithmetic is checked: it never wraps, saturates or rounds.
///
/// In JSON it is a decimal string (`"1000"`), because JSON numbers lose precision past 2^53.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct Amount(u128);

impl Amount {
    /// Zero base units.
    pub const ZERO: Amount = Amount(0);
    /// The largest representable amount.
    pub const MAX: Amount = Amount(u128::MAX);

    /// An amount of `units` base units.
    pub const fn new(units: u128) -> Self {
        Amount(units)
    }

    /// The number of base units.
    pub const fn units(self) -> u128 {
        self.0
    }

    /// True when zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + rhs`, or [`CoreError::Overflow`].
    pub fn checked_add(self, rhs: Amount) -> Result<Amount, CoreError> {
        self.0
            .checked_add(rhs.0)
            .map(Amount)
            .ok_or(CoreError::Overflow {
                a: self.0,
                b: rhs.0,
            })
    }

    /// `self - rhs`, or [`CoreError::Insufficient`] when `rhs > self`.
    pub fn checked_sub(self, rhs: Amount) -> Result<Amount, CoreError> {
        self.0
            .checked_sub(rhs.0)
            .map(Amount)
            .ok_or(CoreError::Insufficient {
                have: self.0,
                need: rhs.0,
            })
    }

    /// `self * bps / 10_000`, rounded down: a share in basis points. `bps` above 10,000 is
    /// clamped to 10,000 so a share never exceeds the whole.
    pub fn bps(self, bps: u16) -> Amount {
        let bps = u128::from(bps.min(10_000));
        // Split to avoid overflow of self * bps for large amounts.
        let q = self.0 / 10_000;
        let r = self.0 % 10_000;
        Amount(q * bps + r * bps / 10_000)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: Amount) -> Amount {
        Amount(self.0.min(other.0))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Amount {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CoreError::InvalidAmount(s.chars().take(64).collect()));
        }
        s.parse::<u128>()
            .map(Amount)
            .map_err(|_| CoreError::InvalidAmount(s.to_string()))
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string or non-negative integer of base units")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount(u128::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_refuses_wrap() {
        assert!(Amount::MAX.checked_add(Amount::new(1)).is_err());
        assert!(Amount::ZERO.checked_sub(Amount::new(1)).is_err());
        assert_eq!(
            Amount::new(3).checked_add(Amount::new(4)),
            Ok(Amount::new(7))
        );
    }

    #[test]
    fn bps_share_rounds_down_and_never_exceeds_whole() {
        assert_eq!(Amount::new(1000).bps(2500), Amount::new(250));
        assert_eq!(Amount::new(3).bps(5000), Amount::new(1));
        assert_eq!(Amount::MAX.bps(10_000), Amount::MAX);
        assert_eq!(Amount::new(7).bps(u16::MAX), Amount::new(7));
    }

    #[test]
    fn json_is_a_decimal_string() {
        let a = Amount::new(u128::MAX);
        let j = serde_json::to_string(&a).unwrap_or_default();
        assert_eq!(j, format!("\"{}\"", u128::MAX));
        let back: Amount = serde_json::from_str(&j).unwrap_or_default();
        assert_eq!(back, a);
        assert!(serde_json::from_str::<Amount>("\"-1\"").is_err());
        assert!(serde_json::from_str::<Amount>("\"1.5\"").is_err());
        assert!(serde_json::from_str::<Amount>("1.5").is_err());
    }
}
