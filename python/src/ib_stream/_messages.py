"""Typed messages of the web protocol (docs/PROTOCOL.md) as the client delivers them.

A tick keeps the server's JSON object as parsed (`Tick.data`): building a full object per
tick would cost more than the rest of the client's work per tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JsonObject = dict[str, Any]


class Tick:
    """One tick: the compact tick JSON (docs/STORAGE.md keys) and the run it belongs to."""

    __slots__ = ("data", "epoch", "subscription")

    def __init__(self, data: JsonObject, epoch: str | None, subscription: Subscription) -> None:
        self.data = data
        self.epoch = epoch
        self.subscription = subscription

    @property
    def seq(self) -> int:
        return int(self.data["seq"])

    @property
    def contract_id(self) -> int:
        return int(self.data["cid"])

    @property
    def tick_type(self) -> str:
        return str(self.data["tt"])

    @property
    def st(self) -> int:
        """Engine receive time, µs since the Unix epoch."""
        return int(self.data["st"])

    @property
    def token(self) -> str | None:
        """The resume token `<epoch>-<seq>` naming this tick."""
        return None if self.epoch is None else f"{self.epoch}-{self.data['seq']}"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __repr__(self) -> str:
        return f"Tick({self.data!r}, epoch={self.epoch!r})"


@dataclass(frozen=True, slots=True)
class Control:
    """A control message (`type` present). `data` is the message as sent."""

    data: JsonObject
    subscription: Subscription | None

    @property
    def type(self) -> str:
        return str(self.data.get("type"))

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass(frozen=True, slots=True)
class Info(Control):
    @property
    def status(self) -> str:
        return str(self.data.get("status"))


@dataclass(frozen=True, slots=True)
class Gap(Control):
    """Ticks were lost: `first_seq..=last_seq` (either may be None when unknown)."""

    @property
    def reason(self) -> str:
        return str(self.data.get("reason"))

    @property
    def first_seq(self) -> int | None:
        v = self.data.get("first_seq")
        return None if v is None else int(v)

    @property
    def last_seq(self) -> int | None:
        v = self.data.get("last_seq")
        return None if v is None else int(v)

    @property
    def count(self) -> int | None:
        v = self.data.get("count")
        return None if v is None else int(v)

    @property
    def is_engine_restart(self) -> bool:
        """The engine restarted (a new run): sequences start again at 1 under `new_epoch`."""
        return self.reason == "writer_restart"


@dataclass(frozen=True, slots=True)
class ServerError(Control):
    @property
    def code(self) -> str:
        return str(self.data.get("code"))

    @property
    def message(self) -> str:
        return str(self.data.get("message"))

    @property
    def recoverable(self) -> bool:
        return bool(self.data.get("recoverable", False))


@dataclass(frozen=True, slots=True)
class Complete(Control):
    @property
    def reason(self) -> str:
        return str(self.data.get("reason"))


@dataclass(frozen=True, slots=True)
class Heartbeat(Control):
    pass


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame the client could not use (malformed, partial, unexpected). Counted in the
    metrics; the stream goes on."""

    why: str
    raw: bytes | str


Message = Tick | Control | FrameError

_CONTROL_TYPES: dict[str, type[Control]] = {
    "info": Info,
    "gap": Gap,
    "error": ServerError,
    "complete": Complete,
    "heartbeat": Heartbeat,
}


def control_from(data: JsonObject, sub: Subscription | None) -> Control:
    cls = _CONTROL_TYPES.get(str(data.get("type")), Control)
    return cls(data, sub)


# The tick kinds (`tt`) a requested tick type delivers.
TICK_KINDS: dict[str, tuple[str, ...]] = {
    "bid_ask": ("bid_ask",),
    "last": ("last",),
    "all_last": ("all_last",),
    "mid_point": ("mid_point",),
    "mktdata": ("l1_price", "l1_size", "l1_generic", "l1_string"),
}


@dataclass(eq=False)
class Subscription:
    """One stream: a contract and tick types, with its resume position.

    `epoch`/`last_seq` are the position of the last tick delivered (or announced lost): a
    reconnect asks for what follows `token`.
    """

    contract_id: int
    tick_types: tuple[str, ...] = ("bid_ask", "last")
    since: str | float | None = None
    limit: int | None = None
    timeout: int | None = None
    slow: str = "conflate"
    resume_token: str | None = None
    # Position and state (owned by the client's event loop).
    epoch: str | None = field(default=None, init=False)
    last_seq: int = field(default=0, init=False)
    delivered: int = field(default=0, init=False)
    stream_id: str | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)
    end_reason: str | None = field(default=None, init=False)
    refused: ServerError | None = field(default=None, init=False)
    # error{slow_consumer} seen: the complete{error} that follows is resumed, not an end.
    slow_consumer_closed: bool = field(default=False, init=False, repr=False)
    # unsubscribe() came while the server had not yet named the stream (its subscribe in
    # flight, or re-sent after a reconnect): sent as soon as `subscribed` names it.
    unsubscribe_wanted: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tick_types = tuple(self.tick_types)
        for t in self.tick_types:
            if t not in TICK_KINDS:
                raise ValueError(f"unknown tick type {t!r} (one of {sorted(TICK_KINDS)})")
        if self.slow not in ("conflate", "disconnect"):
            raise ValueError("slow must be 'conflate' or 'disconnect'")
        if self.resume_token is not None:
            self._set_token(self.resume_token)

    def _set_token(self, token: str) -> None:
        epoch, sep, seq = token.rpartition("-")
        if not sep or len(epoch) != 16 or not seq.isdigit():
            raise ValueError(f"resume token {token!r} is not '<16 hex digits>-<seq>'")
        int(epoch, 16)
        self.epoch, self.last_seq = epoch, int(seq)

    @property
    def token(self) -> str | None:
        """`<epoch>-<seq>` after the last tick delivered, or None before any position."""
        return None if self.epoch is None else f"{self.epoch}-{self.last_seq}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for t in self.tick_types for k in TICK_KINDS[t])
