"""Stored history (docs/STORAGE.md) read into numpy or pandas, checksums verified.

`read_history(storage, contract_id, kinds, start, end)` reads the recorder's files of one
contract: binary segments (`.bin` + `.crc` + `.strings`, mapped with numpy) or JSON Lines.
The same rules as the Rust reader (src/storage/query.rs) decide what is served:

- a header that does not verify: nothing of the file (a `corrupt_header` gap);
- a complete block whose CRC-32 differs from its `.crc` entry: none of its records (a
  `corrupt_block` gap with the sequences and times around it);
- the last block with an entry but fewer records: served if a prefix matches the entry
  (a reopened file being appended to), else the file ends before it (cut short);
- records after the last entry: the open tail, served unchecked (no checksum exists yet);
- bytes after the last whole record or line: a record being written, not read;
- a complete JSON line that does not decode: a `corrupt_line` gap;
- a sealed segment (`storage seal`: zstd blocks with an index, `IBSBINZ`): its header and
  index must verify (else a `corrupt_header` gap, nothing of the file); a compressed block
  whose CRC-32 differs, that does not decompress to its records, or whose records do not
  match their original checksums is a `corrupt_block` gap with the block's exact sequences
  and times from the index, and none of its records is returned.

Stored gap records (the system file of conId 0: disconnected, reader_overrun,
write_error, writer_restart) in the time range come as gaps too. A damaged value is never
returned.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from .records import (
    ASK_PAST_HIGH,
    BID_PAST_LOW,
    CAN_AUTO_EXECUTE,
    DELAYED,
    FROZEN,
    GAP_REASON_BY_NAME,
    GAP_REASONS,
    KIND_BY_NAME,
    KIND_NAME,
    L1_PAST_LIMIT,
    PAST_LIMIT,
    PRE_OPEN,
    PRICE_SCALE,
    RECORD_DTYPE,
    RECORD_SIZE,
    SIZE_SCALE,
    SNAPSHOT,
    STALE,
    UNDEF_I64,
    UNREPORTED,
    decode_columns,
)

log = logging.getLogger("ib_stream.history")

BIN_MAGIC = b"IBSBINR\0"
SEALED_MAGIC = b"IBSBINZ\0"
SEALED_HEADER_LEN = 128
STRINGS_MAGIC = b"IBSSTRF1"
HEADER_LEN = 64
_NAME = re.compile(r"^(\d+)_([a-z0-9_]+)_([0-9a-f]{16})\.(bin|jsonl)$")
_HEADER = struct.Struct("<8sIIIIQqqIB7sI")
# Sealed header's first 64 bytes (docs/STORAGE.md, "Sealed binary segments").
_SEALED = struct.Struct("<8sIIIIQQII12sI")
_INDEX_ENTRY = np.dtype(
    [
        ("offset", "<u8"),
        ("len", "<u4"),
        ("crc", "<u4"),
        ("first_seq", "<u8"),
        ("last_seq", "<u8"),
        ("first_ts", "<i8"),
        ("last_ts", "<i8"),
    ]
)
MARKET_KINDS = (
    "last",
    "all_last",
    "bid_ask",
    "mid_point",
    "l1_price",
    "l1_size",
    "l1_generic",
    "l1_string",
)


class HistoryError(Exception):
    """The storage cannot be read at all (no such directory, unknown kind or format)."""


@dataclass(frozen=True)
class HistoryGap:
    """Records that history does not hold. `reason`: a stored gap's (`disconnected`,
    `ib_connectivity`, `reader_overrun`, `write_error`, `writer_restart`) or damage
    (`corrupt_header`, `corrupt_block`, `corrupt_line`). Sequences and times (ns) are
    None when unknown."""

    reason: str
    epoch: int | None
    first_seq: int | None
    last_seq: int | None
    t0_ns: int | None
    t1_ns: int | None
    file: str | None = None
    detail: str | None = None


@dataclass
class History:
    """Stored records of one contract, merged across kinds in `ts_recv` order."""

    records: npt.NDArray[np.void]  # RECORD_DTYPE
    epochs: npt.NDArray[np.uint64]  # the engine run of each record
    gaps: list[HistoryGap]
    strings: dict[tuple[int, int], str] = field(default_factory=dict)
    unchecked: int = 0  # records of open tails served without a checksum (none exists yet)

    def __len__(self) -> int:
        return len(self.records)

    def columns(self) -> dict[str, Any]:
        return decode_columns(self.records, self.strings, self.epochs)

    def to_pandas(self) -> Any:
        """A DataFrame: one row a record, decoded columns (see `records.decode_columns`)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("to_pandas needs pandas: pip install 'ib-stream[pandas]'") from e
        df = pd.DataFrame(self.columns())
        df["ts_recv"] = df["ts_recv"].dt.tz_localize("UTC")
        df["ts_event"] = df["ts_event"].dt.tz_localize("UTC")
        df["epoch"] = [f"{int(e):016x}" for e in self.epochs]
        return df


def _ns(t: Any) -> int | None:
    if t is None:
        return None
    if isinstance(t, bool):
        raise TypeError("a time, not a bool")
    if isinstance(t, int):
        return t
    value = getattr(t, "value", None)  # pandas.Timestamp (a datetime, with ns)
    if isinstance(value, int):
        return value
    if isinstance(t, dt.datetime):
        d: dt.datetime = t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)
        whole = d.replace(microsecond=0)
        return int(whole.timestamp()) * 1_000_000_000 + d.microsecond * 1000
    if isinstance(t, np.datetime64):
        return int(t.astype("datetime64[ns]").astype(np.int64))
    raise TypeError(f"start/end: ns since the epoch, datetime or datetime64, not {type(t)}")


@dataclass(frozen=True)
class _Segment:
    path: Path
    hour_ns: int
    contract_id: int
    kind: str
    epoch: int


def _segments(
    root: Path, fmt: str, contract_id: int, kinds: Iterable[str], start: int | None, end: int | None
) -> list[_Segment]:
    base = root / fmt
    if not base.is_dir():
        return []
    want = set(kinds)
    ext = "bin" if fmt == "binary" else "jsonl"
    hour = 3_600_000_000_000
    out = []
    for dirpath, _dirs, files in os.walk(base):
        rel = Path(dirpath).relative_to(base).parts
        if len(rel) != 4:
            continue
        try:
            h = dt.datetime(int(rel[0]), int(rel[1]), int(rel[2]), int(rel[3]), tzinfo=dt.UTC)
        except ValueError:
            continue
        hns = int(h.timestamp()) * 1_000_000_000
        if (end is not None and hns >= end) or (start is not None and hns + hour <= start):
            continue
        for f in files:
            m = _NAME.match(f)
            if not m or m.group(4) != ext:
                continue
            cid, kind, epoch = int(m.group(1)), m.group(2), int(m.group(3), 16)
            if (cid == contract_id and kind in want) or (cid == 0 and kind == "system"):
                out.append(_Segment(Path(dirpath) / f, hns, cid, kind, epoch))
    out.sort(key=lambda s: (s.hour_ns, s.epoch, s.contract_id, s.kind))
    return out


# ---- binary ----------------------------------------------------------------------------


def _read_strings(path: Path, epoch: int, into: dict[tuple[int, int], str]) -> None:
    try:
        b = path.read_bytes()
    except FileNotFoundError:
        return
    if len(b) < 16 or b[:8] != STRINGS_MAGIC:
        return
    i = 16
    while i + 12 <= len(b):
        sid, n, crc = struct.unpack_from("<III", b, i)
        if i + 12 + n > len(b):
            break  # being written
        body = b[i + 12 : i + 12 + n]
        if zlib.crc32(body, zlib.crc32(b[i : i + 8])) != crc:
            log.warning("%s: bad string entry at byte %d; the rest is not used", path, i)
            break  # a bad entry ends the valid part
        into[(epoch, sid)] = body.decode("utf-8", "replace")
        i += 12 + n


def _read_binary(
    seg: _Segment, strings: dict[tuple[int, int], str], gaps: list[HistoryGap]
) -> tuple[npt.NDArray[np.void], int]:
    """The verified records of one segment and how many of them are unchecked (open tail)."""
    path = seg.path
    empty = np.empty(0, dtype=RECORD_DTYPE)
    # The .crc first, then the data, then the strings: the recorder writes strings,
    # records, checksums in that order, so what we read is always covered.
    try:
        crc_bytes = path.with_suffix(".crc").read_bytes()
    except FileNotFoundError:
        crc_bytes = b""
    data = path.read_bytes()
    if data[: len(SEALED_MAGIC)] == SEALED_MAGIC:
        return _read_sealed(seg, data, strings, gaps), 0  # a stale .crc beside it is ignored
    if len(data) < HEADER_LEN:
        return empty, 0  # just created
    hdr = data[:HEADER_LEN]
    block = _HEADER.unpack(hdr)[4]
    why = _raw_header_problem(hdr, seg.epoch)
    if why is not None:
        log.warning("%s: corrupt header: %s", path, why)
        gaps.append(HistoryGap("corrupt_header", seg.epoch, None, None, None, None, str(path), why))
        return empty, 0
    n = (len(data) - HEADER_LEN) // RECORD_SIZE
    body = np.frombuffer(data, dtype=np.uint8, count=n * RECORD_SIZE, offset=HEADER_LEN)
    recs = body.view(RECORD_DTYPE)
    entries = np.frombuffer(crc_bytes, dtype="<u4", count=len(crc_bytes) // 4)
    keep = np.ones(n, dtype=bool)
    end = n
    covered = 0
    for i, want in enumerate(entries.tolist()):
        s = i * block
        if s >= n:
            break  # entries for records not there (a damaged sidecar): nothing to serve
        e = min(s + block, n)
        raw = body[s * RECORD_SIZE : e * RECORD_SIZE].tobytes()
        if e - s == block:
            if zlib.crc32(raw) != want:
                keep[s:e] = False
                before = (int(recs["seq"][s - 1]), int(recs["ts_recv"][s - 1])) if s else None
                after = (int(recs["seq"][e]), int(recs["ts_recv"][e])) if e < n else None
                log.warning("%s: corrupt block %d (records %d..%d)", path, i, s, e)
                gaps.append(
                    HistoryGap(
                        "corrupt_block",
                        seg.epoch,
                        None if before is None else before[0] + 1,
                        None if after is None else after[0] - 1,
                        None if before is None else before[1],
                        None if after is None else after[1],
                        str(path),
                        f"block {i} at byte {HEADER_LEN + s * RECORD_SIZE}, {e - s} records",
                    )
                )
        else:
            # The last block, shorter than B: a matching prefix is what was checksummed.
            c = 0
            matched = False
            for k in range(e - s):
                c = zlib.crc32(raw[k * RECORD_SIZE : (k + 1) * RECORD_SIZE], c)
                if c == want:
                    matched = True
                    break
            if not matched:
                end = s  # cut inside the block: the end of what is stored
                break
        covered = e
    out = recs[:end][keep[:end]]
    _read_strings(path.with_suffix(".strings"), seg.epoch, strings)
    return out.copy(), max(0, end - covered)


def _raw_header_problem(hdr: bytes, epoch_of_name: int) -> str | None:
    """Why a raw segment's 64-byte header is not to be trusted, or None."""
    magic, ver, hlen, rsize, block, epoch, _hour, _created, _cid, _kind, _r, crc = _HEADER.unpack(
        hdr
    )
    if zlib.crc32(hdr[:60]) != crc:
        return "header checksum mismatch"
    if magic != BIN_MAGIC or ver != 1 or hlen != HEADER_LEN or rsize != RECORD_SIZE or block == 0:
        return f"not a version-1 segment (magic {magic!r}, version {ver})"
    if epoch != epoch_of_name:
        return f"header epoch {epoch:016x} differs from the file name's"
    return None


def _sealed_layout(data: bytes, epoch_of_name: int) -> tuple[Any, Any, int, int, int] | str:
    """The verified index of a sealed segment: (block entries, checksum entries, records,
    records per compressed block, records per checksum block), or why it cannot be trusted."""
    if len(data) < SEALED_HEADER_LEN:
        return "shorter than its header"
    _m, ver, hlen, per, codec, n, index_at, nblocks, ncrcs, _r, crc = _SEALED.unpack(data[:64])
    if zlib.crc32(data[:60]) != crc:
        return "sealed header checksum mismatch"
    if ver != 1 or hlen != SEALED_HEADER_LEN or codec != 1:
        return f"not a version-1 sealed segment (version {ver}, codec {codec})"
    why = _raw_header_problem(data[64:SEALED_HEADER_LEN], epoch_of_name)
    if why is not None:
        return f"raw header inside: {why}"
    crc_block = _HEADER.unpack(data[64:SEALED_HEADER_LEN])[4]
    if per == 0 or per % crc_block != 0 or nblocks != -(-n // per) or ncrcs != -(-n // crc_block):
        return "block counts do not agree with the record count"
    index_len = nblocks * _INDEX_ENTRY.itemsize + ncrcs * 4 + 4
    if index_at < SEALED_HEADER_LEN or index_at + index_len != len(data):
        return "index does not end the file"
    body = data[index_at : index_at + index_len - 4]
    if zlib.crc32(body) != struct.unpack_from("<I", data, index_at + index_len - 4)[0]:
        return "index checksum mismatch"
    entries = np.frombuffer(body, dtype=_INDEX_ENTRY, count=nblocks)
    crcs = np.frombuffer(body, dtype="<u4", count=ncrcs, offset=nblocks * _INDEX_ENTRY.itemsize)
    ends = entries["offset"] + entries["len"]
    if (entries["offset"] < SEALED_HEADER_LEN).any() or (ends > index_at).any():
        return "a block lies outside the data"
    return entries, crcs, n, per, crc_block


def _unseal_block(plane: bytes, n: int) -> npt.NDArray[np.void]:
    """Codec 1 undone: bytes regrouped by position back into records, word deltas summed."""
    deltas = np.frombuffer(plane, dtype=np.uint8).reshape(RECORD_SIZE, n).T.copy()
    words = np.cumsum(deltas.view("<u8"), axis=0, dtype=np.uint64)  # wraps, as written
    return words.view(RECORD_DTYPE).reshape(n)


def _read_sealed(
    seg: _Segment, data: bytes, strings: dict[tuple[int, int], str], gaps: list[HistoryGap]
) -> npt.NDArray[np.void]:
    """The verified records of a sealed segment (all of them are checked: no open tail)."""
    path = seg.path
    layout = _sealed_layout(data, seg.epoch)
    if isinstance(layout, str):
        log.warning("%s: corrupt header: %s", path, layout)
        gaps.append(
            HistoryGap("corrupt_header", seg.epoch, None, None, None, None, str(path), layout)
        )
        return np.empty(0, dtype=RECORD_DTYPE)
    entries, crcs, n, per, crc_block = layout
    dctx = zstandard.ZstdDecompressor()
    parts: list[npt.NDArray[np.void]] = []
    for k, e in enumerate(entries):
        count = min(per, n - k * per)
        off, length = int(e["offset"]), int(e["len"])
        frame = data[off : off + length]
        why = None
        recs = None
        if zlib.crc32(frame) != int(e["crc"]):
            why = "compressed block checksum mismatch"
        else:
            try:
                plane = dctx.decompressobj().decompress(frame)
            except zstandard.ZstdError as err:
                plane, why = b"", f"does not decompress: {err}"
            if why is None and len(plane) != count * RECORD_SIZE:
                why = f"decompresses to {len(plane)} bytes, not {count} records"
            if why is None:
                recs = _unseal_block(plane, count)
                raw = recs.tobytes()
                first = k * per // crc_block
                for j in range(-(-count // crc_block)):
                    chunk = raw[j * crc_block * RECORD_SIZE : (j + 1) * crc_block * RECORD_SIZE]
                    if zlib.crc32(chunk) != int(crcs[first + j]):
                        why = f"records differ from their checksum (entry {first + j})"
                        break
        if why is not None:
            log.warning("%s: corrupt compressed block %d: %s", path, k, why)
            gaps.append(
                HistoryGap(
                    "corrupt_block",
                    seg.epoch,
                    int(e["first_seq"]),
                    int(e["last_seq"]),
                    int(e["first_ts"]),
                    int(e["last_ts"]),
                    str(path),
                    f"sealed block {k} at byte {off}, {count} records: {why}",
                )
            )
            continue
        if recs is not None:
            parts.append(recs)
    _read_strings(path.with_suffix(".strings"), seg.epoch, strings)
    return np.concatenate(parts) if parts else np.empty(0, dtype=RECORD_DTYPE)


# ---- JSON Lines -----------------------------------------------------------------------


def _fixed(v: Any, scale: int) -> int:
    if v is None:
        return UNDEF_I64
    if not isinstance(v, Decimal | int) or isinstance(v, bool):
        raise ValueError("not a number")
    return int((Decimal(v) * scale).to_integral_exact())


def _line_record(
    o: dict[str, Any],
    rec: np.void,
    epoch: int,
    strings: dict[tuple[int, int], str],
    local: dict[str, int],
) -> None:
    """Fills `rec` from a decoded line (the inverse of src/tickjson.rs, exactly)."""

    def intern(s: Any) -> int:
        if s is None or s == "":
            return 0
        if not isinstance(s, str):
            raise ValueError("string field not a string")
        sid = local.get(s)
        if sid is None:
            # Ids of this read, per run (a JSON line carries its strings inline).
            sid = local[s] = len(local) + 1
            strings[(epoch, sid)] = s
        return sid

    def integer(k: str, default: int | None = None) -> int:
        v = o.get(k, default)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{k} missing or not an integer")
        return v

    kind_name = o["tt"]
    kind = KIND_BY_NAME[kind_name]
    rec["seq"] = integer("seq")
    rec["ts_recv"] = integer("st") * 1000 + integer("sn", 0)
    rec["ts_event"] = integer("ts") * 1000 + integer("tn", 0) if "ts" in o else UNDEF_I64
    rec["instrument_id"] = integer("cid")
    rec["kind"] = kind
    f = 0
    for k, bit in (("dl", DELAYED), ("fz", FROZEN), ("snap", SNAPSHOT), ("stale", STALE)):
        if o.get(k) is True:
            f |= bit
    tt = 0
    if kind in (1, 2):
        body = [
            _fixed(o.get("p"), PRICE_SCALE),
            _fixed(o.get("s"), SIZE_SCALE),
            intern(o.get("x")) | (intern(o.get("c")) << 32),
            0,
        ]
        f |= PAST_LIMIT if o.get("pl") is True else 0
        f |= UNREPORTED if o.get("upt") is True else 0
    elif kind == 3:
        body = [
            _fixed(o.get("bp"), PRICE_SCALE),
            _fixed(o.get("ap"), PRICE_SCALE),
            _fixed(o.get("bs"), SIZE_SCALE),
            _fixed(o.get("as"), SIZE_SCALE),
        ]
        f |= BID_PAST_LOW if o.get("bpl") is True else 0
        f |= ASK_PAST_HIGH if o.get("aph") is True else 0
    elif kind == 4:
        body = [_fixed(o.get("mp"), PRICE_SCALE), 0, 0, 0]
    elif kind == 16:
        tt = integer("f")
        body = [_fixed(o.get("p"), PRICE_SCALE), _fixed(o.get("s"), SIZE_SCALE), 0, 0]
        for k, bit in (("cae", CAN_AUTO_EXECUTE), ("pl", L1_PAST_LIMIT), ("po", PRE_OPEN)):
            if o.get(k) is True:
                f |= bit
    elif kind == 17:
        tt = integer("f")
        body = [_fixed(o.get("s"), SIZE_SCALE), 0, 0, 0]
    elif kind == 18:
        tt = integer("f")
        body = [_fixed(o.get("v"), PRICE_SCALE), 0, 0, 0]
    elif kind == 19:
        tt = integer("f")
        body = [intern(o.get("v")), 0, 0, 0]
    elif kind == 64:
        tt = GAP_REASON_BY_NAME.get(str(o.get("r")), 0)
        body = [integer("from"), integer("to"), integer("t0"), integer("t1")]
    else:
        body = [0, 0, 0, 0]  # system records other than gaps: not needed by readers here
    rec["tick_type"] = tt
    rec["flags"] = f
    rec["body"] = body


def _read_jsonl(
    seg: _Segment,
    strings: dict[tuple[int, int], str],
    gaps: list[HistoryGap],
    ids: dict[int, dict[str, int]],
) -> npt.NDArray[np.void]:
    data = seg.path.read_bytes()
    cut = data.rfind(b"\n") + 1  # bytes after the last newline: a line being written
    lines = data[:cut].split(b"\n")[:-1]
    out = np.zeros(len(lines), dtype=RECORD_DTYPE)
    keep = np.ones(len(lines), dtype=bool)
    local = ids.setdefault(seg.epoch, {})
    offset = 0
    for i, line in enumerate(lines):
        try:
            o = json.loads(line, parse_float=Decimal)
            if not isinstance(o, dict):
                raise ValueError("not an object")
            _line_record(o, out[i], seg.epoch, strings, local)
        except (ValueError, KeyError, TypeError, InvalidOperation, OverflowError) as e:
            keep[i] = False
            prev = out[i - 1] if i and keep[i - 1] else None
            log.warning("%s:%d: corrupt line: %s", seg.path, i + 1, e)
            gaps.append(
                HistoryGap(
                    "corrupt_line",
                    seg.epoch,
                    None if prev is None else int(prev["seq"]) + 1,
                    None,
                    None if prev is None else int(prev["ts_recv"]),
                    None,
                    str(seg.path),
                    f"line {i + 1} at byte {offset}: {e}",
                )
            )
        offset += len(line) + 1
    return out[keep]


# ---- the query --------------------------------------------------------------------------


def read_history(
    storage: str | os.PathLike[str],
    contract_id: int,
    kinds: Iterable[str] = ("bid_ask", "last"),
    start: Any = None,
    end: Any = None,
    *,
    format: str = "binary",
    as_pandas: bool = False,
) -> Any:
    """Stored ticks of `contract_id` with `ts_recv` in `[start, end)` (ns since the epoch,
    datetime or numpy/pandas times; None: unbounded), merged across `kinds` in receive-time
    order. `format`: `binary` or `jsonl`. Returns a `History` (numpy records, epochs, gaps)
    or, with `as_pandas=True`, a DataFrame whose `attrs["gaps"]` holds the gaps."""
    kinds = tuple(kinds)
    for k in kinds:
        if k not in MARKET_KINDS:
            raise HistoryError(f"unknown kind {k!r}; one of {', '.join(MARKET_KINDS)}")
    if format not in ("binary", "jsonl"):
        raise HistoryError("format must be 'binary' or 'jsonl'")
    root = Path(storage)
    if not root.is_dir():
        raise HistoryError(f"{root}: no such storage directory")
    lo, hi = _ns(start), _ns(end)
    strings: dict[tuple[int, int], str] = {}
    gaps: list[HistoryGap] = []
    parts: list[npt.NDArray[np.void]] = []
    epoch_parts: list[npt.NDArray[np.uint64]] = []
    unchecked = 0
    jsonl_ids: dict[int, dict[str, int]] = {}
    for seg in _segments(root, format, contract_id, kinds, lo, hi):
        seg_gaps: list[HistoryGap] = []
        if format == "binary":
            recs, unch = _read_binary(seg, strings, seg_gaps)
        else:
            recs, unch = _read_jsonl(seg, strings, seg_gaps, jsonl_ids), 0
        gaps.extend(g for g in seg_gaps if _overlaps(g, lo, hi))
        ts = recs["ts_recv"]
        sel = np.ones(len(recs), dtype=bool)
        if lo is not None:
            sel &= ts >= lo
        if hi is not None:
            sel &= ts < hi
        if seg.contract_id == 0:
            gaps.extend(_stored_gaps(recs[sel & (recs["kind"] == 64)], seg))
            continue
        unchecked += unch
        parts.append(recs[sel])
        epoch_parts.append(np.full(int(sel.sum()), seg.epoch, dtype=np.uint64))
    if parts:
        records = np.concatenate(parts)
        epochs = np.concatenate(epoch_parts)
        order = np.lexsort((records["seq"], epochs, records["ts_recv"]))
        records, epochs = records[order], epochs[order]
    else:
        records, epochs = np.empty(0, dtype=RECORD_DTYPE), np.empty(0, dtype=np.uint64)
    gaps.sort(key=lambda g: (g.t0_ns or 0, g.first_seq or 0))
    h = History(records, epochs, gaps, strings, unchecked)
    if as_pandas:
        df = h.to_pandas()
        df.attrs["gaps"] = gaps
        return df
    return h


def _overlaps(g: HistoryGap, lo: int | None, hi: int | None) -> bool:
    # Damage wholly outside the range asked is stepped over, as the Rust reader does;
    # unknown times count as inside (never hide damage that may concern the range).
    if lo is not None and g.t1_ns is not None and g.t1_ns < lo:
        return False
    return not (hi is not None and g.t0_ns is not None and g.t0_ns >= hi)


def _stored_gaps(recs: npt.NDArray[np.void], seg: _Segment) -> Iterator[HistoryGap]:
    for r in recs:
        b = [int(x) for x in r["body"]]
        yield HistoryGap(
            GAP_REASONS.get(int(r["tick_type"]), f"#{int(r['tick_type'])}"),
            seg.epoch,
            b[0] or None,
            None if b[1] in (0, UNDEF_I64) else b[1],
            None if b[2] == UNDEF_I64 else b[2],
            None if b[3] == UNDEF_I64 else b[3],
            str(seg.path),
        )


__all__ = ["KIND_NAME", "History", "HistoryError", "HistoryGap", "read_history"]
