//! One client's session, sans-IO: requests in, replies and subscriptions out. The connection
//! thread owns the socket and the clock and passes `now` in.
//!
//! The session applies IB's rules: duplicate ticker ids (322), unknown cancels (300), market
//! data lines (101), the tick-by-tick cap and 15-second rule (10190), entitlements (354, 10089,
//! 10189, delayed data with 10167), competing sessions (10197), connectivity loss (1100, 1101
//! drops the subscriptions, 1102 keeps them).

use std::time::Instant;

use crate::generator::{L1Gen, L1Tick, TbtGen, TbtKind};
use crate::limits::{LimitConfig, SharedAccount};
use crate::universe::{ContractQuery, Entitlement, Resolve, Universe};

/// A decoded client request, in the simulator's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    MktData {
        req_id: i32,
        contract: ContractQuery,
        generic_tick_list: String,
        snapshot: bool,
    },
    CancelMktData {
        req_id: i32,
    },
    TickByTick {
        req_id: i32,
        contract: ContractQuery,
        tick_type: String,
    },
    CancelTickByTick {
        req_id: i32,
    },
    MarketDataType(i32),
    ContractDetails {
        req_id: i32,
        contract: ContractQuery,
    },
    CurrentTime,
    Ids,
    ManagedAccts,
    Positions,
    OpenOrders,
    AutoOpenOrders,
    CompletedOrders,
    AccountUpdates {
        subscribe: bool,
        account: String,
    },
    AccountUpdatesMulti {
        req_id: i32,
    },
    Executions {
        req_id: i32,
    },
    /// reqHistoricalTicks / reqHeadTimeStamp / cancelHeadTimestamp: served by the gateway's
    /// historical desk (crate::historical), not the session.
    Historical(Box<ib_stream_tws::HistRequest>),
    /// A request the simulator does not serve (logged, no reply).
    Other,
}

/// A reply the session wants sent, in the simulator's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Error {
        req_id: i32,
        code: i32,
        msg: String,
    },
    NextValidId(i32),
    ManagedAccounts(String),
    CurrentTime(i64),
    PositionEnd,
    OpenOrderEnd,
    CompletedOrdersEnd,
    AccountDownloadEnd(String),
    AccountUpdateMultiEnd(i32),
    ExecDetailsEnd(i32),
    /// contractData for the universe's instrument at this index.
    ContractData {
        req_id: i32,
        instrument: usize,
    },
    ContractDataEnd(i32),
    TickReqParams {
        req_id: i32,
        instrument: usize,
    },
    MarketDataType {
        req_id: i32,
        data_type: i32,
    },
    TickSnapshotEnd(i32),
    /// An L1 message outside the tick stream (a snapshot's ticks).
    L1 {
        req_id: i32,
        tick: L1Tick,
    },
    /// historicalTicks* or headTimestamp (crate::historical).
    Historical(Box<ib_stream_tws::HistReply>),
}

/// IB's error codes and texts.
pub mod code {
    pub const PACING: i32 = 100;
    pub const MAX_TICKERS: i32 = 101;
    pub const NO_SECURITY: i32 = 200;
    pub const CANT_FIND_EID: i32 = 300;
    pub const INVALID_REQUEST: i32 = 321;
    pub const DUPLICATE_TICKER: i32 = 322;
    pub const CLIENT_ID_IN_USE: i32 = 326;
    pub const NOT_SUBSCRIBED: i32 = 354;
    pub const CONNECTIVITY_LOST: i32 = 1100;
    pub const RESTORED_DATA_LOST: i32 = 1101;
    pub const RESTORED_DATA_KEPT: i32 = 1102;
    pub const NEEDS_API_SUBSCRIPTION: i32 = 10089;
    pub const DISPLAYING_DELAYED: i32 = 10167;
    pub const TBT_NO_PERMISSION: i32 = 10189;
    pub const TBT_CAP: i32 = 10190;
    pub const COMPETING_SESSION: i32 = 10197;

    /// The text IB sends with a code (reqId-independent part).
    pub fn text(code: i32) -> &'static str {
        match code {
            PACING => "Max rate of messages per second has been exceeded.",
            MAX_TICKERS => "Max number of tickers has been reached.",
            NO_SECURITY => "No security definition has been found for the request",
            CLIENT_ID_IN_USE => {
                "Unable to connect as the client id is already in use. Retry with a unique client id."
            }
            CONNECTIVITY_LOST => "Connectivity between IB and Trader Workstation has been lost.",
            RESTORED_DATA_LOST => {
                "Connectivity between IB and Trader Workstation has been restored - data lost."
            }
            RESTORED_DATA_KEPT => {
                "Connectivity between IB and Trader Workstation has been restored - data maintained."
            }
            DISPLAYING_DELAYED => {
                "Requested market data is not subscribed. Displaying delayed market data."
            }
            TBT_CAP => "Max number of tick-by-tick requests has been reached.",
            INVALID_REQUEST => {
                "Error validating request.-'bW' : cause - The API request is invalid."
            }
            NOT_SUBSCRIBED => "Requested market data is not subscribed.",
            NEEDS_API_SUBSCRIPTION => {
                "Requested market data requires additional subscription for API."
            }
            COMPETING_SESSION => "No market data during competing live session",
            2103 => "Market data farm connection is broken:usfarm",
            2104 => "Market data farm connection is OK:usfarm",
            2105 => "HMDS data farm connection is broken:ushmds",
            2106 => "HMDS data farm connection is OK:ushmds",
            2107 => {
                "HMDS data farm connection is inactive but should be available upon demand.ushmds"
            }
            2108 => {
                "Market data farm connection is inactive but should be available upon demand.usfarm"
            }
            2119 => "Market data farm is connecting:usfarm",
            2157 => "Sec-def data farm connection is broken:secdefnj",
            2158 => "Sec-def data farm connection is OK:secdefnj",
            _ => "",
        }
    }

    /// Whether a code is one of the farm notices the control channel can send.
    pub fn is_farm_notice(code: i32) -> bool {
        matches!(code, 2103..=2108 | 2119 | 2157 | 2158)
    }
}

fn error(req_id: i32, code: i32, msg: impl Into<String>) -> Reply {
    Reply::Error {
        req_id,
        code,
        msg: msg.into(),
    }
}

fn std_error(req_id: i32, c: i32) -> Reply {
    error(req_id, c, code::text(c))
}

/// The data a subscription streams.
#[derive(Debug, Clone)]
pub enum Feed {
    Tbt(TbtGen),
    L1(L1Gen),
}

/// One live subscription.
#[derive(Debug, Clone)]
pub struct Sub {
    pub req_id: i32,
    pub instrument: usize,
    pub con_id: i32,
    pub feed: Feed,
    /// Ticks sent so far (the generator's k).
    pub sent: u64,
    /// When the subscription started, for rate scheduling.
    pub started: Instant,
}

impl Sub {
    pub fn kind_name(&self) -> &'static str {
        match &self.feed {
            Feed::Tbt(g) => g.kind().name(),
            Feed::L1(_) => "mktdata",
        }
    }
}

/// Session settings shared by every client.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub seed: u64,
    pub account: String,
    pub next_valid_id: i32,
    pub limits: LimitConfig,
}

/// Messages a snapshot reqMktData carries before tickSnapshotEnd.
pub const SNAPSHOT_TICKS: u64 = 10;

/// One client's state.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    account: SharedAccount,
    next_id: i32,
    market_data_type: i32,
    /// 1100 received and not yet restored: no ticks flow.
    connectivity_lost: bool,
    competing: bool,
    subs: Vec<Sub>,
    /// Codes the next data requests are refused with, oldest first (a fault: a contract
    /// that expired, a lapsed market data subscription, ...).
    refusals: std::collections::VecDeque<i32>,
}

impl Session {
    pub fn new(cfg: SessionConfig, account: SharedAccount, competing: bool) -> Self {
        let next_id = cfg.next_valid_id;
        Self {
            cfg,
            account,
            next_id,
            market_data_type: 1,
            connectivity_lost: false,
            competing,
            subs: Vec::new(),
            refusals: std::collections::VecDeque::new(),
        }
    }

    /// What follows START_API: managed accounts, the next order id and the farm notices.
    pub fn welcome(&self, out: &mut Vec<Reply>) {
        out.push(Reply::ManagedAccounts(self.cfg.account.clone()));
        out.push(Reply::NextValidId(self.next_id));
        for c in [2104, 2106, 2158] {
            out.push(std_error(-1, c));
        }
    }

    /// Whether ticks may flow now.
    pub fn streaming(&self) -> bool {
        !self.connectivity_lost && !self.competing
    }

    pub fn subs(&self) -> &[Sub] {
        &self.subs
    }

    pub fn subs_mut(&mut self) -> &mut [Sub] {
        &mut self.subs
    }

    fn active(&self, req_id: i32) -> Option<usize> {
        self.subs.iter().position(|s| s.req_id == req_id)
    }

    /// Handles one request. `epoch_secs` is the wall clock for reqCurrentTime.
    pub fn handle(
        &mut self,
        req: Request,
        universe: &Universe,
        now: Instant,
        epoch_secs: i64,
        out: &mut Vec<Reply>,
    ) {
        match req {
            Request::MktData {
                req_id,
                contract,
                generic_tick_list,
                snapshot,
            } => {
                if let Some(cause) = generic_ticks_problem(&generic_tick_list, snapshot) {
                    out.push(invalid(req_id, "bW", &cause));
                    return;
                }
                self.mkt_data(req_id, &contract, snapshot, universe, now, out)
            }
            Request::TickByTick {
                req_id,
                contract,
                tick_type,
            } => self.tick_by_tick(req_id, &contract, &tick_type, universe, now, out),
            Request::CancelMktData { req_id } => self.cancel(req_id, false, out),
            Request::CancelTickByTick { req_id } => self.cancel(req_id, true, out),
            Request::MarketDataType(t) => {
                if (1..=4).contains(&t) {
                    self.market_data_type = t;
                } else {
                    out.push(error(
                        -1,
                        code::INVALID_REQUEST,
                        format!("Invalid market data type {t}"),
                    ));
                }
            }
            Request::ContractDetails { req_id, contract } => {
                let found = universe.matches(&contract);
                if found.is_empty() {
                    out.push(std_error(req_id, code::NO_SECURITY));
                } else {
                    out.extend(
                        found
                            .into_iter()
                            .map(|instrument| Reply::ContractData { req_id, instrument }),
                    );
                    out.push(Reply::ContractDataEnd(req_id));
                }
            }
            Request::CurrentTime => out.push(Reply::CurrentTime(epoch_secs)),
            Request::Ids => out.push(Reply::NextValidId(self.next_id)),
            Request::ManagedAccts => out.push(Reply::ManagedAccounts(self.cfg.account.clone())),
            Request::Positions => out.push(Reply::PositionEnd),
            Request::OpenOrders => out.push(Reply::OpenOrderEnd),
            Request::CompletedOrders => out.push(Reply::CompletedOrdersEnd),
            Request::AccountUpdates { subscribe, account } => {
                if subscribe {
                    let acct = if account.is_empty() {
                        self.cfg.account.clone()
                    } else {
                        account
                    };
                    out.push(Reply::AccountDownloadEnd(acct));
                }
            }
            Request::AccountUpdatesMulti { req_id } => {
                out.push(Reply::AccountUpdateMultiEnd(req_id))
            }
            Request::Executions { req_id } => out.push(Reply::ExecDetailsEnd(req_id)),
            // TWS only binds future orders: nothing to answer.
            Request::AutoOpenOrders | Request::Other => {}
            // The connection hands these to the gateway before the session sees them.
            Request::Historical(_) => {}
        }
    }

    fn common_checks(
        &mut self,
        req_id: i32,
        contract: &ContractQuery,
        universe: &Universe,
        out: &mut Vec<Reply>,
    ) -> Option<usize> {
        if self.active(req_id).is_some() {
            out.push(error(
                req_id,
                code::DUPLICATE_TICKER,
                "Error processing request.-'bW' : cause - Duplicate ticker id",
            ));
            return None;
        }
        if let Some(c) = self.refusals.pop_front() {
            out.push(std_error(req_id, c));
            return None;
        }
        if let Some(cause) = contract_problem(contract) {
            out.push(invalid(req_id, "bW", cause));
            return None;
        }
        let inst = match universe.resolve(contract) {
            Resolve::Found(i) => i,
            Resolve::NotFound => {
                out.push(std_error(req_id, code::NO_SECURITY));
                return None;
            }
            Resolve::Ambiguous => {
                out.push(error(
                    req_id,
                    code::NO_SECURITY,
                    format!(
                        "The contract description specified for {} is ambiguous.",
                        contract.describe()
                    ),
                ));
                return None;
            }
        };
        if self.competing {
            out.push(std_error(req_id, code::COMPETING_SESSION));
            return None;
        }
        Some(inst)
    }

    fn mkt_data(
        &mut self,
        req_id: i32,
        contract: &ContractQuery,
        snapshot: bool,
        universe: &Universe,
        now: Instant,
        out: &mut Vec<Reply>,
    ) {
        let Some(index) = self.common_checks(req_id, contract, universe, out) else {
            return;
        };
        let inst = universe.get(index);
        let wants_delayed = matches!(self.market_data_type, 3 | 4);
        let delayed = match inst.spec.entitlement {
            Entitlement::Live => false,
            _ if wants_delayed => true,
            Entitlement::Delayed => {
                let msg = format!(
                    "Requested market data is not subscribed. Check API status by selecting the Account menu then under Management choose Market Data Subscription Manager and/or availability of delayed data.Delayed market data is available.{} {}/TOP/ALL",
                    inst.spec.symbol,
                    listing(inst)
                );
                out.push(error(req_id, code::NOT_SUBSCRIBED, msg));
                return;
            }
            Entitlement::ApiDelayed => {
                let msg = format!(
                    "Requested market data requires additional subscription for API. See link in 'Market Data Connections' dialog for more details.Delayed market data is available.{} {}/TOP/ALL",
                    inst.spec.symbol,
                    listing(inst)
                );
                out.push(error(req_id, code::NEEDS_API_SUBSCRIPTION, msg));
                return;
            }
        };
        if !snapshot {
            let mut acct = self.account.lock();
            if acct.mkt_lines >= self.cfg.limits.max_mkt_lines {
                out.push(std_error(req_id, code::MAX_TICKERS));
                return;
            }
            acct.mkt_lines += 1;
        }
        if delayed {
            out.push(std_error(req_id, code::DISPLAYING_DELAYED));
        }
        out.push(Reply::TickReqParams {
            req_id,
            instrument: index,
        });
        out.push(Reply::MarketDataType {
            req_id,
            data_type: if delayed { 3 } else { 1 },
        });
        let mut generator = L1Gen::new(self.cfg.seed, inst, delayed);
        if snapshot {
            // A snapshot is the opening of the stream, then its end marker; no line stays open.
            out.extend(
                generator
                    .by_ref()
                    .take(SNAPSHOT_TICKS as usize)
                    .map(|tick| Reply::L1 { req_id, tick }),
            );
            out.push(Reply::TickSnapshotEnd(req_id));
            return;
        }
        let feed = Feed::L1(generator);
        self.subs.push(Sub {
            req_id,
            instrument: index,
            con_id: inst.con_id(),
            feed,
            sent: 0,
            started: now,
        });
    }

    fn tick_by_tick(
        &mut self,
        req_id: i32,
        contract: &ContractQuery,
        tick_type: &str,
        universe: &Universe,
        now: Instant,
        out: &mut Vec<Reply>,
    ) {
        let Some(index) = self.common_checks(req_id, contract, universe, out) else {
            return;
        };
        let inst = universe.get(index);
        let Some(kind) = TbtKind::parse(tick_type) else {
            out.push(error(
                req_id,
                code::INVALID_REQUEST,
                format!("Error validating request.-'bX' : cause - Invalid tick type {tick_type:?}"),
            ));
            return;
        };
        if !inst.spec.tick_by_tick || inst.spec.entitlement != Entitlement::Live {
            let msg = format!(
                "Failed to request tick-by-tick data. No market data permissions for {} {}",
                listing(inst),
                inst.spec.sec_type
            );
            out.push(error(req_id, code::TBT_NO_PERMISSION, msg));
            return;
        }
        {
            let mut acct = self.account.lock();
            let limits = &self.cfg.limits;
            if acct.tbt_active >= limits.max_tbt
                || !acct.tbt_request_allowed(inst.con_id(), kind, limits.tbt_same_instrument, now)
            {
                out.push(std_error(req_id, code::TBT_CAP));
                return;
            }
            acct.tbt_active += 1;
        }
        let feed = Feed::Tbt(TbtGen::new(self.cfg.seed, inst, kind));
        self.subs.push(Sub {
            req_id,
            instrument: index,
            con_id: inst.con_id(),
            feed,
            sent: 0,
            started: now,
        });
    }

    fn cancel(&mut self, req_id: i32, tbt: bool, out: &mut Vec<Reply>) {
        {
            let cancels = &mut self.account.lock().cancels;
            if tbt {
                cancels.tick_by_tick += 1;
            } else {
                cancels.mkt_data += 1;
            }
        }
        let pos = self
            .subs
            .iter()
            .position(|s| s.req_id == req_id && matches!(s.feed, Feed::Tbt(_)) == tbt);
        match pos {
            Some(p) => {
                let sub = self.subs.remove(p);
                self.release(&sub);
            }
            None => {
                self.account.lock().cancels.unknown += 1;
                out.push(error(
                    req_id,
                    code::CANT_FIND_EID,
                    format!("Can't find EId with tickerId:{req_id}"),
                ));
            }
        }
    }

    fn release(&self, sub: &Sub) {
        let mut acct = self.account.lock();
        match sub.feed {
            Feed::Tbt(_) => acct.tbt_active = acct.tbt_active.saturating_sub(1),
            Feed::L1(_) => acct.mkt_lines = acct.mkt_lines.saturating_sub(1),
        }
    }

    fn drop_all_subs(&mut self) {
        for sub in std::mem::take(&mut self.subs) {
            self.release(&sub);
        }
    }

    /// Exempts this session's tick-by-tick subscriptions from the 15-second rule: the gateway
    /// side dropped them, so the client is expected to request them again at once.
    pub fn forget_tbt_windows(&self) {
        let mut acct = self.account.lock();
        for sub in &self.subs {
            if let Feed::Tbt(g) = &sub.feed {
                acct.forget_tbt_request(sub.con_id, g.kind());
            }
        }
    }

    /// Connectivity to IB lost (1100): ticks stop.
    pub fn connectivity_lost(&mut self, out: &mut Vec<Reply>) {
        self.connectivity_lost = true;
        out.push(std_error(-1, code::CONNECTIVITY_LOST));
    }

    /// Connectivity restored: 1101 drops every subscription, 1102 resumes them.
    pub fn connectivity_restored(&mut self, data_kept: bool, out: &mut Vec<Reply>) {
        self.connectivity_lost = false;
        if data_kept {
            out.push(std_error(-1, code::RESTORED_DATA_KEPT));
        } else {
            self.forget_tbt_windows();
            self.drop_all_subs();
            out.push(std_error(-1, code::RESTORED_DATA_LOST));
        }
    }

    /// A competing live session starts (10197 for every subscription, data stops) or ends.
    pub fn set_competing(&mut self, on: bool, out: &mut Vec<Reply>) {
        if on && !self.competing {
            out.extend(
                self.subs
                    .iter()
                    .map(|s| std_error(s.req_id, code::COMPETING_SESSION)),
            );
        }
        self.competing = on;
    }

    /// The next data request (reqMktData or reqTickByTickData) is refused with `code`
    /// (200, 321, 354, 10089, 101, 10190, ...), whatever the account allows.
    pub fn refuse_next(&mut self, code: i32) {
        self.refusals.push_back(code);
    }

    /// IB switches every live market data line to delayed data (a lapsed subscription):
    /// 10167 and market data type 3 for each; tick-by-tick has no delayed form.
    pub fn switch_to_delayed(&mut self, out: &mut Vec<Reply>) {
        for sub in &self.subs {
            if let Feed::L1(_) = sub.feed {
                out.push(std_error(sub.req_id, code::DISPLAYING_DELAYED));
                out.push(Reply::MarketDataType {
                    req_id: sub.req_id,
                    data_type: 3,
                });
            }
        }
    }

    /// A farm notice (2103..2108, 2119, 2157, 2158).
    pub fn farm_notice(&self, c: i32, out: &mut Vec<Reply>) {
        out.push(std_error(-1, c));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.drop_all_subs();
    }
}

/// IB's security types; anything else is "Please enter a valid security type".
const SEC_TYPES: [&str; 22] = [
    "STK", "OPT", "FUT", "CONTFUT", "CASH", "IND", "FOP", "CFD", "BAG", "WAR", "BOND", "CMDTY",
    "NEWS", "FUND", "CRYPTO", "IOPT", "EC", "BILL", "FIXED", "SLB", "BSK", "ICU",
];

/// 321 with IB's text: "Error validating request.-'<tag>' : cause - <cause>".
pub(crate) fn invalid(req_id: i32, tag: &str, cause: &str) -> Reply {
    error(
        req_id,
        code::INVALID_REQUEST,
        format!("Error validating request.-'{tag}' : cause - {cause}"),
    )
}

/// What a real gateway refuses in the contract of a market-data or tick-by-tick request
/// before it looks the contract up (321). A conId does not stand for the exchange: IB
/// wants the exchange on every data request ("Please enter exchange"). Without a conId the
/// security type must be given, and when given it must be one of IB's.
pub(crate) fn contract_problem(c: &ContractQuery) -> Option<&'static str> {
    if c.exchange.trim().is_empty() {
        return Some("Please enter exchange");
    }
    let sec_type_ok = if c.sec_type.is_empty() {
        c.con_id > 0
    } else {
        SEC_TYPES
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&c.sec_type))
    };
    if !sec_type_ok {
        return Some("Please enter a valid security type");
    }
    None
}

/// reqMktData's generic tick list: comma-separated tick ids, and none with a snapshot.
fn generic_ticks_problem(list: &str, snapshot: bool) -> Option<String> {
    if list.is_empty() {
        return None;
    }
    if snapshot {
        return Some("Snapshot market data subscription is not applicable to generic ticks".into());
    }
    let ok = list
        .split(',')
        .all(|t| !t.trim().is_empty() && t.trim().parse::<u16>().is_ok());
    (!ok).then(|| format!("Incorrect generic tick list of {list}"))
}

/// "EXCHANGE.LISTING" as IB names a data line in entitlement errors.
fn listing(inst: &crate::universe::Instrument) -> String {
    let s = &inst.spec;
    if s.primary_exchange.is_empty() {
        s.exchange.clone()
    } else {
        s.primary_exchange.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(lines: usize, tbt: usize) -> SessionConfig {
        SessionConfig {
            seed: 1,
            account: "DU1".into(),
            next_valid_id: 5,
            limits: LimitConfig {
                max_mkt_lines: lines,
                max_tbt: tbt,
                tbt_same_instrument: Duration::from_secs(15),
                max_msgs_per_sec: 50,
            },
        }
    }

    /// A contract as a real client sends it: conId and its exchange.
    fn by_id(con_id: i32) -> ContractQuery {
        let u = Universe::builtin();
        let spec = &u.get(u.by_con_id(con_id).expect("a built-in conId")).spec;
        ContractQuery {
            con_id,
            exchange: spec.exchange.clone(),
            ..Default::default()
        }
    }

    fn mkt(req_id: i32, con_id: i32) -> Request {
        Request::MktData {
            req_id,
            contract: by_id(con_id),
            generic_tick_list: String::new(),
            snapshot: false,
        }
    }

    fn codes(out: &[Reply]) -> Vec<i32> {
        out.iter()
            .filter_map(|r| {
                if let Reply::Error { code, .. } = r {
                    Some(*code)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn welcome_is_accounts_id_then_farm_notices() {
        let s = Session::new(cfg(1, 1), SharedAccount::default(), false);
        let mut out = Vec::new();
        s.welcome(&mut out);
        assert_eq!(out[0], Reply::ManagedAccounts("DU1".into()));
        assert_eq!(out[1], Reply::NextValidId(5));
        assert_eq!(codes(&out), [2104, 2106, 2158]);
    }

    #[test]
    fn lines_are_shared_by_the_account_and_freed_by_cancel_drop_and_1101() {
        let u = Universe::builtin();
        let acct = SharedAccount::default();
        let now = Instant::now();
        let mut a = Session::new(cfg(2, 1), acct.clone(), false);
        let mut b = Session::new(cfg(2, 1), acct.clone(), false);
        let mut out = Vec::new();
        a.handle(mkt(1, 265598), &u, now, 0, &mut out);
        assert!(matches!(
            out[..],
            [
                Reply::TickReqParams { req_id: 1, .. },
                Reply::MarketDataType {
                    req_id: 1,
                    data_type: 1
                }
            ]
        ));
        b.handle(mkt(1, 265598), &u, now, 0, &mut out);
        out.clear();
        b.handle(mkt(2, 272093), &u, now, 0, &mut out);
        assert_eq!(codes(&out), [code::MAX_TICKERS]);
        drop(a);
        assert_eq!(acct.lock().mkt_lines, 1);
        out.clear();
        b.handle(mkt(2, 272093), &u, now, 0, &mut out);
        assert!(codes(&out).is_empty());
        b.connectivity_lost(&mut out);
        b.connectivity_restored(false, &mut out);
        assert!(b.subs().is_empty());
        assert_eq!(acct.lock().mkt_lines, 0);
    }

    #[test]
    fn cancels_are_counted_by_kind_and_kept_after_the_session_ends() {
        let acct = SharedAccount::default();
        let u = Universe::builtin();
        let now = Instant::now();
        let mut s = Session::new(cfg(5, 5), acct.clone(), false);
        let mut out = Vec::new();
        s.handle(mkt(1, 265598), &u, now, 0, &mut out);
        s.handle(
            Request::TickByTick {
                req_id: 2,
                contract: by_id(265598),
                tick_type: "BidAsk".into(),
            },
            &u,
            now,
            0,
            &mut out,
        );
        out.clear();
        s.handle(Request::CancelMktData { req_id: 1 }, &u, now, 0, &mut out);
        s.handle(
            Request::CancelTickByTick { req_id: 2 },
            &u,
            now,
            0,
            &mut out,
        );
        assert!(codes(&out).is_empty(), "{out:?}");
        s.handle(
            Request::CancelTickByTick { req_id: 9 },
            &u,
            now,
            0,
            &mut out,
        );
        assert_eq!(codes(&out), [code::CANT_FIND_EID]);
        drop(s);
        assert_eq!(
            acct.lock().cancels.to_json(),
            serde_json::json!({"mkt_data": 1, "tick_by_tick": 2, "unknown": 1})
        );
    }

    #[test]
    fn competing_session_stops_data_and_reports_each_subscription() {
        let u = Universe::builtin();
        let mut s = Session::new(cfg(5, 5), SharedAccount::default(), false);
        let mut out = Vec::new();
        s.handle(mkt(1, 265598), &u, Instant::now(), 0, &mut out);
        out.clear();
        s.set_competing(true, &mut out);
        assert_eq!(
            out,
            [Reply::Error {
                req_id: 1,
                code: code::COMPETING_SESSION,
                msg: code::text(code::COMPETING_SESSION).into()
            }]
        );
        assert!(!s.streaming());
        s.set_competing(false, &mut out);
        assert!(s.streaming());
    }

    fn tbt_req(req_id: i32, contract: ContractQuery) -> Request {
        Request::TickByTick {
            req_id,
            contract,
            tick_type: "BidAsk".into(),
        }
    }

    fn mkt_req(req_id: i32, contract: ContractQuery) -> Request {
        Request::MktData {
            req_id,
            contract,
            generic_tick_list: String::new(),
            snapshot: false,
        }
    }

    fn first_error(out: &[Reply]) -> (i32, String) {
        out.iter()
            .find_map(|r| match r {
                Reply::Error { code, msg, .. } => Some((*code, msg.clone())),
                _ => None,
            })
            .expect("an error reply")
    }

    #[test]
    fn a_con_id_without_exchange_is_refused_with_321_like_a_real_gateway() {
        let u = Universe::builtin();
        let mut s = Session::new(cfg(5, 5), SharedAccount::default(), false);
        let bare = ContractQuery {
            con_id: 265598,
            ..Default::default()
        };
        for (id, req) in [(1, mkt_req(1, bare.clone())), (2, tbt_req(2, bare.clone()))] {
            let mut out = Vec::new();
            s.handle(req, &u, Instant::now(), 0, &mut out);
            let (c, msg) = first_error(&out);
            assert_eq!(c, code::INVALID_REQUEST, "request {id}: {out:?}");
            assert!(msg.ends_with("cause - Please enter exchange"), "{msg}");
        }
        assert!(s.subs().is_empty());
        // The same request with the exchange goes through.
        let mut out = Vec::new();
        s.handle(tbt_req(3, by_id(265598)), &u, Instant::now(), 0, &mut out);
        assert!(codes(&out).is_empty(), "{out:?}");
        assert_eq!(s.subs().len(), 1);
    }

    #[test]
    fn contracts_ib_cannot_resolve_get_200_and_bad_fields_321() {
        let u = Universe::builtin();
        let mut s = Session::new(cfg(9, 9), SharedAccount::default(), false);
        let q = |con_id: i32, symbol: &str, sec: &str, exch: &str| ContractQuery {
            con_id,
            symbol: symbol.into(),
            sec_type: sec.into(),
            exchange: exch.into(),
            ..Default::default()
        };
        let cases = [
            // Unknown conId, a conId contradicting the symbol, an exchange it does not
            // trade on (a future is not SMART-routed), an unknown symbol.
            (q(999_999, "", "", "SMART"), code::NO_SECURITY),
            (q(265598, "MSFT", "STK", "SMART"), code::NO_SECURITY),
            (q(711280073, "", "FUT", "SMART"), code::NO_SECURITY),
            (q(265598, "", "", "CME"), code::NO_SECURITY),
            (q(0, "NOPE", "STK", "SMART"), code::NO_SECURITY),
            // No security type without a conId, or one IB does not know.
            (q(0, "AAPL", "", "SMART"), code::INVALID_REQUEST),
            (q(265598, "", "SHARES", "SMART"), code::INVALID_REQUEST),
            (q(0, "AAPL", "STK", ""), code::INVALID_REQUEST),
        ];
        for (n, (contract, want)) in cases.into_iter().enumerate() {
            for req in [
                mkt_req(n as i32, contract.clone()),
                tbt_req(100 + n as i32, contract.clone()),
            ] {
                let mut out = Vec::new();
                s.handle(req, &u, Instant::now(), 0, &mut out);
                assert_eq!(first_error(&out).0, want, "{contract:?}: {out:?}");
            }
        }
        assert!(s.subs().is_empty());
        // A full description without conId resolves.
        let mut out = Vec::new();
        let mut full = q(0, "AAPL", "STK", "SMART");
        full.currency = "USD".into();
        s.handle(mkt_req(50, full), &u, Instant::now(), 0, &mut out);
        assert!(codes(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn an_ambiguous_description_is_200_and_names_the_ambiguity() {
        let mut specs = crate::universe::builtin_specs();
        let mut next = specs[0].clone();
        next.con_id = 750150186;
        next.local_symbol = "MNQH7".into();
        next.last_trade_date_or_contract_month = "20270319".into();
        specs.push(next);
        let u = Universe::new(specs).unwrap();
        let mut s = Session::new(cfg(5, 5), SharedAccount::default(), false);
        let mut out = Vec::new();
        let mnq = ContractQuery {
            symbol: "MNQ".into(),
            sec_type: "FUT".into(),
            exchange: "CME".into(),
            ..Default::default()
        };
        s.handle(mkt_req(1, mnq.clone()), &u, Instant::now(), 0, &mut out);
        let (c, msg) = first_error(&out);
        assert_eq!(c, code::NO_SECURITY);
        assert!(msg.contains("ambiguous"), "{msg}");
        // Naming the expiry makes it one contract.
        out.clear();
        let z6 = ContractQuery {
            last_trade_date_or_contract_month: "202612".into(),
            ..mnq
        };
        s.handle(mkt_req(2, z6), &u, Instant::now(), 0, &mut out);
        assert!(codes(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn generic_ticks_must_be_tick_ids_and_not_with_a_snapshot() {
        let u = Universe::builtin();
        let mut s = Session::new(cfg(5, 5), SharedAccount::default(), false);
        for (list, snapshot) in [("abc", false), ("233,", false), ("233", true)] {
            let mut out = Vec::new();
            let req = Request::MktData {
                req_id: 1,
                contract: by_id(265598),
                generic_tick_list: list.into(),
                snapshot,
            };
            s.handle(req, &u, Instant::now(), 0, &mut out);
            assert_eq!(
                first_error(&out).0,
                code::INVALID_REQUEST,
                "{list} {snapshot}"
            );
        }
        let mut out = Vec::new();
        let req = Request::MktData {
            req_id: 1,
            contract: by_id(265598),
            generic_tick_list: "233,236".into(),
            snapshot: false,
        };
        s.handle(req, &u, Instant::now(), 0, &mut out);
        assert!(codes(&out).is_empty(), "{out:?}");
    }
}
