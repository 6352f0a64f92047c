// ib-stream chart page: candles, volume and delta of /v3/bars (stored history, then live),
// drawn with TradingView's lightweight-charts (served at /page/lightweight-charts.js from the
// version pinned in web/package-lock.json). Times are the exchange's (the zone the server
// names in `bars_start`), never the browser's.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = new Date().toISOString().slice(11, 19) + " " + kind + ": " + text;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > 40) ol.lastChild.remove();
}

function setState(s) {
  const el = $("conn");
  el.dataset.state = s;
  el.className = "state " + s;
  el.textContent = s;
}

let zone = params.get("tz") || "America/New_York";
const formats = new Map();
function fmt(sec, opts) {
  const key = zone + JSON.stringify(opts);
  let f = formats.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat("en-GB", Object.assign({ timeZone: zone, hourCycle: "h23" }, opts));
    formats.set(key, f);
  }
  return f.format(new Date(sec * 1000));
}
// The time axis in the exchange's zone (lightweight-charts itself knows only UTC).
function tickMark(time, type) {
  switch (type) {
    case 0: return fmt(time, { year: "numeric" });
    case 1: return fmt(time, { month: "short" });
    case 2: return fmt(time, { day: "numeric", month: "short" });
    case 3: return fmt(time, { hour: "2-digit", minute: "2-digit" });
    default: return fmt(time, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
}
function fullTime(time) {
  return fmt(time, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
}

const UP = "#26a69a", DOWN = "#ef5350", GAP = "#9e9e9e";
const LC = window.LightweightCharts;
const chart = LC.createChart($("chart"), {
  autoSize: true,
  layout: { background: { color: "#161c23" }, textColor: "#d8dee9", panes: { separatorColor: "#333" } },
  grid: { vertLines: { color: "#222" }, horzLines: { color: "#222" } },
  timeScale: { timeVisible: true, secondsVisible: true, tickMarkFormatter: tickMark },
  localization: { timeFormatter: fullTime },
  rightPriceScale: { visible: true },
});
const candles = chart.addSeries(LC.CandlestickSeries, {
  upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
});
const vwap = chart.addSeries(LC.LineSeries, {
  color: "#ffd54f", lineWidth: 2, priceLineVisible: false, lastValueVisible: false, title: "VWAP",
});
const volume = chart.addSeries(LC.HistogramSeries, { color: "#4fc3f7", priceFormat: { type: "volume" }, title: "volume" }, 1);
const delta = chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" }, title: "delta" }, 2);
chart.panes()[0].setStretchFactor(4);
chart.panes()[1].setStretchFactor(1);
chart.panes()[2].setStretchFactor(1);

// The bars drawn, by start (seconds): the server's messages as they last came.
const bars = new Map();
let lastTime = -Infinity;
let redraw = false;
// What the page draws, for tests and the console: the `bar` rows, oldest first.
Object.defineProperty(window, "__bars", {
  get: () => [...bars.keys()].sort((a, b) => a - b).map((t) => bars.get(t).bar),
});

function points(m) {
  const t = Math.floor(m.t / 1e6);
  const b = m.bar;
  // A bar without a price (a gap's empty interval) is whitespace: drawn as a gap.
  if (b.open === null) return [{ time: t }, { time: t }, { time: t }, { time: t }];
  const c = { time: t, open: b.open, high: b.high, low: b.low, close: b.close };
  if (b.gap) Object.assign(c, { color: GAP, wickColor: GAP });
  const d = m.delta ? m.delta.delta : null;
  return [
    c,
    { time: t, value: b.volume, color: b.close >= b.open ? UP + "99" : DOWN + "99" },
    d === null ? { time: t } : { time: t, value: d, color: d >= 0 ? UP : DOWN },
    m.session_vwap === null ? { time: t } : { time: t, value: m.session_vwap },
  ];
}

const series = [candles, volume, delta, vwap];
function put(m) {
  const t = Math.floor(m.t / 1e6);
  bars.set(t, m);
  if (t >= lastTime && !redraw) {
    lastTime = t;
    points(m).forEach((p, i) => series[i].update(p));
  } else if (!redraw) {
    // An older bar (a replay after a reconnect): redraw everything once.
    redraw = true;
    requestAnimationFrame(drawAll);
  }
  $("nbars").textContent = bars.size;
}

function drawAll() {
  redraw = false;
  const all = [...bars.keys()].sort((a, b) => a - b).map((t) => points(bars.get(t)));
  series.forEach((s, i) => s.setData(all.map((p) => p[i])));
  lastTime = all.length ? all[all.length - 1][0].time : -Infinity;
  $("ngaps").textContent = [...bars.values()].filter((m) => m.bar.gap).length;
}

function sizeSeconds(s) {
  const n = parseInt(s, 10);
  return n * ({ s: 1, m: 60, h: 3600, d: 86400 }[s.slice(-1)] || 60);
}

let source = null;
let conId = null;
const symbols = new Map();

function stop() {
  if (source) source.close();
  source = null;
}

function open() {
  stop();
  bars.clear();
  lastTime = -Infinity;
  series.forEach((s) => s.setData([]));
  const size = $("size").value;
  // 300 bars back (at most 3 days) unless the address says from when.
  const since = params.get("since") || Math.min(300 * sizeSeconds(size), 3 * 86400) + "s";
  let url = "/v3/bars/" + conId + "?size=" + encodeURIComponent(size) + "&since=" + encodeURIComponent(since);
  if (params.get("tz")) url += "&tz=" + encodeURIComponent(params.get("tz"));
  $("title").textContent = (symbols.get(conId) || "") + " " + conId + " · " + size;
  for (const b of $("contracts").children) b.setAttribute("aria-pressed", String(b.dataset.conId === String(conId)));
  setState("connecting");
  source = new EventSource(withToken(url));
  source.onopen = () => setState("open");
  source.addEventListener("info", (e) => {
    const m = JSON.parse(e.data);
    if (m.status === "bars_start") {
      zone = m.tz;
      $("zone").textContent = m.tz;
      // The axes' formatters read `zone`: have them run again.
      chart.applyOptions({ timeScale: { tickMarkFormatter: tickMark }, localization: { timeFormatter: fullTime } });
    }
    // History is drawn: show all of it once.
    if (m.status === "live") requestAnimationFrame(() => chart.timeScale().fitContent());
    log("info", m.status + (m.status === "live" ? " after seq " + m.after_seq : ""));
  });
  source.addEventListener("bar", (e) => put(JSON.parse(e.data)));
  source.addEventListener("update", (e) => put(JSON.parse(e.data)));
  source.addEventListener("gap", (e) => {
    const g = JSON.parse(e.data);
    if (g.count === 0) log("info", "engine run changed, nothing lost");
    else log("gap", g.reason + " seq " + g.first_seq + ".." + (g.last_seq === null ? "?" : g.last_seq));
    requestAnimationFrame(drawAll);
  });
  source.addEventListener("complete", (e) => {
    log("complete", JSON.parse(e.data).reason);
    stop();
    setState("closed");
  });
  source.addEventListener("error", (e) => {
    if (e.data) log("error", JSON.parse(e.data).message);
    else if (source && source.readyState === EventSource.CONNECTING) setState("connecting");
    else setState("error");
  });
}

function choose(id) {
  conId = id;
  const u = new URL(location.href);
  u.searchParams.set("con_id", id);
  history.replaceState(null, "", u);
  open();
}

if (params.get("size")) $("size").value = params.get("size");
$("size").addEventListener("change", () => conId && open());
$("zone").textContent = zone;
fetch(withToken("/background/status")).then((r) => r.json()).then((s) => {
  for (const c of s.contracts || []) {
    symbols.set(String(c.con_id), c.symbol);
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = c.symbol;
    b.title = "conId " + c.con_id;
    b.dataset.conId = c.con_id;
    b.addEventListener("click", () => choose(String(c.con_id)));
    $("contracts").appendChild(b);
  }
}).catch(() => log("error", "cannot read /background/status")).finally(() => {
  const first = $("contracts").firstChild;
  const id = params.get("con_id") || (first && first.dataset.conId);
  if (id) choose(String(id));
  else log("info", "no tracked contract: add ?con_id= to the address");
});
