"""The 64-byte record (ipc/src/record.rs) as a numpy structured dtype, and its decoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

RECORD_SIZE = 64
PRICE_SCALE = 1_000_000_000
SIZE_SCALE = 100_000_000
UNDEF_I64 = (1 << 63) - 1

# Byte for byte the Rust `Record` (little-endian): offsets 0, 8, 16, 24, 28, 29, 30, 32.
RECORD_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("ts_recv", "<i8"),
        ("ts_event", "<i8"),
        ("instrument_id", "<u4"),
        ("kind", "u1"),
        ("tick_type", "u1"),
        ("flags", "<u2"),
        ("body", "<i8", (4,)),
    ],
    align=False,
)
assert RECORD_DTYPE.itemsize == RECORD_SIZE

KIND_BY_NAME: dict[str, int] = {
    "last": 1,
    "all_last": 2,
    "bid_ask": 3,
    "mid_point": 4,
    "l1_price": 16,
    "l1_size": 17,
    "l1_generic": 18,
    "l1_string": 19,
    "gap": 64,
    "connection": 65,
    "subscription": 66,
    "heartbeat": 67,
}
KIND_NAME: dict[int, str] = {v: k for k, v in KIND_BY_NAME.items()}
GAP_REASONS: dict[int, str] = {
    1: "disconnected",
    2: "ib_connectivity",
    3: "reader_overrun",
    4: "write_error",
    5: "writer_restart",
}
GAP_REASON_BY_NAME = {v: k for k, v in GAP_REASONS.items()}

# Flag bits (record.rs `flags`).
DELAYED, FROZEN, SNAPSHOT, STALE = 1, 2, 4, 8
PAST_LIMIT, UNREPORTED = 1 << 8, 1 << 9
BID_PAST_LOW, ASK_PAST_HIGH = 1 << 8, 1 << 9
CAN_AUTO_EXECUTE, L1_PAST_LIMIT, PRE_OPEN = 1 << 8, 1 << 9, 1 << 10


def _scaled(col: npt.NDArray[np.int64], scale: int, mask: npt.NDArray[np.bool_]) -> Any:
    out = col.astype(np.float64) / scale
    out[(col == UNDEF_I64) | ~mask] = np.nan
    return out


def decode_columns(
    records: npt.NDArray[np.void],
    strings: dict[tuple[int, int], str] | None = None,
    epochs: npt.NDArray[np.uint64] | None = None,
) -> dict[str, Any]:
    """Columns of decoded values (prices and sizes as float, times as datetime64[ns]),
    NaN where a column does not apply to a record's kind or IB sent nothing."""
    kind = records["kind"]
    body = records["body"]
    trade = (kind == 1) | (kind == 2)
    quote = kind == 3
    l1p = kind == 16
    cols: dict[str, Any] = {
        "seq": records["seq"],
        "ts_recv": records["ts_recv"].astype("datetime64[ns]"),
        "ts_event": np.where(
            records["ts_event"] == UNDEF_I64, np.iinfo(np.int64).min, records["ts_event"]
        ).astype("datetime64[ns]"),
        "contract_id": records["instrument_id"],
        "kind": np.array([KIND_NAME.get(int(k), f"#{k}") for k in kind], dtype=object),
        "tick_type": records["tick_type"],
        "flags": records["flags"],
        "price": _scaled(body[:, 0], PRICE_SCALE, trade | l1p | (kind == 4) | (kind == 18)),
        "size": _scaled(
            np.where(kind == 17, body[:, 0], body[:, 1]), SIZE_SCALE, trade | l1p | (kind == 17)
        ),
        "bid_price": _scaled(body[:, 0], PRICE_SCALE, quote),
        "ask_price": _scaled(body[:, 1], PRICE_SCALE, quote),
        "bid_size": _scaled(body[:, 2], SIZE_SCALE, quote),
        "ask_size": _scaled(body[:, 3], SIZE_SCALE, quote),
    }
    if epochs is not None:
        cols["epoch"] = epochs
    if strings is not None and epochs is not None:
        ex = np.full(len(records), "", dtype=object)
        cond = np.full(len(records), "", dtype=object)
        for i in np.flatnonzero(trade):
            w = int(body[i, 2])
            e = int(epochs[i])
            ex[i] = strings.get((e, w & 0xFFFFFFFF), "")
            cond[i] = strings.get((e, (w >> 32) & 0xFFFFFFFF), "")
        cols["exchange"] = ex
        cols["conditions"] = cond
    return cols
