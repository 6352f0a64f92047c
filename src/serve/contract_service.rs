//! The original `ib-contract` service's routes: `/lookup/{ticker}`,
//! `/lookup/{ticker}/{sec_type}`, `/contracts/{contract_id}` and `/cache/status`.
//!
//! They are served on the web port and, when `IB_STREAM_CONTRACT_PORT` is set, on a port of
//! their own as the original's contract service was (8000/8100/8200). Every lookup takes the
//! one path of [`super::contracts::lookup_via_engine`]: the engine's control socket
//! (`lookup`, reqContractDetails at IB) behind the server's disk cache. Only the response
//! shapes are the original's.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::contracts::{
    LookupAnswer, SEC_TYPES, check_name, con_id_lookup, lookup_via_engine, symbol_lookup,
};
use super::error::ApiError;
use super::listen::ServeError;
use super::messages::now_ns;
use super::params::{self, Params};
use super::state::AppState;
use crate::config::Settings;

/// The security types `/lookup/{ticker}` searches, one engine lookup each (the original's).
pub const SEARCHED_TYPES: [&str; 9] = [
    "STK", "FUT", "OPT", "CASH", "IND", "CFD", "BOND", "FUND", "CMDTY",
];

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/lookup/{ticker}", get(lookup_all))
        .route("/lookup/{ticker}/{sec_type}", get(lookup_typed))
        .route("/contracts/{contract_id}", get(contract))
        .route("/cache/status", get(cache_status))
}

/// The contract port's whole application: these routes, the token check and the error
/// shape of the web API.
pub fn app(state: AppState) -> Router {
    routes()
        .fallback(|| async {
            ApiError::not_found(
                "no such endpoint on the contract port (/lookup, /contracts, /cache/status)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_token,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `stop` turns true, behind the same accept loop as the
/// web port (header timeout, connection cap), with its own connection table and counters.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: super::listen::ConnLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let stats = std::sync::Arc::new(super::listen::ConnStats::default());
    super::listen::serve(listener, app(state), limits, stats, shutdown).await;
    Ok(())
}

/// The contract-port server, when one runs beside the web server.
pub type Running = Option<tokio::task::JoinHandle<std::io::Result<()>>>;

/// Binds the contract port of `settings` (`IB_STREAM_CONTRACT_PORT`) on `host` and serves
/// it until the returned sender says `true`; nothing when no port is configured.
pub async fn start(
    settings: &Settings,
    host: &str,
    state: AppState,
) -> Result<(tokio::sync::watch::Sender<bool>, Running), ServeError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let Some(port) = settings.contract_port else {
        return Ok((stop, None));
    };
    let addr = super::listen::bind_addr(host, port, state.cfg.token.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving the contract routes");
    let limits = super::listen::ConnLimits::of(settings);
    Ok((
        stop,
        Some(tokio::spawn(serve(listener, state, limits, stopped))),
    ))
}

/// Waits for the contract-port server [`start`] began.
pub async fn finish(running: Running) -> Result<(), ServeError> {
    match running {
        None => Ok(()),
        Some(h) => match h.await {
            Ok(r) => r.map_err(ServeError::Serve),
            Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
        },
    }
}

fn iso_now() -> String {
    jiff::Timestamp::from_nanosecond(i128::from(now_ns()))
        .map_or_else(|_| String::new(), |t| t.to_string())
}

fn contracts_of(a: &LookupAnswer) -> Vec<Value> {
    a.cached.result["contracts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// One security type's lookup: its contracts, or none when IB knows none (404).
async fn search(
    st: &AppState,
    ticker: &str,
    sec_type: &str,
) -> Result<Option<LookupAnswer>, ApiError> {
    let (key, fields) = symbol_lookup(ticker, Some(sec_type), None, None);
    match lookup_via_engine(st, &key, fields).await {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

/// The original's lookup answer: contracts grouped by security type.
async fn lookup_answer(
    st: &AppState,
    ticker: &str,
    types: &[&str],
) -> Result<Json<Value>, ApiError> {
    let ticker = check_name("ticker", ticker)?;
    let mut seen = std::collections::HashSet::new();
    let mut by_type: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let (mut cached, mut stale) = (true, false);
    for t in types {
        let Some(a) = search(st, &ticker, t).await? else {
            continue;
        };
        cached &= a.source == "cache";
        stale |= a.stale;
        for c in contracts_of(&a) {
            // The same contract answered for two types (a lenient gateway) is listed once.
            if let Some(id) = c["con_id"].as_i64()
                && !seen.insert(id)
            {
                continue;
            }
            let ty = c["sec_type"].as_str().unwrap_or(t).to_owned();
            by_type.entry(ty).or_default().push(c);
        }
    }
    let total: usize = by_type.values().map(Vec::len).sum();
    let summary: serde_json::Map<String, Value> = by_type
        .iter()
        .map(|(t, v)| (t.clone(), json!(v.len())))
        .collect();
    let grouped: serde_json::Map<String, Value> = by_type
        .into_iter()
        .map(|(t, v)| (t, json!({"count": v.len(), "contracts": v})))
        .collect();
    Ok(Json(json!({
        "ticker": ticker,
        "timestamp": iso_now(),
        "security_types_searched": types,
        "total_contracts": total,
        "contracts_by_type": grouped,
        "summary": summary,
        "cached": cached && total > 0,
        "stale": stale,
    })))
}

/// `GET /lookup/{ticker}`: every security type the original searched.
pub async fn lookup_all(
    State(st): State<AppState>,
    Path(ticker): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    lookup_answer(&st, &ticker, &SEARCHED_TYPES).await
}

/// `GET /lookup/{ticker}/{sec_type}`.
pub async fn lookup_typed(
    State(st): State<AppState>,
    Path((ticker, sec_type)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let t = sec_type.to_ascii_uppercase();
    let Some(t) = SEC_TYPES.iter().find(|s| **s == t) else {
        return Err(ApiError::bad_parameter(format!(
            "invalid security type `{}`; valid types: {}",
            params::truncate(&sec_type),
            SEC_TYPES.join(", ")
        )));
    };
    lookup_answer(&st, &ticker, &[t]).await
}

/// `GET /contracts/{contract_id}`: `{status, timestamp, contract_id, ...details}`.
pub async fn contract(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let con_id = params::con_id(&raw)?;
    Params::parse(q.as_deref(), &[])?;
    let (key, fields) = con_id_lookup(con_id);
    let a = lookup_via_engine(&st, &key, fields).await?;
    let Some(Value::Object(details)) = contracts_of(&a).into_iter().next() else {
        return Err(ApiError::not_found(format!(
            "IB knows no contract {con_id}"
        )));
    };
    let mut out = serde_json::Map::new();
    out.insert("status".into(), json!("success"));
    out.insert("timestamp".into(), json!(iso_now()));
    out.insert("contract_id".into(), json!(con_id));
    out.insert("source".into(), json!(a.source));
    out.insert("stale".into(), json!(a.stale));
    out.extend(details);
    Ok(Json(Value::Object(out)))
}

/// `GET /cache/status`: the lookup cache as it is on disk, and whether the engine can answer
/// what the cache does not hold.
pub async fn cache_status(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let entries = st.contracts.entries().await.map_err(|e| {
        ApiError::unavailable(
            "cache_unavailable",
            format!(
                "cannot read the contract cache {}: {e}",
                st.contracts.dir().display()
            ),
        )
    })?;
    let now_us = now_ns() / 1000;
    let files: serde_json::Map<String, Value> = entries
        .iter()
        .map(|e| {
            let at = e.fetched_at.and_then(|us| {
                jiff::Timestamp::from_microsecond(us)
                    .ok()
                    .map(|t| t.to_string())
            });
            (
                format!("{}.json", e.key),
                json!({
                    "cached_at": at,
                    "age_seconds": e.fetched_at.map(|us| (now_us - us).max(0) / 1_000_000),
                    "valid": e.fresh,
                    "file_size": e.size,
                }),
            )
        })
        .collect();
    // The engine answers every miss (reqContractDetails); say whether it can now.
    let engine = match st.control.request("status", json!({})).await {
        Ok(s) => json!({
            "available": true,
            "conn_state": s.get("conn_state").cloned().unwrap_or(Value::Null),
            "contract_store": s.get("contract_store").cloned().unwrap_or(Value::Null),
        }),
        Err(e) => json!({
            "available": false,
            "reason": super::subs::engine_unreachable(&e),
        }),
    };
    Ok(Json(json!({
        "status": "success",
        "timestamp": iso_now(),
        "cache_directory": st.contracts.dir().display().to_string(),
        "cache_duration_seconds": st.contracts.ttl().as_secs(),
        "memory_cache": {},
        "file_cache": files,
        "total_memory_entries": 0,
        "total_file_entries": entries.len(),
        "valid_file_entries": entries.iter().filter(|e| e.fresh).count(),
        "engine": engine,
    })))
}
