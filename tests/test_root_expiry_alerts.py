"""Issue 11, finding 7: no silent cliff at root expiry.

A real server warns through its alert channels 90, 30 and 7 days before a
tenant root expires, and once it has: each stage opens one alert (the nearer
stage resolves the farther one), a webhook receives it, and publishing a
renewed root resolves what is open. The stages are reached by publishing
roots of shorter lifetimes (checked at publish) and by a restart with the
server clock shifted past expiry (checked by the sweep that runs at start).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness.operators import Operator, TenantSetup, bootstrap_owner, make_root, ok, setup_tenant, sign_root
from harness.server import RunningServer
from test_access_dormant import shift_clock
from test_alert_delivery import wait_for
from test_notify import http_sink

pytestmark = pytest.mark.store

DAY = 86400


def _expiry_alerts(owner: Operator, tid: str) -> list[dict[str, Any]]:
    return [a for a in ok(owner.http.get(f"/tenants/{tid}/alerts", params={"status": "all"}))
            if a["kind"] in ("root-expiring", "root-expired")]


def _publish(t: TenantSetup, version: int, expires_in: int) -> None:
    root = make_root(t.tenant, version, owners=[t.owner_key], approvers=[t.approver_key],
                     technicians=[t.tech_key], expires_in=expires_in)
    ok(t.owner.http.post(f"/tenants/{t.id}/roots",
                         json={"envelope": sign_root(root, [t.owner_key])}))


def _live(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((a["kind"], a["severity"], a["subject"]) for a in alerts
                  if a["status"] != "resolved")


def test_root_expiry_alerts_at_90_30_7_days_and_after(server: RunningServer) -> None:
    with http_sink() as hook:
        owner = bootstrap_owner(server)
        t = setup_tenant(owner, "Acme")  # root v1: a year to live, no alert
        ok(owner.http.post(f"/tenants/{t.id}/notify-targets", json={
            "kind": "webhook", "name": "on-call", "url": f"{hook.base}/hook",
            "min_severity": "warning"}))
        assert _expiry_alerts(owner, t.id) == []

        _publish(t, 2, 100 * DAY)  # beyond 90 days: still nothing
        assert _expiry_alerts(owner, t.id) == []

        _publish(t, 3, 60 * DAY)
        [(kind, sev, subject)] = _live(_expiry_alerts(owner, t.id))
        assert (kind, sev) == ("root-expiring", "warning")
        assert "root v3 of Acme expires in 59 days" in subject
        wait_for(lambda: any(json.loads(c.body)["kind"] == "root-expiring" for c in hook.received),
                 "the 90-day warning never reached the webhook")

        _publish(t, 4, 20 * DAY)  # the 30-day stage replaces the 90-day one
        alerts = _expiry_alerts(owner, t.id)
        assert [x[2] for x in _live(alerts)] == ["root v4 of Acme expires in 19 days"]
        assert [a["resolved_by"] for a in alerts if "v3" in a["subject"]] == ["rampart"]

        _publish(t, 5, 5 * DAY)
        [(kind, sev, subject)] = _live(_expiry_alerts(owner, t.id))
        assert (kind, sev) == ("root-expiring", "critical") and "expires in 4 days" in subject
        wait_for(lambda: sum(json.loads(c.body)["kind"] == "root-expiring"
                             for c in hook.received) >= 3, "not every stage reached the webhook")

        # Six days later the root has expired: the sweep at server start says so.
        shift_clock(server, [owner, t.approver, t.tech], 6 * DAY)
        owner.login()
        deadline = time.monotonic() + 30
        while not any(a["kind"] == "root-expired" for a in _expiry_alerts(owner, t.id)):
            assert time.monotonic() < deadline, "no root-expired alert after the clock passed expiry"
            time.sleep(0.2)
        [(kind, sev, subject)] = _live(_expiry_alerts(owner, t.id))
        assert (kind, sev) == ("root-expired", "critical") and "agents refuse every job" in subject
        before = len(_expiry_alerts(owner, t.id))
        server.stop()  # each stage is told once: another sweep opens nothing new
        server.start()
        owner.login()
        time.sleep(1)
        assert len(_expiry_alerts(owner, t.id)) == before

        # An owner renews (a new root, a year to live): every expiry alert is resolved.
        _publish(t, 6, 365 * DAY + 6 * DAY)
        alerts = _expiry_alerts(owner, t.id)
        assert _live(alerts) == [] and len(alerts) == 4
        assert {a["resolved_by"] for a in alerts} == {"rampart"}
