// schedd dashboard plots, drawn with uPlot (vendored beside this file: uPlot.iife.min.js, MIT, see
// uPlot.LICENSE and VENDORED.txt). Data: /ui/history once (samples per node, the last hour's runs, recent
// waits), then the event stream app.js holds: a `sample` event per new row, and every `state` snapshot
// moves the newest ("now") point, so a plot changes as soon as a job starts, not only every sample.
// For tests and people: window.scheddPlots holds the charts; each chart's box carries data-points.
"use strict";

(() => {
  const FIELDS = ["cpus", "cpus_total", "memory", "memory_total", "gpus", "gpus_total", "running", "pending",
    "queue", "starts", "ends", "failed"];
  const F = Object.fromEntries(FIELDS.map((f, i) => [f, i + 1]));
  const COLORS = ["#1d4ed8", "#15803d", "#a16207", "#b91c1c", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f"];
  const WAIT_EDGES = [0.01, 0.1, 1, 10, 60, 600, 3600, Infinity];
  const WAIT_LABELS = ["<10ms", "<100ms", "<1s", "<10s", "<1m", "<10m", "<1h", "≥1h"];
  const HOUR = 3600;

  const st = {
    node: "", interval: 10, keep: 86400, rows: new Map(), live: new Map(), runs: new Map(), waits: new Map(),
    nodes: [], snap: null, loading: null,
  };
  const charts = { util: new Map(), queue: null, gantt: null, waits: null };
  window.scheddPlots = charts;
  const $ = (sel) => document.querySelector(sel);
  const nowS = () => (st.snap ? st.snap.now / 1e6 + (Date.now() - st.snapAt) / 1000 : Date.now() / 1000);

  // -- data ----------------------------------------------------------------------------------

  function addRow(node, row) {
    let rows = st.rows.get(node);
    if (!rows) st.rows.set(node, (rows = []));
    if (!rows.length || rows[rows.length - 1][0] < row[0]) {
      rows.push(row);
    } else {  // a row refetched after a missed sample event: into its place, once
      let lo = 0, hi = rows.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (rows[mid][0] < row[0]) lo = mid + 1; else hi = mid; }
      if (rows[lo][0] === row[0]) return;
      rows.splice(lo, 0, row);
    }
    const cap = Math.ceil((st.keep || 86400) / st.interval) + 2;
    if (rows.length > cap) rows.splice(0, rows.length - cap);
  }

  function addRun(r) {  // [id, name, user, node, cpus, start, end, state]
    st.runs.set(`${r[0]}:${r[5]}`, r);
  }

  function addWait(id, start, wait) { st.waits.set(`${id}:${Math.round(start)}`, wait); }

  async function load(since) {
    const r = await fetch(`/ui/history?since=${since || 0}`);
    if (!r.ok) return;
    const h = await r.json();
    st.node = h.node;
    st.interval = h.interval_s;
    st.keep = h.keep_s;
    for (const [node, cols] of Object.entries(h.nodes)) {
      for (let i = 0; i < cols.t.length; i++) addRow(node, [cols.t[i], ...FIELDS.map((f) => cols[f][i])]);
    }
    h.runs.forEach(addRun);
    h.waits.forEach((w) => addWait(w[0], w[1], w[2]));
    schedule();
  }

  function refetch() {  // missed samples (a slow stream, a reconnect): ask for what came after ours
    if (st.loading) return;
    const local = st.rows.get(st.node) || [];
    const since = local.length ? local[local.length - 1][0] : 0;
    st.loading = load(since).finally(() => { st.loading = null; });
  }

  function onSample(ev) {
    const s = ev.detail;
    st.interval = s.interval_s;
    const local = st.rows.get(st.node) || [];
    const last = local.length ? local[local.length - 1][0] : null;
    const mine = s.nodes[st.node];
    if (last !== null && mine && mine[0] - last > 1.5 * st.interval) refetch();
    for (const [node, row] of Object.entries(s.nodes)) addRow(node, row);
    schedule();
  }

  function onState(ev) {
    const snap = ev.detail;
    st.snap = snap;
    st.snapAt = Date.now();
    st.node = snap.node;
    const t = snap.now / 1e6;
    st.nodes = snap.nodes.map((n) => n.Name);
    snap.nodes.forEach((n) => {
      const up = n.State !== "down"; // draining and drained nodes still report their load
      const v = (x) => (up ? x : null);
      const row = [t, v(n.TotalCPUs - n.AvailableCPUs), v(n.TotalCPUs), v(n.TotalMemory - n.AvailableMemory),
        v(n.TotalMemory), v(n.TotalGPUs - n.AvailableGPUs), v(n.TotalGPUs), v(n.RunningJobs), v(n.PendingJobs),
        null, null, null, null];
      if (n.Local || n.Name === snap.node) {
        row[F.running] = snap.counts.running;
        row[F.pending] = snap.counts.pending;
        row[F.queue] = snap.counts.queue;
      }
      st.live.set(n.Name, row);
    });
    for (const j of snap.recent) {
      if (j.start_time && j.end_time) {
        addRun([j.id, j.name, j.user, j.node || snap.node, j.assigned_cpus, j.start_time / 1e6, j.end_time / 1e6,
          j.state]);
      }
    }
    for (const j of snap.running.concat(snap.recent)) {
      if (j.start_time && j.submit_time) addWait(j.id, j.start_time / 1e6, Math.max(0, j.start_time - j.submit_time) / 1e6);
    }
    schedule();
  }

  // The rows of a node with its live point last (the live point only when newer than the last sample).
  function series(node) {
    const rows = (st.rows.get(node) || []).slice();
    const live = st.live.get(node);
    if (live && (!rows.length || live[0] > rows[rows.length - 1][0])) rows.push(live);
    return rows;
  }

  // -- charts -----------------------------------------------------------------------------------

  const pct = (a, b) => (a === null || b === null || b === undefined || !b ? null : (100 * a) / b);
  const color = (i) => COLORS[i % COLORS.length];
  const width = (el) => Math.max(260, el.clientWidth);

  function box(parent, id, title) {
    let el = document.getElementById(id);
    if (!el) {
      el = document.createElement("figure");
      el.id = id;
      el.className = "plot";
      const cap = document.createElement("figcaption");
      cap.textContent = title;
      el.appendChild(cap);
      parent.appendChild(el);
      sizer.observe(el);  // a grid column that narrows (a node joins, a phone turns) resizes the chart
    }
    return el;
  }

  function mark(el, data) {  // what tests (and curious people) read: how many points the chart holds
    let n = 0;
    for (let s = 1; s < data.length; s++) for (const v of data[s]) if (v !== null && v !== undefined) n++;
    el.dataset.points = String(n);
    el.dataset.samples = String(data[0].length);
    const first = data[1] || [];
    for (let i = first.length - 1; i >= 0; i--) if (first[i] !== null) { el.dataset.last = String(first[i]); break; }
  }

  function make(el, opts, data, key) {
    const old = el.chart;
    if (old && old.key === key) {
      old.setData(data);
    } else {
      if (old) old.destroy();
      el.chart = new uPlot({ width: width(el), height: 200, ...opts }, data, el);
      el.chart.key = key;
    }
    mark(el, data);
    return el.chart;
  }

  function drawUtil() {
    const parent = $("#util-plots");
    const names = st.nodes.length ? st.nodes : [...st.rows.keys()];
    for (const [name, el] of charts.util) {
      if (!names.includes(name)) { el.chart && el.chart.destroy(); el.remove(); charts.util.delete(name); }
    }
    names.forEach((name) => {
      const el = box(parent, `util-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`, `Utilisation of ${name} (% allocated)`);
      el.dataset.node = name;
      charts.util.set(name, el);
      const rows = series(name);
      const gpus = rows.some((r) => r[F.gpus_total]);
      const data = [rows.map((r) => r[0]), rows.map((r) => pct(r[F.cpus], r[F.cpus_total])),
        rows.map((r) => pct(r[F.memory], r[F.memory_total]))];
      const s = [{}, { label: "CPUs", stroke: color(0), width: 2 }, { label: "memory", stroke: color(1), width: 2 }];
      if (gpus) { data.push(rows.map((r) => pct(r[F.gpus], r[F.gpus_total]))); s.push({ label: "GPUs", stroke: color(2), width: 2 }); }
      make(el, { series: s, scales: { y: { range: [0, 100] } }, axes: [{}, { values: (u, v) => v.map((x) => x + "%") }] },
        data, `util:${gpus}`);
    });
  }

  function drawQueue() {
    const el = box($("#queue-plots"), "plot-queue", "Queue and running jobs over time");
    charts.queue = el;
    const local = series(st.node);
    const t = local.map((r) => r[0]);
    const data = [t, local.map((r) => r[F.pending]), local.map((r) => r[F.running])];
    const s = [{}, { label: `${st.node} pending`, stroke: color(2), width: 2, fill: "rgba(161,98,7,.08)" },
      { label: `${st.node} running`, stroke: color(0), width: 2 }];
    const peers = (st.nodes.length ? st.nodes : [...st.rows.keys()]).filter((n) => n !== st.node);
    peers.forEach((p, i) => {
      const byT = new Map(series(p).map((r) => [r[0], r]));
      const live = st.live.get(p);
      data.push(t.map((x, k) => {
        const r = byT.get(x) || (k === t.length - 1 && live ? live : null);
        return r ? r[F.pending] : null;
      }));
      s.push({ label: `${p} pending`, stroke: color(3 + i), width: 1.5, dash: [6, 3] });
    });
    make(el, { series: s, scales: { y: { range: (u, mn, mx) => [0, Math.max(1, mx)] } } }, data, `queue:${peers}`);
  }

  function ganttBars() {
    const now = nowS();
    const bars = [];
    const add = (id, name, user, node, cpus, start, end, state) => {
      if (end < now - HOUR) return;
      (cpus || []).forEach((c) => bars.push({ id, name, user, node, cpu: c, start, end, state }));
    };
    for (const r of st.runs.values()) add(...r);
    const running = st.snap ? st.snap.running : [];
    running.forEach((j) => add(j.id, j.name, j.user, j.node || st.node, j.assigned_cpus, j.start_time / 1e6, now, j.state));
    const rows = [];
    const seen = new Set();
    const want = (node, cpu) => { const k = `${node}/${cpu}`; if (!seen.has(k)) { seen.add(k); rows.push([node, cpu]); } };
    // This node's CPUs all have a row (idle ones too); a peer's only where a job forwarded there ran.
    (st.snap ? st.snap.nodes.filter((n) => n.Name === st.node) : []).forEach((n) => {
      const ids = new Set(bars.filter((b) => b.node === n.Name).map((b) => b.cpu));
      for (let c = 0; ids.size < n.TotalCPUs && c < 4096; c++) ids.add(c);  // idle CPUs: rows of their own
      ids.forEach((c) => want(n.Name, c));
    });
    bars.forEach((b) => want(b.node, b.cpu));
    const order = st.snap ? st.snap.nodes.map((n) => n.Name) : [];
    rows.sort((a, b) => (order.indexOf(a[0]) - order.indexOf(b[0])) || a[0].localeCompare(b[0]) || a[1] - b[1]);
    const index = new Map(rows.map((r, i) => [`${r[0]}/${r[1]}`, i]));
    bars.forEach((b) => { b.row = index.get(`${b.node}/${b.cpu}`); });
    return { now, bars, rows };
  }

  function hue(id) { return `hsl(${(id * 137.508) % 360} 60% 50%)`; }

  function drawGantt() {
    const el = box($("#gantt-plot"), "plot-gantt", "Jobs by CPU, up to the last hour (which job held which CPU when; a peer's rows: jobs sent there)");
    charts.gantt = el;
    const g = ganttBars();
    el.gantt = g;
    const labels = g.rows.map((r) => (st.nodes.length > 1 ? `${r[0]} cpu${r[1]}` : `cpu${r[1]}`));
    const height = Math.min(420, Math.max(140, g.rows.length * 18 + 60));
    const key = `gantt:${labels.join(",")}`;
    const first = g.bars.length ? g.bars.reduce((m, b) => Math.min(m, b.start), Infinity) : g.now - 60;
    const from = Math.max(g.now - HOUR, first - Math.max(5, (g.now - first) * 0.05));
    const data = [[from, g.now], [null, null]];
    if (el.chart && el.chart.key === key) {
      el.chart.setData(data);
    } else {
      if (el.chart) el.chart.destroy();
      let info = el.querySelector(".gantt-hover");
      if (!info) {
        info = document.createElement("div");
        info.className = "gantt-hover";
        info.textContent = "point at a bar for its job";
        el.appendChild(info);
      }
      el.chart = new uPlot({
        width: width(el), height, legend: { show: false },
        cursor: { y: false, points: { show: false } },
        scales: { y: { auto: false, range: [-0.5, Math.max(0.5, g.rows.length - 0.5)] } },
        series: [{}, { label: "jobs", show: true, stroke: "transparent" }],
        axes: [{}, { size: st.nodes.length > 1 ? 90 : 50, splits: () => g.rows.map((_, i) => i),
          values: (u, v) => v.map((i) => labels[i] || "") }],
        hooks: { draw: [drawBars], setCursor: [hover] },
      }, data, (u, init) => { el.insertBefore(u.root, info); init(); });
      el.chart.key = key;
    }
    el.dataset.bars = String(g.bars.length);
    el.dataset.jobs = [...new Set(g.bars.map((b) => b.id))].join(",");
    el.dataset.points = String(g.bars.length);
  }

  function drawBars(u) {
    const g = u.root.parentNode.gantt;
    if (!g) return;
    const ctx = u.ctx;
    const { left, top, width: w, height: h } = u.bbox;
    const band = Math.abs(u.valToPos(0, "y", true) - u.valToPos(1, "y", true)) * 0.75;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, w, h);
    ctx.clip();
    ctx.font = `${Math.round(10 * devicePixelRatio)}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    g.bars.forEach((b) => {
      const x0 = u.valToPos(b.start, "x", true);
      const x1 = Math.max(x0 + 2, u.valToPos(b.end, "x", true));
      const y = u.valToPos(b.row, "y", true);
      ctx.fillStyle = b.state === "FAILED" ? "#b91c1c" : hue(b.id);
      ctx.fillRect(x0, y - band / 2, x1 - x0, band);
      if (x1 - x0 > 28 * devicePixelRatio) {
        ctx.fillStyle = "#fff";
        ctx.fillText(String(b.id), x0 + 3 * devicePixelRatio, y);
      }
    });
    ctx.restore();
  }

  function hover(u) {
    const el = u.root.parentNode;
    const g = el.gantt;
    const info = el.querySelector(".gantt-hover");
    if (!g || !info || u.cursor.left < 0) return;
    const t = u.posToVal(u.cursor.left, "x");
    const row = Math.round(u.posToVal(u.cursor.top, "y"));
    const b = g.bars.find((x) => x.row === row && x.start <= t && t <= x.end);
    info.textContent = b ? `job ${b.id} ${b.name} (${b.user}) on ${b.node} cpu${b.cpu}: ${b.state}, ` +
      `${Math.round(b.end - b.start)}s` : "point at a bar for its job";
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  function fmt(s) {
    if (s === null) return "-";
    if (s < 1) return `${Math.round(s * 1000)}ms`;
    if (s < 120) return `${s.toFixed(1)}s`;
    if (s < 7200) return `${Math.round(s / 60)}m`;
    return `${(s / 3600).toFixed(1)}h`;
  }

  function drawWaits() {
    const el = box($("#waits-plot"), "plot-waits", "Wait from submission to start (last 24 h)");
    charts.waits = el;
    const waits = [...st.waits.values()].sort((a, b) => a - b);
    const counts = WAIT_EDGES.map(() => 0);
    waits.forEach((w) => { counts[WAIT_EDGES.findIndex((e) => w < e)]++; });
    const data = [WAIT_EDGES.map((_, i) => i), counts];
    make(el, {
      legend: { show: false }, cursor: { show: false },
      scales: { x: { time: false, range: [-0.5, WAIT_EDGES.length - 0.5] }, y: { range: (u, mn, mx) => [0, Math.max(1, mx)] } },
      series: [{}, { label: "jobs", fill: "rgba(29,78,216,.6)", stroke: color(0), paths: uPlot.paths.bars({ size: [0.8, 80] }), points: { show: false } }],
      axes: [{ splits: () => WAIT_EDGES.map((_, i) => i), values: (u, v) => v.map((i) => WAIT_LABELS[i] || "") },
        { values: (u, v) => v.map((x) => (Number.isInteger(x) ? String(x) : "")) }],
    }, data, "waits");
    el.dataset.points = String(waits.length);
    const cap = el.querySelector("figcaption");
    cap.textContent = `Wait from submission to start, last 24 h: ${waits.length} starts, median ${fmt(quantile(waits, 0.5))}, ` +
      `p90 ${fmt(quantile(waits, 0.9))}, max ${fmt(waits.length ? waits[waits.length - 1] : null)}`;
  }

  let pending = false;
  function schedule() {  // at most one redraw a frame, however many events came
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (!st.node) return;
      drawUtil();
      drawQueue();
      drawGantt();
      drawWaits();
      $("#plots-note").textContent = `(a sample every ${st.interval}s, ${+(st.keep / 3600).toFixed(2)} h kept, the last point is now)`;
      $("#plots").dataset.ready = "yes";
    });
  }

  const sizer = new ResizeObserver((entries) => {
    entries.forEach(({ target: el }) => {
      if (el.chart && Math.abs(el.chart.width - width(el)) > 1) el.chart.setSize({ width: width(el), height: el.chart.height });
    });
  });

  document.addEventListener("schedd:state", onState);
  document.addEventListener("schedd:sample", onSample);
  document.addEventListener("DOMContentLoaded", () => {
    load(0);
    setInterval(schedule, 5000);  // the timeline's "now" edge moves on a quiet node too
  });
})();
