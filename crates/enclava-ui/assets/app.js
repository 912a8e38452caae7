// Enclava's dashboard: signs in, draws each tab from /ui/api, redraws when the server says
// something changed (server-sent events). Everything from the server is written with
// textContent (el() below): nothing it sends is ever parsed as HTML or run.
"use strict";

const state = { tab: "enclaves", csrf: "", after: [null], queue: {}, timer: null };

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") n.className = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    n.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return n;
}

const svgNs = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const n = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null) continue;
    n.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return n;
}

async function api(path, opts) {
  const r = await fetch("/ui/api/" + path, Object.assign({ credentials: "same-origin" }, opts || {}));
  if (r.status === 401) { showSignIn(); throw new Error("signed out"); }
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((body && body.message) || r.statusText);
  return body;
}

const when = (ms) => (ms ? new Date(Number(ms)).toLocaleString() : "");
const short = (s, n) => (s && s.length > n ? s.slice(0, n) + "…" : s || "");
const list = (v) => (Array.isArray(v) ? v : (v && (v.data || v.items)) || []);

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "nothing yet"))]));
}

// A bar chart: [{label, value, cls}], drawn as SVG.
function bars(title, data) {
  const w = 480, rowH = 18, h = Math.max(1, data.length) * rowH + 6;
  const max = Math.max(1, ...data.map((d) => d.value));
  const g = svg("svg", { width: w, height: h, role: "img", "aria-label": title });
  data.forEach((d, i) => {
    const y = i * rowH + 3;
    const bw = Math.round((d.value / max) * (w - 300));
    g.append(svg("text", { x: 0, y: y + 12 }, short(d.label, 44)));
    g.append(svg("rect", { x: 260, y: y + 2, width: Math.max(1, bw), height: rowH - 6, fill: d.color || "#5b6570" }));
    g.append(svg("text", { x: 266 + bw, y: y + 12 }, d.value));
  });
  return el("div", { class: "chart" }, el("h3", {}, title), g);
}

// Counts per time bucket as columns: [{t, v}] (t in ms), the newest on the right.
function columns(title, points) {
  const w = 320, h = 90, n = Math.max(1, points.length), cw = Math.max(2, Math.floor((w - 30) / Math.max(n, 10)));
  const max = Math.max(1, ...points.map((p) => p.v));
  const g = svg("svg", { width: w, height: h, role: "img", "aria-label": title });
  points.forEach((p, i) => {
    const bh = Math.round((p.v / max) * (h - 25));
    g.append(svg("rect", { x: 25 + i * cw, y: h - 15 - bh, width: cw - 1, height: Math.max(bh, p.v ? 1 : 0), fill: "#1d232a" }));
  });
  g.append(svg("text", { x: 0, y: 12 }, max));
  g.append(svg("text", { x: 0, y: h - 2 }, points.length ? new Date(points[0].t).toLocaleTimeString() : "no data"));
  return el("div", { class: "chart" }, el("h3", {}, title), g);
}

// A line over time: [{t, v}].
function line(title, points) {
  const w = 320, h = 90;
  const g = svg("svg", { width: w, height: h, role: "img", "aria-label": title });
  if (points.length > 1) {
    const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
    const max = Math.max(1, ...points.map((p) => p.v));
    const xy = points.map((p) => [((p.t - t0) / Math.max(1, t1 - t0)) * (w - 30) + 25, h - 15 - (p.v / max) * (h - 25)]);
    g.append(svg("polyline", { points: xy.map((p) => p.join(",")).join(" "), fill: "none", stroke: "#1d232a", "stroke-width": 1.5 }));
    g.append(svg("text", { x: 0, y: 12 }, max));
  }
  g.append(svg("text", { x: 0, y: h - 2 }, "0"));
  return el("div", { class: "chart" }, el("h3", {}, title), g);
}

function statusClass(s) {
  if (!s) return "muted";
  return s.confidential ? "ok" : "warn";
}

function evidenceText(e) {
  if (!e) return el("span", { class: "muted" }, "none");
  if (e.state === "verified") {
    const c = e.claims || {};
    const simulated = c.platform === "sim";
    return el("span", { class: simulated ? "warn" : "ok" },
      `verified ${new Date(e.atUnix * 1000).toLocaleTimeString()} against the deployment's policy: ` +
      `platform ${c.platform}, measurement ${short(c.measurement, 16)}` +
      (c.tcbStatus ? `, TCB ${c.tcbStatus}` : ", no TCB status (no vendor collateral for this platform)") +
      (c.debug ? ", DEBUG enclave" : "") + "; binds its request key" +
      (simulated ? ". A simulated TEE: the signature is real, the protection is not" : ""));
  }
  if (e.state === "refused") return el("span", { class: "bad" }, "refused: " + (e.reasons || []).join("; "));
  return el("span", { class: "muted" }, "not verified here (" + (e.why || "") + ")");
}

async function drawEnclaves() {
  const filter = state.filter || "";
  const platform = state.platform || "";
  const after = state.after[state.after.length - 1];
  const q = new URLSearchParams({ q: filter, platform: platform, after: after || "" });
  const d = await api("enclaves?" + q);
  const fleet = Object.entries(d.fleet || {}).map(([p, f]) => ({
    label: p + " — " + (f.label || "unknown"), value: f.count, color: f.confidential ? "#1b7a3a" : "#9a6700",
  }));
  const search = el("input", { type: "search", placeholder: "filter by id, model, measurement", value: state.typing ?? filter, id: "filter" });
  search.addEventListener("input", () => { state.typing = search.value; });
  search.addEventListener("change", () => { state.filter = search.value; state.typing = undefined; state.after = [null]; redraw(); });
  const pick = el("select", { id: "platform" }, el("option", { value: "" }, "every platform"),
    Object.keys(d.fleet || {}).map((p) => el("option", { value: p, selected: p === platform }, p)));
  pick.addEventListener("change", () => { state.platform = pick.value; state.after = [null]; redraw(); });
  const rows = d.items.map((e) => el("tr", { "data-id": e.id },
    el("td", { class: "mono" }, e.id, el("br"), el("span", { class: "muted" }, e.address), el("br"),
      el("span", { class: "muted" }, e.heartbeatAgoMs === null || e.heartbeatAgoMs === undefined ? "" : `heartbeat ${(e.heartbeatAgoMs / 1000).toFixed(1)} s ago`),
      e.inFlight === null || e.inFlight === undefined ? null : el("div", { class: "muted" }, `load: ${e.inFlight} in flight through pools`)),
    el("td", {}, e.platform, el("br"), el("span", { class: statusClass(e.status) }, e.status ? e.status.label : "unknown platform")),
    el("td", { class: "mono" }, short(e.measurement, 24)),
    el("td", {}, evidenceText(e.evidence)),
    el("td", {}, e.models.map((m) => el("div", { class: m.hot ? "hot" : "cold" }, m.id + (m.hot ? " (hot)" : " (cold)")))),
    el("td", { class: "muted" }, Object.entries(e.extra || {}).map(([k, v]) => el("div", {}, k + ": " + (typeof v === "string" ? v : JSON.stringify(v))))),
  ));
  const prev = el("button", { disabled: state.after.length < 2 }, "previous");
  prev.addEventListener("click", () => { state.after.pop(); redraw(); });
  const next = el("button", { disabled: !d.next }, "next");
  next.addEventListener("click", () => { state.after.push(d.next); redraw(); });
  return [
    el("div", { class: "charts" }, bars("The fleet by platform and security status", fleet)),
    el("div", { class: "tools" }, search, pick, prev, next, el("span", { class: "muted" }, `served in ${d.servedMs.toFixed(1)} ms`)),
    table(["Enclave", "Platform and security", "Measurement", "What its evidence proved", "Models", "Info"], rows),
  ];
}

async function drawModels() {
  const d = await api("models");
  const rows = d.models.map((m) => el("tr", { "data-model": m.id },
    el("td", { class: "mono" }, m.id),
    el("td", {}, "v" + m.currentVersion),
    el("td", {}, (m.grants || []).filter((g) => !g.revokedAtMs).map((g) => el("div", { class: "mono" }, g.user + " on " + short(g.measurement, 16)))),
    el("td", {}, m.hotOn.length ? m.hotOn.map((i) => el("div", { class: "hot mono" }, i)) : el("span", { class: "muted" }, "hot nowhere")),
    el("td", {}, m.coldOn.map((i) => el("div", { class: "cold mono" }, i))),
  ));
  const audit = list(d.audit);
  const byMinute = {};
  for (const a of audit) {
    const minute = Math.floor(a.atMs / 60000) * 60000;
    const k = byMinute[minute] || (byMinute[minute] = { t: minute, released: 0, refused: 0 });
    if (/refus|denied|not_granted/i.test(a.action + " " + a.detail)) k.refused++;
    else if (/release/i.test(a.action)) k.released++;
  }
  const minutes = Object.values(byMinute).sort((a, b) => a.t - b.t);
  const chain = d.auditChain || {};
  const auditRows = audit.slice(0, 50).map((a) => el("tr", {},
    el("td", {}, when(a.atMs)), el("td", {}, a.action), el("td", { class: "mono" }, a.model),
    el("td", { class: "mono" }, short(a.measurement, 16)), el("td", {}, a.subject), el("td", {}, a.detail)));
  return [
    el("h2", {}, "My models (" + d.user + ")"),
    table(["Model", "Key version", "Granted to", "Hot on", "Cold on"], rows),
    el("div", { class: "charts" },
      columns("Key releases per minute", minutes.map((m) => ({ t: m.t, v: m.released }))),
      columns("Refusals per minute", minutes.map((m) => ({ t: m.t, v: m.refused })))),
    el("h2", {}, "Recent key releases and refusals"),
    el("p", { class: chain.ok ? "ok" : "bad", id: "chain" }, chain.ok === undefined ? "audit chain: not available"
      : chain.ok ? `audit chain verifies (${chain.records} records, none edited, deleted or rolled back)`
        : "audit chain does NOT verify: " + (chain.problem || "")),
    table(["When", "Action", "Model", "Measurement", "Who", "Why"], auditRows),
  ];
}

async function drawFarm() {
  const d = await api("farm");
  const hosts = list(d.hosts).map((h) => el("tr", {},
    el("td", { class: "mono" }, h.id), el("td", {}, h.platform, el("br"), el("span", { class: "muted" }, h.status)),
    el("td", {}, h.online ? el("span", { class: "ok" }, "online") : el("span", { class: "bad" }, "offline")),
    el("td", {}, h.capacityProven ? "capacity bound into its evidence" : "capacity: the host's word only"),
    el("td", {}, `${h.running} jobs, ${h.cpu_used ?? 0} cores, ${Math.round((h.memory_used ?? 0) / 1048576)} MiB`)));
  const jobs = list(d.jobs).map((j) => {
    const r = j.receipt && j.receipt.fields;
    return el("tr", { "data-job": j.id },
      el("td", { class: "mono" }, j.id), el("td", {}, j.kind), el("td", {}, j.security),
      el("td", {}, j.state, el("br"), el("span", { class: "muted" }, (j.reasons || []).join("; "))),
      el("td", { class: "mono" }, j.host || ""),
      el("td", {}, r ? el("div", { class: "receipt" },
        `receipt: ${r.executor} (${r.isolation}), ${r.outcome}, fuel ${r.fuel}, ${r.wall_ms ?? r.wallMs} ms, ` +
        `output sha256 ${short(r.output_sha256 ?? r.outputSha256, 16)}`,
        el("br"), el("span", { class: j.receipt.signedByEvidence ? "ok" : "warn" },
          j.receipt.signedByEvidence ? "signed by the host's evidence" : "unsigned: the host's word only"))
        : el("span", { class: "muted" }, "no receipt yet")));
  });
  return [el("h2", {}, "Hosts"), table(["Host", "Platform", "", "Capacity", "Load"], hosts),
    el("h2", {}, "My jobs"), table(["Job", "Kind", "Security", "State", "Host", "Receipt"], jobs)];
}

async function drawFed() {
  const d = await api("fed");
  const orgs = d.organisations.map((o) => el("tr", {}, el("td", { class: "mono" }, o.id), el("td", {}, o.name)));
  const collabs = d.collaborations.map((c) => el("tr", {}, el("td", {}, c.name),
    el("td", {}, (c.organisations || []).map((o) => o.name || o.id).join(", ")),
    el("td", {}, c.encrypted ? "end-to-end encrypted" : "not encrypted")));
  const tasks = d.tasks.map((t) => el("tr", {}, el("td", { class: "mono" }, t.id), el("td", {}, t.name),
    el("td", {}, t.status),
    el("td", {}, (t.runs || []).map((r) => el("div", { class: r.status === "failed" ? "bad" : "" },
      `${(r.organisation && (r.organisation.name || r.organisation.id)) || "?"}: ${r.status}` +
      ((r.reasons || []).length ? " — " + r.reasons.join("; ") : ""))))));
  return [el("h2", {}, "My organisations"), table(["Id", "Name"], orgs),
    el("h2", {}, "Collaborations"), table(["Name", "Organisations", "Encryption"], collabs),
    el("h2", {}, "Tasks"), table(["Task", "Name", "Status", "Runs per organisation"], tasks)];
}

async function drawPools() {
  const d = await api("pools");
  const now = Date.now();
  const parts = [];
  for (const p of list(d && d.pools)) {
    const name = p.spec.name;
    const series = state.queue[name] || (state.queue[name] = []);
    series.push({ t: now, v: p.status.queued });
    while (series.length > 120) series.shift();
    const rows = p.status.instances.map((i) => el("tr", {},
      el("td", { class: "mono" }, i.id), el("td", {}, i.hot.length ? i.hot.join(", ") : "nothing"),
      el("td", {}, i.in_flight), el("td", {}, i.claimed_by || "")));
    parts.push(el("h2", {}, `Pool ${name}: ${p.status.instances.length} instance(s), ${p.status.queued} queued`),
      el("div", { class: "charts" }, line(`Queue depth of ${name}`, series)),
      table(["Instance", "Hot models", "In flight", "Claimed by"], rows));
  }
  return parts.length ? parts : [el("p", { class: "muted" }, "no pools: enclava pool create NAME --models … --select measurement=…")];
}

const draw = { enclaves: drawEnclaves, models: drawModels, farm: drawFarm, fed: drawFed, pools: drawPools };

// Redraws the open tab. Draws may overlap (an event arrives while one is loading): only the
// newest one started is shown, so an older answer never overwrites a newer one.
async function redraw() {
  const view = document.getElementById("view");
  const seq = (state.seq = (state.seq || 0) + 1);
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === state.tab);
  let parts;
  try {
    parts = await draw[state.tab]();
  } catch (e) {
    if (e.message === "signed out") return;
    parts = [el("p", { class: "error" }, "could not load: " + e.message)];
  }
  if (seq !== state.seq) return;
  // A live redraw keeps the filter box's focus and caret for whoever is typing in it.
  const typing = document.activeElement && document.activeElement.id === "filter" ? document.activeElement.selectionStart : null;
  view.replaceChildren(...parts);
  if (typing !== null) {
    const f = document.getElementById("filter");
    if (f) { f.focus(); f.setSelectionRange(typing, typing); }
  }
  view.dataset.drawn = String(Date.now()) + "-" + seq;
}

function showSignIn() {
  document.getElementById("signin").hidden = false;
  document.getElementById("view").hidden = true;
  document.getElementById("tabs").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
}

function showApp(who) {
  state.csrf = who.csrf;
  document.getElementById("signin").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("tabs").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = who.user + (who.admin ? " (operator)" : "");
  redraw();
  if (!state.events) {
    state.events = new EventSource("/ui/api/events");
    // On (re)connecting, redraw: changes made while disconnected sent no event.
    state.events.addEventListener("open", () => { document.getElementById("live").textContent = "live"; redraw(); });
    state.events.addEventListener("error", () => { document.getElementById("live").textContent = "reconnecting…"; });
    state.events.addEventListener("changed", () => {
      clearTimeout(state.timer);
      state.timer = setTimeout(redraw, 50);
    });
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => { state.tab = b.dataset.tab; state.after = [null]; redraw(); });
  }
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = document.getElementById("signin-error");
    err.textContent = "";
    const token = document.getElementById("token").value;
    const r = await fetch("/ui/api/session", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { err.textContent = "sign-in refused: " + (body.message || r.statusText); return; }
    document.getElementById("token").value = "";
    showApp(body);
  });
  document.getElementById("signout").addEventListener("click", async () => {
    const r = await fetch("/ui/api/session/end", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf }, body: "{}" });
    if (!r.ok) { alert("sign-out failed: " + r.statusText); return; }
    // A fresh page: nothing of this user's state (tabs, filters, samples) stays for the next.
    location.reload();
  });
  // The pools' queues are sampled every second while their tab is open; the other tabs are
  // also redrawn every 5 s, in case an event was lost while the stream reconnected.
  let ticks = 0;
  setInterval(() => {
    if (document.getElementById("view").hidden) return;
    ticks++;
    if (state.tab === "pools" || ticks % 5 === 0) redraw();
  }, 1000);
  try {
    const r = await fetch("/ui/api/session", { credentials: "same-origin" });
    if (r.ok) showApp(await r.json()); else showSignIn();
  } catch (e) {
    showSignIn();
  }
});
