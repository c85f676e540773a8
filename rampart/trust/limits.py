"""Typed limits for every size, count and duration an attacker controls.

Every decoder in :mod:`rampart.trust` checks these before doing work, so a
hostile input costs bounded memory and time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 1 << 20
    max_signatures: int = 32
    max_keys: int = 256
    max_devices: int = 10_000
    #: Devices a committed device set (a Merkle root and count, docs/trust-chain.md) may name.
    max_set_devices: int = 1_000_000
    max_capabilities: int = 32
    max_args: int = 64
    max_arg_bytes: int = 4096
    max_payloads: int = 16
    max_paths: int = 32
    max_ports: int = 64
    max_string: int = 4096
    max_reason: int = 2048
    max_output_bytes: int = 256 * 1024
    max_job_lifetime_s: int = 7 * 24 * 3600
    max_job_timeout_s: int = 24 * 3600
    #: A repeating script job (a script check): its interval bounds and how long it may repeat.
    min_repeat_every_s: int = 1
    max_repeat_every_s: int = 7 * 24 * 3600
    max_repeat_lifetime_s: int = 90 * 24 * 3600
    clock_skew_s: int = 300
    max_root_versions_per_update: int = 1024


DEFAULT_LIMITS = Limits()
