// With admin_token set, the page is opened as /dashboard?token=...; its API calls carry the token.
const TOKEN = new URLSearchParams(window.location.search).get("token");
const AUTH = TOKEN ? { headers: { Authorization: `Bearer ${TOKEN}` } } : {};
// ctxgate dashboard: reads /v1/fidelity and /v1/fidelity/series and draws plain SVG line charts.
// No libraries and no CDN: the sidecar often runs where nothing outside can be reached.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fdd", "#e07b1a", "#2a9d5c", "#9b51e0", "#d64545", "#1aa3b8", "#8a6d3b", "#555"];
const W = 640, H = 260, M = { l: 56, r: 16, t: 14, b: 30 };
const REFRESH_MS = 15000;

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function fmtTime(t, span) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: span < 600 ? "2-digit" : undefined });
  return span > 86400 * 1.5 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
}

function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(a < 10 ? 2 : 1);
}

// series: [{name, color, points: [[t, v], ...], dashed, step}]; opts: {yMin, yMax, hline}
function lineChart(container, series, opts) {
  container.textContent = "";
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" }, container);
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  svg.setAttribute("data-points", pts.length);
  if (!pts.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = "no data yet";
    return;
  }
  let t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  if (t1 - t0 < 1) { t0 -= 30; t1 += 30; }
  let y0 = opts.yMin ?? Math.min(...pts.map((p) => p[1])), y1 = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
  if (opts.hline !== undefined) { y0 = Math.min(y0, opts.hline); y1 = Math.max(y1, opts.hline); }
  if (opts.yMin === undefined) y0 = Math.min(0, y0);
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const x = (t) => M.l + ((t - t0) / (t1 - t0)) * (W - M.l - M.r);
  const y = (v) => H - M.b - ((v - y0) / (y1 - y0)) * (H - M.t - M.b);

  const axis = el("g", { class: "axis" }, svg);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    el("line", { x1: M.l, x2: W - M.r, y1: y(v), y2: y(v), class: "grid-line" }, axis);
    el("text", { x: M.l - 6, y: y(v) + 4, "text-anchor": "end" }, axis).textContent = fmtNum(v);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    el("text", { x: x(t), y: H - 8, "text-anchor": "middle" }, axis).textContent = fmtTime(t, t1 - t0);
  }
  if (opts.hline !== undefined) {
    el("line", { x1: M.l, x2: W - M.r, y1: y(opts.hline), y2: y(opts.hline), class: "threshold" }, svg);
  }
  const legend = el("g", { class: "legend" }, svg);
  let lx = M.l + 4;
  series.forEach((s) => {
    const good = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!good.length) return;
    let d = "";
    good.forEach((p, i) => {
      if (i === 0) d += `M${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`;
      else if (s.step) d += `H${x(p[0]).toFixed(1)}V${y(p[1]).toFixed(1)}`;
      else d += `L${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`;
    });
    el("path", { d, stroke: s.color, class: "series-line" + (s.dashed ? " dashed" : ""), "data-series": s.name }, svg);
    good.forEach((p) => {
      const c = el("circle", { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 3, fill: s.color, class: "point" }, svg);
      el("title", {}, c).textContent = `${s.name}: ${fmtNum(p[1])} at ${new Date(p[0] * 1000).toLocaleString()}`;
    });
    el("rect", { x: lx, y: M.t - 10, width: 10, height: 3, fill: s.color }, legend);
    const label = el("text", { x: lx + 14, y: M.t - 6 }, legend);
    label.textContent = s.name;
    lx += 24 + s.name.length * 6.2;
  });
}

function keyName(s) { return `${s.route} · ${s.model || "(no model)"}`; }

function render(series, agg) {
  const metric = series.metric;
  const saved = [], ratio = [], fidelity = [], rate = [];
  series.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length], name = keyName(s);
    saved.push({ name: name + " est.", color, points: s.traffic.map((p) => [p.t, p.tokens_saved_estimate]) });
    const measured = s.fidelity.filter((p) => p.tokens_saved_usage !== null);
    if (measured.length) {
      saved.push({ name: name + " usage", color, dashed: true, points: measured.map((p) => [p.t, p.tokens_saved_usage]) });
    }
    ratio.push({ name, color, points: s.traffic.map((p) => [p.t, p.ratio]) });
    fidelity.push({ name, color, points: s.fidelity.map((p) => [p.t, p[metric]]) });
    rate.push({ name, color, step: true, points: s.rate.map((p) => [p.t, p.rate]) });
  });
  lineChart(document.querySelector("#chart-saved .plot"), saved, {});
  lineChart(document.querySelector("#chart-ratio .plot"), ratio, { yMin: 1 });
  lineChart(document.querySelector("#chart-fidelity .plot"), fidelity, { yMin: 0, yMax: 1, hline: series.threshold });
  lineChart(document.querySelector("#chart-rate .plot"), rate, { yMin: 0, yMax: 1 });
  document.getElementById("fidelity-note").textContent =
    `${metric} of the compressed-prompt answer against the uncompressed answer, mean per bucket of ` +
    `${series.bucket}s; dashed red: threshold ${series.threshold} (below it the controller compresses less).`;

  const rows = agg.routes;
  const sum = (f) => rows.reduce((a, r) => a + (f(r) || 0), 0);
  const b = agg.budget;
  const cards = [
    ["requests compressed", sum((r) => r.requests)],
    ["shadow samples", sum((r) => r.samples)],
    ["tokens saved (usage)", sum((r) => r.tokens_saved.usage)],
    ["tokens saved (estimate)", sum((r) => r.tokens_saved.estimate)],
    ["shadow calls today", `${b.calls}${b.max_calls ? " / " + b.max_calls : ""}`],
    ["sample rate", agg.config.sample_rate],
  ];
  const box = document.getElementById("cards");
  box.textContent = "";
  cards.forEach(([k, v]) => {
    const card = document.createElement("div");
    card.className = "card";
    const vEl = document.createElement("div"); vEl.className = "v"; vEl.textContent = typeof v === "number" ? fmtNum(v) : v;
    const kEl = document.createElement("div"); kEl.className = "k"; kEl.textContent = k;
    card.append(vEl, kEl); box.appendChild(card);
  });
  const tbody = document.querySelector("#table tbody");
  tbody.textContent = "";
  rows.forEach((r) => {
    const tr = document.createElement("tr");
    [r.route, r.model || "(no model)", r.requests, r.samples, r.mean_cosine, r.mean_f1, r.mean_em, r.achieved_ratio,
     r.tokens_saved.usage, r.tokens_saved.estimate, r.rate, r.configured_rate, r.adjustments].forEach((v) => {
      const td = document.createElement("td");
      td.textContent = typeof v === "number" ? fmtNum(v) : (v ?? "–");
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  });
}

async function refresh() {
  const since = document.getElementById("since").value;
  const status = document.getElementById("status");
  try {
    const [s, a] = await Promise.all([
      fetch(`/v1/fidelity/series?since=${since}`, AUTH).then((r) => { if (!r.ok) throw new Error(r.status); return r.json(); }),
      fetch("/v1/fidelity", AUTH).then((r) => { if (!r.ok) throw new Error(r.status); return r.json(); }),
    ]);
    render(s, a);
    status.textContent = `updated ${new Date().toLocaleTimeString()} · bucket ${s.bucket}s`;
    document.body.dataset.loaded = "1";
  } catch (err) {
    status.textContent = `cannot reach the sidecar (${err.message}); retrying`;
  }
}

document.getElementById("since").addEventListener("change", refresh);
refresh();
setInterval(refresh, REFRESH_MS);
