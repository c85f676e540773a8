// Rampart console: the only script besides htmx. No inline script anywhere (CSP script-src 'self').
// Sends the page's CSRF token with every htmx request (forms also carry it as a hidden field).
(function () {
  "use strict";
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) {
      event.detail.headers["X-CSRF-Token"] = meta.getAttribute("content");
    }
  });
})();
