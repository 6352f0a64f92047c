//! Contracts and contract details, with their text and protobuf forms.

use super::decimal::{self, PRICE_DIGITS, SIZE_DIGITS};
use super::error::{DecodeError, FieldProblem, ProtoError};
use super::proto::{Reader, Value, Writer};
use super::text::{FieldWriter, Fields, UNSET_I32};
use super::version as v;
use crate::ipc::UNDEF_I64;

/// One leg of a combo (BAG) contract (text form only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComboLeg {
    /// Leg conId.
    pub con_id: i32,
    /// Ratio.
    pub ratio: i32,
    /// BUY/SELL.
    pub action: String,
    /// Exchange.
    pub exchange: String,
}

/// Delta-neutral underlying of a request (text form: conId, delta, price).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeltaNeutral {
    /// Underlying conId.
    pub con_id: i32,
    /// Delta.
    pub delta: f64,
    /// Price.
    pub price: f64,
}

/// An IB contract. `strike` is a price (1e-9 fixed point) with `UNDEF_I64` = unset (sent
/// as `""`; `"0.0"` reads as 0); `multiplier` stays text as IB's clients keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// IB contract id (0 = unknown).
    pub con_id: i32,
    /// Symbol.
    pub symbol: String,
    /// STK, FUT, CASH, OPT, BAG, ...
    pub sec_type: String,
    /// Expiry or contract month.
    pub last_trade_date_or_contract_month: String,
    /// Last trade date (contractData from 182, protobuf field 21).
    pub last_trade_date: String,
    /// Strike (price fixed point, unset = `UNDEF_I64`).
    pub strike: i64,
    /// P/C for options.
    pub right: String,
    /// Multiplier as text ("2", "50", ...).
    pub multiplier: String,
    /// Exchange (SMART, CME, ...).
    pub exchange: String,
    /// Primary exchange.
    pub primary_exchange: String,
    /// Currency.
    pub currency: String,
    /// Local symbol.
    pub local_symbol: String,
    /// Trading class.
    pub trading_class: String,
    /// Include expired contracts (contract details requests).
    pub include_expired: bool,
    /// Security id type (ISIN, CUSIP, ...).
    pub sec_id_type: String,
    /// Security id.
    pub sec_id: String,
    /// Issuer id (bonds; contract details requests from 176).
    pub issuer_id: String,
    /// Description (protobuf field 15 only).
    pub description: String,
    /// Combo legs when `sec_type == "BAG"` (text reqMktData only).
    pub combo_legs: Vec<ComboLeg>,
    /// Delta-neutral underlying (reqMktData).
    pub delta_neutral: Option<DeltaNeutral>,
}

impl Default for Contract {
    fn default() -> Self {
        Contract {
            con_id: 0,
            symbol: String::new(),
            sec_type: String::new(),
            last_trade_date_or_contract_month: String::new(),
            last_trade_date: String::new(),
            strike: UNDEF_I64,
            right: String::new(),
            multiplier: String::new(),
            exchange: String::new(),
            primary_exchange: String::new(),
            currency: String::new(),
            local_symbol: String::new(),
            trading_class: String::new(),
            include_expired: false,
            sec_id_type: String::new(),
            sec_id: String::new(),
            issuer_id: String::new(),
            description: String::new(),
            combo_legs: Vec::new(),
            delta_neutral: None,
        }
    }
}

/// Contract details (contractData). Prices are 1e-9 and sizes 1e-8 fixed point.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractDetails {
    /// The contract.
    pub contract: Contract,
    /// Market name.
    pub market_name: String,
    /// Minimum tick (price fixed point; `UNDEF_I64` = unset).
    pub min_tick: i64,
    /// mdSizeMultiplier (text form, 110 <= version < 164 only).
    pub md_size_multiplier: i32,
    /// Order types.
    pub order_types: String,
    /// Valid exchanges.
    pub valid_exchanges: String,
    /// Price magnifier (an int: clients parse it with `int()`).
    pub price_magnifier: i32,
    /// Underlying conId.
    pub under_con_id: i32,
    /// Long name.
    pub long_name: String,
    /// Contract month.
    pub contract_month: String,
    /// Industry.
    pub industry: String,
    /// Category.
    pub category: String,
    /// Subcategory.
    pub subcategory: String,
    /// Time zone id.
    pub time_zone_id: String,
    /// Trading hours.
    pub trading_hours: String,
    /// Liquid hours.
    pub liquid_hours: String,
    /// EV rule.
    pub ev_rule: String,
    /// EV multiplier (written as an integer when integral: ibapi parses it with `int()`).
    pub ev_multiplier: f64,
    /// Security id list (tag, value).
    pub sec_id_list: Vec<(String, String)>,
    /// Aggregation group (from 121).
    pub agg_group: i32,
    /// Underlying symbol (from 122).
    pub under_symbol: String,
    /// Underlying sec type (from 122).
    pub under_sec_type: String,
    /// Market rule ids (from 126).
    pub market_rule_ids: String,
    /// Real expiration date (from 134).
    pub real_expiration_date: String,
    /// Stock type (from 152).
    pub stock_type: String,
    /// sizeMinTick (text form at exactly version 163; size fixed point).
    pub size_min_tick: i64,
    /// Minimum size (from 164; size fixed point).
    pub min_size: i64,
    /// Size increment (from 164).
    pub size_increment: i64,
    /// Suggested size increment (from 164).
    pub suggested_size_increment: i64,
    /// The 17 FUND-only fields, raw text, when `sec_type == "FUND"` (text form from 179).
    pub fund_fields: Vec<String>,
    /// Ineligibility reasons (id, description) (from 186).
    pub ineligibility_reasons: Vec<(String, String)>,
}

impl Default for ContractDetails {
    fn default() -> Self {
        ContractDetails {
            contract: Contract::default(),
            market_name: String::new(),
            min_tick: UNDEF_I64,
            md_size_multiplier: 0,
            order_types: String::new(),
            valid_exchanges: String::new(),
            price_magnifier: 0,
            under_con_id: 0,
            long_name: String::new(),
            contract_month: String::new(),
            industry: String::new(),
            category: String::new(),
            subcategory: String::new(),
            time_zone_id: String::new(),
            trading_hours: String::new(),
            liquid_hours: String::new(),
            ev_rule: String::new(),
            ev_multiplier: 0.0,
            sec_id_list: Vec::new(),
            agg_group: 0,
            under_symbol: String::new(),
            under_sec_type: String::new(),
            market_rule_ids: String::new(),
            real_expiration_date: String::new(),
            stock_type: String::new(),
            size_min_tick: UNDEF_I64,
            min_size: UNDEF_I64,
            size_increment: UNDEF_I64,
            suggested_size_increment: UNDEF_I64,
            fund_fields: Vec::new(),
            ineligibility_reasons: Vec::new(),
        }
    }
}

/// Number of FUND-only text fields in contractData from version 179.
pub const FUND_FIELD_COUNT: usize = 17;

/// Indexes of the boolean FUND fields (fundClosed, fundClosedForNewInvestors,
/// fundClosedForNewMoney): "1"/"0" in text, bool in protobuf.
pub const FUND_BOOL_FIELDS: [usize; 3] = [7, 8, 9];

/// An execution filter (reqExecutions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Client id (0 = any).
    pub client_id: i32,
    /// Account code.
    pub acct_code: String,
    /// Time `yyyymmdd hh:mm:ss`.
    pub time: String,
    /// Symbol.
    pub symbol: String,
    /// Sec type.
    pub sec_type: String,
    /// Exchange.
    pub exchange: String,
    /// Side.
    pub side: String,
    /// Last N days (from 200; [`UNSET_I32`] = unset).
    pub last_n_days: i32,
    /// Specific dates yyyymmdd (from 200).
    pub specific_dates: Vec<i32>,
}

impl Default for ExecutionFilter {
    fn default() -> Self {
        ExecutionFilter {
            client_id: 0,
            acct_code: String::new(),
            time: String::new(),
            symbol: String::new(),
            sec_type: String::new(),
            exchange: String::new(),
            side: String::new(),
            last_n_days: UNSET_I32,
            specific_dates: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// text

/// Write the 12 contract fields every market-data request carries:
/// conId, symbol, secType, lastTradeDateOrContractMonth, strike, right, multiplier,
/// exchange, primaryExchange, currency, localSymbol, tradingClass.
pub fn write_contract_fields(w: &mut FieldWriter<'_>, c: &Contract) {
    w.int(i64::from(c.con_id))
        .str(&c.symbol)
        .str(&c.sec_type)
        .str(&c.last_trade_date_or_contract_month)
        .price(c.strike)
        .str(&c.right)
        .str(&c.multiplier)
        .str(&c.exchange)
        .str(&c.primary_exchange)
        .str(&c.currency)
        .str(&c.local_symbol)
        .str(&c.trading_class);
}

/// Read the 12 fields written by [`write_contract_fields`].
pub fn read_contract_fields(f: &mut Fields<'_>) -> Result<Contract, DecodeError> {
    Ok(Contract {
        con_id: f.i32()?,
        symbol: f.string()?,
        sec_type: f.string()?,
        last_trade_date_or_contract_month: f.string()?,
        strike: f.price()?,
        right: f.string()?,
        multiplier: f.string()?,
        exchange: f.string()?,
        primary_exchange: f.string()?,
        currency: f.string()?,
        local_symbol: f.string()?,
        trading_class: f.string()?,
        ..Contract::default()
    })
}

/// Write contractData's fields after the message id at `version` (reference §3.3).
pub fn write_contract_data(
    w: &mut FieldWriter<'_>,
    version: u32,
    req_id: i32,
    d: &ContractDetails,
) {
    let c = &d.contract;
    if version < v::SIZE_RULES {
        w.int(8);
    }
    w.int(i64::from(req_id))
        .str(&c.symbol)
        .str(&c.sec_type)
        .str(&c.last_trade_date_or_contract_month);
    if version >= v::LAST_TRADE_DATE {
        w.str(&c.last_trade_date);
    }
    w.price(c.strike)
        .str(&c.right)
        .str(&c.exchange)
        .str(&c.currency)
        .str(&c.local_symbol)
        .str(&d.market_name)
        .str(&c.trading_class)
        .int(i64::from(c.con_id))
        .price(d.min_tick);
    if (v::MD_SIZE_MULTIPLIER..v::SIZE_RULES).contains(&version) {
        w.int(i64::from(d.md_size_multiplier));
    }
    w.str(&c.multiplier)
        .str(&d.order_types)
        .str(&d.valid_exchanges)
        .int(i64::from(d.price_magnifier))
        .int(i64::from(d.under_con_id))
        .str(&d.long_name)
        .str(&c.primary_exchange)
        .str(&d.contract_month)
        .str(&d.industry)
        .str(&d.category)
        .str(&d.subcategory)
        .str(&d.time_zone_id)
        .str(&d.trading_hours)
        .str(&d.liquid_hours)
        .str(&d.ev_rule)
        .f64(d.ev_multiplier)
        .int(d.sec_id_list.len() as i64);
    for (t, val) in &d.sec_id_list {
        w.str(t).str(val);
    }
    if version >= v::AGG_GROUP {
        w.int(i64::from(d.agg_group));
    }
    if version >= v::UNDERLYING_INFO {
        w.str(&d.under_symbol).str(&d.under_sec_type);
    }
    if version >= v::MARKET_RULES {
        w.str(&d.market_rule_ids);
    }
    if version >= v::REAL_EXPIRATION_DATE {
        w.str(&d.real_expiration_date);
    }
    if version >= v::STOCK_TYPE {
        w.str(&d.stock_type);
    }
    if version == v::FRACTIONAL_SIZE_SUPPORT {
        w.size(d.size_min_tick);
    }
    if version >= v::SIZE_RULES {
        w.size(d.min_size)
            .size(d.size_increment)
            .size(d.suggested_size_increment);
    }
    if version >= v::FUND_DATA_FIELDS && c.sec_type == "FUND" {
        for i in 0..FUND_FIELD_COUNT {
            w.str(d.fund_fields.get(i).map_or("", String::as_str));
        }
    }
    if version >= v::INELIGIBILITY_REASONS {
        w.int(d.ineligibility_reasons.len() as i64);
        for (id, desc) in &d.ineligibility_reasons {
            w.str(id).str(desc);
        }
    }
}

/// Bound on list counts read from the wire (each entry needs at least one byte anyway).
fn count(f: &mut Fields<'_>) -> Result<usize, DecodeError> {
    let n = f.i32()?;
    let idx = f.index().saturating_sub(1);
    if n < 0 || n as usize > f.remaining() {
        return Err(DecodeError::Field {
            msg_id: f.msg_id(),
            index: idx,
            problem: FieldProblem::OutOfRange,
        });
    }
    Ok(n as usize)
}

/// Read contractData's fields (after the message id) at `version`; returns `(reqId, details)`.
pub fn read_contract_data(
    f: &mut Fields<'_>,
    version: u32,
) -> Result<(i32, ContractDetails), DecodeError> {
    if version < v::SIZE_RULES {
        f.skip_field()?; // version field (clients assume 8)
    }
    let req_id = f.i32()?;
    let mut c = Contract {
        symbol: f.string()?,
        sec_type: f.string()?,
        last_trade_date_or_contract_month: f.string()?,
        ..Contract::default()
    };
    if version >= v::LAST_TRADE_DATE {
        c.last_trade_date = f.string()?;
    }
    c.strike = f.price()?;
    c.right = f.string()?;
    c.exchange = f.string()?;
    c.currency = f.string()?;
    c.local_symbol = f.string()?;
    let mut d = ContractDetails {
        market_name: f.string()?,
        ..ContractDetails::default()
    };
    c.trading_class = f.string()?;
    c.con_id = f.i32()?;
    d.min_tick = f.price()?;
    if (v::MD_SIZE_MULTIPLIER..v::SIZE_RULES).contains(&version) {
        d.md_size_multiplier = f.i32()?;
    }
    c.multiplier = f.string()?;
    d.order_types = f.string()?;
    d.valid_exchanges = f.string()?;
    d.price_magnifier = f.i32()?;
    d.under_con_id = f.i32()?;
    d.long_name = f.string()?;
    c.primary_exchange = f.string()?;
    d.contract_month = f.string()?;
    d.industry = f.string()?;
    d.category = f.string()?;
    d.subcategory = f.string()?;
    d.time_zone_id = f.string()?;
    d.trading_hours = f.string()?;
    d.liquid_hours = f.string()?;
    d.ev_rule = f.string()?;
    d.ev_multiplier = f.f64()?;
    let n = count(f)?;
    for _ in 0..n {
        d.sec_id_list.push((f.string()?, f.string()?));
    }
    if version >= v::AGG_GROUP {
        d.agg_group = f.i32()?;
    }
    if version >= v::UNDERLYING_INFO {
        d.under_symbol = f.string()?;
        d.under_sec_type = f.string()?;
    }
    if version >= v::MARKET_RULES {
        d.market_rule_ids = f.string()?;
    }
    if version >= v::REAL_EXPIRATION_DATE {
        d.real_expiration_date = f.string()?;
    }
    if version >= v::STOCK_TYPE {
        d.stock_type = f.string()?;
    }
    if version == v::FRACTIONAL_SIZE_SUPPORT {
        d.size_min_tick = f.size()?;
    }
    if version >= v::SIZE_RULES {
        d.min_size = f.size()?;
        d.size_increment = f.size()?;
        d.suggested_size_increment = f.size()?;
    }
    if version >= v::FUND_DATA_FIELDS && c.sec_type == "FUND" {
        for _ in 0..FUND_FIELD_COUNT {
            d.fund_fields.push(f.string()?);
        }
    }
    if version >= v::INELIGIBILITY_REASONS {
        let n = count(f)?;
        for _ in 0..n {
            d.ineligibility_reasons.push((f.string()?, f.string()?));
        }
    }
    d.contract = c;
    Ok((req_id, d))
}

// ---------------------------------------------------------------------------------------
// protobuf

/// A protobuf decoding problem before the message id is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoProblem {
    /// Malformed wire bytes.
    Wire(ProtoError),
    /// A field with the wrong wire type or an invalid value.
    Field(u32, FieldProblem),
}

impl ProtoProblem {
    /// Attach the message id.
    pub fn at(self, msg_id: u32) -> DecodeError {
        match self {
            ProtoProblem::Wire(source) => DecodeError::Proto { msg_id, source },
            ProtoProblem::Field(field, problem) => DecodeError::ProtoField {
                msg_id,
                field,
                problem,
            },
        }
    }
}

impl From<ProtoError> for ProtoProblem {
    fn from(e: ProtoError) -> Self {
        ProtoProblem::Wire(e)
    }
}

/// Typed accessors for one field value, naming the field in errors.
pub(crate) trait Get<'a> {
    fn gi32(self, field: u32) -> Result<i32, ProtoProblem>;
    fn gi64(self, field: u32) -> Result<i64, ProtoProblem>;
    fn gbool(self, field: u32) -> Result<bool, ProtoProblem>;
    fn gf64(self, field: u32) -> Result<f64, ProtoProblem>;
    fn gstr(self, field: u32) -> Result<&'a str, ProtoProblem>;
    fn gbytes(self, field: u32) -> Result<&'a [u8], ProtoProblem>;
    fn gprice(self, field: u32) -> Result<i64, ProtoProblem>;
    fn gsize(self, field: u32) -> Result<i64, ProtoProblem>;
    fn gprice_str(self, field: u32) -> Result<i64, ProtoProblem>;
}

impl<'a> Get<'a> for Value<'a> {
    #[inline]
    fn gi32(self, field: u32) -> Result<i32, ProtoProblem> {
        self.i32()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadInt))
    }
    #[inline]
    fn gi64(self, field: u32) -> Result<i64, ProtoProblem> {
        self.i64()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadInt))
    }
    #[inline]
    fn gbool(self, field: u32) -> Result<bool, ProtoProblem> {
        self.bool()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadBool))
    }
    #[inline]
    fn gf64(self, field: u32) -> Result<f64, ProtoProblem> {
        self.f64()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadFloat))
    }
    #[inline]
    fn gstr(self, field: u32) -> Result<&'a str, ProtoProblem> {
        self.str()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadUtf8))
    }
    #[inline]
    fn gbytes(self, field: u32) -> Result<&'a [u8], ProtoProblem> {
        self.bytes()
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadUtf8))
    }
    /// A double price rounded to the nearest 1e-9.
    #[inline]
    fn gprice(self, field: u32) -> Result<i64, ProtoProblem> {
        let x = self.gf64(field)?;
        decimal::f64_to_fixed(x, PRICE_DIGITS)
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadDecimal))
    }
    /// A decimal-string size; empty = unset.
    #[inline]
    fn gsize(self, field: u32) -> Result<i64, ProtoProblem> {
        let b = self.gbytes(field)?;
        decimal::parse_fixed_or_unset(b, SIZE_DIGITS)
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadDecimal))
    }
    /// A decimal-string price (minTick); empty = unset.
    fn gprice_str(self, field: u32) -> Result<i64, ProtoProblem> {
        let b = self.gbytes(field)?;
        decimal::parse_fixed_or_unset(b, PRICE_DIGITS)
            .ok_or(ProtoProblem::Field(field, FieldProblem::BadDecimal))
    }
}

/// Write a fixed-point price as a protobuf double field (nothing when unset).
pub fn put_price(w: &mut Writer<'_>, field: u32, v: i64) {
    if let Some(x) = decimal::fixed_to_f64(v, PRICE_DIGITS) {
        w.f64(field, x);
    }
}

/// Write a fixed-point size as a protobuf decimal string field (nothing when unset).
pub fn put_size(w: &mut Writer<'_>, field: u32, v: i64) {
    w.decimal(field, v, SIZE_DIGITS);
}

/// Write a contract's protobuf fields (IB's `Contract` message; empty strings and a zero
/// conId omitted as rust-ibapi does).
pub fn write_contract_proto(w: &mut Writer<'_>, c: &Contract) {
    if c.con_id != 0 {
        w.i32(1, c.con_id);
    }
    w.str(2, &c.symbol)
        .str(3, &c.sec_type)
        .str(4, &c.last_trade_date_or_contract_month);
    put_price(w, 5, c.strike);
    w.str(6, &c.right);
    if let Ok(m) = c.multiplier.parse::<f64>() {
        w.f64(7, m);
    }
    w.str(8, &c.exchange)
        .str(9, &c.primary_exchange)
        .str(10, &c.currency)
        .str(11, &c.local_symbol)
        .str(12, &c.trading_class)
        .str(13, &c.sec_id_type)
        .str(14, &c.sec_id)
        .str(15, &c.description)
        .str(16, &c.issuer_id);
    if let Some(dn) = &c.delta_neutral {
        w.message(17, |w| {
            w.i32(1, dn.con_id).f64(2, dn.delta).f64(3, dn.price);
        });
    }
    w.bool_if(18, c.include_expired);
    for leg in &c.combo_legs {
        w.message(20, |w| {
            w.i32(1, leg.con_id)
                .i32(2, leg.ratio)
                .str(3, &leg.action)
                .str(4, &leg.exchange);
        });
    }
    w.str(21, &c.last_trade_date);
}

/// The text IB's clients keep for a protobuf double multiplier (`2.0` → `"2"`).
fn multiplier_text(m: f64) -> String {
    format!("{m}")
}

/// Read a protobuf `Contract`.
pub fn read_contract_proto(b: &[u8]) -> Result<Contract, ProtoProblem> {
    let mut c = Contract::default();
    let mut r = Reader::new(b);
    while let Some((f, val)) = r.next_field()? {
        match f {
            1 => c.con_id = val.gi32(f)?,
            2 => c.symbol = val.gstr(f)?.to_owned(),
            3 => c.sec_type = val.gstr(f)?.to_owned(),
            4 => c.last_trade_date_or_contract_month = val.gstr(f)?.to_owned(),
            5 => c.strike = val.gprice(f)?,
            6 => c.right = val.gstr(f)?.to_owned(),
            7 => c.multiplier = multiplier_text(val.gf64(f)?),
            8 => c.exchange = val.gstr(f)?.to_owned(),
            9 => c.primary_exchange = val.gstr(f)?.to_owned(),
            10 => c.currency = val.gstr(f)?.to_owned(),
            11 => c.local_symbol = val.gstr(f)?.to_owned(),
            12 => c.trading_class = val.gstr(f)?.to_owned(),
            13 => c.sec_id_type = val.gstr(f)?.to_owned(),
            14 => c.sec_id = val.gstr(f)?.to_owned(),
            15 => c.description = val.gstr(f)?.to_owned(),
            16 => c.issuer_id = val.gstr(f)?.to_owned(),
            17 => {
                let mut dn = DeltaNeutral::default();
                let mut r2 = Reader::new(val.gbytes(f)?);
                while let Some((g, x)) = r2.next_field()? {
                    match g {
                        1 => dn.con_id = x.gi32(g)?,
                        2 => dn.delta = x.gf64(g)?,
                        3 => dn.price = x.gf64(g)?,
                        _ => {}
                    }
                }
                c.delta_neutral = Some(dn);
            }
            18 => c.include_expired = val.gbool(f)?,
            20 => {
                let mut leg = ComboLeg::default();
                let mut r2 = Reader::new(val.gbytes(f)?);
                while let Some((g, x)) = r2.next_field()? {
                    match g {
                        1 => leg.con_id = x.gi32(g)?,
                        2 => leg.ratio = x.gi32(g)?,
                        3 => leg.action = x.gstr(g)?.to_owned(),
                        4 => leg.exchange = x.gstr(g)?.to_owned(),
                        _ => {}
                    }
                }
                c.combo_legs.push(leg);
            }
            21 => c.last_trade_date = val.gstr(f)?.to_owned(),
            _ => {}
        }
    }
    Ok(c)
}

/// Write IB's `ContractDetails` protobuf message fields (the text-only mdSizeMultiplier
/// and sizeMinTick are not part of this form).
pub fn write_details_proto(w: &mut Writer<'_>, d: &ContractDetails) {
    w.str(1, &d.market_name);
    if d.min_tick != UNDEF_I64 {
        let mut buf = Vec::with_capacity(24);
        decimal::write_fixed(&mut buf, d.min_tick, PRICE_DIGITS);
        w.bytes(2, &buf);
    }
    w.str(3, &d.order_types)
        .str(4, &d.valid_exchanges)
        .i32(5, d.price_magnifier)
        .i32(6, d.under_con_id)
        .str(7, &d.long_name)
        .str(8, &d.contract_month)
        .str(9, &d.industry)
        .str(10, &d.category)
        .str(11, &d.subcategory)
        .str(12, &d.time_zone_id)
        .str(13, &d.trading_hours)
        .str(14, &d.liquid_hours)
        .str(15, &d.ev_rule)
        .f64(16, d.ev_multiplier);
    for (k, val) in &d.sec_id_list {
        w.message(17, |w| {
            w.bytes(1, k.as_bytes()).bytes(2, val.as_bytes());
        });
    }
    w.i32(18, d.agg_group)
        .str(19, &d.under_symbol)
        .str(20, &d.under_sec_type)
        .str(21, &d.market_rule_ids)
        .str(22, &d.real_expiration_date)
        .str(23, &d.stock_type);
    put_size(w, 24, d.min_size);
    put_size(w, 25, d.size_increment);
    put_size(w, 26, d.suggested_size_increment);
    // FUND fields 27..=43: text, except 34..=36 (fundClosed*) which are booleans.
    if d.contract.sec_type == "FUND" {
        for (i, f) in d.fund_fields.iter().take(FUND_FIELD_COUNT).enumerate() {
            let tag = 27 + i as u32;
            if FUND_BOOL_FIELDS.contains(&i) {
                w.bool(tag, matches!(f.as_str(), "1" | "true" | "True"));
            } else {
                w.str(tag, f);
            }
        }
    }
    for (id, desc) in &d.ineligibility_reasons {
        w.message(58, |w| {
            w.str(1, id).str(2, desc);
        });
    }
}

/// Read IB's `ContractDetails` protobuf message into `d` (contract left as is).
pub fn read_details_proto(b: &[u8], d: &mut ContractDetails) -> Result<(), ProtoProblem> {
    let mut r = Reader::new(b);
    while let Some((f, val)) = r.next_field()? {
        match f {
            1 => d.market_name = val.gstr(f)?.to_owned(),
            2 => d.min_tick = val.gprice_str(f)?,
            3 => d.order_types = val.gstr(f)?.to_owned(),
            4 => d.valid_exchanges = val.gstr(f)?.to_owned(),
            5 => d.price_magnifier = val.gi32(f)?,
            6 => d.under_con_id = val.gi32(f)?,
            7 => d.long_name = val.gstr(f)?.to_owned(),
            8 => d.contract_month = val.gstr(f)?.to_owned(),
            9 => d.industry = val.gstr(f)?.to_owned(),
            10 => d.category = val.gstr(f)?.to_owned(),
            11 => d.subcategory = val.gstr(f)?.to_owned(),
            12 => d.time_zone_id = val.gstr(f)?.to_owned(),
            13 => d.trading_hours = val.gstr(f)?.to_owned(),
            14 => d.liquid_hours = val.gstr(f)?.to_owned(),
            15 => d.ev_rule = val.gstr(f)?.to_owned(),
            16 => d.ev_multiplier = val.gf64(f)?,
            17 => {
                let (mut k, mut x) = (String::new(), String::new());
                let mut r2 = Reader::new(val.gbytes(f)?);
                while let Some((g, y)) = r2.next_field()? {
                    match g {
                        1 => k = y.gstr(g)?.to_owned(),
                        2 => x = y.gstr(g)?.to_owned(),
                        _ => {}
                    }
                }
                d.sec_id_list.push((k, x));
            }
            18 => d.agg_group = val.gi32(f)?,
            19 => d.under_symbol = val.gstr(f)?.to_owned(),
            20 => d.under_sec_type = val.gstr(f)?.to_owned(),
            21 => d.market_rule_ids = val.gstr(f)?.to_owned(),
            22 => d.real_expiration_date = val.gstr(f)?.to_owned(),
            23 => d.stock_type = val.gstr(f)?.to_owned(),
            24 => d.min_size = val.gsize(f)?,
            25 => d.size_increment = val.gsize(f)?,
            26 => d.suggested_size_increment = val.gsize(f)?,
            27..=43 => {
                let i = (f - 27) as usize;
                if d.fund_fields.len() < FUND_FIELD_COUNT {
                    d.fund_fields.resize(FUND_FIELD_COUNT, String::new());
                }
                d.fund_fields[i] = if FUND_BOOL_FIELDS.contains(&i) {
                    if val.gbool(f)? { "1" } else { "0" }.to_owned()
                } else {
                    val.gstr(f)?.to_owned()
                };
            }
            58 => {
                let (mut id, mut desc) = (String::new(), String::new());
                let mut r2 = Reader::new(val.gbytes(f)?);
                while let Some((g, y)) = r2.next_field()? {
                    match g {
                        1 => id = y.gstr(g)?.to_owned(),
                        2 => desc = y.gstr(g)?.to_owned(),
                        _ => {}
                    }
                }
                d.ineligibility_reasons.push((id, desc));
            }
            _ => {}
        }
    }
    Ok(())
}
