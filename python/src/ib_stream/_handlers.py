"""A handler registry that any thread may change while the client dispatches.

Changes take a lock and publish a new immutable tuple; dispatch reads the current tuple
without the lock (one attribute load, atomic in CPython), so a handler added or removed
from another thread takes effect from the next message and never breaks an iteration.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class HandlerRegistry(Generic[T]):
    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._entries: tuple[tuple[int, Callable[[T], object]], ...] = ()
        self._log = logger
        self._what = what
        self.errors = 0

    def add(self, fn: Callable[[T], object]) -> int:
        with self._lock:
            hid = next(self._ids)
            self._entries = (*self._entries, (hid, fn))
            return hid

    def remove(self, handle: int) -> bool:
        with self._lock:
            kept = tuple(e for e in self._entries if e[0] != handle)
            found = len(kept) != len(self._entries)
            self._entries = kept
            return found

    def __len__(self) -> int:
        return len(self._entries)

    def dispatch(self, item: T) -> None:
        for hid, fn in self._entries:
            try:
                fn(item)
            except Exception:
                # Isolated: logged with its traceback, counted, the stream goes on.
                self.errors += 1
                self._log.exception("%s handler %d (%r) raised on %r", self._what, hid, fn, item)
