"""Faults against the real processes: the web server and the engine killed and restarted
under `ib-stream up`, a connection cut in the middle of a frame, a link that goes silent,
a slow consumer, a thousand subscriptions on one connection, corrupted frames.

Delivery is checked against the recorder's files: every tick once, in order (or a gap)."""

from __future__ import annotations

import signal
import threading
import urllib.request
from collections.abc import Iterator

import pytest

import ib_stream as ibs
from conftest import CONTRACT, System, wait_until
from helpers import Collector, assert_exact
from proxy import Proxy

KINDS = ("bid_ask", "last")


@pytest.fixture
def proxy(system: System) -> Iterator[Proxy]:
    p = Proxy(system.port)
    try:
        yield p
    finally:
        p.close()


def run_client(
    url: str, transport: str, **kw: object
) -> tuple[ibs.StreamClient, Collector, list[ibs.StateChange]]:
    got = Collector()
    states: list[ibs.StateChange] = []
    c = ibs.StreamClient(url, [ibs.Subscription(CONTRACT, KINDS)], transport=transport,
                         backoff_initial=0.05, backoff_max=0.5, **kw)  # fmt: skip
    c.on_state(states.append)
    c.add_handler(got)
    c.start()
    return c, got, states


def more_ticks(got: Collector, n: int, within: float = 60) -> None:
    base = got.tick_count()
    wait_until(f"{n} more ticks", lambda: got.tick_count() >= base + n, within)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_web_server_killed_and_restarted_mid_stream(system: System, transport: str) -> None:
    c, got, states = run_client(system.url, transport)
    try:
        more_ticks(got, 200)
        system.kill("serve", signal.SIGKILL)
        system.restarted("serve")
        wait_until("a reconnect", lambda: c.metrics().reconnects >= 1, 60)
        more_ticks(got, 200)
    finally:
        c.close()
    news = [s.new for s in states]
    assert ibs.State.RECONNECTING in news
    i = news.index(ibs.State.RECONNECTING)
    assert news[i + 1] is ibs.State.CONNECTED
    assert not got.gaps("resume_unavailable")
    assert_exact(system, got.ticks(), KINDS)  # every tick once, in order: overlap never twice


def test_unsubscribe_right_after_a_reconnect_ends_the_stream(system: System, proxy: Proxy) -> None:
    """unsubscribe() in the window after a reconnect, when the subscribes are re-sent but the
    server has not named the new streams yet: the old connection's stream id means nothing
    on the new one (the same server numbers its streams per connection), so the client must
    wait for the new id and end that stream."""
    quotes = ibs.Subscription(CONTRACT, ("bid_ask",))
    trades = ibs.Subscription(CONTRACT, ("last",))
    c = ibs.StreamClient(proxy.url, [quotes, trades], close_when_done=False,
                         backoff_initial=0.05, backoff_max=0.5)  # fmt: skip
    asked = threading.Event()
    old_ids: list[str | None] = []

    def on_state(ch: ibs.StateChange) -> None:
        # Runs on the client's loop at CONNECTED, before the subscribes go out again; the
        # call lands right after them (call_soon_threadsafe), before any answer is read.
        if ch.new is ibs.State.CONNECTED and c.metrics().reconnects >= 1 and not asked.is_set():
            asked.set()
            c.unsubscribe(quotes)

    c.on_state(on_state)
    c.start()
    try:
        wait_until("ticks of both", lambda: quotes.delivered > 20 and trades.delivered > 5, 60)
        old_ids.append(quotes.stream_id)
        proxy.cut_after = 7  # cut the connection inside the next server frame
        wait_until("the unsubscribe after the reconnect", asked.is_set, 60)
        wait_until("the quotes' stream ended", lambda: quotes.done, 30)
        assert quotes.end_reason == "unsubscribed"
        assert proxy.connections == 2 and trades.stream_id not in old_ids
        n = quotes.delivered
        base = trades.delivered
        wait_until("trades go on", lambda: trades.delivered >= base + 20, 60)
        assert quotes.delivered == n, "ticks of an ended subscription"
        assert not trades.done and c.state is ibs.State.CONNECTED
    finally:
        c.close()


def test_engine_restart_is_a_visible_event_and_the_new_run_follows(system: System) -> None:
    c, got, _ = run_client(system.url, "ws")
    try:
        more_ticks(got, 200)
        old_epoch = got.ticks()[-1].epoch
        system.kill("engine", signal.SIGKILL)
        system.restarted("engine")
        wait_until("the restart gap", lambda: got.gaps("writer_restart"), 60)
        more_ticks(got, 200)
    finally:
        c.close()
    gap = got.gaps("writer_restart")[0]
    assert gap.is_engine_restart and gap.get("epoch") == old_epoch
    new_epoch = gap.get("new_epoch")
    assert new_epoch != old_epoch and gap.get("clean") is False
    ticks = got.ticks()
    epochs = list(dict.fromkeys(t.epoch for t in ticks))
    assert epochs == [old_epoch, new_epoch]
    # The restart notice sits exactly between the two runs.
    with got.lock:
        pos = got.msgs.index(gap)
        before = [m for m in got.msgs[:pos] if isinstance(m, ibs.Tick)]
        after = [m for m in got.msgs[pos:] if isinstance(m, ibs.Tick)]
    assert {t.epoch for t in before} == {old_epoch} and {t.epoch for t in after} == {new_epoch}
    assert c.metrics().engine_restarts == 1
    assert_exact(system, ticks, KINDS)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_connection_dropped_mid_frame_resumes_exactly(
    system: System, proxy: Proxy, transport: str
) -> None:
    c, got, _ = run_client(proxy.url, transport)
    try:
        more_ticks(got, 100)
        proxy.cut_after = 2000
        wait_until("the cut", lambda: proxy.cuts == 1, 30)
        wait_until("a reconnect", lambda: c.metrics().reconnects >= 1, 30)
        more_ticks(got, 200)
    finally:
        c.close()
    assert proxy.connections >= 2
    assert c.metrics().frame_errors == 0  # a partial frame is never parsed as a message
    assert_exact(system, got.ticks(), KINDS)


def test_a_silent_connection_is_detected_from_the_heartbeat(system: System, proxy: Proxy) -> None:
    c, got, states = run_client(proxy.url, "ws", heartbeat_timeout=1.5)
    try:
        more_ticks(got, 100)
        proxy.frozen = True
        wait_until("silent death", lambda: c.metrics().silent_deaths >= 1, 30)
        assert not c.health().healthy
        proxy.frozen = False
        wait_until("a reconnect", lambda: c.metrics().reconnects >= 1, 30)
        more_ticks(got, 200)
        assert c.health().healthy
    finally:
        c.close()
    assert any("silent" in s.reason for s in states if s.new is ibs.State.RECONNECTING)
    assert_exact(system, got.ticks(), KINDS)


@pytest.fixture
def fast_system() -> Iterator[System]:
    s = System(rate=1000)
    try:
        yield s
    finally:
        s.stop()


# Known defect, under investigation (issue 13's note): on a quiet machine, in about one run in
# three to five, the server counts its conflation or slow close, yet nothing more reaches the
# client after its stall ends (no gap or error, no tick, no heartbeat) for 60 s. Runs and
# reports XPASS/XFAIL; the Rust client's real-process tests cover both policies.
@pytest.mark.parametrize("policy", ["conflate", "disconnect"])
def test_slow_consumer(fast_system: System, policy: str) -> None:
    """A handler that stalls the client (a second web server with a 16-message stream
    queue) until that server has acted on it: with `conflate` the server drops ticks and says
    so (gap{slow_client}, exact counts); with `disconnect` the stream ends with
    error{slow_consumer} and the client resumes it at once on the same connection, losing
    nothing. The stall ends when the server's metrics show it acted (how much the kernel's
    socket buffers absorb first depends on the machine), bounded.

    The client's receive buffer is 128 KiB: small, so the stall fills it soon, but no smaller
    than two of loopback's 64 KiB segments. Below one segment (it was 4 KiB) TCP falls back to
    zero-window probes with a growing backoff after the stall, and the server's send buffer
    drained at some 7 KB/s: the stream looked silent for minutes."""
    url = fast_system.extra_server("--queue-capacity", "16")
    got = Collector()
    stall = threading.Event()
    release = threading.Event()

    def slow(m: ibs.Message) -> None:
        if isinstance(m, ibs.Tick) and not stall.is_set():
            stall.set()
            release.wait(90)

    metric = (
        "ib_stream_serve_conflated_ticks_total"
        if policy == "conflate"
        else "ib_stream_serve_slow_client_closes_total"
    )

    def server_acted() -> bool:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return any(
            line.startswith(metric + " ") and float(line.split()[-1]) > 0
            for line in text.splitlines()
        )

    sub = ibs.Subscription(CONTRACT, KINDS, slow=policy)
    c = ibs.StreamClient(url, [sub], recv_buffer_bytes=128 * 1024)
    c.add_handler(got)
    c.add_handler(slow)
    c.start()
    try:
        wait_until("the stall", stall.is_set, 60)
        try:
            wait_until(f"the server's {metric}", server_acted, 80)
        finally:
            release.set()
        if policy == "conflate":
            wait_until("the slow-client gap", lambda: got.gaps("slow_client"), 60)
        else:
            wait_until(
                "the slow-consumer error",
                lambda: any(e.code == "slow_consumer" for e in got.of(ibs.ServerError)),
                60,
            )
        more_ticks(got, 300)
        assert c.state is ibs.State.CONNECTED
        assert c.metrics().reconnects == 0
    finally:
        c.close()
    ticks = got.ticks()
    seqs = [t.seq for t in ticks]
    assert seqs == sorted(set(seqs)), "a slow consumer must never see ticks twice or reordered"
    if policy == "conflate":
        # Every tick stored in the range is delivered or counted in a slow_client gap.
        for g in got.gaps("slow_client"):
            assert g.count and g.first_seq is not None and g.last_seq is not None
            assert g.first_seq <= g.last_seq
        dropped = sum(g.count or 0 for g in got.gaps("slow_client"))
        with pytest.raises(AssertionError, match=f"{dropped} stored ticks not delivered"):
            assert_exact(fast_system, ticks, KINDS)
    else:
        assert not sub.done
        assert_exact(fast_system, ticks, KINDS)


def test_a_thousand_subscriptions_on_one_connection_get_the_servers_clear_refusal(
    shared_system_for_limits: System,
) -> None:
    system = shared_system_for_limits
    got = Collector()
    # More distinct streams tws-sim serves than a connection may hold (20), then contracts
    # IB knows nothing of: 1,000 subscriptions, each a different (contract, tick type).
    universe = [711280073, 495512563, 563947738, 212921504, 265598, 272093, 756733,
                12087792, 12087797, 15016059]  # fmt: skip
    subs = [ibs.Subscription(CONTRACT, ("bid_ask",))]
    subs += [ibs.Subscription(c, ("mktdata",)) for c in universe]
    subs += [ibs.Subscription(c, (t,)) for t in ("last", "mid_point") for c in universe[1:]]
    subs += [ibs.Subscription(900_000 + i, ("bid_ask",)) for i in range(1000 - len(subs))]
    assert len(subs) == 1000
    c = ibs.StreamClient(system.url, subs, close_when_done=False)
    c.add_handler(got)
    c.start()
    try:
        wait_until("an answer to every subscription",
                   lambda: all(s.stream_id is not None or s.refused is not None for s in subs),
                   90)  # fmt: skip
        n = got.tick_count()
        wait_until("ticks after the refusals", lambda: got.tick_count() > n + 20, 30)
        assert c.state is ibs.State.CONNECTED
        assert c.metrics().reconnects == 0
    finally:
        c.close()
    # Every subscription got a clear answer: opened (the first 12: the server's stream cap,
    # IB_STREAM_MAX_STREAMS=12 here, below the 20 a connection may hold), refused by the
    # engine (IB allows few tick-by-tick subscriptions), or refused by the server at the
    # cap (`too_many_streams`): every one of the 986 contracts IB does not know. The
    # tracked contract's stream is still open and delivering.
    assert not subs[0].done and subs[0].refused is None
    opened = [s for s in subs if s.refused is None]
    assert len(opened) == 12 and all(s.stream_id is not None and not s.done for s in opened)
    codes = [s.refused.code for s in subs if s.refused is not None]
    assert set(codes) <= {"too_many_streams", "subscription_refused"}, set(codes)
    assert all(s.refused is not None and s.refused.code == "too_many_streams" for s in subs[14:])


@pytest.fixture(scope="module")
def shared_system_for_limits() -> Iterator[System]:
    s = System(settings=("IB_STREAM_MAX_STREAMS=12",))
    try:
        yield s
    finally:
        s.stop()


def corrupt_one_tick(
    proxy: Proxy, transport: str, on_malformed: str
) -> tuple[ibs.StreamClient, Collector]:
    """Streams through the proxy, which breaks the JSON of one tick in flight (same length, so
    the WebSocket and HTTP framing stay intact); returns after 100 ticks more."""
    c, got, _ = run_client(proxy.url, transport, on_malformed=on_malformed)
    try:
        more_ticks(got, 100)
        proxy.corrupt = (b'{"seq":', b'{"seq"!')
        wait_until("the corrupted frame", lambda: c.metrics().frame_errors == 1, 30)
        more_ticks(got, 100)
    finally:
        c.close()
    errs = got.of(ibs.FrameError)
    assert len(errs) == 1 and "malformed JSON" in errs[0].why
    return c, got


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_corrupted_tick_is_fetched_again_by_a_resync(
    system: System, proxy: Proxy, transport: str
) -> None:
    c, got = corrupt_one_tick(proxy, transport, "resync")
    assert c.metrics().reconnects == 1, "the resync is one reconnect"
    # Nothing missing, nothing twice: the resume after the last good tick fetched it again.
    assert_exact(system, got.ticks(), KINDS)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_corrupted_frames_are_counted_and_skipped_when_asked(
    system: System, proxy: Proxy, transport: str
) -> None:
    c, got = corrupt_one_tick(proxy, transport, "skip")
    assert c.metrics().reconnects == 0
    # Exactly the corrupted tick is missing, and the FrameError said so in its place.
    with pytest.raises(AssertionError, match="1 stored ticks not delivered"):
        assert_exact(system, got.ticks(), KINDS)
