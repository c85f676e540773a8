"""An owner's CLI and the witnesses of a root rotation (T1: the server proposes what owners sign).

The signer's machine decides what a proposal changes (trust.root_diff); a witness added or
removed that the owner did not name (--add-witness, --remove-witness) is refused, as an
unnamed key would be, and every rotation the CLI builds itself keeps the witnesses.
"""

from __future__ import annotations

import dataclasses
import time

import msgspec
import pytest
from harness.tenant import Tenant

from rampart import trust
from rampart.cli import root_cmds
from rampart.cli.errors import UsageProblem
from rampart.cli.root_witness import parse_witness_keys, witness_changes
from rampart.trust import Policy, WitnessKey


def _expected(**kw: object) -> root_cmds.Expected:
    base = root_cmds.expected_from_flags([], [], [], [], [], None, 365 * 86400)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def _roots() -> tuple[trust.TenantRoot, trust.TenantRoot, WitnessKey]:
    t = Tenant()
    old = t.root_doc(1)
    w = WitnessKey.generate()
    new = msgspec.structs.replace(t.root_doc(2, expires=int(time.time()) + 365 * 86400),
                                  witness_keys={w.key_id: w.public.to_b64()},
                                  policy=Policy(witness_quorum=1))
    return old, new, w


def test_T1_a_proposal_adding_a_witness_the_owner_did_not_name_is_refused() -> None:
    old, new, w = _roots()
    d = trust.root_diff(old, new)
    assert d.witnesses_added == {w.key_id: w.public.to_b64()}
    lines = root_cmds.review_lines(d, old, new, {})
    assert any(line.startswith("+ outside witness " + w.key_id[:16]) for line in lines)
    quorum = {"witness_quorum": 1}
    problems = root_cmds.mismatches(d, new, _expected(policy=quorum), {}, int(time.time()))
    assert any("adds outside witness" in p for p in problems), problems
    named = _expected(policy=quorum, witness_adds=frozenset(parse_witness_keys([w.public.to_text()])))
    assert root_cmds.mismatches(d, new, named, {}, int(time.time())) == []
    # Naming a witness the proposal does not add is refused too.
    other = WitnessKey.generate()
    wrong = _expected(policy=quorum, witness_adds=frozenset(parse_witness_keys([other.public.to_text()])))
    problems = root_cmds.mismatches(d, new, wrong, {}, int(time.time()))
    assert any("does not add outside witness" in p for p in problems)


def test_T1_a_proposal_dropping_a_witness_is_refused_unless_named() -> None:
    _, with_witness, w = _roots()
    without = msgspec.structs.replace(with_witness, version=3, witness_keys=msgspec.UNSET, policy=Policy())
    d = trust.root_diff(with_witness, without)
    assert d.witnesses_removed == (w.key_id,)
    unset = {"witness_quorum": None}
    problems = root_cmds.mismatches(d, without, _expected(policy=unset), {}, int(time.time()))
    assert any("removes outside witness" in p for p in problems), problems
    named = _expected(policy=unset, witness_removes=frozenset({w.key_id}))
    assert not [p for p in root_cmds.mismatches(d, without, named, {}, int(time.time())) if "witness" in p]


def test_a_renewal_built_by_the_cli_keeps_the_witnesses_and_their_quorum() -> None:
    _, root, w = _roots()
    nxt = root_cmds.successor(root, lifetime_s=86400)
    assert nxt.witnesses() == root.witnesses() and nxt.policy.witness_quorum == 1
    assert trust.root_diff(root, nxt).witnesses_added == {}


def test_witness_flags_take_only_witness_keys_and_refuse_bad_changes() -> None:
    op = trust.OperatorKey.generate()
    with pytest.raises(UsageProblem, match="--add-witness"):
        parse_witness_keys([op.public.to_text()])  # an operator key is not a witness key
    w = WitnessKey.generate()
    keys = parse_witness_keys([w.public.to_text()])
    with pytest.raises(UsageProblem, match="already in the root"):
        witness_changes(keys, keys, None)
    with pytest.raises(UsageProblem, match="no such witness"):
        witness_changes({}, None, ["ab" * 32])
