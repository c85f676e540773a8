"""The local console's guard without a browser or a server (fast): Host, launch, cookie, CSRF, headers.

The full flows (a real server, a real agent, Chromium) are in tests/test_local_console_browser.py.
These run the application with uvicorn on a loopback socket (as `rampart console` does), in
a thread, with an operator configuration that has no session: every refusal must happen before
any action runs (an action would fail with "not logged in", which these tests see as a 401).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from rampart.cli.config import Config
from rampart.console.app import build_app
from rampart.console.serve import bind
from rampart.console.web import Guard
from rampart.webui import CSP

_SOCK = bind(0)  # one loopback port for the module: the guard and the Host checks need it
PORT = int(_SOCK.getsockname()[1])
_SOCK.close()
ORIGIN = f"http://127.0.0.1:{PORT}"
SAME = {"Sec-Fetch-Site": "same-origin", "Origin": ORIGIN}
DEV_A, DEV_B = "dev-" + "a" * 24, "dev-" + "b" * 24


@pytest.fixture
def guard() -> Guard:
    return Guard(port=PORT)


@pytest.fixture
def client(tmp_path: Path, guard: Guard) -> Iterator[httpx.Client]:
    sock = bind(PORT)
    server = uvicorn.Server(uvicorn.Config(build_app(Config(tmp_path / "cfg"), guard), log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=ORIGIN, timeout=20) as c:
            yield c
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def _launched(client: httpx.Client, guard: Guard) -> None:
    r = client.post("/launch", data={"launch": guard.launch_token}, headers=SAME)
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie


def test_the_launch_page_needs_no_session_and_carries_the_strict_headers(client: httpx.Client,
                                                                          guard: Guard) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert guard.csrf() not in r.text and 'name="csrf-token"' not in r.text  # nothing for strangers
    assert r.headers["content-security-policy"] == CSP and "'unsafe-inline'" not in CSP
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert '<script src="/static/launch.js"' in r.text and "<script>" not in r.text
    assert client.get("/static/launch.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404


def test_T13_dns_rebinding_host_is_refused_everywhere(client: httpx.Client, guard: Guard) -> None:
    _launched(client, guard)
    for host in ("attacker.example", f"attacker.example:{PORT}", "127.0.0.1", f"127.0.0.1:{PORT + 1}",
                 f"localhost.attacker.example:{PORT}"):
        for method, path in (("GET", "/"), ("GET", "/t/tn-abc"), ("POST", "/launch"),
                             ("POST", "/grants/gr-abc/approve"), ("GET", "/static/console.css")):
            r = client.request(method, path, headers={**SAME, "Host": host},
                               data={"csrf": guard.csrf()} if method == "POST" else None)
            assert r.status_code == 421, (host, path)
    assert client.get("/", headers={"Host": f"localhost:{PORT}"}).status_code != 421


def test_T13_the_launch_secret_buys_one_session_once(client: httpx.Client, guard: Guard) -> None:
    assert client.post("/launch", data={"launch": "x" * 43}, headers=SAME).status_code == 403
    assert client.post("/launch", data={"launch": guard.launch_token},
                       headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert not guard.launched
    _launched(client, guard)
    r = client.post("/launch", data={"launch": guard.launch_token}, headers=SAME)
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_T13_pages_need_the_session_and_posts_the_csrf_token_from_this_origin(
        client: httpx.Client, guard: Guard) -> None:
    assert client.get("/t/tn-abc").status_code == 403  # before the launch
    _launched(client, guard)
    assert client.get("/t/tn-abc").status_code == 401  # reaches the action: no CLI session here
    stranger = httpx.Client(base_url=ORIGIN, timeout=20)
    assert stranger.get("/t/tn-abc").status_code == 403
    stranger.cookies.set(guard.cookie_name, "guessed")
    assert stranger.get("/t/tn-abc").status_code == 403
    url = "/grants/gr-abc/approve"
    body = {"csrf": guard.csrf(), "reviewed": "0" * 64, "passphrase": "secret"}
    assert client.post(url, data={**body, "csrf": ""}, headers=SAME).status_code == 403
    assert client.post(url, data={**body, "csrf": "0" * 64}, headers=SAME).status_code == 403
    assert client.post(url, data=body, headers={"Sec-Fetch-Site": "same-site"}).status_code == 403
    assert client.post(url, data=body, headers={"Origin": "http://127.0.0.1:1"}).status_code == 403
    assert client.post(url, data=body).status_code == 403  # no Sec-Fetch-Site and no Origin
    assert stranger.post(url, data=body, headers=SAME).status_code == 403
    stranger.close()
    r = client.post(url, data=body, headers=SAME)  # everything right: the action runs (and fails)
    assert r.status_code == 401 and "secret" not in r.text


def test_T13_ids_from_the_url_must_look_like_ids(client: httpx.Client, guard: Guard) -> None:
    _launched(client, guard)
    for path in ("/grants/..%2F..%2Ftenants", "/grants/gr-a%2Fb", "/t/tn-a b", "/jobs/job-" + "a" * 200):
        assert client.get(path).status_code == 404, path
    assert client.get("/t/tn-abc/run", params={"grant": "../x"}).status_code == 404


def test_an_empty_passphrase_is_refused_before_any_key_is_read(client: httpx.Client, guard: Guard) -> None:
    from rampart.cli.errors import UsageProblem
    from rampart.console import actions

    with pytest.raises(UsageProblem), actions.passphrase(""):
        pass


def test_the_console_binds_loopback_only() -> None:
    sock = bind(0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert sock.family == socket.AF_INET
    finally:
        sock.close()
    assert Guard(port=5).url.startswith("http://127.0.0.1:5/#launch=")


def test_T1_a_grant_the_server_drafts_unlike_the_request_is_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The server answers "request a grant" with a wider grant, or one for a key not the
    technician's: the console refuses it and shows no grant id (the same check as the CLI's)."""
    from contextlib import contextmanager
    from typing import Any

    from harness.tenant import Tenant

    from rampart import trust
    from rampart.cli.config import Session
    from rampart.cli.errors import Refused
    from rampart.console import actions

    t = Tenant()
    mine, other = t.technicians
    cfg = Config(tmp_path / "cfg")
    cfg.save_key(mine.key_id, trust.encrypt_private_key(mine, "pw"), name="tess", tenant=t.id,
                 username="tess")
    root = trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=int(time.time()))
    now = int(time.time())

    def drafted(grantee: str, devices: list[str]) -> dict[str, Any]:
        g = trust.Grant(id=trust.new_grant_id(), tenant=t.id, grantee=grantee, devices=devices,
                        capabilities=["script"], not_before=now, not_after=now + 3600, reason="fix",
                        requested_by="tess")
        env = trust.Envelope(trust.GRANT_TYPE, trust.encode_payload(g), ()).to_bytes().decode()
        return {"id": g.id, "envelope": env, "status": "requested"}

    answers: list[dict[str, Any]] = []

    class CompromisedServer:
        def post(self, path: str, body: Any) -> dict[str, Any]:
            return answers.pop(0)

    @contextmanager
    def connected(cfg: Config, step_up_code: str | None = None) -> Iterator[tuple[Any, Session]]:
        yield CompromisedServer(), Session("https://rampart.example", "0" * 64, "tess", "token")

    monkeypatch.setattr(actions, "connected", connected)
    monkeypatch.setattr(actions, "trusted_root", lambda *a, **k: root)
    answers.append(drafted(mine.key_id, [DEV_A, DEV_B]))  # one device more than asked
    with pytest.raises(Refused, match="differs from the request"):
        actions.request(cfg, t.id, devices=[DEV_A], capabilities=["script"], duration="1h", reason="fix")
    answers.append(drafted(other.key_id, [DEV_A]))  # for another technician's key
    with pytest.raises(Refused, match="not one of your keys"):
        actions.request(cfg, t.id, devices=[DEV_A], capabilities=["script"], duration="1h", reason="fix")
    answers.append(drafted(mine.key_id, [DEV_A]))  # exactly what was asked
    done = actions.request(cfg, t.id, devices=[DEV_A], capabilities=["script"], duration="1h",
                           reason="fix")
    assert done["grant"]["devices"] == [DEV_A] and done["grant"]["grantee_name"] == "key4"


def test_the_launch_session_ends_when_idle_and_at_its_absolute_limit(client: httpx.Client,
                                                                      guard: Guard) -> None:
    _launched(client, guard)
    guard.idle_s = 0.5
    for _ in range(3):  # each request renews the idle limit
        time.sleep(0.3)
        assert client.get("/t/tn-abc").status_code == 401
    time.sleep(0.7)
    assert client.get("/t/tn-abc").status_code == 403
    assert client.post("/launch", data={"launch": guard.launch_token}, headers=SAME).status_code == 403
    guard.idle_s, guard.max_s = 60, 0.0  # the absolute limit, however active the session
    assert client.get("/t/tn-abc").status_code == 403
