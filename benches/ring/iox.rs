//! Peer: iceoryx2 0.10 publish-subscribe between the two processes, a 64-byte payload, one
//! service each way, set up as iceoryx2's own latency benchmark does (no history, a buffer of
//! one, safe overflow). Its files go under the run's directory and a run-unique /dev/shm
//! prefix, so cleanup removes exactly what this run created.

use std::fmt::Debug;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use ib_stream::ipc::{RECORD_SIZE, Record};
use iceoryx2::prelude::*;

use crate::child::{Args, Partner, say_ready};
use crate::clock::{TickClock, spin_until};
use crate::shm::RunDir;
use crate::{RttPlan, STALL_LIMIT, time_round_trips};

type Payload = [u8; RECORD_SIZE];

/// iceoryx2 errors are `Debug`; this turns them into anyhow errors with some context.
fn iox<T, E: Debug>(what: &str, r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("iceoryx2 {what}: {e:?}"))
}

fn node(root: &str, prefix: &str) -> anyhow::Result<Node<ipc::Service>> {
    set_log_level(LogLevel::Error);
    let mut config = Config::default();
    config.global.prefix = iox("prefix", FileName::new(prefix.as_bytes()))?;
    config
        .global
        .set_root_path(&iox("root path", Path::new(root.as_bytes()))?);
    iox(
        "node",
        NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>(),
    )
}

fn service(
    node: &Node<ipc::Service>,
    name: &str,
) -> anyhow::Result<
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, Payload, ()>,
> {
    let name = iox("service name", ServiceName::new(name))?;
    iox(
        "service",
        node.service_builder(&name)
            .publish_subscribe::<Payload>()
            .max_publishers(1)
            .max_subscribers(1)
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .open_or_create(),
    )
}

pub(crate) fn rtt(
    dir: &RunDir,
    clock: &TickClock,
    plan: &RttPlan,
    tag: &str,
) -> anyhow::Result<Histogram<u64>> {
    let root = format!("{}/iox2/", dir.path().display());
    let node = node(&root, dir.shm_prefix())?;
    let (ping_name, pong_name) = (format!("ibrb/{tag}/ping"), format!("ibrb/{tag}/pong"));
    let ping = service(&node, &ping_name)?;
    let pong = service(&node, &pong_name)?;
    let publisher = iox("publisher", ping.publisher_builder().create())?;
    let subscriber = iox("subscriber", pong.subscriber_builder().create())?;
    let partner = Partner::spawn(
        "iox-echo",
        &[
            ("root", root.clone()),
            ("prefix", dir.shm_prefix().to_string()),
            ("ping", ping_name),
            ("pong", pong_name),
            ("n", plan.total().to_string()),
        ],
    )?;
    let mut rec = Record::ZERO;
    let hist = time_round_trips(plan, clock, |i| {
        rec.seq = i;
        let sample = iox("loan", publisher.loan_uninit())?;
        iox("send", sample.write_payload(*rec.as_bytes_ref()).send())?;
        let mut got = None;
        let mut err = None;
        spin_until("iceoryx2 pong", STALL_LIMIT, || {
            match subscriber.receive() {
                Ok(Some(s)) => {
                    got = Some(Record::from_bytes_array(s.payload()).seq);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    err = Some(e);
                    true
                }
            }
        })?;
        if let Some(e) = err {
            return Err(anyhow!("iceoryx2 receive: {e:?}"));
        }
        anyhow::ensure!(
            got == Some(i),
            "iceoryx2 echo out of order: {got:?} for {i}"
        );
        Ok(())
    })?;
    partner.wait()?;
    Ok(hist)
}

pub(crate) fn echo() -> anyhow::Result<()> {
    let n: u64 = Args::num("n")?;
    let node = node(&Args::get("root")?, &Args::get("prefix")?)?;
    let ping = service(&node, &Args::get("ping")?)?;
    let pong = service(&node, &Args::get("pong")?)?;
    let subscriber = iox("subscriber", ping.subscriber_builder().create())?;
    let publisher = iox("publisher", pong.publisher_builder().create())?;
    say_ready();
    for _ in 0..n {
        let mut payload: Option<Payload> = None;
        let mut err = None;
        spin_until("iceoryx2 ping", STALL_LIMIT, || {
            match subscriber.receive() {
                Ok(Some(s)) => {
                    payload = Some(*s.payload());
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    err = Some(e);
                    true
                }
            }
        })?;
        if let Some(e) = err {
            return Err(anyhow!("iceoryx2 receive: {e:?}"));
        }
        let Some(payload) = payload else {
            anyhow::bail!("iceoryx2 ping: spin ended without a sample");
        };
        let sample = iox("loan", publisher.loan_uninit())?;
        iox("send", sample.write_payload(payload).send())?;
    }
    Ok(())
}
