"""`rampart jobs cancel` (issue 16): a signed cancellation of a job that has not run, enforced by agents.

A real server and a real agent; the technician and approver use the real CLI.
The agent is stopped while the job waits for it, so the job has not run when
it is cancelled. The attacker tests play a server that sends the cancelled job
anyway (its database edited back to "pending": the agent holds the signed
cancellation and refuses the job, with a signed receipt saying so) and a
technician who cancels someone else's job (refused by the server, and by
agents; nothing changes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness.consolefleet import store_of
from harness.operators import audit_events, ok
from harness.sessions import SessionWorld, cli_config, session_world
from sqlalchemy import func, select, update

from rampart import trust
from rampart.server.models import JobCancellation, JobTarget

pytestmark = pytest.mark.store


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster, prefix="rampart-cancel-") as w:
        approver, key = w.approvers[0]
        cli_config(w, "cli-approver", approver, key, w.root_env)  # type: ignore[attr-defined]
        w.enrol("main")
        yield w


def _job(w: SessionWorld, marker: str) -> str:
    """A script job for the main device that would leave ``marker`` in the scratch directory."""
    grant = w.grant(["script"])
    script = w.base / f"{marker}.sh"
    script.write_text(f"touch {w.scratch}/{marker}\n")
    r = w.cli("run", "acme", "--devices", w.main.device_id, "--grant", grant, "--writes", str(w.scratch),
              "--script", str(script), "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["id"])


def _targets(w: SessionWorld, job_id: str) -> list[tuple[str, Any]]:
    return [(t["state"], t["receipt"]) for t in w.job(job_id)["targets"]]


def _cancellations(w: SessionWorld) -> int:
    store = store_of(w.server.data_dir)
    try:
        with store.read() as s:
            return int(s.scalar(select(func.count()).select_from(JobCancellation)) or 0)
    finally:
        store.dispose()


def test_the_technician_cancels_a_waiting_job_and_it_never_runs(world: SessionWorld) -> None:
    w = world
    w.main.stop()
    job = _job(w, "cancelled-1")
    assert _targets(w, job) == [("pending", None)]
    r = w.cli("jobs", "cancel", job, "--reason", "wrong device", "--yes")
    assert r.returncode == 0, r.stderr
    assert b"cancelled on 1 device(s)" in r.stdout
    assert _targets(w, job) == [("cancelled", None)]
    summary = ok(w.owner.http.get(f"/jobs/{job}/summary"))
    assert (summary["targets"], summary["states"], summary["outcomes"]) == (1, {"cancelled": 1}, {})
    event = [e for e in audit_events(w.owner, w.tenant) if e["kind"] == "job.cancelled"][-1]
    assert event["details"]["job"] == job and event["details"]["reason"] == "wrong device"
    assert event["details"]["signers"] == [w.tech_key.key_id]
    w.main.start()
    w.wait_connected(w.main.device_id)
    w.main.wait_log("job cancellation(s) stored", timeout=30)
    time.sleep(3)
    assert _targets(w, job) == [("cancelled", None)]  # never sent, never run
    assert not (w.scratch / "cancelled-1").exists()
    # Cancelling it again, or a job that already ran, is refused with a clear message.
    again = w.cli("jobs", "cancel", job, "--yes")
    assert again.returncode != 0 and b"nothing to cancel" in again.stderr


def test_T1_a_server_that_sends_a_cancelled_job_anyway_gets_a_signed_refusal(world: SessionWorld) -> None:
    w = world
    w.main.stop()
    job = _job(w, "cancelled-2")
    r = w.cli("jobs", "cancel", job, "--yes", config="cli-approver")  # an approver may cancel any job
    assert r.returncode == 0, r.stderr
    # The attacker holds the server: it marks the job deliverable again and sends it.
    store = store_of(w.server.data_dir)
    try:
        with store.transaction() as s:
            s.execute(update(JobTarget).where(JobTarget.job_id == job).values(state="pending"))
    finally:
        store.dispose()
    w.main.start()
    w.wait_connected(w.main.device_id)
    receipt = w.receipt(job)
    assert receipt["outcome"] == "refused" and receipt["refusal"] == "job-cancelled", receipt
    assert not (w.scratch / "cancelled-2").exists()


def test_T11_a_technician_cannot_cancel_another_technicians_job(world: SessionWorld) -> None:
    w = world
    w.main.stop()
    job = _job(w, "cancelled-3")
    before = _cancellations(w)
    # tech2 holds no approver key and did not sign the job: the CLI says so and signs nothing ...
    r = w.cli("jobs", "cancel", job, "--yes", config="cli-tech2")
    assert r.returncode != 0 and b"approver or owner role" in r.stderr
    # ... and a cancellation tech2 signs by hand is refused by the server as agents would refuse it.
    c = trust.Cancellation(tenant=w.tenant, job=job, issued_at=int(time.time()), reason="not mine")
    env = trust.sign_envelope(trust.CANCELLATION_TYPE, trust.encode_payload(c),
                              [w.tech2_key]).to_bytes()  # type: ignore[attr-defined]
    resp = w.tech2.http.post(f"/jobs/{job}/cancellation",  # type: ignore[attr-defined]
                             json={"envelope": env.decode()})
    assert resp.status_code == 400 and "cancellation refused" in resp.text
    assert _cancellations(w) == before and _targets(w, job) == [("pending", None)]
    # The job still runs when its device comes back.
    w.main.start()
    w.wait_connected(w.main.device_id)
    assert w.receipt(job)["outcome"] == "ran"
    assert (w.scratch / "cancelled-3").exists()
    late = w.cli("jobs", "cancel", job, "--yes")
    assert late.returncode != 0 and b"nothing to cancel" in late.stderr
    assert ok(w.owner.http.get(f"/jobs/{job}"))["targets"][0]["state"] == "done"
    summary = ok(w.owner.http.get(f"/jobs/{job}/summary"))
    assert (summary["targets"], summary["states"], summary["outcomes"]) == (1, {"done": 1}, {"ran": 1})
