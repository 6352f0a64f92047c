"""Shared pieces of the TWS conformance scripts: the check ledger, the expected data that
`tws-sim expected` prints, and exact value comparison.

How values are compared (the same rule in every script):
* The simulator's generator yields exact decimals (JSON strings such as "189.25").
* The official `ibapi` and `ib_async` hand prices to the application as Python `float`
  (text form: `float(field)`; protobuf form: the wire `double`). A price matches when the
  received float is *identical* to `float(expected_decimal)`, the correctly rounded double of
  the exact decimal. That holds only if the server wrote a decimal that rounds to the same
  double (text) or sent the correctly rounded double (protobuf); an off-by-one-ulp conversion
  such as `p * 1e-9` fails it. Messages show both the expected decimal and `repr(received)`.
* Sizes: `ibapi` gives `decimal.Decimal`, compared numerically with `Decimal(expected)` (exact).
  `ib_async` gives `float`, compared like prices.
* Strings (exchange, special conditions, tickString values) must be byte-equal.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

# Stable conIds of the simulator's universe (TWS-SIM-CONTRACT.md).
AAPL_CON_ID = 265598
MNQ_CON_ID = 711280073
TICK_KINDS = ("Last", "AllLast", "BidAsk", "MidPoint")
# Instruments the data checks do not touch, as (conId, exchange). The tick-by-tick cap check
# subscribes to these so that the simulator's "same instrument and kind within 15 s" rule
# (which also answers 10190) cannot be what refuses the request beyond the cap.
CAP_INSTRUMENTS = (
    (272093, "SMART"),  # MSFT
    (756733, "SMART"),  # SPY
    (495512563, "CME"),  # ES
    (563947738, "CME"),  # NQ
    (212921504, "NYMEX"),  # CL
    (12087792, "IDEALPRO"),  # EUR.USD
    (12087797, "IDEALPRO"),  # GBP.USD
    (15016059, "IDEALPRO"),  # USD.JPY
)


def cap_pairs(n: int) -> list[tuple[int, str, str]]:
    """`n` distinct (conId, exchange, kind) tick-by-tick requests on CAP_INSTRUMENTS."""
    pairs = [(c, e, k) for k in ("MidPoint", "BidAsk") for c, e in CAP_INSTRUMENTS]
    if n > len(pairs):
        raise ConformanceError(f"the cap check needs {n} distinct requests; only {len(pairs)} exist")
    return pairs[:n]
# Server notices that arrive with reqId -1 and are not failures (farm status etc.).
NOTICE_CODES = range(2100, 2200)


class ConformanceError(Exception):
    """A check failed in a way that makes later checks meaningless (e.g. no connection)."""


@dataclass
class Ledger:
    """Counts checks; prints one line per check and a closing summary line."""

    client: str
    passed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"[{self.client}] PASS {name}" + (f" ({detail})" if detail else ""), flush=True)

    def fail(self, name: str, why: str) -> None:
        self.failed += 1
        self.failures.append(f"{name}: {why}")
        print(f"[{self.client}] FAIL {name}: {why}", flush=True)

    def check(self, name: str, problems: list[str], detail: str = "") -> bool:
        """Pass when `problems` is empty, else fail with the first few problems."""
        if problems:
            shown = "; ".join(problems[:5])
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            self.fail(name, shown + more)
            return False
        self.ok(name, detail)
        return True

    def finish(self) -> int:
        print(f"[{self.client}] summary: {self.passed} checks passed, {self.failed} failed", flush=True)
        for f in self.failures:
            print(f"[{self.client}]   failed: {f}", flush=True)
        # The plain closing line the test runners look for.
        print(f"conformance: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


def expected(sim_bin: str, seed: int, con_id: int, tick_type: str, count: int) -> list[dict[str, Any]]:
    """What the first `count` ticks of a subscription carry, as `tws-sim expected` prints it."""
    cmd = [
        sim_bin,
        "expected",
        "--seed",
        str(seed),
        "--con-id",
        str(con_id),
        "--tick-type",
        tick_type,
        "--count",
        str(count),
    ]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
    except subprocess.CalledProcessError as e:
        raise ConformanceError(f"{' '.join(cmd)} exited {e.returncode}: {e.stderr.strip()}") from e
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConformanceError(f"{' '.join(cmd)} failed: {e}") from e
    rows = []
    for n, line in enumerate(out.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ConformanceError(f"`tws-sim expected` line {n} is not JSON: {line!r} ({e})") from e
    if len(rows) != count:
        raise ConformanceError(f"`tws-sim expected` printed {len(rows)} rows, asked for {count}")
    return rows


def dec(text: Any, what: str) -> Decimal:
    """An expected decimal string as Decimal (ConformanceError if the simulator printed junk)."""
    try:
        return Decimal(str(text))
    except InvalidOperation as e:
        raise ConformanceError(f"expected {what} {text!r} is not a decimal") from e


def price_problem(what: str, want: str, got: float) -> str | None:
    """None when `got` is exactly the double nearest to the decimal `want`."""
    if not isinstance(got, float):
        return f"{what}: expected float {want}, got {type(got).__name__} {got!r}"
    if got != float(dec(want, what)):
        return f"{what}: expected {want} (double {float(want)!r}), got {got!r}"
    return None


def size_problem(what: str, want: str, got: Any) -> str | None:
    """Sizes: Decimal compared exactly; a float (ib_async) compared like a price."""
    if isinstance(got, Decimal):
        if got != dec(want, what):
            return f"{what}: expected {want}, got Decimal {got}"
        return None
    if isinstance(got, float):
        return price_problem(what, want, got)
    return f"{what}: expected {want}, got {type(got).__name__} {got!r}"


def eq_problem(what: str, want: Any, got: Any) -> str | None:
    return None if want == got else f"{what}: expected {want!r}, got {got!r}"


def compare_tbt(kind: str, idx: int, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Compare one received tick-by-tick tick (normalised dict) with the expected JSON row.

    `got` keys: Last/AllLast: tick_type, price, size, past_limit, unreported, exchange,
    conditions; BidAsk: bid_price, ask_price, bid_size, ask_size, bid_past_low,
    ask_past_high; MidPoint: mid_point.
    """
    p = f"{kind}[{idx}]"
    out: list[str | None] = []
    if kind in ("Last", "AllLast"):
        out.append(eq_problem(f"{p}.tickType", 1 if kind == "Last" else 2, got["tick_type"]))
        out.append(price_problem(f"{p}.price", want["price"], got["price"]))
        out.append(size_problem(f"{p}.size", want["size"], got["size"]))
        out.append(eq_problem(f"{p}.exchange", want["exchange"], got["exchange"]))
        out.append(eq_problem(f"{p}.specialConditions", want["conditions"], got["conditions"]))
        out.append(eq_problem(f"{p}.pastLimit", want["past_limit"], got["past_limit"]))
        out.append(eq_problem(f"{p}.unreported", want["unreported"], got["unreported"]))
    elif kind == "BidAsk":
        out.append(price_problem(f"{p}.bidPrice", want["bid_price"], got["bid_price"]))
        out.append(price_problem(f"{p}.askPrice", want["ask_price"], got["ask_price"]))
        out.append(size_problem(f"{p}.bidSize", want["bid_size"], got["bid_size"]))
        out.append(size_problem(f"{p}.askSize", want["ask_size"], got["ask_size"]))
        out.append(eq_problem(f"{p}.bidPastLow", want["bid_past_low"], got["bid_past_low"]))
        out.append(eq_problem(f"{p}.askPastHigh", want["ask_past_high"], got["ask_past_high"]))
    elif kind == "MidPoint":
        out.append(price_problem(f"{p}.midPoint", want["mid_point"], got["mid_point"]))
    else:
        raise ConformanceError(f"unknown tick-by-tick kind {kind}")
    return [x for x in out if x]


def compare_mktdata(idx: int, want: dict[str, Any], got: dict[str, Any], sizes_in_price: bool) -> list[str]:
    """Compare one L1 callback (normalised dict with key `msg`) with an expected `mktdata` row.

    `sizes_in_price`: the client reports the size of a bid/ask/last tickPrice with the price
    (both clients do: ibapi via the follow-up tickSize it synthesises, ib_async in
    priceSizeTick); for other tickPrice types the size is not observable and not compared.
    """
    p = f"mktdata[{idx}]"
    if want.get("msg") != got["msg"]:
        return [f"{p}: expected {want.get('msg')} {json.dumps(want)}, got {got}"]
    msg = got["msg"]
    out: list[str | None] = [eq_problem(f"{p}.tickType", want["tick_type"], got["tick_type"])]
    if msg == "tickPrice":
        out.append(price_problem(f"{p}.price", want["price"], got["price"]))
        if sizes_in_price and got.get("size") is not None:
            out.append(size_problem(f"{p}.size", want["size"], got["size"]))
        if got.get("attr") is not None:
            out.append(eq_problem(f"{p}.attrMask", want["attr"], got["attr"]))
    elif msg == "tickSize":
        out.append(size_problem(f"{p}.size", want["size"], got["size"]))
    elif msg == "tickString":
        out.append(eq_problem(f"{p}.value", want["value"], got["value"]))
    elif msg == "tickGeneric":
        out.append(price_problem(f"{p}.value", str(want["value"]), got["value"]))
    else:
        return [f"{p}: unexpected callback {got}"]
    return [x for x in out if x]


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll `pred` until true or `timeout` seconds pass (thread-based clients)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()

