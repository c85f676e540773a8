"""rampart.trust.review: fingerprints and the root diff a signer checks (pure, no server)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from rampart import trust
from rampart.trust import (
    default_key_name,
    key_fingerprint,
    key_fingerprint_b64,
    normalise_fingerprint,
    root_diff,
)

LOG = trust.LogKey.generate()


def _root(keys: dict[str, tuple[trust.OperatorKey, str, tuple[str, ...]]], *, version: int = 1,
          owner_threshold: int = 1, policy: trust.Policy | None = None,
          expires: int = 2_000_000_000) -> trust.TenantRoot:
    entries = {k.key_id: trust.KeyEntry(public=k.public.to_b64(), name=n)
               for k, n, _ in keys.values()}
    roles = {r: sorted(k.key_id for k, _, rs in keys.values() if r in rs)
             for r in ("owner", "approver", "technician", "automation")}
    return trust.TenantRoot(
        tenant="tn-" + "a" * 26, name="acme", version=version, expires=expires, keys=entries,
        roles=trust.Roles(owner=trust.RoleSpec(keyids=roles["owner"], threshold=owner_threshold),
                          approver=trust.RoleSpec(keyids=roles["approver"]),
                          technician=trust.RoleSpec(keyids=roles["technician"])),
        log_keys={LOG.key_id: LOG.public.to_b64()},
        policy=policy or trust.Policy())


def test_fingerprint_is_six_groups_of_five_digits_from_the_key_hash() -> None:
    k = trust.OperatorKey.generate()
    fp = key_fingerprint(k.public.raw)
    groups = fp.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    digest = hashlib.sha256(k.public.raw).digest()
    assert int(groups[0]) == int.from_bytes(digest[:5], "big") % 100000
    assert key_fingerprint_b64(k.public.to_b64()) == fp
    assert default_key_name(k.public.to_b64()) == "key-" + "-".join(groups[:2])


def test_typed_fingerprints_are_normalised_and_wrong_lengths_refused() -> None:
    fp = key_fingerprint(trust.OperatorKey.generate().public.raw)
    assert normalise_fingerprint(fp.replace(" ", "")) == fp
    assert normalise_fingerprint(fp.replace(" ", "-")) == fp
    for bad in (fp[:-1], fp + "1", "o" + fp[1:], "", "٣" * 30):  # a letter for a digit, always
        with pytest.raises(trust.UsageError):
            normalise_fingerprint(bad)
    with pytest.raises(trust.UsageError):
        key_fingerprint(b"short")


def test_root_diff_names_every_change() -> None:
    o, a, t, x = (trust.OperatorKey.generate() for _ in range(4))
    old = _root({"o": (o, "olivia", ("owner", "approver")), "a": (a, "alan", ("approver",)),
                 "t": (t, "tess", ("technician",))})
    new = _root({"o": (o, "olivia", ("owner", "approver")), "a": (a, "alan", ("approver", "owner")),
                 "x": (x, "xavier", ("technician",))}, version=2, owner_threshold=2,
                policy=trust.Policy(approver_device_limit=5), expires=2_100_000_000)
    d = root_diff(old, new)
    assert d.added == {x.key_id: ("technician",)}
    assert d.removed == {t.key_id: ("technician",)}
    assert d.roles_changed == {a.key_id: (("approver",), ("owner", "approver"))}
    assert d.thresholds == {"owner": (1, 2)}
    assert d.policy == {"approver_device_limit": (10, 5)}
    assert d.expires == (2_000_000_000, 2_100_000_000)
    assert not d.renamed and not d.tenant_changed and d.name is None


def test_root_diff_sees_a_renamed_key_and_nothing_else_when_only_that_changed() -> None:
    o = trust.OperatorKey.generate()
    old = _root({"o": (o, "olivia", ("owner",))})
    new = msgspec.structs.replace(old, version=2, keys={
        o.key_id: trust.KeyEntry(public=o.public.to_b64(), name="mallory")})
    d = root_diff(old, new)
    assert d.renamed == {o.key_id: ("olivia", "mallory")}
    assert not d.added and not d.removed and not d.roles_changed and not d.thresholds
    assert not d.policy and not d.log_keys_changed
