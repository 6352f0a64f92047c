//! Opening a connection: the URL read into an [`Endpoint`], TCP with the receive buffer
//! asked for, the WebSocket handshake, or an HTTP probe for SSE.

use super::*;

/// Where to connect: the host:port for TCP, the `ws://` URL of the handshake, and for SSE
/// the path prefix and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// `ws://host:port/v3/ws[?token=...]`.
    pub url: String,
    /// The path before `/v3/...` (empty unless the server is behind a path prefix).
    pub prefix: String,
    /// `token=<percent-encoded token>`, when there is one.
    pub token_query: Option<String>,
}

impl Endpoint {
    /// The request target of an HTTP request to `path` (which may have a query), with the
    /// token.
    pub(super) fn target(&self, path: &str) -> String {
        let mut t = format!("{}{path}", self.prefix);
        if let Some(q) = &self.token_query {
            t.push(if path.contains('?') { '&' } else { '?' });
            t.push_str(q);
        }
        t
    }
}

/// Reads `http://`, `ws://` (path empty or `/v3/ws`) and adds the token.
pub fn endpoint(url: &str, token: Option<&str>) -> Result<Endpoint, ConnectError> {
    let bad = |why: &str| ConnectError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            bad("only ws:// and http:// are supported (put TLS in front with a proxy)")
        })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let path = match path.trim_end_matches('/') {
        "" => "/v3/ws",
        p if p.ends_with("/v3/ws") => p,
        _ => return Err(bad("the path must be empty or end in /v3/ws")),
    };
    let prefix = path.trim_end_matches("/v3/ws").to_owned();
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut url = format!("ws://{authority}{path}");
    let token_query = token.map(|t| {
        let mut q = String::from("token=");
        percent_encode(t, &mut q);
        q
    });
    if let Some(q) = &token_query {
        url.push('?');
        url.push_str(q);
    }
    Ok(Endpoint {
        authority,
        url,
        prefix,
        token_query,
    })
}

pub(super) async fn tcp_connect(
    authority: &str,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let Some(size) = recv_buffer else {
        return TcpStream::connect(authority).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // Before connecting, so the window offered in the handshake is already small.
        sock.set_recv_buffer_size(size)?;
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
}

/// An open connection.
pub(super) enum Conn {
    // Boxed: the enum is moved through the connect future; the WebSocket is large.
    Ws(Box<Ws>),
    /// The server answers HTTP; streams are opened per subscription.
    Sse,
}

pub(super) async fn connect(
    ep: Endpoint,
    transport: Transport,
    timeout: Duration,
    recv_buffer: Option<u32>,
) -> Result<Conn, ConnectError> {
    let attempt = async {
        match transport {
            Transport::WebSocket => connect_ws(&ep, recv_buffer)
                .await
                .map(|w| Conn::Ws(Box::new(w))),
            Transport::Sse => probe_sse(&ep, recv_buffer).await.map(|()| Conn::Sse),
            Transport::Auto => match connect_ws(&ep, recv_buffer).await {
                Ok(ws) => Ok(Conn::Ws(Box::new(ws))),
                Err(e) if e.means_no_websocket() => {
                    tracing::info!(error = %e, "no WebSocket at the server: falling back to SSE");
                    probe_sse(&ep, recv_buffer).await.map(|()| Conn::Sse)
                }
                Err(e) => Err(e),
            },
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

/// An HTTP/1.1 connection for one request; the connection's task ends with this guard.
pub(super) struct Http {
    pub(super) send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    pub(super) _conn: AbortOnDrop,
}

/// Aborts a task when dropped: a dropped SSE stream closes its socket at once.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn http_connect(
    ep: &Endpoint,
    recv_buffer: Option<u32>,
) -> Result<Http, ConnectError> {
    let tcp = tcp_connect(&ep.authority, recv_buffer).await?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "SSE connection ended");
        }
    });
    Ok(Http {
        send,
        _conn: AbortOnDrop(task),
    })
}

pub(super) async fn http_get(
    http: &mut Http,
    ep: &Endpoint,
    path: &str,
    last_event_id: Option<&str>,
) -> Result<hyper::Response<Incoming>, ConnectError> {
    let target = ep.target(path);
    let mut req = hyper::Request::get(target.as_str())
        .header(hyper::header::HOST, ep.authority.as_str())
        .header(hyper::header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let req = req.body(Empty::new()).map_err(|e| ConnectError::BadUrl {
        url: target.clone(),
        why: e.to_string(),
    })?;
    Ok(http.send.send_request(req).await?)
}

/// SSE "connects" by asking the server's `/ready`: any HTTP answer shows the server is there
/// (an engine that is not ready yet is the streams' business, as over WebSocket).
pub(super) async fn probe_sse(ep: &Endpoint, recv_buffer: Option<u32>) -> Result<(), ConnectError> {
    let mut http = http_connect(ep, recv_buffer).await?;
    let resp = http_get(&mut http, ep, "/ready", None).await?;
    let status = resp.status().as_u16();
    if matches!(status, 401 | 429) {
        let body = read_body(resp.into_body(), 512).await;
        return Err(ConnectError::Http {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(())
}

/// At most `max` bytes of a (short, error) body.
pub(super) async fn read_body(mut body: Incoming, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d[..d.len().min(max - out.len())]);
                }
            }
            _ => break,
        }
    }
    out
}

pub(super) async fn connect_ws(
    ep: &Endpoint,
    recv_buffer: Option<u32>,
) -> Result<Ws, ConnectError> {
    let tcp = tcp_connect(&ep.authority, recv_buffer)
        .await
        .map_err(|e| ConnectError::WebSocket(Box::new(tungstenite::Error::Io(e))))?;
    // One small frame per tick: no Nagle delay on our requests either.
    let _ = tcp.set_nodelay(true);
    match tokio_tungstenite::client_async(ep.url.as_str(), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned())
                .unwrap_or_default();
            Err(ConnectError::Http {
                status: resp.status().as_u16(),
                body,
            })
        }
        Err(e) => Err(ConnectError::WebSocket(Box::new(e))),
    }
}
