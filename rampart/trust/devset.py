"""Committed device sets: a Merkle root and count in place of a device list, and per-device proofs.

A grant or job to thousands of devices names them as a :class:`DeviceSet`
(the RFC 9162 root over the sorted, distinct device ids, and their count)
instead of listing them, so every device receives the same few hundred bytes
plus its own O(log N) inclusion proof (:class:`DeviceProof`). Who computes
what (docs/trust-chain.md, "Committed device sets"):

* the signer's machine computes the commitment from the list it shows its
  person (:func:`commit_devices`), or checks a list it was given against the
  commitment before showing it (:func:`expand`);
* the server builds each device's proof (:class:`DeviceSetTree`);
* the device checks its own id is in the signed set (:func:`is_member`).

Leaves are domain-separated from the audit log's (a device-set leaf hashes a
fixed prefix and the id), so no proof of one tree is a proof in the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from . import merkle
from .errors import DigestMismatchError, InconsistentLogError, UsageError
from .payloads import DeviceSet

#: Prefixed to a device id before it is hashed as a leaf (then RFC 9162's own 0x00 leaf prefix).
DEVICE_LEAF_PREFIX = b"rampart.device-set.v1\x00"

#: The longest inclusion path any tree of ``max_set_devices`` leaves needs, with room to spare.
MAX_PROOF_HASHES = 40

#: One hash of a Merkle proof as text: 64 characters, checked as lowercase hex by
#: :func:`check_proof_hashes` in its holder's ``__post_init__`` (one regex over the whole proof
#: instead of one per hash: a proof decodes about twice as fast).
ProofHash = Annotated[str, Meta(min_length=64, max_length=64)]

_LOWER_HEX = re.compile(r"[0-9a-f]*", re.ASCII)


def check_proof_hashes(*proofs: Sequence[str]) -> None:
    """Raise ValueError unless every hash of ``proofs`` is lowercase hex (their length is typed).

    msgspec turns the ValueError of a ``__post_init__`` into its ValidationError, so a decode
    refuses such a proof exactly as a per-field pattern would."""
    if _LOWER_HEX.fullmatch("".join("".join(p) for p in proofs)) is None:
        raise ValueError("a proof hash must be 64 lowercase hex characters")


class DeviceProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Evidence that one device id is leaf ``index`` of a committed set. Carries no authority."""

    index: Annotated[int, Meta(ge=0)]
    path: Annotated[list[ProofHash], Meta(max_length=MAX_PROOF_HASHES)]

    def __post_init__(self) -> None:
        check_proof_hashes(self.path)


class DeviceProofs(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A device's proofs for a job and its grant (each present only when that one commits a set)."""

    job: DeviceProof | UnsetType = UNSET
    grant: DeviceProof | UnsetType = UNSET


def device_leaf(device_id: str) -> bytes:
    """The leaf hash of ``device_id`` in a device-set tree."""
    return merkle.leaf_hash(DEVICE_LEAF_PREFIX + device_id.encode("ascii"))


class DeviceSetTree:
    """The tree of a set of device ids, sorted: its commitment and each member's proof.

    Invariant: :attr:`ids` are distinct and sorted, leaf ``i`` is ``device_leaf(ids[i])``,
    and :attr:`commitment` is the root and count of exactly these leaves.
    """

    __slots__ = ("_index", "_tree", "commitment", "ids")

    def __init__(self, device_ids: Iterable[str]) -> None:
        ids = sorted(device_ids)
        if not ids:
            raise UsageError("a device set names at least one device")
        if any(a == b for a, b in zip(ids, ids[1:], strict=False)):
            raise UsageError("a device set names a device twice")
        self.ids: tuple[str, ...] = tuple(ids)
        self._index = {d: i for i, d in enumerate(ids)}
        self._tree = merkle.MerkleTree.from_leaf_hashes(device_leaf(d) for d in ids)
        self.commitment = DeviceSet(root=self._tree.root().hex(), count=len(ids))

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._index

    def proof(self, device_id: str) -> DeviceProof:
        """The inclusion proof of ``device_id`` (:class:`UsageError` if it is not a member)."""
        i = self._index.get(device_id)
        if i is None:
            raise UsageError(f"{device_id} is not in the device set")
        return DeviceProof(index=i, path=[h.hex() for h in self._tree.inclusion_proof(i)])


def commit_devices(device_ids: Iterable[str]) -> DeviceSet:
    """The commitment to these device ids (sorted and distinct; :class:`UsageError` otherwise)."""
    return DeviceSetTree(device_ids).commitment


def is_member(device_set: DeviceSet, device_id: str, proof: DeviceProof | UnsetType | None) -> bool:
    """Whether ``proof`` shows ``device_id`` is in the committed ``device_set``.

    Invariant: True only if the tree with root ``device_set.root`` has
    ``device_id``'s leaf at ``proof.index`` (RFC 9162 inclusion, the path's shape
    fixed by index and ``count``). The root binds the membership; the count is
    the signers' own figure, computed with the root from the list they saw.
    """
    if not isinstance(proof, DeviceProof):
        return False
    try:
        merkle.verify_inclusion(leaf_hash=device_leaf(device_id), index=proof.index,
                                tree_size=device_set.count, proof=[bytes.fromhex(h) for h in proof.path],
                                root=bytes.fromhex(device_set.root))
    except InconsistentLogError:
        return False
    return True


def expand(devices: Sequence[str], device_set: DeviceSet | UnsetType, listed: Sequence[str]) -> list[str]:
    """The devices a signed grant or job names: its own list, or ``listed`` once it matches the set.

    ``listed`` comes from elsewhere (the server): for a committed set it is
    accepted only if its commitment is exactly ``device_set`` (else
    :class:`DigestMismatchError`), so what is shown is what is signed.
    """
    if not isinstance(device_set, DeviceSet):
        return list(devices)
    if not listed:
        raise DigestMismatchError("the device list of a committed set is missing")
    try:
        mine = commit_devices(listed)
    except UsageError as exc:
        raise DigestMismatchError(f"the device list does not match the signed device set: {exc}") from None
    if mine != device_set:
        raise DigestMismatchError("the device list does not match the signed device set "
                         f"({mine.count} devices listed, {device_set.count} signed)")
    return sorted(listed)
