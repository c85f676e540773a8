"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs.

Hashing follows RFC 9162 section 2.1 (identical to RFC 6962 section 2.1):

* leaf hash     ``SHA-256(0x00 || entry)``                  (:data:`LEAF_PREFIX`)
* interior node ``SHA-256(0x01 || left || right)``          (:data:`NODE_PREFIX`)
* empty tree    ``SHA-256("")``                             (:data:`EMPTY_ROOT`)
* ``MTH(D[n])`` splits at ``k``, the largest power of two smaller than ``n``.

Security rules:

1. Domain separation. Leaves and interior nodes use distinct one-byte
   prefixes, so an interior node can never be passed off as a leaf (or the
   other way round): the second-preimage attack on unprefixed Merkle trees
   does not apply. Callers must hash entries with :func:`leaf_hash` and never
   feed raw entry digests to the tree or the verifiers.
2. What a verified inclusion proof proves (RFC 9162 2.1.3.2): the given leaf
   hash is the ``index``-th leaf of *the* tree of exactly ``tree_size`` leaves
   whose root is ``root``. It proves nothing about who vouches for that root:
   ``(tree_size, root)`` must come from a signed checkpoint that the caller has
   verified and rollback-checked. A root does not commit to its size by itself.
3. What a verified consistency proof proves (RFC 9162 2.1.4.2): the tree of
   ``old_size`` leaves with ``old_root`` is a prefix of the tree of
   ``new_size`` leaves with ``new_root``. The log only appended: none of the
   first ``old_size`` entries was rewritten, removed or reordered.
4. Error discipline. The verifiers take untrusted input and raise only
   :class:`~rampart.trust.errors.InconsistentLogError`, with a precise
   message, whatever is wrong (types, sizes, proof length, element length,
   root mismatch). Work is bounded: a proof longer than :data:`MAX_PROOF_LEN`
   is refused before any hashing, and a proof of the wrong length for the
   claimed sizes is refused before any hashing too.
   :class:`MerkleTree` and the hashing helpers are server-side/local APIs:
   misuse raises :class:`~rampart.trust.errors.UsageError`.

Pure and I/O-free: only :mod:`hashlib` is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import NoReturn, Self

from rampart.trust.errors import InconsistentLogError, UsageError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LEAF_PREFIX",
    "MAX_PROOF_LEN",
    "MAX_TREE_SIZE",
    "NODE_PREFIX",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

LEAF_PREFIX = b"\x00"
"""RFC 9162 2.1.1 domain-separation prefix of leaf hashes."""

NODE_PREFIX = b"\x01"
"""RFC 9162 2.1.1 domain-separation prefix of interior node hashes."""

HASH_SIZE = 32
"""Length in bytes of every hash (SHA-256)."""

MAX_PROOF_LEN = 64
"""Largest proof a verifier will look at: bounds the work a hostile proof costs."""

MAX_TREE_SIZE = (1 << 63) - 1
"""Largest tree size accepted (fits a signed 64-bit column). For every size up
to this bound, valid inclusion and consistency proofs have at most
:data:`MAX_PROOF_LEN` elements."""

_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""``MTH({})``, the root of the empty tree (RFC 9162 2.1.1)."""

_HASH_TYPES = (bytes, bytearray)
_BUILD_CHUNK = 4096  # parent nodes hashed per batch by MerkleTree.extend


# --------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Return ``SHA-256(0x00 || data)``.

    Invariant: a leaf hash is never equal to a node hash of the same bytes
    (distinct prefixes), so leaves and interior nodes cannot be confused.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UsageError(f"leaf data must be bytes, got {type(data).__name__}")
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return ``SHA-256(0x01 || left || right)`` for two 32-byte child hashes.

    Invariant: children are exactly :data:`HASH_SIZE` bytes, so the
    concatenation is unambiguous (no shifting bytes between left and right).
    """
    lhs = _require_hash(left, "left child")
    rhs = _require_hash(right, "right child")
    return _sha256(NODE_PREFIX + lhs + rhs).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return ``MTH`` of the given leaf hashes (RFC 9162 2.1.1).

    Invariant: equals the root of the tree whose leaves are ``hashes`` in
    order; the empty sequence gives :data:`EMPTY_ROOT`. O(n) time.
    """
    level = [_require_hash(h, f"leaf hash {i}") for i, h in enumerate(hashes)]
    if not level:
        return EMPTY_ROOT
    # Pairing bottom-up and promoting an unpaired last node unchanged builds
    # exactly the RFC tree (left subtrees are the largest powers of two).
    while len(level) > 1:
        paired = [
            _sha256(NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _require_hash(value: object, what: str) -> bytes:
    """Return ``value`` as bytes if it is a 32-byte hash, else raise UsageError."""
    if not isinstance(value, _HASH_TYPES):
        raise UsageError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise UsageError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
    return bytes(value)


# --------------------------------------------------------------------------
# Verification of untrusted proofs (only InconsistentLogError escapes)
# --------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise InconsistentLogError(message)


def _untrusted_hash(value: object, what: str) -> bytes:
    # Exact types only: a subclass could override __len__/__eq__ and raise.
    if not isinstance(value, _HASH_TYPES) or type(value) not in _HASH_TYPES:
        _fail(f"{what} must be bytes, got {type(value).__name__}")
    raw = bytes(value)
    if len(raw) != HASH_SIZE:
        _fail(f"{what} must be {HASH_SIZE} bytes, got {len(raw)}")
    return raw


def _show_int(value: int) -> str:
    # Never str() an arbitrary int: huge ones raise ValueError (int_max_str_digits).
    return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"


def _untrusted_size(value: object, what: str) -> int:
    if not isinstance(value, int) or type(value) is not int:  # no bool, no subclasses
        _fail(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_TREE_SIZE:
        _fail(f"{what} must be in 0..{MAX_TREE_SIZE}, got {_show_int(value)}")
    return value


def _untrusted_proof(value: object) -> list[bytes]:
    if not isinstance(value, (list, tuple)) or type(value) not in (list, tuple):
        _fail(f"proof must be a list or tuple, got {type(value).__name__}")
    if len(value) > MAX_PROOF_LEN:
        _fail(f"proof has {len(value)} elements, more than the maximum {MAX_PROOF_LEN}")
    # The common case checked in C (exact bytes of the right length: len() of an exact bytes
    # cannot raise); anything else takes the element-by-element path and its precise error.
    if set(map(type, value)) <= {bytes} and set(map(len, value)) <= {HASH_SIZE}:
        return list(value)
    return [_untrusted_hash(p, f"proof element {i}") for i, p in enumerate(value)]


def _inclusion_proof_len(index: int, size: int) -> int:
    """Length of the RFC 9162 inclusion path for ``index < size``.

    The path has one element per level below the point where the paths to
    ``index`` and to the last leaf diverge (``inner``), plus one per complete
    left subtree above it (``border``).
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def _consistency_proof_len(old_size: int, new_size: int) -> int:
    """Length of the RFC 9162 consistency proof for ``0 < old_size < new_size``."""
    shift = ((old_size & -old_size).bit_length()) - 1  # trailing zero bits
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    seed = 0 if old_size == 1 << shift else 1  # old root is implicit for 2^k
    return seed + (inner - shift) + border


def verify_inclusion(
    *,
    leaf_hash: bytes,
    index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree (``tree_size``, ``root``).

    Implements RFC 9162 2.1.3.2. Returns ``None`` on success and raises
    :class:`InconsistentLogError` on any failure or malformed input.
    Invariant: on return, the tree of ``tree_size`` leaves with root ``root``
    has ``leaf_hash`` at position ``index`` (unless SHA-256 collides). The
    caller must obtain ``(tree_size, root)`` from a verified signed checkpoint.
    """
    leaf = _untrusted_hash(leaf_hash, "leaf hash")
    want_root = _untrusted_hash(root, "root")
    fn = _untrusted_size(index, "leaf index")
    size = _untrusted_size(tree_size, "tree size")
    path = _untrusted_proof(proof)

    if fn >= size:
        _fail(f"leaf index {fn} is not below tree size {size}")
    expected = _inclusion_proof_len(fn, size)
    if len(path) != expected:
        _fail(
            f"inclusion proof for leaf {fn} in tree of size {size} must have "
            f"{expected} elements, got {len(path)}"
        )

    sn = size - 1
    r = leaf
    for p in path:
        if sn == 0:  # unreachable given the length check; kept per the RFC
            _fail("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _sha256(NODE_PREFIX + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # unreachable given the length check; kept per the RFC
        _fail("inclusion proof is shorter than the path to the root")
    if r != want_root:
        _fail(
            f"inclusion proof for leaf {index} does not lead to the root of the tree of size {size}"
        )


def verify_consistency(
    *,
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    Implements RFC 9162 2.1.4.2. Returns ``None`` on success and raises
    :class:`InconsistentLogError` on any failure or malformed input.
    Invariant: on return, the log between the two checkpoints only appended
    entries: none of the first ``old_size`` entries changed, moved or vanished.
    Equal sizes need an empty proof and equal roots; ``old_size == 0`` needs an
    empty proof and ``old_root == EMPTY_ROOT``; a shrinking log always fails.
    """
    root1 = _untrusted_hash(old_root, "old root")
    root2 = _untrusted_hash(new_root, "new root")
    size1 = _untrusted_size(old_size, "old size")
    size2 = _untrusted_size(new_size, "new size")
    path = _untrusted_proof(proof)

    if size1 > size2:
        _fail(f"log shrank from size {size1} to {size2}")
    if size1 == 0:
        if path:
            _fail(f"consistency proof from the empty tree must be empty, got {len(path)}")
        if root1 != EMPTY_ROOT:
            _fail("old root of the empty tree is not the empty-tree hash")
        if size2 == 0 and root2 != EMPTY_ROOT:
            _fail("new root of the empty tree is not the empty-tree hash")
        return
    if size1 == size2:
        if path:
            _fail(f"consistency proof between equal sizes must be empty, got {len(path)}")
        if root1 != root2:
            _fail(f"two different roots for the same tree size {size1}")
        return
    expected = _consistency_proof_len(size1, size2)
    if len(path) != expected:
        _fail(
            f"consistency proof from size {size1} to {size2} must have "
            f"{expected} elements, got {len(path)}"
        )

    if size1 & (size1 - 1) == 0:  # old tree is a complete subtree of the new one
        path.insert(0, root1)
    fn = size1 - 1
    sn = size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # unreachable given the length check; kept per the RFC
            _fail("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = _sha256(NODE_PREFIX + c + fr).digest()
            sr = _sha256(NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:  # unreachable given the length check; kept per the RFC
        _fail("consistency proof is shorter than the path to the root")
    if fr != root1:
        _fail(f"consistency proof does not reproduce the old root of size {size1}")
    if sr != root2:
        _fail(
            f"consistency proof does not lead from the old root of size {size1} "
            f"to the new root of size {size2}"
        )


# --------------------------------------------------------------------------
# Append-only in-memory tree (server side)
# --------------------------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Append-only RFC 9162 Merkle tree serving roots and proofs for any prefix.

    Storage: ``_levels[k]`` is the concatenation of the hashes of every
    complete, aligned subtree of ``2**k`` leaves (level 0 holds the leaf
    hashes), about ``2 * 32`` bytes per leaf in total. Appending costs
    amortised O(1) hashes; roots and proofs of any historical size cost
    O(log n) stored-node reads and at most O(log^2 n) hashes.

    Invariant: stored nodes are never modified, so a proof or root served for
    a past size stays valid forever. A size becomes visible (:attr:`size`)
    only after all of its nodes are stored. Writers are not synchronised:
    serialise ``append``/``extend`` with an external lock.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, hashes: Iterable[bytes]) -> Self:
        """Build a tree from leaf hashes (already ``leaf_hash``-ed), in order."""
        tree = cls()
        tree.extend(hashes)
        return tree

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index.

        Invariant: earlier leaves, nodes, roots and proofs are unchanged.
        """
        h = _require_hash(leaf_hash, "leaf hash")
        levels = self._levels
        index = self._size
        levels[0] += h
        n = index
        k = 0
        while n & 1:  # the new node completes a pair: hash it into the level above
            below = levels[k]
            h = _sha256(NODE_PREFIX + below[-2 * HASH_SIZE : -HASH_SIZE] + h).digest()
            k += 1
            if k == len(levels):
                levels.append(bytearray())
            levels[k] += h
            n >>= 1
        self._size = index + 1
        return index

    def extend(self, hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes in order, all or nothing.

        Every element is validated before the tree changes, so a bad element
        leaves the tree untouched (UsageError).
        """
        buf = bytearray()
        for i, h in enumerate(hashes):
            buf += _require_hash(h, f"leaf hash {i}")
        if not buf:
            return
        old = self._size
        new = old + len(buf) // HASH_SIZE
        levels = self._levels
        if old == 0:
            levels[0] = buf  # adopt the buffer: no copy of the largest level
        else:
            levels[0] += buf
        del buf
        pair = 2 * HASH_SIZE
        step = _BUILD_CHUNK * pair
        k = 0
        while True:
            have = old >> (k + 1)
            want = new >> (k + 1)
            if have == want:  # then no higher level changes either
                break
            if k + 1 == len(levels):
                levels.append(bytearray())
            above = levels[k + 1]
            with memoryview(levels[k]) as below:
                # Hash in bounded chunks: temporary digests stay small.
                for lo in range(have * pair, want * pair, step):
                    above += b"".join(
                        [
                            _sha256(NODE_PREFIX + below[o : o + pair]).digest()
                            for o in range(lo, min(lo + step, want * pair), pair)
                        ]
                    )
            k += 1
        self._size = new

    def leaf(self, index: int) -> bytes:
        """Return the leaf hash at ``index`` (``0 <= index < size``)."""
        self._check_index(index, self._size)
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """Return ``MTH`` of the first ``size`` leaves (default: all).

        Invariant: equals ``root_from_leaf_hashes`` of that prefix.
        """
        return self._range_hash(0, self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 inclusion path of leaf ``index`` in the tree of ``size``.

        Invariant: ``verify_inclusion`` accepts it against ``root(size)``.
        """
        end = self._check_size(size)
        self._check_index(index, end)
        proof: list[bytes] = []
        start = 0
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                level = k.bit_length() - 1
                proof.append(self._node(level, start >> level))
                start += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 consistency proof from ``old_size`` to ``new_size``.

        Invariant: ``verify_consistency`` accepts it against ``root(old_size)``
        and ``root(new_size)``. Empty when ``old_size`` is 0 or equals
        ``new_size``.
        """
        end = self._check_size(new_size)
        m = self._check_size(old_size)
        if m > end:
            raise UsageError(f"old size {m} is larger than new size {end}")
        if m in (0, end):
            return []
        # SUBPROOF(m, D[start:end], b) from RFC 9162 2.1.4.1, iteratively.
        proof: list[bytes] = []
        start = 0
        complete = True  # b: whether D[start:start+m] is still the whole old tree
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                level = k.bit_length() - 1
                proof.append(self._node(level, start >> level))
                start += k
                m -= k
                complete = False
        if not complete:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof

    # -- internals ---------------------------------------------------------

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if type(size) is not int:
            raise UsageError(f"size must be an int, got {type(size).__name__}")
        if not 0 <= size <= self._size:
            raise UsageError(f"size {_show_int(size)} is outside 0..{self._size}")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if type(index) is not int:
            raise UsageError(f"index must be an int, got {type(index).__name__}")
        if not 0 <= index < size:
            raise UsageError(f"index {_show_int(index)} is outside 0..{size - 1} (size {size})")

    def _node(self, level: int, index: int) -> bytes:
        off = index * HASH_SIZE
        return bytes(self._levels[level][off : off + HASH_SIZE])

    def _range_hash(self, start: int, end: int) -> bytes:
        """``MTH(D[start:end])`` for a range the RFC recursion produces.

        Such ranges start at a multiple of the smallest power of two
        ``>= end - start``, so they split into complete stored subtrees of
        strictly decreasing size, folded right to left.
        """
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        parts: list[bytes] = []
        pos = start
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                parts.append(self._node(level, pos >> level))
                pos += 1 << level
        h = parts.pop()
        while parts:
            h = _sha256(NODE_PREFIX + parts.pop() + h).digest()
        return h
