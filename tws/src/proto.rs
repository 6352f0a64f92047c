//! A small zero-allocation protobuf (proto2 wire format) reader and writer: exactly what
//! IB's messages need (varint, fixed64 double, length-delimited strings and messages).
//! Unknown fields are skipped, so newer gateways with extra fields still decode.

use super::error::ProtoError;

/// One field value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (doubles).
    Fixed64(u64),
    /// Wire type 2 (strings, bytes, messages, packed repeated).
    Len(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl<'a> Value<'a> {
    /// As `int32` (negative values are sign-extended 10-byte varints); `None` for other types.
    #[inline]
    pub fn i32(self) -> Option<i32> {
        match self {
            Value::Varint(v) => Some(v as i64 as i32),
            _ => None,
        }
    }
    /// As `int64`.
    #[inline]
    pub fn i64(self) -> Option<i64> {
        match self {
            Value::Varint(v) => Some(v as i64),
            _ => None,
        }
    }
    /// As `bool`.
    #[inline]
    pub fn bool(self) -> Option<bool> {
        match self {
            Value::Varint(v) => Some(v != 0),
            _ => None,
        }
    }
    /// As `double`.
    #[inline]
    pub fn f64(self) -> Option<f64> {
        match self {
            Value::Fixed64(v) => Some(f64::from_bits(v)),
            _ => None,
        }
    }
    /// As bytes (string or message).
    #[inline]
    pub fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Value::Len(b) => Some(b),
            _ => None,
        }
    }
    /// As UTF-8 text.
    pub fn str(self) -> Option<&'a str> {
        self.bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Iterates the fields of one protobuf message.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over one message's bytes.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, ProtoError> {
        // One-byte varints (tags, small ids, bools) are most of the stream.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut v: u64 = 0;
        let start = self.pos;
        for shift in 0..10u32 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ProtoError::Truncated(self.pos));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * shift);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::VarintTooLong(start))
    }

    /// The next field `(number, value)`, `Ok(None)` at the end.
    #[inline]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wt = (key & 7) as u8;
        if key >> 3 == 0 {
            return Err(ProtoError::ZeroField);
        }
        if key >> 3 > (1 << 29) - 1 {
            return Err(ProtoError::FieldTooLarge(key >> 3));
        }
        let field = (key >> 3) as u32;
        let v = match wt {
            0 => Value::Varint(self.varint()?),
            1 => {
                let end = self.pos + 8;
                let b = self
                    .buf
                    .get(self.pos..end)
                    .ok_or(ProtoError::Truncated(self.pos))?;
                self.pos = end;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let at = self.pos;
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| ProtoError::Truncated(at))?;
                let end = self.pos.checked_add(len).ok_or(ProtoError::Truncated(at))?;
                let b = self
                    .buf
                    .get(self.pos..end)
                    .ok_or(ProtoError::Truncated(at))?;
                self.pos = end;
                Value::Len(b)
            }
            5 => {
                let end = self.pos + 4;
                let b = self
                    .buf
                    .get(self.pos..end)
                    .ok_or(ProtoError::Truncated(self.pos))?;
                self.pos = end;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            _ => {
                return Err(ProtoError::BadWireType {
                    field,
                    wire_type: wt,
                });
            }
        };
        Ok(Some((field, v)))
    }
}

/// Append a varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wt: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wt));
}

/// Appends fields of one protobuf message.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Writer { out }
    }

    /// Bytes that are already encoded fields, appended as they are.
    pub fn raw(&mut self, fields: &[u8]) -> &mut Self {
        self.out.extend_from_slice(fields);
        self
    }

    /// `int32` field (always written; negative = 10-byte varint as protobuf requires).
    #[inline]
    pub fn i32(&mut self, field: u32, v: i32) -> &mut Self {
        key(self.out, field, 0);
        put_varint(self.out, i64::from(v) as u64);
        self
    }
    /// `int64` field.
    #[inline]
    pub fn i64(&mut self, field: u32, v: i64) -> &mut Self {
        key(self.out, field, 0);
        put_varint(self.out, v as u64);
        self
    }
    /// `bool` field.
    #[inline]
    pub fn bool(&mut self, field: u32, v: bool) -> &mut Self {
        key(self.out, field, 0);
        self.out.push(u8::from(v));
        self
    }
    /// `bool` field written only when true (how IB's clients send flags).
    pub fn bool_if(&mut self, field: u32, v: bool) -> &mut Self {
        if v {
            self.bool(field, true);
        }
        self
    }
    /// `double` field.
    #[inline]
    pub fn f64(&mut self, field: u32, v: f64) -> &mut Self {
        key(self.out, field, 1);
        self.out.extend_from_slice(&v.to_bits().to_le_bytes());
        self
    }
    /// `string`/`bytes` field (always written).
    #[inline]
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        key(self.out, field, 2);
        put_varint(self.out, b.len() as u64);
        self.out.extend_from_slice(b);
        self
    }
    /// `string` field written only when not empty (IB omits empty strings).
    #[inline]
    pub fn str(&mut self, field: u32, s: &str) -> &mut Self {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
        self
    }

    /// A fixed-point decimal (`digits` decimals) as a string field, written in place with no
    /// allocation; nothing for unset.
    pub fn decimal(&mut self, field: u32, v: i64, digits: u32) -> &mut Self {
        if v == crate::ipc::UNDEF_I64 {
            return self;
        }
        key(self.out, field, 2);
        let at = self.out.len();
        self.out.push(0);
        crate::tws::decimal::write_fixed(self.out, v, digits);
        // An i64 decimal is at most 21 characters: the one-byte length always fits.
        self.out[at] = (self.out.len() - at - 1) as u8;
        self
    }

    /// A nested message field written by `f`; its length prefix is inserted afterwards.
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer<'_>)) -> &mut Self {
        key(self.out, field, 2);
        let start = self.out.len();
        f(&mut Writer { out: self.out });
        let len = self.out.len() - start;
        // The length prefix goes before the body: encode it on the stack (no allocation on
        // the encode path), append, and rotate it into place.
        let mut lb = [0u8; 10];
        let mut n = 0;
        let mut v = len as u64;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                lb[n] = byte;
                n += 1;
                break;
            }
            lb[n] = byte | 0x80;
            n += 1;
        }
        self.out.extend_from_slice(&lb[..n]);
        self.out[start..].rotate_right(n);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_wire_type() {
        let mut out = Vec::new();
        Writer::new(&mut out)
            .i32(1, -1)
            .i64(2, 1_767_277_800_000)
            .f64(3, 189.25)
            .str(4, "300")
            .str(5, "")
            .message(6, |w| {
                w.bool(1, false).bool(2, true);
            });
        // -1 as int32 is ten bytes.
        assert_eq!(
            &out[..12],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x10
            ]
        );
        let mut r = Reader::new(&out);
        assert_eq!(r.next_field().unwrap().unwrap().1.i32(), Some(-1));
        assert_eq!(
            r.next_field().unwrap().unwrap().1.i64(),
            Some(1_767_277_800_000)
        );
        assert_eq!(r.next_field().unwrap().unwrap().1.f64(), Some(189.25));
        assert_eq!(r.next_field().unwrap().unwrap().1.str(), Some("300"));
        let (f, v) = r.next_field().unwrap().unwrap();
        assert_eq!((f, v.bytes()), (6, Some(&[0x08, 0, 0x10, 1][..])));
        assert_eq!(r.next_field().unwrap(), None);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(
            Reader::new(&[0x08]).next_field(),
            Err(ProtoError::Truncated(1))
        );
        assert_eq!(
            Reader::new(&[0x12, 0x05, 1]).next_field(),
            Err(ProtoError::Truncated(1))
        );
        assert_eq!(
            Reader::new(&[0x19, 1, 2]).next_field(),
            Err(ProtoError::Truncated(1))
        );
        assert_eq!(
            Reader::new(&[0x0b]).next_field(),
            Err(ProtoError::BadWireType {
                field: 1,
                wire_type: 3
            })
        );
        assert_eq!(
            Reader::new(&[0x00]).next_field(),
            Err(ProtoError::ZeroField)
        );
        assert_eq!(
            Reader::new(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .next_field(),
            Err(ProtoError::VarintTooLong(1))
        );
        let huge = [
            0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(Reader::new(&huge).next_field().is_err());
    }
}
