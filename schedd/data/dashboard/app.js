// schedd dashboard: renders the snapshots the daemon pushes over server-sent events (/ui/events).
// No framework, no CDN: plain DOM, text only (job names are user input, never parsed as HTML).
"use strict";

const $ = (sel) => document.querySelector(sel);
let snap = null;          // the latest snapshot
let clockOffset = 0;      // server µs - local µs
let detailId = null;      // the job shown in the detail pane
let detailTimer = null;

function token() { return sessionStorage.getItem("schedd-token") || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }
function nowUsec() { return Date.now() * 1000 + clockOffset; }

function size(bytes) {
  const units = ["B", "K", "M", "G", "T"];
  let i = 0, v = bytes;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (Number.isInteger(v) ? v : v.toFixed(1)) + units[i];
}

function duration(usec) {
  if (usec > 0 && usec < 1e6) return `${Math.round(usec / 1000)}ms`;
  let s = Math.max(0, Math.floor(usec / 1e6));
  const d = Math.floor(s / 86400); s %= 86400;
  const h = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function ago(usec) { return usec ? duration(nowUsec() - usec) + " ago" : "-"; }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function stateCell(state) { return cell(state, "state " + state); }

function actionButton(action, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = action;
  b.dataset.action = action;
  b.dataset.id = id;
  b.addEventListener("click", (ev) => { ev.stopPropagation(); act(action, id); });
  return b;
}

function fill(tableId, rows, columns, emptyText) {
  const body = $(`#${tableId} tbody`);
  const frag = document.createDocumentFragment();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = $(`#${tableId} thead tr`).children.length;
    tr.appendChild(td);
    frag.appendChild(tr);
  }
  rows.forEach((j, i) => {
    const tr = document.createElement("tr");
    if (j.id !== undefined) {
      tr.dataset.id = j.id;
      tr.dataset.state = j.state;
      tr.addEventListener("click", () => openDetail(j.id));
    }
    columns(j, i).forEach((c) => tr.appendChild(c));
    frag.appendChild(tr);
  });
  body.replaceChildren(frag);
}

function buttons(j, actions) {
  const td = document.createElement("td");
  actions.forEach((a) => td.appendChild(actionButton(a, j.id)));
  return td;
}

function elapsed(j) {  // wall time since start, less time spent suspended before now
  return duration(nowUsec() - j.start_time - (j.suspended_usec || 0));
}

function render() {
  if (!snap) return;
  $("#node").textContent = "on " + snap.node;
  $("#counts").textContent = `${snap.counts.running} running, ${snap.counts.pending} pending`;
  $("#running-n").textContent = `(${snap.running.length})`;
  $("#queue-n").textContent = `(${snap.queue.length} queued, ${snap.waiting.length} held or waiting on dependencies)`;
  fill("nodes", snap.nodes, (n) => [
    cell(n.Name + (n.Local ? " (this node)" : "")), cell(n.State, "state " + (n.State === "up" ? "COMPLETED" : n.State === "down" ? "FAILED" : "HELD")),
    cell(`${n.AvailableCPUs}/${n.TotalCPUs}`), cell(`${size(n.AvailableMemory)}/${size(n.TotalMemory)}`),
    cell(`${n.AvailableGPUs}/${n.TotalGPUs}`), cell(`${n.RunningJobs}/${n.PendingJobs}`),
    cell(n.Local ? "now" : ago(n.LastSeenUSec)),
    cell(n.DrainedBy ? `${n.DrainReason || "-"} (by ${n.DrainedBy})` : ""),
  ], "no nodes");
  fill("running", snap.running, (j) => [
    cell(j.id), cell(j.name), cell(j.user), stateCell(j.state),
    cell(j.assigned_cpus.length ? `${j.cpus} [${j.assigned_cpus.join(",")}]` : String(j.cpus)),
    cell(size(j.memory)), cell(elapsed(j), "elapsed"), cell(j.node), buttons(j, ["cancel"]),
  ], "nothing running");
  const queued = snap.queue.concat(snap.waiting);
  fill("queue", queued, (j, i) => [
    cell(i < snap.queue.length ? String(i + 1) : "-"), cell(j.id), cell(j.name), cell(j.user), stateCell(j.state),
    cell(j.priority), cell(j.cpus), cell(size(j.memory)), cell(duration(nowUsec() - j.submit_time), "waited"),
    buttons(j, j.state === "HELD" ? ["release", "cancel"] : ["hold", "cancel"]),
  ], "the queue is empty");
  fill("recent", snap.recent, (j) => [
    cell(j.id), cell(j.name), cell(j.user), stateCell(j.state), cell(j.reason || "-"), cell(j.exit_code),
    cell(j.start_time ? duration(j.end_time - j.start_time) : "-"), cell(ago(j.end_time)),
  ], "nothing ended recently");
  fill("failures", snap.failures, (j) => [
    cell(j.id), cell(j.name), cell(j.user), cell(j.reason || "-", "state FAILED"), cell(j.exit_code),
    cell(ago(j.end_time)),
  ], "no recent failures");
}

function tick() {  // elapsed times advance locally; the data itself only changes when the daemon pushes
  if (!snap) return;
  document.querySelectorAll("#running tbody tr[data-id]").forEach((tr) => {
    const j = snap.running.find((x) => String(x.id) === tr.dataset.id);
    if (j) tr.querySelector(".elapsed").textContent = elapsed(j);
  });
}

function connect() {
  const es = new EventSource("/ui/events");
  es.addEventListener("state", (ev) => {
    snap = JSON.parse(ev.data);
    clockOffset = snap.now - Date.now() * 1000;
    $("#live").textContent = "live";
    $("#live").className = "live on";
    render();
    if (detailId !== null) scheduleDetail();
    document.dispatchEvent(new CustomEvent("schedd:state", { detail: snap }));  // plots.js
  });
  es.addEventListener("sample", (ev) => {
    document.dispatchEvent(new CustomEvent("schedd:sample", { detail: JSON.parse(ev.data) }));
  });
  es.addEventListener("error", () => {
    $("#live").textContent = "reconnecting…";
    $("#live").className = "live off";
  });
}

function showError(text) { $("#error").textContent = text || ""; }

async function act(action, id) {
  if (!token()) { showError(`${action}: enter the operators' token first`); return; }
  const r = await fetch(`/ui/jobs/${id}/${action}`, { method: "POST", headers: authHeaders() });
  const body = await r.json().catch(() => ({}));
  showError(r.ok ? "" : `${action} job ${id}: ${body.message || r.statusText}`);
}

function scheduleDetail() {
  clearTimeout(detailTimer);
  detailTimer = setTimeout(loadDetail, 100);
}

async function openDetail(id) {
  detailId = id;
  $("#detail").hidden = false;
  await loadDetail();
}

const DETAIL_KEYS = ["Name", "UserName", "State", "Reason", "ExitCode", "Command", "CPUs", "AssignedCPUs", "Memory",
  "GPUs", "Priority", "Node", "Unit", "WorkingDirectory", "StdoutPath", "SubmitTime", "StartTime", "EndTime",
  "WaitUSec", "RunUSec", "CPUTimeUSec", "MemoryPeak"];

function human(key, v) {
  if (v === undefined) return "(operators' token needed)";
  if (key.endsWith("Time")) return v ? new Date(v / 1000).toLocaleString() : "-";
  if (key.endsWith("USec")) return duration(v);
  if (key === "Memory" || key === "MemoryPeak") return size(v);
  if (Array.isArray(v)) return v.join(" ");
  return String(v);
}

async function loadDetail() {
  if (detailId === null) return;
  const id = detailId;
  const r = await fetch(`/ui/jobs/${id}`, { headers: authHeaders() });
  const j = await r.json();
  if (id !== detailId) return;
  if (!r.ok) { showError(j.message); return; }
  $("#detail-id").textContent = String(id);
  const dl = document.createDocumentFragment();
  DETAIL_KEYS.forEach((k) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = human(k, j[k]);
    dl.append(dt, dd);
  });
  $("#detail-props").replaceChildren(dl);
  const acts = j.State === "HELD" ? ["release", "cancel"] : j.State === "PENDING" ? ["hold", "cancel"]
    : ["RUNNING", "SUSPENDED"].includes(j.State) ? ["cancel"] : [];
  $("#detail-actions").replaceChildren(...acts.map((a) => actionButton(a, id)));
  $("#output-note").textContent = j.OutputNote ? `(${j.OutputNote})` : "";
  $("#output").textContent = j.Output === null ? "" : j.Output;
}

async function checkToken() {
  const r = await fetch("/ui/whoami", { headers: authHeaders() });
  const w = await r.json();
  $("#authstate").textContent = !w.token_configured ? "this node has no operators' token: read-only"
    : w.authorized ? "token accepted" : token() ? "wrong token (the operators' token is needed)"
    : "read-only (no token)";
  $("#authstate").dataset.authorized = w.authorized ? "yes" : "no";
}

document.addEventListener("DOMContentLoaded", () => {
  $("#auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("schedd-token", $("#token").value.trim());
    $("#token").value = "";
    checkToken();
    if (detailId !== null) loadDetail();
  });
  $("#detail-refresh").addEventListener("click", () => loadDetail());
  $("#detail-close").addEventListener("click", () => { detailId = null; $("#detail").hidden = true; });
  checkToken();
  connect();
  setInterval(tick, 1000);
});
