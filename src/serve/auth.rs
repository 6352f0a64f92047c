//! Bearer-token check: with a token configured, every API request needs
//! `Authorization: Bearer <token>` or `?token=<token>` (EventSource cannot set headers).
//! The page, its assets, `/openapi.json` and `/health`/`/ready` stay open so that a browser can load the
//! page and a load balancer can probe.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;

/// Paths served without a token.
pub const OPEN_PATHS: [&str; 10] = [
    "/",
    "/page/app.js",
    "/page/style.css",
    "/chart",
    "/page/chart.js",
    "/page/chart.css",
    "/page/lightweight-charts.js",
    "/openapi.json",
    "/health",
    "/ready",
];

/// Compares without an early exit, so timing does not reveal a prefix.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION)
        && let Ok(s) = v.to_str()
        && let Some(t) = s.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    let q = req.uri().query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The middleware.
pub async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = st.cfg.token.as_deref() else {
        return next.run(req).await;
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    match presented(&req) {
        Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => next.run(req).await,
        got => {
            let msg = if got.is_some() {
                "the token is not valid"
            } else {
                "a token is required: `Authorization: Bearer <token>` or `?token=`"
            };
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!same_secret(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
