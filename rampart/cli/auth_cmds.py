"""Login (with TOTP enrolment), accounts and operator keys.

Security invariants:

* The server certificate is pinned before any secret is sent: from
  ``--fingerprint`` / RAMPART_SERVER_FINGERPRINT, from an earlier login to the
  same server, or confirmed by a person on a terminal. Without any of these the
  login is refused: there is no silent trust on first use.
* Passwords, TOTP codes, bootstrap and activation tokens and key passphrases are
  read from the environment or a no-echo prompt, never from flags.
* A private key is generated locally, written only encrypted (0600, in a 0700
  directory), and only its public half goes to the server. A key the server
  refuses to register is deleted again, so local and server state agree.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import typer

from rampart import tlspin, trust
from rampart.trust import OperatorKey, key_fingerprint

from . import prompts
from .client import Client, expect_dict, expect_list, fetch_server_certificate, field, split_server
from .common import api, config, new_key_passphrase, resolve_tenant, tenant_label, tenant_names
from .config import Config, Session
from .errors import NetworkProblem, NotLoggedIn, Refused, ServerProblem, UsageProblem
from .output import OutputOpt, fmt_time, note, print_json, say, say_lines, table, wants_json

ROLES = ("owner", "approver", "technician", "viewer", "customer-viewer")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

# --- reusable flows (also used by `rampart up`) ------------------------------------------------


def pin_server(url: str, fingerprint: str | None, cfg: Config) -> tuple[str, bytes]:
    """Fetch the server certificate and accept it only if it matches a pin.

    The pin is ``fingerprint`` (flag or env), else the certificate pinned by an
    earlier login to the same server, else a person confirms it on a terminal.
    """
    _, _, server = split_server(url)
    der = fetch_server_certificate(server)
    got = tlspin.fingerprint(der)
    if fingerprint:
        try:
            want = tlspin.normalise_fingerprint(fingerprint)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        if got != want:
            raise Refused(f"{server} presents certificate SHA-256 {got}, not the expected {want}: "
                          "refusing to log in")
        return server, der
    prev = cfg.load_session()
    pinned = cfg.load_cert()
    if prev is not None and pinned is not None and prev.server == server:
        if tlspin.fingerprint(pinned) != got:
            raise Refused(f"{server} now presents certificate SHA-256 {got}, which differs from "
                          "the one pinned at your last login: pass --fingerprint if it really "
                          "changed")
        return server, der
    if not prompts.stdin_is_tty():
        raise UsageProblem(f"{server} presents certificate SHA-256 {got}: pass --fingerprint or "
                           "set RAMPART_SERVER_FINGERPRINT to pin it (no terminal to confirm)")
    say(f"The server {server} presents a certificate with SHA-256")
    say(f"  {got}")
    say("Compare it with the one `rampart server init` printed.")
    if not prompts.confirm("Trust this certificate?"):
        raise Refused("certificate not trusted: login cancelled")
    return server, der


def session_from(doc: Any, server: str, cert_der: bytes, username: str) -> Session:
    d = expect_dict(doc, "session")
    token = field(d, "token", str, "session")
    return Session(server=server, cert_sha256=tlspin.fingerprint(cert_der),
                   username=str(d.get("username") or username), token=token)


def password_login(client: Client, username: str, password: str, code: str) -> Any:
    return client.post("/auth/login", {"username": username, "password": password, "totp": code})


def print_totp_enrolment(uri: str) -> None:
    """Show the otpauth URI and a terminal QR code for an authenticator app."""
    import qrcode  # type: ignore[import-untyped]

    qr = qrcode.QRCode(border=1)
    qr.add_data(uri)
    qr.make(fit=True)
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    say("Enrol TOTP in your authenticator app (scan the code or enter the URI):")
    say_lines(buf.getvalue().rstrip("\n"))
    say(f"otpauth URI: {uri}")


#: Codes a person may type for one enrolment in one run (the server paces and counts each).
ENROLMENT_CODE_TRIES = 3


def confirm_enrolment(client: Client, enrol_token: str, what: str) -> Any:
    """Confirm TOTP enrolment with a first code; the session document.

    A wrong code does not spend the bootstrap or activation token: on a
    terminal the code is asked again (same QR code); otherwise the error says
    to run the same command again, which enrols a fresh secret.
    """
    retry = (f"the {what} token is still valid until it expires: run the same command again "
             "and enrol the new QR code (delete the earlier entry from your authenticator)")
    for attempt in range(1, ENROLMENT_CODE_TRIES + 1):
        try:
            code = prompts.totp_code()
            return client.post("/auth/totp/confirm", {"enrolment_token": enrol_token,
                                                       "code": code})
        except UsageProblem as exc:
            raise UsageProblem(f"{exc.message}; {retry}") from None
        except ServerProblem as exc:
            if exc.status != 401:
                raise ServerProblem(f"{exc.message}; {retry}", exc.status) from None
            if attempt == ENROLMENT_CODE_TRIES or not prompts.stdin_is_tty():
                raise ServerProblem(f"the TOTP code was not accepted (HTTP 401); {retry}",
                                    401) from None
            note("that code was not accepted: check the clock of your phone and try the next one")
    raise AssertionError("unreachable")


def enrolment(doc: Any) -> tuple[str, str]:
    d = expect_dict(doc, "enrolment")
    return field(d, "enrolment_token", str, "enrolment"), field(d, "otpauth_uri", str, "enrolment")


def register_key(cfg: Config, client: Client, session: Session, key: OperatorKey, passphrase: str,
                 *, name: str, tenant_id: str | None) -> dict[str, Any]:
    """Store ``key`` encrypted, then register its public half; undo the file if that fails."""
    sealed = trust.encrypt_private_key(key, passphrase)
    info = cfg.save_key(key.key_id, sealed, name=name, tenant=tenant_id, username=session.username,
                        public=key.public.to_b64())
    try:
        doc = expect_dict(client.post("/keys", {"public": key.public.to_text(), "tenant": tenant_id,
                                                 "name": name}), "key registration")
    except BaseException:
        cfg.delete_key(key.key_id)
        raise
    if doc.get("keyid") not in (None, key.key_id):
        cfg.delete_key(key.key_id)
        raise ServerProblem("the server registered a different key id than the one sent")
    out = info.to_json()
    out["registered"] = True
    out["fingerprint"] = key_fingerprint(key.public.raw)
    return out


# --- typer commands ---------------------------------------------------------------------------

account_app = typer.Typer(help="Operator accounts (owners only).", no_args_is_help=True)
key_app = typer.Typer(help="Operator signing keys.", no_args_is_help=True)


def login(
    server: Annotated[str, typer.Option("--server", help="https://HOST[:PORT]")],
    user: Annotated[str, typer.Option("--user", help="Account name.")],
    fingerprint: Annotated[str | None, typer.Option(
        "--fingerprint", envvar=prompts.ENV_SERVER_FINGERPRINT, show_envvar=True,
        help="Expected SHA-256 of the server certificate.")] = None,
    bootstrap: Annotated[bool, typer.Option(
        "--bootstrap", help="Create the first owner with the one-time bootstrap token.")] = False,
    activate: Annotated[bool, typer.Option(
        "--activate", help="Set the password of a new account with its activation token.")] = False,
) -> None:
    """Pin the server certificate and log in (password + TOTP); save the session (0600).

    Secrets come from RAMPART_PASSWORD, RAMPART_TOTP, RAMPART_BOOTSTRAP_TOKEN and
    RAMPART_ACTIVATION_TOKEN, or are prompted without echo.
    """
    if bootstrap and activate:
        raise UsageProblem("--bootstrap and --activate cannot be combined")
    cfg = config()
    url, der = pin_server(server, fingerprint, cfg)
    with Client(url, der) as client:
        if bootstrap or activate:
            if bootstrap:
                token = prompts.secret(prompts.ENV_BOOTSTRAP_TOKEN, "Bootstrap token: ",
                                       "bootstrap token")
                pw = prompts.password(confirm=True)
                doc = client.post("/auth/bootstrap", {"token": token, "username": user,
                                                       "password": pw})
            else:
                token = prompts.secret(prompts.ENV_ACTIVATION_TOKEN, "Activation token: ",
                                       "activation token")
                pw = prompts.password(confirm=True)
                doc = client.post("/auth/activate", {"username": user, "activation_token": token,
                                                      "password": pw})
            enrol_token, uri = enrolment(doc)
            print_totp_enrolment(uri)
            sdoc = confirm_enrolment(client, enrol_token, "bootstrap" if bootstrap else "activation")
        else:
            pw = prompts.password()
            code = prompts.totp_code()
            sdoc = password_login(client, user, pw, code)
    session = session_from(sdoc, url, der, user)
    cfg.save_session(session, der)
    role = expect_dict(sdoc, "session").get("role")
    say(f"logged in to {url} as {session.username}" + (f" ({role})" if role else ""))
    say(f"session saved in {cfg.session_path}")


def logout() -> None:
    """End the session on the server and forget its token locally."""
    cfg = config()
    try:
        _, client, _ = api(cfg)
    except NotLoggedIn:
        say("not logged in")
        return
    with client:
        try:
            client.post("/auth/logout")
        except (NotLoggedIn, ServerProblem):
            pass
    cfg.clear_token()
    say("logged out")


def whoami(json_out: JsonOpt = False) -> None:
    """Show the account of the current session."""
    cfg, client, session = api()
    with client:
        me = expect_dict(client.get("/me"), "me")
    me = {**me, "server": session.server, "cert_sha256": session.cert_sha256}
    if json_out:
        print_json(me)
        return
    tenants = me.get("tenants")
    say(f"{me.get('username')} ({me.get('role')}) on {session.server}")
    say("tenants: " + ("all (MSP staff)" if tenants is None else ", ".join(map(str, tenants))))


@account_app.command("create")
def account_create(
    name: Annotated[str, typer.Argument(help="Account name.")],
    role: Annotated[str, typer.Option(
        "--role", help="owner, approver, technician, viewer or customer-viewer.")],
    tenant: Annotated[list[str] | None, typer.Option(
        "--tenant", help="Limit to this tenant (name or id; repeatable). Default: all tenants.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an account; prints its one-time activation token and the login command."""
    if role not in ROLES:
        raise UsageProblem(f"--role must be one of {', '.join(ROLES)}")
    cfg, client, session = api()
    with client:
        tenants = [resolve_tenant(client, t)["id"] for t in tenant] if tenant else None
        doc = expect_dict(client.post("/accounts", {"username": name, "role": role,
                                                    "tenants": tenants}), "account")
    token = field(doc, "activation_token", str, "account")
    command = (f"rampart login --server {session.server} --user {name} "
               f"--fingerprint {session.cert_sha256} --activate")
    if json_out:
        print_json({**doc, "login_command": command})
        return
    say(f"account {name} created ({role})")
    say(f"one-time activation token (give it to {name} privately): {token}")
    say("they log in for the first time with (the token is asked for, or "
        "RAMPART_ACTIVATION_TOKEN):")
    say(f"  {command}")


@account_app.command("reissue")
def account_reissue(
    name: Annotated[str, typer.Argument(help="Account name.")],
    json_out: JsonOpt = False,
) -> None:
    """Re-enrol an account (lost phone, failed first login): a new one-time activation token.

    Asks for a fresh TOTP code of yours (step-up; RAMPART_TOTP or a prompt).
    The account's password and TOTP secret stop working and every session of
    it ends; its holder logs in again with `rampart login --activate`.
    """
    cfg, client, session = api()
    with client:
        doc = expect_dict(client.post(f"/accounts/{name}/reissue"), "account reissue")
    token = field(doc, "activation_token", str, "account reissue")
    command = (f"rampart login --server {session.server} --user {name} "
               f"--fingerprint {session.cert_sha256} --activate")
    if json_out:
        print_json({**doc, "login_command": command})
        return
    say(f"activation of {name} re-issued: old password and TOTP no longer work; "
        f"{doc.get('sessions_ended', 0)} session(s) ended")
    say(f"one-time activation token (give it to {name} privately): {token}")
    if isinstance(doc.get("activation_expires_at"), (int, float)):
        say(f"valid until {fmt_time(doc['activation_expires_at'])}")
    say("they enrol a new authenticator at their next login (the token is asked for, or "
        "RAMPART_ACTIVATION_TOKEN):")
    say(f"  {command}")


@account_app.command("list")
def account_list(json_out: JsonOpt = False, output: OutputOpt = None) -> None:
    """List accounts (owners only): role, tenants by name, status, last login.

    Status is one of pending (not activated yet), active, locked (too many failed
    logins), disabled (dormant or disabled) and revoked (`rampart account revoke`).
    """
    _, client, _ = api()
    with client:
        docs = expect_list(client.get("/accounts"), "accounts")
        names = tenant_names(client) if not wants_json(json_out, output) else {}
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["username", "role", "tenants", "status", "last login"],
          ([d.get("username"), d.get("role"),
            "all" if d.get("tenants") is None
            else ", ".join(tenant_label(names, t) for t in d.get("tenants") or []),
            account_status(d), fmt_time(d.get("last_login"))]
           for d in docs if isinstance(d, dict)), title="Accounts")


def account_status(doc: dict[str, Any]) -> str:
    """pending, active, locked, disabled or revoked, from the server's ``status`` (never ``active``,
    which is only "not disabled") and ``disabled_reason``."""
    status = str(doc.get("status") or "unknown")
    if status == "disabled" and doc.get("disabled_reason") == "revoked":
        return "revoked"
    return status


@key_app.command("new")
def key_new(
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="The tenant this key is for (name or id); keys are per tenant.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Name shown in tenant roots (default: the account name).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate an operator key for one tenant, encrypt it, register its public key.

    Keys are per tenant (M5): the server refuses a key in two tenants' roots.
    The passphrase comes from RAMPART_KEY_PASSPHRASE or is prompted; when you
    already have keys, it must be the passphrase that opens them.
    """
    if tenant is None:
        raise UsageProblem("operator keys are per tenant: give --tenant TENANT")
    cfg, client, session = api()
    with client:
        found = resolve_tenant(client, tenant)
        tenant_id = found["id"]
        out = make_tenant_key(cfg, client, session, str(tenant_id), name=name or session.username)
    if json_out:
        print_json(out)
        return
    say(f"key {out['keyid']} created for {session.username} "
        f"(tenant {tenant_label({str(tenant_id): str(found.get('name'))}, tenant_id)})")
    say(f"encrypted key file: {out['file']}")
    say(f"fingerprint: {out['fingerprint']}")
    say("read this fingerprint to an owner of the tenant by phone or in person (not by chat or "
        "mail from this machine): they type it when they sign the root that adds your key")
    say("an owner adds it to the tenant root with: "
        f"rampart root propose {tenant} --add-key {out['keyid']} --role ROLE "
        f"(or --sync)")


def make_tenant_key(cfg: Config, client: Client, session: Session, tenant_id: str, *,
                    name: str) -> dict[str, Any]:
    """A new operator key for ``tenant_id``, sealed with the operator's passphrase, registered."""
    passphrase = new_key_passphrase(cfg, session)
    return register_key(cfg, client, session, OperatorKey.generate(), passphrase, name=name,
                        tenant_id=tenant_id)


@key_app.command("list")
def key_list(json_out: JsonOpt = False, output: OutputOpt = None) -> None:
    """List this operator's keys: local files and what the server has registered."""
    cfg = config()
    session = cfg.load_session()
    local = cfg.list_keys(session.username if session else None)
    remote: list[Any] = []
    names: dict[str, str] = {}
    if session is not None and session.token:
        try:
            _, client, _ = api(cfg)
            with client:
                remote = expect_list(client.get("/keys"), "keys")
                names = tenant_names(client)
        except (NotLoggedIn, NetworkProblem) as exc:
            note(f"showing local keys only: {exc}")
    rows: dict[str, dict[str, Any]] = {}
    for k in local:
        rows[k.keyid] = {**k.to_json(), "local": True, "registered": False}
    for r in remote:
        if not isinstance(r, dict) or not isinstance(r.get("keyid"), str):
            continue
        d = rows.setdefault(r["keyid"], {"keyid": r["keyid"], "name": r.get("name"),
                                         "tenant": r.get("tenant"), "local": False})
        d["registered"] = True
    docs = list(rows.values())
    if wants_json(json_out, output):
        print_json(docs)
        return
    table(["key id", "name", "tenant", "local file", "registered", "fingerprint"],
          ([d["keyid"], d.get("name"),
            tenant_label(names, d["tenant"]) if d.get("tenant") else "(all)",
            "yes" if d["local"] else "no",
            "yes" if d["registered"] else "no", d.get("fingerprint") or "-"] for d in docs),
          title="Keys")


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.add_typer(account_app, name="account")
    app.add_typer(key_app, name="key")

