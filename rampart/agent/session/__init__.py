"""Remote support sessions on the device (docs/design/remote-sessions.md).

:mod:`.proc` (the contained pty or pipe process), :mod:`.recording` (asciicast v2),
:mod:`.notice` (wall, the local session log, local consent), :mod:`.runner` (one
session from its accept to its receipt) and :mod:`.manager` (the live sessions of
the agent's connection, recording uploads).
"""
