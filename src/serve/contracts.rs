//! `/v3/contracts/lookup` and `/v3/contracts/{conId}`: contract details through the engine's
//! control socket (`lookup`), cached on disk with an expiry.
//!
//! A fresh cache entry answers without asking the engine; an expired one is refreshed, and
//! is served marked `stale` when the engine cannot be reached (better an old answer than
//! none for data that rarely changes).

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::control_client::ControlError;
use super::error::ApiError;
use super::messages::now_ns;
use super::params::{self, Params};
use super::state::AppState;

/// Security types the lookup accepts (IB's; FUND and CMDTY are the original's too).
pub const SEC_TYPES: [&str; 12] = [
    "STK", "FUT", "OPT", "CASH", "IND", "CFD", "BOND", "FOP", "CRYPTO", "CONTFUT", "FUND", "CMDTY",
];

/// The on-disk cache of lookup answers.
#[derive(Debug, Clone)]
pub struct ContractCache {
    dir: PathBuf,
    ttl: Duration,
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The engine's answer (without `id` and `ok`).
    pub result: Value,
    /// When it was fetched, µs since the epoch.
    pub fetched_at: i64,
}

impl ContractCache {
    /// A cache in `dir` whose entries stay fresh for `ttl`.
    pub fn new(dir: PathBuf, ttl: Duration) -> ContractCache {
        ContractCache { dir, ttl }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The cached answer for `key` and whether it is still fresh.
    pub async fn get(&self, key: &str) -> Option<(Cached, bool)> {
        let bytes = tokio::fs::read(self.path(key)).await.ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let fetched_at = v.get("fetched_at")?.as_i64()?;
        let result = v.get("result")?.clone();
        let age_us = now_ns() / 1000 - fetched_at;
        let fresh = age_us >= 0 && (age_us as u128) < self.ttl.as_micros();
        Some((Cached { result, fetched_at }, fresh))
    }

    /// The cache's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// How long an entry stays fresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every cached answer on disk, by key (a missing directory is an empty cache).
    pub async fn entries(&self) -> std::io::Result<Vec<CacheEntry>> {
        let mut rd = match tokio::fs::read_dir(&self.dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        while let Some(ent) = rd.next_entry().await? {
            let name = ent.file_name().to_string_lossy().into_owned();
            // Temporary files of a write in progress start with a dot.
            let Some(key) = name.strip_suffix(".json").filter(|k| !k.starts_with('.')) else {
                continue;
            };
            let size = ent.metadata().await.map_or(0, |m| m.len());
            let (fetched_at, fresh) = match self.get(key).await {
                Some((c, fresh)) => (Some(c.fetched_at), fresh),
                None => (None, false),
            };
            out.push(CacheEntry {
                key: key.to_owned(),
                size,
                fetched_at,
                fresh,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Stores an answer (temporary file, then rename: readers never see half a file).
    pub async fn put(&self, key: &str, result: &Value) -> std::io::Result<Cached> {
        let fetched_at = now_ns() / 1000;
        let body = serde_json::to_vec(&json!({"fetched_at": fetched_at, "result": result}))
            .map_err(std::io::Error::other)?;
        // 0600 in a 0700 directory (private_fs), written aside then renamed.
        let path = self.path(key);
        tokio::task::spawn_blocking(move || {
            crate::storage::private_fs::write_private_atomic(&path, &body, false)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Cached {
            result: result.clone(),
            fetched_at,
        })
    }
}

/// One answer in the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its key (`lookup_AAPL_STK_ANY_ANY`, `contract_265598`).
    pub key: String,
    /// File size in bytes.
    pub size: u64,
    /// When it was fetched, µs since the epoch; `None` when the file is unreadable.
    pub fetched_at: Option<i64>,
    /// Still within the time to live.
    pub fresh: bool,
}

fn clean_reply(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("id");
        m.remove("ok");
    }
    v
}

fn answer(c: &Cached, source: &str, stale: bool) -> Json<Value> {
    Json(json!({
        "source": source,
        "stale": stale,
        "fetched_at": c.fetched_at,
        "result": c.result,
    }))
}

/// A lookup answer and where it came from.
#[derive(Debug, Clone)]
pub struct LookupAnswer {
    /// The answer (`result.contracts` is the engine's list).
    pub cached: Cached,
    /// `engine` (asked now) or `cache`.
    pub source: &'static str,
    /// An expired cache entry served because the engine could not be asked.
    pub stale: bool,
}

/// Whether the engine's refusal means "IB knows no such contract" (IB error 200). The
/// engine says so with `not_found` or with IB's code, `ib_code` 200 (the message is for
/// people and is not read).
pub fn no_such_contract(code: &str, _message: &str, ib_code: Option<i64>) -> bool {
    code == "not_found" || ib_code == Some(200)
}

/// A lookup through the engine's control socket (`lookup` with `fields`), answered from the
/// disk cache under `key` while fresh. The one path of every contract lookup of the server.
pub async fn lookup_via_engine(
    st: &AppState,
    key: &str,
    fields: Value,
) -> Result<LookupAnswer, ApiError> {
    let cached = st.contracts.get(key).await;
    if let Some((c, true)) = &cached {
        return Ok(LookupAnswer {
            cached: c.clone(),
            source: "cache",
            stale: false,
        });
    }
    match st.control.request("lookup", fields).await {
        Ok(reply) => {
            let result = clean_reply(reply);
            let cached = match st.contracts.put(key, &result).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot cache a contract lookup");
                    Cached {
                        result,
                        fetched_at: now_ns() / 1000,
                    }
                }
            };
            Ok(LookupAnswer {
                cached,
                source: "engine",
                stale: false,
            })
        }
        Err(ControlError::Refused {
            code,
            message,
            ib_code,
        }) => {
            let status = if no_such_contract(&code, &message, ib_code) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let mut e = ApiError::new(status, "lookup_failed", format!("{code}: {message}"));
            e.ib_code = ib_code;
            Err(e)
        }
        Err(e) => match cached {
            Some((c, _)) => Ok(LookupAnswer {
                cached: c,
                source: "cache",
                stale: true,
            }),
            None => {
                tracing::warn!(error = %e, "contract lookup failed");
                Err(ApiError::unavailable(
                    "engine_unavailable",
                    super::subs::engine_unreachable(&e),
                ))
            }
        },
    }
}

async fn cached_lookup(st: &AppState, key: &str, fields: Value) -> Result<Json<Value>, ApiError> {
    let a = lookup_via_engine(st, key, fields).await?;
    Ok(answer(&a.cached, a.source, a.stale))
}

/// The cache key and the engine's `lookup` fields of a lookup by description (names
/// already checked and upper-cased).
pub fn symbol_lookup(
    symbol: &str,
    sec_type: Option<&str>,
    exchange: Option<&str>,
    currency: Option<&str>,
) -> (String, Value) {
    let key = format!(
        "lookup_{}_{}_{}_{}",
        file_part(symbol),
        file_part(sec_type.unwrap_or("ANY")),
        file_part(exchange.unwrap_or("ANY")),
        file_part(currency.unwrap_or("ANY")),
    );
    let mut fields = json!({"symbol": symbol});
    for (k, v) in [
        ("sec_type", sec_type),
        ("exchange", exchange),
        ("currency", currency),
    ] {
        if let Some(v) = v {
            fields[k] = json!(v);
        }
    }
    (key, fields)
}

/// The cache key and the engine's `lookup` fields of a lookup by conId.
pub fn con_id_lookup(con_id: u32) -> (String, Value) {
    (format!("contract_{con_id}"), json!({"con_id": con_id}))
}

/// Checks a symbol (or other name part) from a client: letters, digits and `. - _ / space`,
/// 1 to 32 characters; upper-cased.
pub fn check_name(key: &str, v: &str) -> Result<String, ApiError> {
    if v.is_empty()
        || v.len() > 32
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '/'))
    {
        return Err(ApiError::bad_parameter(format!(
            "`{key}` must be 1 to 32 of letters, digits and . - _ / space, got `{}`",
            params::truncate(v)
        )));
    }
    Ok(v.to_ascii_uppercase())
}

fn name_part(p: &Params, key: &str) -> Result<Option<String>, ApiError> {
    match p.text(key, 32)? {
        Some(v) => check_name(key, v).map(Some),
        None => Ok(None),
    }
}

fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `GET /v3/contracts/lookup?symbol=AAPL&sec_type=STK&exchange=SMART&currency=USD`.
pub async fn lookup(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(
        q.as_deref(),
        &["symbol", "sec_type", "exchange", "currency"],
    )?;
    let symbol =
        name_part(&p, "symbol")?.ok_or_else(|| ApiError::bad_parameter("`symbol` is required"))?;
    let sec_type = name_part(&p, "sec_type")?;
    if let Some(t) = &sec_type
        && !SEC_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::bad_parameter(format!(
            "`sec_type` must be one of {}",
            SEC_TYPES.join(", ")
        )));
    }
    let exchange = name_part(&p, "exchange")?;
    let currency = name_part(&p, "currency")?;
    let (key, fields) = symbol_lookup(
        &symbol,
        sec_type.as_deref(),
        exchange.as_deref(),
        currency.as_deref(),
    );
    cached_lookup(&st, &key, fields).await
}

/// `GET /v3/contracts/{conId}`.
pub async fn by_id(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let con_id = params::con_id(&raw)?;
    Params::parse(q.as_deref(), &[])?;
    let (key, fields) = con_id_lookup(con_id);
    cached_lookup(&st, &key, fields).await
}
