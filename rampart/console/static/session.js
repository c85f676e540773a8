// Rampart local console: the terminal of a remote session (xterm.js), bridged to this console
// over a same-origin WebSocket. No inline script (CSP script-src 'self').
//
// - xterm.js sizes its cells with <style> elements it creates; this page's CSP allows them only
//   with the page's nonce, which is set on each such element here.
// - Device output arrives already filtered by the console (TerminalFilter, queries dropped).
//   As a second layer, the sequences a terminal answers (device attributes, status and cursor
//   reports, mode and window reports, colour queries, DECRQSS) and OSC 52 are swallowed here
//   too: xterm.js would otherwise answer by emitting input, typed into the device's shell.
// - The attach token is read from the page once, sent as the socket's first message (never in
//   a URL) and removed from the DOM.
(function () {
  "use strict";
  var box = document.getElementById("terminal");
  var state = document.getElementById("shell-state");
  var endLine = document.getElementById("shell-end");
  var closeButton = document.getElementById("shell-close");
  if (!box || typeof window.Terminal !== "function") { return; }
  var nonceMeta = document.querySelector('meta[name="rampart-style-nonce"]');
  var nonce = nonceMeta ? nonceMeta.getAttribute("content") : "";
  var create = document.createElement;
  document.createElement = function (name, options) {
    var el = create.call(document, name, options);
    if (nonce && String(name).toLowerCase() === "style") { el.nonce = nonce; }
    return el;
  };

  var term = new window.Terminal({
    cols: parseInt(box.getAttribute("data-cols"), 10) || 120,
    rows: parseInt(box.getAttribute("data-rows"), 10) || 32,
    scrollback: 5000, fontSize: 14, cursorBlink: true,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace"
  });
  var swallow = function () { return true; };
  [{final: "c"}, {prefix: ">", final: "c"}, {prefix: "=", final: "c"}, {final: "n"},
   {prefix: "?", final: "n"}, {final: "x"}, {final: "t"}, {intermediates: "$", final: "p"},
   {prefix: "?", intermediates: "$", final: "p"}].forEach(function (id) {
    term.parser.registerCsiHandler(id, swallow);
  });
  [4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 19, 52, 104, 105, 110, 111, 112].forEach(function (n) {
    term.parser.registerOscHandler(n, swallow);
  });
  term.parser.registerDcsHandler({intermediates: "$", final: "q"}, swallow);
  term.parser.registerDcsHandler({intermediates: "+", final: "q"}, swallow);
  term.open(box);

  var token = box.getAttribute("data-token");
  box.removeAttribute("data-token");
  var session = box.getAttribute("data-session");
  var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                         "/shells/" + encodeURIComponent(session) + "/ws");
  ws.binaryType = "arraybuffer";
  var open = false;
  var ended = false;

  function show(text) { state.textContent = text; }
  function finish(end) {
    ended = true;
    open = false;
    var text = "session ended: " + String(end.reason);
    if (end.status !== null && end.status !== undefined) { text += " (exit status " + String(end.status) + ")"; }
    if (end.detail) { text += " " + String(end.detail); }
    show(text);
    endLine.textContent = text;
    endLine.setAttribute("data-reason", String(end.reason));
    endLine.setAttribute("data-status", end.status === null || end.status === undefined ? "" : String(end.status));
    endLine.hidden = false;
    if (closeButton) { closeButton.disabled = true; }
  }

  ws.onopen = function () {
    ws.send(JSON.stringify({token: token}));
    token = null;
    open = true;
    show("open (end to end; recorded by the device)");
    term.focus();
  };
  ws.onmessage = function (event) {
    if (typeof event.data !== "string") { term.write(new Uint8Array(event.data)); return; }
    var msg = JSON.parse(event.data);
    if (msg.end) { finish(msg.end); }
    else if (msg.error) { open = false; show(String(msg.error)); }
    else if (msg.notice) { show("device: " + String(msg.notice)); }
  };
  ws.onclose = function () {
    open = false;
    if (!ended) { show("connection to this console closed"); }
  };
  term.onData(function (data) { if (open) { ws.send(JSON.stringify({d: data})); } });
  term.onResize(function (size) { if (open) { ws.send(JSON.stringify({r: [size.cols, size.rows]})); } });
  if (closeButton) {
    closeButton.addEventListener("click", function () { if (open) { ws.send(JSON.stringify({close: true})); } });
  }
})();
