"""The real system for the tests: `ib-stream up --simulate` (tws-sim, engine, recorder, web
server) in a fresh temporary directory on free ports, as tests/up_supervisor.rs runs it.

The binary is `$IB_STREAM_BIN`, else the workspace's target/debug/ib-stream (scripts/test.sh
builds it before running pytest). Every system is stopped (SIGTERM, then SIGKILL) and its
directory removed when the test ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTRACT = 711280073  # MNQ, tracked by the development configuration (bid_ask and last)
READY_WITHIN = 120.0  # the machine is shared with compilers


def ib_stream_bin() -> Path:
    p = Path(os.environ.get("IB_STREAM_BIN", REPO / "target" / "debug" / "ib-stream"))
    if not p.exists():
        pytest.fail(f"{p} not found: build it with `cargo build --bin ib-stream --bin tws-sim`")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, cond: Callable[[], Any], within: float = 30.0) -> Any:
    until = time.monotonic() + within
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.02)


class System:
    """One running `ib-stream up`: its directories, ports, output lines and children."""

    def __init__(self, rate: int = 200, settings: tuple[str, ...] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ib-stream-py-"))
        self.shm = self.dir / "shm"
        self.storage = self.dir / "storage"
        self.port = free_port()
        self._settings = settings
        self._extra: list[subprocess.Popen[str]] = []
        self.url = f"http://127.0.0.1:{self.port}"
        flags = [
            "--env", "development",
            "--set", f"IB_STREAM_SHM_DIR={self.shm}",
            "--set", f"IB_STREAM_STORAGE_PATH={self.storage}",
            "--set", f"IB_STREAM_PORTS={free_port()}",
            "--set", f"IB_STREAM_SERVE_PORT={self.port}",
            "--set", f"IB_STREAM_CONTRACT_PORT={free_port()}",
            "--set", "IB_STREAM_FLUSH_MS=50",
        ]  # fmt: skip
        for kv in settings:
            flags += ["--set", kv]
        self.flags = flags
        env = {k: v for k, v in os.environ.items() if not k.startswith("IB_STREAM_")}
        self.proc = subprocess.Popen(
            [str(ib_stream_bin()), "up", "--simulate", "--stop-timeout-secs", "10", *flags,
             f"--sim-arg=--rate={rate}"],
            cwd=self.dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.wait_for("up: development ready in", 1, READY_WITHIN)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def count(self, needle: str) -> int:
        with self._lock:
            return sum(needle in line for line in self.lines)

    def wait_for(self, needle: str, count: int = 1, within: float = READY_WITHIN) -> None:
        until = time.monotonic() + within
        while self.count(needle) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"`up` exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > until:
                raise AssertionError(f"no {count}x {needle!r} within {within} s:\n{self.output()}")
            time.sleep(0.05)

    def child_pid(self, name: str) -> int:
        pat = re.compile(rf"up: {name} ready \(pid (\d+)\)")
        with self._lock:
            pids = [int(m.group(1)) for line in self.lines if (m := pat.search(line))]
        assert pids, f"no pid for {name}:\n{self.output()}"
        return pids[-1]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signals a child of `up`, which restarts it; returns the old pid."""
        pid = self.child_pid(name)
        os.kill(pid, sig)
        return pid

    def restarted(self, name: str, times: int = 1) -> None:
        self.wait_for(f"up: {name} ready (pid", times + 1)

    def extra_server(self, *args: str) -> str:
        """Starts one more `ib-stream serve` on the same engine (its own port and
        arguments, e.g. `--queue-capacity 8`); returns its URL. Stopped with the system."""
        port = free_port()
        swap = {"IB_STREAM_SERVE_PORT": port, "IB_STREAM_CONTRACT_PORT": free_port()}
        flags = [f"{f.split('=')[0]}={swap[f.split('=')[0]]}" if f.split("=")[0] in swap else f
                 for f in self.flags]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("IB_STREAM_")}
        p = subprocess.Popen([str(ib_stream_bin()), "serve", *flags, *args], cwd=self.dir,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             text=True)  # fmt: skip
        self._extra.append(p)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"serve {args} exited with {p.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=2):
                    return True
            except OSError:
                return False

        wait_until("the extra server", ready, 60)
        return url

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as e:
            return dict(json.load(e))

    def stop(self) -> None:
        for p in self._extra:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            # `up` runs in its own session and process group (start_new_session), and its
            # children stay in that group: whatever `up` could not stop goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def system() -> Iterator[System]:
    s = System()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def shared_system() -> Iterator[System]:
    """One system for the tests of a module that do not disturb it."""
    s = System()
    try:
        yield s
    finally:
        s.stop()
