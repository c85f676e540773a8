"""Outside witnesses in a root rotation: the flags that name them, and what a signer is shown.

An owner adds a witness by its full public key (``rampart-witness-pub:…``), which the witness's
operator hands over out of band (``rampart witness key new`` prints it); the proposal and the
signer's check both use that key, never the server's word. A signer's CLI refuses a proposal
that adds or removes a witness the signer did not name (``--add-witness``/``--remove-witness``),
and an interactive signer must name witness changes too: a witness's reach is the quorum the
policy asks, so it is stated, not confirmed with a keystroke.
"""

from __future__ import annotations

from rampart.trust import DecodeError, RootDiff, WitnessPublicKey, key_fingerprint_b64

from .errors import UsageProblem

__all__ = ["parse_witness_keys", "witness_changes", "witness_flags", "witness_lines",
           "witness_mismatches"]


def parse_witness_keys(texts: list[str]) -> dict[str, str]:
    """``rampart-witness-pub:…`` texts -> {key id: base64 key}; UsageProblem on anything else."""
    out: dict[str, str] = {}
    for text in texts:
        try:
            key = WitnessPublicKey.from_text(text.strip())
        except DecodeError as exc:
            raise UsageProblem(f"--add-witness: {exc.message} (the witness's operator gets it from "
                               "`rampart witness key new`)") from None
        out[key.key_id] = key.to_b64()
    return out


def witness_changes(current: dict[str, str], add: dict[str, str] | None,
                    remove: list[str] | None) -> dict[str, str]:
    """The witness keys of the next root: ``current`` with ``add`` and without ``remove``."""
    keys = dict(current)
    for kid in remove or []:
        if kid not in keys:
            raise UsageProblem(f"--remove-witness {kid[:16]}…: the root names no such witness")
        del keys[kid]
    for kid, pub in (add or {}).items():
        if kid in keys:
            raise UsageProblem(f"--add-witness: witness {kid[:16]}… is already in the root")
        keys[kid] = pub
    return keys


def witness_lines(d: RootDiff) -> list[str]:
    """What a signer reads about the witnesses a proposal adds or removes."""
    lines = [f"+ outside witness {kid[:16]}…, fingerprint {key_fingerprint_b64(pub)}"
             for kid, pub in d.witnesses_added.items()]
    lines += [f"- outside witness {kid[:16]}…" for kid in d.witnesses_removed]
    return lines


def witness_flags(d: RootDiff) -> list[str]:
    """The ``root sign`` flags that state a proposal's witness changes."""
    return ([f"--add-witness {WitnessPublicKey.from_b64(pub).to_text()}"
             for pub in d.witnesses_added.values()]
            + [f"--remove-witness {kid}" for kid in d.witnesses_removed])


def witness_mismatches(d: RootDiff, adds: frozenset[str], removes: frozenset[str]) -> list[str]:
    """Every way the proposal's witness changes differ from the ones the signer named."""
    out = [f"it adds outside witness {kid[:16]}…, which you did not name (--add-witness)"
           for kid in d.witnesses_added if kid not in adds]
    out += [f"it does not add outside witness {kid[:16]}…" for kid in adds if kid not in d.witnesses_added]
    out += [f"it removes outside witness {kid[:16]}…, which you did not name (--remove-witness)"
            for kid in d.witnesses_removed if kid not in removes]
    out += [f"it does not remove outside witness {kid[:16]}…" for kid in removes
            if kid not in d.witnesses_removed]
    return out
