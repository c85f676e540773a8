"""Issue 11, finding 7: a way back from a lost owner key, and renewal before the expiry cliff.

Real CLI processes of each person, a real server and a real agent:

* ``tenant create`` makes an offline recovery key as a second owner of root v1
  and writes its sheet 0600, never over an existing file, never anywhere else;
* the owner's key file is deleted; the recovery key alone signs the next root
  (``root recover``), which replaces the lost key and the used recovery key,
  the server audits who signed it, and the agent follows it;
* a mistyped or foreign recovery key, and a recovery key the root no longer
  names, are refused with nothing changed;
* ``root renew`` signs the same root with a new expiry in one step; ``root
  show`` warns within 90 days and the server's alert opens and resolves.
"""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.agent import AgentProcess
from test_cli_flows import PASSPHRASE, Operator, one_line_error, people, server
from test_T1_root_ceremony import (
    _agent_root,
    _proposal,
    _published_versions,
    _signatures,
    enrolled_agent,
)

from rampart import trust
from rampart.cli.recovery import key_from_paper, paper_key

pytestmark = pytest.mark.client_side
__all__ = ["people", "server"]  # fixtures used by name

ENV = {"RAMPART_KEY_PASSPHRASE": PASSPHRASE}


def _sheet_key(path: Path, tenant: str) -> trust.OperatorKey:
    [line] = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("RRK1-")]
    return key_from_paper(tenant, line)


def _root(op: Operator, tenant: str) -> trust.TenantRoot:
    data = (op.config / "roots" / f"{tenant}.json").read_bytes()
    return trust.decode_payload(trust.decode_envelope(data).payload, trust.TenantRoot)


@pytest.fixture(scope="module")
def acme(people: dict[str, Operator], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """alice, owner of tenant acme; the recovery sheet written to a vault directory."""
    a = people["alice"]
    a.enrol_interactively("--bootstrap", "RAMPART_BOOTSTRAP_TOKEN", a.server.bootstrap_token)
    vault = tmp_path_factory.mktemp("vault")
    doc = a.json("tenant", "create", "acme", "--recovery-key-file", str(vault), extra_env=ENV)
    return {"tenant": doc["id"], "v1_sha256": doc["root_sha256"], "vault": vault, "doc": doc}


@pytest.fixture(scope="module")
def agent(people: dict[str, Operator], acme: dict[str, Any]) -> Iterator[AgentProcess]:
    yield from enrolled_agent(people["alice"], "acme", "rampart-recovery-")


def test_tenant_create_writes_the_recovery_sheet_0600_and_keeps_no_copy(
        people: dict[str, Operator], acme: dict[str, Any]) -> None:
    a, tid = people["alice"], acme["tenant"]
    sheet = acme["vault"] / f"recovery-key-{tid}.txt"
    assert stat.S_IMODE(sheet.stat().st_mode) == 0o600
    assert acme["doc"]["recovery_key_file"] == str(sheet) and "recovery_key" not in acme["doc"]
    spare = _sheet_key(sheet, tid)
    assert spare.key_id == acme["doc"]["recovery_keyid"]
    assert acme["v1_sha256"] in sheet.read_text()  # the pin a new machine starts from
    root = _root(a, tid)
    assert set(root.roles.owner.keyids) == {spare.key_id, *[
        k for k in acme["doc"]["owner_keys"] if k != spare.key_id]}
    assert root.roles.owner.threshold == 1 and spare.key_id not in root.roles.approver.keyids
    assert root.keys[spare.key_id].name.startswith("offline recovery key")
    # never in the operator's config, nor on the server
    stored = b"".join(f.read_bytes() for f in a.config.rglob("*") if f.is_file())
    assert spare.seed().hex().encode() not in stored
    assert paper_key(tid, spare).encode() not in stored
    server_files = b"".join(f.read_bytes() for f in Path(a.server.data).rglob("*") if f.is_file())
    assert paper_key(tid, spare).encode() not in server_files
    assert spare.seed() not in server_files

    # A sheet is never written over an existing file: refused before anything is made.
    r = a.run("tenant", "create", "beta", "--recovery-key-file", str(sheet), extra_env=ENV)
    assert "exists" in one_line_error(r)
    assert not [t for t in a.json("tenant", "list") if t["name"] == "beta"]
    assert _sheet_key(sheet, tid).key_id == spare.key_id


def test_T1_mistyped_or_foreign_recovery_key_is_refused_and_nothing_changes(
        people: dict[str, Operator], acme: dict[str, Any]) -> None:
    a, tid = people["alice"], acme["tenant"]
    spare = _sheet_key(acme["vault"] / f"recovery-key-{tid}.txt", tid)
    good = paper_key(tid, spare)
    typo = good[:-1] + ("A" if good[-1] != "A" else "B")
    foreign = paper_key("t_" + "0" * 24, spare)  # the same seed on another tenant's sheet
    stranger = paper_key(tid, trust.OperatorKey.generate())  # checks, but is no owner
    keys_before = len(a.json("key", "list"))
    before = (_published_versions(a, tid), _proposal(a, tid))
    for text, why in ((typo, "does not check"), (foreign, "does not check"),
                      (stranger, "not an owner")):
        r = a.run("root", "recover", "acme", "--recovery-key", "-",
                  extra_env={**ENV, "RAMPART_RECOVERY_KEY": text})
        assert why in one_line_error(r), r.stderr
        assert (_published_versions(a, tid), _proposal(a, tid)) == before
        assert len(a.json("key", "list")) == keys_before  # no key made or registered


def test_owner_key_lost_the_recovery_key_signs_the_next_root_and_the_agent_follows(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess,
        tmp_path: Path) -> None:
    a, tid = people["alice"], acme["tenant"]
    old_sheet = acme["vault"] / f"recovery-key-{tid}.txt"
    used = _sheet_key(old_sheet, tid)
    assert _agent_root(agent, settle=0) == 1
    v1 = _root(a, tid)
    [lost] = [k for k in v1.roles.owner.keyids if k != used.key_id]
    # The laptop's key is gone.
    for f in (a.config / "keys").glob("*.key"):
        f.unlink()
    r = a.run("root", "renew", "acme", extra_env=ENV)
    assert "would not count" in one_line_error(r)

    new_vault = tmp_path / "vault2"
    new_vault.mkdir()
    r = a.ok("root", "recover", "acme", "--recovery-key", str(old_sheet),
             "--new-recovery-key-file", str(new_vault), extra_env=ENV)
    assert "published root v2" in r.stdout, r.stdout
    assert _published_versions(a, tid) == [1, 2]
    v2 = _root(a, tid)
    assert v2.version == 2
    fresh = [k for k in a.json("key", "list") if k["local"] and k["tenant"] == tid]
    assert len(fresh) == 1 and fresh[0]["registered"]
    new_spare = _sheet_key(new_vault / f"recovery-key-{tid}.txt", tid)
    assert set(v2.roles.owner.keyids) == {fresh[0]["keyid"], new_spare.key_id}
    assert v2.roles.approver.keyids == [fresh[0]["keyid"]]
    assert lost not in v2.keys and used.key_id not in v2.keys
    assert (v2.policy, v2.log_keys) == (v1.policy, v1.log_keys)

    # The agent follows the root the recovery key signed.
    assert _agent_root(agent) == 2
    # The server's audit log says who signed it.
    out = a.ok("events", "export", "acme", "--format", "jsonl").stdout
    published = [json.loads(ln) for ln in out.splitlines() if '"root.published"' in ln]
    details = [e.get("details") or e.get("data") or e for e in published]
    assert any(used.key_id in json.dumps(d) and fresh[0]["keyid"] in json.dumps(d)
               for d in details), details

    # The used recovery key signs nothing any more; the new owner key does.
    a.ok("root", "propose", "acme", "--expires", "200d")
    before = (_published_versions(a, tid), _proposal(a, tid))
    r = a.run("root", "sign", "acme", "--recovery-key", str(old_sheet), "--expires", "200d",
              extra_env=ENV)
    assert "not an owner" in one_line_error(r)
    assert (_published_versions(a, tid), _proposal(a, tid)) == before
    assert _signatures(_proposal(a, tid)) == 0


def test_root_renew_signs_the_same_root_with_a_new_expiry_and_warnings_follow(
        people: dict[str, Operator], acme: dict[str, Any], agent: AgentProcess) -> None:
    a, tid = people["alice"], acme["tenant"]
    before = _root(a, tid)
    r = a.ok("root", "renew", "acme", "--expires", "20d", extra_env=ENV)
    assert f"root v{before.version + 1}" in r.stdout
    after = _root(a, tid)
    assert after.version == before.version + 1
    assert (after.keys, after.roles, after.policy, after.log_keys) == \
        (before.keys, before.roles, before.policy, before.log_keys)
    assert 19 * 86400 < after.expires - time.time() <= 20 * 86400
    doc = a.json("root", "show", "acme")
    assert doc["expiry_stage"] == "30d"
    human = a.ok("root", "show", "acme").stdout
    # 20 days less the seconds since the renewal: 19 whole days, or 20 within the same second.
    assert re.search(rf"warning: root v{after.version} expires in (19|20) day\(s\)", human), human
    assert "rampart root renew acme" in human
    alerts = a.json("alerts", "list", "acme", "--kind", "root-expiring")
    assert [(x["severity"], x["status"]) for x in alerts] == [("warning", "open")]
    assert _agent_root(agent) == after.version

    a.ok("root", "renew", "acme", extra_env=ENV)  # a year again: the alert is answered
    assert a.json("alerts", "list", "acme", "--kind", "root-expiring") == []
    resolved = a.json("alerts", "list", "acme", "--kind", "root-expiring", "--status", "all")
    assert [(x["status"], x["resolved_by"]) for x in resolved] == [("resolved", "rampart")]
    assert a.json("root", "show", "acme")["expiry_stage"] is None
