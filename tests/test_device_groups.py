"""Device groups through the real server's API (issue 6: patch policies per device group).

A group is a named set of one tenant's devices; a patch ring may name groups,
expanded whenever the scheduler runs. The invariant "a device is in one ring
of one policy" must hold whichever changes, the policy or the group, and a
group never reaches another tenant's devices (T12). The end-to-end run of a
ring named by a group, with real agents, is in tests/test_schedule.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.operators import TenantSetup, audit_events, bootstrap_owner, enrol_devices, ok, setup_tenant
from harness.server import PostgresCluster, RunningServer, start_server

pytestmark = pytest.mark.store


@dataclass
class World:
    server: RunningServer
    a: TenantSetup
    b: TenantSetup
    devs: list[str]
    other: str


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory, pg_cluster: PostgresCluster | None) -> Iterator[World]:
    server = start_server(Path(tmp_path_factory.mktemp("groups")),
                          pg_cluster.new_database() if pg_cluster is not None else None)
    try:
        owner = bootstrap_owner(server)
        a = setup_tenant(owner, "Acme", prefix="a-")
        b = setup_tenant(owner, "Bravo", prefix="b-")
        yield World(server, a, b, enrol_devices(a, 4), enrol_devices(b, 1)[0])
    finally:
        server.stop()


def put_group(w: World, name: str, devices: list[str], http: httpx.Client | None = None) -> httpx.Response:
    return (http or w.a.tech.http).put(f"/tenants/{w.a.id}/device-groups/{name}",
                                       json={"devices": devices, "description": f"{name} machines"})


def members(w: World, name: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> httpx.Response:
    return w.a.tech.http.post(f"/tenants/{w.a.id}/device-groups/{name}/members",
                              json={"add": list(add), "remove": list(remove)})


def group(w: World, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok(w.a.tech.http.get(f"/tenants/{w.a.id}/device-groups/{name}"))
    return doc


def set_policy(w: World, name: str, rings: list[dict[str, Any]]) -> httpx.Response:
    return w.a.tech.http.put(f"/tenants/{w.a.id}/patch-policies/{name}",
                             json={"rings": rings, "enabled": False})


def test_a_group_is_created_changed_listed_and_shown_on_its_devices(w: World) -> None:
    d0, d1, d2, _ = w.devs
    doc = ok(put_group(w, "web", [d1, d0]))
    assert doc["devices"] == sorted([d0, d1]) and doc["description"] == "web machines"
    assert doc["used_by"] == [] and doc["created_by"] == "a-tech"
    doc = ok(members(w, "web", add=(d2,), remove=(d0,)))
    assert doc["devices"] == sorted([d1, d2])
    # A device named both to add and to remove ends up removed.
    assert ok(members(w, "web", add=(d0,), remove=(d0,)))["devices"] == sorted([d1, d2])
    listed = {g["name"]: g for g in ok(w.a.owner.http.get(f"/tenants/{w.a.id}/device-groups"))}
    assert listed["web"]["devices"] == sorted([d1, d2])
    on_devices = {d["id"]: d["groups"] for d in ok(w.a.owner.http.get(f"/tenants/{w.a.id}/devices"))}
    assert on_devices[d1] == ["web"] and on_devices[d0] == []
    changes = [e for e in audit_events(w.a.owner, w.a.id) if e.get("kind") == "group.set"]
    assert changes[-2]["details"] == {"group": "web", "added": [d2], "removed": [d0]}, changes[-2]
    assert ok(w.a.tech.http.delete(f"/tenants/{w.a.id}/device-groups/web"))["name"] == "web"
    assert w.a.tech.http.get(f"/tenants/{w.a.id}/device-groups/web").status_code == 404
    assert "web" not in {g for d in ok(w.a.owner.http.get(f"/tenants/{w.a.id}/devices"))
                         for g in d["groups"]}


def test_a_ring_names_a_group_and_follows_its_members(w: World) -> None:
    d0, d1, d2, _ = w.devs
    ok(put_group(w, "canary", [d1]))
    doc = ok(set_policy(w, "follow", [{"name": "pilot", "devices": [d0]},
                                      {"name": "broad", "groups": ["canary"], "delay_s": 60}]))
    broad = doc["rings"][1]
    assert broad["groups"] == ["canary"] and broad["members"] == [] and broad["devices"] == [d1]
    assert group(w, "canary")["used_by"] == ["follow"]
    # The ring follows the group: the scheduler and the report see the new member.
    ok(members(w, "canary", add=(d2,)))
    shown = ok(w.a.tech.http.get(f"/tenants/{w.a.id}/patch-policies/follow"))
    assert shown["rings"][1]["devices"] == sorted([d1, d2])
    report = ok(w.a.tech.http.get(f"/tenants/{w.a.id}/patch-report"))
    by_ring = {(g["policy"], g["ring"]): {d["device"] for d in g["devices"]} for g in report["rings"]}
    assert by_ring[("follow", "broad")] == {d1, d2}
    # A group a policy names cannot be removed; after the policy goes, it can.
    r = w.a.tech.http.delete(f"/tenants/{w.a.id}/device-groups/canary")
    assert r.status_code == 409 and "follow" in r.json()["detail"], r.text
    ok(w.a.tech.http.delete(f"/tenants/{w.a.id}/patch-policies/follow"))
    ok(w.a.tech.http.delete(f"/tenants/{w.a.id}/device-groups/canary"))


def test_no_change_of_a_group_or_a_policy_puts_a_device_in_two_rings(w: World) -> None:
    d0, d1, d2, d3 = w.devs
    ok(put_group(w, "east", [d1]))
    ok(put_group(w, "west", [d2]))
    ok(set_policy(w, "one", [{"name": "pilot", "devices": [d0]}, {"name": "broad", "groups": ["east"]}]))
    ok(set_policy(w, "two", [{"name": "all", "groups": ["west"]}]))
    # Within one policy: the pilot's device joins the broad ring's group.
    r = members(w, "east", add=(d0,))
    assert r.status_code == 409 and d0 in r.json()["detail"] and "policy one" in r.json()["detail"], r.text
    # Across policies: a device of policy two's group joins policy one's group.
    r = put_group(w, "east", [d1, d2])
    assert r.status_code == 409 and "policy two" in r.json()["detail"], r.text
    # A policy naming a group whose devices another policy holds.
    r = set_policy(w, "three", [{"name": "x", "groups": ["west"]}])
    assert r.status_code == 409, r.text
    # Refused changes stored nothing.
    assert group(w, "east")["devices"] == [d1]
    assert "three" not in {p["name"] for p in ok(w.a.tech.http.get(f"/tenants/{w.a.id}/patch-policies"))}
    # A device in a ring's list and in that ring's group counts once.
    doc = ok(set_policy(w, "two", [{"name": "all", "devices": [d2, d3], "groups": ["west"]}]))
    assert doc["rings"][0]["devices"] == [d2, d3]
    for name in ("one", "two"):
        ok(w.a.tech.http.delete(f"/tenants/{w.a.id}/patch-policies/{name}"))


def test_T13_bad_group_requests_get_clear_errors(w: World) -> None:
    d0 = w.devs[0]
    r = put_group(w, "Bad Name", [d0])
    assert r.status_code == 422, r.text
    r = set_policy(w, "p", [{"name": "pilot", "groups": ["nowhere"]}])
    assert r.status_code == 400 and "unknown device group nowhere" in r.json()["detail"], r.text
    r = set_policy(w, "p", [{"name": "pilot"}])
    assert r.status_code == 400 and "at least one device or device group" in r.json()["detail"], r.text
    r = members(w, "nowhere", add=(d0,))
    assert r.status_code == 404, r.text
    r = put_group(w, "dup", [d0, "dev-" + "0" * 24])
    assert r.status_code == 400 and "unknown device" in r.json()["detail"], r.text
    assert w.a.tech.http.get(f"/tenants/{w.a.id}/device-groups/dup").status_code == 404


def test_T12_a_group_never_holds_or_reveals_another_tenants_devices(w: World) -> None:
    r = put_group(w, "mixed", [w.devs[0], w.other])
    assert r.status_code == 400 and "unknown device" in r.json()["detail"], r.text
    ok(put_group(w, "mine", [w.devs[0]]))
    r = members(w, "mine", add=(w.other,))
    assert r.status_code == 400, r.text
    assert group(w, "mine")["devices"] == [w.devs[0]]
    # Bravo's people cannot see, change or remove Acme's groups.
    for method, path, body in (("GET", "/device-groups/mine", None),
                               ("GET", "/device-groups", None),
                               ("PUT", "/device-groups/mine", {"devices": []}),
                               ("POST", "/device-groups/mine/members", {"add": [w.other]}),
                               ("DELETE", "/device-groups/mine", None)):
        resp = w.b.tech.http.request(method, f"/tenants/{w.a.id}{path}", json=body)
        assert resp.status_code == 404, (method, path, resp.text)
    assert group(w, "mine")["devices"] == [w.devs[0]]
    ok(w.a.tech.http.delete(f"/tenants/{w.a.id}/device-groups/mine"))


def test_M3_viewers_read_groups_and_cannot_change_them(w: World) -> None:
    viewer = w.a.owner.create_account("a-viewer", "viewer", [w.a.id])
    ok(put_group(w, "ro", [w.devs[3]]))
    seen = {g["name"]: g["devices"] for g in ok(viewer.http.get(f"/tenants/{w.a.id}/device-groups"))}
    assert seen["ro"] == [w.devs[3]]
    r = put_group(w, "ro", [], http=viewer.http)
    assert r.status_code == 403 and "needs the role" in r.text, r.text
    assert group(w, "ro")["devices"] == [w.devs[3]]
