// The eventhost console. Everything that came from the bus (names,
// reasons, payloads) is set with textContent, never as markup: a payload
// holding <script> or <img onerror=…> is shown, not run.
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function cell(row, text, cls) {
  const td = el("td", text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? value.toFixed(2) + " ms" : Math.round(value) + " ms";
}

function ago(seconds) {
  if (seconds < 1) return "just now";
  if (seconds < 120) return Math.round(seconds) + " s ago";
  if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

// A span of seconds: "250 ms", "30 s", "3 min", "2 h", "4 d".
function span(seconds) {
  if (seconds < 1) return Math.round(seconds * 1000) + " ms";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function token() {
  return $("#token").value.trim();
}

// Every call carries the token typed in: reading needs the read token
// (or the admin token), replay and purge the admin token.
function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  return fetch(path, Object.assign({ cache: "no-store" }, options || {}, { headers }));
}

// What to say when a read is refused: how to get in.
function refusedText(response, body) {
  const why = (body && body.error) || response.statusText;
  if (response.status === 401) return why + ": type it in the token field above";
  return why;
}

function size(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1 << 20) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / (1 << 20)).toFixed(1) + " MiB";
}

// ---- overview, every 2 s ----

async function refresh() {
  try {
    const response = await api("/api/status");
    const status = await response.json();
    if (!response.ok) throw new Error(refusedText(response, status));
    render(status);
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("#updated").className = "";
  } catch (err) {
    $("#updated").textContent = "cannot read the bus: " + err.message;
    $("#updated").className = "failed";
  }
}

function render(status) {
  const body = $("#subscribers tbody");
  body.replaceChildren();
  for (const sub of status.subscribers) {
    const row = el("tr", null, { "data-name": sub.name });
    if (sub.dlq_depth > 0) row.className = "bad";
    cell(row, sub.name, "name");
    cell(row, sub.plugin || "(not running)");
    const builds = [...new Set(sub.builds.map((b) => (b.build || "–").slice(0, 12)))];
    cell(row, builds.length ? builds.join(", ") : "–", "build");
    cell(row, sub.events.join(", ") || "–");
    cell(row, sub.handled_per_s.toFixed(1), "num rate");
    cell(row, ms(sub.p50_ms), "num p50");
    cell(row, ms(sub.p99_ms), "num p99");
    cell(row, sub.lag === null ? "?" : sub.lag, "num lag");
    cell(row, sub.pending, "num pending");
    const dlq = cell(row, "", "num dlq");
    const link = el("a", sub.dlq_depth, { href: "#dlq/" + encodeURIComponent(sub.name) });
    dlq.appendChild(link);
    // Order per key (order_by): parked keys need an operator.
    const order = sub.order;
    cell(row, order ? order.parked : "–", "num parked");
    if (order && order.parked > 0) row.classList.add("parked");
    cell(row, !order ? "–" : order.oldest_held_s === null ? "none"
      : span(order.oldest_held_s) + " (" + order.held + (order.held === 1 ? " key)" : " keys)"), "num held");
    // Retries waiting in Redis for their time.
    const sched = sub.schedule;
    cell(row, !sched.scheduled ? "0" : sched.scheduled + " (next " +
      (sched.next_due <= status.at ? "now" : "in " + span(sched.next_due - status.at)) + ")", "num scheduled");
    const last = sub.last_reload;
    cell(row, last ? last.outcome + " " + ago(status.at - last.at) + ": " + last.detail : "–", "reload");
    body.appendChild(row);
  }
  // Parked keys first: none of their events runs until someone acts.
  const parked = $("#parked");
  parked.replaceChildren();
  for (const sub of status.subscribers) {
    const order = sub.order;
    if (!order || !order.parked) continue;
    const keys = order.oldest_parked.map((k) =>
      k.key + (k.key_cut ? "…" : "") + " (" + span(k.age_s) + (k.dead_letter ? ", dead letter " + k.dead_letter : "") + ")");
    const more = order.parked - order.oldest_parked.length;
    if (more > 0) keys.push("and " + more + " more");
    const item = el("li", sub.name + ": " + order.parked +
      (order.parked === 1 ? " key parked by a dead letter" : " keys parked by dead letters") +
      " (order_by " + order.order_by + "), each waiting for a replay or a skip of its dead letter: " +
      keys.join(", ") + " ", { "data-name": sub.name });
    item.appendChild(el("a", "(dead letters)", { href: "#dlq/" + encodeURIComponent(sub.name) }));
    parked.appendChild(item);
  }
  parked.hidden = !parked.children.length;
  // The status reads a bounded part of the registry; say what it left out.
  const notRead = $("#not-read");
  notRead.hidden = !status.registry_not_read;
  notRead.textContent = status.registry_not_read
    ? status.registry_not_read + " more members of the LeanMQ registry not shown"
    : "";
  const f = status.fanout;
  $("#fanout").textContent =
    "fan-out " + f.stream + ": length " + f.length + ", lag " + (f.lag === null ? "?" : f.lag) +
    ", pending " + f.pending + ", " + f.handled_per_s.toFixed(1) + " routed/s; bus DLQ " +
    f.dlq_depth + (f.schedule.scheduled ? "; " + f.schedule.scheduled + " published for later" : "") + " ";
  const busLink = el("a", "(browse)", { href: "#dlq/all" });
  $("#fanout").appendChild(busLink);

  const hosts = $("#hosts");
  hosts.replaceChildren();
  for (const host of status.hosts) {
    const text = host.alive
      ? host.consumer + ": alive, seen " + ago(status.at - host.last_seen) +
        (host.listen ? ", http " + host.listen : "") + ", eventhost " + host.version
      : host.consumer + ": gone, last seen " + ago(status.at - host.last_seen);
    hosts.appendChild(el("li", text, { class: host.alive ? "ok" : "failed" }));
  }

  const reloads = $("#reloads");
  reloads.replaceChildren();
  const history = status.hosts
    .flatMap((h) => (h.reloads || []).map((r) => ({ ...r, consumer: h.consumer })))
    .sort((a, b) => b.at - a.at)
    .slice(0, 30);
  for (const r of history) {
    const item = el("li", new Date(r.at * 1000).toLocaleTimeString() + " " + r.consumer + ": " +
      r.what + " " + r.subject + " " + r.outcome + ": " + r.detail);
    item.className = r.outcome === "refused" ? "failed" : "";
    reloads.appendChild(item);
  }
  if (!history.length) reloads.appendChild(el("li", "no reload since the hosts started"));
}

// ---- the DLQ browser ----

let current = null;

function route() {
  const match = location.hash.match(/^#dlq\/(.+)$/);
  current = match ? decodeURIComponent(match[1]) : null;
  $("#dlq").hidden = current === null;
  $("#entry").hidden = true;
  if (current !== null) {
    $("#dlq-name").textContent = current === "all" ? "the bus (events:all:dlq)" : current;
    $("#message").textContent = "";
    loadLetters();
  }
}

function filters() {
  const form = new FormData($("#filters"));
  const chosen = {};
  for (const key of ["kind", "type", "since"]) {
    const value = (form.get(key) || "").trim();
    if (value) chosen[key] = value;
  }
  return chosen;
}

// Where the next page of the list starts; null: the first page.
let after = null;

async function loadLetters(from) {
  after = from || null;
  const chosen = filters();
  if (after) chosen.after = after;
  const query = new URLSearchParams(chosen);
  const response = await api("/api/dlq/" + encodeURIComponent(current) + "?" + query);
  const list = await response.json();
  const body = $("#letters tbody");
  body.replaceChildren();
  $("#more").hidden = true;
  if (!response.ok) {
    say(refusedText(response, list), "failed");
    return;
  }
  $("#dlq-depth").textContent = "(" + list.depth + " in " + list.dlq + ")";
  for (const letter of list.entries) {
    const row = el("tr", null, { class: "letter", "data-id": letter.id });
    const pick = el("td");
    pick.appendChild(el("input", null, { type: "checkbox", class: "pick", value: letter.id }));
    row.appendChild(pick);
    cell(row, letter.id, "id");
    cell(row, letter.dead_lettered_at);
    cell(row, letter.event_type || "–");
    cell(row, letter.kind || "–", "kind");
    cell(row, letter.reason || "", "reason");
    // The preview is cut (preview_cut): the whole payload is one click away.
    cell(row, size(letter.bytes), "num size").title = letter.preview + (letter.preview_cut ? " …" : "");
    row.addEventListener("click", (event) => {
      if (event.target.classList.contains("pick")) return;
      showEntry(letter.id);
    });
    body.appendChild(row);
  }
  if (!list.entries.length) {
    const row = el("tr");
    cell(row, "no dead letters").colSpan = 7;
    body.appendChild(row);
  }
  if (list.next) {
    $("#more").hidden = false;
    $("#more").onclick = () => loadLetters(list.next);
  }
}

async function showEntry(id) {
  const response = await api("/api/dlq/" + encodeURIComponent(current) + "/entry/" + encodeURIComponent(id));
  const letter = await response.json();
  if (!response.ok) {
    say(refusedText(response, letter), "failed");
    return;
  }
  for (const row of document.querySelectorAll("#letters tr.letter")) {
    row.classList.toggle("chosen", row.getAttribute("data-id") === id);
  }
  $("#entry-id").textContent = letter.id + " (event " + (letter.event_id || "–") + ")";
  const failures = $("#failures");
  failures.replaceChildren();
  for (const f of letter.failures) {
    failures.appendChild(el("li", (f.at || "–") + " " + (f.kind || "–") + ", attempt " +
      (f.attempt === null ? "–" : f.attempt) + ": " + f.reason));
  }
  $("#payload").textContent = JSON.stringify(letter.data, null, 2);
  $("#entry").hidden = false;
}

function say(text, cls) {
  $("#message").textContent = text;
  $("#message").className = cls || "";
}

function selected() {
  return [...document.querySelectorAll("#letters input.pick:checked")].map((box) => box.value);
}

async function act(verb, choice) {
  const response = await api("/api/dlq/" + encodeURIComponent(current) + "/" + verb, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(choice),
  });
  const answer = await response.json();
  if (!response.ok) {
    say(answer.error || response.statusText, "refused");
  } else if (verb === "replay") {
    say("replayed " + answer.replayed + (answer.missing.length ? "; already gone: " + answer.missing.join(", ") : ""), "ok");
  } else {
    say("purged " + answer.purged, "ok");
  }
  await loadLetters(after);
  $("#entry").hidden = true;
}

function setup() {
  $("#token").value = sessionStorage.getItem("eventhost-token") || "";
  $("#token").addEventListener("input", () => sessionStorage.setItem("eventhost-token", token()));
  $("#token").addEventListener("change", () => {
    refresh();
    if (current !== null) loadLetters();
  });
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadLetters();
  });
  $("#select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#letters input.pick")) box.checked = event.target.checked;
  });
  $("#replay-selected").addEventListener("click", () => {
    const ids = selected();
    if (!ids.length) return say("select entries first", "refused");
    act("replay", { ids });
  });
  $("#replay-all").addEventListener("click", () => act("replay", { all: true, ...filters() }));
  $("#purge-selected").addEventListener("click", () => {
    const ids = selected();
    if (!ids.length) return say("select entries first", "refused");
    if (confirm("Delete " + ids.length + " dead letters for good?")) act("purge", { ids });
  });
  $("#purge-all").addEventListener("click", () => {
    if (confirm("Delete every dead letter matching the filters, for good?")) act("purge", { all: true, ...filters() });
  });
  window.addEventListener("hashchange", route);
  route();
  refresh();
  setInterval(refresh, 2000);
}

document.addEventListener("DOMContentLoaded", setup);
