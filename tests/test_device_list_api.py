"""The device list API pages, filters and sorts in the store (issue 17): keyset pagination.

A real server; devices are added to its store directly (what enrolment would leave). Paging through
every sort order returns each device exactly once, in order; filters apply before paging; a cursor the
server did not make is a clear 400; another tenant's devices never appear.
"""

from __future__ import annotations

from typing import Any

from harness.consolefleet import add_devices, store_of
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer
from sqlalchemy import update

from rampart.server.models import Device


def _pages(op: Any, tid: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        r = op.http.get(f"/tenants/{tid}/devices", params={**params, **({"after": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        pages.append(r.json())
        cursor = r.headers.get("Rampart-Next")
        if cursor is None:
            return pages
        assert len(pages) < 100


def test_device_list_pages_filters_and_sorts_with_a_keyset_cursor(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    a = setup_tenant(owner, "alpha", prefix="a-")
    b = setup_tenant(owner, "bravo", prefix="b-")
    store = store_of(server.data_dir)
    try:
        ids = add_devices(store, a.id, 230, prefix="web")
        add_devices(store, b.id, 40, prefix="web")  # same hostnames in another tenant
        with store.transaction() as s:  # some never seen, some sharing a last-seen time
            s.execute(update(Device).where(Device.id.in_(ids[:30])).values(last_seen=None))
            s.execute(update(Device).where(Device.id.in_(ids[30:90])).values(last_seen=1000.0))
            s.execute(update(Device).where(Device.id.in_(ids[:5])).values(status="retired"))
    finally:
        store.dispose()
    everything = ok(owner.http.get(f"/tenants/{a.id}/devices"))  # no limit: the whole list, as before
    assert len(everything) == 230 and {d["id"] for d in everything} == set(ids)
    for sort in ("enrolled", "hostname", "id", "last_seen"):
        pages = _pages(owner, a.id, limit=50, sort=sort)
        assert [len(p) for p in pages] == [50, 50, 50, 50, 30], sort
        got = [d for p in pages for d in p]
        assert sorted(d["id"] for d in got) == sorted(ids)  # each device once, none of bravo's
        key = {"enrolled": lambda d: (d["enrolled_at"], d["id"]),
               "hostname": lambda d: (d["hostname"], d["id"]),
               "id": lambda d: d["id"], "last_seen": lambda d: (d["last_seen"] or 0.0, d["id"])}[sort]
        assert got == sorted(got, key=key), sort  # type: ignore[arg-type]
    # Filters apply before the page is cut.
    hits = [d for p in _pages(owner, a.id, limit=7, q="web-0001", sort="hostname") for d in p]
    assert [d["hostname"] for d in hits] == [f"web-{i:05d}" for i in range(10, 20)]
    retired = [d for p in _pages(owner, a.id, limit=2, status="retired") for d in p]
    assert sorted(d["id"] for d in retired) == sorted(ids[:5])
    # "%" is a character to look for, not a wildcard.
    assert ok(owner.http.get(f"/tenants/{a.id}/devices", params={"q": "%", "limit": 5})) == []
    # A cursor the server did not make is refused with a clear error, never a crash.
    for bad in ("x", "bm90IGpzb24", "WzEsMiwzXQ", "W3RydWUsImRldi0xIl0"):
        r = owner.http.get(f"/tenants/{a.id}/devices", params={"limit": 5, "after": bad})
        assert r.status_code == 400 and "cursor" in r.text, (bad, r.text)
    for bad_params in ({"limit": 0}, {"limit": 1001}, {"sort": "secret"}, {"status": "gone"}):
        assert owner.http.get(f"/tenants/{a.id}/devices", params=bad_params).status_code == 422
    # T12: bravo's technician sees none of alpha's devices, whatever the cursor says.
    assert b.tech.http.get(f"/tenants/{a.id}/devices", params={"limit": 5}).status_code == 404
    own = [d for p in _pages(b.tech, b.id, limit=15, sort="hostname") for d in p]
    assert len(own) == 40 and not {d["id"] for d in own} & set(ids)


def test_T12_a_cursor_from_one_tenant_reveals_nothing_of_another(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    a = setup_tenant(owner, "alpha", prefix="a-")
    b = setup_tenant(owner, "bravo", prefix="b-")
    store = store_of(server.data_dir)
    try:
        add_devices(store, a.id, 12, prefix="aa")
        b_ids = add_devices(store, b.id, 12, prefix="bb")
    finally:
        store.dispose()
    first = owner.http.get(f"/tenants/{a.id}/devices", params={"limit": 5, "sort": "hostname"})
    cursor = first.headers["Rampart-Next"]
    rest = [d for p in _pages(b.tech, b.id, limit=50, sort="hostname", after=cursor) for d in p]
    assert {d["id"] for d in rest} <= set(b_ids)  # the cursor only positions; the tenant filter holds


def test_job_targets_page_by_device_and_the_summary_counts_them(server: RunningServer) -> None:
    """A job's status in counts, and its targets a page at a time (issue 17: no 10,000-target answer)."""
    from harness.operators import approved_grant, enrol_devices, signed_job

    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "alpha", prefix="a-")
    devices = enrol_devices(t, 5)
    grant = approved_grant(t, devices)
    env, payloads, job = signed_job(t, grant, devices)
    ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={"envelope": env, "payloads": payloads}))
    summary = ok(t.tech.http.get(f"/jobs/{job}/summary"))
    assert (summary["id"], summary["targets"], summary["states"], summary["outcomes"]) == \
        (job, 5, {"pending": 5}, {})
    pages, after = [], None
    while True:
        r = t.tech.http.get(f"/jobs/{job}/targets",
                            params={"limit": 2, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        pages.append([x["device"] for x in r.json()])
        after = r.headers.get("Rampart-Next")
        if after is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1] and [d for p in pages for d in p] == sorted(devices)
    assert t.tech.http.get(f"/jobs/{job}/targets", params={"after": "nope"}).status_code == 422
    other = setup_tenant(owner, "bravo", prefix="b-")
    for path in (f"/jobs/{job}/summary", f"/jobs/{job}/targets"):  # T12
        assert other.tech.http.get(path).status_code == 404
