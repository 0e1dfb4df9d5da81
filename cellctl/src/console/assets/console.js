// The redcell console's page: polls /api/state every second and /api/series every five,
// and draws the deployment with plain DOM and inline SVG. No library, nothing from elsewhere.
"use strict";
(function () {
  const KEY = "redcell-console-token";
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  let token = sessionStorage.getItem(KEY) || "";
  let state = null;
  let series = null;
  const open = new Set(); // nodes whose every reason is shown
  const nodeEls = new Map();
  let timer = null;

  // A token handed over in the URL's fragment (never sent to a server) is kept, then removed.
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const hclass = (h) => (h === "red" ? "red" : h === "amber" ? "amber" : "green");
  const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
  const num = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d === undefined ? 1 : d));

  async function api(path, opts) {
    const o = Object.assign({ headers: {} }, opts || {});
    o.headers.Authorization = "Bearer " + token;
    const r = await fetch(path, o);
    if (r.status === 401 || r.status === 403) {
      let detail = "";
      try { detail = (await r.json()).detail; } catch (_) { /* no body */ }
      signedOut(detail || "the token was refused");
      throw new Error("auth");
    }
    return r;
  }

  function signedOut(why) {
    token = "";
    sessionStorage.removeItem(KEY);
    $("app").hidden = true;
    $("signout").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = why || "";
    $("overall").textContent = "signed out";
    $("overall").className = "badge";
    if (timer) { clearInterval(timer); timer = null; }
    $("token").focus();
  }

  function signedIn() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = false;
    poll();
    pollSeries();
    if (!timer) {
      let n = 0;
      timer = setInterval(() => { poll(); if (++n % 5 === 0) pollSeries(); }, 1000);
    }
  }

  async function poll() {
    try {
      const r = await api("/api/state");
      if (!r.ok) {
        const p = await r.json().catch(() => ({}));
        stale("console: " + (p.detail || r.status));
        return;
      }
      state = await r.json();
    } catch (e) {
      if (e.message !== "auth") stale("the console does not answer; the picture below is from " + (state ? fmtTime(state.at_ms) : "never"));
      return;
    }
    try {
      render();
      $("stale").hidden = true;
    } catch (e) {
      stale("the page could not draw the picture: " + e);
    }
  }
  async function pollSeries() {
    try {
      const r = await api("/api/series");
      if (r.ok) { series = await r.json(); renderCharts(); }
    } catch (_) { /* shown by poll */ }
  }
  function stale(text) {
    $("stale").textContent = text;
    $("stale").hidden = false;
  }

  // ---- the picture ----
  function render() {
    const s = state.status;
    const overall = s.health;
    $("overall").className = "badge " + hclass(overall);
    $("overall").textContent = "deployment " + ({ green: "OK", amber: "WARN", red: "FAILING" })[overall];
    $("updated").textContent = "updated " + fmtTime(state.at_ms);
    $("mapinfo").textContent = "· raft leader " + (s.leader ? "meta" + s.leader : "NONE") +
      ", term " + (s.term ?? "?") + ", map version " + (s.map_version ?? "?");
    renderColumns();
    renderShards();
    renderSwitches();
    renderEvents();
    requestAnimationFrame(drawArrows);
  }

  function renderColumns() {
    const cols = $("columns");
    const s = state.status;
    const byRegion = new Map(state.regions.map((r) => [r, []]));
    for (const n of state.nodes) {
      if (!byRegion.has(n.region)) byRegion.set(n.region, []);
      byRegion.get(n.region).push(n);
    }
    // Columns are keyed by region; nodes are kept (focus and open state survive updates).
    const wanted = [...byRegion.keys()];
    for (const c of [...cols.children]) if (!wanted.includes(c.dataset.region)) c.remove();
    wanted.forEach((region, i) => {
      let col = cols.querySelector(`[data-region="${CSS.escape(region)}"]`);
      if (!col) {
        col = el("section", { class: "region", "data-region": region, "aria-label": "region " + region },
          el("h3", { text: region === "-" ? "edge" : region + (region === "tiebreak" ? " (raft-meta tie-breaker)" : "") }));
      }
      if (cols.children[i] !== col) cols.insertBefore(col, cols.children[i] || null);
      const order = byRegion.get(region);
      for (const n of order) {
        const b = nodeEl(n, s);
        if (b.parentElement !== col) col.append(b);
      }
      for (const b of [...col.querySelectorAll(".node")]) if (!order.some((n) => n.id === b.dataset.node)) b.remove();
    });
  }

  function nodeEl(n, s) {
    let b = nodeEls.get(n.id);
    if (!b) {
      b = el("button", { type: "button", class: "node", "data-node": n.id, "aria-expanded": "false" });
      b.addEventListener("click", () => {
        if (open.has(n.id)) open.delete(n.id); else open.add(n.id);
        render();
      });
      nodeEls.set(n.id, b);
    }
    const cls = hclass(n.health);
    b.className = "node " + cls;
    b.dataset.health = n.health;
    b.setAttribute("aria-expanded", open.has(n.id) ? "true" : "false");
    const title = n.kind === "cell" ? "cell " + n.id : n.id;
    const leader = n.kind === "meta" && s.leader && n.id === "meta" + s.leader;
    const reasons = n.reasons.length ? n.reasons : [n.detail || "ok"];
    b.title = reasons.join("\n");
    b.setAttribute("aria-label", `${title}: ${n.label}${leader ? ", raft leader" : ""}. ${reasons.join(". ")}`);
    const top = el("div", { class: "top" },
      el("span", {}, el("span", { class: "kind", text: n.kind }), el("span", { class: "name", text: n.id }),
        leader ? el("span", { class: "leader", text: "LEADER" }) : null),
      el("span", { class: "word " + cls, text: n.label }));
    const kids = [top, el("div", { class: "reason", text: n.reasons[0] || (leader ? "ready, raft leader" : "ready") })];
    if (n.kind === "cell") kids.push(shardLines(n.id, s));
    if (open.has(n.id)) {
      kids.push(el("ul", {}, ...n.reasons.map((r) => el("li", { text: r })), el("li", { class: "muted", text: n.detail })));
    } else if (n.reasons.length > 1) {
      kids.push(el("div", { class: "more", text: `+${n.reasons.length - 1} more: select for all` }));
    }
    b.replaceChildren(...kids);
    return b;
  }

  function shardLines(cell, s) {
    const box = el("div", { class: "shards" });
    for (const sh of s.shards) {
      if (sh.primary === cell) {
        box.append(el("div", { "data-shard": sh.shard, "data-primary": sh.primary, "data-backup": sh.backup || "" ,
          text: `primary of ${sh.shard} → ${sh.backup || "no backup"}${lagText(sh)}` }));
      } else if (sh.backup === cell) {
        box.append(el("div", { text: `backup of ${sh.shard} (from ${sh.primary})` }));
      }
    }
    const c = s.cells.find((c) => c.name === cell);
    if (c && c.fenced) box.append(el("div", { text: "fenced: serves nothing until rebuilt" }));
    return box;
  }
  function lagText(sh) {
    if (!sh.backup) return "";
    const parts = [];
    if (sh.lag_records !== null && sh.lag_records !== undefined) parts.push(sh.lag_records + " rec");
    if (sh.lag_ms !== null && sh.lag_ms !== undefined) parts.push(sh.lag_ms + " ms");
    return parts.length ? ", lag " + parts.join(" / ") : ", lag ?";
  }

  function drawArrows() {
    const g = $("arrows");
    const wrap = $("map-wrap").getBoundingClientRect();
    const kids = [svg("defs", {})];
    for (const colour of ["green", "amber", "red"]) {
      const mk = svg("marker", { id: "head-" + colour, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
      mk.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: colour, fill: "currentColor" }));
      kids[0].append(mk);
    }
    for (const sh of state.status.shards) {
      if (!sh.backup) continue;
      const a = nodeEls.get(sh.primary), b = nodeEls.get(sh.backup);
      if (!a || !b || !a.isConnected || !b.isConnected) continue;
      const ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
      if (!ra.width || !rb.width) continue;
      const cls = hclass(sh.alarm);
      const leftToRight = rb.left >= ra.right - 1;
      const sameCol = Math.abs(ra.left - rb.left) < 2;
      let x1, y1, x2, y2, d;
      if (sameCol) {
        x1 = ra.right - wrap.left; y1 = ra.top + ra.height / 2 - wrap.top;
        x2 = rb.right - wrap.left; y2 = rb.top + rb.height / 2 - wrap.top;
        d = `M${x1},${y1} C${x1 + 40},${y1} ${x2 + 40},${y2} ${x2},${y2}`;
      } else {
        x1 = (leftToRight ? ra.right : ra.left) - wrap.left; y1 = ra.top + ra.height * 0.35 - wrap.top;
        x2 = (leftToRight ? rb.left : rb.right) - wrap.left; y2 = rb.top + rb.height * 0.65 - wrap.top;
        const mx = (x1 + x2) / 2;
        d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
      }
      kids.push(svg("path", { d, class: cls, stroke: "currentColor", "stroke-width": sh.alarm === "green" ? "1.6" : "2.6", fill: "none", "marker-end": `url(#head-${cls})`, "data-arrow": sh.shard }));
      const t = svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, "text-anchor": "middle", "font-size": "11", class: cls, fill: "currentColor", "paint-order": "stroke", stroke: "#fff", "stroke-width": "3" });
      t.textContent = `${sh.shard}${lagText(sh).replace(", lag", ": lag")}`;
      kids.push(t);
    }
    g.replaceChildren(...kids);
  }
  window.addEventListener("resize", () => state && requestAnimationFrame(drawArrows));

  function renderShards() {
    const rows = state.status.shards.map((sh) => {
      const lf = sh.last_failover;
      const st = [sh.alarm.toUpperCase()].concat(sh.reasons).join(": ");
      return el("tr", { "data-shard-row": sh.shard },
        el("th", { scope: "row", text: sh.shard }),
        el("td", { text: `${sh.primary} → ${sh.backup || "none"}` }),
        el("td", { text: sh.backup ? `${sh.lag_records ?? "?"} records, ${sh.lag_ms ?? "?"} ms` : "–" }),
        el("td", { text: sh.policy + (sh.alone ? " (alone)" : "") }),
        el("td", { class: hclass(sh.alarm), text: st }),
        el("td", { text: lf ? `${lf.kind} ${lf.from} → ${lf.to} at ${fmtTime(lf.at_ms)}, RTO ${lf.took_ms ?? "?"} ms` : "none" }));
    });
    $("shards").tBodies[0].replaceChildren(...rows);
  }

  function renderSwitches() {
    const body = $("switches").tBodies[0];
    const focused = document.activeElement && document.activeElement.dataset.flip;
    const rows = state.switches.map((sw) => {
      const btn = el("button", { type: "button", "data-flip": sw.name, text: sw.on ? "Turn off…" : "Turn on…" });
      btn.addEventListener("click", () => confirmFlip(sw));
      return el("tr", { "data-switch": sw.name, "data-on": String(sw.on) },
        el("th", { scope: "row" }, el("code", { text: sw.name })),
        el("td", { class: sw.on ? "green" : "red", text: sw.on ? "on" : "OFF" }),
        el("td", { text: sw.message || "" }),
        el("td", {}, btn));
    });
    body.replaceChildren(...rows);
    if (focused) { const b = body.querySelector(`[data-flip="${CSS.escape(focused)}"]`); if (b) b.focus(); }
  }

  function confirmFlip(sw) {
    const d = $("confirm");
    const turningOff = sw.on;
    $("confirm-text").textContent = turningOff
      ? `Turn switch ${sw.name} OFF? Requests of that flow will be answered 503 degraded by the router.`
      : `Turn switch ${sw.name} back ON?`;
    $("confirm-message-row").hidden = !turningOff;
    $("confirm-message").value = turningOff ? "" : sw.message;
    $("confirm-ok").textContent = turningOff ? "Turn off" : "Turn on";
    d.returnValue = "";
    d.onclose = async () => {
      if (d.returnValue !== "ok") return;
      try {
        const r = await api("/api/switches/" + encodeURIComponent(sw.name), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ on: !turningOff, message: turningOff ? $("confirm-message").value : "" }),
        });
        if (!r.ok) {
          const p = await r.json().catch(() => ({}));
          stale(`switch ${sw.name}: ${p.detail || r.status}`);
        }
      } catch (e) { if (e.message !== "auth") stale(`switch ${sw.name}: the console does not answer`); }
      poll();
    };
    d.showModal();
    (turningOff ? $("confirm-message") : $("confirm-ok")).focus();
  }

  // A drill's report is behind the admin token like every /api/ route: fetched with it, then
  // shown in the tab opened on the click (opened first, so no pop-up blocker objects).
  async function openReport(path) {
    const tab = window.open("", "_blank");
    try {
      const r = await api(path);
      if (!r.ok) throw new Error(String(r.status));
      const url = URL.createObjectURL(new Blob([await r.text()], { type: "text/html" }));
      if (tab) tab.location = url; else location.assign(url);
    } catch (e) {
      if (tab) tab.close();
      if (e.message !== "auth") stale(`drill report: ${e.message}`);
    }
  }

  function renderEvents() {
    const items = state.events.map((e) => {
      let link = null;
      if (e.report) {
        link = el("a", { href: e.report, class: "report", text: "report" });
        link.onclick = (ev) => { ev.preventDefault(); openReport(e.report); };
      }
      return el("li", { "data-kind": e.kind },
        el("time", { datetime: new Date(e.at_ms).toISOString(), text: fmtTime(e.at_ms) }),
        el("span", { class: "tag", text: e.kind }),
        e.text, link ? " " : null, link);
    });
    if (!items.length) items.push(el("li", { class: "muted", text: "nothing has happened since the console started" }));
    $("events").replaceChildren(...items);
  }

  // ---- charts ----
  const CHARTS = [
    { key: "rps", title: "requests/s", lines: [["rps", "#0969da"]], unit: "" },
    { key: "errors", title: "errors/s", lines: "errors", unit: "" },
    { key: "lat", title: "p50 / p99 ms", lines: [["p50_ms", "#1a7f37", "p50"], ["p99_ms", "#bc4c00", "p99"]], unit: " ms" },
    { key: "batch", title: "claim batch", lines: [["batch", "#8250df"]], unit: "" },
  ];
  const ERROR_COLOURS = ["#cf222e", "#bc4c00", "#9a6700", "#8250df", "#57606a"];

  function renderCharts() {
    if (!series || !state) return;
    const box = $("charts");
    const cells = state.nodes.filter((n) => n.kind === "cell").map((n) => n.id);
    const span = 15 * 60 * 1000;
    const now = Date.now();
    box.replaceChildren(...cells.map((cell) => {
      const pts = (series.cells[cell] || []).filter((p) => p.t > now - span);
      // The last 15 minutes, or less while the console has seen less (at least 2 minutes).
      const t0 = pts.length ? Math.max(now - span, Math.min(pts[0].t - series.interval_ms, now - 120000)) : now - span;
      const fig = el("section", { class: "cellcharts", "data-cell": cell, "aria-label": "charts of cell " + cell },
        el("h3", { text: "cell " + cell }));
      for (const c of CHARTS) {
        let lines;
        if (c.lines === "errors") {
          const codes = [...new Set(pts.flatMap((p) => Object.keys(p.errors)))].sort();
          lines = codes.map((code, i) => ["e" + code, ERROR_COLOURS[i % ERROR_COLOURS.length], (p) => p.rps === null ? null : (p.errors[code] || 0), code]);
          if (!lines.length) lines = [["none", "#1a7f37", (p) => (p.rps === null ? null : 0), "none"]];
        } else {
          lines = c.lines.map(([k, col, label]) => [k, col, (p) => p[k], label || k]);
        }
        // The newest point the cell answered for (a gap: it did not answer).
        const answered = pts.filter((p) => p.rps !== null);
        const last = answered.length ? answered[answered.length - 1] : null;
        const gap = pts.length && pts[pts.length - 1].rps === null ? " (no answer now)" : "";
        const val = last ? lines.map(([, , f, label]) => (lines.length > 1 ? label + " " : "") + num(f(last))).join(", ") + c.unit + gap : (gap ? "no answer" : "no data yet");
        fig.append(el("div", { class: "chart", "data-chart": c.key },
          el("span", {}, c.title, el("br"), el("span", { class: "val", text: val })),
          spark(pts, lines, t0, now, `${c.title} of cell ${cell}: now ${val}`)));
      }
      return fig;
    }));
  }

  function spark(pts, lines, t0, t1, label) {
    const W = 300, H = 34, P = 2;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label });
    let max = 0;
    for (const [, , f] of lines) for (const p of pts) { const v = f(p); if (v !== null && v !== undefined && v > max) max = v; }
    if (max <= 0) max = 1;
    const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
    const y = (v) => H - P - (v / max) * (H - 2 * P);
    for (const [, colour, f] of lines) {
      let d = "", pen = false;
      for (const p of pts) {
        const v = f(p);
        if (v === null || v === undefined) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      if (d) s.append(svg("path", { d, stroke: colour, fill: "none", "stroke-width": "1.5", "vector-effect": "non-scaling-stroke" }));
    }
    const wrap = el("span", { class: "spark" }, s, el("span", { class: "max", text: "max " + num(max) }));
    return wrap;
  }

  // ---- sign in / out ----
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(KEY, token);
    signedIn();
  });
  $("signout").addEventListener("click", () => signedOut("signed out"));
  if (token) signedIn(); else signedOut("");
})();
