"""Pieces without a server: the transition table, backoff, tokens, the handler registry."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import pytest

import ib_stream as ibs
from ib_stream._handlers import HandlerRegistry
from ib_stream._state import check_transition
from ib_stream.client import _backoff

S = ibs.State
ALLOWED = {
    (S.DISCONNECTED, S.CONNECTING), (S.DISCONNECTED, S.CLOSED),
    (S.CONNECTING, S.CONNECTED), (S.CONNECTING, S.RECONNECTING), (S.CONNECTING, S.CLOSED),
    (S.CONNECTING, S.FAILED),
    (S.CONNECTED, S.RECONNECTING), (S.CONNECTED, S.CLOSED), (S.CONNECTED, S.FAILED),
    (S.RECONNECTING, S.CONNECTED), (S.RECONNECTING, S.CLOSED), (S.RECONNECTING, S.FAILED),
}  # fmt: skip


@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
def test_every_transition_is_allowed_or_refused(old: ibs.State, new: ibs.State) -> None:
    if (old, new) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(ibs.InvalidTransition):
            check_transition(old, new)


def test_close_before_start_is_closed() -> None:
    seen: list[ibs.StateChange] = []
    c = ibs.StreamClient("http://127.0.0.1:1", [ibs.Subscription(1)])
    c.on_state(seen.append)
    c._client._set_state(S.CLOSED, "closed before start")
    assert [(s.old, s.new) for s in seen] == [(S.DISCONNECTED, S.CLOSED)]


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt in range(1, 20):
        step = min(10.0, 0.2 * 2 ** (attempt - 1))
        d = [_backoff(attempt, 0.2, 10.0, rng) for _ in range(50)]
        assert all(step / 2 <= x <= step for x in d)
        assert len(set(d)) > 1  # jitter


def test_tokens_and_parameters_are_checked() -> None:
    s = ibs.Subscription(5, resume_token="22872d15be0476b4-1842")
    assert (s.epoch, s.last_seq, s.token) == ("22872d15be0476b4", 1842, "22872d15be0476b4-1842")
    for bad in ("1842", "xyz-1", "22872d15be0476b4-", "22872d15be0476bz-3"):
        with pytest.raises(ValueError):
            ibs.Subscription(5, resume_token=bad)
    with pytest.raises(ValueError, match="unknown tick type"):
        ibs.Subscription(5, ("bids",))
    with pytest.raises(ValueError, match="exactly one"):
        ibs.StreamClient("http://x:1", [ibs.Subscription(1), ibs.Subscription(2)], transport="sse")
    with pytest.raises(ValueError, match="http"):
        ibs.StreamClient("ws://x:1/v3/ws")
    assert ibs.Subscription(5, ("mktdata",)).kinds == ("l1_price", "l1_size", "l1_generic",
                                                       "l1_string")  # fmt: skip


def test_a_raising_handler_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    reg: HandlerRegistry[int] = HandlerRegistry(logging.getLogger("t"), "message")
    seen: list[int] = []

    def bad(x: int) -> None:
        raise RuntimeError(f"bad {x}")

    reg.add(bad)
    h = reg.add(seen.append)
    with caplog.at_level(logging.ERROR):
        reg.dispatch(1)
    assert seen == [1] and reg.errors == 1
    assert caplog.records[0].exc_info is not None and "RuntimeError: bad 1" in caplog.text
    assert reg.remove(h) and not reg.remove(h)
    reg.dispatch(2)
    assert seen == [1]


def _ws_client_with_stream(slow: str) -> tuple[ibs.AsyncStreamClient, ibs.Subscription]:
    import asyncio

    sub = ibs.Subscription(7, ("bid_ask",), slow=slow)
    c = ibs.AsyncStreamClient("http://127.0.0.1:1", [sub])
    c._outbox = asyncio.Queue()
    c._queue_subscribe(sub)
    req = c._outbox.get_nowait()
    c._streams["ws-1-1"] = sub
    sub.stream_id = "ws-1-1"
    sub.epoch, sub.last_seq = "22872d15be0476b4", 41
    assert req["type"] == "subscribe"
    return c, sub


def test_complete_error_after_slow_consumer_resumes_but_after_a_rejection_ends() -> None:
    import asyncio
    import json

    async def run(code: str) -> tuple[ibs.Subscription, list[dict[str, object]]]:
        c, sub = _ws_client_with_stream("disconnect")
        for msg in (
            {"type": "error", "code": code, "message": "x", "recoverable": True,
             "stream_id": "ws-1-1"},
            {"type": "complete", "reason": "error", "count": 3, "stream_id": "ws-1-1"},
        ):  # fmt: skip
            await c._on_ws_frame(json.dumps(msg))
        assert c._outbox is not None
        sent = []
        while not c._outbox.empty():
            sent.append(c._outbox.get_nowait())
        return sub, sent

    sub, sent = asyncio.run(run("slow_consumer"))
    assert not sub.done
    assert [r["after_seq"] for r in sent] == ["22872d15be0476b4-41"]
    sub, sent = asyncio.run(run("subscription_rejected"))
    assert sub.done and sub.end_reason == "error" and sent == []


def test_an_sse_client_learns_the_heartbeat_period_from_stream_start() -> None:
    import asyncio

    async def run() -> float:
        sub = ibs.Subscription(7, ("bid_ask",))
        c = ibs.AsyncStreamClient("http://127.0.0.1:1", [sub], transport="sse")
        before = c.health().heartbeat_timeout
        ev = (
            b'event: info\ndata: {"type":"info","status":"stream_start","epoch":"22872d15be0476b4",'
            b'"ring_head":3,"heartbeat_seconds":4,"stream_id":"sse-1"}'
        )
        await c._on_sse_event(ev, sub)
        assert before == 35.0, "assumed until the server says"
        return c.health().heartbeat_timeout

    assert asyncio.run(run()) == 2.0 * 4 + 5.0


def test_sse_tick_runs_parse_at_once_and_odd_events_one_by_one() -> None:
    import asyncio

    ea, eb = b"22872d15be0476b4", b"33872d15be0476b4"

    def tick(epoch: bytes, seq: int) -> bytes:
        return (
            b"event: tick\nid: %s-%d\ndata: "
            b'{"seq":%d,"st":1767277800123456,"cid":7,"tt":"bid_ask","bp":1.5}\n\n'
        ) % (epoch, seq, seq)

    class Resp:
        def __init__(self, data: bytes) -> None:
            self.data = data

        async def aiter_raw(self) -> AsyncIterator[bytes]:
            for i in range(0, len(self.data), 100):  # events cut across reads
                yield self.data[i : i + 100]

    body = b"".join(tick(ea, s) for s in range(1, 6))
    body += b"".join(tick(ea, s) for s in range(3, 8))  # 3..5 again: dropped
    body += b'event: tick\nid: 22872d15be0476b4-8\ndata: {"seq":8,\n\n'  # malformed
    body += b"".join(tick(ea, s) for s in (9, 10)) + b"".join(tick(eb, s) for s in (1, 2))

    async def run() -> tuple[list[tuple[str | None, int]], ibs.Metrics, list[ibs.FrameError]]:
        sub = ibs.Subscription(7, ("bid_ask",))
        c = ibs.AsyncStreamClient("http://127.0.0.1:1", [sub], transport="sse", on_malformed="skip")
        got: list[tuple[str | None, int]] = []
        errs: list[ibs.FrameError] = []
        c.add_handler(lambda m: got.append((m.epoch, m.seq)) if isinstance(m, ibs.Tick) else None)
        c.add_handler(lambda m: errs.append(m) if isinstance(m, ibs.FrameError) else None)
        await c._pump_sse(Resp(body), sub)  # type: ignore[arg-type]
        return got, c.metrics(), errs

    got, m, errs = asyncio.run(run())
    a, b = ea.decode(), eb.decode()
    assert got == [(a, s) for s in (1, 2, 3, 4, 5, 6, 7, 9, 10)] + [(b, 1), (b, 2)]
    assert m.duplicates == 3 and m.ticks == 11 and m.frame_errors == 1
    assert len(errs) == 1 and "malformed JSON" in errs[0].why
