//! `tws-sim load`: a reading client for throughput measurement. It opens several client
//! connections to a simulator, subscribes tick-by-tick on each, reads as fast as it can for a
//! while and reports the tick frames received per second (aggregate and per connection).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ib_stream_tws::{ClientHandshake, ClientMsg, Contract, FrameReader};

use crate::universe::Universe;

/// What one load run does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub addr: String,
    pub clients: usize,
    pub subs_per_client: usize,
    pub kind: String,
    pub seconds: f64,
    pub min_version: u32,
    pub max_version: u32,
}

/// tickByTick, tickPrice, tickSize, tickString, tickGeneric: the frames that count as ticks.
fn is_tick(msg_id: u32) -> bool {
    matches!(msg_id, 99 | 1 | 2 | 46 | 45)
}

fn one_client(
    plan: &LoadPlan,
    n: usize,
    contracts: &[Contract],
) -> anyhow::Result<(u64, u64, Duration)> {
    let mut s = TcpStream::connect(&plan.addr).with_context(|| format!("connect {}", plan.addr))?;
    s.set_nodelay(true)?;
    let client_id = 9000 + n as i32;
    let mut hs = ClientHandshake::offering(client_id, plan.min_version, plan.max_version, "");
    let mut out = Vec::new();
    hs.start(&mut out);
    s.write_all(&out)?;
    out.clear();
    let mut reader = FrameReader::with_capacity(1 << 20);
    // The answer appends startApi to `out`; the requests follow it in one write.
    let version = loop {
        if let Some(ack) = hs.poll_ack(&mut reader, &mut out)? {
            break ack.version;
        }
        let got = s.read(reader.spare(4096))?;
        if got == 0 {
            bail!("closed during the handshake");
        }
        reader.commit(got);
    };
    for (i, contract) in contracts.iter().enumerate() {
        ClientMsg::ReqTickByTick {
            req_id: i as i32 + 1,
            contract: contract.clone(),
            tick_type: plan.kind.clone(),
            number_of_ticks: 0,
            ignore_size: false,
        }
        .encode(version, &mut out)?;
    }
    s.write_all(&out)?;
    // A simulator that stops sending ends the run with an error instead of a hang.
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(plan.seconds);
    let (mut ticks, mut bytes) = (0u64, 0u64);
    while Instant::now() < until {
        let spare = reader.spare(256 * 1024);
        let got = s.read(spare).context("reading ticks (none for 5 s?)")?;
        if got == 0 {
            bail!("the simulator closed the connection");
        }
        reader.commit(got);
        bytes += got as u64;
        while let Some(frame) = reader.next_frame(version)? {
            if is_tick(frame.msg_id) {
                ticks += 1;
            }
        }
    }
    Ok((ticks, bytes, start.elapsed()))
}

/// Runs the plan and prints the figures.
pub fn run(plan: &LoadPlan, universe: &Universe) -> anyhow::Result<()> {
    // Full contracts, as a client has them after reqContractDetails: a conId alone is 321.
    let contracts: Vec<Contract> = universe
        .iter()
        .map(|i| crate::wire::contract_details(i).contract)
        .collect();
    let threads: Vec<_> = (0..plan.clients)
        .map(|n| {
            let plan = plan.clone();
            let mine: Vec<Contract> = (0..plan.subs_per_client)
                .map(|k| contracts[(n * plan.subs_per_client + k) % contracts.len()].clone())
                .collect();
            std::thread::spawn(move || one_client(&plan, n, &mine))
        })
        .collect();
    let (mut ticks, mut bytes, mut secs) = (0u64, 0u64, 0f64);
    for (n, t) in threads.into_iter().enumerate() {
        let (t_ticks, t_bytes, took) = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        println!(
            "client {n}: {t_ticks} ticks in {:.2} s = {:.0} ticks/s, {:.1} MB/s",
            took.as_secs_f64(),
            t_ticks as f64 / took.as_secs_f64(),
            t_bytes as f64 / took.as_secs_f64() / 1e6
        );
        ticks += t_ticks;
        bytes += t_bytes;
        secs = secs.max(took.as_secs_f64());
    }
    println!(
        "total: {ticks} ticks in {secs:.2} s = {:.0} ticks/s aggregate, {:.1} MB/s, {:.1} bytes/tick",
        ticks as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / ticks.max(1) as f64
    );
    Ok(())
}
