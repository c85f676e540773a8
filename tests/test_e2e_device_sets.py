"""Committed device sets end to end (issue 17): a grant and a job to more devices than are listed
are signed as a Merkle root and count, and real agents run them only with their own proofs.

One real server, three real agent processes (``main`` and ``a1`` inside the grant, ``a2`` outside)
and 70 more enrolled devices that never connect (so the grant names 72 devices: beyond the 64 a
grant lists, it commits). People act through the real ``rampart`` CLI with their own config
directories; the attacker (T1) edits the server's database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.operators import ok, step_up
from harness.sessions import SessionWorld, cli_config, session_world
from sqlalchemy import select

from rampart import trust
from rampart.server.config import load_config
from rampart.server.db import Store
from rampart.server.models import GrantRow, JobRow, JobTarget

PAPER_DEVICES = 70


def _paper_devices(w: SessionWorld, n: int) -> list[str]:
    """Devices enrolled and approved the way agents enrol, that never connect."""
    out = []
    for i in range(n):
        tok = ok(w.owner.http.post(f"/tenants/{w.tenant}/enrollment-tokens", json={"ttl_s": 600}))
        key = trust.DeviceKey.generate()
        with w.server.client(api=False) as c:
            doc = ok(c.post("/agent/v1/enroll", json={
                "token": tok["token"], "public_key": key.public.to_text(),
                "hostname": f"paper-{i}", "agent_version": "test"}))
        ok(w.owner.http.post(f"/tenants/{w.tenant}/devices/{doc['device_id']}/approve"))
        out.append(str(doc["device_id"]))
    return out


@pytest.fixture(scope="module")
def world(pg_cluster: Any) -> Iterator[SessionWorld]:
    with session_world(pg_cluster, prefix="rampart-devsets-") as w:
        for name in ("main", "a1", "a2"):
            w.enrol(name)
        for i, (op, key) in enumerate(w.approvers):
            cli_config(w, f"cli-approver{i + 1}", op, key, w.root_env)  # type: ignore[attr-defined]
        w.paper = _paper_devices(w, PAPER_DEVICES)  # type: ignore[attr-defined]
        yield w


def _store(w: SessionWorld) -> Store:
    return Store(load_config(w.server.data_dir).db_url)


def _granted(w: SessionWorld) -> list[str]:
    return [w.agents["main"].device_id, w.agents["a1"].device_id, *w.paper]  # type: ignore[attr-defined]


def _payload(envelope: str, cls: type[Any]) -> Any:
    return trust.decode_payload(trust.decode_envelope(envelope.encode()).payload, cls)


def _cli_ok(w: SessionWorld, *args: str, config: str = "cli-tech", totp: Any = None) -> str:
    extra = {"RAMPART_TOTP": totp.code()} if totp is not None else None
    r = w.cli(*args, config=config, env_extra=extra)
    assert r.returncode == 0, f"{args}: {r.stderr.decode()}"
    return r.stdout.decode()


def _markers(w: SessionWorld, tag: str) -> list[Path]:
    return sorted(w.scratch.glob(f"ran-{tag}.*"))


def _wait_targets(w: SessionWorld, job_id: str, devices: list[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        targets = {t["device"]: t for t in ok(w.tech.http.get(f"/jobs/{job_id}/targets",
                                                               params={"limit": 500}))}
        if all(targets.get(d, {}).get("receipt") for d in devices):
            return targets
        time.sleep(0.3)
    raise TimeoutError(f"no receipts from {devices} for {job_id}")


def _run_on_all_granted(w: SessionWorld, grant: str, tag: str, tmp_path: Path) -> tuple[str, int]:
    """``rampart run`` to every granted device (a committed job) of a script that leaves a marker;
    the job id and how many targets the server took."""
    script = tmp_path / "s.sh"
    script.write_text(f"mktemp -p {w.scratch} ran-{tag}.XXXXXX\n")
    doc = json.loads(_cli_ok(w, "run", "acme", "--grant", grant, "--devices", ",".join(_granted(w)),
                             "--script", str(script), "--writes", str(w.scratch), "--json",
                             totp=w.tech.totp))
    return str(doc["id"]), len(doc["targets"])


@pytest.fixture(scope="module")
def grant(world: SessionWorld) -> str:
    w = world
    doc = json.loads(_cli_ok(w, "grant", "request", "acme", "--devices", ",".join(_granted(w)),
                             "--capabilities", "script", "--for", "1h", "--reason", "fleet-wide fix",
                             "--json"))
    gid = str(doc["id"])
    assert sorted(doc["devices"]) == sorted(_granted(w))
    return gid


def test_a_grant_beyond_64_devices_is_signed_as_a_committed_set_the_approvers_check(
        world: SessionWorld, grant: str) -> None:
    w = world
    summary = ok(w.tech.http.get(f"/grants/{grant}"))
    g = _payload(summary["envelope"], trust.Grant)
    assert g.devices == [] and g.device_set == trust.commit_devices(_granted(w))
    assert g.device_set.count == 72 and len(summary["envelope"]) < 3000
    for i, (op, _) in enumerate(w.approvers):
        out = _cli_ok(w, "grant", "approve", grant, "--yes", config=f"cli-approver{i + 1}", totp=op.totp)
        assert "72 (signed ids" in out or "devices:      72" in out, out
        assert w.agents["a2"].device_id not in out  # what the approver saw is exactly what was asked
    assert ok(w.tech.http.get(f"/grants/{grant}"))["status"] == "approved"


def test_T1_a_server_that_lists_a_device_the_approvers_did_not_ask_for_gets_no_approval(
        world: SessionWorld) -> None:
    w = world
    doc = json.loads(_cli_ok(w, "grant", "request", "acme", "--devices", ",".join(_granted(w)),
                             "--capabilities", "script", "--for", "1h", "--reason", "second grant",
                             "--json"))
    gid = str(doc["id"])
    outsider = w.agents["a2"].device_id
    store = _store(w)
    try:
        with store.transaction() as s:  # the attacker swaps one listed device for the outsider
            row = s.get(GrantRow, gid)
            assert row is not None and row.device_list is not None
            ids = row.device_list.decode().split()
            row.device_list = "\n".join(sorted([*ids[1:], outsider])).encode()
        op, _ = w.approvers[0]
        r = w.cli("grant", "approve", gid, "--yes", config="cli-approver1",
                  env_extra={"RAMPART_TOTP": op.totp.code()})
        assert r.returncode != 0
        assert b"not the grant's signed device set" in r.stderr, r.stderr
        after = ok(w.tech.http.get(f"/grants/{gid}"))
        assert after["status"] == "requested" and after["approvals"] == []
    finally:
        store.dispose()


def test_agents_inside_a_committed_grant_run_a_listed_job_with_their_grant_proofs(
        world: SessionWorld, grant: str, tmp_path: Path) -> None:
    w = world
    script = tmp_path / "s.sh"
    script.write_text(f"mktemp -p {w.scratch} ran-listed.XXXXXX\n")
    two = [w.agents["main"].device_id, w.agents["a1"].device_id]
    out = _cli_ok(w, "run", "acme", "--grant", grant, "--devices", ",".join(two), "--script", str(script),
                  "--writes", str(w.scratch), "--wait", "--json")
    assert all(t["receipt"]["outcome"] == "ran" for t in json.loads(out)["targets"])
    assert len(_markers(w, "listed")) == 2


def test_a_committed_job_runs_on_the_agents_in_it_and_its_signed_bytes_do_not_list_them(
        world: SessionWorld, grant: str, tmp_path: Path) -> None:
    w = world
    job_id, targets_sent = _run_on_all_granted(w, grant, "committed", tmp_path)
    assert targets_sent == 72
    store = _store(w)
    try:
        with store.read() as s:
            row = s.get(JobRow, job_id)
            assert row is not None
            envelope = row.envelope.decode()
    finally:
        store.dispose()
    job = _payload(envelope, trust.Job)
    assert job.devices == [] and job.device_set == trust.commit_devices(_granted(w))
    assert len(envelope) < 3000 and not any(d in envelope for d in _granted(w))
    targets = _wait_targets(w, job_id, [w.agents["main"].device_id, w.agents["a1"].device_id])
    for name in ("main", "a1"):
        assert targets[w.agents[name].device_id]["receipt"]["outcome"] == "ran"
    assert len(_markers(w, "committed")) == 2
    assert w.agents["a2"].device_id not in targets


def test_T1_a_server_that_adds_a_target_to_a_committed_job_runs_nothing_there(
        world: SessionWorld, grant: str, tmp_path: Path) -> None:
    w = world
    job_id, _ = _run_on_all_granted(w, grant, "forged", tmp_path)
    _wait_targets(w, job_id, [w.agents["main"].device_id, w.agents["a1"].device_id])
    outsider = w.agents["a2"]
    store = _store(w)
    try:
        with store.transaction() as s:  # the attacker makes the outsider a target of the signed job
            s.add(JobTarget(job_id=job_id, device_id=outsider.device_id, state="pending"))
    finally:
        store.dispose()
    outsider.stop()
    w.agents["a2"] = outsider.start()  # it asks for its jobs when it reconnects
    receipt = _wait_targets(w, job_id, [outsider.device_id])[outsider.device_id]["receipt"]
    assert receipt["outcome"] == "refused" and receipt["refusal"] == "wrong-device", receipt
    assert len(_markers(w, "forged")) == 2  # main and a1 ran it; the outsider wrote nothing


def test_T1_a_device_list_that_is_not_the_signed_set_is_refused_and_nothing_is_stored(
        world: SessionWorld, grant: str) -> None:
    w = world
    devices = _granted(w)
    now = int(time.time())
    script = b"echo never\n"
    job = trust.Job(id=trust.new_job_id(), tenant=w.tenant, grant=grant, signer=w.tech_key.key_id,
                    device_set=trust.commit_devices(devices),
                    action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                        name="script", sha256=hashlib.sha256(script).hexdigest(),
                        size=len(script))]),
                    nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
    env = trust.sign_envelope(trust.JOB_TYPE, trust.encode_payload(job), [w.tech_key]).to_bytes().decode()
    step_up(w.tech)
    body = {"envelope": env, "payloads": {"script": base64.b64encode(script).decode()}}
    for listed, why in ((devices[:-1], "71 devices listed, 72 signed"),
                        ([*devices[:-1], w.agents["a2"].device_id], "does not match"),
                        ([], "missing")):
        r = w.tech.http.post(f"/tenants/{w.tenant}/jobs", json={**body, "devices": listed})
        assert r.status_code == 400 and why in r.text, r.text
    store = _store(w)
    try:
        with store.read() as s:
            assert s.get(JobRow, job.id) is None
            assert not list(s.scalars(select(JobTarget).where(JobTarget.job_id == job.id)))
    finally:
        store.dispose()
