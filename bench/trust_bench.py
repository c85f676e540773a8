"""Benchmark: how long an agent takes to verify a typical job.

A typical job: pinned root, a grant with 2 approver signatures, the job, an
inclusion proof in a log of 1,000,000 entries, and a consistency proof from
the checkpoint the agent saw before. Measures the median of
``rampart.trust.authorize_job`` (the agent's one entry point) over many runs;
target: at most 0.5 ms on a 2-core machine.

    PYTHONPATH=. python bench/trust_bench.py [log_size]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.tenant import Tenant  # noqa: E402

from rampart import trust  # noqa: E402
from rampart.trust import merkle  # noqa: E402

RUNS = 2000


def run(log_size: int = 1_000_000) -> dict[str, Any]:
    t = Tenant()
    t.tree = merkle.MerkleTree.from_leaf_hashes(
        hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(log_size - 1)
    )
    previous = t.checkpoint()
    prev_cp = trust.decode_payload(trust.decode_envelope(previous).payload, trust.Checkpoint)
    device = "dev-" + "a" * 24
    grant = t.grant([device, "dev-" + "b" * 24], approvers=t.approvers[:2])
    script = b"#!/bin/sh\napt-get -y upgrade\n" * 20
    job = t.job(grant, [device], script, writes=("/srv/app",))
    index = t.append(job)
    cp = t.checkpoint()
    evidence = trust.LogEvidence(
        checkpoint=cp, index=index, inclusion=tuple(t.tree.inclusion_proof(index)),
        consistency=tuple(t.tree.consistency_proof(prev_cp.size)),
    )
    root = trust.pin_root(t.roots[0], expected_sha256=t.root_sha256, now=int(time.time()))
    policy = trust.DevicePolicy(device_id=device, write_roots=("/srv",),
                                protected_paths=("/var/lib/rampart-agent",))
    now = int(time.time())

    def once() -> trust.Authorization:
        return trust.authorize_job(root=root, grant=grant, job=job, payloads={"script": script},
                                   log=evidence, last_checkpoint=prev_cp, device=policy, now=now,
                                   seen_nonces=frozenset())

    once()
    samples = []
    for _ in range(RUNS):
        t0 = time.perf_counter_ns()
        once()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "benchmark": "agent_verify_typical_job",
        "log_size": t.tree.size,
        "grant_approvers": 2,
        "runs": RUNS,
        "median_ms": round(statistics.median(samples) / 1e6, 4),
        "p95_ms": round(samples[int(RUNS * 0.95)] / 1e6, 4),
        "target_ms": 0.5,
        "meets_target": statistics.median(samples) / 1e6 <= 0.5,
    }


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1_000_000
    print(json.dumps(run(n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
