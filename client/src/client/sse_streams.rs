//! SSE: one HTTP stream per subscription, each read by a small task of its own that reports
//! to the connection's task through one channel ([`SseConn`]).

use super::connect::{AbortOnDrop, http_connect, http_get, read_body};
use super::*;

/// What an SSE stream's task reports, tagged with its request id.
#[derive(Debug)]
pub(super) enum StreamMsg {
    /// 200: `X-Stream-Id`.
    Open(Option<String>),
    /// An HTTP error and its body.
    Refused { status: u16, body: Vec<u8> },
    /// Events (a read's worth).
    Items(Vec<SseItem>),
    /// The stream ended.
    End(String),
}

/// The SSE streams of one connection; dropping it drops them all.
pub(super) struct SseConn {
    pub(super) tx: mpsc::Sender<(u64, StreamMsg)>,
    pub(super) rx: mpsc::Receiver<(u64, StreamMsg)>,
    pub(super) tasks: HashMap<u64, AbortOnDrop>,
}

impl SseConn {
    pub(super) fn new() -> SseConn {
        let (tx, rx) = mpsc::channel(SSE_QUEUE);
        SseConn {
            tx,
            rx,
            tasks: HashMap::new(),
        }
    }

    pub(super) fn open(&mut self, ep: &Endpoint, req: StreamRequest, cfg: &ClientConfig) {
        let id = req.id;
        let task = tokio::spawn(sse_stream(
            ep.clone(),
            req,
            cfg.connect_timeout,
            cfg.recv_buffer,
            self.tx.clone(),
        ));
        self.tasks.insert(id, AbortOnDrop(task));
    }
}

/// One subscription's SSE stream: the request, then its events until it ends.
pub(super) async fn sse_stream(
    ep: Endpoint,
    req: StreamRequest,
    timeout: Duration,
    recv_buffer: Option<u32>,
    tx: mpsc::Sender<(u64, StreamMsg)>,
) {
    let id = req.id;
    let end = |why: String| (id, StreamMsg::End(why));
    let mut http = match tokio::time::timeout(timeout, http_connect(&ep, recv_buffer)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let _ = tx.send(end(e.to_string())).await;
            return;
        }
        Err(_) => {
            let _ = tx
                .send(end(ConnectError::Timeout(timeout).to_string()))
                .await;
            return;
        }
    };
    // No timeout on the answer: the server answers once the engine has the subscription
    // (seconds for an untracked contract); the session's silence check bounds the wait.
    let resp = match http_get(&mut http, &ep, &req.path, req.last_event_id.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(end(e.to_string())).await;
            return;
        }
    };
    let status = resp.status().as_u16();
    let is_sse = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status != 200 || !is_sse {
        let body = read_body(resp.into_body(), 4096).await;
        let _ = tx.send((id, StreamMsg::Refused { status, body })).await;
        return;
    }
    let stream_id = resp
        .headers()
        .get("x-stream-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if tx.send((id, StreamMsg::Open(stream_id))).await.is_err() {
        return;
    }
    let mut body = resp.into_body();
    let mut parser = SseParser::new(SSE_MAX_EVENT);
    let why = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else { continue };
                let mut items = Vec::new();
                parser.feed(&data, &mut items);
                if !items.is_empty() && tx.send((id, StreamMsg::Items(items))).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => break e.to_string(),
            None => break "end of stream".to_owned(),
        }
    };
    let _ = tx.send(end(why)).await;
}
