// vspc-web console page: xterm.js (DOM renderer, screen-reader mode) on the
// console's WebSocket (docs/vspc-web.md "The console page").  Binary frames are
// console bytes both ways; text frames are JSON status and requests.
"use strict";
(function () {
  // xterm.js's DOM renderer writes its CSS into <style> elements, which a CSP
  // without 'unsafe-inline' styles blocks.  Hand it an inert element whose text goes
  // into a constructed stylesheet (document.adoptedStyleSheets) instead, which the
  // policy allows.
  const createElement = document.createElement.bind(document);
  document.createElement = function (tag, options) {
    if (String(tag).toLowerCase() !== "style" || !("adoptedStyleSheets" in document)) {
      return createElement(tag, options);
    }
    const element = createElement("template");
    const sheet = new CSSStyleSheet();
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    Object.defineProperty(element, "textContent", {
      get() { return ""; },
      set(text) { sheet.replaceSync(String(text)); },
    });
    return element;
  };

  const body = document.body;
  const csrf = body.dataset.csrf;
  const path = body.dataset.path; // the console name, URL-encoded by the server
  const state = document.getElementById("state");
  const actions = document.getElementById("actions");
  const clients = document.getElementById("clients");
  const alertSection = document.getElementById("alert-section");
  const alertList = document.getElementById("alerts");
  const SEVERITIES = new Set(["info", "warning", "critical"]);
  const term = new Terminal({ screenReaderMode: true, scrollback: 10000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());

  let ws = null;
  let info = { level: "watch", readonly: true, capabilities: [] };
  const encoder = new TextEncoder();

  function button(label, handler) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", handler);
    actions.appendChild(b);
  }

  function mode(lock) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "mode", lock }));
  }

  async function post(action, fields) {
    const reply = await fetch(`/api/console/${path}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(fields || {}),
      credentials: "same-origin",
    });
    const data = await reply.json();
    state.textContent = data.ok ? `${action}: done` : `${action}: ${data.error}`;
    refresh();
  }

  function drawActions() {
    actions.replaceChildren();
    const rank = { none: 0, watch: 1, write: 2, control: 3 }[info.level] || 0;
    if (rank >= 2) {
      if (info.readonly) button("Take write", () => mode("free_for_all"));
      button("Lock (write)", () => mode("write"));
    }
    if (rank >= 3) button("Lock (exclusive)", () => mode("exclusive"));
    if (!info.readonly) button("Release (read-only)", () => mode("readonly"));
    if (rank >= 3) {
      button("Clear", () => { if (confirm("Disconnect every client of this console?")) post("clear"); });
      if (info.capabilities.includes("break")) button("Send break", () => post("break"));
    }
  }

  function drawClients(list) {
    const frag = document.createDocumentFragment();
    const rank = { none: 0, watch: 1, write: 2, control: 3 }[info.level] || 0;
    for (const c of list) {
      const li = document.createElement("li");
      li.textContent = `#${c.id} ${c.user || c.peer} (${c.kind}, ${c.mode}${c.readonly ? ", read-only" : ""})` +
        (c.id === info.client ? " — you" : "");
      if (rank >= 3 && c.id !== info.client) {
        const kick = document.createElement("button");
        kick.type = "button";
        kick.textContent = "kick";
        kick.addEventListener("click", () => post("kick", { client: c.id }));
        li.appendChild(kick);
      }
      frag.appendChild(li);
    }
    clients.replaceChildren(frag);
  }

  // The console's newest alerts (docs/operations.md "Console alerts"), newest first.
  // The line and its context are what the VM printed: text nodes only.
  function drawAlerts(list) {
    const frag = document.createDocumentFragment();
    for (const a of list) {
      const li = document.createElement("li");
      const stamp = document.createElement("time");
      if (typeof a.time === "number") {
        const date = new Date(a.time * 1000);
        stamp.dateTime = date.toISOString();
        stamp.textContent = date.toLocaleString();
      }
      const badge = document.createElement("span");
      badge.className = "badge" + (SEVERITIES.has(a.severity) ? ` ${a.severity}` : "");
      badge.textContent = `${a.rule} (${a.severity})`;
      const text = document.createElement("pre");
      for (const line of a.context || []) {
        const span = document.createElement("span");
        span.className = "context";
        span.textContent = line + "\n";
        text.appendChild(span);
      }
      const hit = document.createElement("strong");
      hit.textContent = a.line || "";
      text.appendChild(hit);
      li.append(stamp, " ", badge, text);
      frag.appendChild(li);
    }
    alertList.replaceChildren(frag);
    alertSection.classList.toggle("hidden", list.length === 0);
  }

  async function refresh() {
    const reply = await fetch(`/api/console/${path}`, { credentials: "same-origin" });
    if (!reply.ok) return;
    const data = await reply.json();
    if (!data.ok) return;
    info.level = data.console.level;
    info.capabilities = data.capabilities;
    drawClients(data.console.attached || []);
    drawAlerts(data.alerts || []);
    drawActions();
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws/console/${path}?csrf=${encodeURIComponent(csrf)}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (msg) => {
      if (typeof msg.data !== "string") {
        term.write(new Uint8Array(msg.data));
        return;
      }
      const status = JSON.parse(msg.data);
      if (status.type === "grant") {
        info.readonly = status.readonly;
        info.client = status.client;
        state.textContent = status.readonly ? "read-only (take write to type)" : `typing (${status.mode})`;
        refresh();
      } else if (status.type === "error") {
        state.textContent = status.message;
      } else if (status.type === "closed") {
        state.textContent = `session ended: ${status.reason}`;
      }
    };
    ws.onclose = (event) => {
      state.textContent = `disconnected (${event.reason || event.code})`;
    };
  }

  term.onData((data) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });
  term.onBinary((data) => {
    const bytes = Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff);
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
  });
  connect();
  setInterval(refresh, 5000);
})();
