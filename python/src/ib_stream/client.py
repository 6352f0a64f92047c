"""Streaming client for the ib-stream web API (docs/PROTOCOL.md), asyncio and sync.

One `AsyncStreamClient` holds one connection (WebSocket, or SSE for a single subscription)
and any number of `Subscription`s on it. It reconnects by itself with exponential backoff
and jitter and resumes every subscription exactly after the last tick it delivered (the
resume token `<epoch>-<seq>` names the engine run), so a consumer sees every tick once, in
order, or a `Gap` with the range; an engine restart is a `Gap` with reason
`writer_restart`. `StreamClient` runs the same client on a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from ._handlers import HandlerRegistry
from ._messages import (
    Complete,
    Control,
    FrameError,
    Message,
    ServerError,
    Subscription,
    Tick,
    control_from,
)
from ._metrics import Health, Metrics, health_of
from ._state import TERMINAL, State, check_transition

log = logging.getLogger("ib_stream.client")

_loads = orjson.loads
_SSE_TICK = b"event: tick\nid: "
_SSE_TICK_LEN = len(_SSE_TICK)
# A run of tick events: what the server sends for ticks and nothing else (docs/PROTOCOL.md).
_SSE_TICK_RUN = re.compile(rb"(?:event: tick\nid: [0-9a-f]{16}-[0-9]+\ndata: [^\n]*\n\n)+")
_SSE_DATA = re.compile(rb"\ndata: ([^\n]*)")
_monotonic = time.monotonic
_time = time.time


@dataclass(frozen=True)
class StateChange:
    old: State
    new: State
    reason: str


class StreamClientError(Exception):
    """A refusal that retrying cannot cure (bad URL, 401, 404, bad parameter)."""


class _Retry(Exception):
    """The connection ended or failed in a way a reconnect may cure."""


class _SilentDeath(_Retry):
    pass


def _backoff(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    # Exponential with "equal jitter": half the step fixed, half random, so clients that lost
    # the same server do not come back in lockstep, and the delay never collapses to zero.
    step = min(maximum, initial * (2 ** (attempt - 1)))
    return float(step / 2 + rng.uniform(0, step / 2))


class AsyncStreamClient:
    """Asyncio client. Use `async with AsyncStreamClient(...) as c:` or `start()`/`close()`.

    Parameters: `url` is the server's base URL (`http://127.0.0.1:8101`); `subscriptions`
    the streams; `transport` `"ws"` (any number of subscriptions) or `"sse"` (exactly one);
    `heartbeat_timeout` seconds without any message before the connection is declared
    silently dead (default: twice the server's heartbeat interval plus 5 s); `max_attempts`
    consecutive failed connection attempts before FAILED (None: never give up);
    `close_when_done` closes the client (CLOSED) when every subscription has ended;
    `queue_size` bounds the queue behind `async for msg in client` (when full, reading
    stops, so the server's slow-client policy applies: `Subscription.slow`);
    `recv_buffer_bytes` sets the WebSocket's `SO_RCVBUF` (None: the kernel's autotuning):
    smaller makes a lagging consumer felt by the server sooner, but keep it above two of the
    path's TCP segments (loopback's are 64 KiB), or after a stall TCP crawls on zero-window
    probes. `on_malformed`: a frame that cannot be read is counted (`frame_errors`) and
    delivered as a `FrameError`; `"resync"` (the default) then reconnects and resumes after
    the last tick delivered, so a corrupted tick arrives again and nothing is lost;
    `"skip"` goes on with the next frame (the corrupted tick is then missing).
    """

    def __init__(
        self,
        url: str,
        subscriptions: Iterable[Subscription] = (),
        *,
        transport: str = "ws",
        token: str | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        max_attempts: int | None = None,
        heartbeat_timeout: float | None = None,
        connect_timeout: float = 10.0,
        queue_size: int = 10_000,
        recv_buffer_bytes: int | None = None,
        seed: int | None = None,
        close_when_done: bool = True,
        on_malformed: str = "resync",
    ) -> None:
        if transport not in ("ws", "sse"):
            raise ValueError("transport must be 'ws' or 'sse'")
        if on_malformed not in ("resync", "skip"):
            raise ValueError("on_malformed must be 'resync' or 'skip'")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url {url!r} must be http(s)://host:port")
        self.url = url.rstrip("/")
        self._ws_url = urlunsplit(
            ("wss" if parts.scheme == "https" else "ws", parts.netloc, "/v3/ws", "", "")
        )
        self.transport = transport
        self._subs: list[Subscription] = list(subscriptions)
        if transport == "sse" and len(self._subs) != 1:
            raise ValueError("the SSE transport carries exactly one subscription")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_attempts = max_attempts
        self._hb_timeout_cfg = heartbeat_timeout
        self._hb_timeout = heartbeat_timeout if heartbeat_timeout is not None else 35.0
        self._connect_timeout = connect_timeout
        self._queue_size = queue_size
        self._rcvbuf = recv_buffer_bytes
        self._rng = random.Random(seed)
        self._close_when_done = close_when_done or transport == "sse"
        self._resync_on_malformed = on_malformed == "resync"

        self._state = State.DISCONNECTED
        self._state_lock = threading.Lock()
        self._handlers: HandlerRegistry[Message] = HandlerRegistry(log, "message")
        self._state_handlers: HandlerRegistry[StateChange] = HandlerRegistry(log, "state")
        self._m = Metrics()
        self._last_rx: float | None = None
        self._last_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._queue: asyncio.Queue[Message | None] | None = None
        self._done = threading.Event()
        # Per connection (WebSocket).
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._req_ids = itertools.count(1)
        self._pending: dict[int, Subscription] = {}
        self._streams: dict[str, Subscription] = {}
        self._routes: dict[tuple[int, str], Subscription] = {}
        self._unsub_pending: set[int] = set()
        self._msg_rate = 70.0
        self._sse_epoch_b = b""
        self._ended = False
        self._sse_epoch = ""

    # ---- public API ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subs)

    def add_handler(self, fn: Callable[[Message], object]) -> int:
        """Call `fn(message)` for every message (ticks, control, frame errors), on the
        client's event loop. Thread-safe; returns a handle for `remove_handler`."""
        return self._handlers.add(fn)

    def remove_handler(self, handle: int) -> bool:
        return self._handlers.remove(handle)

    def on_state(self, fn: Callable[[StateChange], object]) -> int:
        """Call `fn(StateChange)` on every transition. Thread-safe."""
        return self._state_handlers.add(fn)

    def remove_state_handler(self, handle: int) -> bool:
        return self._state_handlers.remove(handle)

    def metrics(self) -> Metrics:
        m = self._m.copy()
        m.handler_errors = self._handlers.errors + self._state_handlers.errors
        return m

    def health(self) -> Health:
        active = sum(1 for s in self._subs if not s.done)
        return health_of(self._state, self._last_rx, self._hb_timeout, active, self._last_error)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("client already started")
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._set_state(State.CONNECTING, f"connecting to {self.url}")
        self._task = asyncio.create_task(self._run(), name="ib_stream.client")

    async def close(self) -> None:
        """Close the connection and end the client (CLOSED)."""
        if self._closing is not None:
            self._closing.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            # The WebSocket ends at its close; an SSE read (or a backoff) is cancelled.
            await asyncio.wait({self._task}, timeout=1.0 if self._ws is not None else 0.05)
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        elif self._state not in TERMINAL:
            self._set_state(State.CLOSED, "closed before start")

    async def wait_closed(self, timeout: float | None = None) -> None:
        if self._task is None:
            raise RuntimeError("client not started")
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def __aenter__(self) -> AsyncStreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        if self._queue_size <= 0:
            raise RuntimeError("iteration needs queue_size > 0")
        if self._queue is None:
            # Made on first use: a client used only through handlers never blocks on it.
            self._queue = asyncio.Queue(self._queue_size)
            if self._state in TERMINAL:
                return
        q = self._queue
        task = self._task
        while True:
            try:
                msg = q.get_nowait()
            except asyncio.QueueEmpty:
                if task is None or task.done():
                    return
                getter = asyncio.ensure_future(q.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                msg = getter.result()
            if msg is None:
                return
            yield msg

    def subscribe(self, sub: Subscription) -> None:
        """Add a subscription while running (WebSocket). Call on the client's loop; from
        another thread use `StreamClient.subscribe`."""
        if self.transport != "ws":
            raise StreamClientError("the SSE transport carries exactly one subscription")
        self._subs.append(sub)
        if self._outbox is not None:
            self._queue_subscribe(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        """End a subscription (WebSocket): `complete{unsubscribed}` follows."""
        if sub.done:
            return
        if self._outbox is not None and sub.stream_id is not None:
            self._send_unsubscribe(sub)
        elif self._outbox is not None and any(p is sub for p in self._pending.values()):
            # Its subscribe is on the way (first time or after a reconnect): the stream has
            # no id yet; end it the moment the server names it.
            sub.unsubscribe_wanted = True
        else:
            self._finish(sub, "unsubscribed")

    def _send_unsubscribe(self, sub: Subscription) -> None:
        assert self._outbox is not None and sub.stream_id is not None
        rid = next(self._req_ids)
        self._unsub_pending.add(rid)
        self._outbox.put_nowait({"type": "unsubscribe", "id": rid, "stream_id": sub.stream_id})

    # ---- state -----------------------------------------------------------------------

    def _set_state(self, new: State, reason: str) -> None:
        with self._state_lock:
            old = self._state
            if old is new:
                return
            check_transition(old, new)
            self._state = new
        level = logging.WARNING if new in (State.RECONNECTING, State.FAILED) else logging.INFO
        log.log(level, "%s -> %s: %s", old.value, new.value, reason)
        self._state_handlers.dispatch(StateChange(old, new, reason))
        if new in TERMINAL:
            self._done.set()

    def _all_done(self) -> bool:
        # With close_when_done=False a WebSocket client stays connected for later
        # subscriptions; otherwise it closes when its last subscription ends.
        return self._close_when_done and bool(self._subs) and all(s.done for s in self._subs)

    def _finish(self, sub: Subscription, reason: str) -> None:
        if sub.done:
            return
        sub.done = True
        sub.end_reason = reason
        self._ended = True
        for k in sub.kinds:
            if self._routes.get((sub.contract_id, k)) is sub:
                del self._routes[(sub.contract_id, k)]

    # ---- run loop --------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._closing is not None
        attempt = 0
        try:
            while not self._closing.is_set() and not self._all_done():
                connected_before = self._m.messages
                try:
                    if self.transport == "ws":
                        await self._run_ws()
                    else:
                        await self._run_sse()
                    reason = "the server closed the connection"
                except StreamClientError as e:
                    self._last_error = str(e)
                    log.error("giving up: %s", e)
                    self._set_state(State.FAILED, str(e))
                    return
                except _Retry as e:
                    reason = str(e)
                except (OSError, websockets.exceptions.WebSocketException, httpx.HTTPError) as e:
                    reason = f"{type(e).__name__}: {e}"
                except TimeoutError as e:
                    reason = f"timeout: {e}"
                self._ws = None
                self._outbox = None
                if self._closing.is_set() or self._all_done():
                    break
                self._last_error = reason
                if self._m.messages > connected_before:
                    attempt = 0  # the connection worked: backoff starts again
                else:
                    self._m.connect_failures += 1
                attempt += 1
                if self._max_attempts is not None and attempt > self._max_attempts:
                    self._set_state(
                        State.FAILED, f"{self._max_attempts} attempts failed; last: {reason}"
                    )
                    return
                delay = _backoff(attempt, self._backoff_initial, self._backoff_max, self._rng)
                self._set_state(State.RECONNECTING, f"{reason}; retrying in {delay:.2f} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        except Exception as e:  # a bug in the client: never silent
            log.exception("stream client crashed")
            self._last_error = f"client error: {e!r}"
            if self._state not in TERMINAL:
                self._set_state(State.FAILED, self._last_error)
            raise
        finally:
            if self._state not in TERMINAL:
                why = "every subscription ended" if self._all_done() else "closed"
                self._set_state(State.CLOSED, why)

    def _connected(self, why: str) -> None:
        if self._state is not State.CONNECTING:
            self._m.reconnects += 1
        self._set_state(State.CONNECTED, why)

    async def _watchdog(self, on_death: Callable[[], Any]) -> None:
        """Closes the connection when nothing arrived within the heartbeat timeout."""
        while True:
            await asyncio.sleep(min(1.0, self._hb_timeout / 4))
            last = self._last_rx
            if last is not None and _monotonic() - last > self._hb_timeout:
                self._m.silent_deaths += 1
                log.warning(
                    "nothing received for %.1f s (heartbeat timeout %.1f s): connection dead",
                    _monotonic() - last,
                    self._hb_timeout,
                )
                await on_death()
                return

    async def _deliver(self, msg: Message) -> None:
        self._handlers.dispatch(msg)
        q = self._queue
        if q is not None:
            # Bounded: when the consumer of `async for` falls behind, reading stops here,
            # the socket fills and the server's slow-client policy (`slow=`) applies.
            await q.put(msg)

    # ---- WebSocket -------------------------------------------------------------------

    async def _open_ws(self) -> ClientConnection:
        sock = None
        if self._rcvbuf is not None:
            u = urlsplit(self.url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (u.hostname or "127.0.0.1", u.port or 80))
        return await connect(
            self._ws_url,
            sock=sock,
            additional_headers=self._auth,
            open_timeout=self._connect_timeout,
            max_size=16 * 1024 * 1024,
            max_queue=1024,  # frames buffered by the library (bounded); fewer read pauses
            ping_interval=None,  # the server's heartbeats and our watchdog cover liveness
            close_timeout=2,
            compression=None,
        )

    async def _run_ws(self) -> None:
        self._pending.clear()
        self._streams.clear()
        self._routes.clear()
        for sub in self._subs:
            sub.stream_id = None  # the last connection's ids mean nothing to the next server
        try:
            ws = await self._open_ws()
        except websockets.exceptions.InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode("utf-8", "replace") if e.response.body else ""
            if status in (400, 401, 403, 404):
                raise StreamClientError(f"WebSocket upgrade refused: HTTP {status} {body}") from e
            raise _Retry(f"WebSocket upgrade refused: HTTP {status} {body}") from e
        self._ws = ws
        self._outbox = asyncio.Queue()
        dead = False

        async def kill() -> None:
            nonlocal dead
            dead = True
            ws.transport.abort()

        watchdog = asyncio.create_task(self._watchdog(kill))
        sender = asyncio.create_task(self._ws_sender(ws, self._outbox))
        try:
            self._last_rx = _monotonic()
            async for raw in ws:
                self._last_rx = _monotonic()
                await self._on_ws_frame(raw)
                if self._ended:
                    # A subscription ended with this frame (checked only then: per frame
                    # the check would cost more than the rest of the tick's work).
                    self._ended = False
                    if self._all_done():
                        await ws.close()
                        return
                if sender.done() and sender.exception() is not None:
                    raise _Retry(f"sending failed: {sender.exception()!r}")
            rcvd = ws.close_code
            if dead:
                raise _SilentDeath("heartbeat timeout: the connection went silent")
            if rcvd in (4000, 1009):
                raise StreamClientError(f"the server closed the connection: {ws.close_reason}")
            raise _Retry(f"connection closed (code {rcvd} {ws.close_reason!r})")
        except websockets.exceptions.ConnectionClosed as e:
            if dead:
                raise _SilentDeath("heartbeat timeout: the connection went silent") from e
            raise _Retry(f"connection lost: {e}") from e
        finally:
            watchdog.cancel()
            sender.cancel()
            ws.transport.abort()

    def _queue_subscribe(self, sub: Subscription) -> None:
        assert self._outbox is not None
        req: dict[str, Any] = {
            "type": "subscribe",
            "contract_id": sub.contract_id,
            "tick_types": list(sub.tick_types),
            "slow": sub.slow,
        }
        if sub.limit is not None:
            req["limit"] = max(1, sub.limit - sub.delivered)
        if sub.timeout is not None:
            req["timeout"] = sub.timeout
        if sub.token is not None:
            req["after_seq"] = sub.token
        elif sub.since is not None:
            req["since"] = sub.since
        rid = next(self._req_ids)
        req["id"] = rid
        self._pending[rid] = sub
        self._outbox.put_nowait(req)

    async def _ws_sender(self, ws: ClientConnection, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        # Evenly spaced at 70 % of the server's message rate (no bursts: the server counts
        # fixed one-second windows from a message's arrival, and bunched arrivals of two
        # bursts could fall in one), so a thousand subscriptions never trip its
        # per-connection limit (close 4004).
        due = _monotonic()
        while True:
            req = await outbox.get()
            now = _monotonic()
            due = max(due, now)
            if due > now:
                await asyncio.sleep(due - now)
            await ws.send(json.dumps(req))
            due += 1.0 / self._msg_rate

    async def _on_ws_frame(self, raw: str | bytes) -> None:
        m = self._m
        m.messages += 1
        m.bytes += len(raw)
        try:
            data = _loads(raw)
        except ValueError as e:
            await self._frame_error(f"malformed JSON: {e}", raw)
            return
        if type(data) is not dict:
            await self._frame_error("a frame that is not a JSON object", raw)
            return
        if "type" not in data:
            # A tick: its contract and kind name its stream (one stream per pair).
            try:
                sub = self._routes.get((data["cid"], data["tt"]))
                seq = data["seq"]
                if sub is None:
                    await self._frame_error("a tick of no subscription", raw, maybe_tick=False)
                    return
                if seq <= sub.last_seq:
                    m.duplicates += 1
                    return
                sub.last_seq = seq
                sub.delivered += 1
                m.ticks += 1
                st = data["st"]
                m.last_tick_st_us = st
                now = _time()
                m.last_message_wall = now
                m.lag_us = int(now * 1e6) - st
            except (KeyError, TypeError) as e:
                await self._frame_error(f"a tick without {e}", raw)
                return
            tick = Tick(data, sub.epoch, sub)
            self._handlers.dispatch(tick)
            if self._queue is not None:
                await self._queue.put(tick)
            return
        m.last_message_wall = _time()
        await self._on_control(data, raw)

    async def _frame_error(self, why: str, raw: str | bytes, *, maybe_tick: bool = True) -> None:
        """Counts and delivers a frame that cannot be read. A frame that may have been a tick
        (`maybe_tick`) then ends the connection under `on_malformed="resync"`: the reconnect
        resumes after the last tick delivered, so the corrupted one comes again."""
        self._m.frame_errors += 1
        log.warning("frame error: %s: %.200r", why, raw)
        await self._deliver(FrameError(why, raw))
        if maybe_tick and self._resync_on_malformed:
            raise _Retry(f"malformed frame ({why}): resuming on a new connection")

    async def _on_control(self, data: dict[str, Any], raw: str | bytes) -> None:
        t = data.get("type")
        sub: Subscription | None = None
        sid = data.get("stream_id")
        rid = data.get("id")
        if t == "subscribed":
            sub = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if sub is None or not isinstance(sid, str):
                await self._frame_error("an answer to no request", raw, maybe_tick=False)
                return
            sub.stream_id = sid
            self._streams[sid] = sub
            for k in sub.kinds:
                self._routes[(sub.contract_id, k)] = sub
            if sub.unsubscribe_wanted and not sub.done:
                self._send_unsubscribe(sub)
        elif t == "error" and rid is not None and sid is None:
            if isinstance(rid, int) and rid in self._unsub_pending:
                self._unsub_pending.discard(rid)
            else:
                sub = self._pending.pop(rid, None) if isinstance(rid, int) else None
                self._m.server_errors += 1
                if sub is not None:
                    code = data.get("code")
                    if code == "engine_unavailable":
                        # The engine is restarting: ask again later on this connection.
                        log.warning("subscribe %s: engine unavailable; retrying", sub.contract_id)
                        self._retry_subscribe_later(sub)
                    else:
                        log.warning("subscription to %s refused: %s", sub.contract_id, data)
                        err = control_from(data, sub)
                        assert isinstance(err, ServerError)
                        sub.refused = err
                        self._finish(sub, f"refused: {code}")
        elif t == "unsubscribed":
            if isinstance(rid, int):
                self._unsub_pending.discard(rid)
            sub = self._streams.get(sid) if isinstance(sid, str) else None
        elif t == "info" and data.get("status") == "connected":
            self._on_ws_hello(data)
        elif isinstance(sid, str):
            sub = self._streams.get(sid)
            if sub is not None:
                self._track(sub, data)
        msg = control_from(data, sub)
        await self._deliver(msg)
        if sub is not None and t == "complete":
            await self._on_complete(sub, msg)

    def _on_ws_hello(self, data: dict[str, Any]) -> None:
        limits = data.get("limits") or {}
        rate = limits.get("max_messages_per_second")
        if isinstance(rate, int) and rate > 0:
            self._msg_rate = max(1.0, rate * 0.7)
        self._learn_heartbeat(data)
        self._connected("WebSocket open")
        for sub in self._subs:
            if sub.unsubscribe_wanted:
                self._finish(sub, "unsubscribed")  # asked for before this connection
            elif not sub.done:
                self._queue_subscribe(sub)

    def _learn_heartbeat(self, data: dict[str, Any]) -> None:
        """The server's heartbeat period (WebSocket: `info{connected}`; SSE, which has no
        such message: every `info{stream_start}`) sets the silence allowed, unless configured."""
        hb = data.get("heartbeat_seconds")
        if self._hb_timeout_cfg is None and isinstance(hb, int | float) and hb > 0:
            self._hb_timeout = 2.0 * hb + 5.0

    def _retry_subscribe_later(self, sub: Subscription) -> None:
        outbox = self._outbox

        def again() -> None:
            if sub.unsubscribe_wanted:
                self._finish(sub, "unsubscribed")
            elif outbox is self._outbox and not sub.done:
                self._queue_subscribe(sub)

        asyncio.get_running_loop().call_later(
            _backoff(2, self._backoff_initial, self._backoff_max, self._rng), again
        )

    def _track(self, sub: Subscription, data: dict[str, Any]) -> None:
        """Keeps the subscription's run and position (its resume token) up to date from
        the control messages of its stream (docs/PROTOCOL.md, WebSocket)."""
        t = data.get("type")
        if t == "error":
            self._m.server_errors += 1
            if data.get("code") == "slow_consumer":
                sub.slow_consumer_closed = True
                log.warning("stream of %s closed by the server: slow consumer", sub.contract_id)
        elif t == "info":
            status = data.get("status")
            epoch = data.get("epoch")
            if status == "stream_start":
                if sub.epoch is None and isinstance(epoch, str):
                    sub.epoch = epoch
                    head = data.get("ring_head")
                    sub.last_seq = head if isinstance(head, int) and sub.since is None else 0
            elif status in ("history_epoch", "live", "resume_unavailable"):
                if isinstance(epoch, str) and epoch != sub.epoch:
                    sub.epoch = epoch
                    sub.last_seq = 0
                if status == "live":
                    after = data.get("after_seq")
                    if isinstance(after, int) and after > sub.last_seq:
                        sub.last_seq = after
                if status == "resume_unavailable":
                    log.warning("resume of %s unavailable: %s", sub.contract_id, data.get("why"))
        elif t == "gap":
            self._count_gap(sub, data)
            reason = data.get("reason")
            last = data.get("last_seq")
            if reason == "writer_restart":
                new = data.get("new_epoch")
                if isinstance(new, str):
                    sub.epoch, sub.last_seq = new, 0
            elif reason in ("reader_overrun", "resume_unavailable") and isinstance(last, int):
                sub.last_seq = max(sub.last_seq, last)

    def _count_gap(self, sub: Subscription, data: dict[str, Any]) -> None:
        self._m.gaps += 1
        count = data.get("count")
        if isinstance(count, int):
            self._m.gap_ticks += count
        if data.get("reason") == "writer_restart":
            self._m.engine_restarts += 1
            log.warning(
                "engine restarted: run %s -> %s (clean=%s) on stream of %s",
                data.get("epoch"),
                data.get("new_epoch"),
                data.get("clean"),
                sub.contract_id,
            )
        else:
            log.warning("gap on %s: %s", sub.contract_id, data)

    async def _on_complete(self, sub: Subscription, msg: Control) -> None:
        assert isinstance(msg, Complete)
        reason = msg.reason
        if sub.stream_id is not None:
            self._streams.pop(sub.stream_id, None)
        if reason == "server_shutdown":
            return  # the connection ends next; the reconnect resumes it
        if reason == "error" and sub.slow_consumer_closed and not sub.done:
            # After error{slow_consumer} (recoverable): resume right away, from the token,
            # on this connection (SSE: the server ends the response; the reconnect resumes).
            sub.slow_consumer_closed = False
            if self.transport == "ws" and self._outbox is not None:
                self._queue_subscribe(sub)
            return
        self._finish(sub, reason)

    # ---- SSE -------------------------------------------------------------------------

    async def _run_sse(self) -> None:
        sub = self._subs[0]
        params: dict[str, str] = {"tick_types": ",".join(sub.tick_types), "slow": sub.slow}
        if sub.limit is not None:
            params["limit"] = str(max(1, sub.limit - sub.delivered))
        if sub.timeout is not None:
            params["timeout"] = str(sub.timeout)
        headers = dict(self._auth)
        if sub.token is not None:
            headers["Last-Event-ID"] = sub.token
        elif sub.since is not None:
            params["since"] = str(sub.since)
        timeout = httpx.Timeout(self._connect_timeout, read=None)
        transport = httpx.AsyncHTTPTransport(retries=0)
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as http:
            req = http.build_request(
                "GET", f"{self.url}/v3/stream/{sub.contract_id}", params=params, headers=headers
            )
            resp = await http.send(req, stream=True)
            dead = False

            async def kill() -> None:
                nonlocal dead
                dead = True
                await resp.aclose()

            try:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")[:500]
                    what = f"HTTP {resp.status_code} {body}"
                    if resp.status_code in (429, 503) or resp.status_code >= 500:
                        raise _Retry(what)
                    raise StreamClientError(what)
                self._last_rx = _monotonic()
                self._connected("SSE stream open")
                watchdog = asyncio.create_task(self._watchdog(kill))
                try:
                    await self._pump_sse(resp, sub)
                except httpx.HTTPError as e:
                    if dead:
                        raise _SilentDeath("heartbeat timeout: the stream went silent") from e
                    raise _Retry(f"stream lost: {type(e).__name__}: {e}") from e
                finally:
                    watchdog.cancel()
                if dead:
                    raise _SilentDeath("heartbeat timeout: the stream went silent")
                if not sub.done:
                    raise _Retry("the server ended the stream")
            finally:
                await resp.aclose()

    async def _pump_sse(self, resp: httpx.Response, sub: Subscription) -> None:
        buf = b""
        m = self._m
        tick_run = _SSE_TICK_RUN.match
        async for chunk in resp.aiter_raw():
            self._last_rx = _monotonic()
            m.bytes += len(chunk)
            buf += chunk
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            block, buf = buf[: end + 2], buf[end + 2 :]
            pos, n = 0, len(block)
            while pos < n:
                # Fast path: a run of plain tick events, found by one regex match and parsed
                # with one JSON call; anything else (or a run that does not parse as a whole)
                # goes event by event, so a bad event is reported on its own.
                run = tick_run(block, pos)
                if run is not None and await self._sse_ticks(block[pos : run.end()], sub):
                    pos = run.end()
                else:
                    nxt = block.find(b"\n\n", pos)
                    await self._on_sse_event(block[pos:nxt], sub)
                    pos = nxt + 2
                if sub.done:
                    return

    async def _sse_ticks(self, run: bytes, sub: Subscription) -> bool:
        """Delivers a run of tick events (`event: tick`, `id: <epoch>-<seq>`, `data: {...}`)
        of one run parsed at once; False (nothing done) when the run is not one engine run or
        does not parse as a whole, so each event is taken on its own."""
        payloads = _SSE_DATA.findall(run)
        ep_b = run[_SSE_TICK_LEN : _SSE_TICK_LEN + 16]
        if run.count(b"\nid: " + ep_b + b"-") != len(payloads):
            return False
        try:
            datas = _loads(b"[" + b",".join(payloads) + b"]")
            seqs = [d["seq"] for d in datas]
            st = datas[-1]["st"]
            if not all("st" in d for d in datas):
                return False
        except (ValueError, KeyError, TypeError, IndexError):
            return False
        if len(datas) != len(payloads) or not all(a < b for a, b in itertools.pairwise(seqs)):
            return False
        m = self._m
        if ep_b != self._sse_epoch_b:
            self._sse_epoch_b = ep_b
            self._sse_epoch = ep_b.decode("ascii", "replace")
        ep = self._sse_epoch
        first = 0
        if ep == sub.epoch:
            last = sub.last_seq
            while first < len(seqs) and seqs[first] <= last:
                first += 1
        m.messages += len(datas)
        m.duplicates += first
        if first == len(datas):
            return True
        new = len(datas) - first
        sub.epoch = ep
        sub.last_seq = seqs[-1]
        sub.delivered += new
        m.ticks += new
        dispatch = self._handlers.dispatch
        q = self._queue
        if q is None:
            for d in datas[first:]:
                dispatch(Tick(d, ep, sub))
        else:
            for d in datas[first:]:
                tick = Tick(d, ep, sub)
                dispatch(tick)
                await q.put(tick)
        now = _time()
        m.last_tick_st_us = st
        m.last_message_wall = now
        m.lag_us = int(now * 1e6) - st
        return True

    async def _on_sse_event(self, ev: bytes, sub: Subscription) -> None:
        m = self._m
        name = b""
        eid: bytes | None = None
        payload: bytes | None = None
        for line in ev.split(b"\n"):
            if line.startswith(b"data:"):
                payload = line[6:] if line[5:6] == b" " else line[5:]
            elif line.startswith(b"id:"):
                eid = line[4:] if line[3:4] == b" " else line[3:]
            elif line.startswith(b"event:"):
                name = line[7:] if line[6:7] == b" " else line[6:]
            elif line and not line.startswith(b":"):
                await self._frame_error("an SSE line of no known field", ev)
                return
        if payload is None:
            if name or eid:
                await self._frame_error("an SSE event without data", ev)
            return
        m.messages += 1
        try:
            data = _loads(payload)
        except ValueError as e:
            await self._frame_error(f"malformed JSON: {e}", ev)
            return
        if type(data) is not dict:
            await self._frame_error("an event that is not a JSON object", ev)
            return
        epoch = sub.epoch
        seq_from_id = -1
        if eid is not None:
            e_b, _, s_b = eid.partition(b"-")
            if e_b != self._sse_epoch_b:
                self._sse_epoch_b = e_b
                self._sse_epoch = e_b.decode("ascii", "replace")
            epoch = self._sse_epoch
            try:
                seq_from_id = int(s_b)
            except ValueError:
                await self._frame_error("an event id that is not <epoch>-<seq>", ev)
                return
        if name == b"tick":
            try:
                seq = data["seq"]
                st = data["st"]
            except KeyError as e:
                await self._frame_error(f"a tick without {e}", ev)
                return
            if epoch == sub.epoch and seq <= sub.last_seq:
                m.duplicates += 1
                return
            sub.epoch, sub.last_seq = epoch, seq
            sub.delivered += 1
            m.ticks += 1
            m.last_tick_st_us = st
            now = _time()
            m.last_message_wall = now
            m.lag_us = int(now * 1e6) - st
            await self._deliver(Tick(data, epoch, sub))
            return
        m.last_message_wall = _time()
        t = data.get("type")
        if t == "info" and data.get("status") == "stream_start":
            self._learn_heartbeat(data)
        if t == "info" and data.get("status") == "stream_start" and sub.epoch is None:
            start_epoch = data.get("epoch")
            if isinstance(start_epoch, str):
                sub.epoch = start_epoch
                head = data.get("ring_head")
                sub.last_seq = head if isinstance(head, int) and sub.since is None else 0
        elif t == "gap":
            self._count_gap(sub, data)
        elif t == "error":
            m.server_errors += 1
            if data.get("code") == "slow_consumer":
                sub.slow_consumer_closed = True
        if eid is not None and seq_from_id >= 0:
            sub.epoch, sub.last_seq = epoch, seq_from_id
        elif t == "info" and data.get("status") in ("history_epoch", "live", "resume_unavailable"):
            self._track(sub, data)
        msg = control_from(data, sub)
        await self._deliver(msg)
        if t == "complete":
            await self._on_complete(sub, msg)


class StreamClient:
    """The same client for threaded programs: it runs an `AsyncStreamClient` on its own
    thread and event loop. Handlers run on that thread; add and remove them from any
    thread at any time. Use as a context manager or call `start()` and `close()`."""

    def __init__(self, url: str, subscriptions: Iterable[Subscription] = (), **kw: Any) -> None:
        kw.setdefault("queue_size", 0)
        self._client = AsyncStreamClient(url, subscriptions, **kw)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def state(self) -> State:
        return self._client.state

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._client.subscriptions

    def add_handler(self, fn: Callable[[Message], object]) -> int:
        return self._client.add_handler(fn)

    def remove_handler(self, handle: int) -> bool:
        return self._client.remove_handler(handle)

    def on_state(self, fn: Callable[[StateChange], object]) -> int:
        return self._client.on_state(fn)

    def remove_state_handler(self, handle: int) -> bool:
        return self._client.remove_state_handler(handle)

    def metrics(self) -> Metrics:
        return self._client.metrics()

    def health(self) -> Health:
        return self._client.health()

    def start(self) -> StreamClient:
        if self._thread is not None:
            raise RuntimeError("client already started")
        self._thread = threading.Thread(target=self._main, name="ib_stream.client", daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._client.start()
            self._started.set()
            await self._client.wait_closed()

        try:
            asyncio.run(main())
        except BaseException as e:  # logged by the async client already
            self._error = e
        finally:
            self._started.set()

    def _call(self, fn: Callable[[], Any]) -> None:
        if self._loop is None:
            raise RuntimeError("client not started")
        self._loop.call_soon_threadsafe(fn)

    def subscribe(self, sub: Subscription) -> None:
        self._call(lambda: self._client.subscribe(sub))

    def unsubscribe(self, sub: Subscription) -> None:
        self._call(lambda: self._client.unsubscribe(sub))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the client is CLOSED or FAILED; True if it is."""
        return self._client._done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._client.close(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> StreamClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
