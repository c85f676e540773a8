"""``rampart witness``: an outside witness of tenants' audit logs (issue 19, C4; docs/design/witness.md).

The customer or a third party runs it on its own machine, logged in with any account that reaches
the tenants (a viewer is enough). For each tenant it:

1. follows the tenant's root from the SHA-256 pinned out of band, by the rotation rule
   (:func:`rampart.cli.common.trusted_root`), and checks that the root names its key;
2. fetches the newest checkpoint and the server's consistency proof from the last checkpoint it
   co-signed;
3. co-signs only what :func:`rampart.trust.witness_checkpoint` accepts (signed by the root's log
   key, consistent with and no smaller than what it co-signed), recording the checkpoint in its
   own state *before* the signature leaves, so a crash never lets it sign a fork of it later.

A checkpoint it refuses is reported on stderr (``REFUSED``) and never signed, then or later.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from rampart import trust
from rampart.textsafe import safe_line
from rampart.trust import Checkpoint, TrustError, WitnessKey

from .client import Client, expect_dict
from .common import api, envelope_bytes, now, require_pin, resolve_tenant, trusted_root
from .config import write_private, write_private_json
from .errors import CliError, Refused, UsageProblem
from .output import err_console, say

witness_app = typer.Typer(help="An outside witness: co-sign tenants' audit log checkpoints it "
                               "found consistent.", no_args_is_help=True)
key_app = typer.Typer(help="The witness's own key.", no_args_is_help=True)
witness_app.add_typer(key_app, name="key")

#: Exit status of `witness run --once` when a checkpoint was refused.
EXIT_REFUSED = 3


@key_app.command("new")
def key_new(out: Annotated[Path, typer.Option("--out", help="Where to write the private key (0600; "
                                                            "refused if it exists).")]) -> None:
    """Make the witness's key and print the public key an owner adds with `root propose --add-witness`."""
    if out.exists():
        raise UsageProblem(f"{out} exists; the witness keeps its key (remove it yourself to replace it)")
    key = WitnessKey.generate()
    write_private(out, trust.encode_plain_private_key(key))
    say(f"witness key written to {out} (0600)")
    say(f"public key (give it to the tenant's owners): {key.public.to_text()}")
    say(f"fingerprint (read it to them when they sign): {trust.key_fingerprint(key.public.raw)}")


def load_witness_key(path: Path) -> WitnessKey:
    """The witness key at ``path``; refused unless only its owner may read it."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise Refused(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    try:
        key = trust.decode_private_key(data, expect_kind="witness")
    except (trust.KeyFileError, TrustError) as exc:
        raise UsageProblem(f"{path}: {exc}") from None
    assert isinstance(key, WitnessKey)
    return key


class WitnessState:
    """The last checkpoint this witness co-signed, per tenant (``checkpoints.json``, 0600)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "checkpoints.json"
        self.doc: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.doc = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise CliError(f"the witness state {self.path} is unreadable ({exc}); it is what keeps "
                               "this witness from signing a fork: restore it, do not delete it") from None

    def last(self, tenant_id: str) -> Checkpoint | None:
        entry = self.doc.get(tenant_id)
        if entry is None:
            return None
        env = trust.decode_envelope(str(entry["envelope"]).encode(), expect_type=trust.CHECKPOINT_TYPE)
        return trust.decode_payload(env.payload, Checkpoint)

    def record(self, tenant_id: str, cp: Checkpoint, data: bytes) -> None:
        self.doc[tenant_id] = {"size": cp.size, "root": cp.root, "envelope": data.decode(),
                               "at": int(time.time())}
        write_private_json(self.path, self.doc)


def witness_once(client: Client, cfg: Any, state: WitnessState, key: WitnessKey, tenant: dict[str, Any],
                 pin: str | None) -> str:
    """One pass over one tenant: ``cosigned``, ``unchanged`` or ``refused`` (told on stderr)."""
    tid, name = str(tenant["id"]), str(tenant.get("name") or tenant["id"])
    root = trusted_root(cfg, client, tid, pin_sha256=pin)
    require_pin(cfg, tid, root)
    if key.key_id not in root.witnesses:
        raise Refused(f"the root of {name} (v{root.version}) does not name this witness key "
                      f"{key.key_id[:16]}…: its owners add it with `rampart root propose {name} "
                      f"--add-witness {key.public.to_text()}`")
    doc = expect_dict(client.get(f"/tenants/{tid}/audit/checkpoint"), "checkpoint")
    data = envelope_bytes(doc, "checkpoint")
    last = state.last(tid)
    try:
        env = trust.decode_envelope(data, expect_type=trust.CHECKPOINT_TYPE)
        cp = trust.decode_payload(env.payload, Checkpoint)
        if cp == last:  # every field equal: the checkpoint it co-signed last
            if key.key_id in {s.keyid for s in env.signatures}:
                return "unchanged"
            proof: list[bytes] = []
        elif last is not None and cp.size >= last.size:
            got = expect_dict(client.get(f"/tenants/{tid}/audit/consistency", old=last.size, new=cp.size),
                              "consistency proof")
            proof = [bytes.fromhex(str(h)) for h in got.get("proof") or []]
        else:
            proof = []
        cp = trust.witness_checkpoint(root, data, last=last, consistency=proof, now=now())
    except (TrustError, ValueError) as exc:
        seen = f" (last co-signed: size {last.size}, root {last.root[:16]}…)" if last is not None else ""
        err_console.print(f"REFUSED {name}: checkpoint {safe_line(str(doc.get('size')))} not co-signed: "
                          f"{safe_line(str(exc))}{seen}", markup=False, highlight=False)
        return "refused"
    cosigned = trust.cosign_checkpoint(data, key)
    state.record(tid, cp, data)  # before the signature leaves: never a fork of it, even after a crash
    client.post(f"/tenants/{tid}/audit/checkpoints/{cp.size}/cosignatures",
                {"envelope": cosigned.decode()})
    say(f"co-signed {name}: checkpoint of {cp.size} entries, root {cp.root[:16]}…")
    return "cosigned"


@witness_app.command("run")
def witness_run(
    tenants: Annotated[list[str], typer.Argument(help="Tenant names or ids to witness.")],
    key_file: Annotated[Path, typer.Option("--key", help="The witness key (`rampart witness key new`).")],
    root_sha256: Annotated[str | None, typer.Option(
        "--root-sha256", help="The SHA-256 of the tenant's root, from its owners out of band (first run "
        "of one tenant only; afterwards the pinned root is followed).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state", help="Where the witness remembers what it co-signed (default: <config>/witness).")] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=3600,
                                            help="Seconds between passes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit (status 3 if anything "
                                                      "was refused).")] = False,
) -> None:
    """Follow the tenants' checkpoints and co-sign each one consistent with all it co-signed before."""
    key = load_witness_key(key_file)
    cfg, client, _ = api()
    state = WitnessState(state_dir or cfg.dir / "witness")
    os.makedirs(state.path.parent, mode=0o700, exist_ok=True)
    with client:
        found = [resolve_tenant(client, t) for t in tenants]
        say(f"witnessing {', '.join(str(t.get('name')) for t in found)} with key {key.key_id[:16]}…")
        while True:
            refused = False
            for t in found:
                try:
                    refused |= witness_once(client, cfg, state, key, t, root_sha256) == "refused"
                except CliError as exc:
                    if once:
                        raise
                    err_console.print(f"{t.get('name')}: {exc}", markup=False, highlight=False)
            if once:
                if refused:
                    raise typer.Exit(EXIT_REFUSED)
                return
            time.sleep(interval)


def register(app: typer.Typer) -> None:
    app.add_typer(witness_app, name="witness")
