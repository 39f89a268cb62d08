// b3lb operator dashboard: log-in, the event stream, tables, the load chart and node actions.
// Plain JavaScript, no build step, no library. Everything from the server is put into the page
// with textContent or SVG attributes, never as HTML.
(() => {
  "use strict";

  const TOKEN_KEY = "b3lb-admin-token";
  const EVENTS_URL = "api/v1/events"; // relative to /b3lb/admin/
  const NODES_URL = "api/v1/nodes/";
  const CONFIRM_MS = 5000; // a second click within this time confirms maintenance-on or drain
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLOURS = 8; // .c0 … .c7 in app.css

  const $ = (id) => document.getElementById(id);
  const state = {
    token: "",
    controller: null,
    hello: null,
    history: null,
    snapshot: null,
    retryTimer: 0,
    backoff: 1000,
    rows: new Map(), // node id -> {tr, cells, buttons}
    confirming: new Map(), // "id:action" -> timer
  };

  // -- log-in ------------------------------------------------------------------------------------

  function showLogin(message) {
    stopStream();
    state.hello = null;
    state.history = null;
    state.snapshot = null;
    state.rows.clear();
    $("nodes").tBodies[0].replaceChildren();
    $("tenants").tBodies[0].replaceChildren();
    $("dashboard").hidden = true;
    $("who").hidden = true;
    $("login").hidden = false;
    $("login-button").disabled = false;
    $("login-message").textContent = message || "";
    $("token").focus();
  }

  function showDashboard(hello) {
    state.hello = hello;
    state.backoff = 1000;
    $("login").hidden = true;
    $("login-message").textContent = "";
    $("token").value = "";
    $("dashboard").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = hello.name;
    $("who-scope").textContent = hello.tenant ? `${hello.scope} · tenant ${hello.tenant}` : hello.scope;
    const fleet = !hello.tenant;
    $("fleet").hidden = !fleet;
    $("history").hidden = !fleet;
    $("queue-panel").hidden = !fleet;
    $("readonly-note").hidden = !fleet || hello.can_write;
    $("tenant-note").hidden = fleet;
    $("tenant-note").textContent = fleet ? "" :
      `This token belongs to tenant ${hello.tenant}: the fleet (nodes, load, render queue) needs an unscoped token.`;
    document.body.classList.toggle("can-write", Boolean(hello.can_write));
    setLive("live", "live");
  }

  function setLive(text, kind) {
    const live = $("live");
    live.textContent = text;
    live.className = `live ${kind}`;
  }

  function banner(text) {
    $("banner").hidden = !text;
    $("banner").textContent = text || "";
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("login-message").textContent = "Paste a token first.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-button").disabled = true;
    $("login-message").textContent = "Checking…";
    start(token);
  });

  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Logged out.");
  });

  // -- the stream ----------------------------------------------------------------------------------

  function start(token) {
    stopStream();
    state.token = token;
    connect(token);
  }

  function stopStream() {
    clearTimeout(state.retryTimer);
    if (state.controller) state.controller.abort();
    state.controller = null;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.message || body.error || `HTTP ${response.status}`;
    } catch (_) {
      return `HTTP ${response.status}`;
    }
  }

  async function connect(token) {
    const controller = new AbortController();
    state.controller = controller;
    let response;
    try {
      response = await fetch(EVENTS_URL, {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
        signal: controller.signal,
      });
    } catch (_) {
      if (!controller.signal.aborted) retry("Cannot reach b3lb");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(`Token refused: ${await errorText(response)}`);
      return;
    }
    if (!response.ok || !response.body) {
      retry(`The dashboard stream is unavailable: ${await errorText(response)}`);
      return;
    }
    try {
      await readEvents(response.body, dispatch);
    } catch (_) {
      // the connection broke: retried below unless it was closed on purpose
    }
    if (!controller.signal.aborted && state.controller === controller) retry("Connection lost");
  }

  function retry(reason) {
    if (state.hello) {
      setLive("reconnecting", "down");
      banner(`${reason}; reconnecting…`);
    } else {
      $("login-button").disabled = false;
      $("login-message").textContent = `${reason}; retrying…`;
    }
    state.retryTimer = setTimeout(() => connect(state.token), state.backoff);
    state.backoff = Math.min(state.backoff * 2, 30000);
  }

  // Server-sent events from a fetch() body (EventSource cannot send an Authorization header).
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let name = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (data.length) onEvent(name || "message", data.join("\n"));
          name = "";
          data = [];
        } else if (line.startsWith("event:")) {
          name = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
  }

  function dispatch(name, text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (name === "hello") showDashboard(data);
    else if (name === "history") {
      state.history = data;
      drawChart();
    } else if (name === "snapshot") showSnapshot(data);
    else if (name === "error") banner(data.message);
    else if (name === "unauthorized") {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(data.message);
    }
  }

  function showSnapshot(snapshot) {
    state.snapshot = snapshot;
    const db = snapshot.database || { ok: true };
    banner(db.ok ? "" : db.message);
    setLive(db.ok ? "live" : "database down", db.ok ? "live" : "down");
    if (snapshot.nodes) showNodes(snapshot.nodes);
    showTenants(snapshot.tenants || []);
    if (snapshot.render_queue !== undefined) showQueue(snapshot.render_queue);
    drawChart();
  }

  // -- nodes -----------------------------------------------------------------------------------------

  function cell(tr, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    tr.appendChild(td);
    return td;
  }

  function makeRow(node) {
    const tr = document.createElement("tr");
    const cells = {
      cluster: cell(tr), slug: cell(tr, "slug"), state: cell(tr), load: cell(tr, "num"), cpu: cell(tr, "num"),
      attendees: cell(tr, "num"), meetings: cell(tr, "num"), routed: cell(tr, "num"), poll: cell(tr, "poll"),
      actions: cell(tr, "actions"),
    };
    const badge = document.createElement("span");
    cells.state.appendChild(badge);
    const buttons = {};
    if (state.hello && state.hello.can_write) {
      buttons.maintenance = button("maintenance", () => act(node.id, "maintenance"));
      buttons.drain = button("drain", () => act(node.id, "drain"));
      cells.actions.append(buttons.maintenance, buttons.drain);
    }
    return { tr, cells, badge, buttons, node };
  }

  function button(kind, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `act act-${kind}`;
    b.dataset.action = kind;
    b.addEventListener("click", onClick);
    return b;
  }

  function showNodes(nodes) {
    const body = $("nodes").tBodies[0];
    const seen = new Set();
    nodes.forEach((node, index) => {
      seen.add(node.id);
      let row = state.rows.get(node.id);
      if (!row) {
        row = makeRow(node);
        state.rows.set(node.id, row);
      }
      row.node = node;
      fillRow(row, node);
      if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    });
    for (const [id, row] of state.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.rows.delete(id);
      }
    }
  }

  function fillRow(row, node) {
    const c = row.cells;
    row.tr.dataset.node = `${node.cluster}/${node.slug}`;
    row.tr.dataset.state = node.state;
    c.cluster.textContent = node.cluster;
    c.slug.textContent = node.slug;
    row.badge.textContent = node.state;
    row.badge.className = `state state-${node.state}`;
    row.badge.title = node.last_error || "";
    c.load.textContent = node.state === "ok" ? node.load.toFixed(1) : "–";
    c.cpu.textContent = node.cpu.toFixed(1);
    c.attendees.textContent = node.attendees;
    c.meetings.textContent = node.meetings;
    c.routed.textContent = node.routed;
    c.poll.textContent = node.poll_age === null ? "–" : `${ago(node.poll_age)}${node.last_error ? " · " + node.last_error : ""}`;
    const m = row.buttons.maintenance;
    if (m && !state.confirming.has(`${node.id}:maintenance`)) {
      m.textContent = node.maintenance ? "Maintenance off" : "Maintenance on";
      m.dataset.on = node.maintenance ? "false" : "true";
    }
    const d = row.buttons.drain;
    if (d && !state.confirming.has(`${node.id}:drain`)) {
      d.textContent = "Drain";
      d.disabled = node.maintenance;
    }
  }

  function ago(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    return `${Math.round(seconds / 3600)} h ago`;
  }

  // Maintenance on and drain take a second click (within CONFIRM_MS); maintenance off does not.
  function act(id, action) {
    const row = state.rows.get(id);
    if (!row) return;
    const b = row.buttons[action];
    const key = `${id}:${action}`;
    const on = action === "maintenance" ? b.dataset.on === "true" : true;
    if (on && !state.confirming.has(key)) {
      b.textContent = action === "drain" ? "Confirm drain" : "Confirm maintenance";
      b.classList.add("confirm");
      state.confirming.set(key, setTimeout(() => unconfirm(key, row), CONFIRM_MS));
      return;
    }
    unconfirm(key, row);
    send(row.node, action, on);
  }

  function unconfirm(key, row) {
    clearTimeout(state.confirming.get(key));
    state.confirming.delete(key);
    for (const b of Object.values(row.buttons)) b.classList.remove("confirm");
    fillRow(row, row.node);
  }

  async function send(node, action, on) {
    const url = `${NODES_URL}${encodeURIComponent(node.cluster)}/${encodeURIComponent(node.slug)}/${action}`;
    const label = action === "drain" ? "drain" : `maintenance ${on ? "on" : "off"}`;
    const log = $("action-log");
    log.textContent = `${node.slug}: ${label}…`;
    log.className = "action-log";
    let response;
    try {
      const headers = { Authorization: `Bearer ${state.token}` };
      let body;
      if (action === "maintenance") {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify({ on });
      }
      response = await fetch(url, { method: "POST", headers, body, cache: "no-store", credentials: "omit" });
    } catch (_) {
      log.textContent = `${node.slug}: ${label} failed: b3lb did not answer`;
      log.className = "action-log failed";
      return;
    }
    if (response.ok) {
      log.textContent = `${node.slug}: ${label} done; the table follows within a few seconds`;
      log.className = "action-log done";
    } else {
      log.textContent = `${node.slug}: ${label} refused: ${await errorText(response)}`;
      log.className = "action-log failed";
    }
  }

  // -- tenants and the render queue -----------------------------------------------------------------

  function usage(td, used, limit) {
    td.replaceChildren();
    const text = document.createElement("span");
    text.className = "usage";
    text.textContent = limit === null ? `${used} (no limit)` : `${used} / ${limit}`;
    td.appendChild(text);
    if (limit !== null) {
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = limit;
      meter.low = limit * 0.7;
      meter.high = limit * 0.9;
      meter.optimum = 0;
      meter.value = Math.min(used, limit);
      td.appendChild(meter);
    }
  }

  function showTenants(tenants) {
    const body = $("tenants").tBodies[0];
    const rows = tenants.map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.tenant = t.slug;
      cell(tr, "slug").textContent = t.slug;
      usage(cell(tr), t.meetings, t.meeting_limit);
      usage(cell(tr), t.attendees, t.attendee_limit);
      cell(tr, "num").textContent = t.secrets;
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function showQueue(queue) {
    const dl = $("queue");
    dl.replaceChildren();
    if (!queue) {
      dl.textContent = "not read yet";
      return;
    }
    const items = [
      ["queued", queue.queued], ["due now", queue.due], ["rendering", queue.running], ["failed", queue.failed],
      ["oldest queued", queue.oldest_queued_seconds === null ? "–" : ago(queue.oldest_queued_seconds)],
    ];
    for (const [label, value] of items) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.key = label;
      dl.append(dt, dd);
    }
    dl.classList.toggle("stale", Boolean(queue.stale));
  }

  // -- the chart (inline SVG) ------------------------------------------------------------------------

  function svg(name, attributes, parent) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
    if (parent) parent.appendChild(el);
    return el;
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const step = 10 ** Math.floor(Math.log10(value));
    for (const f of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) if (value <= f * step) return f * step;
    return 10 * step;
  }

  $("metric").addEventListener("change", () => drawChart());
  window.addEventListener("resize", () => drawChart());

  function drawChart() {
    const box = $("chart");
    const legend = $("legend");
    const history = state.history;
    if (!history || !state.hello || state.hello.tenant) return;
    const field = Number($("metric").value) || 1;
    const names = Object.keys(history.series).sort();
    const now = state.snapshot ? state.snapshot.at : Date.now() / 1000;
    let first = now;
    let top = 0;
    for (const name of names) {
      for (const p of history.series[name]) {
        first = Math.min(first, p[0]);
        top = Math.max(top, p[field]);
      }
    }
    // The last hour, or since the first sample when this process has been up for less.
    const from = Math.max(now - history.span, Math.min(first, now - 60));
    // Drawn at the box's own width, so text and lines keep their size on any screen.
    const W = Math.max(320, Math.round(box.clientWidth || 720)), H = 240, L = 48, R = 12, T = 12, B = 28;
    const yMax = niceMax(top * 1.1);
    const x = (t) => L + ((t - from) / (now - from)) * (W - L - R);
    const y = (v) => T + (1 - v / yMax) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
      "aria-label": `cluster ${$("metric").selectedOptions[0].textContent} over time` });
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }, root);
      svg("text", { x: L - 6, y: y(v) + 4, class: "axis-label", "text-anchor": "end" }, root).textContent =
        Number.isInteger(v) ? v : v.toFixed(1);
    }
    for (let i = 0; i <= 3; i++) {
      const t = from + ((now - from) * i) / 3;
      svg("text", { x: x(t), y: H - 8, class: "axis-label", "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle" },
        root).textContent = clock(t);
    }
    legend.replaceChildren();
    names.forEach((name, index) => {
      const points = history.series[name].filter((p) => p[0] >= from).map((p) => `${x(p[0]).toFixed(1)},${y(p[field]).toFixed(1)}`);
      const colour = `c${index % COLOURS}`;
      if (points.length === 1) {
        const [px, py] = points[0].split(",");
        svg("circle", { cx: px, cy: py, r: 3, class: `dot ${colour}` }, root);
      } else if (points.length > 1) {
        svg("polyline", { points: points.join(" "), class: `series ${colour}` }, root);
      }
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch ${colour}`;
      item.append(swatch, document.createTextNode(name));
      legend.appendChild(item);
    });
    if (!names.length) {
      svg("text", { x: W / 2, y: H / 2, class: "axis-label", "text-anchor": "middle" }, root).textContent =
        "no samples yet";
    }
    box.replaceChildren(root);
  }

  // -- start -----------------------------------------------------------------------------------------

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    $("login-message").textContent = "Checking…";
    start(saved);
  } else {
    $("token").focus();
  }
})();
