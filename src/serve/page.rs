//! The live web page and the OpenAPI document, embedded in the binary.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");
const OPENAPI: &str = include_str!("openapi.json");

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
