//! Caps per remote address: concurrent SSE streams and WebSocket connections.
//!
//! The address is the TCP peer's ([`axum::extract::ConnectInfo`], set by [`super::run`]);
//! behind a reverse proxy every client shares the proxy's address, so the caps are generous
//! by default and configurable (`0` = no cap). Requests without a peer address (tests that
//! call [`super::app`] directly, other embedders) are not counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::error::ApiError;

/// Per-address caps; `0` means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerIpLimits {
    /// Concurrent SSE streams from one address.
    pub sse_streams: usize,
    /// Concurrent WebSocket connections from one address.
    pub ws_connections: usize,
}

impl Default for PerIpLimits {
    fn default() -> Self {
        PerIpLimits {
            sse_streams: 512,
            ws_connections: 64,
        }
    }
}

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counted {
    /// SSE streams.
    Sse,
    /// WebSocket connections.
    Ws,
}

/// The remote address of a request, when the server knows it.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Live counts per (address, what).
#[derive(Debug, Default)]
pub struct IpCounts {
    counts: Mutex<HashMap<(IpAddr, Counted), usize>>,
}

/// One counted stream or connection; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    counts: Arc<IpCounts>,
    key: (IpAddr, Counted),
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.counts.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl IpCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, Counted), usize>> {
        // The map stays consistent under a panic elsewhere (each update is one statement).
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot for `ip`, or the error when it already has `max` (`max == 0`: no cap;
    /// no address: not counted).
    pub fn reserve(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        what: Counted,
        max: usize,
    ) -> Result<Option<IpSlot>, ApiError> {
        let Some(ip) = ip else { return Ok(None) };
        if max == 0 {
            return Ok(None);
        }
        let mut m = self.lock();
        let n = m.entry((ip, what)).or_insert(0);
        if *n >= max {
            let kind = match what {
                Counted::Sse => "SSE streams",
                Counted::Ws => "WebSocket connections",
            };
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_from_address",
                format!("{ip} already has {max} {kind} open (the limit per address)"),
            ));
        }
        *n += 1;
        Ok(Some(IpSlot {
            counts: Arc::clone(self),
            key: (ip, what),
        }))
    }

    /// Open slots of `ip`.
    pub fn count(&self, ip: IpAddr, what: Counted) -> usize {
        self.lock().get(&(ip, what)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_come_back() {
        let c = Arc::new(IpCounts::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = c.reserve(Some(a), Counted::Sse, 2).unwrap();
        let _s2 = c.reserve(Some(a), Counted::Sse, 2).unwrap();
        let e = c.reserve(Some(a), Counted::Sse, 2).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "too_many_from_address"));
        // Other addresses and the other kind are counted apart; no address, no cap.
        assert!(c.reserve(Some(b), Counted::Sse, 2).unwrap().is_some());
        assert!(c.reserve(Some(a), Counted::Ws, 1).unwrap().is_some());
        assert!(c.reserve(None, Counted::Sse, 1).unwrap().is_none());
        assert!(c.reserve(Some(a), Counted::Sse, 0).unwrap().is_none());
        drop(s1);
        assert_eq!(c.count(a, Counted::Sse), 1);
        assert!(c.reserve(Some(a), Counted::Sse, 2).unwrap().is_some());
    }
}
