//! The live web page, the chart page and the OpenAPI document, embedded in the binary.
//!
//! The chart page draws with TradingView's lightweight-charts, embedded when the build found
//! it (`scripts/install-web.sh` installs it from `web/package-lock.json`; see `build.rs`).
//! A binary built without it (a machine without Node) serves `/chart` as the live page with
//! a note saying so, and `/page/lightweight-charts.js` as a 404.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");
const OPENAPI: &str = include_str!("openapi.json");
const CHART: &str = include_str!("page/chart.html");
const CHART_SCRIPT: &str = include_str!("page/chart.js");
const CHART_STYLE: &str = include_str!("page/chart.css");

/// The charting library, when the build found it.
#[cfg(chart_lib)]
pub const CHART_LIB: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js"
)));
/// The charting library, when the build found it.
#[cfg(not(chart_lib))]
pub const CHART_LIB: Option<&[u8]> = None;

/// What `/chart` says in a binary built without the library.
const NO_CHART_NOTE: &str = "<p class=\"note\" id=\"chart-note\" style=\"background:#4e3b00;padding:.5rem 1rem;border-radius:6px\">\
The chart (candles, volume, delta) needs its charting library, which this binary was built \
without (no Node.js on the build machine). Run <code>./scripts/install-web.sh</code> and \
rebuild to get it. Meanwhile this is the live tick page.</p>";

fn with_type(body: &'static str, ty: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    r
}

/// `GET /`.
pub async fn index() -> Response {
    with_type(INDEX, "text/html; charset=utf-8")
}

/// `GET /page/app.js`.
pub async fn script() -> Response {
    with_type(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /page/style.css`.
pub async fn style() -> Response {
    with_type(STYLE, "text/css; charset=utf-8")
}

/// `GET /chart`: the chart page, or the live page with a note when the library is missing.
pub async fn chart() -> Response {
    if CHART_LIB.is_some() {
        return with_type(CHART, "text/html; charset=utf-8");
    }
    let mut r = INDEX
        .replacen("<main>", &format!("<main>{NO_CHART_NOTE}"), 1)
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `GET /page/chart.js`.
pub async fn chart_script() -> Response {
    with_type(CHART_SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /page/chart.css`.
pub async fn chart_style() -> Response {
    with_type(CHART_STYLE, "text/css; charset=utf-8")
}

/// `GET /page/lightweight-charts.js`: the embedded library (Apache-2.0, TradingView).
pub async fn chart_lib() -> Result<Response, super::ApiError> {
    let lib = CHART_LIB.ok_or_else(|| {
        super::ApiError::not_found(
            "this binary was built without the chart library: run scripts/install-web.sh and rebuild",
        )
    })?;
    let mut r = lib.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    Ok(r)
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    with_type(OPENAPI, "application/json")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_is_json_and_lists_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/health",
            "/ready",
            "/metrics",
            "/background/status",
            "/v3/streams",
            "/v3/streams/{conId}",
            "/v3/stream/{conId}",
            "/v3/ws",
            "/v3/contracts/lookup",
            "/v3/contracts/{conId}",
            "/v3/history/{conId}",
            "/v3/bars/{conId}",
            "/v3/info",
            "/v3/buffer/{conId}/query",
            "/v3/buffer/{conId}/info",
            "/v3/storage/stats",
            "/lookup/{ticker}",
            "/lookup/{ticker}/{sec_type}",
            "/contracts/{contract_id}",
            "/cache/status",
        ] {
            assert!(paths.contains_key(p), "{p} missing from openapi.json");
        }
    }
}
