"""A small TCP proxy between a client and the web server, for fault tests: it can cut a
connection in the middle of a server frame, freeze (keep the sockets open and forward
nothing: a silently dead link), or corrupt the bytes of one server message."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections = 0
        self.cuts = 0
        self.corrupted = 0
        # Faults armed for the next server bytes (any connection):
        self.cut_after: int | None = None  # forward this many more bytes, then cut mid-chunk
        self.corrupt: tuple[bytes, bytes] | None = None  # replace once in a server chunk
        self.frozen = False
        self._socks: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            with self.lock:
                self.connections += 1
                self._socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while from_server and self.frozen and not self._stop:
                    time.sleep(0.01)
                if from_server:
                    with self.lock:
                        if self.corrupt is not None and self.corrupt[0] in data:
                            data = data.replace(self.corrupt[0], self.corrupt[1], 1)
                            self.corrupt = None
                            self.corrupted += 1
                        cut = None
                        if self.cut_after is not None:
                            # Past the byte count, cut inside the next tick's JSON, so the
                            # client gets a partial frame.
                            at = data.find(b'"seq"', self.cut_after)
                            if at >= 0:
                                cut = at + 3
                                self.cut_after = None
                                self.cuts += 1
                            else:
                                self.cut_after = max(0, self.cut_after - len(data))
                    if cut is not None:
                        # Half a frame, then the connection is gone (both ends).
                        dst.sendall(data[:cut])
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self.frozen = False
        self.listener.close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
