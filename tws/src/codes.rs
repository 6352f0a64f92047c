//! IB error codes and the texts a gateway sends with them (reference §4). Shared by the
//! simulator (which sends them) and the engine (which reacts to them).

/// Max rate of messages per second exceeded.
pub const PACING: i32 = 100;
/// Max number of tickers (market data lines) reached.
pub const MAX_TICKERS: i32 = 101;
/// Duplicate ticker id (documented form).
pub const DUPLICATE_TICKER_ID: i32 = 102;
/// Historical data service error (pacing, no data, cancelled).
pub const HMDS_ERROR: i32 = 162;
/// No security definition found.
pub const NO_SECURITY_DEFINITION: i32 = 200;
/// cancelMktData for an unknown id.
pub const CANT_FIND_EID: i32 = 300;
/// Market depth limit.
pub const MAX_MARKET_DEPTH: i32 = 309;
/// Error validating request (a field missing or invalid, e.g. "Please enter exchange").
pub const INVALID_REQUEST: i32 = 321;
/// Error processing request (what live gateways send for a duplicate ticker id).
pub const ERROR_PROCESSING_REQUEST: i32 = 322;
/// Client id already in use (sent at startApi, then the socket closes).
pub const CLIENT_ID_IN_USE: i32 = 326;
/// Requested market data is not subscribed.
pub const NOT_SUBSCRIBED: i32 = 354;
/// Connectivity to IB lost.
pub const CONNECTIVITY_LOST: i32 = 1100;
/// Connectivity restored, data lost (resubscribe).
pub const CONNECTIVITY_RESTORED_DATA_LOST: i32 = 1101;
/// Connectivity restored, data maintained.
pub const CONNECTIVITY_RESTORED_DATA_MAINTAINED: i32 = 1102;
/// Market data farm broken.
pub const MARKET_DATA_FARM_BROKEN: i32 = 2103;
/// Market data farm OK.
pub const MARKET_DATA_FARM_OK: i32 = 2104;
/// HMDS farm broken.
pub const HMDS_FARM_BROKEN: i32 = 2105;
/// HMDS farm OK.
pub const HMDS_FARM_OK: i32 = 2106;
/// A market data farm became inactive.
pub const MARKET_DATA_FARM_INACTIVE: i32 = 2108;
/// Sec-def farm broken.
pub const SECDEF_FARM_BROKEN: i32 = 2157;
/// Sec-def farm OK.
pub const SECDEF_FARM_OK: i32 = 2158;
/// Additional subscription required for API.
pub const ADDITIONAL_SUBSCRIPTION: i32 = 10089;
/// Part of requested market data not subscribed.
pub const PARTIALLY_SUBSCRIBED: i32 = 10090;
/// Displaying delayed market data.
pub const DELAYED_DISPLAYED: i32 = 10167;
/// Delayed market data not enabled.
pub const DELAYED_NOT_ENABLED: i32 = 10168;
/// Delayed market data not enabled (other form).
pub const DELAYED_NOT_ENABLED_2: i32 = 10186;
/// Tick-by-tick without permission.
pub const TICK_BY_TICK_NO_PERMISSION: i32 = 10189;
/// Max number of tick-by-tick requests reached.
pub const MAX_TICK_BY_TICK: i32 = 10190;
/// No market data during a competing live session.
pub const COMPETING_LIVE_SESSION: i32 = 10197;

/// reqId carried by errors about no request (farm notices, 326, 1100...).
pub const NO_REQ_ID: i32 = -1;

/// The canonical text IB sends with `code`, for codes whose text has no variable part
/// (see the helpers below for the others).
pub fn text(code: i32) -> Option<&'static str> {
    Some(match code {
        PACING => "Max rate of messages per second has been exceeded.",
        MAX_TICKERS => "Max number of tickers has been reached.",
        DUPLICATE_TICKER_ID => "Duplicate ticker ID.",
        NO_SECURITY_DEFINITION => "No security definition has been found for the request",
        MAX_MARKET_DEPTH => "Max number (3) of market depth requests has been reached.",
        ERROR_PROCESSING_REQUEST => "Error processing request.-'bW' : cause - Duplicate ticker id",
        CLIENT_ID_IN_USE => {
            "Unable to connect as the client id is already in use. Retry with a unique client id."
        }
        CONNECTIVITY_LOST => "Connectivity between IB and Trader Workstation has been lost.",
        CONNECTIVITY_RESTORED_DATA_LOST => {
            "Connectivity between IB and Trader Workstation has been restored - data lost."
        }
        CONNECTIVITY_RESTORED_DATA_MAINTAINED => {
            "Connectivity between IB and Trader Workstation has been restored - data maintained."
        }
        MARKET_DATA_FARM_BROKEN => "Market data farm connection is broken:usfarm",
        MARKET_DATA_FARM_OK => "Market data farm connection is OK:usfarm",
        HMDS_FARM_BROKEN => "HMDS data farm connection is broken:ushmds",
        HMDS_FARM_OK => "HMDS data farm connection is OK:ushmds",
        MARKET_DATA_FARM_INACTIVE => {
            "A market data farm connection has become inactive but should be available upon demand."
        }
        SECDEF_FARM_BROKEN => "Sec-def data farm connection is broken:secdefnj",
        SECDEF_FARM_OK => "Sec-def data farm connection is OK:secdefnj",
        PARTIALLY_SUBSCRIBED => "Part of requested market data is not subscribed.",
        DELAYED_DISPLAYED => {
            "Requested market data is not subscribed. Displaying delayed market data."
        }
        DELAYED_NOT_ENABLED | DELAYED_NOT_ENABLED_2 => {
            "Requested market data is not subscribed. Delayed market data is not enabled."
        }
        MAX_TICK_BY_TICK => "Max number of tick-by-tick requests has been reached.",
        COMPETING_LIVE_SESSION => "No market data during competing live session",
        _ => return None,
    })
}

/// Error 300 text: `Can't find EId with tickerId:<id>`.
pub fn cant_find_eid(req_id: i32) -> String {
    format!("Can't find EId with tickerId:{req_id}")
}

/// Error 354 text for a contract (`what` like `AAPL NASDAQ.NMS/TOP/ALL`).
pub fn not_subscribed(what: &str) -> String {
    format!(
        "Requested market data is not subscribed. Check API status by selecting the Account menu \
         then under Management choose Market Data Subscription Manager and/or availability of \
         delayed data.Delayed market data is available.{what}"
    )
}

/// Error 10089 text for a contract (`what` like `SPY ARCA/TOP/ALL`).
pub fn additional_subscription(what: &str) -> String {
    format!(
        "Requested market data requires additional subscription for API. See link in 'Market \
         Data Connections' dialog for more details.Delayed market data is available.{what}"
    )
}

/// Error 10189 text (`what` like `NYSE STK`).
pub fn tick_by_tick_no_permission(what: &str) -> String {
    format!("Failed to request tick-by-tick data. No market data permissions for {what}")
}

/// True for codes that are warnings or notices, not request failures (2100..2199 farm
/// notices, 10167 delayed displayed, 1102 restored).
pub fn is_warning(code: i32) -> bool {
    (2100..2200).contains(&code)
        || code == DELAYED_DISPLAYED
        || code == CONNECTIVITY_RESTORED_DATA_MAINTAINED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_plain_ascii_without_backslashes() {
        // ibapi >= 153 unicode-escapes error text: a backslash would be mangled.
        for code in [
            100, 101, 102, 200, 309, 322, 326, 1100, 1101, 1102, 2103, 2104, 2105, 2106, 2108,
            2157, 2158, 10090, 10167, 10168, 10186, 10190, 10197,
        ] {
            let t = text(code).unwrap_or_else(|| panic!("no text for {code}"));
            assert!(
                t.is_ascii() && !t.contains('\\') && !t.contains('\0'),
                "{code}"
            );
        }
        assert_eq!(text(12345), None);
        assert_eq!(cant_find_eid(7), "Can't find EId with tickerId:7");
        assert!(
            not_subscribed("AAPL NASDAQ.NMS/TOP/ALL")
                .ends_with("available.AAPL NASDAQ.NMS/TOP/ALL")
        );
        assert!(is_warning(2104) && !is_warning(200));
    }
}
