"""Fan-out and delivery with a real server and real agent processes (T15).

Every job reaches every connected target; an agent offline when the job was
made gets it when it reconnects; a server killed with SIGKILL in the middle
of a fan-out loses nothing: every job runs exactly once per target and every
receipt is stored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from harness.fleet import Fleet, make_fleet
from harness.operators import approved_grant
from harness.server import RunningServer

pytestmark = pytest.mark.store

RECORD = b'echo "$RAMPART_DEVICE_ID $RAMPART_JOB_ID" >> %s/runs.log\n'


@pytest.fixture
def fleet20(server: RunningServer) -> Iterator[Fleet]:
    yield from make_fleet(server, 20)


@pytest.fixture
def fleet3(server: RunningServer) -> Iterator[Fleet]:
    yield from make_fleet(server, 3)


def test_T15_server_killed_during_fanout_to_20_agents_loses_nothing(fleet20: Fleet) -> None:
    f = fleet20
    halves = [f.devices[:10], f.devices[10:]]  # one approver may grant 10 devices
    grants = [approved_grant(f.tenant, h) for h in halves]
    script = RECORD % str(f.scratch).encode()
    jobs = [f.post_job(g, h, script) for g, h in zip(grants, halves, strict=True) for _ in range(2)]
    f.server.stop(kill=True)  # SIGKILL while the fan-out is in flight
    time.sleep(0.5)
    f.server.start()
    f.reopen_clients()
    done = f.wait_done(jobs)
    runs = f.runs()
    expected = {(d, j) for j, h in zip(jobs, [halves[0], halves[0], halves[1], halves[1]], strict=True)
                for d in h}
    assert set(runs) == expected, [t["receipt"] for j in done.values() for t in j["targets"]][:2]
    assert all(c == 1 for c in runs.values()), [k for k, c in runs.items() if c > 1]
    for j in done.values():
        for t in j["targets"]:
            assert t["receipt"]["outcome"] == "ran" and t["receipt"]["exit_code"] == 0, t


def test_T15_offline_agent_gets_its_job_when_it_reconnects(fleet3: Fleet) -> None:
    f = fleet3
    grant = approved_grant(f.tenant, f.devices)
    offline = f.agents[2]
    offline.stop()
    job = f.post_job(grant, f.devices, RECORD % str(f.scratch).encode())
    time.sleep(1.0)
    assert (offline.device_id, job) not in f.runs()
    offline.start()
    f.wait_done([job])
    assert f.runs() == Counter({(d, job): 1 for d in f.devices})


def test_T15_agents_restarting_never_run_a_job_twice(fleet3: Fleet) -> None:
    f = fleet3
    grant = approved_grant(f.tenant, f.devices)
    job = f.post_job(grant, f.devices, RECORD % str(f.scratch).encode())
    f.wait_done([job])
    for a in f.agents:  # reconnecting agents are offered nothing new, and replays are refused
        a.kill9()
        a.start()
    f.wait_connected()
    f.server.restart(kill=True)
    f.reopen_clients()
    f.wait_connected()
    time.sleep(1.0)
    assert f.runs() == Counter({(d, job): 1 for d in f.devices})
