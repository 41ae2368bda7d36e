// cce-monitor status page: reads the daemon's API, draws rollouts, node pools and failures, follows the event
// stream. Text from outside (names, reasons, labels) only ever goes in through textContent; the timeline is SVG
// the daemon drew (every outside text escaped there), parsed as XML and imported — never innerHTML.
"use strict";

(function () {
  const TOKEN_KEY = "cce-monitor-token";
  const REFRESH_EVERY_MS = 10000; // a reread even while the stream is quiet (replicas, missed events)
  const SETTLE_MS = 400; // events come in bursts: one reread per burst
  const STATE_ORDER = ["Active", "Success", "Running", "Initializing", "waiting", "Failed", "Abnormal", "Error",
    "not_active", "timed_out", "not_found"];
  const LEGEND = [["Initializing", "Initializing"], ["Running", "Running"], ["Success", "created, not yet Active"],
    ["Active", "Active (usable)"], ["Failed", "Failed"], ["timed_out", "timed out"]];

  let selected = null; // the rollout whose timeline is shown
  let refreshTimer = null;
  let streamAbort = null;
  let rows = {}; // timeline row key -> row (for the detail panel)

  const $ = (id) => document.getElementById(id);

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function stateClass(state) {
    return "s-" + String(state).replace(/[^A-Za-z0-9_-]/g, "_");
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401) throw new Unauthorized(t ? "The token was refused." : "This daemon needs its API token.");
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new Error(path + ": HTTP " + response.status + " (not JSON)");
    }
    if (!response.ok) throw new Error(path + ": " + ((body && body.error) || "HTTP " + response.status));
    return body;
  }

  function askForToken(why) {
    if (streamAbort) streamAbort.abort();
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-why").textContent = why;
    $("token").focus();
    setLive(false, "locked");
  }

  function showError(err) {
    const box = $("error");
    if (err) {
      box.textContent = String(err.message || err);
      box.hidden = false;
    } else {
      box.hidden = true;
    }
  }

  function setLive(on, text) {
    const badge = $("live");
    badge.className = "live " + (on ? "on" : "off");
    badge.textContent = text;
  }

  function bar(counts) {
    const total = Object.values(counts).reduce((a, b) => a + (b > 0 ? b : 0), 0);
    const box = el("div", null, "bar");
    const states = STATE_ORDER.filter((s) => counts[s]).concat(Object.keys(counts).filter((s) => !STATE_ORDER.includes(s)).sort());
    for (const state of states) {
      const n = counts[state];
      if (!(n > 0) || !total) continue;
      const part = el("span", null, stateClass(state));
      part.style.width = (100 * n / total).toFixed(2) + "%";
      part.title = state + ": " + n;
      part.dataset.state = state;
      part.dataset.count = String(n);
      box.appendChild(part);
    }
    return box;
  }

  function drawRollouts(rollouts) {
    const box = $("rollouts");
    box.replaceChildren();
    if (!rollouts.length) box.appendChild(el("p", "no rollouts yet", "meta"));
    for (const r of rollouts) {
      const item = el("div", null, "rollout" + (r.rollout === selected ? " selected" : ""));
      item.dataset.rollout = r.rollout;
      item.appendChild(el("span", r.rollout, "name"));
      item.appendChild(el("span", r.line, "line")); // the server's words (engine.rollout.describe)
      item.appendChild(bar(r.counts || {}));
      if (r.failed_count) {
        const names = (r.failed || []).map((f) => f.resource_name || f.node_id || f.job_id).join(", ");
        item.appendChild(el("div", r.failed_count + " failed: " + names, "meta"));
      }
      item.addEventListener("click", () => select(r.rollout));
      box.appendChild(item);
    }
    if (!selected && rollouts.length) select(rollouts[0].rollout, true);
  }

  function emptyRow(body, text, columns) {
    const tr = document.createElement("tr");
    const td = el("td", text, "meta");
    td.colSpan = columns;
    tr.appendChild(td);
    body.appendChild(tr);
  }

  function drawPools(pools) {
    const body = $("pools").tBodies[0];
    body.replaceChildren();
    for (const p of pools) {
      const tr = document.createElement("tr");
      const problems = Array.isArray(p.problems) ? p.problems.join("; ") : (p.problems || "");
      for (const value of [p.nodepool_id, p.cluster_id, p.rollout, p.phase === "" ? "settled" : p.phase, p.current,
        p.target, p.creating, p.deleting, p.outcome, problems]) {
        tr.appendChild(el("td", value === null || value === undefined ? "" : value));
      }
      tr.lastChild.className = "reason";
      body.appendChild(tr);
    }
    if (!pools.length) emptyRow(body, "no node pools followed", 10);
  }

  function drawFailures(failures) {
    const body = $("failures").tBodies[0];
    body.replaceChildren();
    for (const f of failures) {
      const tr = document.createElement("tr");
      const what = f.type + (f.phase ? " " + f.phase : "");
      const reason = f.reason || f.detail || "";
      for (const value of [String(f.time).replace("T", " ").slice(0, 19), f.resource_name || f.node_id || f.subjob_id || f.job_id,
        what, f.rollout || "", reason]) {
        tr.appendChild(el("td", value));
      }
      tr.lastChild.className = "reason";
      body.appendChild(tr);
    }
    if (!failures.length) emptyRow(body, "none seen since the daemon started", 5);
  }

  function drawTimeline(timeline) {
    const box = $("timeline");
    const doc = new DOMParser().parseFromString(timeline.svg, "image/svg+xml");
    const svg = doc.documentElement;
    if (doc.getElementsByTagName("parsererror").length || svg.namespaceURI !== "http://www.w3.org/2000/svg") {
      throw new Error("the timeline picture did not parse");
    }
    rows = {};
    for (const row of timeline.rows) rows[row.key] = row;
    box.replaceChildren(document.importNode(svg, true));
    for (const g of box.querySelectorAll("g.row")) {
      g.addEventListener("click", () => showDetail(rows[g.getAttribute("data-key")]));
    }
  }

  function showDetail(row) {
    const box = $("detail");
    if (!row) {
      box.hidden = true;
      return;
    }
    box.replaceChildren();
    const add = (label, value) => {
      if (value === null || value === undefined || value === "") return;
      const line = el("div");
      line.appendChild(el("b", label));
      line.appendChild(el("span", value));
      box.appendChild(line);
    };
    add("node / job", row.name);
    add("node id", row.node_id);
    add("job", row.job_id);
    add("sub-job", row.subjob_id);
    add("type", row.job_type);
    add("state", row.state);
    add("reason", row.reason);
    add("phases", row.spans.map((s) => s[0] + " " + duration(s[2] - s[1])).join(" → "));
    box.hidden = false;
  }

  async function select(name, quiet) {
    selected = name;
    for (const item of document.querySelectorAll(".rollout")) {
      item.classList.toggle("selected", item.dataset.rollout === name);
    }
    $("timeline-section").hidden = false;
    $("timeline-name").textContent = name;
    if (!quiet) $("detail").hidden = true;
    await refreshTimeline();
  }

  async function refreshTimeline() {
    if (!selected) return;
    const name = selected;
    const body = await api("/v1/rollouts/" + encodeURIComponent(name) + "/timeline");
    if (name === selected) drawTimeline(body.timeline);
  }

  async function refresh() {
    try {
      const [rollouts, pools, failures] = await Promise.all([
        api("/v1/rollouts"), api("/v1/nodepools"), api("/v1/failures?limit=50"),
      ]);
      $("login").hidden = true;
      $("main").hidden = false;
      drawRollouts(rollouts.rollouts);
      drawPools(pools.nodepools);
      drawFailures(failures.failures);
      await refreshTimeline();
      showError(null);
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.loaded = "true";
      if (!streamAbort) follow();
    } catch (err) {
      if (err instanceof Unauthorized) askForToken(err.message);
      else showError(err);
    }
  }

  function soon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refresh();
    }, SETTLE_MS);
  }

  // Server-sent events read with fetch: EventSource cannot send the token in a header.
  async function follow() {
    const controller = new AbortController();
    streamAbort = controller;
    const headers = { Accept: "text/event-stream" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    try {
      const response = await fetch("/v1/events/stream", { headers, signal: controller.signal, cache: "no-store", credentials: "omit" });
      if (response.status === 401) throw new Unauthorized("The token was refused.");
      if (!response.ok || !response.body) throw new Error("event stream: HTTP " + response.status);
      setLive(true, "live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (block.split("\n").some((line) => line.startsWith("event:"))) soon();
        }
      }
    } catch (err) {
      if (err instanceof Unauthorized) {
        askForToken(err.message);
        return;
      }
      if (controller.signal.aborted) return;
    } finally {
      if (streamAbort === controller) streamAbort = null;
    }
    setLive(false, "reconnecting");
    setTimeout(() => { if (!streamAbort && $("login").hidden) follow(); }, 3000);
  }

  function start() {
    const legend = $("legend");
    for (const [state, label] of LEGEND) {
      const item = el("span");
      item.appendChild(el("i", null, stateClass(state)));
      item.appendChild(document.createTextNode(label));
      legend.appendChild(item);
    }
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value);
      $("token").value = "";
      refresh();
    });
    // Ask for the token before reading any data when one is needed and this tab has none.
    fetch("/ui/session.json", { cache: "no-store", credentials: "omit" })
      .then((r) => r.json())
      .then((info) => {
        if (info.token_required && !token()) askForToken("This daemon needs its API token.");
        else refresh();
      })
      .catch(() => refresh());
    setInterval(() => { if ($("login").hidden) refresh(); }, REFRESH_EVERY_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
