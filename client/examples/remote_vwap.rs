//! A remote VWAP: trades of one contract from an ib-stream web server, a volume-weighted
//! average price over the last N trades, printed as it moves. Reconnects and resumes by
//! itself; a gap (ticks the server could not deliver) restarts the window, since a VWAP over
//! a hole would be silently wrong.
//!
//! `cargo run -p ib-stream-client --example remote_vwap -- http://127.0.0.1:8101 711280073 [window] [trades]`

use std::collections::VecDeque;

use ib_stream_client::{Client, ClientConfig, ConnState, Event, Subscription};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("http://127.0.0.1:8101", String::as_str);
    let con_id: u32 = args.get(2).map_or(Ok(711_280_073), |s| s.parse())?;
    let window: usize = args.get(3).map_or(Ok(100), |s| s.parse())?;
    let stop_after: Option<u64> = args.get(4).map(|s| s.parse()).transpose()?;

    let (client, mut events) = Client::start(ClientConfig::new(url))?;
    client.subscribe(Subscription::new(con_id, &["last"]))?;

    let mut trades: VecDeque<(f64, f64)> = VecDeque::with_capacity(window);
    let (mut pv, mut vol) = (0.0, 0.0);
    let mut seen = 0u64;
    while let Some(ev) = events.next().await {
        match ev {
            Event::Tick { tick, .. } => {
                let (Some(p), Some(s)) = (tick.p, tick.s) else {
                    continue;
                };
                trades.push_back((p, s));
                pv += p * s;
                vol += s;
                if trades.len() > window {
                    let (op, os) = trades.pop_front().expect("non-empty");
                    pv -= op * os;
                    vol -= os;
                }
                seen += 1;
                if vol > 0.0 {
                    println!(
                        "seq {} last {p} x {s}  vwap({}) {:.4}",
                        tick.seq,
                        trades.len(),
                        pv / vol
                    );
                }
                if stop_after.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            Event::Gap { gap, .. } => {
                eprintln!(
                    "gap {:?} seq {:?}..={:?}: window restarted",
                    gap.reason, gap.first_seq, gap.last_seq
                );
                trades.clear();
                (pv, vol) = (0.0, 0.0);
            }
            Event::State(t) => {
                eprintln!("{:?} -> {:?} ({})", t.from, t.to, t.reason);
                if t.to == ConnState::Failed {
                    return Err(t.reason.into());
                }
            }
            Event::SubscribeFailed { error, .. } => {
                return Err(format!("refused: {} {}", error.code, error.message).into());
            }
            _ => {}
        }
    }
    let h = client.health();
    eprintln!(
        "{} trades, {} reconnects, {} gaps",
        h.metrics.ticks, h.metrics.reconnects, h.metrics.gaps
    );
    client.close().await;
    Ok(())
}
