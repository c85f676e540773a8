"""T1 and T2 for real: the attacker owns the server and still no agent obeys.

The attacker here holds everything the server has: its data directory and
database, the tenant log keys in it, its code, and an owner session (plus any
accounts and keys it cares to create through the API). It tries every path it
has to make a real agent run something: the API as an administrator, new
accounts with new keys (the ScreenConnect setup-wizard case), and direct
writes to the database with audit-log entries and checkpoints signed by the
server's own log key (the Kaseya case). Every attempt is refused: by the
server's courtesy checks where it is honest, and by the agent, whose refusal
reason comes back in a signed receipt, where it is not.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.operators import (
    Operator,
    make_root,
    ok,
    sign_root,
)
from harness.server import RunningServer
from harness.world import World, agent_world, envelope, insert_job, server_owned

from rampart import trust
from rampart.server.models import GrantRow, JobPayload, RootVersion
from rampart.trust import OperatorKey

pytestmark = pytest.mark.store


@pytest.fixture
def world(server: RunningServer) -> Iterator[World]:
    with agent_world(server) as w:
        yield w


def test_T2_new_admin_accounts_and_keys_get_nothing_run(world: World) -> None:
    w, t = world, world.t
    owner: Operator = t.owner  # the attacker's session
    mallory = owner.create_account("mallory", "technician", [t.id])
    mkey = mallory.add_key(t.id)
    accomplice = owner.create_account("accomplice", "approver", [t.id])
    akey = accomplice.add_key(t.id)
    # The new technician cannot even request a grant: its key is in no root.
    r = mallory.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [w.device], "capabilities": ["script"], "duration_s": 3600, "reason": "totally legit"})
    assert 400 <= r.status_code < 500, r.text
    # A request by the real technician "approved" by the new approver stays unapproved.
    doc = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [w.device], "capabilities": ["script", "net"], "duration_s": 3600,
        "reason": "needs review"}))
    signed = trust.add_signature(trust.decode_envelope(doc["envelope"].encode()), akey)
    r = accomplice.http.post(f"/grants/{doc['id']}/signatures", json={"envelope": signed.to_bytes().decode()})
    assert r.status_code >= 400 or r.json()["status"] == "requested", r.text
    assert ok(owner.http.get(f"/grants/{doc['id']}"))["status"] == "requested"
    # Jobs signed with the new keys, under the new grant or the honest one: refused by the server.
    script, marker = w.marker_script("t2")
    payloads = {"script": base64.b64encode(script).decode()}
    for signer, grant in ((mkey, doc["id"]), (mkey, w.grant), (akey, w.grant)):
        job = w.job(signer, grant, script)
        r = mallory.http.post(f"/tenants/{t.id}/jobs",
                              json={"envelope": envelope(job, signer).decode(), "payloads": payloads})
        assert 400 <= r.status_code < 500, r.text
    # The owner's own session signs nothing an agent trusts either: a job by a fresh key.
    rogue = owner.add_key(t.id)
    job = w.job(rogue, w.grant, script)
    r = owner.http.post(f"/tenants/{t.id}/jobs",
                        json={"envelope": envelope(job, rogue).decode(), "payloads": payloads})
    assert 400 <= r.status_code < 500, r.text
    # A root that adds the new keys, signed by them, is refused at publication.
    tenant = ok(owner.http.get(f"/tenants/{t.id}"))
    root2 = make_root(tenant, 2, owners=[mkey], approvers=[akey], technicians=[mkey])
    r = owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": sign_root(root2, [mkey])})
    assert 400 <= r.status_code < 500, r.text
    time.sleep(1.0)
    assert not marker.exists()
    assert w.agent.status()["root_version"] == 1


def test_T1_database_writes_and_server_keys_get_nothing_run(world: World) -> None:
    w, t = world, world.t
    # A legitimate job is made while the agent is offline; the attacker will swap its script.
    w.agent.stop()
    honest = b"echo honest\n"
    legit = w.job(t.tech_key, w.grant, honest)
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={
        "envelope": envelope(legit, t.tech_key).decode(),
        "payloads": {"script": base64.b64encode(honest).decode()}}))

    attacker = OperatorKey.generate()
    forged: dict[str, str] = {}
    markers: list[Path] = []
    with server_owned(w) as (store, audit, keys):
        log_key = keys.get(t.id)  # the server's own signing key for this tenant's log
        with store.transaction() as s:
            # 1. A new root naming the attacker as owner, approver and technician.
            tenant = {"id": t.id, "name": "victim", "log_keys": [
                {"keyid": log_key.key_id, "public": log_key.public.to_text()}]}
            root2 = sign_root(make_root(tenant, 2, owners=[attacker], approvers=[attacker],
                                        technicians=[attacker]), [attacker]).encode()
            s.add(RootVersion(tenant_id=t.id, version=2, sha256=trust.root_sha256(root2),
                              envelope=root2, published_at=time.time()))
            # 2. A grant approved by the attacker, and a job under it.
            now = int(time.time())
            g = trust.Grant(id=trust.new_grant_id(), tenant=t.id, grantee=attacker.key_id,
                            devices=[w.device], capabilities=["script"], not_before=now - 60,
                            not_after=now + 3600, reason="hot-fix")
            s.add(GrantRow(id=g.id, tenant_id=t.id, grantee=attacker.key_id, requested_by="owner",
                           envelope=envelope(g, attacker), created_at=time.time(),
                           not_after=g.not_after))
            s.flush()
            script, m = w.marker_script("t1-forged-grant")
            markers.append(m)
            j = w.job(attacker, g.id, script)
            insert_job(s, audit, t.id, envelope(j, attacker), j, script)
            forged["attacker-grant"] = j.id
            # 3. A job under the honest grant that names the technician but is signed by the log key.
            script, m = w.marker_script("t1-logkey")
            markers.append(m)
            j = w.job(log_key, w.grant, script, signer_id=t.tech_key.key_id)
            insert_job(s, audit, t.id, envelope(j, log_key), j, script)
            forged["log-key"] = j.id
            # 4. The honest job's script swapped for the attacker's.
            script, m = w.marker_script("t1-swapped")
            markers.append(m)
            row = s.get(JobPayload, (legit.id, "script"))
            assert row is not None
            row.data = script
        audit.sign_checkpoint(t.id, time.time())

    w.agent.start()
    assert w.receipt(forged["attacker-grant"])["refusal"] in ("unknown-key", "threshold-not-met")
    assert w.receipt(forged["log-key"])["refusal"] == "bad-signature"
    swapped = w.receipt(legit.id)
    assert (swapped["outcome"], swapped["refusal"]) == ("refused", "digest-mismatch")
    w.agent.wait_log("refused root update")
    assert w.agent.status()["root_version"] == 1
    for m in markers:
        assert not m.exists(), m
