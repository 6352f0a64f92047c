//! Tracked contracts in the original IB-Stream syntax:
//! `711280073:MNQ:bid_ask;last:24,265598:AAPL:last:1`
//! (`conId:SYMBOL:tick_type;tick_type:buffer_hours`, entries separated by commas).
//!
//! Tick types and buffer hours may be left out (`265598:AAPL` tracks bid_ask and last, as the
//! original did, for one hour). A bad entry is rejected with its position and the reason.

use std::fmt;

use ib_stream_ipc::RecordKind;

/// One tracked contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedContract {
    /// IB conId.
    pub con_id: u32,
    /// The symbol, as written (for display and logs; IB is asked by conId).
    pub symbol: String,
    /// The tick-by-tick kinds to record, in the order given, without duplicates.
    pub kinds: Vec<RecordKind>,
    /// How many hours of history the web server should offer as a replay buffer.
    pub buffer_hours: u32,
}

/// Why a tracked-contracts string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tracked contract #{entry} (`{text}`, at character {offset}): {reason}")]
pub struct TrackedError {
    /// 1-based index of the entry in the comma-separated list.
    pub entry: usize,
    /// 0-based character offset of the entry in the whole string.
    pub offset: usize,
    /// The entry as written.
    pub text: String,
    /// What is wrong and what is allowed.
    pub reason: TrackedReason,
}

/// What is wrong with one tracked-contract entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackedReason {
    /// Fewer than two or more than four `:`-separated parts.
    Shape,
    /// The conId is not a positive integer.
    BadConId(String),
    /// The symbol is empty.
    EmptySymbol,
    /// A tick type that is not one of the four tick-by-tick kinds.
    BadTickType(String),
    /// The buffer hours are not an integer from 1 to 8760.
    BadBufferHours(String),
    /// The same conId appears twice.
    Duplicate(u32),
}

impl fmt::Display for TrackedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackedReason::Shape => {
                f.write_str("expected conId:SYMBOL[:tick_type;tick_type[:buffer_hours]]")
            }
            TrackedReason::BadConId(s) => write!(f, "conId `{s}` is not a positive integer"),
            TrackedReason::EmptySymbol => f.write_str("the symbol is empty"),
            TrackedReason::BadTickType(s) => write!(
                f,
                "tick type `{s}` is not one of bid_ask, last, all_last, mid_point"
            ),
            TrackedReason::BadBufferHours(s) => {
                write!(f, "buffer hours `{s}` is not an integer from 1 to 8760")
            }
            TrackedReason::Duplicate(id) => write!(f, "conId {id} is listed twice"),
        }
    }
}

/// The kinds a tracked contract records when its entry names none (the original's default).
pub const DEFAULT_KINDS: [RecordKind; 2] = [RecordKind::TbtBidAsk, RecordKind::TbtLast];

/// Parses a tick type name: the v2/v3 snake-case names, and IB's own spelling
/// (`BidAsk`, `Last`, `AllLast`, `MidPoint`) because users paste those too.
pub fn parse_tick_type(s: &str) -> Option<RecordKind> {
    match s {
        "bid_ask" | "BidAsk" => Some(RecordKind::TbtBidAsk),
        "last" | "Last" => Some(RecordKind::TbtLast),
        "all_last" | "AllLast" => Some(RecordKind::TbtAllLast),
        "mid_point" | "MidPoint" | "midpoint" => Some(RecordKind::TbtMidPoint),
        _ => None,
    }
}

/// Parses the whole tracked-contracts string. An empty (or all-blank) string is no contracts.
pub fn parse_tracked(s: &str) -> Result<Vec<TrackedContract>, TrackedError> {
    let mut out: Vec<TrackedContract> = Vec::new();
    let mut offset = 0;
    for (i, raw) in s.split(',').enumerate() {
        let entry_offset = offset + (raw.len() - raw.trim_start().len());
        offset += raw.len() + 1;
        let text = raw.trim();
        if text.is_empty() {
            // A trailing comma or an empty list: nothing to track here.
            continue;
        }
        let err = |reason| TrackedError {
            entry: i + 1,
            offset: entry_offset,
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(err(TrackedReason::Shape));
        }
        let con_id = parts[0]
            .parse::<u32>()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| err(TrackedReason::BadConId(parts[0].to_string())))?;
        if parts[1].is_empty() {
            return Err(err(TrackedReason::EmptySymbol));
        }
        let mut kinds = Vec::new();
        match parts.get(2) {
            None => kinds.extend(DEFAULT_KINDS),
            Some(list) => {
                for name in list.split(';').map(str::trim) {
                    let kind = parse_tick_type(name)
                        .ok_or_else(|| err(TrackedReason::BadTickType(name.to_string())))?;
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
            }
        }
        let buffer_hours = match parts.get(3) {
            None => 1,
            Some(h) => h
                .parse::<u32>()
                .ok()
                .filter(|h| (1..=8760).contains(h))
                .ok_or_else(|| err(TrackedReason::BadBufferHours(h.to_string())))?,
        };
        if out.iter().any(|c| c.con_id == con_id) {
            return Err(err(TrackedReason::Duplicate(con_id)));
        }
        out.push(TrackedContract {
            con_id,
            symbol: parts[1].to_string(),
            kinds,
            buffer_hours,
        });
    }
    Ok(out)
}

/// Writes contracts back in the same syntax (`config check` prints this).
pub fn format_tracked(contracts: &[TrackedContract]) -> String {
    contracts
        .iter()
        .map(|c| {
            let kinds: Vec<&str> = c.kinds.iter().map(|k| k.name()).collect();
            format!(
                "{}:{}:{}:{}",
                c.con_id,
                c.symbol,
                kinds.join(";"),
                c.buffer_hours
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_original_example() {
        let got = parse_tracked("711280073:MNQ:bid_ask;last:24,265598:AAPL:last:1").unwrap();
        assert_eq!(
            got,
            vec![
                TrackedContract {
                    con_id: 711_280_073,
                    symbol: "MNQ".into(),
                    kinds: vec![RecordKind::TbtBidAsk, RecordKind::TbtLast],
                    buffer_hours: 24,
                },
                TrackedContract {
                    con_id: 265_598,
                    symbol: "AAPL".into(),
                    kinds: vec![RecordKind::TbtLast],
                    buffer_hours: 1,
                },
            ]
        );
    }

    #[test]
    fn defaults_and_blanks() {
        let got = parse_tracked(" 265598:AAPL , ").unwrap();
        assert_eq!(got[0].kinds, DEFAULT_KINDS.to_vec());
        assert_eq!(got[0].buffer_hours, 1);
        assert!(parse_tracked("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_entry_position_and_reason() {
        let e = parse_tracked("711280073:MNQ:bid_ask,265598:AAPL:trades").unwrap_err();
        assert_eq!(e.entry, 2);
        assert_eq!(e.offset, 22);
        assert_eq!(e.reason, TrackedReason::BadTickType("trades".into()));
        assert!(e.to_string().contains("tracked contract #2"), "{e}");

        let cases = [
            ("abc:MNQ", TrackedReason::BadConId("abc".into())),
            ("0:MNQ", TrackedReason::BadConId("0".into())),
            ("1:", TrackedReason::EmptySymbol),
            ("1", TrackedReason::Shape),
            ("1:A:last:2:3", TrackedReason::Shape),
            ("1:A:last:0", TrackedReason::BadBufferHours("0".into())),
            ("1:A:last:x", TrackedReason::BadBufferHours("x".into())),
        ];
        for (input, reason) in cases {
            assert_eq!(parse_tracked(input).unwrap_err().reason, reason, "{input}");
        }
        assert_eq!(
            parse_tracked("1:A,1:B").unwrap_err().reason,
            TrackedReason::Duplicate(1)
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(
            entries in proptest::collection::btree_map(
                1u32..u32::MAX,
                ("[A-Z]{1,6}", proptest::sample::subsequence(
                    vec![RecordKind::TbtBidAsk, RecordKind::TbtLast, RecordKind::TbtAllLast,
                         RecordKind::TbtMidPoint], 1..=4), 1u32..=8760),
                0..6)
        ) {
            let contracts: Vec<TrackedContract> = entries
                .into_iter()
                .map(|(con_id, (symbol, kinds, buffer_hours))| TrackedContract {
                    con_id, symbol, kinds, buffer_hours,
                })
                .collect();
            prop_assert_eq!(parse_tracked(&format_tracked(&contracts)).unwrap(), contracts);
        }

        #[test]
        fn never_panics_on_junk(s in ".{0,80}") {
            let _ = parse_tracked(&s);
        }
    }
}
