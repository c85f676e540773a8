"""Local accounts and their last login (requirement S2: dormant local accounts are reported).

Accounts come from /etc/passwd (never NSS, so a directory service cannot
slow or flood the collector): root, every uid at or above ``UID_MIN`` of
/etc/login.defs (default 1000) except the overflow ids, and every account with
a login shell. The password state comes from /etc/shadow when readable.

The last login is the latest of every source present:

* /var/log/lastlog: sparse binary file, one ``struct lastlog`` per uid
  (``ll_time``, ``ll_line[32]``, ``ll_host[256]``);
* /var/lib/lastlog/lastlog2.db: util-linux lastlog2 (SQLite, Debian 13+);
* /var/log/wtmp: ``struct utmp`` records, read from the end (bounded);
* /var/lib/wtmpdb/wtmp.db: wtmpdb (SQLite).

``ll_time``/``ut_tv`` are 32-bit on x86 (glibc ``__WORDSIZE_TIME64_COMPAT32``),
making 292-byte lastlog and 384-byte utmp records, and 64-bit on AArch64,
RISC-V and LoongArch (296 and 400 bytes). No source, or no entry: None.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from rampart.wire.inventory import DEFAULT_LIMITS, InventoryLimits, User, canonical, user_key

from ._util import clip, try_read_text

NO_LOGIN_SHELLS = frozenset({"nologin", "false", "true", "sync", "halt", "shutdown"})
OVERFLOW_UIDS = frozenset({65534, 4294967294, 4294967295})
USER_PROCESS = 7
WTMPDB_USER_PROCESS = 3
_TIME64_MACHINES = frozenset({"aarch64", "arm64", "riscv64", "loongarch64"})


@dataclass(frozen=True, slots=True)
class Layout:
    """Binary record layout of lastlog and utmp on one architecture."""

    lastlog: struct.Struct
    utmp_size: int
    utmp_time: struct.Struct  # ut_tv.tv_sec at ``utmp_time_offset``
    utmp_time_offset: int


COMPAT32 = Layout(struct.Struct("<i32s256s"), 384, struct.Struct("<i"), 340)
TIME64 = Layout(struct.Struct("<q32s256s"), 400, struct.Struct("<q"), 344)


def layout_for(machine: str) -> Layout:
    return TIME64 if machine in _TIME64_MACHINES else COMPAT32


@dataclass(frozen=True, slots=True)
class Login:
    time: int
    tty: str = ""
    host: str = ""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_lastlog(data: bytes, uids: Iterable[int], layout: Layout = COMPAT32) -> dict[int, Login]:
    """uid -> last login from the bytes of a lastlog file; absent, zero or negative entries skipped."""
    rec = layout.lastlog
    out: dict[int, Login] = {}
    for uid in uids:
        start = uid * rec.size
        if uid < 0 or start + rec.size > len(data):
            continue
        when, line, host = rec.unpack_from(data, start)
        if when > 0:
            out[uid] = Login(when, clip(_cstr(line)), clip(_cstr(host)))
    return out


def read_lastlog(path: str, uids: Iterable[int], layout: Layout) -> dict[int, Login]:
    """As :func:`parse_lastlog`, reading only the records of ``uids`` (the file is sparse and may be huge)."""
    rec = layout.lastlog
    out: dict[int, Login] = {}
    try:
        with open(path, "rb") as f:
            for uid in uids:
                f.seek(uid * rec.size)
                chunk = f.read(rec.size)
                entry = parse_lastlog(chunk, [0], layout).get(0) if len(chunk) == rec.size else None
                if entry is not None:
                    out[uid] = entry
    except OSError:
        return {}
    return out


def parse_wtmp(data: bytes, layout: Layout = COMPAT32) -> dict[str, Login]:
    """user -> latest USER_PROCESS record in utmp/wtmp bytes; a partial leading record is skipped."""
    size = layout.utmp_size
    out: dict[str, Login] = {}
    start = len(data) % size
    for off in range(start, len(data) - size + 1, size):
        (ut_type,) = struct.unpack_from("<h", data, off)
        if ut_type != USER_PROCESS:
            continue
        (when,) = layout.utmp_time.unpack_from(data, off + layout.utmp_time_offset)
        user = _cstr(data[off + 44:off + 76])
        if not user or when <= 0:
            continue
        if user not in out or when >= out[user].time:
            tty, host = _cstr(data[off + 8:off + 40]), _cstr(data[off + 76:off + 332])
            out[user] = Login(when, clip(tty), clip(host))
    return out


def read_wtmp(path: str, layout: Layout, max_bytes: int) -> dict[str, Login]:
    """Parse the last ``max_bytes`` (whole records) of a wtmp file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            keep = min(size, max_bytes - max_bytes % layout.utmp_size)
            f.seek(size - keep)
            data = f.read(keep)
    except OSError:
        return {}
    return parse_wtmp(data, layout)


def _sqlite_rows(path: str, query: str) -> list[tuple[object, ...]]:
    if not os.path.isfile(path):
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        return list(db.execute(query).fetchmany(100_000))
    except sqlite3.Error:
        return []
    finally:
        db.close()


def read_lastlog2(path: str) -> dict[str, Login]:
    """user -> last login from a util-linux lastlog2 database (Time in seconds)."""
    out: dict[str, Login] = {}
    for name, when, tty, host in _sqlite_rows(path, "SELECT Name, Time, TTY, RemoteHost FROM Lastlog2"):
        if isinstance(name, str) and isinstance(when, int) and when > 0:
            out[name] = Login(when, clip(str(tty or "")), clip(str(host or "")))
    return out


def read_wtmpdb(path: str) -> dict[str, Login]:
    """user -> latest login in a wtmpdb database (Login in microseconds)."""
    out: dict[str, Login] = {}
    query = ("SELECT User, Login, TTY, RemoteHost FROM wtmp w WHERE Type = 3 AND Login = "
             "(SELECT MAX(Login) FROM wtmp WHERE Type = 3 AND User = w.User)")
    for name, when, tty, host in _sqlite_rows(path, query):
        if isinstance(name, str) and isinstance(when, int) and when > 0:
            out[name] = Login(when // 1_000_000, clip(str(tty or "")), clip(str(host or "")))
    return out


def uid_min(login_defs_text: str) -> int:
    for line in login_defs_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
            return int(parts[1])
    return 1000


PasswordState = Literal["set", "locked", "empty", "unknown"]
_PASSWORD_STATES: dict[str, PasswordState] = {"set": "set", "locked": "locked", "empty": "empty"}


def parse_shadow(text: str) -> dict[str, str]:
    """user -> "set" | "locked" | "empty" from /etc/shadow."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 2 or not parts[0]:
            continue
        pw = parts[1]
        out[parts[0]] = "empty" if pw == "" else "locked" if pw[0] in "!*" else "set"
    return out


def has_login_shell(shell: str) -> bool:
    return bool(shell) and os.path.basename(shell) not in NO_LOGIN_SHELLS


def parse_passwd(text: str, min_uid: int) -> list[tuple[str, int, int, str, str]]:
    """(name, uid, gid, home, shell) of the accounts reported; bad lines skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) != 7 or not parts[0] or not parts[2].isdigit() or not parts[3].isdigit():
            continue
        name, uid, gid, home, shell = parts[0], int(parts[2]), int(parts[3]), parts[5], parts[6]
        if uid >= 1 << 32 or gid >= 1 << 32 or len(name) > 256:
            continue
        login = has_login_shell(shell)
        if uid == 0 or login or (uid >= min_uid and uid not in OVERFLOW_UIDS):
            out.append((name, uid, gid, home, shell))
    return out


def latest(*sources: Login | None) -> Login | None:
    found = [s for s in sources if s is not None]
    return max(found, key=lambda s: s.time) if found else None


def build_users(accounts: list[tuple[str, int, int, str, str]], shadow: Mapping[str, str] | None,
                by_uid: Mapping[int, Login], *by_name: Mapping[str, Login]) -> list[User]:
    out = []
    for name, uid, gid, home, shell in accounts:
        last = latest(by_uid.get(uid), *(m.get(name) for m in by_name))
        state = "unknown" if shadow is None else shadow.get(name, "unknown")
        out.append(User(
            name=name, uid=uid, gid=gid, home=home[:4096], shell=shell[:4096],
            login_shell=has_login_shell(shell), password_state=_PASSWORD_STATES.get(state, "unknown"),
            last_login=last.time if last and last.time < 1 << 40 else None,
            last_login_from=last.host if last else "", last_login_tty=last.tty if last else "",
        ))
    return canonical(out, user_key)


def collect_users(limits: InventoryLimits = DEFAULT_LIMITS, *, root: str = "", machine: str | None = None,
                  ) -> tuple[list[User], bool]:
    """Reported accounts in canonical order; the flag says ``limits.max_users`` cut the list.

    ``root`` prefixes every path (tests point it at a crafted tree).
    """
    layout = layout_for(machine or os.uname().machine)
    accounts = parse_passwd(try_read_text(f"{root}/etc/passwd", 16 << 20) or "",
                            uid_min(try_read_text(f"{root}/etc/login.defs") or ""))
    shadow_text = try_read_text(f"{root}/etc/shadow", 16 << 20)
    shadow = parse_shadow(shadow_text) if shadow_text is not None else None
    uids = sorted({a[1] for a in accounts})
    users = build_users(
        accounts, shadow,
        read_lastlog(f"{root}/var/log/lastlog", uids, layout),
        read_lastlog2(f"{root}/var/lib/lastlog/lastlog2.db"),
        read_wtmp(f"{root}/var/log/wtmp", layout, limits.max_wtmp_bytes),
        read_wtmpdb(f"{root}/var/lib/wtmpdb/wtmp.db"),
    )
    return users[: limits.max_users], len(users) > limits.max_users
