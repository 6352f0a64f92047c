//! Server versions and version negotiation.
//!
//! The numbers are IB's `MIN_SERVER_VER_*` constants (see docs/PROTOCOL-TWS.md). A
//! connection speaks exactly one version, `min(client_max, server_max)`, fixed at the
//! handshake; every layout branch in this module tree is keyed on it.

/// Oldest version this codec speaks (the "v100+" length-prefixed protocol).
pub const MIN_SUPPORTED: u32 = 100;
/// Newest version this codec speaks (newest any public client knows).
pub const MAX_SUPPORTED: u32 = 226;

/// tickByTick requests exist from here on.
pub const TICK_BY_TICK: u32 = 137;
/// reqTickByTickData gains numberOfTicks/ignoreSize.
pub const TICK_BY_TICK_IGNORE_SIZE: u32 = 140;
/// contractData: mdSizeMultiplier appears (until SIZE_RULES).
pub const MD_SIZE_MULTIPLIER: u32 = 110;
/// reqMktData gains regulatorySnapshot.
pub const REQ_SMART_COMPONENTS: u32 = 114;
/// contractData: aggGroup.
pub const AGG_GROUP: u32 = 121;
/// contractData: underSymbol/underSecType.
pub const UNDERLYING_INFO: u32 = 122;
/// reqHeadTimeStamp / headTimestamp exist.
pub const REQ_HEAD_TIMESTAMP: u32 = 118;
/// cancelHeadTimestamp exists.
pub const CANCEL_HEADTIMESTAMP: u32 = 123;
/// reqHistoricalTicks and its three answers exist.
pub const HISTORICAL_TICKS: u32 = 130;
/// contractData: marketRuleIds.
pub const MARKET_RULES: u32 = 126;
/// contractData: realExpirationDate.
pub const REAL_EXPIRATION_DATE: u32 = 134;
/// completed orders (reqCompletedOrders / completedOrdersEnd).
pub const COMPLETED_ORDERS: u32 = 150;
/// contractData: stockType.
pub const STOCK_TYPE: u32 = 152;
/// contractData at exactly this version carries sizeMinTick.
pub const FRACTIONAL_SIZE_SUPPORT: u32 = 163;
/// contractData drops its version field and gains minSize/sizeIncrement/suggestedSizeIncrement.
pub const SIZE_RULES: u32 = 164;
/// error gains advancedOrderRejectJson.
pub const ADVANCED_ORDER_REJECT: u32 = 166;
/// reqContractDetails gains issuerId.
pub const BOND_ISSUERID: u32 = 176;
/// contractData: FUND-only fields.
pub const FUND_DATA_FIELDS: u32 = 179;
/// contractData: lastTradeDate.
pub const LAST_TRADE_DATE: u32 = 182;
/// contractData: ineligibility reasons.
pub const INELIGIBILITY_REASONS: u32 = 186;
/// error drops its version field and gains errorTime.
pub const ERROR_TIME: u32 = 194;
/// reqExecutions gains lastNDays and specificDates.
pub const PARAMETRIZED_DAYS_OF_EXECUTIONS: u32 = 200;
/// Binary 4-byte message ids; ids above 200 carry protobuf (MIN_SERVER_VER_PROTOBUF).
pub const MIN_SERVER_VER_PROTOBUF: u32 = 201;
/// Alias of [`MIN_SERVER_VER_PROTOBUF`].
pub const PROTOBUF: u32 = MIN_SERVER_VER_PROTOBUF;
/// placeOrder/cancelOrder/globalCancel requests in protobuf.
pub const PROTOBUF_PLACE_ORDER: u32 = 203;
/// open/auto-open/all-open/completed order requests in protobuf.
pub const PROTOBUF_COMPLETED_ORDER: u32 = 204;
/// reqContractDetails in protobuf.
pub const PROTOBUF_CONTRACT_DATA: u32 = 205;
/// reqMktData/cancelMktData/reqMarketDataType in protobuf.
pub const PROTOBUF_MARKET_DATA: u32 = 206;
/// account and position requests in protobuf.
pub const PROTOBUF_ACCOUNTS_POSITIONS: u32 = 207;
/// historical and tick-by-tick requests in protobuf.
pub const PROTOBUF_HISTORICAL_DATA: u32 = 208;
/// startApi/reqIds/reqCurrentTime (and other "rest 3" requests) in protobuf.
pub const PROTOBUF_REST_MESSAGES_3: u32 = 213;
/// cancelContractData exists (protobuf only).
pub const CANCEL_CONTRACT_DATA: u32 = 215;
/// Volumes in shares.
pub const MARKET_DATA_VOLUMES_IN_SHARES: u32 = 220;
/// Fractional last size.
pub const FRACTIONAL_LAST_SIZE: u32 = 222;
/// Odd-lot bid/ask quotes.
pub const ODD_LOT_BID_ASK_QUOTES: u32 = 225;
/// Newest constant (UNIFIED_VERSION_COND_ORDER_WITH_OVERNIGHT_PARAM / CONDITIONS_INCLUDE_OVERNIGHT).
pub const CONDITIONS_INCLUDE_OVERNIGHT: u32 = 226;

/// Message ids above this carry a protobuf payload for id `wire - PROTOBUF_MSG_ID`.
pub const PROTOBUF_MSG_ID: u32 = 200;

/// The version both sides speak: `min(client_max, server_max)`, or `None` when that is
/// below the client's minimum or below [`MIN_SUPPORTED`] (the server then closes).
pub fn negotiate(client_min: u32, client_max: u32, server_max: u32) -> Option<u32> {
    let v = client_max.min(server_max);
    (v >= client_min && v >= MIN_SUPPORTED && client_min <= client_max).then_some(v)
}

/// True when frames carry a 4-byte binary message id (version >= 201).
pub fn binary_msg_id(version: u32) -> bool {
    version >= MIN_SERVER_VER_PROTOBUF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_matches_the_real_clients() {
        // ibapi-latest, ibapi 9.81, ib_async, Rust ibapi against a 226 server.
        assert_eq!(negotiate(100, 226, 226), Some(226));
        assert_eq!(negotiate(100, 157, 226), Some(157));
        assert_eq!(negotiate(157, 178, 226), Some(178));
        assert_eq!(negotiate(213, 226, 226), Some(226));
        // A server capped at 200 cannot serve the protobuf-only client.
        assert_eq!(negotiate(213, 226, 200), None);
        assert_eq!(negotiate(157, 178, 150), None);
        assert_eq!(negotiate(10, 90, 226), None);
        assert_eq!(negotiate(200, 100, 226), None);
    }
}
