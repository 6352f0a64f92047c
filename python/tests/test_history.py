"""read_history over the recorder's real files: both formats agree, time ranges, pandas,
stored gaps (an engine restart), and damage (a block, a header, a line) reported as gaps
with none of the damaged values returned."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import ib_stream as ibs
from conftest import CONTRACT, System, wait_until

KINDS = ("bid_ask", "last")


def full_block_file(storage: Path) -> Path | None:
    for p in storage.glob("binary/*/*/*/*/711280073_bid_ask_*.bin"):
        crc = p.with_suffix(".crc")
        if crc.exists() and crc.stat().st_size >= 4:
            return p
    return None


@pytest.fixture(scope="module")
def recorded() -> object:
    s = System(rate=400)
    try:
        wait_until("a full checksum block", lambda: full_block_file(s.storage), 120)
        yield s
    finally:
        s.stop()


def test_both_formats_hold_the_same_ticks(recorded: System) -> None:
    b = ibs.read_history(recorded.storage, CONTRACT, KINDS)
    j = ibs.read_history(recorded.storage, CONTRACT, KINDS, format="jsonl")
    assert len(b) > 256 and not b.gaps
    n = min(len(b), len(j))  # the recorder may be a flush ahead in one of them
    rb, rj = b.records[:n], j.records[:n]
    assert (rb["seq"] == rj["seq"]).all()
    assert (rb["ts_recv"] // 1000 == rj["ts_recv"] // 1000).all()  # JSON keeps µs
    assert (rb["kind"] == rj["kind"]).all() and (rb["flags"] == rj["flags"]).all()
    trade = (rb["kind"] == 1) | (rb["kind"] == 2)
    assert (rb["body"][~trade] == rj["body"][~trade]).all()
    assert (rb["body"][trade][:, :2] == rj["body"][trade][:, :2]).all()
    db, dj = b.to_pandas().iloc[:n], j.to_pandas().iloc[:n]
    assert list(db["exchange"]) == list(dj["exchange"])
    assert db["bid_price"].equals(dj["bid_price"]) and db["price"].equals(dj["price"])
    assert (np.diff(rb["ts_recv"]) >= 0).all()
    assert set(db["kind"]) <= set(KINDS) and (db["contract_id"] == CONTRACT).all()


def test_time_range_kinds_and_pandas(recorded: System) -> None:
    h = ibs.read_history(recorded.storage, CONTRACT, KINDS)
    ts = h.records["ts_recv"]
    lo, hi = int(ts[len(ts) // 4]), int(ts[len(ts) // 2])
    part = ibs.read_history(recorded.storage, CONTRACT, KINDS, start=lo, end=hi)
    want = h.records[(ts >= lo) & (ts < hi)]
    assert part.records.tobytes() == want.tobytes()
    only = ibs.read_history(recorded.storage, CONTRACT, ("bid_ask",))
    assert set(only.records["kind"]) == {3}
    df = ibs.read_history(recorded.storage, CONTRACT, KINDS, start=np.datetime64(lo, "ns"),
                          as_pandas=True)  # fmt: skip
    assert str(df["ts_recv"].dtype) == "datetime64[ns, UTC]"
    assert df.attrs["gaps"] == []
    assert len(df) >= int((ts >= lo).sum())  # the recorder may have stored more since
    assert (df["ts_recv"].astype("int64") >= lo).all()
    q = df[df["kind"] == "bid_ask"]
    assert (q["ask_price"] >= q["bid_price"]).all() and q["bid_size"].notna().all()
    with pytest.raises(ibs.HistoryError, match="unknown kind"):
        ibs.read_history(recorded.storage, CONTRACT, ("bogus",))
    with pytest.raises(ibs.HistoryError, match="no such storage"):
        ibs.read_history(recorded.storage / "nope", CONTRACT)


def copy_storage(system: System, dst: Path) -> Path:
    shutil.copytree(system.storage, dst / "s", ignore=shutil.ignore_patterns("*.lock"))
    return dst / "s"


def test_a_damaged_block_is_a_gap_and_none_of_its_values_is_returned(
    recorded: System, tmp_path: Path
) -> None:
    root = copy_storage(recorded, tmp_path)
    f = full_block_file(root)
    assert f is not None
    clean = ibs.read_history(root, CONTRACT, ("bid_ask",))
    block0 = np.frombuffer(f.read_bytes()[64 : 64 + 256 * 64], dtype=ibs.RECORD_DTYPE)
    # One bit of one price in the middle of block 0.
    data = bytearray(f.read_bytes())
    data[64 + 100 * 64 + 40] ^= 0x01
    f.write_bytes(bytes(data))
    h = ibs.read_history(root, CONTRACT, ("bid_ask",))
    gaps = [g for g in h.gaps if g.reason == "corrupt_block"]
    assert len(gaps) == 1 and gaps[0].file == str(f)
    assert not np.isin(h.records["seq"], block0["seq"]).any(), "a damaged block's record came out"
    assert len(h) == len(clean) - 256
    s0, s1 = int(block0["seq"][0]), int(block0["seq"][-1])
    g = gaps[0]
    assert g.first_seq is None or g.first_seq <= s0
    assert g.last_seq is not None and g.last_seq >= s1
    # The header: nothing of that file.
    data[64 + 100 * 64 + 40] ^= 0x01
    data[24] ^= 0x80
    f.write_bytes(bytes(data))
    h = ibs.read_history(root, CONTRACT, ("bid_ask",))
    assert [g.reason for g in h.gaps] == ["corrupt_header"]
    whole = np.frombuffer(data[64 : 64 + (len(data) - 64) // 64 * 64], dtype=ibs.RECORD_DTYPE)
    assert not np.isin(h.records["seq"], whole["seq"]).any()


def test_a_damaged_line_is_a_gap(recorded: System, tmp_path: Path) -> None:
    root = copy_storage(recorded, tmp_path)
    f = next(root.glob("jsonl/*/*/*/*/711280073_bid_ask_*.jsonl"))
    lines = f.read_bytes().split(b"\n")
    bad_seq = int(lines[10].split(b",")[0].split(b":")[1])
    lines[10] = lines[10].replace(b'"bp":', b'"bp":x', 1)
    f.write_bytes(b"\n".join(lines))
    h = ibs.read_history(root, CONTRACT, ("bid_ask",), format="jsonl")
    gaps = [g for g in h.gaps if g.reason == "corrupt_line"]
    assert len(gaps) == 1 and "line 11" in (gaps[0].detail or "")
    assert gaps[0].first_seq is not None and gaps[0].first_seq <= bad_seq
    assert bad_seq not in set(h.records["seq"].tolist())


def test_an_engine_restart_is_a_stored_gap(system: System) -> None:
    wait_until("ticks", lambda: len(ibs.read_history(system.storage, CONTRACT, KINDS)) > 50, 60)
    system.kill("engine", signal.SIGKILL)
    system.restarted("engine")

    def two_runs() -> object:
        h = ibs.read_history(system.storage, CONTRACT, KINDS)
        restarts = [g for g in h.gaps if g.reason == "writer_restart"]
        return (h, restarts) if len(set(h.epochs.tolist())) == 2 and restarts else None

    h, restarts = wait_until("both runs and the restart gap", two_runs, 60)
    old = min(set(h.epochs.tolist()), key=lambda e: h.records["ts_recv"][h.epochs == e].min())
    g = restarts[0]
    assert g.epoch == old
    last_old = int(h.records["seq"][h.epochs == old].max())
    assert g.first_seq is not None and g.first_seq > last_old
