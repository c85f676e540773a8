"""G5 under concurrency: a stolen session cannot race past the step-up limit (issue 11, finding 3).

The attack: one technician session fires many job submissions at once, each
to a different device, hoping every request counts the devices reached
*before* any of the others commits. The server must serialise the count and
the decision per account (a row lock on PostgreSQL, the write lock on
SQLite), so exactly ``mass_action_limit`` distinct devices are reached and
every other submission is refused with ``step-up-required``, leaving nothing
stored. Real HTTP requests from real threads against a real server; ./run-tests
repeats this on PostgreSQL.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from harness.operators import (
    TenantSetup,
    approved_grant,
    audit_events,
    bootstrap_owner,
    enrol_devices,
    ok,
    setup_tenant,
    signed_job,
)
from harness.server import RunningServer

pytestmark = pytest.mark.store

SUBMISSIONS = 20
LIMIT = 10  # the default tenant mass_action_limit


def _submit_all_at_once(t: TenantSetup, jobs: list[tuple[str, dict[str, str], str]]
                        ) -> list[httpx.Response]:
    """POST every job from its own thread and connection, released together by a barrier."""
    clients = [t.tech.server.client(t.tech.token) for _ in jobs]
    for c in clients:  # connect (TLS handshake) before the race so the requests overlap
        ok(c.get("/health"))
    barrier = threading.Barrier(len(jobs))
    results: list[httpx.Response | BaseException | None] = [None] * len(jobs)

    def run(i: int) -> None:
        env, payloads, _ = jobs[i]
        barrier.wait()
        try:
            results[i] = clients[i].post(f"/tenants/{t.id}/jobs",
                                         json={"envelope": env, "payloads": payloads})
        except BaseException as exc:  # reported below, never swallowed
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    out: list[httpx.Response] = []
    for r in results:
        assert isinstance(r, httpx.Response), r
        out.append(r)
    return out


def test_G5_T3_concurrent_jobs_cannot_cross_the_step_up_limit(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    t = setup_tenant(owner, "Acme")
    devs = enrol_devices(t, SUBMISSIONS)
    # Two single-approver grants of 10 devices (one grant of 20 would itself need step-up).
    grants = [approved_grant(t, devs[:LIMIT]), approved_grant(t, devs[LIMIT:])]
    jobs = [signed_job(t, grants[i // LIMIT], [d]) for i, d in enumerate(devs)]

    responses = _submit_all_at_once(t, jobs)

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * LIMIT + [403] * (SUBMISSIONS - LIMIT), \
        [(r.status_code, r.text[:200]) for r in responses]
    refused = [r for r in responses if r.status_code == 403]
    assert all(r.json()["code"] == "step-up-required" for r in refused)
    accepted = {jid for (_, _, jid), r in zip(jobs, responses, strict=True)
                if r.status_code == 200}

    # No state changed for the refused ones: exactly the accepted jobs are stored,
    # reaching exactly LIMIT distinct devices.
    stored = ok(owner.http.get(f"/tenants/{t.id}/jobs", params={"limit": 1000}))
    assert {j["id"] for j in stored} == accepted
    assert len({d for j in stored for d in j["devices"]}) == LIMIT
    kinds = [e["kind"] for e in audit_events(owner, t.id)]
    assert kinds.count("stepup.required") == SUBMISSIONS - LIMIT
    assert "stepup.passed" not in kinds
