"""Backups with real borg into an append-only vault repository (issue 6, K1, S4, T9).

The vault host is played by a repository directory and the forced command
its SSH key would have (``borg serve --append-only --restrict-to-repository``):
the agent's ``BORG_RSH`` runs it over a local pipe, no network. The vault
holder's offline procedure (docs/backup-vault.md) is played step by step.

Borg's append-only semantics, which the T9 test demonstrates: a client of an
append-only server can still *ask* to delete, prune, overwrite or compact,
and borg records that as new transactions (a new manifest that no longer
lists the archive, delete tags); but no segment file written before is ever
changed or removed, and ``compact`` does nothing. So the archive list a
client sees can be changed, while the archive's data cannot: the vault
holder rolls the repository back to the last good transaction and
everything is there, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import borgvault as vault

from rampart.agent import backup
from rampart.agent.backup import BackupPolicy, BackupSpecError, BorgRepo

pytestmark = pytest.mark.skipif(shutil.which("borg") is None, reason="no borg (run-tests installs it)")

SECRET = "correct horse battery staple 7f3a"


@dataclass
class World:
    repo_path: Path  # the repository on the "vault host"
    agent: BorgRepo  # the agent: over the forced command only
    vault: BorgRepo  # the vault holder, on the vault host itself
    vault_env: dict[str, str]
    key_export: Path  # the vault holder's offline copy of the repository key
    data: Path  # live files on the device
    tmp: Path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digests(root: Path) -> dict[str, str]:
    return {str(p): sha(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    vault_host = tmp_path / "vault-host"
    vault_host.mkdir()
    repo_path = vault_host / "dev1"
    vault_base = tmp_path / "vault-holder"
    vault_pass = vault.passphrase_file(tmp_path / "vault-passphrase", SECRET)
    holder = vault.vault_repo(repo_path, vault_base, vault_pass)
    created = backup.init_repository(holder)  # vault holder: repository with append_only = 1
    assert created.ok, created
    assert "append_only = 1" in (repo_path / "config").read_text()
    env = vault.vault_env(vault_base, SECRET)
    key_export = tmp_path / "offline" / "dev1.borg-key"
    key_export.parent.mkdir()
    vault.export_key(repo_path, key_export, env)
    wrapper = vault.forced_command(tmp_path / "vault-ssh", repo_path)
    agent_state = tmp_path / "agent-state"
    agent_state.mkdir(mode=0o700)
    agent = BorgRepo(location=f"ssh://vault{repo_path}", rsh=(str(wrapper),),
                     passphrase_file=vault.passphrase_file(agent_state / "borg-passphrase", SECRET),
                     base_dir=agent_state / "borg")
    data = tmp_path / "device" / "srv"
    (data / "db").mkdir(parents=True)
    (data / "docs").mkdir()
    rng = random.Random(7)
    (data / "db" / "customers.sqlite").write_bytes(rng.randbytes(300_000))
    (data / "docs" / "contract.txt").write_text("The customer's signed contract.\n" * 50)
    (data / "docs" / "empty").write_bytes(b"")
    (data / "docs" / "link").symlink_to(data / "docs" / "contract.txt")
    yield World(repo_path, agent, holder, env, key_export, data, tmp_path)


def test_create_list_check_and_restore_test(world: World) -> None:
    before = digests(world.data)
    made = backup.create_archive(world.agent, [str(world.data)], name="dev1-2026-01-01T00-00-00Z")
    assert made.ok and not made.warning, made
    assert made.nfiles == 3 and made.original_size > 300_000 and len(made.id) == 64 and made.end >= made.start
    listed, error = backup.list_archives_checked(world.agent)
    assert error == "" and [(a.name, a.id) for a in listed] == [("dev1-2026-01-01T00-00-00Z", made.id)]
    checked = backup.check(world.agent, verify_data=True)
    assert checked.ok and checked.verify_data, checked
    # Recorded digests: every sample matches.
    samples = backup.restore_test(world.agent, made.name, before)
    assert [(s.path, s.ok, s.status, s.digest) for s in samples] == \
        [(p, True, "match", d) for p, d in sorted(before.items())]
    assert backup.restore_test_passed(samples)
    # Live comparison, after the device changed one file; plus paths the archive cannot answer for.
    contract = world.data / "docs" / "contract.txt"
    contract.write_text("changed after the backup\n")
    live = backup.restore_test(world.agent, made.name, [
        str(world.data / "db" / "customers.sqlite"), str(contract), str(world.data / "docs" / "link"),
        str(world.data / "never-existed")])
    by = {s.path: s for s in live}
    assert by[str(world.data / "db" / "customers.sqlite")].status == "match"
    assert by[str(contract)].status == "changed-since-backup"
    assert by[str(contract)].digest == before[str(contract)]  # the backup still has the old bytes
    assert by[str(world.data / "docs" / "link")].status == "not-regular"
    assert by[str(world.data / "never-existed")].status == "missing-in-archive"
    assert not backup.restore_test_passed(live)
    wrong = backup.restore_test(world.agent, made.name, {str(contract): sha(b"something else")})
    assert [(s.ok, s.status) for s in wrong] == [(False, "mismatch")]
    assert list((world.agent.base_dir / "restore-tests").iterdir()) == []  # extraction directories removed


def test_an_archive_name_is_never_overwritten(world: World) -> None:
    first = backup.create_archive(world.agent, [str(world.data)], name="daily")
    (world.data / "docs" / "contract.txt").write_text("ransom note\n")
    second = backup.create_archive(world.agent, [str(world.data)], name="daily")
    assert first.ok and not second.ok and "already exists" in second.error
    assert [(a.name, a.id) for a in backup.list_archives(world.agent)] == [("daily", first.id)]


def test_status_reports_age_staleness_and_last_check(world: World) -> None:
    empty = backup.status(world.agent, now=time.time(), max_age_s=3600)
    assert (empty.archive_count, empty.stale, empty.error) == (0, True, "")
    made = backup.create_archive(world.agent, [str(world.data)], name="dev1-a")
    checked = backup.check(world.agent)
    fresh = backup.status(world.agent, now=made.start + 60, max_age_s=3600, last_check=checked,
                          check_max_age_s=86400)
    assert (fresh.archive_count, fresh.last_archive, fresh.stale, fresh.last_check_ok, fresh.check_stale) == \
        (1, "dev1-a", False, True, False)
    assert fresh.age_s is not None and 59 <= fresh.age_s <= 61
    late = backup.status(world.agent, now=made.start + 7200, max_age_s=3600, last_check=checked,
                         check_max_age_s=60)
    assert late.stale and late.check_stale
    policy = BackupPolicy(paths=[str(world.data)], interval_s=3600, max_age_s=7200)
    assert not backup.backup_due(policy, made.start, made.start + 60)
    assert backup.backup_due(policy, made.start, made.start + 3600) and backup.backup_due(policy, None, 0)


def test_check_finds_a_corrupted_segment(world: World) -> None:
    assert backup.create_archive(world.agent, [str(world.data)], name="dev1-a").ok
    largest = max((world.repo_path / "data").glob("*/*"), key=lambda f: f.stat().st_size)
    blob = bytearray(largest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    largest.write_bytes(bytes(blob))
    result = backup.check(world.agent)
    assert not result.ok and result.exit_code == 1, result
    assert "segment" in result.output_tail.lower() and result.error


def test_passphrase_is_never_on_argv_or_in_any_environment(world: World) -> None:
    """Every process of a backup (borg, the vault channel, borg serve) is inspected while it runs."""
    secret = SECRET.encode()
    seen: list[int] = []
    leaks: list[str] = []
    done = threading.Event()
    result: list[backup.ArchiveResult] = []

    def run() -> None:
        result.append(backup.create_archive(world.agent, [str(world.data)], name="dev1-a"))
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    while not done.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"borg" not in cmdline and b"vault-ssh" not in cmdline:
                    continue
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if int(pid) not in seen:
                seen.append(int(pid))
            if secret in cmdline or secret in environ:
                leaks.append(pid)
        time.sleep(0.002)
    thread.join()
    assert result[0].ok
    assert len(seen) >= 2 and leaks == []
    assert SECRET not in str(result[0])


def test_passphrase_file_must_be_private(world: World) -> None:
    world.agent.passphrase_file.chmod(0o640)
    made = backup.create_archive(world.agent, [str(world.data)], name="dev1-a")
    assert not made.ok and "0600" in made.error
    world.agent.passphrase_file.chmod(0o600)
    assert backup.list_archives_checked(world.agent) == ([], "")  # nothing was created meanwhile
    link = world.tmp / "pass-link"
    link.symlink_to(world.agent.passphrase_file)
    via_link = BorgRepo(location=world.agent.location, rsh=world.agent.rsh, passphrase_file=link,
                        base_dir=world.agent.base_dir)
    assert not backup.check(via_link).ok


def test_arguments_cannot_inject_options_or_placeholders(tmp_path: Path) -> None:
    for location in ("-oProxyCommand=touch /tmp/x", "relative/repo", "ssh://vault/x::y", "/repo/../etc",
                     "ssh://-oProxyCommand=x/repo", "/repo\n"):
        with pytest.raises(BackupSpecError):
            BorgRepo(location=location, passphrase_file=tmp_path / "p", base_dir=tmp_path)
    repo = BorgRepo(location=str(tmp_path / "repo"), passphrase_file=tmp_path / "p", base_dir=tmp_path / "b")
    for name in ("{now}", "a::b", "-x", "--stats", "a b", "", "a/b"):
        with pytest.raises(BackupSpecError):
            backup.create_archive(repo, ["/srv"], name=name)
    for path in ("--exclude-from=/etc/shadow", "srv", "/srv/../etc", "/srv\n/etc"):
        with pytest.raises(BackupSpecError):
            backup.create_archive(repo, [path], name="ok")
    with pytest.raises(BackupSpecError):
        backup.create_archive(repo, ["/srv"], name="ok", compression="zstd;rm")
    with pytest.raises(BackupSpecError):
        BackupPolicy(paths=["relative"])
    assert not (tmp_path / "b").exists()  # refused before anything ran


def test_sample_files_picks_regular_files_only(world: World) -> None:
    picked = backup.sample_files([str(world.data)], 10, rng=random.Random(1))
    assert picked == [str(world.data / "db" / "customers.sqlite"), str(world.data / "docs" / "contract.txt")]
    assert len(backup.sample_files([str(world.data)], 1, rng=random.Random(1))) == 1


# --- T9: the hostile job against the append-only vault --------------------------------------------------


def _hostile(world: World, args: list[str], **extra: str) -> int:
    """One borg command of the hostile job: the agent's user, the passphrase, the same vault channel."""
    job_home = world.tmp / "hostile-job"
    job_home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(job_home),
           "BORG_BASE_DIR": str(job_home), "BORG_PASSPHRASE": SECRET,
           "BORG_RSH": world.agent.rsh[0] if world.agent.rsh else "", **extra}
    r = subprocess.run(["borg", *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300, check=False)
    return r.returncode


def test_T9_hostile_job_cannot_destroy_backup_history(world: World) -> None:
    """delete, overwrite, prune, compact, repair, config, change-passphrase: the original still restores."""
    originals = digests(world.data)
    first = backup.create_archive(world.agent, [str(world.data)], name="dev1-2026-01-01T00-00-00Z")
    assert first.ok
    good_transaction = vault.transactions(world.repo_path)[-1][0]
    segments_before = vault.segments(world.repo_path)

    # The device is encrypted by ransomware; the hostile job then goes after the backups.
    for f in world.data.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.write_bytes(b"ENCRYPTED " + os.urandom(32))
    loc = world.agent.location
    rc = {
        "delete archive": _hostile(world, ["delete", f"{loc}::{first.name}"]),
        "overwrite archive": _hostile(world, ["create", f"{loc}::{first.name}", str(world.data)]),
        "junk archive": _hostile(world, ["create", f"{loc}::junk", str(world.data)]),
        "prune all but one": _hostile(world, ["prune", "--keep-last", "1", loc]),
        "compact": _hostile(world, ["compact", "--cleanup-commits", loc]),
        "delete repository": _hostile(world, ["delete", loc], BORG_DELETE_I_KNOW_WHAT_I_AM_DOING="YES"),
        "repair": _hostile(world, ["check", "--repair", loc], BORG_CHECK_I_KNOW_WHAT_I_AM_DOING="YES"),
        "turn append-only off": _hostile(world, ["config", loc, "append_only", "0"]),
        "reach another repository": _hostile(world, ["init", "--encryption=none",
                                                      f"ssh://vault{world.tmp}/elsewhere"]),
        "change passphrase": _hostile(world, ["key", "change-passphrase", loc], BORG_NEW_PASSPHRASE="ransom"),
    }
    # What borg lets a client ask for, and what the append-only server refuses outright.
    assert {k for k, v in rc.items() if v == 0} == {"delete archive", "overwrite archive", "junk archive",
                                                    "prune all but one", "compact", "change passphrase"}
    assert not (world.tmp / "elsewhere").exists()
    assert "append_only = 1" in (world.repo_path / "config").read_text()

    # The agent now sees a repository it cannot open (the key was re-encrypted) ...
    _, agent_error = backup.list_archives_checked(world.agent)
    assert agent_error
    # ... and with the attacker's passphrase the original archive is gone from the list.
    after_attack = subprocess.run(["borg", "list", "--format={id}{NL}", str(world.repo_path)],
                                  env={**world.vault_env, "BORG_PASSPHRASE": "ransom"}, capture_output=True,
                                  text=True, check=True).stdout.split()
    assert first.id not in after_attack and len(after_attack) == 1
    # But append-only means every segment written before the attack is still there, byte for byte.
    segments_after = vault.segments(world.repo_path)
    assert {n: segments_after.get(n) for n in segments_before} == segments_before
    assert max(segments_after) > good_transaction
    assert vault.transactions(world.repo_path)[-1][0] > good_transaction

    # The vault holder's offline procedure (docs/backup-vault.md), on the vault host.
    removed = vault.recover(world.repo_path, good_transaction, key_export=world.key_export,
                            env=world.vault_env, forensics=world.tmp / "dev1-attacked")
    assert removed and min(removed) == good_transaction + 1
    checked = backup.check(world.vault, verify_data=True)
    assert checked.ok, checked
    restored_list = backup.list_archives(world.vault)
    assert [(a.name, a.id) for a in restored_list] == [(first.name, first.id)]
    samples = backup.restore_test(world.vault, first.name, originals)
    assert [(s.path, s.status, s.digest) for s in samples] == \
        [(p, "match", d) for p, d in sorted(originals.items())]
    # The forensic copy still holds what the attacker did, for analysis.
    assert vault.transactions(world.tmp / "dev1-attacked")[-1][0] > good_transaction
    # And the agent carries on backing up into the restored repository.
    again = backup.create_archive(world.agent, [str(world.data)], name="dev1-after-incident")
    assert again.ok, again
    assert [a.name for a in backup.list_archives(world.agent)] == [first.name, "dev1-after-incident"]


def test_T9_local_repository_config_append_only_also_keeps_segments(world: World) -> None:
    """Even a borg with direct access to the repository (not through borg serve) obeys append_only = 1.

    This is the second lock, for a vault-side mistake; it is no air gap: a
    process with file access could still delete the files, which is why the
    repository lives on the vault host (docs/backup-vault.md).
    """
    first = backup.create_archive(world.vault, [str(world.data)], name="dev1-a")
    assert first.ok
    good = vault.transactions(world.repo_path)[-1][0]
    before = vault.segments(world.repo_path)
    assert vault.borg(["delete", f"{world.repo_path}::dev1-a"], world.vault_env).returncode == 0
    assert vault.borg(["compact", str(world.repo_path)], world.vault_env).returncode == 0
    assert backup.list_archives(world.vault) == []
    after = vault.segments(world.repo_path)
    assert {n: after.get(n) for n in before} == before
    vault.rollback(world.repo_path, good)
    # borg's own replay protection: a client that saw the later state refuses the rolled-back repository ...
    _, error = backup.list_archives_checked(world.vault)
    assert "newer than repository" in error
    # ... until its record of that repository is dropped on purpose.
    forgot = backup.forget_repository_state(world.vault)
    assert forgot.ok and [(c.manifest_timestamp, c.cache) for c in forgot.cleared] == [(True, True)], forgot
    assert [a.id for a in backup.list_archives(world.vault)] == [first.id]


def _borg_state(base: Path) -> dict[str, str]:
    """Every path below a borg base directory: file digests, symlink targets, directories."""
    out = {}
    for p in sorted(base.rglob("*")):
        rel = str(p.relative_to(base))
        out[rel] = ("link:" + os.readlink(p) if p.is_symlink() else sha(p.read_bytes()) if p.is_file()
                    else "dir")
    return out


def test_T9_forget_state_clears_only_this_repositorys_replay_record_never_through_a_symlink(
        world: World) -> None:
    """Only security/<id>/manifest-timestamp and .cache/borg/<id> of the policy's repository go.

    The rest of the security directory stays (``nonce``: the AES-CTR counter
    this client reserved), so do keys and other repositories' records; a
    symlink on the way is refused, never followed.
    """
    assert backup.create_archive(world.agent, [str(world.data)], name="dev1-a").ok
    base = world.agent.base_dir
    [rid] = [p.name for p in (base / ".config" / "borg" / "security").iterdir()]
    record = base / ".config" / "borg" / "security" / rid
    assert {"location", "key-type", "manifest-timestamp", "nonce"} <= {p.name for p in record.iterdir()}
    assert (base / ".cache" / "borg" / rid).is_dir()
    nonce = int((record / "nonce").read_text(), 16)
    # Another repository's record (another location) and a key file beside them.
    other = base / ".config" / "borg" / "security" / ("b" * 64)
    other.mkdir()
    (other / "location").write_text("ssh://vault/srv/borg/other\n")
    (other / "manifest-timestamp").write_text("2099-01-01T00:00:00.000000")
    (base / ".cache" / "borg" / ("b" * 64)).mkdir()
    (base / ".cache" / "borg" / ("b" * 64) / "config").write_text(
        "[cache]\nprevious_location = ssh://vault/srv/borg/other\n")
    keys = base / ".config" / "borg" / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "keep").write_text("a keyfile\n")
    before = _borg_state(base)
    gone = (f".config/borg/security/{rid}/manifest-timestamp", f".cache/borg/{rid}")
    kept = {k: v for k, v in before.items() if not k.startswith(gone)}

    forgot = backup.forget_repository_state(world.agent)
    assert forgot == backup.ForgetResult(ok=True, cleared=[backup.ForgottenRepository(
        id=rid, manifest_timestamp=True, cache=True)])
    assert _borg_state(base) == kept and len(kept) < len(before)
    # Idempotent: nothing left to clear, nothing else touched.
    assert backup.forget_repository_state(world.agent) == backup.ForgetResult(ok=True)
    assert _borg_state(base) == kept
    # The next access records the repository again; the nonce never went backwards.
    assert backup.create_archive(world.agent, [str(world.data)], name="dev1-b").ok
    assert (record / "manifest-timestamp").is_file()
    assert int((record / "nonce").read_text(), 16) > nonce
    # A cache naming the repository without a security directory goes too (borg's other replay check).
    shutil.rmtree(record)
    assert backup.forget_repository_state(world.agent).cleared == [
        backup.ForgottenRepository(id=rid, manifest_timestamp=False, cache=True)]

    # A symlink planted in the way is never followed: an error, and the target is untouched.
    victim = world.tmp / "victim"
    (victim / "borg" / "security" / rid).mkdir(parents=True)
    (victim / "borg" / "security" / rid / "location").write_text(world.agent.location)
    (victim / "borg" / "security" / rid / "manifest-timestamp").write_text("2099-01-01T00:00:00.000000")
    shutil.rmtree(base / ".config")
    (base / ".config").symlink_to(victim)
    planted = _borg_state(victim)
    result = backup.forget_repository_state(world.agent)
    assert not result.ok and result.cleared == [] and "not a plain directory" in result.error, result
    assert _borg_state(victim) == planted
    (base / ".config").unlink()
    (base / ".config" / "borg" / "security").mkdir(parents=True)
    (base / ".config" / "borg" / "security" / rid).symlink_to(victim / "borg" / "security" / rid)
    result = backup.forget_repository_state(world.agent)
    assert result == backup.ForgetResult(ok=True), result  # a symlinked entry is not borg's record
    assert _borg_state(victim) == planted
