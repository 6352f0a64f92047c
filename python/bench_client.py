"""Benchmark of the Python client, the hook of `cargo bench --bench client`.

    python bench_client.py --url http://127.0.0.1:8101 --con-id 711280073 \
        --ring /dev/shm/ib-stream/development/ticks.ring

- StreamClient burst: a WebSocket subscription with `since` (history then live) asks the
  server for every stored tick of the contract at once; ticks/s delivered to a handler
  from the first tick to the `count`-th (or to the end of the replay).
- RingReader: batches of `--batch` records read from the ring's oldest record to its head,
  over and over until `--ring-records` records were read; records/s.

Last line: `py_tps=<n> py_ring_rps=<n> py_ws_tps=<n> py_sse_tps=<n>` (integers; `py_tps` is
the faster transport: over SSE a run of ticks is parsed in one call, over WebSocket each
tick is its own frame).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import ib_stream as ibs


def bench_stream(
    url: str, con_id: int, count: int, since: str, transport: str
) -> tuple[int, float]:
    first: list[float] = []
    n = 0
    done = asyncio.Event()

    def on(msg: ibs.Message) -> None:
        nonlocal n
        if isinstance(msg, ibs.Tick):
            if not first:
                first.append(time.perf_counter())
            n += 1
            if n >= count:
                done.set()
        elif isinstance(msg, ibs.Info) and msg.status == "live" and first:
            done.set()  # the burst (the replay) is over; live ticks are paced by the source
        elif isinstance(msg, ibs.Complete):
            done.set()

    async def main() -> tuple[int, float]:
        sub = ibs.Subscription(con_id, ("bid_ask", "last"), since=since)
        c = ibs.AsyncStreamClient(url, [sub], transport=transport, max_attempts=3)
        c.add_handler(on)
        async with c:
            await asyncio.wait_for(done.wait(), 600)
            end = time.perf_counter()
        return n, end - first[0]

    return asyncio.run(main())


def bench_ring(path: str, total: int, batch: int) -> tuple[int, float]:
    n = 0
    busy = 0.0
    while n < total:
        r = ibs.RingReader(path, "oldest")
        head = r.head()
        if head == 0:
            raise SystemExit("the ring is empty: nothing to read")
        t = time.perf_counter()
        while r.next_seq <= head and n < total:
            b = r.read_batch(batch)
            n += len(b.records)
            if b.lost is not None:
                continue
        busy += time.perf_counter() - t
        r.close()
    return n, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", required=True, help="base URL of `ib-stream serve`")
    ap.add_argument("--con-id", type=int, required=True, help="a contract with stored history")
    ap.add_argument("--ring", required=True, help="ticks.ring (or its directory)")
    ap.add_argument("--count", type=int, default=200_000, help="ticks to time at most")
    ap.add_argument("--since", default="24h", help="how far back the burst starts")
    ap.add_argument("--transport", choices=("ws", "sse", "both"), default="both")
    ap.add_argument("--ring-records", type=int, default=20_000_000)
    ap.add_argument("--batch", type=int, default=65_536)
    a = ap.parse_args()

    by: dict[str, float] = {}
    for transport in ("ws", "sse") if a.transport == "both" else (a.transport,):
        n, dt = bench_stream(a.url, a.con_id, a.count, a.since, transport)
        by[transport] = n / dt if dt > 0 else 0.0
        print(
            f"stream: {n} ticks in {dt:.3f} s over {transport}: {by[transport]:,.0f} ticks/s",
            file=sys.stderr,
        )
    tps = max(by.values())
    rn, rdt = bench_ring(a.ring, a.ring_records, a.batch)
    rps = rn / rdt if rdt > 0 else 0.0
    print(f"ring: {rn} records in {rdt:.3f} s, batches of {a.batch}: {rps:,.0f} records/s",
          file=sys.stderr)  # fmt: skip
    per = " ".join(f"py_{t}_tps={v:.0f}" for t, v in by.items())
    print(f"py_tps={tps:.0f} py_ring_rps={rps:.0f} {per}")


if __name__ == "__main__":
    main()
