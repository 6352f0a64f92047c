//! Peer: a Unix domain stream socket between the two processes, 64-byte messages, blocking
//! reads (what a typical socket consumer does).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use hdrhistogram::Histogram;
use ib_stream::ipc::{RECORD_SIZE, Record};

use crate::child::{Args, Partner, say_ready};
use crate::clock::TickClock;
use crate::shm::RunDir;
use crate::{RttPlan, STALL_LIMIT, time_round_trips};

pub(crate) fn rtt(
    dir: &RunDir,
    clock: &TickClock,
    plan: &RttPlan,
    tag: &str,
) -> anyhow::Result<Histogram<u64>> {
    let path = dir.path().join(format!("uds-{tag}.sock"));
    let listener = UnixListener::bind(&path)?;
    let partner = Partner::spawn(
        "uds-echo",
        &[
            ("path", path.display().to_string()),
            ("n", plan.total().to_string()),
        ],
    )?;
    // The partner connected before saying ready, so this accept does not block.
    let (mut sock, _) = listener.accept()?;
    sock.set_read_timeout(Some(STALL_LIMIT))?;
    let mut rec = Record::ZERO;
    let mut back = [0u8; RECORD_SIZE];
    let hist = time_round_trips(plan, clock, |i| {
        rec.seq = i;
        sock.write_all(rec.as_bytes_ref())?;
        sock.read_exact(&mut back)?;
        anyhow::ensure!(
            Record::from_bytes_array(&back).seq == i,
            "uds echo out of order"
        );
        Ok(())
    })?;
    partner.wait()?;
    std::fs::remove_file(&path)?;
    Ok(hist)
}

pub(crate) fn echo() -> anyhow::Result<()> {
    let path = PathBuf::from(Args::get("path")?);
    let n: u64 = Args::num("n")?;
    let mut sock = UnixStream::connect(&path)?;
    sock.set_read_timeout(Some(STALL_LIMIT))?;
    say_ready();
    let mut buf = [0u8; RECORD_SIZE];
    for _ in 0..n {
        sock.read_exact(&mut buf)?;
        sock.write_all(&buf)?;
    }
    Ok(())
}
