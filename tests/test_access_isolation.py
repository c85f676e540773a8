"""M5, T12: customers isolated from each other; no operator key reused across customers.

The attack: one technician's key, stolen at customer A, must not reach
customer B. The server refuses to register a key for two tenants, to take a
key for "every tenant" and to publish or propose a root naming a key that
belongs to another tenant; ids in URLs are random, never sequential.
"""

from __future__ import annotations

import re

import pytest
from harness.operators import bootstrap_owner, make_root, ok, setup_tenant, sign_root
from harness.server import RunningServer

from rampart import trust
from rampart.trust import Envelope

pytestmark = pytest.mark.store


def test_M5_a_key_belongs_to_one_tenant_and_never_enters_another_root(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    a = setup_tenant(owner, "Acme", prefix="a-")
    b = setup_tenant(owner, "Bravo", prefix="b-")
    assert a.owner_key.key_id != b.owner_key.key_id  # one owner key per tenant
    # A key registered for A cannot be registered again for B, nor "for every tenant".
    r = a.tech.http.post("/keys", json={"public": a.tech_key.public.to_text(), "tenant": None,
                                        "name": "again"})
    assert r.status_code == 400 and "per tenant" in r.json()["detail"]
    r = owner.http.post("/keys", json={"public": a.tech_key.public.to_text(), "tenant": b.id,
                                       "name": "reuse"})
    assert r.status_code == 409
    # B's owners cannot put A's technician key in B's root: neither as a proposal nor published.
    tenant_b = ok(owner.http.get(f"/tenants/{b.id}"))
    v2 = make_root(tenant_b, 2, owners=[b.owner_key], approvers=[b.approver_key],
                   technicians=[b.tech_key, a.tech_key])
    r = owner.http.post(f"/tenants/{b.id}/roots", json={"envelope": sign_root(v2, [b.owner_key])})
    assert r.status_code == 409 and "per tenant" in r.json()["detail"]
    assert a.id not in r.text and "Acme" not in r.text  # the other tenant is never named
    unsigned = Envelope(v2.PAYLOAD_TYPE, trust.encode_payload(v2), ())
    r = owner.http.put(f"/tenants/{b.id}/root-proposal",
                       json={"envelope": unsigned.to_bytes().decode()})
    assert r.status_code == 409
    # A key no tenant knows yet is fine once registered for B.
    fresh = b.tech.add_key(b.id)
    v2 = make_root(tenant_b, 2, owners=[b.owner_key], approvers=[b.approver_key],
                   technicians=[b.tech_key, fresh])
    ok(owner.http.post(f"/tenants/{b.id}/roots", json={"envelope": sign_root(v2, [b.owner_key])}))


def test_T12_ids_in_urls_are_random_not_sequential(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    ids = [ok(owner.http.post("/tenants", json={"name": f"T{i}"}))["id"] for i in range(5)]
    assert all(re.fullmatch(r"tn-[a-z2-7]{26}", i) for i in ids), ids
    suffixes = [i[3:] for i in ids]
    # 130 random bits each: consecutive tenants share no prefix (a counter would).
    assert len({s[:4] for s in suffixes}) == 5
