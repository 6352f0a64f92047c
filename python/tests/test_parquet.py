"""Parquet from the binary (issue 14): `storage export --format parquet` and `studies bars
--format parquet` write files pandas reads directly (through pyarrow), with typed columns
that hold the same values as the CSV of the same ticks.

The store is made by the real tools: `storage import` of an original-format JSON Lines file
(quotes and trades of one contract over a few minutes two days ago).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ib_stream_bin

CID = 711280073
TOTAL = 2_000


def run(*args: str) -> str:
    out = subprocess.run(
        [str(ib_stream_bin()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{args}: {out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The storage root and the RFC 3339 interval that holds every tick."""
    base = tmp_path_factory.mktemp("parquet")
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - dt.timedelta(days=2)
    t0 = int(start.timestamp()) * 1_000_000  # µs
    lines = []
    for i in range(TOTAL):
        st = t0 + i * 150_000 + (i * 7919) % 100_000
        if i % 5 == 4:
            px = 21_000 + (i % 37) * 0.25
            tick = {"ts": st - 900, "st": st, "cid": CID, "tt": "last", "p": px, "s": 1 + i % 5}
        else:
            bid = 21_000 + (i % 41) * 0.25
            tick = {"ts": st - 700, "st": st, "cid": CID, "tt": "bid_ask", "bp": bid,
                    "bs": 1 + i % 9, "ap": bid + 0.25, "as": 2 + i % 7}  # fmt: skip
        lines.append(json.dumps(tick))
    src = base / "mnq.jsonl"
    src.write_text("\n".join(lines) + "\n")
    root = base / "store"
    run("storage", "--storage", str(root), "import", str(src), "--to", "binary")
    end = start + dt.timedelta(minutes=10)
    return root, start.isoformat(), end.isoformat()


def test_export_parquet_reads_in_pandas_as_the_csv_says(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, start, end = store
    common = ["storage", "--storage", str(root), "export", "--con-id", str(CID),
              "--start", start, "--end", end]  # fmt: skip
    csv_path = tmp_path / "ticks.csv"
    csv_path.write_text(run(*common, "--format", "csv"))
    pq_path = tmp_path / "ticks.parquet"
    run(*common, "--format", "parquet", "--out", str(pq_path))

    csv = pd.read_csv(csv_path)
    pq = pd.read_parquet(pq_path)
    assert len(pq) == len(csv) == TOTAL
    # Typed columns: no parsing needed.
    assert str(pq["ts_recv"].dtype) == "datetime64[ns, UTC]"
    assert str(pq["ts_event"].dtype) == "datetime64[ns, UTC]"
    assert isinstance(pq["kind"].dtype, pd.CategoricalDtype)
    for col in ("price", "size", "bid_price", "bid_size", "ask_price", "ask_size"):
        assert pq[col].dtype == np.float64, col
        assert np.array_equal(pq[col].to_numpy(), csv[col].to_numpy(), equal_nan=True), col
    assert (pq["ts_recv"] == pd.to_datetime(csv["ts_recv_ns"], unit="ns", utc=True)).all()
    assert (pq["ts_event"] == pd.to_datetime(csv["ts_event_ns"], unit="ns", utc=True)).all()
    assert (pq["seq"].to_numpy() == csv["seq"].to_numpy()).all()
    assert (pq["kind"].astype(str).to_numpy() == csv["kind"].to_numpy()).all()
    assert set(pq["kind"].astype(str)) == {"bid_ask", "last"}
    # A trade's price and a quote's sides, as imported.
    trades = pq[pq["kind"] == "last"]
    assert len(trades) == TOTAL // 5
    assert trades["bid_price"].isna().all() and not trades["price"].isna().any()


def test_bars_parquet_reads_in_pandas_as_the_csv_says(
    store: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, start, end = store
    common = ["studies", "bars", "--con-id", str(CID), "--storage", str(root),
              "--from", start, "--to", end, "--size", "1m", "--tz", "UTC"]  # fmt: skip
    csv_path = tmp_path / "bars.csv"
    csv_path.write_text(run(*common, "--format", "csv"))
    pq_path = tmp_path / "bars.parquet"
    run(*common, "--format", "parquet", "--out", str(pq_path))

    csv = pd.read_csv(csv_path)
    pq = pd.read_parquet(pq_path)
    assert len(pq) == len(csv) >= 5
    assert str(pq["start"].dtype) == "datetime64[ns, UTC]"
    assert (pq["start"] == pd.to_datetime(csv["start"], utc=True)).all()
    assert (pq["end"] == pd.to_datetime(csv["end"], utc=True)).all()
    for col in ("open", "high", "low", "close", "volume", "vwap"):
        assert pq[col].dtype == np.float64, col
        assert np.array_equal(pq[col].to_numpy(), csv[col].to_numpy(), equal_nan=True), col
    assert (pq["count"].to_numpy() == csv["count"].to_numpy()).all()
    assert pq["count"].sum() == TOTAL // 5
    assert (pq["final"].to_numpy() == csv["final"].to_numpy()).all()
    assert not pq["gap"].any() and pq["gap_from"].isna().all()

    # The same bars from pandas' own resampling of the exported ticks' Parquet.
    ticks = tmp_path / "ticks.parquet"
    run("storage", "--storage", str(root), "export", "--con-id", str(CID), "--kinds", "last",
        "--start", start, "--end", end, "--format", "parquet", "--out", str(ticks))  # fmt: skip
    trades = pd.read_parquet(ticks).set_index("ts_recv")
    ohlc = trades["price"].resample("1min").ohlc().dropna()
    assert (ohlc.index == pq["start"]).all()
    for col in ("open", "high", "low", "close"):
        assert (ohlc[col].to_numpy() == pq[col].to_numpy()).all(), col
    volume = trades["size"].resample("1min").sum()
    assert (volume.loc[ohlc.index].to_numpy() == pq["volume"].to_numpy()).all()
