//! The text form: NUL-terminated ASCII fields. Reading is a zero-allocation cursor over
//! the frame; writing appends to the caller's buffer.

use super::decimal::{self, PRICE_DIGITS, SIZE_DIGITS};
use super::error::{DecodeError, FieldProblem};
use crate::ipc::UNDEF_I64;

/// IB's "unset" integer (`UNSET_INTEGER` = 2^31 - 1), sent as the empty field.
pub const UNSET_I32: i32 = i32::MAX;

/// Cursor over the NUL-terminated fields of one text message (after the message id).
/// Every read returns a typed error naming the message and the field index.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    msg_id: u32,
    index: u16,
}

impl<'a> Fields<'a> {
    /// Fields of `body` (the bytes after the message id) of message `msg_id`.
    pub fn new(msg_id: u32, body: &'a [u8]) -> Self {
        Fields {
            rest: body,
            msg_id,
            index: 0,
        }
    }

    /// The message id these fields belong to.
    pub fn msg_id(&self) -> u32 {
        self.msg_id
    }

    /// Index of the next field (0-based, after the message id).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// True when no field is left (a trailing NUL ends the last field; nothing follows).
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// How many fields are left (scans; for exact-count checks on cold messages).
    pub fn remaining(&self) -> usize {
        let mut n = 0;
        let mut r = self.rest;
        while !r.is_empty() {
            n += 1;
            r = match r.iter().position(|&b| b == 0) {
                Some(p) => &r[p + 1..],
                None => &[],
            };
        }
        n
    }

    fn err(&self, problem: FieldProblem) -> DecodeError {
        DecodeError::Field {
            msg_id: self.msg_id,
            index: self.index.saturating_sub(1),
            problem,
        }
    }

    /// The next raw field, or `None` at the end.
    #[inline]
    pub fn next_raw(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (f, rest) = match self.rest.iter().position(|&b| b == 0) {
            Some(p) => (&self.rest[..p], &self.rest[p + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        self.index = self.index.saturating_add(1);
        Some(f)
    }

    /// The next field; a missing field is an error.
    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        match self.next_raw() {
            Some(f) => Ok(f),
            None => {
                self.index = self.index.saturating_add(1);
                Err(self.err(FieldProblem::Missing))
            }
        }
    }

    /// Skip one field (must exist).
    pub fn skip_field(&mut self) -> Result<(), DecodeError> {
        self.bytes().map(|_| ())
    }

    /// The next field as UTF-8 text.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.err(FieldProblem::BadUtf8))
    }

    /// The next field as an owned string.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    /// The next field as `i64`; the empty field reads as 0 (as IB's clients do).
    #[inline]
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.bytes()?;
        if b.is_empty() {
            return Ok(0);
        }
        parse_i64(b).ok_or_else(|| self.err(FieldProblem::BadInt))
    }

    /// The next field as `i32`; the empty field reads as 0.
    #[inline]
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        let v = self.i64()?;
        i32::try_from(v).map_err(|_| self.err(FieldProblem::BadInt))
    }

    /// The next field as `i32` where the empty field means unset ([`UNSET_I32`]).
    pub fn opt_i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.bytes()?;
        if b.is_empty() {
            return Ok(UNSET_I32);
        }
        parse_i64(b)
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| self.err(FieldProblem::BadInt))
    }

    /// The next field as a boolean: `1`/`0`, `true`/`false`, empty = false, other ints = != 0.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        let b = self.bytes()?;
        match b {
            b"" | b"0" | b"false" | b"False" => Ok(false),
            b"1" | b"true" | b"True" => Ok(true),
            _ => parse_i64(b)
                .map(|v| v != 0)
                .ok_or_else(|| self.err(FieldProblem::BadBool)),
        }
    }

    /// The next field as a price (1e-9 fixed point); empty = unset.
    #[inline]
    pub fn price(&mut self) -> Result<i64, DecodeError> {
        let b = self.bytes()?;
        decimal::parse_fixed_or_unset(b, PRICE_DIGITS)
            .ok_or_else(|| self.err(FieldProblem::BadDecimal))
    }

    /// The next field as a size (1e-8 fixed point); empty = unset.
    #[inline]
    pub fn size(&mut self) -> Result<i64, DecodeError> {
        let b = self.bytes()?;
        decimal::parse_fixed_or_unset(b, SIZE_DIGITS)
            .ok_or_else(|| self.err(FieldProblem::BadDecimal))
    }

    /// The next field as `f64` (`Infinity` accepted); empty = NaN (unset).
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        let b = self.bytes()?;
        parse_f64(b).ok_or_else(|| self.err(FieldProblem::BadFloat))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        self.next_raw()
    }
}

/// Parse a decimal integer (optional sign) with no allocation.
#[inline]
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// Parse a float as IB writes it (`Infinity`, `-Infinity`, `NaN`, decimals, exponents);
/// empty = NaN.
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    match b {
        b"" => Some(f64::NAN),
        b"Infinity" | b"inf" => Some(f64::INFINITY),
        b"-Infinity" | b"-inf" => Some(f64::NEG_INFINITY),
        b"NaN" | b"nan" => Some(f64::NAN),
        _ => {
            let s = std::str::from_utf8(b).ok()?;
            // Rust also accepts "infinity"/"nan" spellings; IB never sends them.
            if s.bytes()
                .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E')
            {
                return None;
            }
            s.parse().ok()
        }
    }
}

/// Appends NUL-terminated fields to a buffer.
#[derive(Debug)]
pub struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> FieldWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        FieldWriter { out }
    }

    /// A raw field. NUL bytes cannot travel inside a text field; they are dropped.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        if b.contains(&0) {
            self.out.extend(b.iter().copied().filter(|&c| c != 0));
        } else {
            self.out.extend_from_slice(b);
        }
        self.out.push(0);
        self
    }

    /// Bytes that are already NUL-terminated fields, appended as they are.
    pub fn raw(&mut self, fields: &[u8]) -> &mut Self {
        self.out.extend_from_slice(fields);
        self
    }

    /// A text field.
    #[inline]
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// An integer field.
    #[inline]
    pub fn int(&mut self, v: i64) -> &mut Self {
        decimal::write_i64(self.out, v);
        self.out.push(0);
        self
    }

    /// An integer field where [`UNSET_I32`] is written as the empty field.
    pub fn opt_i32(&mut self, v: i32) -> &mut Self {
        if v == UNSET_I32 {
            self.bytes(b"")
        } else {
            self.int(i64::from(v))
        }
    }

    /// A boolean as `1`/`0`.
    #[inline]
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.bytes(if v { b"1" } else { b"0" })
    }

    /// A price (shortest exact decimal; unset = empty).
    #[inline]
    pub fn price(&mut self, v: i64) -> &mut Self {
        decimal::write_fixed(self.out, v, PRICE_DIGITS);
        self.out.push(0);
        self
    }

    /// A size (shortest exact decimal; unset = empty).
    #[inline]
    pub fn size(&mut self, v: i64) -> &mut Self {
        decimal::write_fixed(self.out, v, SIZE_DIGITS);
        self.out.push(0);
        self
    }

    /// A float: shortest round-trip decimal, `Infinity`/`-Infinity`, NaN = empty (unset).
    pub fn f64(&mut self, v: f64) -> &mut Self {
        use std::io::Write as _;
        if v.is_nan() {
        } else if v == f64::INFINITY {
            self.out.extend_from_slice(b"Infinity");
        } else if v == f64::NEG_INFINITY {
            self.out.extend_from_slice(b"-Infinity");
        } else {
            // Writing to a Vec cannot fail.
            let _ = write!(self.out, "{v}");
        }
        self.out.push(0);
        self
    }

    /// An unset price/size/time written as empty.
    pub fn unset(&mut self) -> &mut Self {
        self.bytes(b"")
    }
}

/// True when a fixed-point value is the unset marker.
pub fn is_unset(v: i64) -> bool {
    v == UNDEF_I64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_nul_and_drop_the_trailing_empty() {
        let mut f = Fields::new(1, b"6\x001\x00\x00189.25\x00");
        assert_eq!(f.remaining(), 4);
        assert_eq!(f.i32().unwrap(), 6);
        assert_eq!(f.i32().unwrap(), 1);
        assert_eq!(f.price().unwrap(), UNDEF_I64);
        assert_eq!(f.price().unwrap(), 189_250_000_000);
        assert!(f.is_empty());
        assert_eq!(
            f.i32(),
            Err(DecodeError::Field {
                msg_id: 1,
                index: 4,
                problem: FieldProblem::Missing
            })
        );
    }

    #[test]
    fn bad_fields_are_typed_errors() {
        let mut f = Fields::new(2, b"x\x00\xff\x00yes\x00");
        assert!(matches!(
            f.i32(),
            Err(DecodeError::Field {
                index: 0,
                problem: FieldProblem::BadInt,
                ..
            })
        ));
        assert!(matches!(
            f.str(),
            Err(DecodeError::Field {
                index: 1,
                problem: FieldProblem::BadUtf8,
                ..
            })
        ));
        assert!(matches!(
            f.bool(),
            Err(DecodeError::Field {
                index: 2,
                problem: FieldProblem::BadBool,
                ..
            })
        ));
    }

    #[test]
    fn writer_writes_ib_forms() {
        let mut out = Vec::new();
        FieldWriter::new(&mut out)
            .int(-1)
            .bool(true)
            .price(UNDEF_I64)
            .f64(f64::INFINITY)
            .f64(3.0)
            .opt_i32(UNSET_I32)
            .str("a\0b");
        assert_eq!(out, b"-1\x001\x00\x00Infinity\x003\x00\x00ab\x00");
        assert_eq!(parse_f64(b"Infinity"), Some(f64::INFINITY));
        assert!(parse_f64(b"NaN").unwrap().is_nan());
        assert_eq!(parse_f64(b"NaNx"), None);
        assert_eq!(parse_f64(b"infinity"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), None);
        assert_eq!(parse_i64(b"123"), Some(123));
    }
}
