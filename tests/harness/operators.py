"""Operator-side helpers for tests: accounts with TOTP, keys, tenants, roots, grants, jobs.

These do what the ``rampart`` CLI does, with real keys and real HTTP against a
:class:`~harness.server.RunningServer`, so tests can set up a tenant quickly
and then play the attacker.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp

from rampart.trust import (
    JOB_TYPE,
    ROOT_TYPE,
    Action,
    Job,
    KeyEntry,
    OperatorKey,
    PayloadRef,
    Roles,
    RoleSpec,
    TenantRoot,
    add_signature,
    decode_envelope,
    encode_payload,
    new_job_id,
    new_nonce,
    sign_envelope,
)

from .server import RunningServer

PASSWORD = "correct horse battery staple"


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, f"{resp.request.method} {resp.request.url}: " \
                                    f"{resp.status_code} {resp.text[:500]}"
    return resp.json()


#: Seconds the harness has slept waiting for an unused TOTP step, in all and per test (summarised
#: at the session's end: each code costs one step of its account, one per 30 s).
TOTP_WAITED = [0.0]
TOTP_WAITED_BY_TEST: dict[str, float] = {}


@dataclass
class Totp:
    """Generates codes never reused (the server accepts each step once)."""

    secret: str
    last_step: int = 0
    #: Seconds the server's clock is shifted by (RAMPART_CLOCK_OFFSET_S).
    offset: float = 0.0

    @classmethod
    def from_uri(cls, uri: str) -> Totp:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
        return cls(query["secret"][0])

    def unspent(self) -> str:
        """The current step's code without spending it: for an attempt the server must refuse
        whatever the step (a retired secret), so no step is waited for."""
        return pyotp.TOTP(self.secret).at(int((time.time() + self.offset) // 30) * 30)

    def code(self) -> str:
        now = time.time() + self.offset
        now_step = int(now // 30)
        # The server accepts the previous step too, until the current one ends: use it only while
        # that leaves 20 s or more (a loaded machine may take seconds to deliver the request).
        oldest = now_step - 1 if now - now_step * 30 < 10 else now_step
        step = max(self.last_step + 1, oldest)
        while step > int((time.time() + self.offset) // 30) + 1:
            time.sleep(1)
            TOTP_WAITED[0] += 1
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            TOTP_WAITED_BY_TEST[test] = TOTP_WAITED_BY_TEST.get(test, 0.0) + 1
        self.last_step = step
        return pyotp.TOTP(self.secret).at(step * 30)


@dataclass
class Operator:
    server: RunningServer
    username: str
    role: str
    token: str
    totp: Totp
    password: str = PASSWORD
    keys: list[OperatorKey] = field(default_factory=list)

    @property
    def http(self) -> httpx.Client:
        if not hasattr(self, "_http"):
            self._http = self.server.client(self.token)
        return self._http

    def login(self) -> str:
        with self.server.client() as c:
            doc = ok(c.post("/auth/login", json={"username": self.username,
                                                 "password": self.password,
                                                 "totp": self.totp.code()}))
        self.token = doc["token"]
        if hasattr(self, "_http"):
            del self._http
        return self.token

    def add_key(self, tenant: str | None = None, name: str | None = None) -> OperatorKey:
        key = OperatorKey.generate()
        ok(self.http.post("/keys", json={"public": key.public.to_text(), "tenant": tenant,
                                         "name": name or f"{self.username}-key"}))
        self.keys.append(key)
        return key

    def create_account(self, username: str, role: str,
                       tenants: list[str] | None) -> Operator:
        doc = ok(self.http.post("/accounts", json={"username": username, "role": role,
                                                   "tenants": tenants}))
        return activate(self.server, username, doc["activation_token"])


def _confirm(server: RunningServer, username: str, enrol: dict[str, Any]) -> Operator:
    totp = Totp.from_uri(enrol["otpauth_uri"])
    with server.client() as c:
        session = ok(c.post("/auth/totp/confirm", json={"enrolment_token": enrol["enrolment_token"],
                                                        "code": totp.code()}))
    return Operator(server, username, session["role"], session["token"], totp)


def bootstrap_owner(server: RunningServer, username: str = "owner") -> Operator:
    with server.client() as c:
        enrol = ok(c.post("/auth/bootstrap", json={"token": server.bootstrap_token,
                                                   "username": username, "password": PASSWORD}))
    return _confirm(server, username, enrol)


def activate(server: RunningServer, username: str, activation_token: str) -> Operator:
    with server.client() as c:
        enrol = ok(c.post("/auth/activate", json={"username": username, "password": PASSWORD,
                                                  "activation_token": activation_token}))
    return _confirm(server, username, enrol)


def make_root(tenant: dict[str, Any], version: int, *, owners: list[OperatorKey],
              approvers: list[OperatorKey] = (), technicians: list[OperatorKey] = (),
              owner_threshold: int = 1, expires_in: int = 365 * 86400) -> TenantRoot:
    everyone = {k.key_id: k for k in [*owners, *approvers, *technicians]}
    log_keys = {k["keyid"]: k["public"].split(":", 1)[1] for k in tenant["log_keys"]}
    return TenantRoot(
        tenant=tenant["id"], name=tenant["name"], version=version,
        expires=int(time.time()) + expires_in,
        keys={kid: KeyEntry(public=k.public.to_b64(), name=kid[:8]) for kid, k in everyone.items()},
        roles=Roles(owner=RoleSpec(keyids=sorted(k.key_id for k in owners),
                                   threshold=owner_threshold),
                    approver=RoleSpec(keyids=sorted(k.key_id for k in approvers)),
                    technician=RoleSpec(keyids=sorted(k.key_id for k in technicians))),
        log_keys=log_keys)


def sign_root(root: TenantRoot, signers: list[OperatorKey]) -> str:
    return sign_envelope(ROOT_TYPE, encode_payload(root), signers).to_bytes().decode()


@dataclass
class TenantSetup:
    """A tenant with a published v1 root: owner, approver and technician accounts and keys."""

    tenant: dict[str, Any]
    owner: Operator
    owner_key: OperatorKey
    approver: Operator
    approver_key: OperatorKey
    tech: Operator
    tech_key: OperatorKey
    root_envelope: str

    @property
    def id(self) -> str:
        return str(self.tenant["id"])


def setup_tenant(owner: Operator, name: str, *, prefix: str = "") -> TenantSetup:
    tenant = ok(owner.http.post("/tenants", json={"name": name}))
    tid = tenant["id"]
    approver = owner.create_account(f"{prefix}approver", "approver", [tid])
    tech = owner.create_account(f"{prefix}tech", "technician", [tid])
    owner_key = owner.add_key(tid, f"owner-{name}")
    approver_key = approver.add_key(tid)
    tech_key = tech.add_key(tid)
    root = make_root(tenant, 1, owners=[owner_key], approvers=[approver_key],
                     technicians=[tech_key])
    env = sign_root(root, [owner_key])
    ok(owner.http.post(f"/tenants/{tid}/roots", json={"envelope": env}))
    tenant = ok(owner.http.get(f"/tenants/{tid}"))
    return TenantSetup(tenant, owner, owner_key, approver, approver_key, tech, tech_key, env)


@dataclass
class TwoApproverTenant:
    """A tenant whose published v1 root names an owner key, two approvers and the technicians."""

    tenant: dict[str, Any]
    owner_key: OperatorKey
    approvers: list[tuple[Operator, OperatorKey]]
    techs: list[tuple[Operator, OperatorKey]]
    root_envelope: str

    @property
    def id(self) -> str:
        return str(self.tenant["id"])


def two_approver_tenant(owner: Operator, name: str = "acme",
                        technicians: tuple[str, ...] = ("tech",)) -> TwoApproverTenant:
    """Create ``name`` with accounts approver1, approver2 and ``technicians`` (each with a key) and
    publish root v1 signed by the owner's new key (root capabilities then need both approvers)."""
    tenant = ok(owner.http.post("/tenants", json={"name": name}))
    tid = str(tenant["id"])
    approvers = []
    for n in ("approver1", "approver2"):
        op = owner.create_account(n, "approver", [tid])
        approvers.append((op, op.add_key(tid)))
    techs = []
    for n in technicians:
        op = owner.create_account(n, "technician", [tid])
        techs.append((op, op.add_key(tid)))
    owner_key = owner.add_key(tid, f"owner-{name}")
    root_env = sign_root(make_root(tenant, 1, owners=[owner_key], approvers=[k for _, k in approvers],
                                   technicians=[k for _, k in techs]), [owner_key])
    ok(owner.http.post(f"/tenants/{tid}/roots", json={"envelope": root_env}))
    return TwoApproverTenant(tenant, owner_key, approvers, techs, root_env)


def approved_grant(t: TenantSetup, devices: list[str], capabilities: list[str] | None = None,
                   duration_s: int = 3600) -> str:
    """Request a grant as the technician and approve it as the approver; return its id."""
    doc = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": devices, "capabilities": capabilities or ["script"],
        "duration_s": duration_s, "reason": "test maintenance"}))
    signed = add_signature(decode_envelope(doc["envelope"].encode()), t.approver_key)
    got = ok(t.approver.http.post(f"/grants/{doc['id']}/signatures",
                                  json={"envelope": signed.to_bytes().decode()}))
    assert got["status"] == "approved", got
    return str(doc["id"])


def signed_job(t: TenantSetup, grant_id: str, devices: list[str], script: bytes = b"echo hi\n",
               *, expires_in: int = 3600) -> tuple[str, dict[str, str], str]:
    """A script job signed by the technician key: (envelope text, payloads, job id)."""
    import base64

    now = int(time.time())
    job = Job(id=new_job_id(), tenant=t.id, grant=grant_id, signer=t.tech_key.key_id,
              devices=devices,
              action=Action(kind="script", payloads=[PayloadRef(
                  name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
              nonce=new_nonce(), issued_at=now, expires_at=now + expires_in)
    env = sign_envelope(JOB_TYPE, encode_payload(job), [t.tech_key]).to_bytes().decode()
    return env, {"script": base64.b64encode(script).decode()}, job.id


def enrol_devices(t: TenantSetup, n: int) -> list[str]:
    """Enrol and approve ``n`` devices the way agents do (the test holds the device keys)."""
    from rampart.trust import DeviceKey

    out = []
    for i in range(n):
        tok = ok(t.owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        key = DeviceKey.generate()
        with t.owner.server.client(api=False) as c:
            doc = ok(c.post("/agent/v1/enroll", json={
                "token": tok["token"], "public_key": key.public.to_text(),
                "hostname": f"host-{i}", "agent_version": "test"}))
        ok(t.owner.http.post(f"/tenants/{t.id}/devices/{doc['device_id']}/approve"))
        out.append(str(doc["device_id"]))
    return out


def post_job(t: TenantSetup, grant_id: str, devices: list[str],
             http: httpx.Client | None = None) -> httpx.Response:
    """Sign a script job as the technician and submit it; return the raw response."""
    env, payloads, _ = signed_job(t, grant_id, devices)
    return (http or t.tech.http).post(f"/tenants/{t.id}/jobs",
                                      json={"envelope": env, "payloads": payloads})


def audit_events(op: Operator, tenant_id: str) -> list[dict[str, Any]]:
    """Every event entry of a tenant's audit log (kind, actor, details), in order."""
    import base64
    import json

    entries = ok(op.http.get(f"/tenants/{tenant_id}/audit/entries", params={"limit": 1000}))
    out = []
    for e in entries:
        try:
            doc = json.loads(base64.b64decode(e["data"]))
        except ValueError:
            continue
        if isinstance(doc, dict) and "actor" in doc:
            out.append(doc)
    return out


#: A step-up the server said is valid until T is reused by :func:`step_up` until T minus this margin.
STEP_UP_MARGIN_S = 90.0


def step_up(op: Operator, *, again: bool = False) -> None:
    """Prove a fresh TOTP code on the operator's session (G5), as the CLI does when asked.

    A session whose step-up the server said is still valid (with a margin) is not stepped up
    again, unless ``again``: each code costs a TOTP step, one per 30 s per account."""
    now = time.time() + op.totp.offset
    held = op.__dict__.get("_step_up")
    if not again and held is not None and held[0] == op.token and now < held[1] - STEP_UP_MARGIN_S:
        return
    doc = ok(op.http.post("/auth/step-up", json={"code": op.totp.code()}))
    op.__dict__["_step_up"] = (op.token, float(doc["valid_until"]))
