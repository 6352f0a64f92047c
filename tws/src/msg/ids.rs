//! Message ids (IB's `IN`/`OUT` enums). Protobuf frames carry these + 200.

/// Server → client ids.
pub mod incoming {
    /// tickPrice.
    pub const TICK_PRICE: u32 = 1;
    /// tickSize.
    pub const TICK_SIZE: u32 = 2;
    /// error.
    pub const ERR_MSG: u32 = 4;
    /// nextValidId.
    pub const NEXT_VALID_ID: u32 = 9;
    /// contractData.
    pub const CONTRACT_DATA: u32 = 10;
    /// managedAccounts.
    pub const MANAGED_ACCTS: u32 = 15;
    /// tickGeneric.
    pub const TICK_GENERIC: u32 = 45;
    /// tickString.
    pub const TICK_STRING: u32 = 46;
    /// currentTime.
    pub const CURRENT_TIME: u32 = 49;
    /// contractDataEnd.
    pub const CONTRACT_DATA_END: u32 = 52;
    /// openOrderEnd.
    pub const OPEN_ORDER_END: u32 = 53;
    /// accountDownloadEnd.
    pub const ACCT_DOWNLOAD_END: u32 = 54;
    /// execDetailsEnd.
    pub const EXECUTION_DATA_END: u32 = 55;
    /// tickSnapshotEnd.
    pub const TICK_SNAPSHOT_END: u32 = 57;
    /// marketDataType.
    pub const MARKET_DATA_TYPE: u32 = 58;
    /// positionEnd.
    pub const POSITION_END: u32 = 62;
    /// accountUpdateMultiEnd.
    pub const ACCOUNT_UPDATE_MULTI_END: u32 = 74;
    /// tickReqParams.
    pub const TICK_REQ_PARAMS: u32 = 81;
    /// headTimestamp.
    pub const HEAD_TIMESTAMP: u32 = 88;
    /// historicalTicks (MIDPOINT).
    pub const HISTORICAL_TICKS: u32 = 96;
    /// historicalTicksBidAsk.
    pub const HISTORICAL_TICKS_BID_ASK: u32 = 97;
    /// historicalTicksLast (TRADES).
    pub const HISTORICAL_TICKS_LAST: u32 = 98;
    /// tickByTick.
    pub const TICK_BY_TICK: u32 = 99;
    /// completedOrdersEnd.
    pub const COMPLETED_ORDERS_END: u32 = 102;
}

/// Client → server ids.
pub mod outgoing {
    /// reqMktData.
    pub const REQ_MKT_DATA: u32 = 1;
    /// cancelMktData.
    pub const CANCEL_MKT_DATA: u32 = 2;
    /// reqOpenOrders.
    pub const REQ_OPEN_ORDERS: u32 = 5;
    /// reqAccountUpdates.
    pub const REQ_ACCT_DATA: u32 = 6;
    /// reqExecutions.
    pub const REQ_EXECUTIONS: u32 = 7;
    /// reqIds.
    pub const REQ_IDS: u32 = 8;
    /// reqContractDetails.
    pub const REQ_CONTRACT_DATA: u32 = 9;
    /// reqAutoOpenOrders.
    pub const REQ_AUTO_OPEN_ORDERS: u32 = 15;
    /// reqManagedAccts.
    pub const REQ_MANAGED_ACCTS: u32 = 17;
    /// reqCurrentTime.
    pub const REQ_CURRENT_TIME: u32 = 49;
    /// reqMarketDataType.
    pub const REQ_MARKET_DATA_TYPE: u32 = 59;
    /// reqPositions.
    pub const REQ_POSITIONS: u32 = 61;
    /// startApi.
    pub const START_API: u32 = 71;
    /// reqAccountUpdatesMulti.
    pub const REQ_ACCOUNT_UPDATES_MULTI: u32 = 76;
    /// reqHeadTimeStamp.
    pub const REQ_HEAD_TIMESTAMP: u32 = 87;
    /// cancelHeadTimestamp.
    pub const CANCEL_HEAD_TIMESTAMP: u32 = 90;
    /// reqHistoricalTicks.
    pub const REQ_HISTORICAL_TICKS: u32 = 96;
    /// reqTickByTickData.
    pub const REQ_TICK_BY_TICK_DATA: u32 = 97;
    /// cancelTickByTickData.
    pub const CANCEL_TICK_BY_TICK_DATA: u32 = 98;
    /// reqCompletedOrders.
    pub const REQ_COMPLETED_ORDERS: u32 = 99;
    /// cancelContractData (protobuf only, from 215).
    pub const CANCEL_CONTRACT_DATA: u32 = 106;
}
