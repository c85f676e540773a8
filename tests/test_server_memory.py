"""The server gives the heap a burst freed back to the system (rampart.server.memory)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

from rampart.server.memory import TrimAfterBurst

#: Run in a fresh interpreter: a burst of 4 KiB buffers (each from C malloc) of which one in a
#: hundred stays alive, so the freed pages sit between live ones and glibc keeps them resident.
_BURST = textwrap.dedent("""
    import json, sys
    from rampart.server.memory import release_free_memory

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    before = rss_mib()
    burst = [bytearray(4096) for _ in range(50_000)]
    kept = burst[::100]
    del burst
    freed = rss_mib()
    ok = release_free_memory()
    print(json.dumps({"before": before, "freed": freed, "trimmed": rss_mib(), "ok": ok, "kept": len(kept)}))
""")


def test_a_burst_freed_heap_goes_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=120,
                         check=True)
    got = json.loads(out.stdout)
    assert got["ok"] is True  # glibc here
    burst = got["freed"] - got["before"]
    assert burst > 150, got  # ~195 MiB were freed but stayed resident
    assert got["trimmed"] - got["before"] < 0.2 * burst, got


def test_trim_runs_once_after_a_burst_and_a_quiet_spell_and_not_for_a_trickle() -> None:
    calls: list[int] = []

    async def scenario() -> list[int]:
        t = TrimAfterBurst(min_units=100, quiet_s=0.2, trim=lambda: calls.append(1) is None)
        for _ in range(9):  # a trickle below the minimum: never trimmed
            t.note(10)
        await asyncio.sleep(0.4)
        seen = [len(calls)]
        for _ in range(10):  # a burst: units keep coming, the trim waits for the quiet spell
            t.note(50)
            await asyncio.sleep(0.05)
        seen.append(len(calls))
        await asyncio.sleep(0.5)
        seen.append(len(calls))
        seen.append(t.trims)
        t.note(10)  # counting starts again after a trim
        await asyncio.sleep(0.4)
        seen.append(len(calls))
        return seen

    assert asyncio.run(scenario()) == [0, 0, 1, 1, 1]


def test_a_failing_trim_is_logged_and_never_raises() -> None:
    def broken() -> bool:
        raise OSError("no")

    async def scenario() -> int:
        t = TrimAfterBurst(min_units=1, quiet_s=0.01, trim=broken)
        t.note(5)
        await asyncio.sleep(0.3)
        return t.trims

    assert asyncio.run(scenario()) == 0
