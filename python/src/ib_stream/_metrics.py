"""Counters and the health snapshot of a client."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ._state import State


@dataclass
class Metrics:
    """Counters since the client was created. Read a consistent copy with `client.metrics()`."""

    messages: int = 0  # every message received (ticks and control)
    ticks: int = 0  # ticks delivered to handlers
    bytes: int = 0  # payload bytes received
    duplicates: int = 0  # ticks dropped because they were already delivered (resume overlap)
    reconnects: int = 0  # connections made after the first
    connect_failures: int = 0
    gaps: int = 0  # gap messages
    gap_ticks: int = 0  # sum of known gap counts
    engine_restarts: int = 0  # gap{writer_restart} seen
    frame_errors: int = 0  # malformed, partial or unexpected frames
    handler_errors: int = 0  # exceptions raised by handlers (logged, isolated)
    silent_deaths: int = 0  # connections dropped because nothing arrived within the timeout
    server_errors: int = 0  # error messages from the server
    last_message_wall: float | None = None  # time.time() of the last message
    last_tick_st_us: int | None = None  # engine receive time of the last tick
    lag_us: int | None = None  # wall clock minus `st` at the last tick (server-to-here lag)

    def copy(self) -> Metrics:
        return replace(self)


@dataclass(frozen=True)
class Health:
    state: State
    healthy: bool
    seconds_since_message: float | None
    heartbeat_timeout: float
    active_subscriptions: int
    last_error: str | None
    reasons: tuple[str, ...]


def health_of(
    state: State,
    last_rx_monotonic: float | None,
    heartbeat_timeout: float,
    active: int,
    last_error: str | None,
) -> Health:
    since = None if last_rx_monotonic is None else time.monotonic() - last_rx_monotonic
    reasons: list[str] = []
    if state is not State.CONNECTED:
        reasons.append(f"state {state.value}")
    if since is not None and since > heartbeat_timeout:
        reasons.append(f"nothing received for {since:.1f} s (timeout {heartbeat_timeout:.1f} s)")
    return Health(
        state=state,
        healthy=not reasons,
        seconds_since_message=since,
        heartbeat_timeout=heartbeat_timeout,
        active_subscriptions=active,
        last_error=last_error,
        reasons=tuple(reasons),
    )
