"""The connection state machine shared by the sync and asyncio clients."""

from __future__ import annotations

import enum


class State(enum.Enum):
    DISCONNECTED = "disconnected"  # created, not started
    CONNECTING = "connecting"  # first connection attempt
    CONNECTED = "connected"  # the server's first message arrived
    RECONNECTING = "reconnecting"  # lost; waiting (backoff) or trying again
    CLOSED = "closed"  # closed by the user or every stream ended (terminal)
    FAILED = "failed"  # gave up: a refusal that retrying cannot cure, or max attempts (terminal)


TERMINAL = frozenset({State.CLOSED, State.FAILED})

# Every allowed transition; anything else is a bug in the client and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.DISCONNECTED: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.CONNECTED, State.RECONNECTING, State.CLOSED, State.FAILED}),
    State.CONNECTED: frozenset({State.RECONNECTING, State.CLOSED, State.FAILED}),
    State.RECONNECTING: frozenset({State.CONNECTED, State.CLOSED, State.FAILED}),
    State.CLOSED: frozenset(),
    State.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{old.value} -> {new.value} is not a transition of the client")
