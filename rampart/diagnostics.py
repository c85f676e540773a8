"""Thread stacks on request: how to see where a hung Rampart process waits.

With ``RAMPART_STACKS_ON_USR1=1`` in its environment, a Rampart process (server,
agent or CLI) writes the Python stack of every thread to its standard error when
it receives SIGUSR1, and goes on running. Without the variable nothing is
registered and SIGUSR1 keeps its default. The test suite sets it, and signals
the processes a failing test left running, so that a CI failure shows where each
one waited (tests/harness/logs.py).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

__all__ = ["ENV", "stacks_on_request"]

ENV = "RAMPART_STACKS_ON_USR1"


def stacks_on_request() -> None:
    """Register the SIGUSR1 stack dump when the environment asks for it; otherwise do nothing."""
    if os.environ.get(ENV) != "1" or not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (ValueError, OSError, AttributeError):  # no usable stderr (closed, or not a file)
        return
