//! DynamoDB numbers: decimal, at most 38 significant digits, magnitude from
//! 1e-130 up to (but excluding) 1e126, compared numerically.
//!
//! A [`Number`] is kept normalised — the significand has no trailing zeros
//! and zero has one representation — so equality is structural and the
//! order-preserving key encoding ([`Number::encode_key`]) is a function of the
//! value, not of how the client spelled it ("1.50" and "15e-1" are one key).

use std::cmp::Ordering;
use std::fmt;

/// Most significant decimal digits a number may carry.
pub const DIGITS_MAX: u32 = 38;
/// Smallest scientific exponent of a non-zero number (1e-130).
pub const EXPONENT_MIN: i32 = -130;
/// Largest scientific exponent (9.99…e125).
pub const EXPONENT_MAX: i32 = 125;

const POW10_38: u128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

/// Why a string is not a valid number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("not a decimal number: {0:?}")]
    Syntax(String),
    #[error("number has {digits} significant digits; at most {DIGITS_MAX} are allowed")]
    TooManyDigits { digits: u32 },
    #[error("number magnitude is larger than 9.99e125")]
    Overflow,
    #[error("number magnitude is smaller than 1e-130")]
    Underflow,
}

/// A normalised decimal number: `(-1)^negative × significand × 10^exponent`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Number {
    negative: bool,
    /// No trailing zeros; zero only for the number zero.
    significand: u128,
    exponent: i16,
}

impl Number {
    pub const ZERO: Number = Number {
        negative: false,
        significand: 0,
        exponent: 0,
    };

    /// Builds a number from parts, normalising and checking the limits.
    pub fn from_parts(
        negative: bool,
        significand: u128,
        exponent: i32,
    ) -> Result<Self, NumberError> {
        if significand == 0 {
            return Ok(Self::ZERO);
        }
        let (mut significand, mut exponent) = (significand, exponent);
        while significand % 10 == 0 {
            significand /= 10;
            exponent += 1;
        }
        let digits = digit_count(significand);
        if digits > DIGITS_MAX {
            return Err(NumberError::TooManyDigits { digits });
        }
        let scientific = exponent + digits as i32 - 1;
        if scientific > EXPONENT_MAX {
            return Err(NumberError::Overflow);
        }
        if scientific < EXPONENT_MIN {
            return Err(NumberError::Underflow);
        }
        let exponent = i16::try_from(exponent).map_err(|_| NumberError::Overflow)?;
        Ok(Self {
            negative,
            significand,
            exponent,
        })
    }

    pub fn from_i64(value: i64) -> Self {
        Self::from_parts(value < 0, u128::from(value.unsigned_abs()), 0)
            .expect("an i64 always fits in 38 digits")
    }

    pub fn is_zero(&self) -> bool {
        self.significand == 0
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    pub fn significand(&self) -> u128 {
        self.significand
    }

    pub fn exponent(&self) -> i16 {
        self.exponent
    }

    /// Significant digits (zero has one).
    pub fn digit_count(&self) -> u32 {
        digit_count(self.significand)
    }

    /// The exponent in scientific notation, `d.ddd × 10^scientific`.
    fn scientific_exponent(&self) -> i32 {
        i32::from(self.exponent) + self.digit_count() as i32 - 1
    }

    /// The significand scaled to exactly 38 digits, so two magnitudes with the
    /// same scientific exponent compare as integers.
    fn scaled_significand(&self) -> u128 {
        let digits = self.digit_count();
        self.significand * 10u128.pow(DIGITS_MAX - digits)
    }

    /// Sum of two numbers, as DynamoDB's `ADD` does; errors if the exact sum
    /// needs more than 38 digits or leaves the range.
    pub fn checked_add(&self, other: &Number) -> Result<Number, NumberError> {
        if self.is_zero() {
            return Ok(*other);
        }
        if other.is_zero() {
            return Ok(*self);
        }
        let exponent = self.exponent.min(other.exponent);
        let align = |n: &Number| -> Result<i128, NumberError> {
            let shift = u32::try_from(i32::from(n.exponent) - i32::from(exponent))
                .map_err(|_| NumberError::Overflow)?;
            let scaled = 10u128
                .checked_pow(shift)
                .and_then(|p| n.significand.checked_mul(p))
                .filter(|s| *s < POW10_38)
                .ok_or(NumberError::TooManyDigits {
                    digits: DIGITS_MAX + 1,
                })?;
            let scaled = scaled as i128;
            Ok(if n.negative { -scaled } else { scaled })
        };
        let sum = align(self)?
            .checked_add(align(other)?)
            .ok_or(NumberError::TooManyDigits {
                digits: DIGITS_MAX + 1,
            })?;
        Number::from_parts(sum < 0, sum.unsigned_abs(), i32::from(exponent))
    }

    /// Appends the order-preserving encoding: byte order equals numeric
    /// order. Layout (see docs/storage-format.md):
    /// `0x01` negative | `0x02` zero | `0x03` positive, then for non-zero
    /// numbers the scientific exponent + 130 as one byte and the digits in
    /// base-100 pairs as bytes 1..=100. Negative numbers complement every byte
    /// after the tag and end with `0xFF`, so a shorter negative significand
    /// sorts after a longer one that extends it.
    pub fn encode_key(&self, out: &mut Vec<u8>) {
        if self.is_zero() {
            out.push(0x02);
            return;
        }
        let flip = |b: u8| if self.negative { !b } else { b };
        out.push(if self.negative { 0x01 } else { 0x03 });
        let exponent_byte = (self.scientific_exponent() - EXPONENT_MIN) as u8;
        out.push(flip(exponent_byte));
        let digits = self.significand.to_string();
        let digits = digits.as_bytes();
        for pair in digits.chunks(2) {
            let high = pair[0] - b'0';
            let low = pair.get(1).map_or(0, |d| d - b'0');
            out.push(flip(high * 10 + low + 1));
        }
        if self.negative {
            out.push(0xFF);
        }
    }

    /// Bytes this number counts for in an item's size (DynamoDB's rule:
    /// about one byte per two significant digits, plus one).
    pub fn size_bytes(&self) -> usize {
        (self.digit_count() as usize).div_ceil(2) + 1
    }
}

fn digit_count(mut value: u128) -> u32 {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

impl std::str::FromStr for Number {
    type Err = NumberError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || NumberError::Syntax(text.to_owned());
        let trimmed = text.trim();
        let (negative, rest) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let (mantissa, exponent_text) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (integer, fraction) = match mantissa.find('.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, ""),
        };
        if integer.is_empty() && fraction.is_empty() {
            return Err(syntax());
        }
        if !integer
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err(syntax());
        }
        let mut exponent: i64 = match exponent_text {
            Some(e) => e.parse::<i64>().map_err(|_| syntax())?,
            None => 0,
        };
        // Accumulate significant digits, ignoring leading zeros; digits past
        // the 38th are allowed only if they are zeros.
        let mut significand: u128 = 0;
        let mut digits: u32 = 0;
        let mut trailing_zeros: i64 = 0;
        for (index, byte) in integer.bytes().chain(fraction.bytes()).enumerate() {
            let digit = u128::from(byte - b'0');
            if index >= integer.len() {
                exponent -= 1;
            }
            if digits == 0 && digit == 0 {
                continue;
            }
            if digit == 0 {
                trailing_zeros += 1;
                continue;
            }
            // Flush the zeros seen since the last non-zero digit.
            for _ in 0..=trailing_zeros {
                digits += 1;
                if digits > DIGITS_MAX {
                    return Err(NumberError::TooManyDigits { digits });
                }
            }
            significand = significand * 10u128.pow(trailing_zeros as u32 + 1) + digit;
            trailing_zeros = 0;
        }
        exponent += trailing_zeros;
        let exponent = i32::try_from(exponent).map_err(|_| {
            if significand == 0 {
                syntax()
            } else {
                NumberError::Overflow
            }
        })?;
        Number::from_parts(negative, significand, exponent)
    }
}

impl fmt::Display for Number {
    /// Plain decimal notation, as DynamoDB returns numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        let digits = self.significand.to_string();
        let exponent = i32::from(self.exponent);
        if exponent >= 0 {
            f.write_str(&digits)?;
            for _ in 0..exponent {
                f.write_str("0")?;
            }
            return Ok(());
        }
        let point = digits.len() as i32 + exponent;
        if point > 0 {
            let (integer, fraction) = digits.split_at(point as usize);
            write!(f, "{integer}.{fraction}")
        } else {
            f.write_str("0.")?;
            for _ in 0..-point {
                f.write_str("0")?;
            }
            f.write_str(&digits)
        }
    }
}

impl fmt::Debug for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N({self})")
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        fn sign(n: &Number) -> i8 {
            if n.is_zero() {
                0
            } else if n.negative {
                -1
            } else {
                1
            }
        }
        let by_sign = sign(self).cmp(&sign(other));
        if by_sign != Ordering::Equal || self.is_zero() {
            return by_sign;
        }
        let magnitude = self
            .scientific_exponent()
            .cmp(&other.scientific_exponent())
            .then(self.scaled_significand().cmp(&other.scaled_significand()));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn n(text: &str) -> Number {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(n("1.50"), n("15e-1"));
        assert_eq!(n("-0"), Number::ZERO);
        assert_eq!(n("000.000"), Number::ZERO);
        assert_eq!(n("100").to_string(), "100");
        assert_eq!(n("0.00120").to_string(), "0.0012");
        assert_eq!(n("-12.5").to_string(), "-12.5");
        assert_eq!(n("1e2").to_string(), "100");
        assert_eq!(n(".5").to_string(), "0.5");
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(matches!("".parse::<Number>(), Err(NumberError::Syntax(_))));
        assert!(matches!(
            "1.2.3".parse::<Number>(),
            Err(NumberError::Syntax(_))
        ));
        assert!(matches!(
            "abc".parse::<Number>(),
            Err(NumberError::Syntax(_))
        ));
        assert!(matches!(
            "1e".parse::<Number>(),
            Err(NumberError::Syntax(_))
        ));
        let digits_39 = "1".repeat(39);
        assert_eq!(
            digits_39.parse::<Number>(),
            Err(NumberError::TooManyDigits { digits: 39 })
        );
        // 38 significant digits followed by zeros is fine.
        assert!(format!("{}000", "9".repeat(38)).parse::<Number>().is_ok());
        assert_eq!("1e126".parse::<Number>(), Err(NumberError::Overflow));
        assert!("9.99e125".parse::<Number>().is_ok());
        assert_eq!("1e-131".parse::<Number>(), Err(NumberError::Underflow));
        assert!("1e-130".parse::<Number>().is_ok());
    }

    #[test]
    fn compares_numerically() {
        assert!(n("-10") < n("-9.5"));
        assert!(n("-0.001") < n("0"));
        assert!(n("0.12") < n("0.123"));
        assert!(n("-0.12") > n("-0.123"));
        assert!(n("99") < n("100"));
        assert_eq!(n("5").cmp(&n("5.000")), Ordering::Equal);
    }

    #[test]
    fn adds_exactly() {
        assert_eq!(n("1.5").checked_add(&n("2.25")).unwrap(), n("3.75"));
        assert_eq!(n("-1").checked_add(&n("1")).unwrap(), Number::ZERO);
        assert_eq!(n("1e100").checked_add(&n("-1e100")).unwrap(), Number::ZERO);
        assert!(n("1e100").checked_add(&n("1")).is_err());
    }

    fn random_number(rng: &mut StdRng) -> Number {
        let digits = rng.random_range(1..=38u32);
        let significand = rng.random_range(0..10u128.pow(digits));
        let exponent = rng.random_range(-140..=130);
        Number::from_parts(rng.random_bool(0.5), significand, exponent).unwrap_or(Number::ZERO)
    }

    #[test]
    fn key_encoding_preserves_order_and_display_round_trips() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut pool: Vec<Number> = (0..2000).map(|_| random_number(&mut rng)).collect();
        pool.extend(["0.12", "0.123", "-0.12", "-0.123", "1", "10", "-1", "-10"].map(n));
        for a in &pool {
            assert_eq!(a.to_string().parse::<Number>().unwrap(), *a, "{a}");
        }
        for _ in 0..20_000 {
            let a = pool[rng.random_range(0..pool.len())];
            let b = pool[rng.random_range(0..pool.len())];
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            a.encode_key(&mut ka);
            b.encode_key(&mut kb);
            assert_eq!(a.cmp(&b), ka.cmp(&kb), "{a} vs {b}");
        }
    }
}
