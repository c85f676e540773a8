// Rampart console: plays one session recording with the vendored asciinema-player.
// No inline script (CSP script-src 'self'): the page names the recording in data attributes.
// The player draws the device's bytes in its own virtual terminal (text in spans, never markup).
(function () {
  "use strict";
  function start() {
    var el = document.getElementById("player");
    if (!el || !window.AsciinemaPlayer) {
      return;
    }
    var src = el.getAttribute("data-src") || "";
    if (src.indexOf("/console/t/") !== 0) {
      return; // this origin's console only
    }
    var cols = parseInt(el.getAttribute("data-cols") || "", 10);
    var rows = parseInt(el.getAttribute("data-rows") || "", 10);
    var opts = { fit: "width", idleTimeLimit: 2, preload: true, controls: true };
    if (cols > 0 && rows > 0) {
      opts.cols = cols;
      opts.rows = rows;
    }
    window.AsciinemaPlayer.create(src, el, opts);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
