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

use super::AppState;
use super::control_client::ControlError;
use super::error::ApiError;
use super::messages::now_ns;
use super::params::{self, Params};

/// Security types the lookup accepts.
pub const SEC_TYPES: [&str; 10] = [
    "STK", "FUT", "OPT", "CASH", "IND", "CFD", "BOND", "FOP", "CRYPTO", "CONTFUT",
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

async fn cached_lookup(st: &AppState, key: &str, fields: Value) -> Result<Json<Value>, ApiError> {
    let cached = st.contracts.get(key).await;
    if let Some((c, true)) = &cached {
        return Ok(answer(c, "cache", false));
    }
    match st.control.request("lookup", fields).await {
        Ok(reply) => {
            let result = clean_reply(reply);
            match st.contracts.put(key, &result).await {
                Ok(c) => Ok(answer(&c, "engine", false)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot cache a contract lookup");
                    let c = Cached {
                        result,
                        fetched_at: now_ns() / 1000,
                    };
                    Ok(answer(&c, "engine", false))
                }
            }
        }
        Err(ControlError::Refused {
            code,
            message,
            ib_code,
        }) => {
            let status = if code == "not_found" || ib_code == Some(200) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let mut e = ApiError::new(status, "lookup_failed", format!("{code}: {message}"));
            e.ib_code = ib_code;
            Err(e)
        }
        Err(e) => match cached {
            Some((c, _)) => Ok(answer(&c, "cache", true)),
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

fn name_part(p: &Params, key: &str, upper: bool) -> Result<Option<String>, ApiError> {
    let Some(v) = p.text(key, 32)? else {
        return Ok(None);
    };
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '/'))
    {
        return Err(ApiError::bad_parameter(format!(
            "`{key}` may hold letters, digits and . - _ / space only, got `{}`",
            params::truncate(v)
        )));
    }
    Ok(Some(if upper {
        v.to_ascii_uppercase()
    } else {
        v.to_owned()
    }))
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
    let symbol = name_part(&p, "symbol", true)?
        .ok_or_else(|| ApiError::bad_parameter("`symbol` is required"))?;
    let sec_type = name_part(&p, "sec_type", true)?;
    if let Some(t) = &sec_type
        && !SEC_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::bad_parameter(format!(
            "`sec_type` must be one of {}",
            SEC_TYPES.join(", ")
        )));
    }
    let exchange = name_part(&p, "exchange", true)?;
    let currency = name_part(&p, "currency", true)?;
    let key = format!(
        "lookup_{}_{}_{}_{}",
        file_part(&symbol),
        file_part(sec_type.as_deref().unwrap_or("ANY")),
        file_part(exchange.as_deref().unwrap_or("ANY")),
        file_part(currency.as_deref().unwrap_or("ANY")),
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
    cached_lookup(
        &st,
        &format!("contract_{con_id}"),
        json!({"con_id": con_id}),
    )
    .await
}
