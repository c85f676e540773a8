"""Tests of rampart.trust.merkle: RFC 9162 Merkle trees, proofs and verifiers.

Threat T7 (log tampering): a compromised or buggy server rewrites, reorders,
drops or truncates audit-log entries, or shows different clients different
histories. Clients hold signed checkpoints (size, root); these tests show the
verifiers refuse every such history, and only with InconsistentLogError.

Layout:
  1. Published test vectors (copied verbatim, sources cited).
  2. An independent reference written directly from RFC 9162 2.1.1 (MTH),
     2.1.3.1 (PATH) and 2.1.4.1 (SUBPROOF), and exhaustive/property checks of
     MerkleTree and the verifiers against it.
  3. Mutation properties: every corrupted proof fails.
  4. T7 threat scenarios.
  5. Hostile inputs to the verifiers, usage errors of MerkleTree.
  6. Cost bounds (hash counts) of the tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampart.trust import InconsistentLogError, TrustError, UsageError, merkle
from rampart.trust.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    MAX_PROOF_LEN,
    MAX_TREE_SIZE,
    NODE_PREFIX,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)


def h(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ===========================================================================
# 1. Published test vectors
# ===========================================================================
#
# The CT reference tree of 8 leaves, its node hashes and its roots for every
# size are copied verbatim from transparency-dev/merkle, testonly/constants.go
# (LeafInputs, NodeHashes, RootHashes; commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1),
# the successor of the certificate-transparency-go merkletree test data and of
# Google's C++ CT merkle_tree_test.cc. The inclusion and consistency proofs are
# copied from transparency-dev/merkle proof/verify_test.go (inclusionProofs,
# consistencyProofs; commit 02194e9afb6c1d95b5381350007963aa70fff472), whose
# leaf numbers are 1-based (converted to 0-based indices below).

VECTOR_LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# NodeHashes()[level][index]
VECTOR_NODES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [
        h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
    ],
]

# RootHashes()[size], size 0..8
VECTOR_ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# (0-based leaf index, tree size, proof); verify_test.go lists {1, 8}, {6, 8},
# {3, 3}, {2, 5} with 1-based leaf numbers.
VECTOR_INCLUSION = [
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        3,
        [
            h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        ],
    ),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (0, 1, []),  # {1, 1, nil}
]

# (old size, new size, proof)
VECTOR_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# From transparency-dev/merkle proof/verify_test.go (sha256SomeHash).
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


def vector_tree() -> MerkleTree:
    return MerkleTree.from_leaf_hashes(leaf_hash(d) for d in VECTOR_LEAVES)


def test_rfc6962_hasher_vectors() -> None:
    # transparency-dev/merkle rfc6962/rfc6962_test.go (TestRFC6962Hasher).
    assert EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert leaf_hash(b"") == h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(b"L123456") == h(
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert LEAF_PREFIX == b"\x00" and NODE_PREFIX == b"\x01"
    assert HASH_SIZE == 32 and MAX_PROOF_LEN == 64


def test_vector_leaf_and_node_hashes() -> None:
    assert [leaf_hash(d) for d in VECTOR_LEAVES] == VECTOR_NODES[0]
    for level in range(1, len(VECTOR_NODES)):
        below = VECTOR_NODES[level - 1]
        for j, want in enumerate(VECTOR_NODES[level]):
            assert node_hash(below[2 * j], below[2 * j + 1]) == want
    tree = vector_tree()
    for i, want in enumerate(VECTOR_NODES[0]):
        assert tree.leaf(i) == want


@pytest.mark.parametrize("size", range(len(VECTOR_ROOTS)))
def test_vector_roots(size: int) -> None:
    hashes = [leaf_hash(d) for d in VECTOR_LEAVES[:size]]
    assert root_from_leaf_hashes(hashes) == VECTOR_ROOTS[size]
    assert MerkleTree.from_leaf_hashes(hashes).root() == VECTOR_ROOTS[size]
    assert vector_tree().root(size) == VECTOR_ROOTS[size]  # historical root


def test_vector_roots_while_appending_one_at_a_time() -> None:
    tree = MerkleTree()
    assert tree.root() == VECTOR_ROOTS[0]
    for i, data in enumerate(VECTOR_LEAVES):
        assert tree.append(leaf_hash(data)) == i
        assert tree.size == i + 1
        for s in range(i + 2):
            assert tree.root(s) == VECTOR_ROOTS[s]


def corrupt_inclusion(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, dict[str, Any]]]:
    """The corruptions of transparency-dev/merkle corruptInclusionProof."""
    base: dict[str, Any] = dict(leaf_hash=leaf, index=index, tree_size=size, proof=proof, root=root)
    probes: list[tuple[str, dict[str, Any]]] = [
        ("index - 1", {**base, "index": index - 1}),
        ("index + 1", {**base, "index": index + 1}),
        ("index ^ 2", {**base, "index": index ^ 2}),
        ("size * 2", {**base, "tree_size": size * 2}),
        ("size / 2", {**base, "tree_size": size // 2}),
        ("wrong leaf", {**base, "leaf_hash": b"WrongLeaf"}),
        ("empty root", {**base, "root": EMPTY_ROOT}),
        ("random root", {**base, "root": SOME_HASH}),
        ("trailing garbage", {**base, "proof": [*proof, b""]}),
        ("trailing root", {**base, "proof": [*proof, root]}),
        ("preceding garbage", {**base, "proof": [b"", *proof]}),
        ("preceding root", {**base, "proof": [root, *proof]}),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip_bit(bad[i], 3)
        probes.append((f"modified proof[{i}] bit 3", {**base, "proof": bad}))
    if proof:
        probes.append(("removed component", {**base, "proof": proof[:-1]}))
    if len(proof) > 1:
        probes.append(("inserted component", {**base, "proof": [proof[0], SOME_HASH, *proof[1:]]}))
    return probes


def corrupt_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, dict[str, Any]]]:
    """The corruptions of transparency-dev/merkle corruptConsistencyProof."""
    base: dict[str, Any] = dict(
        old_size=size1, new_size=size2, old_root=root1, new_root=root2, proof=proof
    )
    probes: list[tuple[str, dict[str, Any]]] = [
        ("size1 - 1", {**base, "old_size": size1 - 1}),
        ("size1 + 1", {**base, "old_size": size1 + 1}),
        ("size1 ^ 2", {**base, "old_size": size1 ^ 2}),
        ("size2 * 2", {**base, "new_size": size2 * 2}),
        ("size2 / 2", {**base, "new_size": size2 // 2}),
        ("wrong root1", {**base, "old_root": b"WrongRoot"}),
        ("wrong root2", {**base, "new_root": b"WrongRoot"}),
        ("swapped roots", {**base, "old_root": root2, "new_root": root1}),
        ("empty proof", {**base, "proof": []}),
        ("trailing garbage", {**base, "proof": [*proof, b""]}),
        ("trailing root1", {**base, "proof": [*proof, root1]}),
        ("trailing root2", {**base, "proof": [*proof, root2]}),
        ("preceding garbage", {**base, "proof": [b"", *proof]}),
        ("preceding root1", {**base, "proof": [root1, *proof]}),
        ("preceding root2", {**base, "proof": [root2, *proof]}),
        ("preceding proof[0]", {**base, "proof": [proof[0], *proof]}),
        ("truncated proof", {**base, "proof": proof[:-1]}),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip_bit(bad[i], 4)
        probes.append((f"modified proof[{i}] bit 4", {**base, "proof": bad}))
    return probes


def assert_all_refused(fn: Callable[..., None], probes: list[tuple[str, dict[str, Any]]]) -> None:
    accepted = []
    for desc, kwargs in probes:
        try:
            fn(**kwargs)
        except InconsistentLogError:
            continue
        accepted.append(desc)
    assert not accepted, f"accepted corrupted input: {accepted}"


@pytest.mark.parametrize(("index", "size", "proof"), VECTOR_INCLUSION)
def test_vector_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    tree = vector_tree()
    assert tree.inclusion_proof(index, size) == proof
    leaf = leaf_hash(VECTOR_LEAVES[index])
    verify_inclusion(
        leaf_hash=leaf, index=index, tree_size=size, proof=proof, root=VECTOR_ROOTS[size]
    )
    assert_all_refused(
        verify_inclusion, corrupt_inclusion(index, size, proof, VECTOR_ROOTS[size], leaf)
    )


@pytest.mark.parametrize(("size1", "size2", "proof"), VECTOR_CONSISTENCY)
def test_vector_consistency_proofs(size1: int, size2: int, proof: list[bytes]) -> None:
    tree = vector_tree()
    assert tree.consistency_proof(size1, size2) == proof
    root1, root2 = VECTOR_ROOTS[size1], VECTOR_ROOTS[size2]
    verify_consistency(old_size=size1, new_size=size2, old_root=root1, new_root=root2, proof=proof)
    if proof:  # as upstream: corrupt only non-trivial proofs
        assert_all_refused(
            verify_consistency, corrupt_consistency(size1, size2, root1, root2, proof)
        )


# Accumulated vectors of the "Subtree Test Vectors" appendix of
# draft-ietf-plants-merkle-tree-certs, as reproduced by transparency-dev/merkle
# testonly/vectors_test.go (TestSubtreeHashVectors and
# TestSubtreeInclusionProofVectors; commit 1c243046bea7805f274ffcdc2f0f58e69d73e25e).
# Tree D has leaves d[i] = bytes([i]) for i < 130; every valid subtree
# [start, end) (start == 0, or start a multiple of bit_ceil(end - start)) is
# an RFC 9162 tree over D[start:end], so its hash is MTH(D[start:end]) and its
# inclusion proofs are PATH(index - start, D[start:end]). All lines are folded
# into one SHA-256 and compared with the published digest.
SUBTREE_VECTOR_MAX = 130
SUBTREE_HASH_DIGEST = "94a95384a8c69acea9b50d035a58285b3a777cb7a724005faa5e1f1e1190007f"
SUBTREE_INCLUSION_DIGEST = "ac2a8f989e44d99e399db448050ff5f19757df53cfb716aa81015d3955d8163f"


def valid_subtrees(max_end: int) -> list[tuple[int, int]]:
    out = []
    for end in range(1, max_end + 1):
        for start in range(end):
            length = end - start
            bit_ceil = 1 << (length - 1).bit_length()
            if start == 0 or start % bit_ceil == 0:
                out.append((start, end))
    return out


def test_draft_subtree_hash_accumulated_vector() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(SUBTREE_VECTOR_MAX)]
    acc = hashlib.sha256()
    for start, end in valid_subtrees(SUBTREE_VECTOR_MAX):
        acc.update(f"[{start}, {end}) {root_from_leaf_hashes(leaves[start:end]).hex()}\n".encode())
    assert acc.hexdigest() == SUBTREE_HASH_DIGEST


def test_draft_subtree_inclusion_accumulated_vector() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(SUBTREE_VECTOR_MAX)]
    acc = hashlib.sha256()
    for start, end in valid_subtrees(SUBTREE_VECTOR_MAX):
        tree = MerkleTree.from_leaf_hashes(leaves[start:end])
        for index in range(start, end):
            proof = tree.inclusion_proof(index - start)
            acc.update(
                (
                    f"{index} [{start}, {end})" + "".join(f" {p.hex()}" for p in proof) + "\n"
                ).encode()
            )
    assert acc.hexdigest() == SUBTREE_INCLUSION_DIGEST


# ===========================================================================
# 2. Independent reference, straight from RFC 9162 section 2.1
# ===========================================================================


def ref_leaf(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 2.1.1, over entries (not leaf hashes)."""
    n = len(d)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + d[0])
    k = ref_split(n)
    return sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1."""
    n = len(d)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1; empty for m == 0 and m == n."""
    if m in (0, len(d)):
        return []
    return ref_subproof(m, d, True)


def make_entries(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + b"entry-" + str(i).encode() for i in range(n)]


def make_tree(entries: Sequence[bytes]) -> MerkleTree:
    return MerkleTree.from_leaf_hashes(ref_leaf(e) for e in entries)


def flip_bit(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_reference_reproduces_vectors() -> None:
    # The reference itself is checked against the published vectors.
    for size, root in enumerate(VECTOR_ROOTS):
        assert ref_mth(VECTOR_LEAVES[:size]) == root
    for index, size, proof in VECTOR_INCLUSION:
        assert ref_path(index, VECTOR_LEAVES[:size]) == proof
    for size1, size2, proof in VECTOR_CONSISTENCY:
        assert ref_proof(size1, VECTOR_LEAVES[:size2]) == proof


EXHAUSTIVE_MAX = 40


def test_exhaustive_small_trees_match_reference_and_verify() -> None:
    entries = make_entries(EXHAUSTIVE_MAX)
    tree = make_tree(entries)
    roots = [ref_mth(entries[:n]) for n in range(EXHAUSTIVE_MAX + 1)]
    for n in range(EXHAUSTIVE_MAX + 1):
        assert tree.root(n) == roots[n]
        assert root_from_leaf_hashes([ref_leaf(e) for e in entries[:n]]) == roots[n]
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, entries[:n]), (i, n)
            verify_inclusion(
                leaf_hash=ref_leaf(entries[i]), index=i, tree_size=n, proof=proof, root=roots[n]
            )
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ref_proof(m, entries[:n]), (m, n)
            verify_consistency(
                old_size=m, new_size=n, old_root=roots[m], new_root=roots[n], proof=proof
            )


salts = st.binary(max_size=8)
sizes = st.integers(min_value=1, max_value=300)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    n = draw(sizes)
    size = draw(st.integers(min_value=1, max_value=n))
    index = draw(st.integers(min_value=0, max_value=size - 1))
    return make_entries(n, draw(salts)), size, index


@st.composite
def tree_and_sizes(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    n = draw(sizes)
    new = draw(st.integers(min_value=1, max_value=n))
    old = draw(st.integers(min_value=1, max_value=new))
    return make_entries(n, draw(salts)), old, new


@given(tree_and_index())
def test_inclusion_proof_matches_reference_and_verifies(case: tuple[list[bytes], int, int]) -> None:
    entries, size, index = case
    tree = make_tree(entries)
    proof = tree.inclusion_proof(index, size)
    assert proof == ref_path(index, entries[:size])
    root = tree.root(size)
    assert root == ref_mth(entries[:size])
    verify_inclusion(
        leaf_hash=ref_leaf(entries[index]), index=index, tree_size=size, proof=proof, root=root
    )


@given(tree_and_sizes())
def test_consistency_proof_matches_reference_and_verifies(
    case: tuple[list[bytes], int, int],
) -> None:
    entries, old, new = case
    tree = make_tree(entries)
    proof = tree.consistency_proof(old, new)
    assert proof == ref_proof(old, entries[:new])
    verify_consistency(
        old_size=old, new_size=new, old_root=tree.root(old), new_root=tree.root(new), proof=proof
    )


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12), salts)
def test_append_extend_and_bulk_build_agree(chunks: list[int], salt: bytes) -> None:
    entries = make_entries(sum(chunks), salt)
    hashes = [ref_leaf(e) for e in entries]
    one_by_one, chunked = MerkleTree(), MerkleTree()
    pos = 0
    for c in chunks:
        chunked.extend(iter(hashes[pos : pos + c]))
        for hsh in hashes[pos : pos + c]:
            one_by_one.append(hsh)
        pos += c
        assert chunked.size == one_by_one.size == pos
        assert chunked.root() == one_by_one.root() == ref_mth(entries[:pos])
    bulk = MerkleTree.from_leaf_hashes(hashes)
    for n in range(len(entries) + 1):
        assert bulk.root(n) == chunked.root(n) == one_by_one.root(n)
    for i in range(len(entries)):
        assert bulk.leaf(i) == chunked.leaf(i) == one_by_one.leaf(i) == hashes[i]


def test_root_from_leaf_hashes_accepts_any_sequence() -> None:
    hashes = [leaf_hash(d) for d in VECTOR_LEAVES]
    assert root_from_leaf_hashes(tuple(hashes)) == VECTOR_ROOTS[8]
    as_bytearrays: list[Any] = [bytearray(x) for x in hashes]
    assert root_from_leaf_hashes(as_bytearrays) == VECTOR_ROOTS[8]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT


def test_root_alone_does_not_bind_tree_size() -> None:
    # Documents RFC 9162 semantics (module rule 2): the same path can verify
    # for two sizes against one root, so (size, root) must come together from
    # a signed checkpoint. Here PATH(0, D[3]) also checks as index 0 of size 4.
    tree = vector_tree()
    proof = tree.inclusion_proof(0, 3)
    for size in (3, 4):
        verify_inclusion(
            leaf_hash=tree.leaf(0), index=0, tree_size=size, proof=proof, root=tree.root(3)
        )
    # ...but never against the real root of the other size.
    with pytest.raises(InconsistentLogError):
        verify_inclusion(
            leaf_hash=tree.leaf(0), index=0, tree_size=4, proof=proof, root=tree.root(4)
        )


# ===========================================================================
# 3. Mutation properties: corrupted proofs always fail
# ===========================================================================


def refused(fn: Callable[..., None], **kwargs: Any) -> bool:
    """True iff fn refuses with InconsistentLogError; any other exception propagates."""
    try:
        fn(**kwargs)
    except InconsistentLogError as exc:
        assert type(exc) is InconsistentLogError and exc.reason == "inconsistent-log"
        assert str(exc).startswith("inconsistent-log: ") and exc.message
        return True
    return False


@given(tree_and_index(), st.data())
def test_inclusion_any_corruption_fails(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, size, index = case
    tree = make_tree(entries)
    proof, root, leaf = tree.inclusion_proof(index, size), tree.root(size), tree.leaf(index)
    good = dict(leaf_hash=leaf, index=index, tree_size=size, proof=proof, root=root)
    assert not refused(verify_inclusion, **good)
    assert_all_refused(verify_inclusion, corrupt_inclusion(index, size, proof, root, leaf))

    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    assert refused(verify_inclusion, **{**good, "leaf_hash": flip_bit(leaf, bit)})
    assert refused(verify_inclusion, **{**good, "root": flip_bit(root, bit)})
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = list(proof)
        bad[i] = flip_bit(bad[i], bit)
        assert refused(verify_inclusion, **{**good, "proof": bad})
        cut = data.draw(st.integers(0, len(proof) - 1), label="cut")
        assert refused(verify_inclusion, **{**good, "proof": proof[:cut]})
    extra = data.draw(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), label="extra")
    assert refused(verify_inclusion, **{**good, "proof": [*proof, extra]})
    assert refused(verify_inclusion, **{**good, "proof": [extra, *proof]})

    # Any other index: the proof does not transfer (leaves are distinct).
    other = data.draw(
        st.integers(0, size - 1).filter(lambda j: j != index) if size > 1 else st.just(size)
    )
    assert refused(verify_inclusion, **{**good, "index": other})
    # Another entry's hash at this position.
    if size > 1:
        j = data.draw(st.integers(0, size - 1).filter(lambda j: j != index), label="j")
        assert refused(verify_inclusion, **{**good, "leaf_hash": tree.leaf(j)})
    # A proof for this size replayed against the checkpoint of any other size.
    other_size = data.draw(st.integers(1, len(entries)), label="other_size")
    if other_size != size and index < other_size:
        kw = {**good, "tree_size": other_size, "root": tree.root(other_size)}
        assert refused(verify_inclusion, **kw) == (proof != tree.inclusion_proof(index, other_size))


@given(tree_and_sizes(), st.data())
def test_consistency_any_corruption_fails(
    case: tuple[list[bytes], int, int], data: st.DataObject
) -> None:
    entries, old, new = case
    tree = make_tree(entries)
    proof, root1, root2 = tree.consistency_proof(old, new), tree.root(old), tree.root(new)
    good = dict(old_size=old, new_size=new, old_root=root1, new_root=root2, proof=proof)
    assert not refused(verify_consistency, **good)
    if old == new:
        assert proof == []
        other = data.draw(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), label="root")
        if other != root1:
            assert refused(verify_consistency, **{**good, "new_root": other})
        return
    assert_all_refused(verify_consistency, corrupt_consistency(old, new, root1, root2, proof))

    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    assert refused(verify_consistency, **{**good, "old_root": flip_bit(root1, bit)})
    assert refused(verify_consistency, **{**good, "new_root": flip_bit(root2, bit)})
    i = data.draw(st.integers(0, len(proof) - 1), label="element")
    bad = list(proof)
    bad[i] = flip_bit(bad[i], bit)
    assert refused(verify_consistency, **{**good, "proof": bad})
    cut = data.draw(st.integers(0, len(proof) - 1), label="cut")
    assert refused(verify_consistency, **{**good, "proof": proof[:cut]})
    extra = data.draw(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), label="extra")
    assert refused(verify_consistency, **{**good, "proof": [*proof, extra]})
    assert refused(verify_consistency, **{**good, "proof": [extra, *proof]})
    assert refused(verify_consistency, **{**good, "old_size": new, "new_size": old})

    # The proof replayed between checkpoints of other sizes.
    other_old = data.draw(st.integers(1, new), label="other_old")
    if other_old != old:
        kw = {**good, "old_size": other_old, "old_root": tree.root(other_old)}
        assert refused(verify_consistency, **kw) == (
            proof != tree.consistency_proof(other_old, new)
        )
    other_new = data.draw(st.integers(old, len(entries)), label="other_new")
    if other_new != new:
        kw = {**good, "new_size": other_new, "new_root": tree.root(other_new)}
        assert refused(verify_consistency, **kw) == (
            proof != tree.consistency_proof(old, other_new)
        )


# ===========================================================================
# 4. T7: log tampering
# ===========================================================================

LOG_SIZE = 100
CHECKPOINT = 60


def honest_log() -> tuple[list[bytes], MerkleTree]:
    entries = make_entries(LOG_SIZE, b"audit:")
    return entries, make_tree(entries)


def consistency_refused(
    old_size: int, old_root: bytes, forged: MerkleTree, new_size: int | None = None
) -> bool:
    """Would a client holding (old_size, old_root) refuse the forged log?"""
    new_size = forged.size if new_size is None else new_size
    kwargs: dict[str, Any] = dict(
        old_size=old_size,
        new_size=new_size,
        old_root=old_root,
        new_root=forged.root(new_size),
    )
    if old_size <= new_size:
        # The forger serves the best proof it has: the one of its own tree.
        kwargs["proof"] = forged.consistency_proof(old_size, new_size)
    else:
        kwargs["proof"] = []
    return refused(verify_consistency, **kwargs)


@pytest.mark.parametrize("victim", [0, 1, 17, 31, 32, 58, CHECKPOINT - 1])
def test_T7_rewritten_entry_breaks_consistency(victim: int) -> None:
    entries, tree = honest_log()
    checkpoint_root = tree.root(CHECKPOINT)
    forged_entries = list(entries)
    forged_entries[victim] = b"rewritten: nothing happened here"
    forged = make_tree(forged_entries)
    assert forged.root(CHECKPOINT) != checkpoint_root
    assert consistency_refused(CHECKPOINT, checkpoint_root, forged)
    # The rewritten entry cannot be proven against the checkpoint either.
    assert refused(
        verify_inclusion,
        leaf_hash=forged.leaf(victim),
        index=victim,
        tree_size=CHECKPOINT,
        proof=forged.inclusion_proof(victim, CHECKPOINT),
        root=checkpoint_root,
    )
    # Entries after the checkpoint are new history: rewriting them is not
    # tampering with what the client saw, and consistency still holds.
    tail = list(entries)
    tail[CHECKPOINT + 5] = b"appended later"
    assert not consistency_refused(CHECKPOINT, checkpoint_root, make_tree(tail))


@given(st.integers(0, CHECKPOINT - 1), st.integers(CHECKPOINT, LOG_SIZE))
def test_T7_rewritten_entry_any_position(victim: int, new_size: int) -> None:
    entries, tree = honest_log()
    forged_entries = list(entries)
    forged_entries[victim] += b"!"
    forged = make_tree(forged_entries)
    assert consistency_refused(CHECKPOINT, tree.root(CHECKPOINT), forged, new_size)


@pytest.mark.parametrize(("a", "b"), [(3, 4), (0, 59), (10, 20), (58, 59)])
def test_T7_reordered_entries_detected(a: int, b: int) -> None:
    entries, tree = honest_log()
    checkpoint_root = tree.root(CHECKPOINT)
    swapped = list(entries)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    forged = make_tree(swapped)
    assert forged.root(CHECKPOINT) != checkpoint_root
    assert consistency_refused(CHECKPOINT, checkpoint_root, forged)
    # Entry a, now at position b, cannot be proven at position b...
    assert refused(
        verify_inclusion,
        leaf_hash=ref_leaf(entries[a]),
        index=b,
        tree_size=CHECKPOINT,
        proof=forged.inclusion_proof(b, CHECKPOINT),
        root=checkpoint_root,
    )
    # ...nor with its honest proof at the wrong position.
    assert refused(
        verify_inclusion,
        leaf_hash=ref_leaf(entries[a]),
        index=b,
        tree_size=CHECKPOINT,
        proof=tree.inclusion_proof(a, CHECKPOINT),
        root=checkpoint_root,
    )


def test_T7_truncated_log_detected() -> None:
    entries, tree = honest_log()
    checkpoint_root = tree.root(CHECKPOINT)
    # Rolled back below the checkpoint: a shrinking log never verifies.
    truncated = make_tree(entries[:40])
    assert consistency_refused(CHECKPOINT, checkpoint_root, truncated)
    with pytest.raises(InconsistentLogError, match="shrank"):
        verify_consistency(
            old_size=CHECKPOINT,
            new_size=40,
            old_root=checkpoint_root,
            new_root=truncated.root(),
            proof=tree.consistency_proof(40, CHECKPOINT),
        )
    # Truncated, then regrown past the checkpoint with other entries.
    regrown = make_tree(entries[:40] + make_entries(LOG_SIZE - 40, b"regrown:"))
    assert consistency_refused(CHECKPOINT, checkpoint_root, regrown)
    # Claiming the old size with the truncated tree's root is refused too.
    with pytest.raises(InconsistentLogError, match="two different roots"):
        verify_consistency(
            old_size=CHECKPOINT,
            new_size=CHECKPOINT,
            old_root=checkpoint_root,
            new_root=regrown.root(CHECKPOINT),
            proof=[],
        )


def test_T7_dropped_entry_detected() -> None:
    entries, tree = honest_log()
    dropped = make_tree(entries[:25] + entries[26:])
    assert consistency_refused(CHECKPOINT, tree.root(CHECKPOINT), dropped)


def test_T7_inserted_entry_detected() -> None:
    entries, tree = honest_log()
    inserted = make_tree([*entries[:30], b"backdated", *entries[30:]])
    assert consistency_refused(CHECKPOINT, tree.root(CHECKPOINT), inserted)


def test_T7_split_view_detected() -> None:
    # The server shows two clients two forks that share only the first 50
    # entries. A client that saw fork A at 80 cannot be moved to fork B.
    common = make_entries(50, b"common:")
    fork_a = make_tree(common + make_entries(50, b"A:"))
    fork_b = make_tree(common + make_entries(50, b"B:"))
    assert not consistency_refused(50, fork_a.root(50), fork_b)  # shared prefix is fine
    assert consistency_refused(80, fork_a.root(80), fork_b)
    assert consistency_refused(80, fork_b.root(80), fork_a)
    with pytest.raises(InconsistentLogError, match="two different roots"):
        verify_consistency(
            old_size=80, new_size=80, old_root=fork_a.root(80), new_root=fork_b.root(80), proof=[]
        )


def test_T7_inclusion_proof_for_other_entry_refused() -> None:
    entries, tree = honest_log()
    root = tree.root()
    forged_leaf = ref_leaf(b"never logged")
    for index in (0, 7, 50, LOG_SIZE - 1):
        assert refused(
            verify_inclusion,
            leaf_hash=forged_leaf,
            index=index,
            tree_size=LOG_SIZE,
            proof=tree.inclusion_proof(index),
            root=root,
        )


def test_T7_interior_node_passed_off_as_leaf_refused() -> None:
    # Second-preimage attack on Merkle trees without domain separation: claim
    # the 4-leaf tree is a 2-leaf tree whose "entries" are the concatenated
    # child hashes. The leaf prefix makes the forged leaf hash differ from
    # the interior node hash.
    tree = vector_tree()
    h0, h1, h2, h3 = (tree.leaf(i) for i in range(4))
    n01, n23 = node_hash(h0, h1), node_hash(h2, h3)
    assert node_hash(n01, n23) == tree.root(4)
    assert leaf_hash(h0 + h1) != n01
    assert refused(
        verify_inclusion,
        leaf_hash=leaf_hash(h0 + h1),
        index=0,
        tree_size=2,
        proof=[n23],
        root=tree.root(4),
    )
    # And the interior node itself, offered as a leaf hash, only ever appears
    # where it really is: as the root of a 2-leaf subtree, not as a leaf of the
    # 4-leaf tree at any index.
    for index in range(4):
        assert refused(
            verify_inclusion,
            leaf_hash=n01,
            index=index,
            tree_size=4,
            proof=tree.inclusion_proof(index, 4),
            root=tree.root(4),
        )


def test_T7_history_is_immutable_under_append() -> None:
    entries, tree = honest_log()
    before = {
        "roots": [tree.root(n) for n in range(LOG_SIZE + 1)],
        "incl": [tree.inclusion_proof(i, CHECKPOINT) for i in range(CHECKPOINT)],
        "cons": [tree.consistency_proof(m, CHECKPOINT) for m in range(CHECKPOINT + 1)],
    }
    tree.extend(ref_leaf(e) for e in make_entries(150, b"later:"))
    for _ in range(37):
        tree.append(SOME_HASH)
    assert [tree.root(n) for n in range(LOG_SIZE + 1)] == before["roots"]
    assert [tree.inclusion_proof(i, CHECKPOINT) for i in range(CHECKPOINT)] == before["incl"]
    assert [tree.consistency_proof(m, CHECKPOINT) for m in range(CHECKPOINT + 1)] == before["cons"]
    verify_consistency(
        old_size=CHECKPOINT,
        new_size=tree.size,
        old_root=before["roots"][CHECKPOINT],
        new_root=tree.root(),
        proof=tree.consistency_proof(CHECKPOINT),
    )


# ===========================================================================
# 5. Hostile inputs and usage errors
# ===========================================================================


class EvilBytes(bytes):
    def __len__(self) -> int:
        raise RuntimeError("boom")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")

    __hash__ = bytes.__hash__


class EvilInt(int):
    def __lt__(self, other: object) -> bool:
        raise RuntimeError("boom")


class EvilList(list[bytes]):
    def __len__(self) -> int:
        raise RuntimeError("boom")


BAD_HASHES: list[object] = [
    None,
    "",
    "a" * 32,
    "00" * 32,
    0,
    1.5,
    b"",
    b"\x00" * 31,
    b"\x00" * 33,
    b"\x00" * 64,
    bytearray(31),
    memoryview(bytes(32)),
    [0] * 32,
    EvilBytes(bytes(32)),
    object(),
]
BAD_SIZES: list[object] = [
    -1,
    -(2**70),
    MAX_TREE_SIZE + 1,
    2**64,
    10**100,
    True,
    False,
    1.0,
    float("nan"),
    "1",
    b"\x01",
    None,
    EvilInt(3),
    [1],
    10**5000,
    -(10**5000),
]
BAD_PROOFS: list[object] = [
    None,
    b"\x00" * 32,
    "proof",
    42,
    {b"\x00" * 32},
    {"a": b"\x00" * 32},
    iter([b"\x00" * 32]),
    (b"\x00" * 32 for _ in range(1)),
    [b"\x00" * 32] * (MAX_PROOF_LEN + 1),
    [b"\x00" * 32] * 1_000_000,
    [None],
    ["00" * 32],
    [b"\x00" * 31],
    [b"\x00" * 32, b"\x00" * 33],
    [EvilBytes(bytes(32))],
    EvilList([b"\x00" * 32]),
]


def safe_id(value: object) -> str:
    if type(value) is int and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}int{value.bit_length()}bits"
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__}[{len(text)}]"


def inclusion_args() -> dict[str, Any]:
    tree = vector_tree()
    return dict(
        leaf_hash=tree.leaf(5),
        index=5,
        tree_size=8,
        proof=tree.inclusion_proof(5, 8),
        root=tree.root(8),
    )


def consistency_args() -> dict[str, Any]:
    tree = vector_tree()
    return dict(
        old_size=6,
        new_size=8,
        old_root=tree.root(6),
        new_root=tree.root(8),
        proof=tree.consistency_proof(6, 8),
    )


def expect_refused(fn: Callable[..., None], **kwargs: Any) -> InconsistentLogError:
    with pytest.raises(TrustError) as info:
        fn(**kwargs)
    assert type(info.value) is InconsistentLogError
    return info.value


def test_valid_baselines_verify() -> None:
    verify_inclusion(**inclusion_args())
    verify_consistency(**consistency_args())


@pytest.mark.parametrize("field", ["leaf_hash", "root"])
@pytest.mark.parametrize("bad", BAD_HASHES, ids=safe_id)
def test_hostile_inclusion_hashes(field: str, bad: object) -> None:
    expect_refused(verify_inclusion, **{**inclusion_args(), field: bad})


@pytest.mark.parametrize("field", ["index", "tree_size"])
@pytest.mark.parametrize("bad", BAD_SIZES, ids=safe_id)
def test_hostile_inclusion_sizes(field: str, bad: object) -> None:
    expect_refused(verify_inclusion, **{**inclusion_args(), field: bad})


@pytest.mark.parametrize("bad", BAD_PROOFS, ids=lambda p: type(p).__name__)
def test_hostile_inclusion_proofs(bad: object) -> None:
    expect_refused(verify_inclusion, **{**inclusion_args(), "proof": bad})


@pytest.mark.parametrize("field", ["old_root", "new_root"])
@pytest.mark.parametrize("bad", BAD_HASHES, ids=safe_id)
def test_hostile_consistency_hashes(field: str, bad: object) -> None:
    expect_refused(verify_consistency, **{**consistency_args(), field: bad})


@pytest.mark.parametrize("field", ["old_size", "new_size"])
@pytest.mark.parametrize("bad", BAD_SIZES, ids=safe_id)
def test_hostile_consistency_sizes(field: str, bad: object) -> None:
    expect_refused(verify_consistency, **{**consistency_args(), field: bad})


@pytest.mark.parametrize("bad", BAD_PROOFS, ids=lambda p: type(p).__name__)
def test_hostile_consistency_proofs(bad: object) -> None:
    expect_refused(verify_consistency, **{**consistency_args(), "proof": bad})


def test_hostile_proof_elements_do_not_cost_hashing() -> None:
    # A proof one element too long is refused before any hashing.
    args = inclusion_args()
    err = expect_refused(verify_inclusion, **{**args, "proof": [*args["proof"], SOME_HASH]})
    assert "must have 3 elements, got 4" in err.message
    # An oversized proof is refused on its length alone, before its elements
    # are even looked at (they are not hashes here).
    for fn, base in ((verify_inclusion, args), (verify_consistency, consistency_args())):
        huge: list[Any] = [None] * 1_000_000
        err = expect_refused(fn, **{**base, "proof": huge})
        assert "more than the maximum 64" in err.message


garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=70),
    st.lists(st.binary(min_size=30, max_size=34), max_size=70),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3)), max_size=3),
    st.tuples(st.binary(min_size=32, max_size=32)),
)


def refused_or_trivially_valid(fn: Callable[..., None], **kwargs: Any) -> None:
    """Garbage may, by chance, form a trivially valid call (equal roots of equal
    sizes, or a one-leaf tree whose root is the leaf); anything else must be
    refused with InconsistentLogError and never another exception."""
    if refused(fn, **kwargs):
        return
    if fn is verify_inclusion:
        assert kwargs["tree_size"] == 1 and kwargs["leaf_hash"] == kwargs["root"]
    else:
        assert kwargs["old_size"] == kwargs["new_size"] or kwargs["old_size"] == 0
        assert kwargs["old_size"] == 0 or kwargs["old_root"] == kwargs["new_root"]


@settings(max_examples=300)
@given(garbage, garbage, garbage, garbage, garbage)
def test_hostile_garbage_inclusion(a: object, b: object, c: object, d: object, e: object) -> None:
    refused_or_trivially_valid(verify_inclusion, leaf_hash=a, index=b, tree_size=c, proof=d, root=e)


@settings(max_examples=300)
@given(garbage, garbage, garbage, garbage, garbage)
def test_hostile_garbage_consistency(a: object, b: object, c: object, d: object, e: object) -> None:
    refused_or_trivially_valid(
        verify_consistency, old_size=a, new_size=b, old_root=c, new_root=d, proof=e
    )


@given(
    st.integers(0, MAX_TREE_SIZE),
    st.integers(1, MAX_TREE_SIZE),
    st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LEN),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_hostile_well_formed_random_inclusion(
    index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    # Huge but legal sizes exercise the bit arithmetic: random proofs fail cleanly.
    refused_or_trivially_valid(
        verify_inclusion, leaf_hash=leaf, index=index, tree_size=size, proof=proof, root=root
    )


@given(
    st.integers(0, MAX_TREE_SIZE),
    st.integers(0, MAX_TREE_SIZE),
    st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LEN),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_hostile_well_formed_random_consistency(
    old: int, new: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    refused_or_trivially_valid(
        verify_consistency, old_size=old, new_size=new, old_root=root1, new_root=root2, proof=proof
    )


@given(st.integers(1, MAX_TREE_SIZE), st.data())
def test_valid_proof_lengths_fit_max_proof_len(size: int, data: st.DataObject) -> None:
    # Every tree up to MAX_TREE_SIZE has proofs of at most MAX_PROOF_LEN elements,
    # so the length cap never refuses a valid proof.
    index = data.draw(st.integers(0, size - 1))
    assert merkle._inclusion_proof_len(index, size) <= MAX_PROOF_LEN
    if size > 1:
        old = data.draw(st.integers(1, size - 1))
        assert merkle._consistency_proof_len(old, size) <= MAX_PROOF_LEN
    assert merkle._inclusion_proof_len(0, MAX_TREE_SIZE) == 63


def test_consistency_edge_cases() -> None:
    tree = vector_tree()
    r = [tree.root(n) for n in range(9)]
    ok = verify_consistency
    ok(old_size=0, new_size=0, old_root=EMPTY_ROOT, new_root=EMPTY_ROOT, proof=[])
    ok(old_size=0, new_size=8, old_root=EMPTY_ROOT, new_root=r[8], proof=[])
    ok(old_size=5, new_size=5, old_root=r[5], new_root=r[5], proof=())
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(old_size=0, new_size=8, old_root=r[1], new_root=r[8], proof=[]), "empty-tree hash"),
        (dict(old_size=0, new_size=0, old_root=EMPTY_ROOT, new_root=r[1], proof=[]), "empty-tree"),
        (
            dict(old_size=0, new_size=1, old_root=EMPTY_ROOT, new_root=r[1], proof=[r[1]]),
            "must be empty",
        ),
        (dict(old_size=5, new_size=5, old_root=r[5], new_root=r[5], proof=[r[5]]), "must be empty"),
        (dict(old_size=5, new_size=5, old_root=r[5], new_root=r[6], proof=[]), "different roots"),
        (dict(old_size=2, new_size=1, old_root=r[2], new_root=r[1], proof=[]), "shrank"),
        (dict(old_size=1, new_size=2, old_root=r[1], new_root=r[2], proof=[]), "got 0"),
        (
            dict(
                old_size=6,
                new_size=8,
                old_root=r[5],
                new_root=r[8],
                proof=tree.consistency_proof(6, 8),
            ),
            "old root",
        ),
        (
            dict(
                old_size=6,
                new_size=8,
                old_root=r[6],
                new_root=r[7],
                proof=tree.consistency_proof(6, 8),
            ),
            "new root",
        ),
    ]
    for kwargs, needle in cases:
        err = expect_refused(verify_consistency, **kwargs)
        assert needle in err.message, (kwargs, err.message)


def test_inclusion_edge_cases() -> None:
    tree = vector_tree()
    leaf = tree.leaf(0)
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (8, 8)]:
        err = expect_refused(
            verify_inclusion, leaf_hash=leaf, index=index, tree_size=size, proof=[], root=leaf
        )
        assert "not below tree size" in err.message
    # Single-entry tree: root == leaf hash, empty proof
    # (verify_test.go TestVerifyInclusionSingleEntry).
    verify_inclusion(leaf_hash=leaf, index=0, tree_size=1, proof=[], root=leaf)
    as_bytearray: dict[str, Any] = dict(leaf_hash=bytearray(leaf), root=bytearray(leaf))
    verify_inclusion(index=0, tree_size=1, proof=(), **as_bytearray)  # bytearray accepted too
    err = expect_refused(
        verify_inclusion, leaf_hash=leaf, index=0, tree_size=1, proof=[], root=SOME_HASH
    )
    assert "does not lead to the root" in err.message


def test_tree_usage_errors() -> None:
    tree = vector_tree()
    bad_calls: list[Callable[[], object]] = [
        lambda: tree.leaf(8),
        lambda: tree.leaf(-1),
        lambda: tree.leaf(True),
        lambda: tree.root(9),
        lambda: tree.root(-1),
        lambda: tree.root(2.0),  # type: ignore[arg-type]
        lambda: tree.inclusion_proof(8),
        lambda: tree.inclusion_proof(3, 3),
        lambda: tree.inclusion_proof(0, 0),
        lambda: tree.inclusion_proof(0, 9),
        lambda: tree.inclusion_proof(-1),
        lambda: tree.inclusion_proof(10**5000),
        lambda: tree.root(-(10**5000)),
        lambda: tree.inclusion_proof("1"),  # type: ignore[arg-type]
        lambda: tree.consistency_proof(9),
        lambda: tree.consistency_proof(5, 4),
        lambda: tree.consistency_proof(1, 9),
        lambda: tree.consistency_proof(-1, 4),
        lambda: tree.append(b"short"),
        lambda: tree.append("00" * 32),  # type: ignore[arg-type]
        lambda: tree.extend([SOME_HASH, b"short"]),
        lambda: MerkleTree.from_leaf_hashes([None]),  # type: ignore[list-item]
        lambda: node_hash(b"N123", b"N456"),
        lambda: leaf_hash("text"),  # type: ignore[arg-type]
        lambda: root_from_leaf_hashes([b"x"]),
    ]
    for call in bad_calls:
        with pytest.raises(UsageError):
            call()
    # The failed append/extend left the tree untouched (extend is all or nothing).
    assert tree.size == 8 and tree.root() == VECTOR_ROOTS[8]
    assert tree.consistency_proof(0) == [] and tree.consistency_proof(8) == []
    empty = MerkleTree()
    assert empty.size == 0 and empty.root() == EMPTY_ROOT and empty.root(0) == EMPTY_ROOT
    with pytest.raises(UsageError):
        empty.inclusion_proof(0)
    assert empty.consistency_proof(0) == []
    empty.extend([])
    assert empty.size == 0


# ===========================================================================
# 6. Cost bounds
# ===========================================================================


class HashCounter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, data: bytes = b"") -> Any:
        self.count += 1
        return hashlib.sha256(data)


def test_append_is_amortised_constant_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = HashCounter()
    monkeypatch.setattr(merkle, "_sha256", counter)
    n = 5000
    tree = MerkleTree()
    for i in range(n):
        tree.append(sha256(i.to_bytes(4, "big")))
    assert counter.count < n  # n - popcount(n) interior nodes, no leaf re-hashing
    counter.count = 0
    MerkleTree.from_leaf_hashes(tree.leaf(i) for i in range(n))
    assert counter.count < n


def test_proofs_and_roots_cost_polylog(monkeypatch: pytest.MonkeyPatch) -> None:
    n = (1 << 14) + 12345
    tree = MerkleTree.from_leaf_hashes(sha256(i.to_bytes(4, "big")) for i in range(n))
    counter = HashCounter()
    monkeypatch.setattr(merkle, "_sha256", counter)
    log_n = n.bit_length()
    for size in (n, n - 1, 12345, (1 << 14) - 1, 1 << 14, 3):
        calls: list[tuple[Callable[..., object], tuple[int, ...]]] = [
            (tree.root, (size,)),
            (tree.inclusion_proof, (size - 1, size)),
            (tree.inclusion_proof, (0, size)),
            (tree.inclusion_proof, (size // 2, size)),
            (tree.consistency_proof, (size // 3 or 1, size)),
            (tree.consistency_proof, (size - 1, size)),
        ]
        for fn, args in calls:
            counter.count = 0
            fn(*args)
            assert counter.count <= log_n * log_n, (fn.__name__, args, counter.count)
