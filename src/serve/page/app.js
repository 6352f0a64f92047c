// ib-stream live page: one EventSource per stream, a small canvas chart, no dependencies.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
// Every time shown carries its zone: the browser's, or ?tz=America/New_York (an IANA name).
const zone = (() => {
  const want = params.get("tz");
  try { if (want) { new Intl.DateTimeFormat("en-GB", { timeZone: want }); return want; } } catch (_) { /* unknown zone */ }
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
})();
const clockFmt = new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const zoneFmt = new Intl.DateTimeFormat("en-GB", { timeZone: zone, timeZoneName: "short" });
function zoneName(ms) {
  const p = zoneFmt.formatToParts(new Date(ms)).find((x) => x.type === "timeZoneName");
  return p ? p.value : zone;
}
// "14:30:05" in the page's zone.
function clock(ms) { return clockFmt.format(new Date(ms)); }
// "14:30:05.123 UTC": a time with milliseconds and its zone.
function stamp(ms) {
  const frac = String(Math.floor(((ms % 1000) + 1000) % 1000)).padStart(3, "0");
  return clock(ms) + "." + frac + " " + zoneName(ms);
}
const $ = (id) => document.getElementById(id);
const MAX_POINTS = 2000;
const MAX_ROWS = 50;
const MAX_LOG = 200;

let source = null;
let total = 0, gaps = 0, windowCount = 0;
let series = { bid: [], ask: [], last: [], mid: [] };

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

function setState(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = text || state;
}

function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = stamp(Date.now()) + " " + kind + ": " + text;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > MAX_LOG) ol.lastChild.remove();
}

function push(name, t, v) {
  if (v === undefined || v === null) return;
  const s = series[name];
  s.push([t, Number(v)]);
  if (s.length > MAX_POINTS) s.splice(0, s.length - MAX_POINTS);
}

function values(tick) {
  const skip = new Set(["seq", "st", "sn", "ts", "tn", "cid", "tt"]);
  return Object.entries(tick).filter(([k]) => !skip.has(k)).map(([k, v]) => k + "=" + v).join(" ");
}

function onTick(e) {
  const tick = JSON.parse(e.data);
  total++; windowCount++;
  $("total").textContent = total;
  $("lastseq").textContent = tick.seq;
  const t = tick.st / 1000; // ms
  switch (tick.tt) {
    case "bid_ask": push("bid", t, tick.bp); push("ask", t, tick.ap); break;
    case "last": case "all_last": push("last", t, tick.p); break;
    case "mid_point": push("mid", t, tick.mp); break;
    case "l1_price":
      if (tick.f === 1) push("bid", t, tick.p);
      else if (tick.f === 2) push("ask", t, tick.p);
      else if (tick.f === 4) push("last", t, tick.p);
      break;
  }
  const tr = document.createElement("tr");
  for (const text of [tick.seq, stamp(t), tick.tt, values(tick)]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  const body = $("ticks").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  dirty = true;
}

let dirty = false;

// About `n` round steps between lo and hi (1, 2 or 5 times a power of ten).
function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / Math.max(1, n);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function draw() {
  requestAnimationFrame(draw);
  if (!dirty) return;
  dirty = false;
  const canvas = $("chart");
  const dpr = devicePixelRatio;
  const w = canvas.width = canvas.clientWidth * dpr;
  const h = canvas.height = canvas.clientHeight * dpr;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const all = [].concat(...Object.values(series));
  if (all.length === 0) return;
  let t0 = Infinity, t1 = -Infinity, lo = Infinity, hi = -Infinity;
  for (const [t, v] of all) { t0 = Math.min(t0, t); t1 = Math.max(t1, t); lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi === lo) { hi += 0.5; lo -= 0.5; }
  if (t1 === t0) t1 = t0 + 1;
  // Room on the left for the price labels, at the bottom for the time labels.
  const left = 70 * dpr, right = 12 * dpr, top = 10 * dpr, bottom = 22 * dpr;
  const x = (t) => left + (t - t0) / (t1 - t0) * (w - left - right);
  const y = (v) => h - bottom - (v - lo) / (hi - lo) * (h - top - bottom);
  const css = getComputedStyle(document.documentElement);
  const dim = css.getPropertyValue("--dim").trim();
  ctx.font = 11 * dpr + "px monospace";
  ctx.lineWidth = 1;
  ctx.strokeStyle = "#2a323c";
  ctx.fillStyle = dim;
  // Price axis: round values, one grid line each.
  const yTicks = niceTicks(lo, hi, 5);
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of yTicks) {
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke();
    ctx.fillText(String(v), left - 6 * dpr, y(v));
  }
  // Time axis: round steps (tenths of a second up to hours), as clock times in the page's
  // zone; the zone itself is in the axis title.
  const spanS = (t1 - t0) / 1000;
  const stepS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600].find((s) => spanS / s <= 8) || 7200;
  const xTicks = [];
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let t = Math.ceil(t0 / (stepS * 1000)) * stepS * 1000; t <= t1; t += stepS * 1000) {
    ctx.beginPath(); ctx.moveTo(x(t), top); ctx.lineTo(x(t), h - bottom); ctx.stroke();
    const label = stepS < 1 ? clock(t) + "." + Math.floor((t % 1000) / 100) : clock(t);
    ctx.fillText(label, x(t), h - bottom + 5 * dpr);
    xTicks.push(label);
  }
  canvas.dataset.yTicks = yTicks.join(" ");
  canvas.dataset.xTicks = xTicks.join(" ");
  $("xaxis").textContent = "time (" + zoneName(t1) + ")";
  ctx.lineWidth = 1.5 * dpr;
  for (const name of ["bid", "ask", "mid", "last"]) {
    const s = series[name];
    if (s.length === 0) continue;
    ctx.strokeStyle = css.getPropertyValue("--" + name).trim();
    ctx.beginPath();
    s.forEach(([t, v], i) => (i === 0 ? ctx.moveTo(x(t), y(v)) : ctx.lineTo(x(t), y(v))));
    ctx.stroke();
  }
}
requestAnimationFrame(draw);

setInterval(() => { $("rate").textContent = windowCount; windowCount = 0; }, 1000);

function stop(reason) {
  if (source) { source.close(); source = null; }
  $("start").disabled = false;
  $("stop").disabled = true;
  setState("closed", reason ? "closed: " + reason : "closed");
}

function start(ev) {
  ev.preventDefault();
  const cid = $("conid").value.trim();
  if (!/^[0-9]+$/.test(cid)) { log("error", "the contract id is a positive integer"); return; }
  const types = [...document.querySelectorAll("#types input:checked")].map((i) => i.value);
  if (types.length === 0) { log("error", "pick at least one tick type"); return; }
  stop();
  series = { bid: [], ask: [], last: [], mid: [] };
  total = 0; gaps = 0;
  $("gaps").textContent = 0;
  const url = withToken("/v3/stream/" + cid + "?tick_types=" + types.join(",") + "&slow=" + $("slow").value);
  setState("connecting");
  source = new EventSource(url);
  $("start").disabled = true;
  $("stop").disabled = false;
  source.onopen = () => setState("open");
  source.addEventListener("tick", onTick);
  source.addEventListener("info", (e) => {
    const m = JSON.parse(e.data);
    log("info", m.status + (m.record ? " " + JSON.stringify(m.record) : ""));
  });
  source.addEventListener("gap", (e) => {
    const m = JSON.parse(e.data);
    gaps++;
    $("gaps").textContent = gaps;
    log("gap", m.reason + " seq " + m.first_seq + ".." + m.last_seq + " (" + m.count + ")");
  });
  source.addEventListener("complete", (e) => {
    const m = JSON.parse(e.data);
    log("complete", m.reason + " after " + m.count + " ticks");
    stop(m.reason);
  });
  source.addEventListener("heartbeat", () => {});
  // Server `error` messages carry data; a connection error does not (EventSource retries,
  // sending Last-Event-ID so that the stream resumes where it stopped).
  source.addEventListener("error", (e) => {
    if (e.data) {
      const m = JSON.parse(e.data);
      log("error", m.code + ": " + m.message + (m.ib_code ? " (IB " + m.ib_code + ")" : ""));
    } else if (source && source.readyState === EventSource.CONNECTING) {
      setState("connecting", "reconnecting");
    } else {
      setState("error", "connection failed (see /health)");
    }
  });
}

$("controls").addEventListener("submit", start);
$("stop").addEventListener("click", () => stop("stopped"));

$("xaxis").textContent = "time (" + zoneName(Date.now()) + ")";
if (params.get("con_id")) $("conid").value = params.get("con_id");
// The stream starts on open: the contract of ?con_id=, else the first tracked contract.
fetch(withToken("/background/status")).then((r) => r.json()).then((s) => {
  const list = $("tracked");
  for (const c of s.contracts || []) {
    const o = document.createElement("option");
    o.value = c.con_id;
    o.label = c.symbol;
    list.appendChild(o);
    if (!$("conid").value) $("conid").value = c.con_id;
  }
}).catch(() => log("error", "cannot read /background/status")).finally(() => {
  if ($("conid").value && !source) $("controls").requestSubmit();
  else if (!source) log("info", "no tracked contract: enter a contract id and press Start");
});
