"""Benchmark of rampart.trust.merkle at log scale (default 1,000,000 entries).

Measures the append rate, the median time to serve an inclusion proof, a
consistency proof and a historical root at size n, the median time to verify
each kind of proof, and memory per entry (tracemalloc and RSS). Prints one
JSON object per metric on stdout and writes no files.

    PYTHONPATH=. python bench/merkle_bench.py [n]
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from rampart.trust.merkle import MerkleTree, verify_consistency, verify_inclusion

SAMPLES = 2000
SEED = 9162


def _leaf_hashes(n: int) -> list[bytes]:
    sha = hashlib.sha256
    return [sha(b"\x00" + i.to_bytes(8, "big")).digest() for i in range(n)]


def _median_us(fn: Callable[[int], object], args: list[int]) -> float:
    clock = time.perf_counter_ns
    times = []
    for a in args:
        t0 = clock()
        fn(a)
        times.append(clock() - t0)
    return statistics.median(times) / 1000.0


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def run(n: int = 1_000_000) -> dict[str, Any]:
    """Build trees of ``n`` entries and return the measured metrics."""
    if n < 2:
        raise ValueError("n must be at least 2")
    rng = random.Random(SEED)
    hashes = _leaf_hashes(n)
    gc.collect()

    # Append rate, one entry at a time (the server's steady state).
    rss0 = _rss_bytes()
    tree = MerkleTree()
    append = tree.append
    t0 = time.perf_counter()
    for hsh in hashes:
        append(hsh)
    append_s = time.perf_counter() - t0
    rss1 = _rss_bytes()

    # Bulk build (start-up from storage), and its memory under tracemalloc.
    t0 = time.perf_counter()
    bulk = MerkleTree.from_leaf_hashes(hashes)
    extend_s = time.perf_counter() - t0
    assert bulk.root() == tree.root()
    del bulk
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    traced = MerkleTree.from_leaf_hashes(hashes)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced
    gc.collect()

    indices = [rng.randrange(n) for _ in range(SAMPLES)]
    old_sizes = [rng.randrange(1, n) for _ in range(SAMPLES)]
    hist_sizes = [rng.randrange(1, n + 1) for _ in range(SAMPLES)]
    root = tree.root()
    incl = {i: tree.inclusion_proof(i) for i in indices}
    cons = {m: tree.consistency_proof(m) for m in old_sizes}
    old_roots = {m: tree.root(m) for m in old_sizes}

    def do_verify_inclusion(i: int) -> None:
        verify_inclusion(leaf_hash=hashes[i], index=i, tree_size=n, proof=incl[i], root=root)

    def do_verify_consistency(m: int) -> None:
        verify_consistency(
            old_size=m, new_size=n, old_root=old_roots[m], new_root=root, proof=cons[m]
        )

    results: dict[str, Any] = {
        "n": n,
        "append_entries_per_s": round(n / append_s),
        "append_total_s": round(append_s, 3),
        "extend_entries_per_s": round(n / extend_s),
        "inclusion_proof_median_us": round(_median_us(tree.inclusion_proof, indices), 2),
        "consistency_proof_median_us": round(_median_us(tree.consistency_proof, old_sizes), 2),
        "historical_root_median_us": round(_median_us(tree.root, hist_sizes), 2),
        "verify_inclusion_median_us": round(_median_us(do_verify_inclusion, indices), 2),
        "verify_consistency_median_us": round(_median_us(do_verify_consistency, old_sizes), 2),
        "mean_inclusion_proof_len": round(statistics.mean(len(p) for p in incl.values()), 2),
        "mean_consistency_proof_len": round(statistics.mean(len(p) for p in cons.values()), 2),
        "tracemalloc_bytes_per_entry": round((current - base) / n, 2),
        "tracemalloc_peak_bytes_per_entry": round((peak - base) / n, 2),
        "rss_bytes_per_entry": (
            round((rss1 - rss0) / n, 2) if rss0 is not None and rss1 is not None else None
        ),
    }
    return results


_UNITS = {
    "n": "entries",
    "append_entries_per_s": "entries/s",
    "append_total_s": "s",
    "extend_entries_per_s": "entries/s",
    "mean_inclusion_proof_len": "hashes",
    "mean_consistency_proof_len": "hashes",
}


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 1_000_000
    t0 = time.perf_counter()
    results = run(n)
    wall = time.perf_counter() - t0
    for metric, value in results.items():
        unit = _UNITS.get(metric, "us" if metric.endswith("_us") else "bytes/entry")
        line = {"bench": "merkle", "metric": metric, "value": value, "unit": unit, "n": n}
        print(json.dumps(line), flush=True)
    print(
        json.dumps(
            {"bench": "merkle", "metric": "wall_s", "value": round(wall, 2), "unit": "s", "n": n}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
