"""T1 at the human edge of the trust chain (issue 11, findings 1, 2 and 5).

The server is the attacker: it edits its own database (the stored root
proposal, accounts and keys) between an owner's `rampart root propose` and
`rampart root sign`. The owners' real CLI, against a real server process, must
refuse to sign anything but the changes the owner named and confirmed by
fingerprint, must never show the server's labels as if they were the owner's,
and must not sign for a tenant whose root it has not pinned. Each test asserts
the refusal and that nothing changed: no signature on the proposal, no new root
published (so no agent can be offered one), the owner's trusted root as before.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from harness.agent import AgentProcess, traversable_dir
from test_cli_flows import (  # the same real-CLI harness; fixtures are re-created per module
    PASSPHRASE,
    REPO,
    Operator,
    _db,
    one_line_error,
    people,
    server,
)

from rampart import trust
from rampart.trust import ROOT_TYPE, key_fingerprint, key_fingerprint_b64

pytestmark = pytest.mark.client_side
__all__ = ["people", "server"]  # fixtures used by name

ENV = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}
FORGED = "FORGED-LABEL-alice"


@pytest.fixture(scope="module")
def acme(people: dict[str, Operator]) -> dict[str, Any]:
    """alice (owner, tenant acme with root v1) and bob (technician with a key for acme)."""
    a, b = people["alice"], people["bob"]
    a.enrol_interactively("--bootstrap", "RAMPART_BOOTSTRAP_TOKEN", a.server.bootstrap_token)
    doc = a.json("tenant", "create", "acme", extra_env=ENV)
    acct = a.json("account", "create", "bob", "--role", "technician")
    b.enrol_interactively("--activate", "RAMPART_ACTIVATION_TOKEN", acct["activation_token"])
    b.key_new("--tenant", "acme")
    # the holder can show the fingerprint again, from their own key record
    listed = [k for k in b.json("key", "list") if k["keyid"] == b.keyid]
    assert listed and listed[0]["fingerprint"] == b.fingerprint
    assert b.fingerprint in b.ok("key", "list").stdout
    return {"tenant": doc["id"], "v1_sha256": doc["root_sha256"]}


def enrolled_agent(owner: Operator, tenant: str, prefix: str) -> Iterator[AgentProcess]:
    """A real agent enrolled by ``owner``'s CLI (pinned to the root it verified), approved, running."""
    info = owner.json("enroll", "new", tenant, "--ttl", "10m")
    base = traversable_dir(prefix)
    proc = AgentProcess(base / "agent")
    r = proc.enroll(info["server"], info["token"], info["root_sha256"], info["cert_sha256"])
    assert r.returncode == 0, r.stderr
    owner.ok("device", "approve", tenant, proc.device_id)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(people: dict[str, Operator], acme: dict[str, Any]) -> Iterator[AgentProcess]:
    """A real agent of acme, pinned to root v1 at enrolment, connected throughout."""
    yield from enrolled_agent(people["alice"], "acme", "rampart-ceremony-")


def _agent_root(agent: AgentProcess, settle: float = 3) -> int:
    """The root version the agent trusts (after giving a published root time to arrive)."""
    time.sleep(settle)
    return int(agent.status()["root_version"])


def _proposal(op: Operator, tenant: str) -> bytes | None:
    db = _db(op.server)
    try:
        row = db.execute("SELECT envelope FROM root_proposals WHERE tenant_id = ?",
                         (tenant,)).fetchone()
    finally:
        db.close()
    return bytes(row[0]) if row else None


def _swap_proposal(op: Operator, tenant: str, edit: Any) -> bytes:
    """The attacker rewrites the stored unsigned proposal; returns the new envelope bytes."""
    data = _proposal(op, tenant)
    assert data is not None
    root = trust.decode_payload(trust.decode_envelope(data).payload, trust.TenantRoot)
    swapped = edit(root)
    env = trust.Envelope(ROOT_TYPE, trust.encode_payload(swapped), ()).to_bytes()
    db = _db(op.server)
    try:
        db.execute("UPDATE root_proposals SET envelope = ? WHERE tenant_id = ?", (env, tenant))
    finally:
        db.close()
    return env


def _published_versions(op: Operator, tenant: str) -> list[int]:
    db = _db(op.server)
    try:
        return sorted(int(r[0]) for r in db.execute(
            "SELECT version FROM roots WHERE tenant_id = ?", (tenant,)).fetchall())
    finally:
        db.close()


def _signatures(env: bytes | None) -> int:
    return len(trust.decode_envelope(env).signatures) if env else 0


def _state(op: Operator, tenant: str) -> tuple[list[int], bytes]:
    return _published_versions(op, tenant), (op.config / "roots" / f"{tenant}.json").read_bytes()


def _with_key(root: trust.TenantRoot, key: trust.OperatorKey, name: str, roles: tuple[str, ...],
              drop: str | None = None) -> trust.TenantRoot:
    keys = {k: v for k, v in root.keys.items() if k != drop}
    keys[key.key_id] = trust.KeyEntry(public=key.public.to_b64(), name=name)
    specs = {}
    for r in ("owner", "approver", "technician", "automation"):
        spec = root.roles.get(r)
        ids = [k for k in spec.keyids if k != drop] + ([key.key_id] if r in roles else [])
        specs[r] = trust.RoleSpec(keyids=sorted(set(ids)), threshold=spec.threshold)
    return trust.TenantRoot(tenant=root.tenant, name=root.name, version=root.version,
                            expires=root.expires, keys=keys, roles=trust.Roles(**specs),
                            log_keys=root.log_keys, policy=root.policy)


def _pty_run(op: Operator, args: list[str], answers: list[tuple[str, str]],
             timeout: float = 120) -> tuple[int, str]:
    """Run the CLI on a terminal; answer each prompt (a regex) with a line, in order."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rampart.cli.main", *args],
                            env=op.environ(ENV), stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, close_fds=True)
    os.close(slave)
    out = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                text = out.decode(errors="replace")
                if pending and re.search(pending[0][0], text.split("\x00")[-1]):
                    os.write(master, (pending[0][1] + "\n").encode())
                    pending.pop(0)
                    out += b"\x00"  # answered: look for the next prompt after this point
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, out.decode(errors="replace").replace("\x00", "")


# --- finding 1: the proposal swapped between propose and sign -----------------------------------


def test_T1_proposal_swapped_between_propose_and_sign_is_refused_non_interactive(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    a, b, t = people["alice"], people["bob"], acme["tenant"]
    r = a.ok("root", "propose", "acme", "--add-key", b.keyid, "--role", "technician",
             "--name", "bob")
    assert b.fingerprint in r.stdout
    before = _state(a, t)
    attacker = trust.OperatorKey.generate()
    # (1) bob's key replaced by the attacker's, under bob's name and role
    swapped = _swap_proposal(a, t, lambda root: _with_key(root, attacker, "bob", ("technician",),
                                                          drop=b.keyid))
    named = ("--add-key", b.keyid, "--role", "technician", "--fingerprint", b.fingerprint)
    line = one_line_error(a.run("root", "sign", "acme", *named, extra_env=ENV))
    assert "differs from the changes you named" in line and "did not name" in line
    assert _proposal(a, t) == swapped and _signatures(swapped) == 0
    # (2) bob's key kept, and the attacker's added besides, as an owner
    _swap_proposal(a, t, lambda root: root)  # (reset the row to the honest copy first)
    a.ok("root", "propose", "acme", "--add-key", b.keyid, "--role", "technician", "--name", "bob")
    swapped = _swap_proposal(a, t, lambda root: _with_key(root, attacker, "carol",
                                                          ("owner", "approver")))
    line = one_line_error(a.run("root", "sign", "acme", *named, "--yes", extra_env=ENV))
    assert f"it adds key {attacker.key_id[:16]}" in line
    # (3) --yes alone approves nothing
    line = one_line_error(a.run("root", "sign", "acme", "--yes", extra_env=ENV))
    assert "did not name" in line
    # nothing changed: no signature, no new root on the server, alice's trusted root as before
    assert _proposal(a, t) == swapped and _signatures(swapped) == 0
    assert "threshold" in one_line_error(a.run("root", "publish", "acme"))
    assert _state(a, t) == before and before[0] == [1]
    assert _agent_root(agent) == 1  # the agent keeps the root it pinned


def test_T1_proposal_swapped_between_propose_and_sign_is_refused_interactive(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    """At a terminal the owner types the fingerprint bob read out: the swapped key fails it."""
    a, b, t = people["alice"], people["bob"], acme["tenant"]
    a.ok("root", "propose", "acme", "--add-key", b.keyid, "--role", "technician", "--name", "bob")
    before = _state(a, t)
    attacker = trust.OperatorKey.generate()
    swapped = _swap_proposal(a, t, lambda root: _with_key(root, attacker, FORGED, ("technician",),
                                                          drop=b.keyid))
    rc, out = _pty_run(a, ["root", "sign", "acme"],
                       [(r"Fingerprint of key", b.fingerprint), (r"Who holds", "bob"),
                        (r"Sign exactly this root", "y")])
    assert rc != 0, out
    assert "the fingerprint you typed is not that of key" in out
    assert key_fingerprint(attacker.public.raw) in out  # what was shown is the attacker's key
    assert FORGED not in out  # the server's label never reaches the owner's screen
    assert _proposal(a, t) == swapped and _signatures(swapped) == 0
    assert _state(a, t) == before
    assert _agent_root(agent) == 1


def test_interactive_ceremony_adds_a_technician_whose_fingerprint_was_read_out(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    """The honest path of the same ceremony: the right fingerprint typed, signed, published."""
    a, b, t = people["alice"], people["bob"], acme["tenant"]
    a.ok("root", "propose", "acme", "--add-key", b.keyid, "--role", "technician", "--name", "bob")
    proposal = _proposal(a, t)
    rc, out = _pty_run(a, ["root", "sign", "acme"],
                       [(r"Fingerprint of key", b.fingerprint.replace(" ", "-")),
                        (r"Sign exactly this root", "y")])
    assert rc == 0, out
    assert "+ key bob" in out and "owners of v1: 1 of 1" in out
    signed = _proposal(a, t)
    assert signed is not None and _signatures(signed) == 1
    assert trust.decode_envelope(signed).payload == trust.decode_envelope(proposal or b"").payload
    a.ok("root", "publish", "acme")
    assert _published_versions(a, t) == [1, 2]
    deadline = time.monotonic() + 60
    while _agent_root(agent, settle=1) != 2:  # what the owners did sign, agents follow
        assert time.monotonic() < deadline, agent.log_text()
    root = a.json("root", "show", "acme")
    assert [k["name"] for k in root["roles"]["technician"]["keys"]] == ["bob"]


# --- finding 2: member sync takes keys (and labels) from the server ------------------------------


def test_T1_keys_of_database_made_accounts_in_a_sync_proposal_are_not_signed(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    a, t = people["alice"], acme["tenant"]
    attacker = trust.OperatorKey.generate()
    db = _db(a.server)
    try:
        db.execute("INSERT INTO accounts (username, role, all_tenants, totp_confirmed, "
                   "totp_last_step, failed_logins, locked_until, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (FORGED, "owner", True, True, 0, 0, 0.0, time.time()))
        aid = db.execute("SELECT id FROM accounts WHERE username = ?", (FORGED,)).fetchone()[0]
        db.execute("INSERT INTO operator_keys (keyid, public, name, account_id, tenant_id, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (attacker.key_id, attacker.public.to_text(), FORGED, aid, t, time.time()))
    finally:
        db.close()
    before = _state(a, t)
    r = a.ok("root", "propose", "acme", "--sync")
    assert attacker.key_id[:16] in r.stdout and FORGED not in r.stdout
    proposal = _proposal(a, t)
    # --sync proposes only: neither --yes nor a sign naming other keys approves the new key
    line = one_line_error(a.run("root", "sign", "acme", "--yes", extra_env=ENV))
    assert f"it adds key {attacker.key_id[:16]}" in line
    r = a.run("root", "sign", "acme", "--remove-key", people["bob"].keyid, extra_env=ENV)
    assert f"it adds key {attacker.key_id[:16]}" in one_line_error(r)
    assert FORGED not in r.stdout + r.stderr
    # at a terminal the owner cannot type a fingerprint nobody read to them
    rc, out = _pty_run(a, ["root", "sign", "acme"],
                       [(r"Fingerprint of key", "00000 00000 00000 00000 00000 00000")])
    assert rc != 0 and "not signed" in out and FORGED not in out, out
    assert _proposal(a, t) == proposal and _signatures(proposal) == 0
    assert _state(a, t) == before
    assert _agent_root(agent) == 2  # (v2 is the honest rotation of the test before)


# --- forged labels ---------------------------------------------------------------------------------


def test_T1_forged_labels_do_not_reach_the_signers_display(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    """The server labels a key with a real member's name; the signer sees only its own records."""
    a, t = people["alice"], acme["tenant"]
    carol_key = trust.OperatorKey.generate()  # a key alice has no record of
    a.ok("root", "propose", "acme", "--expires", "365d")
    before = _state(a, t)
    swapped = _swap_proposal(a, t, lambda root: _with_key(root, carol_key, FORGED, ("approver",)))
    fp = key_fingerprint(carol_key.public.raw)
    r = a.run("root", "sign", "acme", "--add-key", carol_key.key_id, "--role", "approver",
              "--fingerprint", fp, extra_env=ENV)
    assert FORGED not in r.stdout + r.stderr
    assert "(not in your records)" in r.stdout
    # the fingerprint matched, but the name in the proposal is not what the owner's records say
    assert "differently from your records" in one_line_error(r)
    assert _proposal(a, t) == swapped and _signatures(swapped) == 0
    assert _state(a, t) == before
    assert _agent_root(agent) == 2


# --- finding 5: operators pin roots ------------------------------------------------------------


def test_T1_cli_without_a_root_pin_refuses_to_sign(
        people: dict[str, Operator], acme: dict[str, Any]) -> None:
    a, c, t = people["alice"], people["carol"], acme["tenant"]
    acct = a.json("account", "create", "carol", "--role", "owner")
    c.enrol_interactively("--activate", "RAMPART_ACTIVATION_TOKEN", acct["activation_token"])
    c.key_new("--tenant", "acme")
    a.ok("root", "propose", "acme", "--add-key", c.keyid, "--role", "owner", "--name", "carol")
    named = ("--add-key", c.keyid, "--role", "owner", "--fingerprint", c.fingerprint,
             "--name", "carol")
    proposal = _proposal(a, t)
    before = _published_versions(a, t)
    # carol sees the root as the server sends it, and is told she cannot sign with it
    r = c.run("root", "sign", "acme", *named, extra_env=ENV)
    assert r.returncode != 0 and "have not pinned" in r.stderr and "root pin" in r.stderr
    assert not (c.config / "roots" / f"{t}.pin").exists()
    # her `root show` never offers the server's hash as the thing to pin
    seen = c.ok("root", "show", "acme").stdout
    sha = a.json("root", "show", "acme")["sha256"]
    assert "not pinned" in seen and f"rampart root pin acme {sha}" not in seen
    # a wrong pin is refused and recorded nowhere
    assert "SHA-256" in one_line_error(c.run("root", "pin", "acme", "ab" * 32))
    assert not (c.config / "roots" / f"{t}.pin").exists()
    assert _proposal(a, t) == proposal and _signatures(proposal) == 0
    assert _published_versions(a, t) == before
    # the owner reads out the SHA-256 `root show` prints; carol pins it and can now sign
    shown = a.ok("root", "show", "acme").stdout
    assert f"rampart root pin acme {sha}" in shown
    c.ok("root", "pin", "acme", sha)
    r = c.ok("root", "sign", "acme", *named, extra_env=ENV)
    assert "signed." in r.stdout


def test_fingerprint_is_grouped_digits_of_the_key_hash() -> None:
    k = trust.OperatorKey.generate()
    fp = key_fingerprint(k.public.raw)
    assert re.fullmatch(r"\d{5}( \d{5}){5}", fp)
    assert fp == key_fingerprint_b64(k.public.to_b64())
    assert fp != key_fingerprint(trust.OperatorKey.generate().public.raw)


# --- policy changes: stated in flags, or refused --------------------------------------------------


def test_T1_policy_loosened_between_propose_and_sign_is_refused(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    """The server widens a policy change in the stored proposal: the owner's named change fails."""
    a, t = people["alice"], acme["tenant"]
    v = a.json("root", "show", "acme")["version"]
    change = ("--policy", "approver_device_limit=5",
              "--policy", "high_risk_capabilities=root,shell,script")
    r = a.ok("root", "propose", "acme", *change)
    assert "--policy approver_device_limit=5" in r.stdout
    before = _state(a, t)
    swapped = _swap_proposal(a, t, lambda root: msgspec.structs.replace(
        root, policy=msgspec.structs.replace(root.policy, approver_device_limit=500,
                                             high_risk_capabilities=[])))
    named = ("--policy", "approver_device_limit=5",
             "--policy", "high_risk_capabilities=script,root,shell")  # any order: a set
    line = one_line_error(a.run("root", "sign", "acme", *named, extra_env=ENV))
    assert "approver_device_limit to 500, not 5" in line and "high_risk_capabilities" in line
    assert _proposal(a, t) == swapped and _signatures(swapped) == 0 and _state(a, t) == before
    # a policy change nobody named is refused, --yes included
    line = one_line_error(a.run("root", "sign", "acme", "--yes", extra_env=ENV))
    assert "which you did not name (--policy)" in line
    assert _signatures(_proposal(a, t)) == 0 and _state(a, t) == before
    assert _agent_root(agent, settle=0) == v

    # The honest proposal, signed as named, is published and the agent follows it.
    a.ok("root", "propose", "acme", *change)
    a.ok("root", "sign", "acme", *named, extra_env=ENV)
    a.ok("root", "publish", "acme")
    doc = a.json("root", "show", "acme")
    assert doc["version"] == v + 1 and doc["policy"]["approver_device_limit"] == 5
    assert sorted(doc["policy"]["high_risk_capabilities"]) == ["root", "script", "shell"]
    assert _agent_root(agent) == v + 1
    # bad input: one clear line, nothing proposed
    proposal = _proposal(a, t)
    assert "policy would be invalid" in one_line_error(
        a.run("root", "propose", "acme", "--policy", "approver_device_limit=0"))
    assert "NAME=VALUE" in one_line_error(a.run("root", "propose", "acme", "--policy", "colour=1"))
    assert "whole number" in one_line_error(
        a.run("root", "propose", "acme", "--policy", "approvers_beyond_limit=two"))
    assert _proposal(a, t) == proposal
