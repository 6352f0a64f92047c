//! IB's data farm notices, sans-IO: which farms the session uses and in what state.
//!
//! IB reports each farm connection as an error message with reqId -1 whose text names the
//! farm: `Market data farm connection is OK:usfarm` (2104), `... is broken:usfarm` (2103),
//! `HMDS data farm connection is OK:ushmds` (2106), `Sec-def data farm connection is
//! OK:secdefnj` (2158), `Market data farm connection is inactive but should be available upon
//! demand.usfarm` (2108), `Market data farm is connecting:usfarm` (2119). The engine keeps the
//! table here and publishes it in the status region; a broken market data farm means market
//! data may be stale until it is OK again.

use crate::ipc::{FarmKind, FarmState, FarmStatus, MAX_FARMS};

/// The farm notice codes.
pub mod code {
    /// Market data farm broken.
    pub const MARKET_DATA_BROKEN: i32 = 2103;
    /// Market data farm OK.
    pub const MARKET_DATA_OK: i32 = 2104;
    /// HMDS farm broken.
    pub const HMDS_BROKEN: i32 = 2105;
    /// HMDS farm OK.
    pub const HMDS_OK: i32 = 2106;
    /// HMDS farm inactive (available on demand).
    pub const HMDS_INACTIVE: i32 = 2107;
    /// Market data farm inactive (available on demand).
    pub const MARKET_DATA_INACTIVE: i32 = 2108;
    /// Market data farm connecting.
    pub const MARKET_DATA_CONNECTING: i32 = 2119;
    /// Sec-def farm broken.
    pub const SECDEF_BROKEN: i32 = 2157;
    /// Sec-def farm OK.
    pub const SECDEF_OK: i32 = 2158;
}

/// The name kept when a notice names no farm (IB's canonical 2108 text does not).
pub const UNNAMED: &str = "(unnamed)";

/// One parsed farm notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FarmNotice {
    /// Which kind of farm.
    pub kind: FarmKind,
    /// Its new state.
    pub state: FarmState,
    /// The farm's name ([`UNNAMED`] when the text names none).
    pub name: String,
    /// The IB code.
    pub code: i32,
}

/// The kind and state a farm notice code stands for; `None` for other codes.
pub fn classify(c: i32) -> Option<(FarmKind, FarmState)> {
    use FarmKind::*;
    use FarmState::*;
    Some(match c {
        code::MARKET_DATA_BROKEN => (MarketData, Broken),
        code::MARKET_DATA_OK => (MarketData, Ok),
        code::MARKET_DATA_INACTIVE => (MarketData, Inactive),
        code::MARKET_DATA_CONNECTING => (MarketData, Connecting),
        code::HMDS_BROKEN => (Hmds, Broken),
        code::HMDS_OK => (Hmds, Ok),
        code::HMDS_INACTIVE => (Hmds, Inactive),
        code::SECDEF_BROKEN => (SecDef, Broken),
        code::SECDEF_OK => (SecDef, Ok),
        _ => return None,
    })
}

/// The farm a notice's text names: after the last `:`, or after `demand.` in the inactive
/// notices; [`UNNAMED`] when there is none.
pub fn farm_name(message: &str) -> &str {
    let name = if let Some((_, n)) = message.rsplit_once(':') {
        n
    } else if let Some((_, n)) = message.rsplit_once("demand.") {
        n
    } else {
        ""
    };
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        UNNAMED
    } else {
        name
    }
}

/// Parses a notice; `None` when `code` is not a farm notice.
pub fn parse(code: i32, message: &str) -> Option<FarmNotice> {
    let (kind, state) = classify(code)?;
    Some(FarmNotice {
        kind,
        state,
        name: farm_name(message).to_string(),
        code,
    })
}

/// The farms of the current session, at most [`MAX_FARMS`] (as many as the status region
/// holds). When full, a new farm replaces the longest-unchanged OK one; if every farm is in
/// trouble, the notice is counted as dropped instead (trouble is never hidden).
#[derive(Debug, Default)]
pub struct FarmTable {
    farms: Vec<FarmStatus>,
    dropped: u64,
}

impl FarmTable {
    /// Applies a notice received at `now_ns`; returns true when the table changed.
    pub fn apply(&mut self, n: &FarmNotice, now_ns: i64) -> bool {
        let found = self
            .farms
            .iter_mut()
            .find(|f| f.kind == n.kind as u8 && f.name() == n.name.as_str());
        if let Some(f) = found {
            f.notice_ns = now_ns;
            f.code = n.code;
            if f.state != n.state as u8 {
                f.state = n.state as u8;
                f.since_ns = now_ns;
            }
            return true;
        }
        let entry = FarmStatus::new(&n.name, n.kind, n.state, n.code, now_ns);
        if self.farms.len() < MAX_FARMS {
            self.farms.push(entry);
            return true;
        }
        let oldest_ok = self
            .farms
            .iter_mut()
            .filter(|f| f.state == FarmState::Ok as u8)
            .min_by_key(|f| f.since_ns);
        match oldest_ok {
            Some(slot) => {
                *slot = entry;
                true
            }
            None => {
                self.dropped += 1;
                false
            }
        }
    }

    /// Forgets every farm (the session ended: IB reports them again on the next one).
    pub fn clear(&mut self) {
        self.farms.clear();
    }

    /// The farms, in the order first reported.
    pub fn farms(&self) -> &[FarmStatus] {
        &self.farms
    }

    /// True while a market data farm is broken: market data may be stale.
    pub fn market_data_broken(&self) -> bool {
        self.farms
            .iter()
            .any(|f| f.kind == FarmKind::MarketData as u8 && f.state == FarmState::Broken as u8)
    }

    /// Notices not kept because the table was full of farms in trouble.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_to_kind_state_and_name() {
        let cases = [
            (
                2104,
                "Market data farm connection is OK:usfarm",
                FarmKind::MarketData,
                FarmState::Ok,
                "usfarm",
            ),
            (
                2103,
                "Market data farm connection is broken:usfarm.nj",
                FarmKind::MarketData,
                FarmState::Broken,
                "usfarm.nj",
            ),
            (
                2106,
                "HMDS data farm connection is OK:ushmds",
                FarmKind::Hmds,
                FarmState::Ok,
                "ushmds",
            ),
            (
                2107,
                "HMDS data farm connection is inactive but should be available upon demand.ushmds",
                FarmKind::Hmds,
                FarmState::Inactive,
                "ushmds",
            ),
            (
                2108,
                "Market data farm connection is inactive but should be available upon demand.eufarm",
                FarmKind::MarketData,
                FarmState::Inactive,
                "eufarm",
            ),
            (
                2108,
                "A market data farm connection has become inactive but should be available upon demand.",
                FarmKind::MarketData,
                FarmState::Inactive,
                UNNAMED,
            ),
            (
                2119,
                "Market data farm is connecting:hfarm",
                FarmKind::MarketData,
                FarmState::Connecting,
                "hfarm",
            ),
            (
                2157,
                "Sec-def data farm connection is broken:secdefnj",
                FarmKind::SecDef,
                FarmState::Broken,
                "secdefnj",
            ),
            (
                2158,
                "Sec-def data farm connection is OK:secdefil",
                FarmKind::SecDef,
                FarmState::Ok,
                "secdefil",
            ),
        ];
        for (c, text, kind, state, name) in cases {
            let n = parse(c, text).unwrap_or_else(|| panic!("{c} not a farm notice"));
            assert_eq!(
                (n.kind, n.state, n.name.as_str(), n.code),
                (kind, state, name, c),
                "{text}"
            );
        }
        assert_eq!(parse(2100, "API client has been unsubscribed"), None);
        assert_eq!(parse(1100, "Connectivity lost"), None);
        assert_eq!(farm_name(""), UNNAMED);
        assert_eq!(farm_name("odd: two words"), UNNAMED);
    }

    fn notice(c: i32, name: &str) -> FarmNotice {
        let (kind, state) = classify(c).unwrap();
        FarmNotice {
            kind,
            state,
            name: name.into(),
            code: c,
        }
    }

    #[test]
    fn state_changes_keep_their_time_and_repeats_do_not_move_it() {
        let mut t = FarmTable::default();
        assert!(t.apply(&notice(2104, "usfarm"), 10));
        assert!(t.apply(&notice(2106, "ushmds"), 11));
        assert!(!t.market_data_broken());
        assert!(t.apply(&notice(2103, "usfarm"), 20));
        assert!(t.market_data_broken());
        assert!(t.apply(&notice(2103, "usfarm"), 25));
        let f = t.farms()[0];
        assert_eq!(
            (f.name().into_owned(), f.state(), f.since_ns, f.notice_ns),
            ("usfarm".to_string(), Some(FarmState::Broken), 20, 25)
        );
        // An HMDS farm with the same name is another farm.
        assert!(t.apply(&notice(2105, "usfarm"), 26));
        assert_eq!(t.farms().len(), 3);
        assert!(t.apply(&notice(2104, "usfarm"), 30));
        assert!(!t.market_data_broken());
        assert_eq!(t.farms()[0].since_ns, 30);
        t.clear();
        assert!(t.farms().is_empty());
    }

    #[test]
    fn a_full_table_replaces_an_ok_farm_and_never_hides_trouble() {
        let mut t = FarmTable::default();
        for i in 0..MAX_FARMS {
            assert!(t.apply(&notice(2103, &format!("f{i}")), i as i64));
        }
        assert!(!t.apply(&notice(2104, "late"), 100));
        assert_eq!(t.dropped(), 1);
        assert!(t.apply(&notice(2104, "f3"), 101));
        assert!(t.apply(&notice(2104, "f5"), 102));
        assert!(t.apply(&notice(2103, "new"), 103));
        let names: Vec<String> = t.farms().iter().map(|f| f.name().into_owned()).collect();
        assert!(names.contains(&"new".into()) && !names.contains(&"f3".into()));
        assert!(names.contains(&"f5".into()));
        assert_eq!(t.farms().len(), MAX_FARMS);
    }
}
