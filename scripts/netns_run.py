"""Bring up the loopback interface of a fresh network namespace, then run a command in it.

``unshare --net`` gives a namespace whose ``lo`` is down; the tests listen
on 127.0.0.1 only, so loopback is all they need. Used by ./run-tests to run
its two passes side by side without sharing a port space.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifr)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


if __name__ == "__main__":
    loopback_up()
    if len(sys.argv) < 2:
        sys.exit("usage: netns_run.py COMMAND [ARG...]")
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 - run-tests passes its own command
