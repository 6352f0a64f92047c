//! Exact fixed-point decimals: prices scale 1e-9 (`PRICE_DIGITS`), sizes 1e-8
//! (`SIZE_DIGITS`), `UNDEF_I64` = unset (the empty field). Parsing and formatting work on
//! bytes with no allocation: this is the hot path of every text tick.

use crate::ipc::UNDEF_I64;

/// Decimal digits of a price (`ipc::PRICE_SCALE` = 1e9).
pub const PRICE_DIGITS: u32 = 9;
/// Decimal digits of a size (`ipc::SIZE_SCALE` = 1e8).
pub const SIZE_DIGITS: u32 = 8;

const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Parse a decimal (`-12.5`, `1.0E-4`, `+3`, `.5`) into fixed point with `digits` decimals.
/// Digits beyond the scale are rounded half away from zero. Returns `None` for anything
/// that is not a finite decimal in `i64` range (including the empty field, `Infinity`,
/// `NaN`); [`UNDEF_I64`] itself is never produced.
#[inline]
pub fn parse_fixed(s: &[u8], digits: u32) -> Option<i64> {
    // Fast path for what IB sends almost always: [-]ddd[.ddd], at most 18 digits, no
    // more decimals than the scale. Plain u64 arithmetic, no overflow possible.
    let (neg, body) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let (mut int, mut frac, mut i) = (0u64, 0u64, 0usize);
    while i < body.len() && body[i].is_ascii_digit() && i < 18 {
        int = int * 10 + u64::from(body[i] - b'0');
        i += 1;
    }
    let int_len = i;
    if i < body.len() && body[i] == b'.' {
        i += 1;
        while i < body.len() && body[i].is_ascii_digit() && i - 1 < 18 {
            frac = frac * 10 + u64::from(body[i] - b'0');
            i += 1;
        }
    }
    let frac_len = i.saturating_sub(int_len + 1) as u32;
    if i == body.len() && int_len + frac_len as usize > 0 && frac_len <= digits {
        let v = int
            .checked_mul(POW10_U64[digits as usize])?
            .checked_add(frac * POW10_U64[(digits - frac_len) as usize])?;
        let v = i64::try_from(v).ok()?;
        return (v != UNDEF_I64).then_some(if neg { -v } else { v });
    }
    parse_fixed_slow(s, digits)
}

const POW10_U64: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// The general parser: exponents, '+', long mantissas, rounding of extra decimals.
fn parse_fixed_slow(s: &[u8], digits: u32) -> Option<i64> {
    let mut i = 0;
    let neg = match s.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut mant: i128 = 0;
    let mut sig = 0u32; // significant digits kept in `mant`
    let mut exp: i32 = 0; // value = mant * 10^exp
    let mut any = false;
    let mut dropped_nonzero_half = 0u8; // first dropped digit when too many significant digits
    let mut seen_dot = false;
    while i < s.len() {
        let c = s[i];
        match c {
            b'0'..=b'9' => {
                any = true;
                if sig < 30 {
                    if mant != 0 || c != b'0' {
                        sig += 1;
                    }
                    mant = mant * 10 + i128::from(c - b'0');
                    if seen_dot {
                        exp -= 1;
                    }
                } else {
                    // Too many significant digits: keep the magnitude, remember rounding.
                    if dropped_nonzero_half == 0 {
                        dropped_nonzero_half = c - b'0' + 1;
                    }
                    if !seen_dot {
                        exp += 1;
                    }
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            b'e' | b'E' => break,
            _ => return None,
        }
        i += 1;
    }
    if !any {
        return None;
    }
    if i < s.len() {
        // exponent
        i += 1;
        let mut eneg = false;
        match s.get(i) {
            Some(b'-') => {
                eneg = true;
                i += 1;
            }
            Some(b'+') => i += 1,
            _ => {}
        }
        if i >= s.len() {
            return None;
        }
        let mut e: i32 = 0;
        for &c in &s[i..] {
            if !c.is_ascii_digit() {
                return None;
            }
            e = e.checked_mul(10)?.checked_add(i32::from(c - b'0'))?;
            if e > 400 {
                return None;
            }
        }
        exp += if eneg { -e } else { e };
    }
    if dropped_nonzero_half >= 6 {
        mant += 1; // first dropped digit >= 5
    }
    let shift = exp + digits as i32;
    let v: i128 = if mant == 0 {
        0
    } else if shift >= 0 {
        let p = *POW10.get(shift as usize)?;
        mant.checked_mul(p)?
    } else {
        let p = match POW10.get((-shift) as usize) {
            Some(p) => *p,
            None => return Some(0),
        };
        let q = mant / p;
        let r = mant % p;
        if r * 2 >= p { q + 1 } else { q }
    };
    let v = if neg { -v } else { v };
    let v = i64::try_from(v).ok()?;
    (v != UNDEF_I64).then_some(v)
}

/// IB's "unset" sentinels as they appear in text when a sender does not blank them: Java's
/// and Python's `Double.MAX_VALUE` and Python ibapi's `UNSET_DECIMAL` (2^127 - 1).
const UNSET_SENTINELS: [&[u8]; 3] = [
    b"1.7976931348623157E308",
    b"1.7976931348623157e+308",
    b"170141183460469231731687303715884105727",
];

/// Like [`parse_fixed`] but the empty field, and IB's unset sentinels, mean unset
/// ([`UNDEF_I64`]).
#[inline]
pub fn parse_fixed_or_unset(s: &[u8], digits: u32) -> Option<i64> {
    if s.is_empty() {
        return Some(UNDEF_I64);
    }
    parse_fixed(s, digits).or_else(|| UNSET_SENTINELS.contains(&s).then_some(UNDEF_I64))
}

/// Append the shortest exact decimal of `v` (fixed point with `digits` decimals); nothing
/// for [`UNDEF_I64`] (the empty field). No exponent, no trailing zeros: `189.25`, `-1`, `0.5`.
pub fn write_fixed(out: &mut Vec<u8>, v: i64, digits: u32) {
    if v == UNDEF_I64 {
        return;
    }
    if v < 0 {
        out.push(b'-');
    }
    let a = v.unsigned_abs();
    let p = 10u64.pow(digits);
    write_u64(out, a / p);
    let mut frac = a % p;
    if frac != 0 {
        out.push(b'.');
        let mut n = digits;
        while frac.is_multiple_of(10) {
            frac /= 10;
            n -= 1;
        }
        let mut buf = [b'0'; 20];
        let mut k = n as usize;
        while k > 0 {
            k -= 1;
            buf[k] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// The shortest exact decimal of `v` as a `String` ("" for unset).
pub fn fixed_to_string(v: i64, digits: u32) -> String {
    let mut out = Vec::new();
    write_fixed(&mut out, v, digits);
    // Only ASCII digits, '-' and '.' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Append a decimal `u64` without allocating beyond `out`'s growth.
pub fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut k = buf.len();
    loop {
        k -= 1;
        buf[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[k..]);
}

/// Append a decimal `i64`.
pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Fixed point to the nearest `f64` (for protobuf doubles). `None` for unset.
pub fn fixed_to_f64(v: i64, digits: u32) -> Option<f64> {
    (v != UNDEF_I64).then(|| v as f64 / POW10_F64[digits as usize & 15])
}

/// `f64` to fixed point, rounding to the nearest unit. `None` when not finite or out of range.
#[inline]
pub fn f64_to_fixed(x: f64, digits: u32) -> Option<i64> {
    let y = x * POW10_F64[digits as usize & 15];
    // i64::MAX as f64 rounds up to 2^63, so `<` keeps the cast in range (NaN fails both).
    if !(y >= i64::MIN as f64 && y < i64::MAX as f64) {
        return None;
    }
    // Round half away from zero without a libm call; from 2^52 on every double is whole.
    const WHOLE: f64 = 4_503_599_627_370_496.0;
    Some(if y.abs() >= WHOLE {
        y as i64
    } else if y >= 0.0 {
        (y + 0.5) as i64
    } else {
        (y - 0.5) as i64
    })
}

const POW10_F64: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<i64> {
        parse_fixed(s.as_bytes(), PRICE_DIGITS)
    }

    #[test]
    fn parses_the_forms_ib_sends() {
        assert_eq!(p("189.25"), Some(189_250_000_000));
        assert_eq!(p("-1"), Some(-1_000_000_000));
        assert_eq!(p("0.0"), Some(0));
        assert_eq!(p(".5"), Some(500_000_000));
        assert_eq!(p("1.0E-4"), Some(100_000));
        assert_eq!(p("1e3"), Some(1_000_000_000_000));
        assert_eq!(p("+2"), Some(2_000_000_000));
        assert_eq!(p("0.0000000004"), Some(0));
        assert_eq!(p("0.0000000005"), Some(1));
        assert_eq!(p("-0.0000000005"), Some(-1));
        assert_eq!(parse_fixed(b"300", SIZE_DIGITS), Some(30_000_000_000));
        for bad in [
            "",
            "-",
            ".",
            "1.2.3",
            "abc",
            "Infinity",
            "NaN",
            "1e",
            "1e+",
            "9999999999999",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(parse_fixed_or_unset(b"", PRICE_DIGITS), Some(UNDEF_I64));
        assert_eq!(
            parse_fixed_or_unset(b"1.7976931348623157E308", PRICE_DIGITS),
            Some(UNDEF_I64)
        );
        assert_eq!(
            parse_fixed_or_unset(b"170141183460469231731687303715884105727", SIZE_DIGITS),
            Some(UNDEF_I64)
        );
        assert_eq!(parse_fixed_or_unset(b"1.8E308", PRICE_DIGITS), None);
        assert_eq!(parse_fixed(b"1E+2", SIZE_DIGITS), Some(10_000_000_000));
    }

    #[test]
    fn writes_the_shortest_exact_decimal() {
        let w = |v, d| fixed_to_string(v, d);
        assert_eq!(w(189_250_000_000, PRICE_DIGITS), "189.25");
        assert_eq!(w(-1_000_000_000, PRICE_DIGITS), "-1");
        assert_eq!(w(0, PRICE_DIGITS), "0");
        assert_eq!(w(1, PRICE_DIGITS), "0.000000001");
        assert_eq!(w(-5, SIZE_DIGITS), "-0.00000005");
        assert_eq!(w(i64::MIN, PRICE_DIGITS), "-9223372036.854775808");
        assert_eq!(w(UNDEF_I64, PRICE_DIGITS), "");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        #[test]
        fn fast_path_agrees_with_the_general_parser(s in "[-+]?[0-9]{0,21}(\\.[0-9]{0,21})?([eE][-+]?[0-9]{1,2})?") {
            for d in [PRICE_DIGITS, SIZE_DIGITS] {
                proptest::prop_assert_eq!(parse_fixed(s.as_bytes(), d), parse_fixed_slow(s.as_bytes(), d), "{}", s);
            }
        }

        #[test]
        fn every_value_survives_text(v in proptest::prelude::any::<i64>()) {
            for d in [PRICE_DIGITS, SIZE_DIGITS] {
                let t = fixed_to_string(v, d);
                let back = if v == UNDEF_I64 { parse_fixed_or_unset(t.as_bytes(), d) } else { parse_fixed(t.as_bytes(), d) };
                proptest::prop_assert_eq!(back, Some(v));
            }
        }
    }

    #[test]
    fn doubles_round_to_the_nearest_unit() {
        assert_eq!(f64_to_fixed(189.24, PRICE_DIGITS), Some(189_240_000_000));
        assert_eq!(f64_to_fixed(f64::INFINITY, PRICE_DIGITS), None);
        assert_eq!(f64_to_fixed(1e300, PRICE_DIGITS), None);
        assert_eq!(f64_to_fixed(f64::NAN, PRICE_DIGITS), None);
        assert_eq!(f64_to_fixed(-0.0000000015, PRICE_DIGITS), Some(-2));
        assert_eq!(f64_to_fixed(0.0000000004, PRICE_DIGITS), Some(0));
        assert_eq!(fixed_to_f64(189_250_000_000, PRICE_DIGITS), Some(189.25));
    }
}
