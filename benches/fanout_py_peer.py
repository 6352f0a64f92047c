"""Python peer of benches/fanout.rs: the original IB-Stream's fan-out design (asyncio, one
unbounded asyncio.Queue per SSE client, events written with StreamWriter.drain) without
FastAPI, so that only the fan-out is compared.

The event loop is uvloop when it is installed, as uvicorn picks it (`loop="auto"`, what
`pip install uvicorn[standard]` gives a real deployment), else asyncio's own; the loop used
is printed on stderr.

Usage: python3 fanout_py_peer.py --port P --clients N --ticks T
Waits for N SSE clients on 127.0.0.1:P, then puts T tick events into every client's queue
as fast as it can (each tick JSON built once, like ib-stream does), ends each stream with an
`event: complete`, and exits when every client is served.
"""

import argparse
import asyncio
import json
import sys
import time


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--ticks", type=int, required=True)
    args = ap.parse_args()

    queues: list[asyncio.Queue] = []
    all_connected = asyncio.Event()
    done = asyncio.Event()
    served = 0

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        # Read the request head; the path is not checked (every client gets the same stream).
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
        )
        await writer.drain()
        q: asyncio.Queue = asyncio.Queue()
        queues.append(q)
        if len(queues) == args.clients:
            all_connected.set()
        while True:
            item = await q.get()
            if item is None:
                break
            writer.write(item)
            await writer.drain()
        writer.write(b'event: complete\ndata: {"type":"complete"}\n\n')
        await writer.drain()
        writer.close()
        served += 1
        if served == args.clients:
            done.set()

    server = await asyncio.start_server(client, "127.0.0.1", args.port)
    print("ready", flush=True)
    await all_connected.wait()
    for seq in range(1, args.ticks + 1):
        st = time.time_ns() // 1000
        tick = json.dumps(
            {"seq": seq, "st": st, "cid": 711280073, "tt": "bid_ask", "bp": 21012.25, "bs": 3, "ap": 21012.5, "as": 4},
            separators=(",", ":"),
        )
        event = f"event: tick\nid: {seq}\ndata: {tick}\n\n".encode()
        for q in queues:
            q.put_nowait(event)
        if seq % 256 == 0:
            # The original hands ticks over from IB's thread one at a time; yielding here
            # lets the writers run as they would there.
            await asyncio.sleep(0)
    for q in queues:
        q.put_nowait(None)
    await done.wait()
    server.close()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
        print("py peer loop: uvloop", file=sys.stderr)
    except ImportError:
        print("py peer loop: asyncio", file=sys.stderr)
    asyncio.run(main())
