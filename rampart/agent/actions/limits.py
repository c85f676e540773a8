"""Bounds and defaults of the job handlers (output, result document, restore samples, the reboot
command) and the agent's logger."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("rampart.agent")

#: Bytes of stdout and stderr kept from a contained job (each).
MAX_OUTPUT = 64 * 1024
#: Largest JSON result document a root action puts in its receipt.
MAX_DOC_BYTES = 60 * 1024
#: Longest one-line error (stderr, detail).
MAX_ERROR_CHARS = 1000
JOB_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANAGERS = ("auto", "apt", "dnf", "none")
DEFAULT_RESTORE_SAMPLES = 3
MAX_RESTORE_SAMPLES = 64
PASSPHRASE_FILE = "borg-passphrase"  # noqa: S105 - a file name, not a secret
#: A reboot a minute from now, so the job's receipt goes out first.
DEFAULT_REBOOT: tuple[str, ...] = ("/sbin/shutdown", "-r", "+1", "Rampart: reboot requested under a grant")
_MODE = re.compile(r"0?([0-7]{3})")
_FILEJOB_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                 "from rampart.agent._filejob import main; sys.exit(main())")
