"""Conformance of tws-sim against `ib_async` 2.1.0, which offers `v157..178` (text protocol).

Checks: IB.connectAsync with the full startup sync (raiseSyncErrors=True, so every startup
request must get its "end" answer) -> the server version is 178 -> qualifyContracts of MNQ and
AAPL by symbol gives the stable conIds -> reqTickByTickData of Last, AllLast, BidAsk and
MidPoint on both, N ticks each, collected through `pendingTickersEvent` (ib_async empties
`ticker.tickByTicks` after every update cycle, so the ticks are accumulated as they come) ->
reqMktData, N L1 callbacks -> error codes on the right request ids: 200, 322, 300, 10190, 326.

ib_async replaces the server's tick time with its own receive time, so times are not checked.
For L1 data the script records the values ib_async's decoder hands to its wrapper
(`priceSizeTick`, `tickSize`, `tickString`, `tickGeneric`, in arrival order) by wrapping those
methods on the IB instance's wrapper; the originals still run, so the Ticker is updated as
usual and is checked too (its bid/ask/last are those of the last matching callback).

Usage: python conformance_ib_async.py --port P --sim-bin target/debug/tws-sim --seed S
       --tbt-cap 3 [--count 20] [--client-id 11]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from ib_async import IB, Contract, Future, Stock
from ib_async.objects import TickByTickAllLast, TickByTickBidAsk, TickByTickMidPoint

from common import (
    AAPL_CON_ID,
    MNQ_CON_ID,
    NOTICE_CODES,
    TICK_KINDS,
    ConformanceError,
    Ledger,
    cap_pairs,
    compare_mktdata,
    compare_tbt,
    expected,
)

EXPECT_VERSION = 178


def normalise(kind: str, t: Any) -> dict[str, Any] | None:
    """A tick from ticker.tickByTicks as the dict common.compare_tbt reads, or None when the
    tick is of another kind (a straggler of an earlier subscription on the same Ticker)."""
    if kind in ("Last", "AllLast") and isinstance(t, TickByTickAllLast):
        if t.tickType != (1 if kind == "Last" else 2):
            return None
        return {
            "tick_type": t.tickType,
            "price": t.price,
            "size": t.size,
            "past_limit": t.tickAttribLast.pastLimit,
            "unreported": t.tickAttribLast.unreported,
            "exchange": t.exchange,
            "conditions": t.specialConditions,
        }
    if kind == "BidAsk" and isinstance(t, TickByTickBidAsk):
        return {
            "bid_price": t.bidPrice,
            "ask_price": t.askPrice,
            "bid_size": t.bidSize,
            "ask_size": t.askSize,
            "bid_past_low": t.tickAttribBidAsk.bidPastLow,
            "ask_past_high": t.tickAttribBidAsk.askPastHigh,
        }
    if kind == "MidPoint" and isinstance(t, TickByTickMidPoint):
        return {"mid_point": t.midPoint}
    return None


class Run:
    def __init__(self, args: argparse.Namespace, ledger: Ledger) -> None:
        self.a = args
        self.L = ledger
        self.ib = IB()
        self.errors: list[tuple[int, int, str]] = []
        self.expected_error_ids: set[int] = set()
        # tick-by-tick collection: (ticker, kind) -> normalised ticks
        self.collect: dict[tuple[int, str], list[dict[str, Any]]] = {}
        self.mkt: dict[int, list[dict[str, Any]]] = {}
        self.ib.errorEvent += self._on_error
        self.ib.pendingTickersEvent += self._on_pending
        self._record_l1(self.ib)

    # --- event plumbing ------------------------------------------------------------------
    def _on_error(self, reqId: int, errorCode: int, errorString: str, contract: Any) -> None:
        self.errors.append((reqId, errorCode, errorString))

    def _on_pending(self, tickers: Any) -> None:
        for ticker in tickers:
            for (tid, kind), out in self.collect.items():
                if tid != id(ticker):
                    continue
                for t in ticker.tickByTicks:
                    n = normalise(kind, t)
                    if n is not None:
                        out.append(n)

    def _record_l1(self, ib: IB) -> None:
        w = ib.wrapper
        orig = {name: getattr(w, name) for name in ("priceSizeTick", "tickSize", "tickString", "tickGeneric")}

        def price_size(reqId, tickType, price, size):
            self.mkt.setdefault(reqId, []).append(
                {"msg": "tickPrice", "tick_type": tickType, "price": price, "size": size, "attr": None}
            )
            orig["priceSizeTick"](reqId, tickType, price, size)

        def tick_size(reqId, tickType, size):
            self.mkt.setdefault(reqId, []).append({"msg": "tickSize", "tick_type": tickType, "size": size})
            orig["tickSize"](reqId, tickType, size)

        def tick_string(reqId, tickType, value):
            self.mkt.setdefault(reqId, []).append({"msg": "tickString", "tick_type": tickType, "value": value})
            orig["tickString"](reqId, tickType, value)

        def tick_generic(reqId, tickType, value):
            self.mkt.setdefault(reqId, []).append({"msg": "tickGeneric", "tick_type": tickType, "value": value})
            orig["tickGeneric"](reqId, tickType, value)

        w.priceSizeTick, w.tickSize, w.tickString, w.tickGeneric = price_size, tick_size, tick_string, tick_generic

    def errors_for(self, req_id: int) -> list[tuple[int, int, str]]:
        return [e for e in self.errors if e[0] == req_id]

    async def wait(self, pred, timeout: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.a.timeout)
        while loop.time() < deadline:
            if pred():
                return True
            await asyncio.sleep(0.01)
        return bool(pred())

    # --- checks --------------------------------------------------------------------------
    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await self.ib.connectAsync(
                self.a.host, self.a.port, self.a.client_id, timeout=self.a.timeout, raiseSyncErrors=True
            )
        except (ConnectionError, TimeoutError, OSError) as e:
            raise ConformanceError(f"IB.connectAsync failed: {e!r}; errors: {self.errors}") from e
        self.L.ok("connect with startup sync", f"{loop.time() - t0:.2f}s, accounts {self.ib.managedAccounts()}")
        v = self.ib.client.serverVersion()
        if v == EXPECT_VERSION:
            self.L.ok("handshake version", f"negotiated {v}")
        else:
            self.L.fail("handshake version", f"expected {EXPECT_VERSION}, got {v}")

    async def qualify(self) -> dict[str, Contract]:
        out: dict[str, Contract] = {}
        for name, c, con_id in (
            ("AAPL", Stock("AAPL", "SMART", "USD"), AAPL_CON_ID),
            ("MNQ", Future("MNQ", exchange="CME", currency="USD"), MNQ_CON_ID),
        ):
            res = await self.ib.qualifyContractsAsync(c)
            q = res[0] if res else None
            problems = []
            if not isinstance(q, Contract):
                problems.append(f"qualifyContracts returned {res!r}; errors {self.errors}")
            elif q.conId != con_id:
                problems.append(f"conId: expected {con_id}, got {q.conId}")
            if self.L.check(f"qualifyContracts {name}", problems, f"conId {getattr(q, 'conId', None)}"):
                out[name] = q
        if len(out) != 2:
            raise ConformanceError("contracts could not be qualified; data checks need conIds")
        return out

    async def tick_by_tick(self, name: str, contract: Contract) -> None:
        n = self.a.count
        for kind in TICK_KINDS:
            check = f"reqTickByTickData {kind} {name} x{n}"
            want = expected(self.a.sim_bin, self.a.seed, contract.conId, kind, n)
            ticker = self.ib.reqTickByTickData(contract, kind)
            req_id = self.ib.wrapper.ticker2ReqId[kind][ticker]
            got = self.collect.setdefault((id(ticker), kind), [])
            await self.wait(lambda: len(got) >= n or self.errors_for(req_id))
            self.ib.cancelTickByTickData(contract, kind)
            del self.collect[(id(ticker), kind)]
            problems = [f"error {e[1]} {e[2]!r} on reqId {req_id}" for e in self.errors_for(req_id)]
            if len(got) < n:
                problems.append(f"received {len(got)} of {n} ticks within {self.a.timeout}s")
            for i, (w, g) in enumerate(zip(want, got)):
                problems += compare_tbt(kind, i, w, g)
            self.L.check(check, problems, f"{min(len(got), n)} ticks equal to `expected`")

    async def market_data(self, name: str, contract: Contract) -> None:
        n = self.a.count
        check = f"reqMktData L1 {name} x{n}"
        want = expected(self.a.sim_bin, self.a.seed, contract.conId, "mktdata", n)
        # ib_async's decoder drops a tickPrice whose price field is empty (decoder.priceSizeTick),
        # so such rows cannot be observed through this client.
        want = [w for w in want if not (w.get("msg") == "tickPrice" and w.get("price") in ("", None))]
        ticker = self.ib.reqMktData(contract)
        req_id = self.ib.wrapper.ticker2ReqId["mktData"][ticker]
        await self.wait(lambda: len(self.mkt.get(req_id, [])) >= len(want) or self.errors_for(req_id))
        self.ib.cancelMktData(contract)
        got = list(self.mkt.get(req_id, []))[: len(want)]
        problems = [f"error {e[1]} {e[2]!r} on reqId {req_id}" for e in self.errors_for(req_id)]
        if len(got) < len(want):
            problems.append(f"received {len(got)} of {len(want)} L1 callbacks within {self.a.timeout}s")
        for i, (w, g) in enumerate(zip(want, got)):
            problems += compare_mktdata(i, w, g, sizes_in_price=True)
        # The Ticker must reflect what was decoded: its bid is the last bid tickPrice seen.
        all_got = self.mkt.get(req_id, [])
        for tt, attr in ((1, "bid"), (2, "ask"), (4, "last")):
            prices = [g["price"] for g in all_got if g["msg"] == "tickPrice" and g["tick_type"] == tt]
            if prices and getattr(ticker, attr) != prices[-1]:
                problems.append(f"Ticker.{attr} is {getattr(ticker, attr)!r}, last decoded {prices[-1]!r}")
        self.L.check(check, problems, f"{len(got)} callbacks equal to `expected`")

    async def expect_error(self, name: str, req_id: int, code: int) -> None:
        self.expected_error_ids.add(req_id)
        if await self.wait(lambda: any(e[1] == code for e in self.errors_for(req_id))):
            err = next(e for e in self.errors_for(req_id) if e[1] == code)
            self.L.ok(name, f"reqId {req_id}: {code} {err[2]!r}")
        else:
            seen = [e for e in self.errors if e[1] not in NOTICE_CODES]
            self.L.fail(name, f"no error {code} on reqId {req_id} within {self.a.timeout}s; errors seen: {seen}")

    async def error_codes(self, contracts: dict[str, Contract]) -> None:
        ib = self.ib
        # 200: the reqId qualifyContracts used is read from the request it sends.
        sent: list[int] = []
        orig = ib.client.reqContractDetails

        def spy(reqId, contract):
            sent.append(reqId)
            orig(reqId, contract)

        ib.client.reqContractDetails = spy
        try:
            res = await ib.qualifyContractsAsync(Stock("NOSUCHSYM", "SMART", "USD"))
        finally:
            ib.client.reqContractDetails = orig
        if not sent:
            self.L.fail("error 200: unknown symbol", "qualifyContracts sent no reqContractDetails")
        else:
            await self.expect_error("error 200: qualifyContracts of an unknown symbol", sent[0], 200)
            self.L.check(
                "unknown symbol does not qualify", [] if res in ([], [None]) else [f"qualifyContracts returned {res!r}"]
            )

        # 322: the live reqMktData's id sent again through the client.
        aapl = contracts["AAPL"]
        ticker = ib.reqMktData(aapl)
        r = ib.wrapper.ticker2ReqId["mktData"][ticker]
        await self.wait(lambda: len(self.mkt.get(r, [])) > 0 or self.errors_for(r))
        ib.client.reqMktData(r, aapl, "", False, False, [])
        await self.expect_error("error 322: reqMktData reusing a live ticker id", r, 322)
        ib.cancelMktData(aapl)

        # 300: cancel of an id that was never used.
        r = ib.client.getReqId() + 50_000
        ib.client.cancelMktData(r)
        await self.expect_error("error 300: cancelMktData of an unknown id", r, 300)

        await self.tbt_cap()
        await self.duplicate_client_id()

    async def tbt_cap(self) -> None:
        ib, cap = self.ib, self.a.tbt_cap
        pairs = cap_pairs(cap + 1)
        qualified = await ib.qualifyContractsAsync(*[Contract(conId=c) for c, _, _ in pairs])
        if any(not isinstance(q, Contract) for q in qualified):
            self.L.fail("tick-by-tick cap", f"could not qualify the cap instruments: {qualified}")
            return
        live = []
        for q, (_, _, kind) in zip(qualified[:cap], pairs[:cap]):
            t = ib.reqTickByTickData(q, kind)
            got = self.collect.setdefault((id(t), kind), [])
            live.append((q, kind, ib.wrapper.ticker2ReqId[kind][t], got))
        ok = await self.wait(lambda: all(got or self.errors_for(r) for _q, _k, r, got in live))
        bad = [(r, self.errors_for(r), len(got)) for _q, _k, r, got in live if self.errors_for(r) or not got]
        self.L.check(
            f"tick-by-tick: {cap} subscriptions up to the cap all stream",
            [] if ok and not bad else [f"(reqId, errors, ticks) of the failing ones: {bad}"],
        )
        self.collect.clear()
        over_q, over_kind = qualified[cap], pairs[cap][2]
        t = ib.reqTickByTickData(over_q, over_kind)
        over = ib.wrapper.ticker2ReqId[over_kind][t]
        await self.expect_error(f"error 10190: tick-by-tick request beyond the cap of {cap}", over, 10190)
        for q, kind, _r, _got in live:
            ib.cancelTickByTickData(q, kind)
        ib.cancelTickByTickData(over_q, over_kind)

    async def duplicate_client_id(self) -> None:
        name = f"error 326: second connection with client id {self.a.client_id}"
        second = IB()
        errs: list[tuple[int, int, str]] = []
        second.errorEvent += lambda reqId, code, msg, contract: errs.append((reqId, code, msg))
        raised: BaseException | None = None
        try:
            await second.connectAsync(self.a.host, self.a.port, self.a.client_id, timeout=min(self.a.timeout, 4))
        except (ConnectionError, TimeoutError, OSError, asyncio.TimeoutError) as e:
            raised = e
        finally:
            second.disconnect()
        dup = [e for e in errs if e[1] == 326]
        if dup and dup[0][0] == -1:
            self.L.ok(name, f"reqId -1: 326 {dup[0][2]!r}")
        else:
            self.L.fail(name, f"expected error 326 on reqId -1; second connection saw {errs}")
        self.L.check(
            "duplicate client id: connect fails", [] if raised else ["second connectAsync with a used client id succeeded"]
        )
        try:
            t = await asyncio.wait_for(self.ib.reqCurrentTimeAsync(), self.a.timeout)
            self.L.ok("first connection unaffected by the duplicate", f"currentTime {t}")
        except (asyncio.TimeoutError, ConnectionError) as e:
            self.L.fail("first connection unaffected by the duplicate", repr(e))

    def unexpected_errors(self) -> None:
        bad = [
            e for e in self.errors if e[0] not in self.expected_error_ids and not (e[0] == -1 and e[1] in NOTICE_CODES)
        ]
        self.L.check("no unexpected errors", [f"reqId {e[0]}: {e[1]} {e[2]!r}" for e in bad])

    async def main(self) -> None:
        try:
            await self.connect()
            contracts = await self.qualify()
            for name, c in contracts.items():
                await self.tick_by_tick(name, c)
            for name, c in contracts.items():
                await self.market_data(name, c)
            await self.error_codes(contracts)
            self.unexpected_errors()
        finally:
            self.ib.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", type=int, default=11)
    ap.add_argument("--count", type=int, default=20, help="ticks per subscription to compare")
    ap.add_argument("--seed", type=int, required=True, help="the --seed tws-sim runs with")
    ap.add_argument("--sim-bin", required=True, help="tws-sim binary (for `tws-sim expected`)")
    ap.add_argument("--tbt-cap", type=int, required=True, help="tick-by-tick cap tws-sim runs with")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any one answer")
    args = ap.parse_args()
    # ib_async logs every error/warning itself; the checks print what matters.
    logging.basicConfig(level=logging.CRITICAL)
    ledger = Ledger(f"ib_async 2.1.0 @ {EXPECT_VERSION} (text)")
    try:
        asyncio.run(Run(args, ledger).main())
    except ConformanceError as e:
        ledger.fail("fatal", str(e))
    return ledger.finish()


if __name__ == "__main__":
    sys.exit(main())
