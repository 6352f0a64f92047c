//! The README's layouts are enough to read both files from another language: a Python
//! reader written only from `ipc/README.md` ("String table", "Status region") parses the
//! files this crate writes, and must agree with the Rust readers field by field, including
//! the histogram bucket formula and percentiles.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use ib_stream_ipc::shm::random_u64;
use ib_stream_ipc::{
    ConnState, FarmKind, FarmState, FarmStatus, RecordKind, ShmOptions, StatusReader,
    StatusSnapshot, StatusWriter, StringTableConfig, StringTableReader, StringTableWriter,
    SubState, SubStatus, data_flags,
};

/// Reads `strings` and `status` per the README and prints `key=value` lines.
const READER_PY: &str = r#"
import struct, sys

def strings(path):
    b = open(path, 'rb').read()
    (magic, version, pid, epoch, created, max_entries, max_len, cap, eoff,
     boff) = struct.unpack_from('<QIIQqIIQQQ', b, 0)
    assert magic == int.from_bytes(b'IBSSTRS1', 'little'), hex(magic)
    assert version == 1 and eoff == 128
    assert boff == (128 + 8 * max_entries + 63) // 64 * 64
    assert len(b) >= boff + cap
    count, used = struct.unpack_from('<QQ', b, 64)
    print(f'strings.epoch={epoch}')
    print(f'strings.count={count}')
    print(f'strings.bytes_used={used}')
    for i in range(count):
        (e,) = struct.unpack_from('<Q', b, eoff + 8 * i)
        off, ln = e & 0xffffffff, e >> 32
        assert ln <= max_len and off + ln <= cap
        print(f'string.{i}={b[boff + off:boff + off + ln].hex()}')

def bounds(i):
    if i < 8:
        return i, i
    if i >= 303:
        return 15 << 36, 2**64 - 1
    e = i // 8 + 2
    lo = (8 + i % 8) << (e - 3)
    return lo, ((9 + i % 8) << (e - 3)) - 1

def percentile(count, mn, mx, buckets, q):
    rank = min(max(-(-round(q * 1000) * count // 1000), 1), count)
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return min(max(bounds(i)[1], mn), max(mx, mn))

def status(path):
    b = open(path, 'rb').read()
    (magic, version, pid, epoch, created, snap_size, max_subs, nbuckets, stride,
     boff, max_farms) = struct.unpack_from('<QIIQqIIIIII', b, 0)
    assert magic == int.from_bytes(b'IBSSTAT1', 'little'), hex(magic)
    assert (version, snap_size, max_subs, nbuckets, stride, boff, max_farms) == (3, 23520, 256, 304, 23616, 128, 16)
    assert len(b) >= 47360
    latest, heartbeat = struct.unpack_from('<Qq', b, 64)
    buf = boff + (latest % 2) * stride
    (seq,) = struct.unpack_from('<Q', b, buf)
    assert seq == 2 * latest, (seq, latest)
    s = buf + 64
    (gen, updated, started, since, err_ns, server_version, client_id, err_code, sub_count,
     conn_state, farm_count, data_flags) = struct.unpack_from('<QqqqqIiiIBBB', b, s)
    assert gen == latest
    print(f'status.epoch={epoch}')
    print(f'status.heartbeat_ns={heartbeat}')
    print(f'engine={gen},{updated},{started},{since},{err_ns},{server_version},{client_id},{err_code},{sub_count},{conn_state},{farm_count},{data_flags}')
    counters = struct.unpack_from('<16Q', b, s + 64)
    print('counters=' + ','.join(map(str, counters)))
    for h in range(5):
        o = s + 192 + h * 2464
        count, total, mn, mx = struct.unpack_from('<4Q', b, o)
        buckets = struct.unpack_from('<304Q', b, o + 32)
        assert sum(buckets) == count
        p = [percentile(count, mn, mx, buckets, q) for q in (0.5, 0.9, 0.99)] if count else []
        print(f'hist.{h}={count},{total},{mn},{mx},' + ','.join(map(str, p)))
    for i in range(min(sub_count, 256)):
        o = s + 12512 + 40 * i
        (con_id, req_id, err, kind, state, mdt, flags, ticks, last_tick,
         state_since) = struct.unpack_from('<IiiBBBBQqq', b, o)
        print(f'sub.{i}={con_id},{req_id},{err},{kind},{state},{mdt},{flags},{ticks},{last_tick},{state_since}')
    for i in range(min(farm_count, 16)):
        o = s + 22752 + 48 * i
        (name, kind, state, code, since_ns, notice_ns) = struct.unpack_from('<24sBBxxiqq', b, o)
        name = name.split(b'\0', 1)[0].decode('utf-8')
        print(f'farm.{i}={name},{kind},{state},{code},{since_ns},{notice_ns}')

strings(sys.argv[1])
status(sys.argv[2])
"#;

fn unique_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ipc-status-foreign-{}-{:016x}",
        std::process::id(),
        random_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// What the README-based reader must print for these files, computed by the Rust readers.
fn expected(strings: &StringTableReader, status: &StatusReader) -> Vec<String> {
    let mut lines = vec![
        format!("strings.epoch={}", strings.epoch()),
        format!("strings.count={}", strings.len()),
        format!("strings.bytes_used={}", strings.bytes_used()),
    ];
    for id in 0..strings.len() {
        lines.push(format!("string.{id}={}", hex(strings.get(id).unwrap())));
    }
    let mut s = StatusSnapshot::new_boxed();
    status.read(&mut s).unwrap();
    let e = &s.engine;
    lines.push(format!("status.epoch={}", status.epoch()));
    lines.push(format!("status.heartbeat_ns={}", status.heartbeat_ns()));
    lines.push(format!(
        "engine={},{},{},{},{},{},{},{},{},{},{},{}",
        e.generation,
        e.updated_ns,
        e.started_ns,
        e.connected_since_ns,
        e.last_error_ns,
        e.server_version,
        e.client_id,
        e.last_error_code,
        e.sub_count,
        e.conn_state,
        e.farm_count,
        e.data_flags
    ));
    let c = &s.counters;
    let counters = [
        c.records_published,
        c.bytes_read,
        c.socket_reads,
        c.frames_decoded,
        c.decode_errors,
        c.messages_sent,
        c.reconnects,
        c.gaps,
        c.heartbeats,
        c.ib_errors,
        c.subscriptions_rejected,
        c.pacing_delays,
        c.strings_interned,
        c.strings_dropped,
        c.loop_iterations,
        c.control_requests,
    ];
    lines.push(format!(
        "counters={}",
        counters.map(|v| v.to_string()).join(",")
    ));
    let l = &s.latencies;
    for (i, h) in [
        &l.recv_to_publish,
        &l.decode,
        &l.loop_iteration,
        &l.kernel_to_commit,
        &l.read_to_commit,
    ]
    .into_iter()
    .enumerate()
    {
        let p: Vec<String> = if h.count == 0 {
            Vec::new()
        } else {
            [0.5, 0.9, 0.99]
                .map(|q| h.percentile(q).unwrap().to_string())
                .to_vec()
        };
        lines.push(format!(
            "hist.{i}={},{},{},{},{}",
            h.count,
            h.sum,
            h.min,
            h.max,
            p.join(",")
        ));
    }
    for (i, sub) in s.subscriptions().iter().enumerate() {
        lines.push(format!(
            "sub.{i}={},{},{},{},{},{},{},{},{},{}",
            sub.con_id,
            sub.req_id,
            sub.ib_error_code,
            sub.kind,
            sub.state,
            sub.market_data_type,
            sub.flags,
            sub.ticks,
            sub.last_tick_ns,
            sub.state_since_ns
        ));
    }
    for (i, f) in s.farms().iter().enumerate() {
        lines.push(format!(
            "farm.{i}={},{},{},{},{},{}",
            f.name(),
            f.kind,
            f.state,
            f.code,
            f.since_ns,
            f.notice_ns
        ));
    }
    lines
}

#[test]
fn a_reader_written_from_the_readme_agrees() {
    let dir = unique_dir();
    let epoch = random_u64();
    let opts = ShmOptions::default();
    let cfg = StringTableConfig {
        max_entries: 100,
        max_bytes: 4096,
        max_len: 64,
    };
    let mut strings = StringTableWriter::create(&dir.join("strings"), epoch, &cfg, &opts).unwrap();
    for s in [
        "ISLAND",
        "ARCA",
        "",
        "Zürich",
        "ISLAND",
        "Bid;Ask \u{1F4C8}",
        "x",
    ] {
        strings.intern(s.as_bytes()).unwrap();
    }
    let mut status = StatusWriter::create(&dir.join("status"), epoch, &opts).unwrap();
    let mut snap = StatusSnapshot::new_boxed();
    snap.set_conn_state(ConnState::IbLost);
    snap.engine.server_version = 176;
    snap.engine.client_id = -3;
    snap.engine.last_error_code = 1100;
    snap.engine.started_ns = 1_700_000_000_000_000_000;
    snap.engine.connected_since_ns = 1_700_000_000_500_000_000;
    snap.engine.last_error_ns = 1_700_000_001_000_000_000;
    let c = &mut snap.counters;
    for (i, v) in [
        &mut c.records_published,
        &mut c.bytes_read,
        &mut c.socket_reads,
        &mut c.frames_decoded,
        &mut c.decode_errors,
        &mut c.messages_sent,
        &mut c.reconnects,
        &mut c.gaps,
        &mut c.heartbeats,
        &mut c.ib_errors,
        &mut c.subscriptions_rejected,
        &mut c.pacing_delays,
        &mut c.strings_interned,
        &mut c.strings_dropped,
        &mut c.loop_iterations,
        &mut c.control_requests,
    ]
    .into_iter()
    .enumerate()
    {
        *v = 1000 + i as u64 * 7;
    }
    for k in 0..5000u64 {
        snap.latencies
            .recv_to_publish
            .record(300 + (k * 7919) % 20_000);
        snap.latencies.decode.record(k % 13);
        snap.latencies
            .kernel_to_commit
            .record(900 + (k * 31) % 7000);
        snap.latencies.read_to_commit.record(100 + k % 211);
    }
    snap.latencies.recv_to_publish.record(3 << 41); // the overflow bucket
    let kinds = [
        RecordKind::TbtLast,
        RecordKind::TbtBidAsk,
        RecordKind::L1Price,
    ];
    for i in 0..40u32 {
        let mut sub = SubStatus::new(
            265_598 + i,
            kinds[i as usize % 3],
            SubState::from_u8((i % 7) as u8).unwrap(),
            1000 + i as i32,
        );
        sub.ib_error_code = if i % 5 == 0 { 10_197 } else { 0 };
        sub.market_data_type = (i % 5) as u8;
        sub.ticks = u64::from(i) * 1_000_003;
        sub.last_tick_ns = 1_700_000_002_000_000_000 + i64::from(i);
        sub.state_since_ns = 1_700_000_001_500_000_000 - i64::from(i);
        sub.flags = (i % 2) as u8;
        snap.push_subscription(sub).unwrap();
    }
    let mut farms = vec![
        FarmStatus::new(
            "usfarm.nj",
            FarmKind::MarketData,
            FarmState::Broken,
            2103,
            1_700_000_004_000_000_000,
        ),
        FarmStatus::new("ushmds", FarmKind::Hmds, FarmState::Inactive, 2107, 5),
        FarmStatus::new("secdefnj", FarmKind::SecDef, FarmState::Ok, 2158, 6),
    ];
    farms[1].notice_ns = 9;
    snap.set_farms(&farms);
    snap.engine.data_flags = data_flags::FARM_BROKEN;
    // Three publishes, so the latest is in buffer 1 and buffer 0 holds an older one.
    for g in 1..=3 {
        snap.counters.loop_iterations = 77 * g;
        status.publish(&snap, 1_700_000_003_000_000_000 + g as i64);
    }

    let r_strings = StringTableReader::open(&dir.join("strings")).unwrap();
    let r_status = StatusReader::open(&dir.join("status")).unwrap();
    let want = expected(&r_strings, &r_status);

    let script = dir.join("reader.py");
    std::fs::write(&script, READER_PY).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.join("strings"))
        .arg(dir.join("status"))
        .output()
        .expect("python3 runs (the README reader is a Python script)");
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "python reader failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), want.len(), "python printed:\n{stdout}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    // The data is what was written, not just equal on both sides.
    assert!(want.contains(&format!("string.3={}", hex("Zürich".as_bytes()))));
    assert!(want.contains(&"counters=1000,1007,1014,1021,1028,1035,1042,1049,1056,1063,1070,1077,1084,1091,231,1105".to_owned()));
    assert!(
        want.iter()
            .any(|l| l.starts_with("engine=3,1700000003000000003,"))
    );
    assert!(want.contains(
        &"sub.39=265637,1039,0,1,4,4,1,39000117,1700000002000000039,1700000001499999961".to_owned()
    ));
    assert!(
        want.iter()
            .any(|l| l.starts_with("engine=3,") && l.ends_with(",3,3,1")),
        "{want:?}"
    );
    assert!(
        want.contains(
            &"farm.0=usfarm.nj,1,2,2103,1700000004000000000,1700000004000000000".to_owned()
        )
    );
    assert!(want.contains(&"farm.1=ushmds,2,3,2107,5,9".to_owned()));
}
