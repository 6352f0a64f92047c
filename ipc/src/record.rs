//! The 64-byte record every ib-stream process shares.
//!
//! One record is one cache line. The same bytes sit in the shared-memory ring, in the
//! recorder's binary files and in the benchmarks, so the layout is pinned by tests and
//! documented field by field below (all integers little-endian, as on every platform
//! ib-stream runs on):
//!
//! | offset | size | field           | meaning                                                   |
//! |-------:|-----:|-----------------|-----------------------------------------------------------|
//! | 0      | 8    | `seq`           | ring sequence number, 1-based, per writer epoch            |
//! | 8      | 8    | `ts_recv`       | engine receive time, ns since the Unix epoch (UTC)         |
//! | 16     | 8    | `ts_event`      | IB's time for the tick in ns, or [`UNDEF_I64`]              |
//! | 24     | 4    | `instrument_id` | IB conId (0 for records about no instrument)                |
//! | 28     | 1    | `kind`          | [`RecordKind`]                                             |
//! | 29     | 1    | `tick_type`     | kind-specific: IB tick type id for L1 kinds, reason codes  |
//! | 30     | 2    | `flags`         | [`flags`] bits                                             |
//! | 32     | 32   | `body`          | four `i64` words whose meaning depends on `kind`           |
//!
//! Prices are `i64` fixed point with [`PRICE_SCALE`] (1e-9) and sizes `i64` fixed point with
//! [`SIZE_SCALE`] (1e-8): exact decimal values, no float rounding. [`UNDEF_I64`] (`i64::MAX`)
//! marks a price, size or time that IB did not send.
//!
//! Strings (exchange, trade conditions, L1 string ticks) do not fit in a record. They are
//! interned: the record holds a `u32` id, and the id's bytes live in a string table that is
//! published beside the ring (see `strings`). Id 0 is always the empty string.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of one record in bytes: one cache line.
pub const RECORD_SIZE: usize = 64;

/// Fixed-point scale of every price: a stored value `v` means `v / PRICE_SCALE`.
pub const PRICE_SCALE: i64 = 1_000_000_000;

/// Fixed-point scale of every size and volume: a stored value `v` means `v / SIZE_SCALE`.
/// 1e-8 keeps crypto quantities exact and still holds volumes up to 9.2e10.
pub const SIZE_SCALE: i64 = 100_000_000;

/// "Not sent by IB" for any price, size, time or other `i64` field.
pub const UNDEF_I64: i64 = i64::MAX;

/// What a record is. Stored as one byte; values are part of the file format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Tick-by-tick "Last": `body = [price, size, exchange_id | conditions_id << 32, 0]`.
    TbtLast = 1,
    /// Tick-by-tick "AllLast": same body as [`RecordKind::TbtLast`].
    TbtAllLast = 2,
    /// Tick-by-tick "BidAsk": `body = [bid_price, ask_price, bid_size, ask_size]`.
    TbtBidAsk = 3,
    /// Tick-by-tick "MidPoint": `body = [mid_price, 0, 0, 0]`.
    TbtMidPoint = 4,
    /// reqMktData tickPrice: `tick_type` = IB tick type (delayed ids mapped to live ones with
    /// [`flags::DELAYED`] set); `body = [price, size or UNDEF, 0, 0]`.
    L1Price = 16,
    /// reqMktData tickSize: `body = [size, 0, 0, 0]`.
    L1Size = 17,
    /// reqMktData tickGeneric: `body = [value as PRICE_SCALE fixed point, 0, 0, 0]`.
    L1Generic = 18,
    /// reqMktData tickString: `body = [string_id, 0, 0, 0]` (see the string table).
    L1String = 19,
    /// Data may be missing: `body = [first_lost_seq, last_lost_seq, from_ns, to_ns]`.
    /// `tick_type` holds a [`GapReason`]. A gap about time only has seqs `0, 0`.
    Gap = 64,
    /// The engine's connection to IB changed: `tick_type` = [`ConnState`],
    /// `body = [server_version, client_id, ib_error_code or 0, 0]`.
    Connection = 65,
    /// A subscription changed: `instrument_id` = conId, `tick_type` = [`SubState`],
    /// `body = [subscribed kind (RecordKind as i64), ib_error_code or 0, req_id, market_data_type]`.
    Subscription = 66,
    /// The writer is alive: `body = [records published so far, 0, 0, 0]`.
    Heartbeat = 67,
}

impl RecordKind {
    /// Every kind, in value order (for tests and tools).
    pub const ALL: [RecordKind; 12] = [
        RecordKind::TbtLast,
        RecordKind::TbtAllLast,
        RecordKind::TbtBidAsk,
        RecordKind::TbtMidPoint,
        RecordKind::L1Price,
        RecordKind::L1Size,
        RecordKind::L1Generic,
        RecordKind::L1String,
        RecordKind::Gap,
        RecordKind::Connection,
        RecordKind::Subscription,
        RecordKind::Heartbeat,
    ];

    /// The kind for a stored byte, or `None` for a value this version does not know.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    /// True for the kinds that carry market data (not system records).
    pub fn is_market_data(self) -> bool {
        (self as u8) < 64
    }

    /// The short name used in file names, JSON (`tt`) and the web API.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::TbtLast => "last",
            RecordKind::TbtAllLast => "all_last",
            RecordKind::TbtBidAsk => "bid_ask",
            RecordKind::TbtMidPoint => "mid_point",
            RecordKind::L1Price => "l1_price",
            RecordKind::L1Size => "l1_size",
            RecordKind::L1Generic => "l1_generic",
            RecordKind::L1String => "l1_string",
            RecordKind::Gap => "gap",
            RecordKind::Connection => "connection",
            RecordKind::Subscription => "subscription",
            RecordKind::Heartbeat => "heartbeat",
        }
    }

    /// The kind for a short name (inverse of [`RecordKind::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

/// Bits of [`Record::flags`]. Bits 0..8 have one meaning for every kind; bits 8..16 are
/// the tick's own attributes and depend on the kind.
pub mod flags {
    /// Delayed market data (IB sent the delayed tick ids, or marketDataType 3/4).
    pub const DELAYED: u16 = 1 << 0;
    /// Frozen market data (marketDataType 2 or 4).
    pub const FROZEN: u16 = 1 << 1;
    /// Part of a snapshot, not a stream.
    pub const SNAPSHOT: u16 = 1 << 2;
    /// The engine saw the data as stale (after IB error 1100, before 1101/1102).
    pub const STALE: u16 = 1 << 3;
    /// Filled in afterwards from IB's history (`ib-stream backfill`), not received live:
    /// one-second timestamps, no live sequence number.
    pub const BACKFILL: u16 = 1 << 4;

    /// Last/AllLast: the trade was outside the limit (`pastLimit`).
    pub const PAST_LIMIT: u16 = 1 << 8;
    /// Last/AllLast: an unreported trade.
    pub const UNREPORTED: u16 = 1 << 9;
    /// BidAsk: the bid is lower than the day's low (`bidPastLow`).
    pub const BID_PAST_LOW: u16 = 1 << 8;
    /// BidAsk: the ask is higher than the day's high (`askPastHigh`).
    pub const ASK_PAST_HIGH: u16 = 1 << 9;
    /// L1Price: `canAutoExecute`.
    pub const CAN_AUTO_EXECUTE: u16 = 1 << 8;
    /// L1Price: `pastLimit`.
    pub const L1_PAST_LIMIT: u16 = 1 << 9;
    /// L1Price: `preOpen`.
    pub const PRE_OPEN: u16 = 1 << 10;
}

/// Why a [`RecordKind::Gap`] was written (its `tick_type` byte).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The connection to IB was down or being re-established.
    Disconnected = 1,
    /// IB reported connectivity lost (1100) and later restored with data lost (1101).
    IbConnectivity = 2,
    /// A reader was lapped by the writer: records `first..=last` were overwritten unread.
    ReaderOverrun = 3,
    /// The recorder could not write (disk full or another I/O error).
    WriteError = 4,
    /// The writer restarted (new epoch); what happened between is unknown.
    WriterRestart = 5,
}

impl GapReason {
    /// The reason for a stored byte, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        [
            GapReason::Disconnected,
            GapReason::IbConnectivity,
            GapReason::ReaderOverrun,
            GapReason::WriteError,
            GapReason::WriterRestart,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
    }
}

/// Connection states carried in [`RecordKind::Connection`] records and the status region.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// No connection and none being attempted.
    Disconnected = 0,
    /// TCP connect or handshake under way.
    Connecting = 1,
    /// Handshake done, API started, data flowing.
    Connected = 2,
    /// IB said connectivity to its servers is lost (1100): data is stale.
    IbLost = 3,
    /// Waiting before the next connect attempt.
    Backoff = 4,
}

impl ConnState {
    /// The state for a stored byte, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        [
            ConnState::Disconnected,
            ConnState::Connecting,
            ConnState::Connected,
            ConnState::IbLost,
            ConnState::Backoff,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }
}

/// Subscription states carried in [`RecordKind::Subscription`] records and the status region.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubState {
    /// Waiting for a pacing or slot budget.
    Queued = 0,
    /// Sent to IB, no data yet.
    Requested = 1,
    /// Data is arriving.
    Active = 2,
    /// IB rejected it (`body[1]` holds IB's error code).
    Rejected = 3,
    /// Cancelled at IB (last interested client left).
    Cancelled = 4,
    /// No data for longer than the watchdog allows.
    Silent = 5,
    /// Now delivering delayed data after a live-data refusal.
    Delayed = 6,
}

impl SubState {
    /// The state for a stored byte, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        [
            SubState::Queued,
            SubState::Requested,
            SubState::Active,
            SubState::Rejected,
            SubState::Cancelled,
            SubState::Silent,
            SubState::Delayed,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }
}

/// One tick or system event: 64 bytes, `repr(C)`, no padding, no pointers.
///
/// Fields are public so that a strategy reads them with no call at all; the typed views
/// ([`Record::kind`], [`Record::as_trade`], ...) interpret `body` by kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Record {
    /// Ring sequence number, 1-based, strictly increasing per writer epoch.
    pub seq: u64,
    /// Engine receive time, ns since the Unix epoch.
    pub ts_recv: i64,
    /// IB's event time in ns since the Unix epoch, or [`UNDEF_I64`].
    pub ts_event: i64,
    /// IB conId; 0 when the record is about no instrument.
    pub instrument_id: u32,
    /// A [`RecordKind`] value.
    pub kind: u8,
    /// Kind-specific byte (IB tick type for L1 kinds; reason or state for system kinds).
    pub tick_type: u8,
    /// [`flags`] bits.
    pub flags: u16,
    /// Kind-specific payload (see [`RecordKind`]).
    pub body: [i64; 4],
}

const _: () = assert!(std::mem::size_of::<Record>() == RECORD_SIZE);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

/// A trade (tick-by-tick Last or AllLast), decoded from a record's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trade {
    /// Price, [`PRICE_SCALE`] fixed point.
    pub price: i64,
    /// Size, [`SIZE_SCALE`] fixed point.
    pub size: i64,
    /// Interned exchange id (0 = empty).
    pub exchange_id: u32,
    /// Interned special-conditions id (0 = empty).
    pub conditions_id: u32,
}

/// A quote (tick-by-tick BidAsk), decoded from a record's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Bid price, [`PRICE_SCALE`] fixed point.
    pub bid_price: i64,
    /// Ask price, [`PRICE_SCALE`] fixed point.
    pub ask_price: i64,
    /// Bid size, [`SIZE_SCALE`] fixed point.
    pub bid_size: i64,
    /// Ask size, [`SIZE_SCALE`] fixed point.
    pub ask_size: i64,
}

impl Record {
    /// An all-zero record (kind 0 is no valid kind: a slot that was never written).
    pub const ZERO: Record = Record {
        seq: 0,
        ts_recv: 0,
        ts_event: 0,
        instrument_id: 0,
        kind: 0,
        tick_type: 0,
        flags: 0,
        body: [0; 4],
    };

    /// A record of `kind` with every other field zero and `ts_event` undefined.
    pub const fn new(kind: RecordKind) -> Record {
        Record {
            kind: kind as u8,
            ts_event: UNDEF_I64,
            ..Record::ZERO
        }
    }

    /// A tick-by-tick Last (or AllLast when `all_last`) record.
    pub fn trade(all_last: bool, instrument_id: u32, ts_event: i64, t: Trade) -> Record {
        let kind = if all_last {
            RecordKind::TbtAllLast
        } else {
            RecordKind::TbtLast
        };
        Record {
            instrument_id,
            ts_event,
            body: [
                t.price,
                t.size,
                i64::from(t.exchange_id) | (i64::from(t.conditions_id) << 32),
                0,
            ],
            ..Record::new(kind)
        }
    }

    /// A tick-by-tick BidAsk record.
    pub fn quote(instrument_id: u32, ts_event: i64, q: Quote) -> Record {
        Record {
            instrument_id,
            ts_event,
            body: [q.bid_price, q.ask_price, q.bid_size, q.ask_size],
            ..Record::new(RecordKind::TbtBidAsk)
        }
    }

    /// A tick-by-tick MidPoint record.
    pub fn mid_point(instrument_id: u32, ts_event: i64, mid_price: i64) -> Record {
        Record {
            instrument_id,
            ts_event,
            body: [mid_price, 0, 0, 0],
            ..Record::new(RecordKind::TbtMidPoint)
        }
    }

    /// The kind, or `None` for a byte this version does not know.
    pub fn kind(&self) -> Option<RecordKind> {
        RecordKind::from_u8(self.kind)
    }

    /// True when `flag` (one of [`flags`]) is set.
    pub fn has_flag(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The trade of a Last/AllLast record.
    pub fn as_trade(&self) -> Option<Trade> {
        match self.kind()? {
            RecordKind::TbtLast | RecordKind::TbtAllLast => Some(Trade {
                price: self.body[0],
                size: self.body[1],
                exchange_id: self.body[2] as u32,
                conditions_id: (self.body[2] >> 32) as u32,
            }),
            _ => None,
        }
    }

    /// The quote of a BidAsk record.
    pub fn as_quote(&self) -> Option<Quote> {
        match self.kind()? {
            RecordKind::TbtBidAsk => Some(Quote {
                bid_price: self.body[0],
                ask_price: self.body[1],
                bid_size: self.body[2],
                ask_size: self.body[3],
            }),
            _ => None,
        }
    }

    /// The record's bytes, exactly as stored in the ring and in binary files.
    pub fn as_bytes_ref(&self) -> &[u8; RECORD_SIZE] {
        zerocopy::transmute_ref!(self)
    }

    /// A record read from 64 bytes (any alignment).
    pub fn from_bytes_array(bytes: &[u8; RECORD_SIZE]) -> Record {
        zerocopy::transmute!(*bytes)
    }
}

/// A fixed-point value as an `f64`, for display and for consumers that want floats.
/// Returns `None` for [`UNDEF_I64`].
pub fn fixed_to_f64(v: i64, scale: i64) -> Option<f64> {
    (v != UNDEF_I64).then(|| v as f64 / scale as f64)
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn size_alignment_and_offsets_are_pinned() {
        // Files on disk depend on these numbers: change them only with a layout version bump.
        assert_eq!(std::mem::size_of::<Record>(), 64);
        assert_eq!(std::mem::align_of::<Record>(), 8);
        assert_eq!(offset_of!(Record, seq), 0);
        assert_eq!(offset_of!(Record, ts_recv), 8);
        assert_eq!(offset_of!(Record, ts_event), 16);
        assert_eq!(offset_of!(Record, instrument_id), 24);
        assert_eq!(offset_of!(Record, kind), 28);
        assert_eq!(offset_of!(Record, tick_type), 29);
        assert_eq!(offset_of!(Record, flags), 30);
        assert_eq!(offset_of!(Record, body), 32);
    }

    #[test]
    fn kind_values_are_pinned() {
        let pinned: [(RecordKind, u8); 12] = [
            (RecordKind::TbtLast, 1),
            (RecordKind::TbtAllLast, 2),
            (RecordKind::TbtBidAsk, 3),
            (RecordKind::TbtMidPoint, 4),
            (RecordKind::L1Price, 16),
            (RecordKind::L1Size, 17),
            (RecordKind::L1Generic, 18),
            (RecordKind::L1String, 19),
            (RecordKind::Gap, 64),
            (RecordKind::Connection, 65),
            (RecordKind::Subscription, 66),
            (RecordKind::Heartbeat, 67),
        ];
        for (k, v) in pinned {
            assert_eq!(k as u8, v);
            assert_eq!(RecordKind::from_u8(v), Some(k));
            assert_eq!(RecordKind::from_name(k.name()), Some(k));
        }
        assert_eq!(RecordKind::from_u8(0), None);
        assert_eq!(RecordKind::from_u8(255), None);
    }

    #[test]
    fn bytes_are_little_endian_in_field_order() {
        let mut r = Record::new(RecordKind::TbtBidAsk);
        r.seq = 0x0102_0304_0506_0708;
        r.instrument_id = 711_280_073;
        r.flags = flags::DELAYED | flags::BID_PAST_LOW;
        let b = r.as_bytes_ref();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &711_280_073u32.to_le_bytes());
        assert_eq!(b[28], 3);
        assert_eq!(
            &b[30..32],
            &(flags::DELAYED | flags::BID_PAST_LOW).to_le_bytes()
        );
        assert_eq!(Record::from_bytes_array(b), r);
    }
}
