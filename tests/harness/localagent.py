"""An enrolled agent state made in place, without a server (for in-process agent tests and benches)."""

from __future__ import annotations

import json
from pathlib import Path

from rampart import trust
from rampart.agent.core import Agent
from rampart.agent.state import KEY_FILE, POLICY_FILE, AgentState, ensure_private_dir
from rampart.private_files import write_private_atomic
from rampart.trust import DeviceKey

from .tenant import Tenant


def local_agent(state_dir: Path, tenant: Tenant, key: DeviceKey | None = None) -> Agent:
    """What ``rampart-agent enroll`` writes (key, policy, pinned root, identity), then the agent."""
    ensure_private_dir(state_dir)
    key = key or DeviceKey.generate()
    write_private_atomic(state_dir / KEY_FILE, trust.encode_plain_private_key(key), 0o600)
    policy = {"write_roots": [str(state_dir.parent)]}
    write_private_atomic(state_dir / POLICY_FILE, json.dumps(policy).encode())
    state = AgentState(state_dir)
    with state.transaction() as db:
        state.save_root(db, 1, tenant.roots[0])
        state.set_many(db, {"device_id": trust.device_id_for(key.public),  # type: ignore[arg-type]
                            "tenant": tenant.id, "enrolled": "1"})
    state.close()
    return Agent(state_dir)
