r"""Rampart: an RMM whose endpoints refuse what the responsible people did not sign.

Layering (arrows point down only)::

    cli/  console/  server/  agent/
                \     |     /
                   trust/      (pure, I/O-free; imports none of the above)
"""

__version__ = "0.1.0"
