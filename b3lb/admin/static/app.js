// b3lb operator dashboard: log-in, the event stream, tables, the load chart and node actions.
// Plain JavaScript, no build step, no library. Everything from the server is put into the page
// with textContent or SVG attributes, never as HTML.
(() => {
  "use strict";

  const TOKEN_KEY = "b3lb-admin-token";
  const EVENTS_URL = "api/v1/events"; // relative to /b3lb/admin/
  const NODES_URL = "api/v1/nodes/";
  const CLUSTERS_URL = "api/v1/clusters/";
  const CONFIRM_MS = 5000; // a second click within this time confirms maintenance-on, drain or panic
  const PANIC_POLL_MS = 1000; // how often a running panic's status is read
  const PANIC_POLLS = 600; // then the page stops following it (the panic itself goes on)
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
    clusterRows: new Map(), // cluster name -> {li, button, ...}
    confirming: new Map(), // "id:action" or "cluster:name" -> timer
    panics: new Set(), // node ids whose panic this page follows
  };

  // -- log-in ------------------------------------------------------------------------------------

  function showLogin(message) {
    stopStream();
    state.hello = null;
    state.history = null;
    state.snapshot = null;
    state.rows.clear();
    state.clusterRows.clear();
    state.panics.clear();
    $("nodes").tBodies[0].replaceChildren();
    $("clusters").replaceChildren();
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
    if (snapshot.clusters) showClusters(snapshot.clusters);
    if (snapshot.nodes) showNodes(snapshot.nodes);
    showTenants(snapshot.tenants || []);
    if (snapshot.render_queue !== undefined) showQueue(snapshot.render_queue);
    drawChart();
  }

  // -- clusters ------------------------------------------------------------------------------------

  // One line per cluster: its own maintenance switch (apart from each node's) and a button for it.
  function showClusters(clusters) {
    const list = $("clusters");
    const seen = new Set();
    clusters.forEach((cluster, index) => {
      seen.add(cluster.name);
      let row = state.clusterRows.get(cluster.name);
      if (!row) {
        row = makeClusterRow(cluster);
        state.clusterRows.set(cluster.name, row);
      }
      row.cluster = cluster;
      fillClusterRow(row);
      if (list.children[index] !== row.li) list.insertBefore(row.li, list.children[index] || null);
    });
    for (const [name, row] of state.clusterRows) {
      if (!seen.has(name)) {
        row.li.remove();
        state.clusterRows.delete(name);
      }
    }
  }

  function makeClusterRow(cluster) {
    const li = document.createElement("li");
    li.className = "cluster";
    const name = document.createElement("span");
    name.className = "slug";
    const badge = document.createElement("span");
    const counts = document.createElement("span");
    counts.className = "note";
    li.append(name, badge, counts);
    const row = { li, name, badge, counts, cluster, button: null };
    if (state.hello && state.hello.can_write) {
      row.button = button("cluster-maintenance", () => clusterAct(row));
      li.appendChild(row.button);
    }
    return row;
  }

  function fillClusterRow(row) {
    const c = row.cluster;
    row.li.dataset.cluster = c.name;
    row.li.dataset.maintenance = String(c.maintenance);
    row.name.textContent = c.name;
    row.badge.textContent = c.maintenance ? "cluster maintenance" : "in service";
    row.badge.className = `state state-${c.maintenance ? "maintenance" : "ok"}`;
    row.counts.textContent = `${c.nodes_ok} of ${c.nodes} node(s) take new meetings`;
    if (row.button && !state.confirming.has(`cluster:${c.name}`)) {
      row.button.textContent = c.maintenance ? "Cluster maintenance off" : "Cluster maintenance on";
    }
  }

  // On takes a second click (within CONFIRM_MS); off does not. Off leaves each node as it is on its own.
  function clusterAct(row) {
    const c = row.cluster;
    const on = !c.maintenance;
    const url = `${CLUSTERS_URL}${encodeURIComponent(c.name)}/maintenance`;
    const go = () => post(url, { on }, `cluster ${c.name}: maintenance ${on ? "on" : "off"}`);
    if (!on) {
      go();
      return;
    }
    confirmThen(`cluster:${c.name}`, row.button, "Confirm cluster maintenance", go, () => fillClusterRow(row));
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
    const tags = document.createElement("span");
    tags.className = "tags";
    cells.state.append(badge, tags);
    const buttons = {};
    if (state.hello && state.hello.can_write) {
      buttons.maintenance = button("maintenance", () => act(node.id, "maintenance"));
      buttons.drain = button("drain", () => act(node.id, "drain"));
      buttons.panic = button("panic", () => act(node.id, "panic"));
      cells.actions.append(buttons.maintenance, buttons.drain, buttons.panic);
    }
    return { tr, cells, badge, tags, buttons, node };
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

  // What the state badge alone does not say: maintenance of a node in error, whose maintenance it is,
  // and that a node in maintenance has no meeting left (drained: it can be switched off).
  function tagsOf(node) {
    const tags = [];
    if (node.maintenance && node.state !== "maintenance") tags.push("maintenance");
    if (node.cluster_maintenance && !node.node_maintenance) tags.push("cluster");
    if (node.drained) tags.push("drained");
    return tags;
  }

  function fillRow(row, node) {
    const c = row.cells;
    row.tr.dataset.node = `${node.cluster}/${node.slug}`;
    row.tr.dataset.state = node.state;
    row.tr.dataset.drained = String(Boolean(node.drained));
    c.cluster.textContent = node.cluster;
    c.slug.textContent = node.slug;
    row.badge.textContent = node.state;
    row.badge.className = `state state-${node.state}`;
    row.badge.title = node.last_error || "";
    row.tags.replaceChildren(...tagsOf(node).map((name) => {
      const tag = document.createElement("span");
      tag.className = `tag tag-${name}`;
      tag.textContent = name;
      return tag;
    }));
    c.load.textContent = node.state === "ok" ? node.load.toFixed(1) : "–";
    c.cpu.textContent = node.cpu.toFixed(1);
    c.attendees.textContent = node.attendees;
    c.meetings.textContent = node.meetings;
    c.routed.textContent = node.routed;
    c.poll.textContent = node.poll_age === null ? "–" : `${ago(node.poll_age)}${node.last_error ? " · " + node.last_error : ""}`;
    const own = Boolean(node.node_maintenance);
    const m = row.buttons.maintenance;
    if (m && !state.confirming.has(`${node.id}:maintenance`)) {
      m.textContent = own ? "Maintenance off" : "Maintenance on";
      m.dataset.on = own ? "false" : "true";
    }
    const d = row.buttons.drain;
    if (d && !state.confirming.has(`${node.id}:drain`)) {
      d.textContent = "Drain";
      d.disabled = own;
    }
    const p = row.buttons.panic;
    if (p && !state.confirming.has(`${node.id}:panic`)) {
      const running = state.panics.has(node.id);
      p.textContent = running ? "Panic running…" : "Panic";
      p.disabled = running;
    }
  }

  function ago(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    return `${Math.round(seconds / 3600)} h ago`;
  }

  // The first click turns the button into its confirmation for CONFIRM_MS; a second click within it runs.
  function confirmThen(key, b, prompt, run, refresh) {
    if (!state.confirming.has(key)) {
      b.textContent = prompt;
      b.classList.add("confirm");
      state.confirming.set(key, setTimeout(() => {
        state.confirming.delete(key);
        b.classList.remove("confirm");
        refresh();
      }, CONFIRM_MS));
      return;
    }
    clearTimeout(state.confirming.get(key));
    state.confirming.delete(key);
    b.classList.remove("confirm");
    refresh();
    run();
  }

  // Maintenance on, drain and panic take a second click; maintenance off does not.
  function act(id, action) {
    const row = state.rows.get(id);
    if (!row) return;
    const node = row.node;
    const b = row.buttons[action];
    const on = action === "maintenance" ? b.dataset.on === "true" : true;
    const url = `${NODES_URL}${encodeURIComponent(node.cluster)}/${encodeURIComponent(node.slug)}/${action}`;
    const run = action === "panic" ? () => panic(node, url)
      : () => post(url, action === "maintenance" ? { on } : undefined,
        `${node.slug}: ${action === "drain" ? "drain" : `maintenance ${on ? "on" : "off"}`}`);
    if (!on) {
      run();
      return;
    }
    const prompt = action === "drain" ? "Confirm drain"
      : action === "panic" ? `Confirm panic: end ${node.routed} meeting(s)` : "Confirm maintenance";
    confirmThen(`${id}:${action}`, b, prompt, run, () => fillRow(row, row.node));
  }

  function report(text, kind) {
    const log = $("action-log");
    log.textContent = text;
    log.className = kind ? `action-log ${kind}` : "action-log";
  }

  // One admin API write; the answer's JSON on success (after saying so), else null (after saying why).
  async function post(url, body, label) {
    report(`${label}…`);
    let response;
    try {
      const headers = { Authorization: `Bearer ${state.token}` };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      response = await fetch(url, {
        method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit",
      });
    } catch (_) {
      report(`${label} failed: b3lb did not answer`, "failed");
      return null;
    }
    if (!response.ok) {
      report(`${label} refused: ${await errorText(response)}`, "failed");
      return null;
    }
    report(`${label} done; the table follows within a few seconds`, "done");
    try {
      return await response.json();
    } catch (_) {
      return {};
    }
  }

  // A panic answers 202 at once and goes on in b3lb; its drain status (status_url) says when it is over.
  async function panic(node, url) {
    const label = `${node.slug}: panic`;
    const answer = await post(url, undefined, label);
    if (!answer) return;
    const first = (answer.data || [])[0] || {};
    state.panics.add(node.id);
    const row = state.rows.get(node.id);
    if (row) fillRow(row, row.node);
    report(`${label} started: frontends are told, then the node ends the meetings…`);
    try {
      for (let tries = 0; tries < PANIC_POLLS; tries++) {
        await new Promise((resolve) => setTimeout(resolve, PANIC_POLL_MS));
        if (!state.hello) return; // logged out meanwhile
        const response = await fetch(first.status_url, {
          headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store", credentials: "omit",
        });
        if (!response.ok) continue;
        const status = ((await response.json()).data || [])[0] || {};
        if (status.panic_state === "running") continue;
        const d = status.panic_detail || {};
        if (status.panic_state === "finished") {
          const failed = (d.callbacks_failed || 0) + (d.ends_failed || 0);
          report(`${label} finished: ${d.meetings} meeting(s) ended, ${d.callbacks_sent} frontend(s) told` +
            (failed ? `, ${d.callbacks_failed} callback(s) and ${d.ends_failed} end(s) failed` : ""),
          failed ? "failed" : "done");
        } else {
          report(`${label} ${status.panic_state}: ${d.error || "see the audit log"}`, "failed");
        }
        return;
      }
      report(`${label} still running; see the node's drain status`, "failed");
    } catch (_) {
      report(`${label}: its status could not be read; see the audit log`, "failed");
    } finally {
      state.panics.delete(node.id);
      const current = state.rows.get(node.id);
      if (current) fillRow(current, current.node);
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
