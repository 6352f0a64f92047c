"""StreamClient against the real system: first programs, handlers under concurrency,
isolation of a raising handler, history then live, metrics and health."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

import pytest

import ib_stream as ibs
from conftest import CONTRACT, System, wait_until
from helpers import Collector, assert_exact

KINDS = ("bid_ask", "last")


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_sync_client_delivers_exact_ticks_then_closes(
    shared_system: System, transport: str
) -> None:
    got = Collector()
    states: list[ibs.StateChange] = []
    sub = ibs.Subscription(CONTRACT, KINDS, limit=200)
    c = ibs.StreamClient(shared_system.url, [sub], transport=transport)
    c.on_state(states.append)
    c.add_handler(got)
    assert c.state is ibs.State.DISCONNECTED
    with c:
        assert c.state in (ibs.State.CONNECTING, ibs.State.CONNECTED)
        assert c.wait(60), "the stream did not complete"
        m = c.metrics()
        h = c.health()
    assert [s.new for s in states] == [ibs.State.CONNECTING, ibs.State.CONNECTED, ibs.State.CLOSED]
    assert c.state is ibs.State.CLOSED
    assert sub.end_reason == "limit_reached" and sub.delivered == 200
    ticks = got.ticks()
    assert len(ticks) == 200 and m.ticks == 200
    assert m.bytes > 0 and m.messages > 200 and m.lag_us is not None and m.frame_errors == 0
    assert not h.healthy and h.state is ibs.State.CLOSED
    assert got.of(ibs.Complete)[-1].reason == "limit_reached"
    assert all(t.contract_id == CONTRACT and t.tick_type in KINDS for t in ticks)
    assert_exact(shared_system, ticks, KINDS)


def test_async_client_iterates_and_reports_every_transition(shared_system: System) -> None:
    async def main() -> tuple[list[ibs.Message], list[ibs.StateChange]]:
        seen: list[ibs.StateChange] = []
        out: list[ibs.Message] = []
        c = ibs.AsyncStreamClient(shared_system.url, [ibs.Subscription(CONTRACT, KINDS, limit=50)])
        c.on_state(seen.append)
        assert c.state is ibs.State.DISCONNECTED
        async with c:
            async for msg in c:
                out.append(msg)
            assert c.health().active_subscriptions == 0
        return out, seen

    msgs, seen = asyncio.run(asyncio.wait_for(main(), 60))
    assert [(s.old, s.new) for s in seen] == [
        (ibs.State.DISCONNECTED, ibs.State.CONNECTING),
        (ibs.State.CONNECTING, ibs.State.CONNECTED),
        (ibs.State.CONNECTED, ibs.State.CLOSED),
    ]
    assert sum(isinstance(m, ibs.Tick) for m in msgs) == 50
    assert isinstance(msgs[-1], ibs.Complete)


def test_handlers_added_and_removed_from_many_threads_while_ticks_flow(
    shared_system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """200 add/remove operations from 8 threads while ticks flow; a raising handler is
    isolated and logged with its traceback; the stream never stops."""
    base = Collector()
    sub = ibs.Subscription(CONTRACT, KINDS)
    calls = [0]

    def boom(m: ibs.Message) -> None:
        calls[0] += 1
        if isinstance(m, ibs.Tick) and calls[0] % 7 == 0:
            raise ValueError("handler bug")

    with (
        caplog.at_level(logging.ERROR, logger="ib_stream.client"),
        ibs.StreamClient(shared_system.url, [sub]) as c,
    ):
        c.add_handler(base)
        c.add_handler(boom)
        wait_until("ticks", lambda: base.tick_count() > 20, 30)
        errors: list[BaseException] = []
        ops = [0]
        lock = threading.Lock()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[int] = []
            try:
                for _ in range(25):
                    if mine and rng.random() < 0.5:
                        assert c.remove_handler(mine.pop(rng.randrange(len(mine))))
                    else:
                        mine.append(c.add_handler(lambda m: None))
                    with lock:
                        ops[0] += 1
                    time.sleep(rng.random() / 200)
                for h in mine:
                    assert c.remove_handler(h)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        before = base.tick_count()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert ops[0] == 200
        wait_until("more ticks", lambda: base.tick_count() > before + 50, 30)
        m = c.metrics()
        assert c.state is ibs.State.CONNECTED
    assert m.handler_errors >= 1
    rec = [r for r in caplog.records if "raised" in r.getMessage()]
    assert rec and rec[0].exc_info is not None, "the handler's traceback was not logged"
    assert "ValueError: handler bug" in caplog.text
    seqs = [t.seq for t in base.ticks()]
    assert seqs == sorted(set(seqs))


def test_since_replays_history_then_goes_live(shared_system: System) -> None:
    wait_until("some history", lambda: shared_system.health().get("status") == "healthy", 30)
    time.sleep(1.0)
    got = Collector()
    sub = ibs.Subscription(CONTRACT, KINDS, since="1h", limit=400)
    with ibs.StreamClient(shared_system.url, [sub]) as c:
        c.add_handler(got)
        assert c.wait(60)
    statuses = [i.status for i in got.of(ibs.Info)]
    assert "history_start" in statuses
    ticks = got.ticks()
    assert len(ticks) == 400
    assert_exact(shared_system, ticks, KINDS)


def test_unsubscribe_and_subscribe_while_running(shared_system: System) -> None:
    got = Collector()
    a = ibs.Subscription(CONTRACT, ("bid_ask",))
    with ibs.StreamClient(shared_system.url, [a], close_when_done=False) as c:
        c.add_handler(got)
        wait_until("ticks", lambda: got.tick_count() > 5, 30)
        c.unsubscribe(a)
        wait_until("unsubscribed", lambda: a.done, 30)
        assert a.end_reason == "unsubscribed"
        b = ibs.Subscription(CONTRACT, ("last",))
        c.subscribe(b)
        wait_until("the new stream's start", lambda: b.stream_id is not None, 30)
        assert c.state is ibs.State.CONNECTED


def test_refused_subscription_does_not_stop_the_others(shared_system: System) -> None:
    got = Collector()
    ok = ibs.Subscription(CONTRACT, ("bid_ask",))
    dup = ibs.Subscription(CONTRACT, ("bid_ask",))
    with ibs.StreamClient(shared_system.url, [ok, dup]) as c:
        c.add_handler(got)
        wait_until("the refusal", lambda: dup.done, 30)
        n = got.tick_count()
        wait_until("ticks after it", lambda: got.tick_count() > n + 10, 30)
    assert dup.refused is not None and dup.refused.code == "duplicate_subscription"
    assert not ok.done or ok.end_reason != "refused"


def test_failed_after_max_attempts_when_nothing_listens() -> None:
    from conftest import free_port

    states: list[ibs.StateChange] = []
    c = ibs.StreamClient(
        f"http://127.0.0.1:{free_port()}",
        [ibs.Subscription(CONTRACT)],
        max_attempts=3,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    c.on_state(states.append)
    c.start()
    assert c.wait(30)
    c.close()
    assert [s.new for s in states] == [
        ibs.State.CONNECTING,
        ibs.State.RECONNECTING,
        ibs.State.FAILED,
    ]
    assert c.metrics().connect_failures == 4
    assert "3 attempts failed" in states[-1].reason


def test_a_bad_request_fails_without_retrying(shared_system: System) -> None:
    c = ibs.StreamClient(
        shared_system.url, [ibs.Subscription(CONTRACT, limit=10**9)], transport="sse"
    )
    c.start()
    assert c.wait(30)
    c.close()
    assert c.state is ibs.State.FAILED
    assert c.health().last_error is not None and "400" in c.health().last_error
