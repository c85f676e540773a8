"""The contained half of a ``file`` job: deploy one file from inside the job's sandbox.

:mod:`rampart.agent.actions` starts this as the job's program in the
contained child (:mod:`rampart.agent.containment`: Landlock writes only beneath
the job's declared paths, no new privileges, the agent's state unreadable) as
the agent's user; the engine (:func:`rampart.agent.filedeploy.deploy_file`)
adds the digest check, the symlink-proof walk from the device's write root and
the atomic replacement. A file that is replaced keeps its owner and group; a
new file belongs to the agent's user.

Protocol: ``argv[1]`` is one JSON object ``{"payload", "sha256", "dest", "mode",
"roots"}``. Exit 0 with the result document on stdout, or exit 1 with one line
on stderr (and a document naming the error on stdout). Only the standard
library and :mod:`rampart.agent.filedeploy` are imported: the interpreter runs
under the job's resource limits.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Sequence

from rampart.agent.filedeploy import DeployError, FileDigestMismatchError, PathRefusedError, deploy_file

#: Largest spec accepted on the command line.
MAX_SPEC_CHARS = 64 * 1024


def _fail(kind: str, message: str) -> int:
    line = " ".join(message.split())[:1000]
    sys.stdout.write(json.dumps({"schema": 1, "action": "file", "error": kind, "message": line}) + "\n")
    sys.stderr.write(line + "\n")
    return 1


def _owner_of(dest: str) -> tuple[int, int] | None:
    """(uid, gid) of the regular file being replaced, to keep; None for a new file.

    Only metadata: deploy_file itself refuses a destination that is a symlink or not a regular file.
    """
    try:
        st = os.lstat(dest)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or os.geteuid() != 0:
        return None
    return st.st_uid, st.st_gid


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or len(args[0]) > MAX_SPEC_CHARS:
        return _fail("usage", "expected one JSON spec argument")
    try:
        spec = json.loads(args[0])
        payload, sha256, dest = str(spec["payload"]), str(spec["sha256"]), str(spec["dest"])
        mode = spec["mode"]
        roots = [str(r) for r in spec["roots"]]
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise TypeError("mode must be an integer")
    except (ValueError, KeyError, TypeError) as exc:
        return _fail("usage", f"bad spec: {exc}")
    try:
        with open(payload, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _fail("io", f"cannot read the payload: {exc.strerror}")
    owner = _owner_of(dest)
    try:
        res = deploy_file(data, sha256, dest, mode, allowed_roots=roots, owner=owner)
    except FileDigestMismatchError as exc:
        return _fail("digest-mismatch", str(exc))
    except PathRefusedError as exc:
        return _fail("path-refused", str(exc))
    except DeployError as exc:
        return _fail("io", str(exc))
    sys.stdout.write(json.dumps({"schema": 1, "action": "file", "result": {
        "path": res.path, "sha256": res.sha256, "size": res.size, "mode": f"{res.mode:04o}",
        "replaced": res.replaced, "backup": res.backup, "previous_sha256": res.previous_sha256,
    }}) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - started through the bootstrap line
    sys.exit(main())
