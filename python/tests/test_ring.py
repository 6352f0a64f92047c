"""RingReader: against the real engine's ring (records identical to what the recorder
stored, an engine restart followed), and against rings written here by the protocol of
ipc/README.md (exact lap accounting, a slot being written, header validation, liveness)."""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import ib_stream as ibs
from conftest import System, wait_until
from ib_stream.ring import RING_MAGIC, SLOTS_OFFSET, WRITING_BIT


def test_reads_the_engines_ring_byte_for_byte_as_stored(system: System) -> None:
    ring = system.shm / "ticks.ring"
    wait_until("ticks in the ring", lambda: ibs.RingReader(ring).head() > 500, 60)
    r = ibs.RingReader(ring, "oldest")
    got = []
    while r.next_seq <= 500:
        b = r.read_batch(64)
        assert b.lost is None
        got.append(b.records)
    recs = np.concatenate(got)
    assert list(recs["seq"]) == list(range(1, len(recs) + 1))
    assert r.info.epoch_hex in {
        p.name.rsplit("_", 1)[-1][:16] for p in system.storage.rglob("*.bin")
    }
    # The recorder stores ring records byte for byte: compare with its binary files.
    epoch = np.uint64(r.info.epoch)

    def stored() -> object:
        h = ibs.read_history(system.storage, 711280073, ("bid_ask", "last"))
        sel = h.records[h.epochs == epoch]
        return [sel] if len(sel) and int(sel["seq"].max()) >= 400 else None

    sel = wait_until("the recorder", stored, 30)[0]
    mine = recs[np.isin(recs["seq"], sel["seq"])]
    assert len(mine) > 100
    assert mine.tobytes() == sel[np.isin(sel["seq"], mine["seq"])].tobytes()
    assert r.writer_status() == "alive"
    r.close()


def test_follows_an_engine_restart(system: System) -> None:
    ring = system.shm / "ticks.ring"
    wait_until("ticks in the ring", lambda: ibs.RingReader(ring).head() > 100, 60)
    r = ibs.RingReader(ring, "newest", check_every=0.0)
    old_epoch = r.info.epoch
    system.kill("engine", signal.SIGKILL)
    seen: list[ibs.Batch] = []

    def restarted() -> bool:
        b = r.poll()
        seen.append(b)
        return b.restart is not None

    wait_until("the restart", restarted, 60)
    rs = seen[-1].restart
    assert rs is not None
    assert rs.old_epoch == old_epoch != rs.new_epoch and not rs.clean
    assert any(b.writer == "gone" for b in seen), "the dead writer was not reported"
    old = [b.records for b in seen if len(b.records)]
    if old:
        s = np.concatenate(old)["seq"]
        assert list(s) == list(range(int(s[0]), int(s[0]) + len(s)))
        assert int(s[-1]) == rs.old_last_seq

    # The new run from its first record.
    def new_records() -> object:
        b = r.poll()
        return b if len(b.records) or b.lost else None

    b = wait_until("the new run", new_records, 60)
    first = b.lost.first_seq if b.lost else int(b.records["seq"][0])
    assert first == 1 and r.info.epoch == rs.new_epoch


# ---- rings written here ----------------------------------------------------------------


class FakeWriter:
    """The writer side of the protocol, in Python (single-threaded tests)."""

    def __init__(
        self, path: Path, capacity: int, pid: int | None = None, epoch: int = 0x1234_5678_9ABC_DEF0
    ) -> None:
        self.path = path
        self.cap = capacity
        tmp = path.with_name(f".tmp-{os.getpid()}")
        hdr = bytearray(SLOTS_OFFSET)
        struct.pack_into("<QIIQQQQI", hdr, 0, RING_MAGIC, 1, 64, capacity, SLOTS_OFFSET,
                         epoch, time.time_ns(), pid or os.getpid())  # fmt: skip
        struct.pack_into("<Q", hdr, 56, SLOTS_OFFSET + 64 * capacity)
        struct.pack_into("<Q", hdr, 136, 1)
        tmp.write_bytes(bytes(hdr) + bytes(64 * capacity))
        os.replace(tmp, path)
        self.f = open(path, "r+b")  # noqa: SIM115
        self.seq = 0
        self.heartbeat(time.time_ns())

    def word(self, off: int, v: int) -> None:
        self.f.seek(off)
        self.f.write(struct.pack("<Q", v))
        self.f.flush()

    def publish(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            s = self.seq
            off = SLOTS_OFFSET + 64 * ((s - 1) % self.cap)
            rec = np.zeros(1, dtype=ibs.RECORD_DTYPE)
            rec["seq"] = s
            rec["ts_recv"] = s * 1000
            rec["instrument_id"] = 7
            rec["kind"] = 3
            rec["body"] = [[s, s + 1, s + 2, s + 3]]
            self.f.seek(off)
            self.f.write(rec.tobytes())
        self.f.flush()
        self.word(64, self.seq)

    def heartbeat(self, ns: int) -> None:
        self.word(128, ns)

    def close(self) -> None:
        self.f.close()


def read_all(r: ibs.RingReader) -> tuple[list[int], list[ibs.Lost]]:
    seqs: list[int] = []
    lost: list[ibs.Lost] = []
    for _ in range(1000):
        b = r.read_batch(5)
        if b.lost:
            lost.append(b.lost)
        elif not len(b.records):
            break
        for rec in b.records:
            assert list(rec["body"]) == [rec["seq"] + i for i in range(4)]
        seqs += [int(s) for s in b.records["seq"]]
    return seqs, lost


def test_exact_lap_accounting(tmp_path: Path) -> None:
    w = FakeWriter(tmp_path / "ticks.ring", 16)
    r = ibs.RingReader(tmp_path / "ticks.ring", "oldest", lap_margin=2)
    w.publish(10)
    seqs, lost = read_all(r)
    assert seqs == list(range(1, 11)) and not lost
    w.publish(50)  # head 60: 11..44 overwritten; oldest in the ring is 45
    seqs, lost = read_all(r)
    assert lost == [ibs.Lost(11, 46, 36)]  # resume at oldest + margin = 47
    assert seqs == list(range(47, 61))
    # Delivered + lost == published, each once.
    w.close()


def test_newest_policy_and_start_positions(tmp_path: Path) -> None:
    w = FakeWriter(tmp_path / "ticks.ring", 16)
    w.publish(40)
    assert read_all(ibs.RingReader(tmp_path / "ticks.ring", "oldest"))[0] == list(range(25, 41))
    assert read_all(ibs.RingReader(tmp_path / "ticks.ring", "newest"))[0] == []
    assert read_all(ibs.RingReader(tmp_path / "ticks.ring", 30))[0] == list(range(30, 41))
    r = ibs.RingReader(tmp_path / "ticks.ring", 2, newest_after_lap=True)
    seqs, lost = read_all(r)
    assert lost == [ibs.Lost(2, 39, 38)] and seqs == [40]
    w.close()


def test_a_slot_being_written_or_overwritten_is_never_delivered(tmp_path: Path) -> None:
    w = FakeWriter(tmp_path / "ticks.ring", 16)
    w.publish(5)
    r = ibs.RingReader(tmp_path / "ticks.ring", "oldest")
    # Record 3's slot marked WRITING (as if the writer were in the middle of it), with
    # `head` still claiming 5: only 1 and 2 may come out.
    w.word(SLOTS_OFFSET + 64 * 2, 3 | WRITING_BIT)
    b = r.read_batch(10)
    assert list(b.records["seq"]) == [1, 2]
    assert not len(r.read_batch(10).records)
    w.word(SLOTS_OFFSET + 64 * 2, 3)
    assert list(r.read_batch(10).records["seq"]) == [3, 4, 5]
    # A slot already holding a later lap's record (19 in the slot of 3): a lap, not data.
    r2 = ibs.RingReader(tmp_path / "ticks.ring", 3)
    w.word(SLOTS_OFFSET + 64 * 2, 19 | WRITING_BIT)
    b = r2.read_batch(10)
    assert b.lost is not None and b.lost.first_seq == 3 and not len(b.records)
    w.close()


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x1234, "bad magic"),
        (8, 2, "version"),
        (12, 65, "record size"),
        (16, 12, "power of two"),
    ],
)
def test_header_validation(tmp_path: Path, offset: int, value: int, message: str) -> None:
    w = FakeWriter(tmp_path / "ticks.ring", 16)
    w.f.seek(offset)
    w.f.write(struct.pack("<Q" if offset in (0, 16) else "<I", value))
    w.f.flush()
    with pytest.raises(ibs.RingError, match=message):
        ibs.RingReader(tmp_path / "ticks.ring")
    w.close()
    with pytest.raises(ibs.RingError, match="no ring"):
        ibs.RingReader(tmp_path / "missing.ring")
    (tmp_path / "short").write_bytes(b"x" * 100)
    with pytest.raises(ibs.RingError, match="shorter"):
        ibs.RingReader(tmp_path / "short")


def test_writer_liveness(tmp_path: Path) -> None:
    path = tmp_path / "ticks.ring"
    w = FakeWriter(path, 16)
    r = ibs.RingReader(path, stale_after=1.0)
    assert r.writer_status() == "alive"
    w.heartbeat(time.time_ns() - 5_000_000_000)
    assert r.writer_status() == "stale"
    w.word(136, 2)
    assert r.writer_status() == "stopped"
    w.close()
    # A writer process that no longer exists.
    dead = FakeWriter(tmp_path / "dead.ring", 16, pid=2**22 + 12345)
    assert ibs.RingReader(tmp_path / "dead.ring").writer_status() == "gone"
    dead.close()
    # A restarted writer renames a new ring over the path: drained, then followed.
    w = FakeWriter(path, 16)
    w.publish(3)
    r = ibs.RingReader(path, "oldest", check_every=0.0)
    assert list(r.poll().records["seq"]) == [1, 2, 3]
    w2 = FakeWriter(path, 32, epoch=0xE2)
    w.publish(1)  # the old writer's last record, published just before the swap
    w2.publish(2)
    assert r.writer_status() == "replaced"
    assert list(r.poll().records["seq"]) == [4]
    b = r.poll()
    assert b.restart == ibs.WriterRestart(0x1234_5678_9ABC_DEF0, 0xE2, 4, False)
    assert list(r.poll().records["seq"]) == [1, 2] and r.info.capacity == 32
    w.close()
    w2.close()
