// The task queue dashboard: polls GET /dashboard/state once a second and draws it.
// Plain JavaScript, no library, no build step. Every request goes through api(), which adds
// the bearer token the user entered (kept in sessionStorage) and sends JSON bodies.
// Text from the server is only ever set with textContent (never parsed as HTML).
"use strict";

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const TOKEN_KEY = "taskqueue.token";
const DETAIL_REFRESH_MS = 1000;

// -- the one way this page talks to the dispatcher --------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "same-origin" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body || {});
  }
  let response;
  try {
    response = await fetch(path, init); // relative: works under any path prefix
  } catch (err) {
    throw new ApiError(0, "unreachable", "the dispatcher cannot be reached");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_" + response.status,
      error.message || response.statusText || "request failed");
  }
  return data;
}

// -- small DOM helpers ----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function fmtInt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function pct(progress) {
  return `${Math.round((progress || 0) * 100)}%`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

// Keep one table row per key across polls: rows are built once and updated in place, so a
// progress bar slides instead of being redrawn, and a button is not replaced under the mouse.
function syncRows(tbody, items, keyOf, build, fill) {
  const existing = new Map([...tbody.children].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let row = existing.get(key);
    if (row) existing.delete(key);
    else {
      row = build(item);
      row.dataset.key = key;
    }
    row.item = item;
    fill(row, item);
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (wanted !== row) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

function progressBar(extraClass = "") {
  return el("div", { class: `bar ${extraClass}`, role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100" }, el("div", { class: "fill" }), el("span", { class: "pct" }));
}

function setProgress(bar, progress) {
  const value = Math.max(0, Math.min(1, progress || 0));
  bar.querySelector(".fill").style.width = `${(value * 100).toFixed(1)}%`;
  bar.querySelector(".pct").textContent = pct(value);
  bar.setAttribute("aria-valuenow", String(Math.round(value * 100)));
  bar.dataset.progress = value.toFixed(4);
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}`, text });
}

function flash(message, kind = "info") {
  const box = $("flash");
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// -- actions --------------------------------------------------------------------------------

const STATUS_CLASS = {
  pending: "pending", "in-progress": "running", completed: "completed", failed: "failed",
  cancelled: "cancelled",
};

function canCancel(status) {
  return status === "pending" || status === "in-progress";
}

function canRetry(status) {
  return status === "failed" || status === "cancelled";
}

async function cancelTask(taskId) {
  try {
    await api(`task/${taskId}/cancel`, { method: "POST", body: {} });
    flash(`Task #${taskId} cancelled.`, "ok");
  } catch (err) {
    flash(`Could not cancel task #${taskId}: ${err.message}`, "error");
  }
  refreshSoon();
}

async function retryTask(taskId) {
  try {
    await api(`task/${taskId}/retry`, { method: "POST", body: {} });
    flash(`Task #${taskId} is queued again.`, "ok");
  } catch (err) {
    if (err.status === 404 && err.code === "not_found" && !/task/i.test(err.message)) {
      flash("This dispatcher has no retry endpoint (POST /task/<id>/retry).", "error");
    } else {
      flash(`Could not retry task #${taskId}: ${err.message}`, "error");
    }
  }
  refreshSoon();
}

function actionButtons(taskId, status) {
  const box = el("span", { class: "actions" });
  box.append(el("button", { type: "button", class: "quiet", "data-action": "details",
    text: "details", onclick: () => openDetail(taskId) }));
  if (canCancel(status)) {
    box.append(el("button", { type: "button", class: "danger", "data-action": "cancel",
      text: "cancel", onclick: () => cancelTask(taskId) }));
  }
  if (canRetry(status)) {
    box.append(el("button", { type: "button", "data-action": "retry", text: "retry",
      onclick: () => retryTask(taskId) }));
  }
  return box;
}

function taskLink(taskId) {
  return el("a", { href: `task/${taskId}`, class: "task-link", text: `#${taskId}`,
    onclick: (event) => { event.preventDefault(); openDetail(taskId); } });
}

// -- panels ---------------------------------------------------------------------------------

function renderHeadline(state) {
  const h = state.headline;
  $("h-alive").textContent = fmtInt(h.workers_alive);
  $("h-dead").textContent = fmtInt(h.workers_dead);
  $("h-pending").textContent = fmtInt(h.pending);
  const delayed = h.delayed || 0;  // pending, but waiting for a retry's backoff or run_at
  $("h-delayed").hidden = delayed === 0;
  $("h-delayed").textContent = ` (${fmtInt(delayed)}${delayed >= 10000 ? "+" : ""} delayed)`;
  $("h-running").textContent = fmtInt(h.running);
  $("h-rate").textContent = h.done_per_second.toFixed(h.done_per_second < 10 ? 1 : 0);
  $("h-total").textContent = fmtInt(state.tasks.total);
  $("h-dead").parentElement.classList.toggle("quiet-card", h.workers_dead === 0);
}

const STATUSES = ["pending", "in-progress", "completed", "failed", "cancelled"];

function renderStatusBar(state) {
  const bar = $("status-bar");
  const legend = $("status-legend");
  const total = state.tasks.total || 0;
  bar.replaceChildren();
  legend.replaceChildren();
  for (const status of STATUSES) {
    const n = state.tasks[status] || 0;
    if (total > 0 && n > 0) {
      const part = el("div", { class: `part ${STATUS_CLASS[status]}`,
        title: `${status}: ${fmtInt(n)}` });
      part.style.width = `${(100 * n) / total}%`;
      bar.append(part);
    }
    legend.append(el("li", { "data-status": status },
      el("i", { class: `swatch ${STATUS_CLASS[status]}` }),
      el("span", { class: "count", text: fmtInt(n) }), ` ${status}`));
  }
  if (total === 0) bar.append(el("div", { class: "part none", text: "no tasks yet" }));
}

function renderWorkers(state) {
  const tbody = $("workers").tBodies[0];
  syncRows(tbody, state.workers, (w) => w.worker_id, (w) => {
    const row = el("tr", { "data-worker": w.worker_id });
    row.append(el("td", { class: "mono", text: w.worker_id }), el("td"), el("td"), el("td"),
      el("td", { class: "num" }));
    return row;
  }, (row, w) => {
    const state = w.alive ? "alive" : w.status === "alive" ? "silent" : w.status;
    row.dataset.state = state;
    const cells = row.cells;
    cells[1].replaceChildren(badge(state, { alive: "alive", silent: "silent", dead: "dead",
      stopped: "stopped" }[state] || "stopped"));
    cells[2].textContent = `${fmtAge(w.seconds_since_heartbeat)} ago`;
    cells[2].classList.toggle("late", !w.alive);
    const running = w.running.map((t) => [taskLink(t.task_id), ` ${pct(t.progress)}`]);
    cells[3].replaceChildren(...running.flatMap((parts, i) => (i ? [", ", ...parts] : parts)));
    if (w.held > w.running.length) cells[3].append(` +${w.held - w.running.length} more`);
    if (w.held === 0) cells[3].append(el("span", { class: "muted", text: "idle" }));
    cells[4].textContent = fmtInt(w.tasks_completed);
  });
  const shown = state.workers.length;
  $("workers-empty").hidden = shown > 0;
  const total = state.headline.workers_total;
  $("workers-note").textContent = total > shown ? `(${shown} of ${fmtInt(total)} shown)` : "";
}

function renderRunning(state) {
  const tbody = $("running").tBodies[0];
  syncRows(tbody, state.running, (t) => t.task_id, (t) => {
    const row = el("tr", { "data-task": String(t.task_id) });
    row.append(el("td", {}, taskLink(t.task_id)), el("td"), el("td", { class: "mono" }), el("td"),
      el("td", {}, progressBar()), el("td"), el("td"));
    return row;
  }, (row, t) => {
    const cells = row.cells;
    cells[1].textContent = t.task_type;
    cells[2].textContent = t.worker_id;
    cells[3].textContent = `${t.attempt} / ${t.max_attempts}`;
    cells[3].classList.toggle("warn", t.attempt > 1);
    setProgress(cells[4].firstChild, t.progress);
    cells[5].textContent = t.seconds_since_checkpoint === null ? "none yet"
      : `${fmtAge(t.seconds_since_checkpoint)} ago`;
    if (!cells[6].firstChild) cells[6].append(actionButtons(t.task_id, "in-progress"));
  });
  $("running-empty").hidden = state.running.length > 0;
  const running = state.headline.running;
  $("running-note").textContent = running > state.running.length
    ? `(${state.running.length} of ${fmtInt(running)} shown)` : "";
}

function renderShortTable(id, items, columns) {
  const tbody = $(id).tBodies[0];
  syncRows(tbody, items, (t) => `${t.task_id}:${t.status}`, (t) => {
    const row = el("tr", { "data-task": String(t.task_id), "data-status": t.status });
    row.append(el("td", {}, taskLink(t.task_id)));
    for (let i = 0; i < columns.length; i += 1) row.append(el("td"));
    row.append(el("td", {}, actionButtons(t.task_id, t.status)));
    return row;
  }, (row, t) => {
    columns.forEach((column, i) => {
      const value = column(t);
      row.cells[i + 1].replaceChildren(value instanceof Node ? value : String(value ?? ""));
    });
  });
  $(`${id}-empty`).hidden = items.length > 0;
}

// The smallest of 2, 5, 10, 20, 50... at or above n (so the axis reads in round numbers).
function niceCeiling(n) {
  let step = 1;
  for (;;) {
    for (const factor of [2, 5, 10]) {
      if (n <= step * factor) return step * factor;
    }
    step *= 10;
  }
}

function renderChart(state) {
  const { series, bucket_seconds: bucket, start } = state.throughput;
  const n = series.completed.length;
  const width = 600;
  const height = 160;
  const pad = { left: 34, right: 6, top: 8, bottom: 20 };
  const totals = series.completed.map((c, i) => c + series.failed[i] + series.cancelled[i]);
  const max = niceCeiling(Math.max(...totals));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const barW = plotW / n;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "tasks finished per 10 seconds" });
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - fraction);
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }));
    const label = svg("text", { x: pad.left - 4, y: y + 4, class: "axis", "text-anchor": "end" });
    label.textContent = fmtInt(max * fraction);
    root.append(label);
  }
  for (let i = 0; i < n; i += 1) {
    let y = pad.top + plotH;
    for (const status of ["completed", "failed", "cancelled"]) {
      const value = series[status][i];
      if (!value) continue;
      const h = (plotH * value) / max;
      y -= h;
      const rect = svg("rect", { x: pad.left + i * barW + 0.5, y, width: Math.max(1, barW - 1),
        height: h, class: status });
      const title = svg("title");
      title.textContent = `${clock(start + i * bucket)}: ${value} ${status}`;
      rect.append(title);
      root.append(rect);
    }
  }
  const minutes = (n * bucket) / 60;
  for (const [x, text, anchor] of [[pad.left, `-${minutes} min`, "start"],
    [pad.left + plotW / 2, `-${minutes / 2} min`, "middle"], [width - pad.right, "now", "end"]]) {
    const label = svg("text", { x, y: height - 4, class: "axis", "text-anchor": anchor });
    label.textContent = text;
    root.append(label);
  }
  $("chart").replaceChildren(root);
  $("chart").dataset.total = String(totals.reduce((a, b) => a + b, 0));
}

const EVENT_CLASS = {
  worker_dead: "dead", dead_worker: "reclaim", expired_lease: "reclaim", lost_claim: "reclaim",
  worker_restarted: "reclaim", released_on_shutdown: "released", returned_unstarted: "released",
  resumed: "resumed", cancelled: "cancelled", retry: "released", retried: "resumed",
  crash_loop: "dead", timed_out: "dead",
};

const EVENT_TITLE = {
  worker_dead: "worker dead", dead_worker: "reclaimed: dead worker",
  expired_lease: "reclaimed: lease expired", lost_claim: "reclaimed: lost claim",
  worker_restarted: "reclaimed: worker restarted", released_on_shutdown: "released on shutdown",
  returned_unstarted: "returned unstarted", resumed: "resumed", cancelled: "cancelled",
  retry: "error: retry later", retried: "retried by a user", crash_loop: "failed: crash loop",
  timed_out: "failed: timed out",
};

function eventSentence(e) {
  const parts = [];
  if (e.kind === "worker_dead") {
    parts.push(`Worker ${e.worker_id} declared dead`);
  } else if (e.kind === "resumed") {
    parts.push(`Task #${e.task_id} picked up by ${e.worker_id}`);
  } else if (e.kind === "cancelled") {
    parts.push(`Task #${e.task_id} cancelled`);
  } else if (e.kind === "retry") {
    parts.push(`Task #${e.task_id} raised on ${e.worker_id || "?"} (attempt ${e.attempt})`);
  } else if (e.kind === "retried") {
    parts.push(`Task #${e.task_id} put back in the queue`);
  } else if (e.kind === "timed_out") {
    parts.push(`Task #${e.task_id} timed out on ${e.worker_id || "?"} (attempt ${e.attempt})`);
  } else {
    parts.push(`Task #${e.task_id} taken from ${e.worker_id || "?"}`);
    if (e.attempt) parts.push(` (attempt ${e.attempt}, at ${pct(e.progress)})`);
  }
  if (e.detail) parts.push(` — ${e.detail}`);
  return parts.join("");
}

function renderTimeline(list, events, withDetails = true) {
  syncRows(list, events, (e) => e.event_id, (e) => {
    // A kind this page does not know is a reclaim cause added to the dispatcher since.
    const tone = EVENT_CLASS[e.kind] || "reclaim";
    const title = EVENT_TITLE[e.kind] || `reclaimed: ${e.kind.replaceAll("_", " ")}`;
    const item = el("li", { "data-kind": e.kind, "data-task": e.task_id ?? "",
      "data-worker": e.worker_id ?? "", class: tone });
    item.append(el("time", { datetime: new Date(e.at * 1000).toISOString(), text: clock(e.at) }),
      badge(title, tone),
      el("span", { class: "what", text: eventSentence(e) }));
    if (e.task_id && withDetails) {
      item.append(el("button", { type: "button", class: "quiet", "data-action": "details",
        text: "details", onclick: () => openDetail(e.task_id) }));
    }
    return item;
  }, () => {});
}

function render(state) {
  renderHeadline(state);
  renderStatusBar(state);
  renderWorkers(state);
  renderRunning(state);
  renderChart(state);
  renderTimeline($("timeline"), state.events);
  $("timeline-empty").hidden = state.events.length > 0;
  renderShortTable("recent", state.recent, [
    (t) => t.task_type, (t) => badge(t.status, STATUS_CLASS[t.status]), (t) => t.worker_id || "–",
    (t) => `${fmtAge(t.seconds_ago)} ago`]);
  renderShortTable("pending", state.pending, [
    (t) => t.task_type, (t) => t.priority, (t) => t.attempt, (t) => fmtAge(t.seconds_ago)]);
}

// -- task detail ----------------------------------------------------------------------------

let detailTask = null;
let detailTimer = null;

function openDetail(taskId) {
  detailTask = taskId;
  const dialog = $("detail");
  dialog.dataset.task = String(taskId);
  $("detail-title").textContent = `Task #${taskId}`;
  if (!dialog.open) dialog.showModal();
  loadDetail();
}

function closeDetail() {
  detailTask = null;
  clearTimeout(detailTimer);
  $("detail").close();
}

function field(list, name, value) {
  let text = value;
  if (value === null || value === undefined) text = "–";
  else if (typeof value === "object") text = JSON.stringify(value, null, 2);
  const dd = el("dd", { "data-field": name });
  const structured = typeof value === "object" && value !== null;
  dd.append(structured ? el("pre", { class: "json", text }) : String(text));
  list.append(el("dt", { text: name.replaceAll("_", " ") }), dd);
}

const TIME_FIELDS = new Set(["created_at", "started_at", "claimed_at", "finished_at",
  "lease_expires_at"]);

async function loadDetail() {
  const taskId = detailTask;
  if (taskId === null) return;
  clearTimeout(detailTimer);
  try {
    const [task, checkpoint, events] = await Promise.all([
      api(`task/${taskId}`), api(`task/${taskId}/checkpoint`),
      api(`events?task_id=${taskId}&limit=50`)]);
    if (taskId !== detailTask) return;
    const dialog = $("detail");
    dialog.dataset.status = task.status;
    const status = $("detail-status");
    status.textContent = task.status;
    status.className = `badge ${STATUS_CLASS[task.status] || ""}`;
    setProgress($("detail-progress"), task.progress);
    const actions = $("detail-actions");
    actions.replaceChildren();
    if (canCancel(task.status)) {
      actions.append(el("button", { type: "button", class: "danger", "data-action": "cancel",
        text: "Cancel task", onclick: () => cancelTask(taskId).then(loadDetail) }));
    }
    if (canRetry(task.status)) {
      actions.append(el("button", { type: "button", "data-action": "retry", text: "Retry task",
        onclick: () => retryTask(taskId).then(loadDetail) }));
    }
    const list = $("detail-fields");
    list.replaceChildren();
    for (const [name, value] of Object.entries(task)) {
      if (name === "task_id") continue;
      let shown = value;
      if (TIME_FIELDS.has(name) && value) shown = clock(value);
      else if (name === "progress") shown = pct(value);
      field(list, name, shown);
    }
    $("detail-checkpoint").textContent = checkpoint.checkpoint
      ? JSON.stringify(checkpoint.checkpoint, null, 2)
      : "no checkpoint (none saved, or the task finished)";
    renderTimeline($("detail-events"), [...events.events].reverse(), false);
    if (!["completed", "failed", "cancelled"].includes(task.status)) {
      detailTimer = setTimeout(loadDetail, DETAIL_REFRESH_MS);
    }
  } catch (err) {
    if (taskId === detailTask) {
      $("detail-checkpoint").textContent = `could not load: ${err.message}`;
    }
  }
}

// -- polling --------------------------------------------------------------------------------

let pollTimer = null;

function setConnection(state, text) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = text;
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const state = await api("dashboard/state");
    render(state);
    setConnection("live", "live");
    $("updated").textContent = `updated ${clock(state.now)}`;
    document.body.dataset.ready = "true";
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      setConnection("auth", "token needed");
      flash(`The dispatcher refused the request (${err.message}). Enter an API token above.`,
        "error");
    } else {
      setConnection("down", `no answer: ${err.message}`);
    }
  }
  pollTimer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

function refreshSoon() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, 150);
}

function setupToken() {
  const input = $("token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    flash(value ? "Token saved for this browser tab." : "Token removed.", "ok");
    refreshSoon();
  });
  $("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    flash("Token removed.", "ok");
    refreshSoon();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  $("detail-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("close", () => { detailTask = null; clearTimeout(detailTimer); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshSoon(); });
  poll();
});
