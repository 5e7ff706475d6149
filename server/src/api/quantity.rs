//! Resource quantities (`500m`, `1.5`, `128Mi`, `1G`, `2e3`) as quota and limit admission need
//! them: exact sums and comparisons in thousandths of a unit, and printing back in upstream's
//! canonical form (`1500m`, `2`, `128Mi`, `1k`), keeping the binary or decimal format of the
//! first operand as upstream's `Quantity.Add` does.
//!
//! Invariant: values are thousandths (milli-units) rounded up, so `0.0001` counts as `1m`, as
//! upstream rounds quantities it cannot hold exactly.

use std::cmp::Ordering;
use std::fmt;

/// How a quantity prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Powers of 1000 (`k`, `M`, `G`...) and `m` for fractions.
    Decimal,
    /// Powers of 1024 (`Ki`, `Mi`, `Gi`...).
    Binary,
}

/// A quantity: thousandths of a unit and a print format.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    pub milli: i128,
    pub format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.milli == other.milli
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.milli.cmp(&other.milli)
    }
}

impl Quantity {
    pub const ZERO: Quantity = Quantity {
        milli: 0,
        format: Format::Decimal,
    };

    /// A whole number of units (object counts).
    pub fn count(n: i128) -> Quantity {
        Quantity {
            milli: n * 1000,
            format: Format::Decimal,
        }
    }

    /// Parses a quantity string; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        if number.is_empty() {
            return None;
        }
        let (format, numerator, denominator): (Format, i128, i128) = match suffix {
            "" => (Format::Decimal, 1, 1),
            "n" => (Format::Decimal, 1, 1_000_000_000),
            "u" => (Format::Decimal, 1, 1_000_000),
            "m" => (Format::Decimal, 1, 1000),
            "k" => (Format::Decimal, 1000, 1),
            "M" => (Format::Decimal, 1_000_000, 1),
            "G" => (Format::Decimal, 1_000_000_000, 1),
            "T" => (Format::Decimal, 1_000_000_000_000, 1),
            "P" => (Format::Decimal, 1_000_000_000_000_000, 1),
            "E" => (Format::Decimal, 1_000_000_000_000_000_000, 1),
            "Ki" => (Format::Binary, 1 << 10, 1),
            "Mi" => (Format::Binary, 1 << 20, 1),
            "Gi" => (Format::Binary, 1 << 30, 1),
            "Ti" => (Format::Binary, 1 << 40, 1),
            "Pi" => (Format::Binary, 1 << 50, 1),
            "Ei" => (Format::Binary, 1 << 60, 1),
            s if s.starts_with(['e', 'E']) => {
                let exp: i32 = s[1..].parse().ok()?;
                if !(-9..=18).contains(&exp) {
                    return None;
                }
                if exp >= 0 {
                    (Format::Decimal, 10i128.pow(exp.unsigned_abs()), 1)
                } else {
                    (Format::Decimal, 1, 10i128.pow(exp.unsigned_abs()))
                }
            }
            _ => return None,
        };
        let (negative, digits) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number.strip_prefix('+').unwrap_or(number)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .chars()
                .chain(fraction.chars())
                .all(|c| c.is_ascii_digit())
            || whole.len() + fraction.len() > 30
        {
            return None;
        }
        // value = (whole.fraction) * numerator / denominator, in thousandths, rounded up.
        let scale = 10i128.pow(u32::try_from(fraction.len()).ok()?);
        let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
        let top = mantissa.checked_mul(numerator)?.checked_mul(1000)?;
        let bottom = scale.checked_mul(denominator)?;
        let milli = (top + bottom - 1) / bottom;
        Some(Quantity {
            milli: if negative { -milli } else { milli },
            format,
        })
    }

    /// The sum, in the format of `self` (of `other` when `self` is zero), as upstream.
    pub fn plus(self, other: Quantity) -> Quantity {
        let format = if self.milli == 0 {
            other.format
        } else {
            self.format
        };
        Quantity {
            milli: self.milli + other.milli,
            format,
        }
    }
}

impl Quantity {
    /// The difference, in the format of `self`.
    pub fn minus(self, other: Quantity) -> Quantity {
        Quantity {
            milli: self.milli - other.milli,
            format: self.format,
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 != 0 {
            return write!(f, "{}m", self.milli);
        }
        let units = self.milli / 1000;
        if self.format == Format::Binary && units.abs() >= 1024 {
            let mut value = units;
            let mut suffix = 0;
            while suffix < 6 && value % 1024 == 0 {
                value /= 1024;
                suffix += 1;
            }
            let names = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            return write!(f, "{value}{}", names[suffix]);
        }
        if units == 0 {
            return write!(f, "0");
        }
        let mut value = units;
        let mut suffix = 0;
        while suffix < 6 && value % 1000 == 0 {
            value /= 1000;
            suffix += 1;
        }
        let names = ["", "k", "M", "G", "T", "P", "E"];
        write!(f, "{value}{}", names[suffix])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).expect("quantity")
    }

    #[test]
    fn parses_and_prints_canonically() {
        for (text, printed) in [
            ("500m", "500m"),
            ("1.5", "1500m"),
            ("2", "2"),
            ("128Mi", "128Mi"),
            ("1536", "1536"),
            ("1000", "1k"),
            ("2e3", "2k"),
            ("1G", "1G"),
            ("0", "0"),
            ("1Gi", "1Gi"),
            ("0.5Gi", "512Mi"),
        ] {
            assert_eq!(q(text).to_string(), printed, "{text}");
        }
        assert_eq!(q("1").milli, 1000);
        assert_eq!(q("100m").milli, 100);
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1Qi").is_none());
        assert!(Quantity::parse("").is_none());
    }

    #[test]
    fn sums_keep_the_first_format() {
        assert_eq!(q("100m").plus(q("400m")).to_string(), "500m");
        assert_eq!(q("1").plus(q("500m")).to_string(), "1500m");
        assert_eq!(q("64Mi").plus(q("64Mi")).to_string(), "128Mi");
        assert_eq!(Quantity::ZERO.plus(q("64Mi")).to_string(), "64Mi");
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m"), q("1"));
    }
}
