//! Exact fixed-point values and their shortest decimal text.
//!
//! Prices are `i64` with scale 1e-9 and sizes `i64` with scale 1e-8 (the `ipc` record's
//! scales), so the generator never touches a float and `expected` prints exactly the digits
//! the text protocol carries.

use ib_stream_tws::decimal::{PRICE_DIGITS, SIZE_DIGITS, fixed_to_string};

pub use ib_stream_ipc::{PRICE_SCALE, SIZE_SCALE};

/// A price as the text encoding writes it (the codec's formatter, so `expected` and the wire
/// can never disagree).
pub fn price_str(value: i64) -> String {
    fixed_to_string(value, PRICE_DIGITS)
}

/// A size as the text encoding writes it.
pub fn size_str(value: i64) -> String {
    fixed_to_string(value, SIZE_DIGITS)
}

/// Parses a decimal string (e.g. "189.25", "0.00005", "-3") into fixed point with `scale`.
/// Strict, for configuration: `None` for exponents or more digits than the scale holds
/// (the codec's parser rounds those, which would silently change a universe file's tick).
pub fn parse_fixed(text: &str, scale: i64) -> Option<i64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let places = scale.ilog10() as usize;
    if frac_part.len() > places {
        return None;
    }
    let int: i64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut frac: i64 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().ok()?
    };
    for _ in frac_part.len()..places {
        frac = frac.checked_mul(10)?;
    }
    let v = int.checked_mul(scale)?.checked_add(frac)?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_forms() {
        assert_eq!(price_str(189_250_000_000), "189.25");
        assert_eq!(price_str(189_000_000_000), "189");
        assert_eq!(price_str(50_000), "0.00005");
        assert_eq!(price_str(-1_500_000_000), "-1.5");
        assert_eq!(price_str(0), "0");
        assert_eq!(size_str(100 * SIZE_SCALE), "100");
        assert_eq!(size_str(1), "0.00000001");
    }

    #[test]
    fn parse_round_trips() {
        for v in [0, 1, 7, 189_250_000_000, -42_000_000_001, 123_456_789_012] {
            assert_eq!(parse_fixed(&price_str(v), PRICE_SCALE), Some(v));
        }
        assert_eq!(parse_fixed("0.25", PRICE_SCALE), Some(250_000_000));
        assert_eq!(parse_fixed(".5", PRICE_SCALE), Some(500_000_000));
        assert_eq!(parse_fixed("1e3", PRICE_SCALE), None);
        assert_eq!(parse_fixed("0.0000000001", PRICE_SCALE), None);
        assert_eq!(parse_fixed("", PRICE_SCALE), None);
    }
}
