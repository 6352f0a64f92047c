"""In-process reader of the engine's shared-memory tick ring (ipc/README.md, "Ring protocol").

The ring file is mapped read-only and viewed as a numpy array of 64-byte records
(`RECORD_DTYPE`, ipc/src/record.rs). Records are read in batches: a batch is copied out
of the ring with one numpy copy, then checked record by record against the sequence lock.

Why the check is sound from Python (copy-and-recheck, not a single seqlock read):

1. `head` is read first. The writer stores `head` (release) only after every record of its
   batch was published (`W[0] = s`, release), so every record up to `head` was complete
   at least once; records past `head` are never read.
2. The batch is copied (`copy.seq` is each slot's sequence word as the copy saw it), then
   the sequence words are read again from the ring (`s2`). A record is accepted only when
   both equal its expected sequence. Overwriting a slot starts with the store
   `W[0] = s + N | WRITING` followed by a release fence before any payload store, so if
   the copy saw any byte of a later record, the re-read (which comes after the copy)
   sees a sequence word other than the expected one, and the record is rejected (lapped).
   `copy.seq` guards against a torn or early `head`: a slot still holding an older lap
   fails it.
3. Ordering of our loads: the copy and the re-read are separate numpy calls, so the
   compiler cannot merge or reorder them, and on x86-64 (TSO, the platform ib-stream
   supports) the CPU does not reorder loads with older loads. On weakly ordered CPUs
   (aarch64) nothing in Python gives an acquire fence between the two, so the reader
   refuses to run there unless `allow_weak_ordering=True` is passed knowingly.

Liveness follows the Rust `RingReader::writer_status`: replaced (another file at the path:
a restarted writer), stopped (clean exit), gone (no such process), stale (old heartbeat).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import platform
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .records import RECORD_DTYPE, RECORD_SIZE

log = logging.getLogger("ib_stream.ring")

RING_MAGIC = 0x00474E4952534249  # "IBSRING\0"
RING_VERSION = 1
SLOTS_OFFSET = 4096
WRITING_BIT = 1 << 63
STATE_STOPPED = 2
_OFF_HEAD = 64
_OFF_HEARTBEAT = 128
_OFF_STATE = 136
_U64 = struct.Struct("<Q")


class RingError(Exception):
    """The ring file cannot be read: missing, not a ring, or of another layout."""


@dataclass(frozen=True)
class RingInfo:
    path: str
    capacity: int
    epoch: int
    created_ns: int
    pid: int

    @property
    def epoch_hex(self) -> str:
        return f"{self.epoch:016x}"


@dataclass(frozen=True)
class Lost:
    """Sequences `first_seq..=last_seq` were overwritten before this reader read them."""

    first_seq: int
    last_seq: int
    count: int


@dataclass(frozen=True)
class WriterRestart:
    """A restarted writer replaced the ring: the old run was read up to `old_last_seq`."""

    old_epoch: int
    new_epoch: int
    old_last_seq: int
    clean: bool


@dataclass(frozen=True)
class Batch:
    records: npt.NDArray[np.void]  # RECORD_DTYPE, a copy owned by the caller
    lost: Lost | None = None
    restart: WriterRestart | None = None
    writer: str | None = None  # a writer state change: alive, stale, stopped, gone


def _check_platform(allow: bool) -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64") and not allow:
        raise RingError(
            f"RingReader relies on x86-64 load ordering; this CPU is {machine!r} "
            "(pass allow_weak_ordering=True to accept the risk of torn records)"
        )


class RingReader:
    """Reads records of `ticks.ring` in sequence order, in batches.

    `start`: `"newest"` (the next record published), `"oldest"` (the oldest still in the
    ring) or a sequence number of the current run. `lap_margin` is the Rust reader's
    `LapPolicy::Oldest { margin }` (default capacity / 8); `lap_margin=None` with
    `newest_after_lap=True` is `LapPolicy::Newest`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        start: str | int = "newest",
        *,
        lap_margin: int | None = None,
        newest_after_lap: bool = False,
        stale_after: float = 5.0,
        check_every: float = 0.1,
        allow_weak_ordering: bool = False,
    ) -> None:
        _check_platform(allow_weak_ordering)
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / "ticks.ring"
        self._margin_cfg = lap_margin
        self._newest_after_lap = newest_after_lap
        self._stale_after_ns = int(stale_after * 1e9)
        self._check_every = check_every
        self._last_check = 0.0
        self._writer_state: str | None = None
        self._map(start)

    # ---- mapping ---------------------------------------------------------------------

    def _map(self, start: str | int) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise RingError(f"{self.path}: no ring (is the engine running?)") from None
        except PermissionError:
            raise RingError(f"{self.path}: permission denied (the ring's group?)") from None
        try:
            st = os.fstat(fd)
            if st.st_size < SLOTS_OFFSET:
                raise RingError(f"{self.path}: {st.st_size} bytes, shorter than the header")
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        magic, version, rsize, cap, slots_off, epoch, created, pid = struct.unpack_from(
            "<QIIQQQQI", mm, 0
        )
        err = None
        if magic != RING_MAGIC:
            err = f"bad magic {magic:#x}: not an ib-stream ring"
        elif version != RING_VERSION:
            err = f"layout version {version}, this reader knows {RING_VERSION}"
        elif rsize != RECORD_SIZE:
            err = f"record size {rsize}, expected {RECORD_SIZE}"
        elif cap < 2 or cap > 1 << 32 or cap & (cap - 1):
            err = f"capacity {cap} is not a power of two in 2..=2^32"
        elif slots_off != SLOTS_OFFSET:
            err = f"slots offset {slots_off}, expected {SLOTS_OFFSET}"
        elif len(mm) < SLOTS_OFFSET + RECORD_SIZE * cap:
            err = f"{len(mm)} bytes, too small for {cap} slots"
        if err is not None:
            mm.close()
            raise RingError(f"{self.path}: {err}")
        self._mm = mm
        self._ino = (st.st_dev, st.st_ino)
        self.info = RingInfo(str(self.path), cap, epoch, created, pid)
        self._cap = cap
        self._mask = cap - 1
        self._slots = np.frombuffer(mm, dtype=RECORD_DTYPE, count=cap, offset=SLOTS_OFFSET)
        self._seqs = self._slots["seq"]  # a strided view of every slot's sequence word
        self._raw = np.frombuffer(mm, dtype=np.uint8, count=cap * RECORD_SIZE, offset=SLOTS_OFFSET)
        head = self.head()
        if start == "newest":
            self._next = head + 1
        elif start == "oldest":
            self._next = max(1, head + 1 - cap)
        elif isinstance(start, int) and start >= 1:
            self._next = start
        else:
            raise ValueError(f"start must be 'newest', 'oldest' or a sequence >= 1, not {start!r}")

    def close(self) -> None:
        # Views into the mapping must go before it can close.
        self._seqs = np.empty(0, dtype=np.uint64)
        self._slots = np.empty(0, dtype=RECORD_DTYPE)
        self._raw = np.empty(0, dtype=np.uint8)
        try:
            self._mm.close()
        except BufferError:
            log.debug("ring mapping still referenced; left to the garbage collector")

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- header words ------------------------------------------------------------------

    def _word(self, off: int) -> int:
        return int(_U64.unpack_from(self._mm, off)[0])

    def head(self) -> int:
        """The last published sequence (0: none yet)."""
        return self._word(_OFF_HEAD)

    def heartbeat_ns(self) -> int:
        return self._word(_OFF_HEARTBEAT)

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def epoch(self) -> int:
        return self.info.epoch

    def lag(self) -> int:
        return max(0, self.head() - (self._next - 1))

    # ---- reading -----------------------------------------------------------------------

    def _lap(self, seen: int) -> Lost:
        e = self._next
        cap = self._cap
        newest = max(self.head(), seen)
        if self._newest_after_lap:
            resume = newest
        else:
            margin = cap // 8 if self._margin_cfg is None else self._margin_cfg
            resume = max(1, newest + 1 - cap) + min(margin, cap - 1)
        resume = min(max(resume, e + 1), max(newest, e + 1))
        self._next = resume
        lost = Lost(e, resume - 1, resume - e)
        log.warning("ring reader lapped: lost %d..=%d (%d records)", e, resume - 1, resume - e)
        return lost

    def read_batch(self, max_records: int = 65536) -> Batch:
        """Up to `max_records` records in sequence order, or the range lost to a lap
        (then no records: the next call reads from where the lap policy resumed)."""
        e = self._next
        head = self.head()
        if head < e:
            return Batch(_EMPTY)
        cap = self._cap
        if head - e + 1 > cap:
            return Batch(_EMPTY, lost=self._lap(head))
        n = min(head - e + 1, max_records)
        i0 = (e - 1) & self._mask
        first = min(n, cap - i0)
        out = np.empty(n, dtype=RECORD_DTYPE)
        # Copied as bytes: numpy copies a structured dtype field by field, ten times slower.
        ob = out.view(np.uint8)
        raw = self._raw
        ob[: first * RECORD_SIZE] = raw[i0 * RECORD_SIZE : (i0 + first) * RECORD_SIZE]
        if first < n:
            ob[first * RECORD_SIZE :] = raw[: (n - first) * RECORD_SIZE]
        # The re-read of the sequence words, after the copy (see the module comment).
        s2 = np.empty(n, dtype=np.uint64)
        s2[:first] = self._seqs[i0 : i0 + first]
        if first < n:
            s2[first:] = self._seqs[: n - first]
        want = np.arange(e, e + n, dtype=np.uint64)
        ok = (out["seq"] == want) & (s2 == want)
        if ok.all():
            self._next = e + n
            return Batch(out)
        j = int(np.argmin(ok))
        bad = max(int(s2[j]), int(out["seq"][j])) & ~WRITING_BIT
        if j > 0:
            # Deliver the good prefix; the bad slot is examined again on the next call.
            self._next = e + j
            return Batch(out[:j].copy())
        if bad <= e:
            return Batch(_EMPTY)  # not there yet (cannot happen below head, but be safe)
        return Batch(_EMPTY, lost=self._lap(bad))

    # ---- the writer --------------------------------------------------------------------

    def writer_status(self, now_ns: int | None = None) -> str:
        """`replaced`, `stopped`, `gone`, `stale` or `alive` (ipc/README.md, liveness)."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self._ino:
                return "replaced"
        except FileNotFoundError:
            pass  # removed, not replaced: judge the writer we have
        if self._word(_OFF_STATE) == STATE_STOPPED:
            return "stopped"
        try:
            os.kill(self.info.pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            pass  # alive, another user's
        now = time.time_ns() if now_ns is None else now_ns
        hb = self.heartbeat_ns() or self.info.created_ns
        return "stale" if now - hb > self._stale_after_ns else "alive"

    def reopen(self, start: str | int = 1) -> int:
        """Map the file now at the path (a restarted writer's ring); returns its epoch."""
        old_mm = self._mm
        self._seqs = np.empty(0, dtype=np.uint64)
        self._slots = np.empty(0, dtype=RECORD_DTYPE)
        self._raw = np.empty(0, dtype=np.uint8)
        self._map(start)
        with contextlib.suppress(BufferError):
            old_mm.close()
        return self.info.epoch

    def poll(self, max_records: int = 65536) -> Batch:
        """Like `read_batch`, and follows the writer the way the Rust `RingFollower` does:
        when nothing is new (at most every `check_every` s) it looks at the writer and
        reports a state change (`Batch.writer`), or a restart (`Batch.restart`, after
        reading the old ring to its end), then goes on at sequence 1 of the new ring."""
        b = self.read_batch(max_records)
        if len(b.records) or b.lost is not None:
            return b
        now = time.monotonic()
        if now - self._last_check < self._check_every:
            return b
        self._last_check = now
        status = self.writer_status()
        if status == "replaced":
            drained = self.read_batch(max_records)
            if len(drained.records) or drained.lost is not None:
                return drained  # the old run first; the swap is seen again next time
            old_epoch = self.info.epoch
            old_last = self._next - 1
            clean = self._word(_OFF_STATE) == STATE_STOPPED
            try:
                new_epoch = self.reopen(1)
            except RingError as e:
                log.warning("ring replaced but cannot be reopened yet: %s", e)
                return b
            self._writer_state = None
            r = WriterRestart(old_epoch, new_epoch, old_last, clean)
            log.warning(
                "ring writer restarted: epoch %016x -> %016x, old run read to %d (clean=%s)",
                old_epoch,
                new_epoch,
                old_last,
                clean,
            )
            return Batch(_EMPTY, restart=r)
        if status != self._writer_state:
            self._writer_state = status
            if status != "alive":
                log.warning("ring writer %s (pid %d)", status, self.info.pid)
            return Batch(_EMPTY, writer=status)
        return b


_EMPTY: npt.NDArray[np.void] = np.empty(0, dtype=RECORD_DTYPE)
