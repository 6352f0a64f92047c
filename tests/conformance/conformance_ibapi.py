"""Conformance of tws-sim against the official Python TWS API (`ibapi-latest` 10.51.1).

The client offers `v100..226`; the simulator answers min(226, its --max-version). At 201+ the
frames carry binary message ids and most messages are protobuf; at 200 and below everything is
text. The same checks run in both forms (scripts/conformance.sh runs this twice):

  connect (negotiated version, nextValidId, managedAccounts) -> contract details by symbol and by
  conId (stable conIds) -> N tick-by-tick ticks of Last, AllLast, BidAsk, MidPoint on AAPL and
  MNQ and N reqMktData L1 callbacks, each compared value by value with `tws-sim expected` ->
  error codes on the right request ids: 200 unknown contract, 322 duplicate ticker id,
  300 cancel of an unknown id, 10190 tick-by-tick cap, 326 duplicate client id.

Usage: python conformance_ibapi.py --port P --sim-bin target/debug/tws-sim --seed S
       --expect-version 226 --tbt-cap 3 [--count 20] [--client-id 7]
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections import Counter
from typing import Any

from ibapi.client import EClient
from ibapi.common import UNSET_DECIMAL
from ibapi.contract import Contract, ContractDetails
from ibapi.wrapper import EWrapper

from common import (
    AAPL_CON_ID,
    MNQ_CON_ID,
    NOTICE_CODES,
    TICK_KINDS,
    ConformanceError,
    cap_pairs,
    Ledger,
    compare_mktdata,
    compare_tbt,
    expected,
    wait_until,
)

# tickPrice types whose size ibapi re-delivers as a separate tickSize callback (decoder.py).
PRICE_TO_SIZE_TYPE = {1: 0, 2: 3, 4: 5, 66: 69, 67: 70, 68: 71}


class App(EWrapper, EClient):
    """Records every callback the conformance checks look at, keyed by request id."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.lock = threading.Lock()
        self.next_valid_id: int | None = None
        self.accounts: str | None = None
        self.errors: list[tuple[int, int, str]] = []
        self.details: dict[int, list[ContractDetails]] = {}
        self.details_end: set[int] = set()
        self.tbt: dict[int, list[dict[str, Any]]] = {}
        self.tbt_times: dict[int, list[int]] = {}
        self.mkt: dict[int, list[dict[str, Any]]] = {}
        self.market_data_type: dict[int, int] = {}
        self.current_time: int | None = None
        self.closed = threading.Event()
        # (reqId, size tick type) of the tickSize ibapi synthesises right after a tickPrice.
        self._implied_size: tuple[int, int] | None = None
        # Messages per family as the application saw them, and how many of those arrived in
        # protobuf form (ibapi calls <name>ProtoBuf with the raw message first).
        self.seen: Counter[str] = Counter()
        self.proto: Counter[str] = Counter()

    # --- wire form: ibapi's protobuf decoders call these before the plain callbacks -----
    def errorProtoBuf(self, _m) -> None:
        self.proto["error"] += 1

    def contractDataProtoBuf(self, _m) -> None:
        self.proto["contractData"] += 1

    def contractDataEndProtoBuf(self, _m) -> None:
        self.proto["contractDataEnd"] += 1

    def tickPriceProtoBuf(self, _m) -> None:
        self.proto["tickPrice"] += 1

    def tickSizeProtoBuf(self, _m) -> None:
        self.proto["tickSize"] += 1

    def tickStringProtoBuf(self, _m) -> None:
        self.proto["tickString"] += 1

    def tickGenericProtoBuf(self, _m) -> None:
        self.proto["tickGeneric"] += 1

    def tickByTickDataProtoBuf(self, _m) -> None:
        self.proto["tickByTick"] += 1

    # --- session -------------------------------------------------------------------------
    def nextValidId(self, orderId: int) -> None:
        self.next_valid_id = orderId

    def managedAccounts(self, accountsList: str) -> None:
        self.accounts = accountsList

    def currentTime(self, time: int) -> None:
        self.current_time = time

    def connectionClosed(self) -> None:
        self.closed.set()

    def error(self, reqId, errorTime, errorCode, errorString, advancedOrderRejectJson="") -> None:
        with self.lock:
            self.seen["error"] += 1
            self.errors.append((reqId, errorCode, errorString))

    # --- contracts -----------------------------------------------------------------------
    def contractDetails(self, reqId: int, contractDetails: ContractDetails) -> None:
        with self.lock:
            self.seen["contractData"] += 1
            self.details.setdefault(reqId, []).append(contractDetails)

    def contractDetailsEnd(self, reqId: int) -> None:
        with self.lock:
            self.seen["contractDataEnd"] += 1
            self.details_end.add(reqId)

    # --- tick-by-tick --------------------------------------------------------------------
    def tickByTickAllLast(self, reqId, tickType, time, price, size, tickAttribLast, exchange, specialConditions):
        self._tbt(
            reqId,
            time,
            {
                "tick_type": tickType,
                "price": price,
                "size": size,
                "past_limit": tickAttribLast.pastLimit,
                "unreported": tickAttribLast.unreported,
                "exchange": exchange,
                "conditions": specialConditions,
            },
        )

    def tickByTickBidAsk(self, reqId, time, bidPrice, askPrice, bidSize, askSize, tickAttribBidAsk):
        self._tbt(
            reqId,
            time,
            {
                "bid_price": bidPrice,
                "ask_price": askPrice,
                "bid_size": bidSize,
                "ask_size": askSize,
                "bid_past_low": tickAttribBidAsk.bidPastLow,
                "ask_past_high": tickAttribBidAsk.askPastHigh,
            },
        )

    def tickByTickMidPoint(self, reqId, time, midPoint):
        self._tbt(reqId, time, {"mid_point": midPoint})

    def _tbt(self, reqId: int, time: int, tick: dict[str, Any]) -> None:
        with self.lock:
            self.seen["tickByTick"] += 1
            self.tbt.setdefault(reqId, []).append(tick)
            self.tbt_times.setdefault(reqId, []).append(time)

    # --- L1 market data ------------------------------------------------------------------
    def marketDataType(self, reqId: int, marketDataType: int) -> None:
        self.market_data_type[reqId] = marketDataType

    def tickPrice(self, reqId, tickType, price, attrib) -> None:
        mask = (1 if attrib.canAutoExecute else 0) | (2 if attrib.pastLimit else 0) | (4 if attrib.preOpen else 0)
        with self.lock:
            self.seen["tickPrice"] += 1
            self.mkt.setdefault(reqId, []).append(
                {"msg": "tickPrice", "tick_type": tickType, "price": price, "size": None, "attr": mask}
            )
            size_type = PRICE_TO_SIZE_TYPE.get(tickType)
            self._implied_size = (reqId, size_type) if size_type is not None else None

    def tickSize(self, reqId, tickType, size) -> None:
        with self.lock:
            if self._implied_size == (reqId, tickType):
                # ibapi calls this straight after tickPrice (same thread) with the size field of
                # that tickPrice: fold it back into the tickPrice record.
                self._implied_size = None
                self.mkt[reqId][-1]["size"] = None if size == UNSET_DECIMAL else size
                return
            self._implied_size = None
            self.seen["tickSize"] += 1
            self.mkt.setdefault(reqId, []).append({"msg": "tickSize", "tick_type": tickType, "size": size})

    def tickString(self, reqId, tickType, value) -> None:
        with self.lock:
            self._implied_size = None
            self.seen["tickString"] += 1
            self.mkt.setdefault(reqId, []).append({"msg": "tickString", "tick_type": tickType, "value": value})

    def tickGeneric(self, reqId, tickType, value) -> None:
        with self.lock:
            self._implied_size = None
            self.seen["tickGeneric"] += 1
            self.mkt.setdefault(reqId, []).append({"msg": "tickGeneric", "tick_type": tickType, "value": value})

    # --- helpers -------------------------------------------------------------------------
    def errors_for(self, req_id: int) -> list[tuple[int, int, str]]:
        with self.lock:
            return [e for e in self.errors if e[0] == req_id]


def stock(symbol: str) -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", "SMART", "USD"
    return c


def future(symbol: str, exchange: str) -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "FUT", exchange, "USD"
    return c


def by_con_id(con_id: int, exchange: str) -> Contract:
    c = Contract()
    c.conId, c.exchange = con_id, exchange
    return c


class Run:
    def __init__(self, args: argparse.Namespace, ledger: Ledger) -> None:
        self.a = args
        self.L = ledger
        self.app = App()
        self.thread: threading.Thread | None = None
        self.req_id = 1000
        # Request ids that are expected to carry an error; any other error on a request of
        # ours is reported as unexpected at the end.
        self.expected_error_ids: set[int] = set()

    def rid(self) -> int:
        self.req_id += 1
        return self.req_id

    def wait(self, pred) -> bool:
        """Poll `pred` for up to --timeout seconds."""
        return wait_until(pred, self.a.timeout)

    # --- connect -------------------------------------------------------------------------
    def connect(self) -> None:
        app = self.app
        app.connect(self.a.host, self.a.port, self.a.client_id)
        if not app.isConnected():
            raise ConformanceError(f"could not connect to {self.a.host}:{self.a.port}")
        self.thread = threading.Thread(target=app.run, name="ibapi-run", daemon=True)
        self.thread.start()
        v = app.serverVersion()
        if v == self.a.expect_version:
            self.L.ok("handshake version", f"negotiated {v}")
        else:
            self.L.fail("handshake version", f"expected server version {self.a.expect_version}, got {v}")
        if self.wait(lambda: app.next_valid_id is not None and app.accounts is not None):
            self.L.ok("startup", f"nextValidId={app.next_valid_id} managedAccounts={app.accounts!r}")
        else:
            raise ConformanceError(
                f"no nextValidId/managedAccounts within {self.a.timeout}s "
                f"(nextValidId={app.next_valid_id}, managedAccounts={app.accounts!r}, errors={app.errors})"
            )
        if not app.accounts or not [a for a in app.accounts.split(",") if a]:
            self.L.fail("managedAccounts", f"empty account list {app.accounts!r}")

    # --- contracts -----------------------------------------------------------------------
    def lookup(self, name: str, contract: Contract, want: dict[str, Any]) -> ContractDetails | None:
        app, r = self.app, self.rid()
        app.reqContractDetails(r, contract)
        if not self.wait(lambda: r in app.details_end or app.errors_for(r)):
            self.L.fail(name, f"no contractDetails/contractDetailsEnd for reqId {r} within {self.a.timeout}s")
            return None
        errs = app.errors_for(r)
        rows = app.details.get(r, [])
        problems = [f"error {e[1]} {e[2]!r} on reqId {r}" for e in errs]
        if len(rows) != 1:
            problems.append(f"expected exactly 1 contractDetails, got {len(rows)}")
        if r not in app.details_end:
            problems.append("no contractDetailsEnd")
        if rows:
            c = rows[0].contract
            for k, v in want.items():
                got = getattr(c, k) if hasattr(c, k) else getattr(rows[0], k)
                if str(got) != str(v):
                    problems.append(f"{k}: expected {v!r}, got {got!r}")
        self.L.check(name, problems, f"conId {rows[0].contract.conId}" if rows else "")
        return rows[0] if rows and not problems else None

    def contracts(self) -> None:
        self.lookup(
            "contract AAPL by symbol",
            stock("AAPL"),
            {"conId": AAPL_CON_ID, "symbol": "AAPL", "secType": "STK", "currency": "USD", "primaryExchange": "NASDAQ"},
        )
        self.lookup(
            "contract MNQ by symbol",
            future("MNQ", "CME"),
            {"conId": MNQ_CON_ID, "symbol": "MNQ", "secType": "FUT", "currency": "USD", "multiplier": "2"},
        )
        self.lookup("contract AAPL by conId", by_con_id(AAPL_CON_ID, ""), {"conId": AAPL_CON_ID, "symbol": "AAPL"})
        self.lookup("contract MNQ by conId", by_con_id(MNQ_CON_ID, ""), {"conId": MNQ_CON_ID, "symbol": "MNQ"})

    # --- data ----------------------------------------------------------------------------
    def tick_by_tick(self, sym: str, con_id: int, exchange: str) -> None:
        app, n = self.app, self.a.count
        for kind in TICK_KINDS:
            name = f"tick-by-tick {kind} {sym} x{n}"
            want = expected(self.a.sim_bin, self.a.seed, con_id, kind, n)
            r = self.rid()
            app.reqTickByTickData(r, by_con_id(con_id, exchange), kind, 0, False)
            got_all = self.wait(lambda: len(app.tbt.get(r, [])) >= n or app.errors_for(r))
            app.cancelTickByTickData(r)
            with app.lock:
                got = list(app.tbt.get(r, []))[:n]
                times = list(app.tbt_times.get(r, []))[:n]
            problems = [f"error {e[1]} {e[2]!r} on reqId {r}" for e in app.errors_for(r)]
            if not got_all or len(got) < n:
                problems.append(f"received {len(got)} of {n} ticks within {self.a.timeout}s")
            for i, (w, g) in enumerate(zip(want, got)):
                problems += compare_tbt(kind, i, w, g)
            if any(t <= 0 for t in times) or times != sorted(times):
                problems.append(f"tick times not positive and non-decreasing: {times[:8]}...")
            self.L.check(name, problems, f"{len(got)} ticks equal to `expected`")

    def market_data(self, sym: str, con_id: int, exchange: str) -> None:
        app, n = self.app, self.a.count
        name = f"reqMktData L1 {sym} x{n}"
        want = expected(self.a.sim_bin, self.a.seed, con_id, "mktdata", n)
        r = self.rid()
        app.reqMktData(r, by_con_id(con_id, exchange), "", False, False, [])
        # Wait for one more callback than needed so the size of the n-th tickPrice (a follow-up
        # tickSize in ibapi) has been folded in, unless the stream stops at n.
        self.wait(lambda: len(app.mkt.get(r, [])) > n or app.errors_for(r))
        self.wait(lambda: len(app.mkt.get(r, [])) >= n or app.errors_for(r))
        app.cancelMktData(r)
        with app.lock:
            got = list(app.mkt.get(r, []))[:n]
        problems = [f"error {e[1]} {e[2]!r} on reqId {r}" for e in app.errors_for(r)]
        if len(got) < n:
            problems.append(f"received {len(got)} of {n} L1 callbacks within {self.a.timeout}s")
        for i, (w, g) in enumerate(zip(want, got)):
            problems += compare_mktdata(i, w, g, sizes_in_price=True)
        self.L.check(name, problems, f"{len(got)} callbacks equal to `expected`")

    # --- errors --------------------------------------------------------------------------
    def expect_error(self, name: str, req_id: int, code: int) -> None:
        app = self.app
        self.expected_error_ids.add(req_id)
        if not self.wait(lambda: any(e[1] == code for e in app.errors_for(req_id))):
            with app.lock:
                seen = [e for e in app.errors if e[1] not in NOTICE_CODES]
            self.L.fail(name, f"no error {code} on reqId {req_id} within {self.a.timeout}s; errors seen: {seen}")
            return
        err = next(e for e in app.errors_for(req_id) if e[1] == code)
        self.L.ok(name, f"reqId {req_id}: {code} {err[2]!r}")

    def errors(self) -> None:
        app = self.app
        r = self.rid()
        app.reqContractDetails(r, stock("NOSUCHSYM"))
        self.expect_error("error 200: contract details of an unknown symbol", r, 200)
        if r in app.details:
            self.L.fail("error 200: no details for unknown symbol", f"got {len(app.details[r])} contractDetails")

        r = self.rid()
        app.reqMktData(r, stock("NOSUCHSYM"), "", False, False, [])
        self.expect_error("error 200: reqMktData of an unknown contract", r, 200)

        r = self.rid()
        app.reqTickByTickData(r, stock("NOSUCHSYM"), "Last", 0, False)
        self.expect_error("error 200: reqTickByTickData of an unknown contract", r, 200)

        r = self.rid()
        app.reqMktData(r, by_con_id(AAPL_CON_ID, "SMART"), "", False, False, [])
        if not self.wait(lambda: len(app.mkt.get(r, [])) > 0 or app.errors_for(r)):
            self.L.fail("error 322: duplicate ticker id", f"first reqMktData {r} got no data")
        app.reqMktData(r, by_con_id(AAPL_CON_ID, "SMART"), "", False, False, [])
        self.expect_error("error 322: reqMktData reusing a live ticker id", r, 322)
        app.cancelMktData(r)

        r = self.rid() + 50_000
        app.cancelMktData(r)
        self.expect_error("error 300: cancelMktData of an unknown id", r, 300)

        if self.a.tbt_same_secs > 0:
            # IB's rule: a second tick-by-tick request for the same instrument and kind within
            # 15 s is refused with 10190. AAPL Last was requested moments ago by the data checks.
            r = self.rid()
            app.reqTickByTickData(r, by_con_id(AAPL_CON_ID, "SMART"), "Last", 0, False)
            self.expect_error(f"error 10190: same instrument and kind again within {self.a.tbt_same_secs}s", r, 10190)
            if not any(e[1] == 10190 for e in app.errors_for(r)):
                app.cancelTickByTickData(r)  # accepted after all: free its slot for the cap check

        self.tbt_cap()
        self.duplicate_client_id()

    def tbt_cap(self) -> None:
        """Fill the tick-by-tick cap, expect 10190 on one more, then a freed slot works again.

        Uses instruments the data checks never touched (see common.CAP_INSTRUMENTS)."""
        app, cap = self.app, self.a.tbt_cap
        name = f"error 10190: tick-by-tick request beyond the cap of {cap}"
        pairs = cap_pairs(cap + 2)
        live = []
        for con_id, exch, kind in pairs[:cap]:
            r = self.rid()
            app.reqTickByTickData(r, by_con_id(con_id, exch), kind, 0, False)
            live.append(r)
        ok = self.wait(lambda: all(app.tbt.get(r) or app.errors_for(r) for r in live))
        bad = [(r, app.errors_for(r)) for r in live if app.errors_for(r) or not app.tbt.get(r)]
        self.L.check(
            f"tick-by-tick: {cap} subscriptions up to the cap all stream",
            [] if ok and not bad else [f"reqId/errors: {bad}"],
        )
        over = self.rid()
        con_id, exch, kind = pairs[cap]
        app.reqTickByTickData(over, by_con_id(con_id, exch), kind, 0, False)
        self.expect_error(name, over, 10190)
        for r in live:
            app.cancelTickByTickData(r)
        again = self.rid()
        con_id, exch, kind = pairs[cap + 1]
        app.reqTickByTickData(again, by_con_id(con_id, exch), kind, 0, False)
        streamed = self.wait(lambda: app.tbt.get(again) or app.errors_for(again))
        app.cancelTickByTickData(again)
        self.L.check(
            "tick-by-tick slot freed by cancel",
            []
            if streamed and app.tbt.get(again) and not app.errors_for(again)
            else [f"after cancelling all, reqId {again} got errors {app.errors_for(again)}, no ticks"],
        )

    def duplicate_client_id(self) -> None:
        name = f"error 326: second connection with client id {self.a.client_id}"
        second = App()
        try:
            second.connect(self.a.host, self.a.port, self.a.client_id)
        except Exception as e:  # a refused handshake is a failure of this check, not a crash
            self.L.fail(name, f"second connect raised {e!r}")
            return
        t = threading.Thread(target=second.run, name="ibapi-run-2", daemon=True)
        t.start()
        got = wait_until(lambda: any(e[1] == 326 for e in second.errors), self.a.timeout)
        errs = [e for e in second.errors if e[1] == 326]
        if got and errs[0][0] == -1:
            self.L.ok(name, f"reqId -1: 326 {errs[0][2]!r}")
        else:
            self.L.fail(name, f"expected error 326 on reqId -1, second connection saw {second.errors}")
        closed = wait_until(lambda: not t.is_alive(), self.a.timeout)
        self.L.check("duplicate client id: server closes the second connection", [] if closed else ["still open"])
        second.disconnect()
        # The first session must be unaffected.
        self.app.current_time = None
        self.app.reqCurrentTime()
        alive = self.wait(lambda: self.app.current_time is not None)
        self.L.check(
            "first connection unaffected by the duplicate",
            [] if alive else [f"no currentTime within {self.a.timeout}s"],
            f"currentTime={self.app.current_time}",
        )

    def wire_form(self) -> None:
        """Each message family must have arrived in the form the negotiated version implies:
        all protobuf at 201 and above (as a current gateway sends, and as the protobuf-only
        Rust client needs), all text at 200 and below."""
        app = self.app
        with app.lock:
            seen, proto = dict(app.seen), dict(app.proto)
        problems = []
        for family in ("error", "contractData", "contractDataEnd", "tickPrice", "tickSize", "tickString",
                       "tickGeneric", "tickByTick"):
            n, p = seen.get(family, 0), proto.get(family, 0)
            if n == 0:
                problems.append(f"{family}: none received, form not checked")
            elif self.a.expect_version >= 201 and p != n:
                problems.append(f"{family}: {n - p} of {n} arrived as text at version {self.a.expect_version}")
            elif self.a.expect_version <= 200 and p != 0:
                problems.append(f"{family}: {p} of {n} arrived as protobuf at version {self.a.expect_version}")
        form = "protobuf" if self.a.expect_version >= 201 else "text"
        self.L.check(f"every message family in {form} form", problems, ", ".join(f"{k} {v}" for k, v in seen.items()))

    def unexpected_errors(self) -> None:
        with self.app.lock:
            bad = [
                e
                for e in self.app.errors
                if e[0] not in self.expected_error_ids and not (e[0] == -1 and e[1] in NOTICE_CODES)
            ]
        self.L.check("no unexpected errors", [f"reqId {e[0]}: {e[1]} {e[2]!r}" for e in bad])

    def main(self) -> None:
        try:
            self.connect()
            self.contracts()
            self.tick_by_tick("AAPL", AAPL_CON_ID, "SMART")
            self.tick_by_tick("MNQ", MNQ_CON_ID, "CME")
            self.market_data("AAPL", AAPL_CON_ID, "SMART")
            self.market_data("MNQ", MNQ_CON_ID, "CME")
            self.errors()
            self.unexpected_errors()
            self.wire_form()
        finally:
            self.app.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", type=int, default=7)
    ap.add_argument("--count", type=int, default=20, help="ticks per subscription to compare")
    ap.add_argument("--seed", type=int, required=True, help="the --seed tws-sim runs with")
    ap.add_argument("--sim-bin", required=True, help="tws-sim binary (for `tws-sim expected`)")
    ap.add_argument("--expect-version", type=int, required=True, help="server version the handshake must yield")
    ap.add_argument("--tbt-cap", type=int, required=True, help="tick-by-tick cap tws-sim runs with")
    ap.add_argument(
        "--tbt-same-secs",
        type=int,
        default=15,
        help="tws-sim --tbt-same-instrument-secs (0: rule off, its check is skipped)",
    )
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any one answer")
    args = ap.parse_args()
    # ibapi logs every unhandled callback at INFO; keep the output to the checks.
    logging.basicConfig(level=logging.CRITICAL)
    label = f"ibapi 10.51.1 @ {args.expect_version} ({'protobuf' if args.expect_version >= 201 else 'text'})"
    ledger = Ledger(label)
    try:
        Run(args, ledger).main()
    except ConformanceError as e:
        ledger.fail("fatal", str(e))
    return ledger.finish()


if __name__ == "__main__":
    sys.exit(main())
