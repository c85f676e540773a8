"""An outside witness's two decisions: whether a checkpoint may be co-signed, and the co-signature.

A witness (``rampart witness run``, run by the customer or a third party on its own machine)
holds a key the tenant root names in ``witness_keys``. It co-signs a checkpoint only when

* the checkpoint verifies against the root the witness trusts (a log key of the root, this
  tenant, not from the future), and
* it is consistent (RFC 9162) with, and no smaller than, the last checkpoint this witness
  co-signed for the tenant: one size has one root hash, and history is never rewritten.

So a server that shows one agent a fork of the log (a split view) cannot get it co-signed once
the witness has co-signed the honest log, and an agent whose root asks a witness quorum
(``policy.witness_quorum``) refuses every job under an unwitnessed checkpoint
(:func:`rampart.trust.verify_checkpoint`, reason ``witness-quorum``).

The co-signature is an Ed25519 signature by the witness key over the checkpoint envelope's own
DSSE pre-authentication encoding, added to that envelope beside the log key's. Witness keys are
their own key type, and a root keeps them apart from operator and log keys, so a co-signature
never counts as anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from .envelope import add_signature, decode_envelope
from .keys import WitnessKey
from .limits import DEFAULT_LIMITS, Limits
from .payloads import CHECKPOINT_TYPE, Checkpoint
from .roots import TrustedRoot
from .verify import check_log_progress, verify_checkpoint

__all__ = ["cosign_checkpoint", "witness_checkpoint"]


def witness_checkpoint(root: TrustedRoot, data: bytes, *, last: Checkpoint | None,
                       consistency: Sequence[bytes], now: int,
                       limits: Limits = DEFAULT_LIMITS) -> Checkpoint:
    """The checkpoint in ``data`` if this witness may co-sign it, else a TrustError.

    ``last`` is the last checkpoint this witness co-signed for the tenant (None before the
    first) and ``consistency`` the server's RFC 9162 proof from ``last`` to it. A smaller
    checkpoint is ``rollback``; another root at the same size, or a proof that does not
    verify, ``inconsistent-log``.
    """
    cp = verify_checkpoint(root, data, now=now, witnessed=False, limits=limits)
    check_log_progress(last, cp, consistency)
    return cp


def cosign_checkpoint(data: bytes, key: WitnessKey, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """``data`` (a checkpoint envelope) with ``key``'s co-signature added; call only on a
    checkpoint :func:`witness_checkpoint` accepted."""
    env = decode_envelope(data, expect_type=CHECKPOINT_TYPE, limits=limits)
    return add_signature(env, key).to_bytes()
