"""Collecting what a client delivers and checking it against what the recorder stored."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import numpy as np

import ib_stream as ibs
from conftest import CONTRACT, System, wait_until


class Collector:
    """A thread-safe handler that keeps every message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.msgs: list[ibs.Message] = []

    def __call__(self, m: ibs.Message) -> None:
        with self.lock:
            self.msgs.append(m)

    def ticks(self) -> list[ibs.Tick]:
        with self.lock:
            return [m for m in self.msgs if isinstance(m, ibs.Tick)]

    def of(self, cls: type[Any]) -> list[Any]:
        with self.lock:
            return [m for m in self.msgs if isinstance(m, cls)]

    def gaps(self, reason: str | None = None) -> list[ibs.Gap]:
        return [g for g in self.of(ibs.Gap) if reason is None or g.reason == reason]

    def tick_count(self) -> int:
        return len(self.ticks())


def by_epoch(ticks: list[ibs.Tick]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for t in ticks:
        assert t.epoch is not None
        out[t.epoch].append(t.seq)
    return dict(out)


def assert_exact(system: System, ticks: list[ibs.Tick], kinds: tuple[str, ...]) -> None:
    """Every tick once, in order, and exactly the stored ones of the same runs between the
    first and the last delivered (the recorder's binary files are the reference)."""
    assert ticks, "no ticks delivered"
    runs = by_epoch(ticks)
    # Runs in delivery order, each strictly increasing (no duplicate, no reordering).
    order = list(dict.fromkeys(t.epoch for t in ticks))
    assert order == list(runs), f"runs interleaved: {order}"
    for epoch, seqs in runs.items():
        assert seqs == sorted(set(seqs)), f"run {epoch}: duplicates or out of order"

        def stored(epoch: str = epoch, last: int = seqs[-1]) -> Any:
            h = ibs.read_history(system.storage, CONTRACT, kinds)
            sel = h.records[h.epochs == np.uint64(int(epoch, 16))]["seq"]
            return [sel] if len(sel) and int(sel.max()) >= last else None

        got = wait_until(f"the recorder to store run {epoch} to {seqs[-1]}", stored, 30)
        want = [int(s) for s in np.sort(got[0]) if seqs[0] <= s <= seqs[-1]]
        missing = sorted(set(want) - set(seqs))
        extra = sorted(set(seqs) - set(want))
        assert not missing and not extra, (
            f"run {epoch}: {len(missing)} stored ticks not delivered {missing[:10]}, "
            f"{len(extra)} delivered ticks not stored {extra[:10]}"
        )
