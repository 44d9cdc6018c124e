// vspc-web console list: a snapshot, then coalesced changes over a WebSocket
// (docs/vspc-web.md "The console list").  Names and alert rules are set with
// textContent only.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf;
  const tbody = document.querySelector("#consoles tbody");
  const filter = document.getElementById("filter");
  const count = document.getElementById("count");
  const status = document.getElementById("status");
  const rows = new Map();
  let timer = null;

  function when(t) {
    return t ? new Date(t * 1000).toLocaleString() : "";
  }

  const SEVERITIES = new Set(["info", "warning", "critical"]);

  // The newest alert's badge: the rule's name, coloured by its severity (a class only
  // from the known set: both strings come from the daemon's configuration).
  function badge(alert) {
    const span = document.createElement("span");
    if (!alert) return span;
    span.className = "badge" + (SEVERITIES.has(alert.severity) ? ` ${alert.severity}` : "");
    span.textContent = `${alert.rule} (${alert.severity})`;
    span.title = alert.time ? `${alert.severity} alert at ${when(alert.time)}` : alert.severity;
    return span;
  }

  function render() {
    timer = null;
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const sorted = Array.from(rows.values()).sort((a, b) => a.name.localeCompare(b.name));
    const frag = document.createDocumentFragment();
    let shown = 0;
    for (const row of sorted) {
      const alert = row.alert ? `alert ${row.alert.rule} ${row.alert.severity}` : "";
      const text = `${row.name} ${row.connected ? "connected" : "disconnected"} ${row.lock || ""} ${alert}`.toLowerCase();
      if (!words.every((w) => text.includes(w))) continue;
      shown += 1;
      if (shown > 2000) continue; // the count says how many more match
      const tr = document.createElement("tr");
      if (!row.connected) tr.className = "disconnected";
      const link = document.createElement("a");
      link.href = "/console/" + encodeURIComponent(row.name);
      link.textContent = row.name;
      const cells = [link, row.connected ? "connected" : "disconnected", String(row.clients),
        row.lock || "", when(row.last), badge(row.alert)];
      for (const value of cells) {
        const td = document.createElement("td");
        if (typeof value === "string") td.textContent = value; else td.appendChild(value);
        tr.appendChild(td);
      }
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
    count.textContent = `${shown} of ${rows.size} console(s)` + (shown > 2000 ? ", first 2000 shown" : "");
  }

  function later() {
    if (timer === null) timer = setTimeout(render, 100);
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/ws/list?csrf=${encodeURIComponent(csrf)}`);
    ws.onopen = () => { status.textContent = "live"; };
    ws.onmessage = (msg) => {
      const update = JSON.parse(msg.data);
      if (update.full) rows.clear();
      for (const row of update.rows) rows.set(row.key, row);
      for (const key of update.gone) rows.delete(key);
      later();
    };
    ws.onclose = () => {
      status.textContent = "disconnected; retrying…";
      setTimeout(connect, 2000);
    };
  }

  filter.addEventListener("input", later);
  connect();
})();
