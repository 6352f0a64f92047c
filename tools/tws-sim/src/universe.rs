//! The simulated gateway's instruments: contract definitions with stable conIds, the market
//! parameters the generator walks with, and the entitlements the limits check.
//!
//! Built in: the contracts the original ib-stream used (MNQ 711280073, AAPL 265598) plus a few
//! more futures, stocks and FX pairs. `--universe <file.json>` replaces the list with a JSON
//! array of [`InstrumentSpec`] objects (same field names, prices as decimal strings).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::decimal::{PRICE_SCALE, SIZE_SCALE, parse_fixed};

/// Why a universe file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UniverseError {
    #[error("cannot read universe file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("universe file {path} is not a JSON array of instruments: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("instrument {con_id}: field {field} = {value:?} is not a valid decimal")]
    Decimal {
        con_id: i32,
        field: &'static str,
        value: String,
    },
    #[error("instrument {con_id}: {why}")]
    Invalid { con_id: i32, why: &'static str },
    #[error("conId {0} appears twice")]
    Duplicate(i32),
    #[error("the universe is empty")]
    Empty,
}

/// What the account may see of an instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Entitlement {
    /// Real-time data allowed.
    #[default]
    Live,
    /// No subscription: live requests get 354; delayed (type 3/4) gets 10167 + delayed ticks.
    Delayed,
    /// Needs an extra API subscription: live requests get 10089; delayed works.
    ApiDelayed,
}

/// One instrument as written in a universe file (and as the built-in list is declared).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentSpec {
    pub con_id: i32,
    pub symbol: String,
    pub sec_type: String,
    #[serde(default)]
    pub last_trade_date_or_contract_month: String,
    #[serde(default)]
    pub multiplier: String,
    pub exchange: String,
    #[serde(default)]
    pub primary_exchange: String,
    pub currency: String,
    #[serde(default)]
    pub local_symbol: String,
    #[serde(default)]
    pub trading_class: String,
    #[serde(default)]
    pub long_name: String,
    #[serde(default)]
    pub time_zone_id: String,
    #[serde(default)]
    pub trading_hours: String,
    #[serde(default)]
    pub valid_exchanges: String,
    #[serde(default)]
    pub industry: String,
    /// Minimum price increment, e.g. "0.25".
    pub min_tick: String,
    /// Where the random walk starts, e.g. "21500".
    pub start_price: String,
    /// The spread is 1..=max_spread_ticks ticks.
    #[serde(default = "one")]
    pub max_spread_ticks: u32,
    /// Quote and trade sizes are multiples of this, e.g. "100" shares or "1" contract.
    pub lot: String,
    /// Sizes go up to lot * max_lots.
    #[serde(default = "ten")]
    pub max_lots: u32,
    /// Exchanges that print trades (tick-by-tick Last/AllLast).
    pub trade_exchanges: Vec<String>,
    /// Special-condition strings that trades carry, the first one the most common.
    #[serde(default)]
    pub trade_conditions: Vec<String>,
    /// The BBO exchange reported in tickReqParams.
    #[serde(default)]
    pub bbo_exchange: String,
    #[serde(default)]
    pub entitlement: Entitlement,
    /// Whether tick-by-tick data is permitted (10189 when not).
    #[serde(default = "yes")]
    pub tick_by_tick: bool,
}

fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}
fn yes() -> bool {
    true
}

/// A validated instrument with its numbers in fixed point.
#[derive(Debug, Clone)]
pub struct Instrument {
    pub spec: InstrumentSpec,
    /// Price fixed point (1e-9).
    pub min_tick: i64,
    /// Price fixed point (1e-9).
    pub start_price: i64,
    /// Size fixed point (1e-8).
    pub lot: i64,
}

impl Instrument {
    fn from_spec(spec: InstrumentSpec) -> Result<Self, UniverseError> {
        let dec = |field: &'static str, value: &str, scale: i64| {
            parse_fixed(value, scale).ok_or_else(|| UniverseError::Decimal {
                con_id: spec.con_id,
                field,
                value: value.to_owned(),
            })
        };
        let min_tick = dec("min_tick", &spec.min_tick, PRICE_SCALE)?;
        let start_price = dec("start_price", &spec.start_price, PRICE_SCALE)?;
        let lot = dec("lot", &spec.lot, SIZE_SCALE)?;
        let invalid = |why| UniverseError::Invalid {
            con_id: spec.con_id,
            why,
        };
        if spec.con_id <= 0 {
            return Err(invalid("con_id must be positive"));
        }
        if min_tick <= 0 || start_price <= 0 || lot <= 0 {
            return Err(invalid("min_tick, start_price and lot must be positive"));
        }
        // The midpoint is half a tick off the grid; it must stay exact in 1e-9 units.
        if min_tick % 2 != 0 {
            return Err(invalid("min_tick must be an even number of 1e-9 units"));
        }
        if spec.max_spread_ticks == 0 || spec.max_lots == 0 {
            return Err(invalid("max_spread_ticks and max_lots must be at least 1"));
        }
        if spec.trade_exchanges.is_empty() {
            return Err(invalid("trade_exchanges must not be empty"));
        }
        Ok(Self {
            spec,
            min_tick,
            start_price,
            lot,
        })
    }

    pub fn con_id(&self) -> i32 {
        self.spec.con_id
    }
}

/// What a request names: the contract fields a client sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractQuery {
    pub con_id: i32,
    pub symbol: String,
    pub sec_type: String,
    pub exchange: String,
    pub primary_exchange: String,
    pub currency: String,
    pub local_symbol: String,
    pub trading_class: String,
    pub multiplier: String,
    pub last_trade_date_or_contract_month: String,
}

impl From<&ib_stream_tws::Contract> for ContractQuery {
    fn from(c: &ib_stream_tws::Contract) -> Self {
        ContractQuery {
            con_id: c.con_id,
            symbol: c.symbol.clone(),
            sec_type: c.sec_type.clone(),
            exchange: c.exchange.clone(),
            primary_exchange: c.primary_exchange.clone(),
            currency: c.currency.clone(),
            local_symbol: c.local_symbol.clone(),
            trading_class: c.trading_class.clone(),
            multiplier: c.multiplier.clone(),
            last_trade_date_or_contract_month: c.last_trade_date_or_contract_month.clone(),
        }
    }
}

impl ContractQuery {
    /// A short description for error texts.
    pub fn describe(&self) -> String {
        if self.con_id > 0 {
            format!("conId {}", self.con_id)
        } else if !self.local_symbol.is_empty() {
            self.local_symbol.clone()
        } else {
            self.symbol.clone()
        }
    }
}

/// The set of instruments, looked up by conId or by description.
#[derive(Debug, Clone)]
pub struct Universe {
    instruments: Vec<Instrument>,
}

/// How a lookup for exactly one instrument ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    Found(usize),
    NotFound,
    Ambiguous,
}

impl Universe {
    pub fn new(specs: Vec<InstrumentSpec>) -> Result<Self, UniverseError> {
        if specs.is_empty() {
            return Err(UniverseError::Empty);
        }
        let mut instruments: Vec<Instrument> = Vec::with_capacity(specs.len());
        for spec in specs {
            if instruments.iter().any(|i| i.con_id() == spec.con_id) {
                return Err(UniverseError::Duplicate(spec.con_id));
            }
            instruments.push(Instrument::from_spec(spec)?);
        }
        Ok(Self { instruments })
    }

    pub fn load(path: &Path) -> Result<Self, UniverseError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UniverseError::Read {
            path: shown.clone(),
            source,
        })?;
        let specs: Vec<InstrumentSpec> =
            serde_json::from_str(&text).map_err(|source| UniverseError::Json {
                path: shown,
                source,
            })?;
        Self::new(specs)
    }

    pub fn builtin() -> Self {
        // The built-in list is validated by a unit test; failing here would be a code bug.
        Self::new(builtin_specs()).expect("the built-in universe is valid")
    }

    pub fn get(&self, index: usize) -> &Instrument {
        &self.instruments[index]
    }

    pub fn by_con_id(&self, con_id: i32) -> Option<usize> {
        self.instruments.iter().position(|i| i.con_id() == con_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Instrument> {
        self.instruments.iter()
    }

    /// Every instrument the query describes (reqContractDetails answers with all of them).
    /// A conId names one instrument; every other field given must agree with it, as IB
    /// finds no security definition for a conId with a contradicting description.
    pub fn matches(&self, q: &ContractQuery) -> Vec<usize> {
        if q.con_id > 0 {
            return self
                .by_con_id(q.con_id)
                .filter(|&n| describes(q, &self.instruments[n].spec))
                .into_iter()
                .collect();
        }
        if q.symbol.is_empty() && q.local_symbol.is_empty() {
            return Vec::new();
        }
        self.instruments
            .iter()
            .enumerate()
            .filter(|(_, i)| describes(q, &i.spec))
            .map(|(n, _)| n)
            .collect()
    }

    /// The one instrument a market-data request names.
    pub fn resolve(&self, q: &ContractQuery) -> Resolve {
        let m = self.matches(q);
        match m.len() {
            0 => Resolve::NotFound,
            1 => Resolve::Found(m[0]),
            _ => Resolve::Ambiguous,
        }
    }
}

/// Whether every field `q` gives agrees with `s` (empty fields agree with anything). The
/// exchange must be one the instrument trades on (its exchange, primary exchange or one of
/// its valid exchanges: SMART only where IB routes it, so never for a future).
fn describes(q: &ContractQuery, s: &InstrumentSpec) -> bool {
    let same = |want: &str, have: &str| want.is_empty() || want.eq_ignore_ascii_case(have);
    let symbol_ok = q.symbol.is_empty()
        || q.symbol.eq_ignore_ascii_case(&s.symbol)
        || q.symbol.eq_ignore_ascii_case(&s.local_symbol);
    let exchange_ok = q.exchange.is_empty()
        || q.exchange.eq_ignore_ascii_case(&s.exchange)
        || q.exchange.eq_ignore_ascii_case(&s.primary_exchange)
        || s.valid_exchanges
            .split(',')
            .any(|x| x.trim().eq_ignore_ascii_case(&q.exchange));
    let multiplier_ok = q.multiplier.is_empty()
        || q.multiplier == s.multiplier
        || matches!(
            (q.multiplier.parse::<f64>(), s.multiplier.parse::<f64>()),
            (Ok(a), Ok(b)) if a == b
        );
    symbol_ok
        && exchange_ok
        && multiplier_ok
        && same(&q.sec_type, &s.sec_type)
        && same(&q.currency, &s.currency)
        && same(&q.local_symbol, &s.local_symbol)
        && same(&q.trading_class, &s.trading_class)
        && same(&q.primary_exchange, &s.primary_exchange)
        && (q.last_trade_date_or_contract_month.is_empty()
            || s.last_trade_date_or_contract_month
                .starts_with(&q.last_trade_date_or_contract_month))
}

#[allow(clippy::too_many_arguments)]
fn future(
    con_id: i32,
    symbol: &str,
    local: &str,
    expiry: &str,
    exchange: &str,
    multiplier: &str,
    min_tick: &str,
    start: &str,
    long_name: &str,
) -> InstrumentSpec {
    InstrumentSpec {
        con_id,
        symbol: symbol.into(),
        sec_type: "FUT".into(),
        last_trade_date_or_contract_month: expiry.into(),
        multiplier: multiplier.into(),
        exchange: exchange.into(),
        primary_exchange: String::new(),
        currency: "USD".into(),
        local_symbol: local.into(),
        trading_class: symbol.into(),
        long_name: long_name.into(),
        time_zone_id: "US/Central".into(),
        trading_hours: "20261122:1700-20261123:1600;20261123:1700-20261124:1600".into(),
        valid_exchanges: exchange.into(),
        industry: String::new(),
        min_tick: min_tick.into(),
        start_price: start.into(),
        max_spread_ticks: 2,
        lot: "1".into(),
        max_lots: 12,
        trade_exchanges: vec![exchange.into()],
        trade_conditions: vec![String::new()],
        bbo_exchange: exchange.into(),
        entitlement: Entitlement::Live,
        tick_by_tick: true,
    }
}

fn stock(
    con_id: i32,
    symbol: &str,
    primary: &str,
    start: &str,
    long_name: &str,
    industry: &str,
) -> InstrumentSpec {
    InstrumentSpec {
        con_id,
        symbol: symbol.into(),
        sec_type: "STK".into(),
        last_trade_date_or_contract_month: String::new(),
        multiplier: String::new(),
        exchange: "SMART".into(),
        primary_exchange: primary.into(),
        currency: "USD".into(),
        local_symbol: symbol.into(),
        trading_class: if primary == "NASDAQ" { "NMS".into() } else { symbol.into() },
        long_name: long_name.into(),
        time_zone_id: "US/Eastern".into(),
        trading_hours: "20261123:0400-20261123:2000;20261124:0400-20261124:2000".into(),
        valid_exchanges: "SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,NASDAQ,DRCTEDGE,BEX,BATS,EDGEA,BYX,IEX,EDGX,LTSE,PEARL,MEMX".into(),
        industry: industry.into(),
        min_tick: "0.01".into(),
        start_price: start.into(),
        max_spread_ticks: 3,
        lot: "100".into(),
        max_lots: 20,
        trade_exchanges: ["NASDAQ", "ARCA", "NYSE", "BATS", "EDGX", "IEX", "DRCTEDGE", "MEMX"]
            .map(String::from)
            .to_vec(),
        // IB's trade condition strings: regular, form T (extended hours), odd lot, ISO.
        trade_conditions: ["", " T", "  I", "   F"].map(String::from).to_vec(),
        bbo_exchange: "9c0001".into(),
        entitlement: Entitlement::Live,
        tick_by_tick: true,
    }
}

fn fx(con_id: i32, base: &str, quote: &str, min_tick: &str, start: &str) -> InstrumentSpec {
    InstrumentSpec {
        con_id,
        symbol: base.into(),
        sec_type: "CASH".into(),
        last_trade_date_or_contract_month: String::new(),
        multiplier: String::new(),
        exchange: "IDEALPRO".into(),
        primary_exchange: String::new(),
        currency: quote.into(),
        local_symbol: format!("{base}.{quote}"),
        trading_class: format!("{base}.{quote}"),
        long_name: format!("{base} {quote}"),
        time_zone_id: "US/Eastern".into(),
        trading_hours: "20261122:1715-20261123:1700;20261123:1715-20261124:1700".into(),
        valid_exchanges: "IDEALPRO".into(),
        industry: String::new(),
        min_tick: min_tick.into(),
        start_price: start.into(),
        max_spread_ticks: 2,
        lot: "100000".into(),
        max_lots: 50,
        trade_exchanges: vec!["IDEALPRO".into()],
        trade_conditions: vec![String::new()],
        bbo_exchange: "IDEALPRO".into(),
        entitlement: Entitlement::Live,
        tick_by_tick: true,
    }
}

/// The built-in instruments.
pub fn builtin_specs() -> Vec<InstrumentSpec> {
    vec![
        future(
            711280073,
            "MNQ",
            "MNQZ6",
            "20261218",
            "CME",
            "2",
            "0.25",
            "21500",
            "Micro E-Mini Nasdaq-100 Index",
        ),
        future(
            495512563,
            "ES",
            "ESZ6",
            "20261218",
            "CME",
            "50",
            "0.25",
            "6050",
            "E-mini S&P 500",
        ),
        future(
            563947738,
            "NQ",
            "NQZ6",
            "20261218",
            "CME",
            "20",
            "0.25",
            "21500",
            "E-mini NASDAQ 100",
        ),
        future(
            212921504,
            "CL",
            "CLF7",
            "20261218",
            "NYMEX",
            "1000",
            "0.01",
            "70.5",
            "Light Sweet Crude Oil",
        ),
        stock(
            265598,
            "AAPL",
            "NASDAQ",
            "189.25",
            "APPLE INC",
            "Technology",
        ),
        stock(
            272093,
            "MSFT",
            "NASDAQ",
            "420.5",
            "MICROSOFT CORP",
            "Technology",
        ),
        {
            let mut spy = stock(
                756733,
                "SPY",
                "ARCA",
                "580",
                "SPDR S&P 500 ETF TRUST",
                "Funds",
            );
            spy.trading_class = "SPY".into();
            spy
        },
        fx(12087792, "EUR", "USD", "0.00005", "1.085"),
        fx(12087797, "GBP", "USD", "0.00005", "1.2675"),
        fx(15016059, "USD", "JPY", "0.005", "151.25"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_holds_the_original_contracts() {
        let u = Universe::builtin();
        let mnq = u.get(u.by_con_id(711280073).unwrap());
        assert_eq!(
            (mnq.spec.symbol.as_str(), mnq.spec.exchange.as_str()),
            ("MNQ", "CME")
        );
        let aapl = u.get(u.by_con_id(265598).unwrap());
        assert_eq!(aapl.spec.primary_exchange, "NASDAQ");
    }

    #[test]
    fn lookup_by_symbol() {
        let u = Universe::builtin();
        let q = |sym: &str, sec: &str, exch: &str, cur: &str| ContractQuery {
            symbol: sym.into(),
            sec_type: sec.into(),
            exchange: exch.into(),
            currency: cur.into(),
            ..Default::default()
        };
        assert_eq!(
            u.resolve(&q("AAPL", "STK", "SMART", "USD")),
            Resolve::Found(u.by_con_id(265598).unwrap())
        );
        assert_eq!(
            u.resolve(&q("MNQ", "FUT", "CME", "")),
            Resolve::Found(u.by_con_id(711280073).unwrap())
        );
        assert_eq!(
            u.resolve(&q("EUR", "CASH", "IDEALPRO", "USD")),
            Resolve::Found(u.by_con_id(12087792).unwrap())
        );
        assert_eq!(
            u.resolve(&q("NOPE", "STK", "SMART", "USD")),
            Resolve::NotFound
        );
        // "USD" is the base of USD.JPY only; "GBP" without currency is unique too.
        assert_eq!(u.matches(&q("GBP", "", "", "")).len(), 1);
    }

    #[test]
    fn a_file_can_replace_the_universe_and_bad_files_are_refused() {
        let spec = builtin_specs().remove(4);
        let good = serde_json::to_string(&vec![spec.clone()]).unwrap();
        let dir = std::env::temp_dir().join(format!("tws-sim-universe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.json");
        std::fs::write(&path, good).unwrap();
        let u = Universe::load(&path).unwrap();
        assert_eq!(u.iter().count(), 1);
        let mut bad = spec;
        bad.min_tick = "abc".into();
        std::fs::write(&path, serde_json::to_string(&vec![bad]).unwrap()).unwrap();
        assert!(matches!(
            Universe::load(&path),
            Err(UniverseError::Decimal {
                field: "min_tick",
                ..
            })
        ));
        std::fs::write(&path, "[]").unwrap();
        assert!(matches!(Universe::load(&path), Err(UniverseError::Empty)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
