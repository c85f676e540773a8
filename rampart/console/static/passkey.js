// Rampart local console: passkeys (WebAuthn). Registration asks the authenticator for a new
// credential with the challenge this console made; approval asks it to sign the challenge this
// console computed from the grant it showed (base64url SHA-256 of the DSSE PAE). This script
// only carries values between the page, the authenticator and the form: the console checks
// everything again before anything is kept or sent. No inline script (CSP script-src 'self').
(function () {
  "use strict";
  function fromB64url(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }
  function toB64(buf) {
    var bytes = new Uint8Array(buf), bin = "";
    for (var i = 0; i < bytes.length; i++) { bin += String.fromCharCode(bytes[i]); }
    return btoa(bin);
  }
  function toB64url(buf) {
    return toB64(buf).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function say(text) {
    var status = document.getElementById("passkey-status");
    if (status) { status.textContent = text; }
  }
  function set(form, name, value) { form.elements[name].value = value; }

  var reg = document.getElementById("passkey-register");
  var create = document.getElementById("passkey-create");
  if (reg && create) {
    create.addEventListener("click", function () {
      if (!document.getElementById("passkey-name").value) { say("Name the passkey first."); return; }
      say("Touch or unlock your authenticator…");
      navigator.credentials.create({publicKey: {
        challenge: fromB64url(reg.dataset.challenge),
        rp: {id: "localhost", name: "Rampart local console"},
        user: {id: fromB64url(reg.dataset.userId), name: reg.dataset.userName, displayName: reg.dataset.userName},
        pubKeyCredParams: [{type: "public-key", alg: -7}, {type: "public-key", alg: -8}],
        authenticatorSelection: {userVerification: "required", residentKey: "preferred"},
        attestation: "none", timeout: 120000
      }}).then(function (cred) {
        set(reg, "credential_id", toB64url(cred.rawId));
        set(reg, "spki", toB64(cred.response.getPublicKey()));
        set(reg, "alg", String(cred.response.getPublicKeyAlgorithm()));
        set(reg, "client_data", toB64(cred.response.clientDataJSON));
        reg.submit();
      }).catch(function (err) { say("No passkey was made: " + err.name); });
    });
  }

  // Sign with a passkey: a form whose data-challenge the console computed from the object shown.
  function bindGet(formId, buttonId) {
    var form = document.getElementById(formId);
    var button = document.getElementById(buttonId);
    if (!form || !button) { return; }
    button.addEventListener("click", function () {
      say("Touch or unlock your authenticator…");
      navigator.credentials.get({publicKey: {
        challenge: fromB64url(form.dataset.challenge),
        rpId: form.dataset.rpId,
        allowCredentials: [{type: "public-key", id: fromB64url(form.dataset.credentialId)}],
        userVerification: "required", timeout: 120000
      }}).then(function (a) {
        set(form, "authenticator_data", toB64(a.response.authenticatorData));
        set(form, "client_data", toB64(a.response.clientDataJSON));
        set(form, "signature", toB64(a.response.signature));
        form.submit();
      }).catch(function (err) { say("Nothing was signed: " + err.name); });
    });
  }
  bindGet("passkey-approve", "approve-passkey");
  bindGet("passkey-sign-job", "sign-job-passkey");
})();
