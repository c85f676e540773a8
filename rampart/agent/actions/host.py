"""What a handler sees of the agent: the JobHost and HostConfig protocols."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .policy import ActionPolicy

# --- what a handler sees of the agent ------------------------------------------------------------------


class HostConfig(Protocol):
    """The device's local policy as handlers read it (:class:`rampart.agent.device_config.DeviceConfig`)."""

    @property
    def write_roots(self) -> tuple[str, ...]: ...
    @property
    def job_user(self) -> str | None: ...
    @property
    def require_containment(self) -> str: ...
    @property
    def actions(self) -> ActionPolicy: ...


class JobHost(Protocol):
    """What a handler sees of the agent (:class:`rampart.agent.core.Agent` is one).

    A protocol, so this module never imports the agent core that calls it.
    """

    @property
    def device_id(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def config(self) -> HostConfig: ...
    @property
    def inventory_trigger(self) -> Callable[[], bool] | None: ...
