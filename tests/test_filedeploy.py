"""File deployment from a signed job (issue 6, T8, T9): digest first, allowed roots, no symlinks, atomic."""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from pathlib import Path

import pytest

from rampart.agent.filedeploy import (
    BACKUP_SUFFIX,
    DeployError,
    FileDigestMismatchError,
    PathRefusedError,
    deploy_file,
    restore_previous,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(allowed root, a directory outside it holding a file the attacker wants overwritten)."""
    root = tmp_path / "allowed"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious\n")
    return root, outside


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in sorted(path.rglob("*"))}


def test_deploys_atomically_with_mode_and_keeps_the_previous_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    dest = root / "etc" / "app.conf"
    first = deploy_file(b"v1\n", sha(b"v1\n"), dest, 0o640, allowed_roots=[root])
    assert (first.replaced, first.backup, first.previous_sha256, first.size) == (False, None, None, 3)
    assert dest.read_bytes() == b"v1\n" and (dest.stat().st_mode & 0o7777) == 0o640
    second = deploy_file(b"v2\n", sha(b"v2\n"), dest, 0o600, allowed_roots=[root])
    assert second.replaced and second.previous_sha256 == sha(b"v1\n")
    backup = root / "etc" / f".app.conf{BACKUP_SUFFIX}"
    assert second.backup == str(backup)
    assert backup.read_bytes() == b"v1\n" and (backup.stat().st_mode & 0o7777) == 0o640
    assert dest.read_bytes() == b"v2\n" and (dest.stat().st_mode & 0o7777) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == [f".app.conf{BACKUP_SUFFIX}", "app.conf"]
    assert restore_previous(dest, allowed_roots=[root]) == sha(b"v1\n")
    assert dest.read_bytes() == b"v1\n" and not backup.exists()
    with pytest.raises(DeployError):
        restore_previous(dest, allowed_roots=[root])


def test_T8_tampered_payload_changes_nothing(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    dest = root / "etc" / "app.conf"
    deploy_file(b"good\n", sha(b"good\n"), dest, 0o644, allowed_roots=[root])
    before = snapshot(root)
    with pytest.raises(FileDigestMismatchError):
        deploy_file(b"evil\n", sha(b"good\n"), dest, 0o644, allowed_roots=[root])
    with pytest.raises(FileDigestMismatchError):  # digest check comes before the directory is even made
        deploy_file(b"evil\n", sha(b"good\n"), root / "new" / "dir" / "f", 0o644, allowed_roots=[root],
                    make_parents=True)
    for bad in ("", "0" * 63, "G" * 64, sha(b"good\n").upper()):
        with pytest.raises(FileDigestMismatchError):
            deploy_file(b"good\n", bad, dest, 0o644, allowed_roots=[root])
    assert snapshot(root) == before


@pytest.mark.parametrize("dest", [
    "{root}/../outside/victim", "{root}/etc/../../outside/victim", "{root}/./etc/x", "{root}//etc/x",
    "{root}/etc/", "{root}", "{root}2/x", "relative/path", "{outside}/victim", "/etc/passwd",
    "{root}/etc/x\0y",
])
def test_T9_traversal_and_paths_outside_the_roots_are_refused(tree: tuple[Path, Path], dest: str) -> None:
    root, outside = tree
    before_root, before_out = snapshot(root), snapshot(outside)
    with pytest.raises(PathRefusedError):
        deploy_file(b"x", sha(b"x"), dest.format(root=root, outside=outside), 0o644, allowed_roots=[root])
    assert snapshot(root) == before_root and snapshot(outside) == before_out


def test_T9_symlinked_destination_or_parent_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "etc" / "link").symlink_to(outside / "victim")
    (root / "sub").symlink_to(outside)
    (root / "dir").mkdir()
    os.mkfifo(root / "etc" / "fifo")
    before = snapshot(outside)
    for dest in (root / "etc" / "link", root / "sub" / "victim", root / "sub" / "new", root / "dir",
                 root / "etc" / "fifo"):
        with pytest.raises(PathRefusedError):
            deploy_file(b"pwned\n", sha(b"pwned\n"), dest, 0o644, allowed_roots=[root], make_parents=True)
    assert snapshot(outside) == before and (outside / "victim").read_bytes() == b"precious\n"
    assert (root / "etc" / "link").is_symlink()


def test_missing_parents_need_make_parents_and_special_bits_are_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    dest = root / "opt" / "tool" / "bin" / "run"
    with pytest.raises(PathRefusedError):
        deploy_file(b"#!/bin/sh\n", sha(b"#!/bin/sh\n"), dest, 0o755, allowed_roots=[root])
    assert not (root / "opt").exists()
    with pytest.raises(PathRefusedError):
        deploy_file(b"#!/bin/sh\n", sha(b"#!/bin/sh\n"), dest, 0o4755, allowed_roots=[root],
                    make_parents=True)
    done = deploy_file(b"#!/bin/sh\n", sha(b"#!/bin/sh\n"), dest, 0o755, allowed_roots=[root],
                       make_parents=True, dir_mode=0o750)
    assert dest.read_bytes() == b"#!/bin/sh\n" and done.mode == 0o755
    assert (root / "opt" / "tool").stat().st_mode & 0o777 == 0o750
    with pytest.raises(PathRefusedError):  # Rampart's own backup names cannot be targeted
        deploy_file(b"x", sha(b"x"), root / "opt" / f".run{BACKUP_SUFFIX}", 0o644, allowed_roots=[root])


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each name always exists."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_T9_symlink_swap_race_never_writes_outside(tree: tuple[Path, Path]) -> None:
    """A hostile job keeps swapping a directory with a symlink to outside; nothing ever lands outside."""
    root, outside = tree
    sub, other = root / "sub", root / "other"
    sub.mkdir()
    other.symlink_to(outside)
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        while not stop.is_set():
            exchange(sub, other)
            flips += 1

    thread = threading.Thread(target=flipper)
    thread.start()
    wrote = refused = 0
    try:
        for i in range(400):
            data = f"deploy {i}\n".encode()
            try:
                deploy_file(data, sha(data), sub / "victim", 0o644, allowed_roots=[root])
                wrote += 1
            except PathRefusedError:
                refused += 1
    finally:
        stop.set()
        thread.join()
    assert flips > 100 and wrote > 0 and refused > 0 and wrote + refused == 400
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious\n"
    inside = sub if sub.is_dir() and not sub.is_symlink() else other
    assert (inside / "victim").read_bytes().startswith(b"deploy ")


def test_readers_never_see_a_partial_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    dest = root / "etc" / "big"
    versions = [bytes([65 + i]) * (1 << 20) for i in range(2)]
    deploy_file(versions[0], sha(versions[0]), dest, 0o644, allowed_roots=[root])
    stop = threading.Event()
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            seen.add(sha(dest.read_bytes()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            data = versions[i % 2]
            deploy_file(data, sha(data), dest, 0o644, allowed_roots=[root])
    finally:
        stop.set()
        thread.join()
    assert seen <= {sha(v) for v in versions} and seen
