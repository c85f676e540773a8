"""Tenants, roots and grants: the server relays only what agents would accept (T1, T2, T6)."""

from __future__ import annotations

import msgspec
from harness.operators import (
    approved_grant,
    bootstrap_owner,
    make_root,
    ok,
    setup_tenant,
    sign_root,
)
from harness.server import RunningServer

from rampart.trust import Envelope, OperatorKey, add_signature, decode_envelope, encode_payload


def _audit_kinds(op, tid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["kind"] for e in ok(op.http.get(f"/tenants/{tid}/audit/entries",
                                              params={"limit": 1000}))]


def test_root_publish_and_rotation(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    assert t.tenant["status"] == "active" and t.tenant["root_version"] == 1
    new_owner = OperatorKey.generate()
    v2 = make_root(t.tenant, 2, owners=[t.owner_key, new_owner], approvers=[t.approver_key],
                   technicians=[t.tech_key])
    doc = ok(owner.http.post(f"/tenants/{t.id}/roots",
                             json={"envelope": sign_root(v2, [t.owner_key, new_owner])}))
    assert doc["version"] == 2
    assert [r["version"] for r in ok(owner.http.get(f"/tenants/{t.id}/roots"))] == [1, 2]
    assert ok(owner.http.get(f"/tenants/{t.id}/roots/current"))["version"] == 2
    assert "root.published" in _audit_kinds(owner, t.id)


def test_T6_forged_rotation_refused_and_nothing_stored(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    mallory = OperatorKey.generate()
    # v2 naming only the attacker's key, signed only by it: fails the old owners' threshold.
    forged = make_root(t.tenant, 2, owners=[mallory], technicians=[mallory])
    r = owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": sign_root(forged, [mallory])})
    assert r.status_code == 400 and "threshold" in r.json()["detail"]
    # v2 signed by the old owner but not by its own new owner.
    half = make_root(t.tenant, 2, owners=[mallory])
    r = owner.http.post(f"/tenants/{t.id}/roots",
                        json={"envelope": sign_root(half, [t.owner_key])})
    assert r.status_code == 400
    # Skipping a version and replaying v1 are refused too.
    skip = make_root(t.tenant, 3, owners=[t.owner_key])
    assert owner.http.post(f"/tenants/{t.id}/roots",
                           json={"envelope": sign_root(skip, [t.owner_key])}).status_code == 400
    assert owner.http.post(f"/tenants/{t.id}/roots",
                           json={"envelope": t.root_envelope}).status_code == 400
    assert [r["version"] for r in ok(owner.http.get(f"/tenants/{t.id}/roots"))] == [1]


def test_T1_first_root_must_be_owner_signed_and_name_the_log_key(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    tenant = ok(owner.http.post("/tenants", json={"name": "Acme"}))
    key = owner.add_key(tenant["id"])
    root = make_root(tenant, 1, owners=[key])
    unsigned = Envelope(root.PAYLOAD_TYPE, encode_payload(root), ()).to_bytes().decode()
    r = owner.http.post(f"/tenants/{tenant['id']}/roots", json={"envelope": unsigned})
    assert r.status_code == 400
    other = ok(owner.http.post("/tenants", json={"name": "Other"}))
    wrong_log = make_root({**tenant, "log_keys": other["log_keys"]}, 1, owners=[key])
    r = owner.http.post(f"/tenants/{tenant['id']}/roots",
                        json={"envelope": sign_root(wrong_log, [key])})
    assert r.status_code == 400 and "log key" in r.json()["detail"]
    assert ok(owner.http.get(f"/tenants/{tenant['id']}"))["status"] == "pending-root"


def test_root_proposal_merges_only_valid_owner_signatures(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    second = OperatorKey.generate()
    v2 = make_root(t.tenant, 2, owners=[t.owner_key, second], owner_threshold=2,
                   approvers=[t.approver_key], technicians=[t.tech_key])
    env = sign_root(v2, [])
    doc = ok(owner.http.put(f"/tenants/{t.id}/root-proposal", json={"envelope": env}))
    assert doc["complete"] is False and doc["signed_by"] == []
    stranger = add_signature(decode_envelope(env.encode()), OperatorKey.generate())
    r = owner.http.post(f"/tenants/{t.id}/root-proposal/signatures",
                        json={"envelope": stranger.to_bytes().decode()})
    assert r.status_code == 400
    for key in (t.owner_key, second):
        signed = add_signature(decode_envelope(env.encode()), key)
        doc = ok(owner.http.post(f"/tenants/{t.id}/root-proposal/signatures",
                                 json={"envelope": signed.to_bytes().decode()}))
    assert doc["complete"] is True and len(doc["signed_by"]) == 2
    ok(owner.http.post(f"/tenants/{t.id}/roots", json={"envelope": doc["envelope"]}))
    assert owner.http.get(f"/tenants/{t.id}/root-proposal").status_code == 404


def test_members_list_the_keys_that_belong_in_the_root(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    members = {m["username"]: m for m in ok(owner.http.get(f"/tenants/{t.id}/members"))}
    assert set(members) == {"owner", "approver", "tech"}
    assert members["tech"]["keys"][0]["keyid"] == t.tech_key.key_id
    assert t.tech.http.post(f"/tenants/{t.id}/roots",
                            json={"envelope": t.root_envelope}).status_code == 403


def test_grant_request_and_approval(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    device = "dev-" + "a" * 24
    r = t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [device], "capabilities": ["script"], "duration_s": 600, "reason": "x"})
    assert r.status_code == 400  # unknown device
    enrol = ok(t.tech.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    from harness.wsagent import WireAgent

    agent = WireAgent.enrol(server, enrol["token"], enrol["root_sha256"])
    gid = approved_grant(t, [agent.device_id])
    g = ok(t.tech.http.get(f"/grants/{gid}"))
    assert g["status"] == "approved" and g["approvals"] == [t.approver_key.key_id]
    assert g["grantee"] == t.tech_key.key_id and g["requested_by"] == "tech"
    kinds = _audit_kinds(owner, t.id)
    assert "grant.requested" in kinds and "grant.approved" in kinds


def test_T3_approver_signatures_only_over_identical_bytes_and_never_self(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    enrol = ok(t.tech.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    from harness.wsagent import WireAgent

    agent = WireAgent.enrol(server, enrol["token"], enrol["root_sha256"])
    doc = ok(t.tech.http.post(f"/tenants/{t.id}/grants", json={
        "devices": [agent.device_id], "capabilities": ["script"], "duration_s": 600,
        "reason": "patch"}))
    env = decode_envelope(doc["envelope"].encode())
    # A technician cannot approve (role), even with a valid-looking signature.
    own = add_signature(env, t.tech_key).to_bytes().decode()
    assert t.tech.http.post(f"/grants/{doc['id']}/signatures",
                            json={"envelope": own}).status_code == 403
    # Tampered payload (more devices) signed by the approver: refused.
    payload = msgspec.json.decode(env.payload)
    payload["capabilities"] = ["script", "root"]
    tampered = add_signature(Envelope(env.payload_type, msgspec.json.encode(payload), ()),
                             t.approver_key).to_bytes().decode()
    r = t.approver.http.post(f"/grants/{doc['id']}/signatures", json={"envelope": tampered})
    assert r.status_code == 400 and "exact payload" in r.json()["detail"]
    # A signature by a key that is not an approver of the root adds nothing.
    stray = add_signature(env, OperatorKey.generate()).to_bytes().decode()
    assert t.approver.http.post(f"/grants/{doc['id']}/signatures",
                                json={"envelope": stray}).status_code == 400
    assert ok(t.tech.http.get(f"/grants/{doc['id']}"))["status"] == "requested"


def test_enrolment_token_is_one_time(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    enrol = ok(t.tech.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
    assert enrol["cert_sha256"] == server.cert_sha256
    from harness.wsagent import WireAgent

    WireAgent.enrol(server, enrol["token"], enrol["root_sha256"])
    from rampart.trust import DeviceKey

    with server.client(api=False) as c:
        r = c.post("/agent/v1/enroll", json={
            "token": enrol["token"], "public_key": DeviceKey.generate().public.to_text(),
            "hostname": "h2", "agent_version": "t"})
        assert r.status_code == 403
    devices = ok(owner.http.get(f"/tenants/{t.id}/devices"))
    assert len(devices) == 1 and devices[0]["status"] == "pending"
