"""Accounts, bootstrap, TOTP and sessions against a real server (T2, T11)."""

from __future__ import annotations

from harness.operators import PASSWORD, Totp, activate, bootstrap_owner, ok
from harness.server import RunningServer


def test_bootstrap_confirm_login_logout(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    assert ok(owner.http.get("/me")) == {"username": "owner", "role": "owner", "tenants": None}
    token = owner.login()
    assert ok(owner.http.get("/me"))["username"] == "owner"
    ok(owner.http.post("/auth/logout"))
    with server.client(token) as c:
        assert c.get("/me").status_code == 401


def test_T2_bootstrap_token_refused_once_an_owner_exists(server: RunningServer) -> None:
    with server.client() as c:
        wrong = c.post("/auth/bootstrap", json={"token": "x" * 43, "username": "mallory",
                                                 "password": PASSWORD})
        assert wrong.status_code == 403
        bootstrap_owner(server)
        reuse = c.post("/auth/bootstrap", json={"token": server.bootstrap_token,
                                                 "username": "mallory", "password": PASSWORD})
        assert reuse.status_code == 403
        assert reuse.json() == wrong.json() == {"detail": "bootstrap refused"}


def test_T2_no_default_account_and_no_web_setup(server: RunningServer) -> None:
    with server.client() as c:
        for user in ("admin", "owner", "root"):
            for pw in ("admin", "password", "rampart", ""):
                r = c.post("/auth/login", json={"username": user, "password": pw or "x",
                                                "totp": "000000"})
                assert r.status_code == 401
    with server.client(api=False) as c:
        page = c.get("/")
        text = page.text.lower()
        # The only form is sign-in for existing accounts: nothing creates an account or
        # takes a bootstrap token on the web (the CVE-2024-1709 setup-wizard pattern).
        assert page.status_code == 200
        assert text.count("<form") == 1 and 'action="/login"' in text
        assert "bootstrap" not in text and "setup" not in text
        assert c.get("/setup").status_code == 404
        for user in ("admin", "owner"):
            r = c.post("/login", data={"username": user, "password": "admin", "totp": "000000"},
                       headers={"Sec-Fetch-Site": "same-origin"})  # as a browser on the page
            assert r.status_code == 401 and "set-cookie" not in r.headers


def test_T11_wrong_password_and_unknown_user_are_identical(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    with server.client() as c:
        answers = []
        for body in ({"username": "owner", "password": "wrong password!!",
                      "totp": owner.totp.code()},
                     {"username": "nobody-here", "password": PASSWORD, "totp": "123456"},
                     {"username": "owner", "password": PASSWORD, "totp": "000000"},
                     # a NUL no account name can hold (PostgreSQL refuses it in text): the same answer
                     {"username": "owner\x00", "password": PASSWORD, "totp": "123456"}):
            r = c.post("/auth/login", json=body)
            answers.append((r.status_code, r.json(), sorted(r.headers.keys())))
        assert answers[0] == answers[1] == answers[2] == answers[3]
        assert answers[0][1] == {"detail": "invalid credentials"}


def test_T11_totp_code_is_accepted_once(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    code = owner.totp.code()
    with server.client() as c:
        body = {"username": "owner", "password": PASSWORD, "totp": code}
        assert c.post("/auth/login", json=body).status_code == 200
        assert c.post("/auth/login", json=body).status_code == 401


def test_T13_validation_errors_never_echo_secrets(server: RunningServer) -> None:
    secret = "s3cret-" + "p" * 2000
    with server.client() as c:
        r = c.post("/auth/login", json={"username": "owner", "password": secret, "totp": 1})
        assert r.status_code == 422
        assert "s3cret" not in r.text and isinstance(r.json()["detail"], str)
        r = c.post("/auth/bootstrap", json={"token": secret, "username": "Bad Name!",
                                             "password": secret})
        assert r.status_code == 422 and "s3cret" not in r.text
    log = server.log_path.read_text()
    assert "s3cret" not in log and server.bootstrap_token not in log


def test_activation_is_one_time_and_roles_are_enforced(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    doc = ok(owner.http.post("/accounts", json={"username": "viewer1", "role": "viewer",
                                                "tenants": None}))
    viewer = activate(server, "viewer1", doc["activation_token"])
    with server.client() as c:
        again = c.post("/auth/activate", json={"username": "viewer1", "password": PASSWORD,
                                               "activation_token": doc["activation_token"]})
        assert again.status_code == 401
    assert viewer.http.post("/accounts", json={"username": "x1", "role": "owner",
                                               "tenants": None}).status_code == 403
    assert viewer.http.get("/accounts").status_code == 403
    assert viewer.http.post("/tenants", json={"name": "Acme"}).status_code == 403
    names = {a["username"] for a in ok(owner.http.get("/accounts"))}
    assert names == {"owner", "viewer1"}


def test_short_password_refused_and_duplicate_username_conflicts(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    doc = ok(owner.http.post("/accounts", json={"username": "tech1", "role": "technician",
                                                "tenants": None}))
    with server.client() as c:
        r = c.post("/auth/activate", json={"username": "tech1", "password": "short",
                                           "activation_token": doc["activation_token"]})
        assert r.status_code == 400
    dup = owner.http.post("/accounts", json={"username": "tech1", "role": "viewer",
                                             "tenants": None})
    assert dup.status_code == 409
    assert isinstance(Totp.from_uri("otpauth://totp/x?secret=ABC").secret, str)
