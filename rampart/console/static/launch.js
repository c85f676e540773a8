// Rampart local console: exchange the one-time launch secret (in the URL fragment, never sent
// to a server by the browser) for this console's HttpOnly, SameSite=Strict session cookie.
// No inline script anywhere (CSP script-src 'self').
(function () {
  "use strict";
  var status = document.getElementById("launch-status");
  var match = /^#launch=([A-Za-z0-9_-]{20,100})$/.exec(window.location.hash);
  history.replaceState(null, "", window.location.pathname);
  if (!match) {
    if (status) { status.textContent = "Open the address `rampart console` printed (it ends with #launch=…)."; }
    return;
  }
  fetch("/launch", {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: {"Content-Type": "application/x-www-form-urlencoded"},
    body: "launch=" + encodeURIComponent(match[1])
  }).then(function (resp) {
    if (resp.status === 204) {
      window.location.replace("/");
    } else if (status) {
      status.textContent = "Refused: this launch address was used already. Run `rampart console` again.";
    }
  });
})();
