"""read_history over sealed segments (`ib-stream storage seal`: zstd blocks with an index).

The store is made by the real tools: `storage import` of an original-format JSON Lines file
with ticks from two days ago (an hour that is over, so `seal` takes it), then `storage
seal`. The sealed store must give exactly the records the raw one gave; damage to a block
or to the index is a gap, and none of the damaged records comes out.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ib_stream as ibs
from conftest import ib_stream_bin

CID = 711280073
TOTAL = 9_700
TRADES = sum(1 for i in range(TOTAL) if i % 14 == 13)
QUOTES = TOTAL - TRADES  # more than two compressed blocks of 4096
KINDS = ("bid_ask", "last")


def storage(root: Path, *args: str) -> str:
    out = subprocess.run(
        [str(ib_stream_bin()), "storage", "--storage", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sealed")
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    t0 = int((hour - dt.timedelta(days=2)).timestamp()) * 1_000_000  # µs
    lines = []
    for i in range(TOTAL):
        st = t0 + i * 250_000  # 4 a second: 40 minutes, one hour
        if i % 14 == 13:
            px = 21_000 + (i % 37) * 0.25
            tick = {"ts": st - 900, "st": st, "cid": CID, "tt": "last", "p": px, "s": 1 + i % 5}
        else:
            bid = 21_000 + (i % 41) * 0.25
            tick = {
                "ts": st - 700,
                "st": st,
                "cid": CID,
                "tt": "bid_ask",
                "bp": bid,
                "bs": 1 + i % 9,
                "ap": bid + 0.25,
                "as": 2 + i % 7,
            }
        lines.append(json.dumps(tick))
    src = base / "mnq.jsonl"
    src.write_text("\n".join(lines) + "\n")
    root = base / "raw"
    storage(root, "import", str(src), "--to", "binary")
    return root


def sealed_copy(raw_root: Path, dst: Path) -> Path:
    root = dst / "sealed"
    shutil.copytree(raw_root, root)
    out = storage(root, "seal", "--level", "3")
    assert "2 sealed" in out and "0 left raw" in out, out
    return root


def quote_file(root: Path) -> Path:
    return next(root.glob(f"binary/*/*/*/*/{CID}_bid_ask_*.bin"))


def test_a_sealed_store_reads_exactly_as_the_raw_one(raw_root: Path, tmp_path: Path) -> None:
    raw = ibs.read_history(raw_root, CID, KINDS)
    assert len(raw) == TOTAL and not raw.gaps
    root = sealed_copy(raw_root, tmp_path)
    f = quote_file(root)
    assert f.read_bytes()[:8] == b"IBSBINZ\0"
    assert f.stat().st_size < (quote_file(raw_root).stat().st_size) // 3
    sealed = ibs.read_history(root, CID, KINDS)
    assert not sealed.gaps and sealed.unchecked == 0
    assert sealed.records.tobytes() == raw.records.tobytes()
    assert (sealed.epochs == raw.epochs).all()
    ts = raw.records["ts_recv"]
    lo, hi = int(ts[1000]), int(ts[8000])
    part = ibs.read_history(root, CID, ("bid_ask",), start=lo, end=hi)
    want = ibs.read_history(raw_root, CID, ("bid_ask",), start=lo, end=hi)
    assert len(part) > 4096 and part.records.tobytes() == want.records.tobytes()
    assert part.to_pandas().equals(want.to_pandas())


def index_entries(data: bytes) -> tuple[int, np.ndarray]:
    index_at = int.from_bytes(data[32:40], "little")
    nblocks = int.from_bytes(data[40:44], "little")
    dtype = np.dtype(
        [("offset", "<u8"), ("len", "<u4"), ("crc", "<u4"), ("first_seq", "<u8"),
         ("last_seq", "<u8"), ("first_ts", "<i8"), ("last_ts", "<i8")]
    )  # fmt: skip
    return index_at, np.frombuffer(data, dtype=dtype, count=nblocks, offset=index_at)


def test_a_damaged_compressed_block_is_a_gap_with_its_exact_range(
    raw_root: Path, tmp_path: Path
) -> None:
    root = sealed_copy(raw_root, tmp_path)
    f = quote_file(root)
    data = bytearray(f.read_bytes())
    _, entries = index_entries(bytes(data))
    assert len(entries) == 3
    b1 = entries[1]
    data[int(b1["offset"]) + int(b1["len"]) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    clean = ibs.read_history(raw_root, CID, ("bid_ask",))
    h = ibs.read_history(root, CID, ("bid_ask",))
    assert [g.reason for g in h.gaps] == ["corrupt_block"]
    g = h.gaps[0]
    assert (g.first_seq, g.last_seq) == (int(b1["first_seq"]), int(b1["last_seq"]))
    assert (g.t0_ns, g.t1_ns) == (int(b1["first_ts"]), int(b1["last_ts"]))
    seq = clean.records["seq"]
    lost = (seq >= g.first_seq) & (seq <= g.last_seq)
    assert lost.sum() == 4096
    assert h.records.tobytes() == clean.records[~lost].tobytes()


def test_a_damaged_index_serves_nothing_of_the_file(raw_root: Path, tmp_path: Path) -> None:
    root = sealed_copy(raw_root, tmp_path)
    f = quote_file(root)
    data = bytearray(f.read_bytes())
    index_at, _ = index_entries(bytes(data))
    data[index_at + 20] ^= 0x01  # block 0's first sequence
    f.write_bytes(bytes(data))
    h = ibs.read_history(root, CID, KINDS)
    assert [g.reason for g in h.gaps] == ["corrupt_header"]
    assert "index checksum mismatch" in (h.gaps[0].detail or "")
    assert set(h.records["kind"].tolist()) == {1}  # the trades' file is intact
    assert len(h) == TRADES
