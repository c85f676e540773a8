"""Monitoring checks: verdicts on this machine's real inventory, and alerts end to end.

The end-to-end test runs a real agent reporting every 2 s to a real server:
a port check fails (an alert opens) until the test starts a listener on that
port, then passes (the alert resolves), without the agent ever being asked
to probe anything.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from harness.agent import traversable_dir
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer, free_port
from test_telemetry import configured_server, enrol_agent, start_agent, stop, wait_until

from rampart.agent.inventory import collect_full
from rampart.server.checks import evaluate, validate
from rampart.server.errors import BadRequest


@pytest.fixture(scope="module")
def listening() -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1], collect_full(int(time.time()), "test", "full")


def test_checks_on_this_machines_inventory(listening: Any) -> None:
    port, inv = listening
    assert evaluate("port", {"port": port, "proto": "tcp"}, inv).ok
    closed = free_port()
    verdict = evaluate("port", {"port": closed, "proto": "tcp"}, inv)
    assert not verdict.ok and "no listener" in verdict.detail
    assert evaluate("disk", {"mountpoint": "/", "max_used_percent": 100.0}, inv).ok
    tight = evaluate("disk", {"mountpoint": "/", "max_used_percent": 0.001}, inv)
    assert not tight.ok and "% used" in tight.detail
    assert not evaluate("disk", {"mountpoint": "/no/such/mount", "max_used_percent": 99.0}, inv).ok
    assert evaluate("memory", {"min_available_percent": 0.0}, inv).ok
    assert not evaluate("memory", {"min_available_percent": 100.0}, inv).ok
    assert evaluate("cpu", {"max_load_per_cpu": 1000.0}, inv).ok
    hot = msgspec.structs.replace(inv, metrics=msgspec.structs.replace(inv.metrics, load1=64.0))
    assert not evaluate("cpu", {"max_load_per_cpu": 0.5}, hot).ok
    assert not evaluate("service", {"unit": "no-such-thing.service"}, inv).ok


def test_check_parameters_are_validated() -> None:
    assert validate("service", {"unit": "ssh"}) == {"unit": "ssh.service"}
    for kind, params in (("disk", {"max_used_percent": 101}), ("disk", {"mountpoint": "rel",
                                                                           "max_used_percent": 5}),
                         ("port", {"port": 0}), ("port", {"port": 80, "proto": "sctp"}),
                         ("cpu", {"max_load_per_cpu": True}), ("service", {"unit": "a b"}),
                         ("ping", {})):
        with pytest.raises(BadRequest):
            validate(kind, params)


@pytest.mark.store
def test_port_check_alert_opens_and_resolves_with_a_real_agent(tmp_path: Path,
                                                               db_url: str | None) -> None:
    server: RunningServer = configured_server(tmp_path / "srv", db_url)
    base = traversable_dir("rampart-checks-")
    agent = None
    try:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "Acme")
        agent = start_agent(enrol_agent(server, t, base / "agent"))
        port = free_port()
        doc = ok(t.tech.http.post(f"/tenants/{t.id}/checks", json={
            "kind": "port", "device": agent.device_id, "params": {"port": port}}))
        ok(t.tech.http.post(f"/tenants/{t.id}/checks", json={
            "kind": "disk", "params": {"mountpoint": "/", "max_used_percent": 100}}))

        def failing() -> Any:
            checks = ok(t.tech.http.get(f"/tenants/{t.id}/checks"))
            return [c for c in checks if c["id"] == doc["id"] and agent.device_id in c["failing"]]

        wait_until(failing, "the port check to fail", timeout=90)
        alerts = ok(t.owner.http.get(f"/tenants/{t.id}/alerts"))
        [alert] = [a for a in alerts if a["kind"] == "check-failed"]
        assert f"port {port}" in alert["subject"] and "no listener" in alert["subject"]
        assert alert["device"] == agent.device_id
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
            wait_until(lambda: not failing(), "the port check to pass", timeout=90)
        resolved = ok(t.owner.http.get(f"/tenants/{t.id}/alerts", params={"status": "resolved"}))
        assert [a["id"] for a in resolved if a["kind"] == "check-failed"] == [alert["id"]]
        assert not [c for c in ok(t.tech.http.get(f"/tenants/{t.id}/checks")) if c["failing"]]
        assert ok(t.tech.http.delete(f"/checks/{doc['id']}"))["id"] == doc["id"]
        events = ok(t.owner.http.get(f"/tenants/{t.id}/audit/entries", params={"limit": 1000}))
        kinds = [e["kind"] for e in events]
        assert kinds.count("check.added") == 2 and kinds.count("check.removed") == 1
    finally:
        if agent is not None and agent.proc is not None:
            stop(agent.proc)
        server.stop()
