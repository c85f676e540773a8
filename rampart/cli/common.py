"""Shared operator logic: the config in use, tenants, locally trusted roots, signing keys.

The one rule here (python-tuf's updater shape): fetch, verify through
:mod:`rampart.trust`, then persist. A root is stored in the operator's config
only after :func:`rampart.trust.pin_root` / :func:`rampart.trust.update_root`
accepted it; a key is used for signing only if the locally trusted root gives
it the role the signature needs.

Operators pin roots like agents do (issue 11, finding 5): a root first seen
from the server is only shown, never signed for. Signing anything for a
tenant (roots, grants, revocations, jobs) needs a pin: the SHA-256 of a root
envelope given out of band (`rampart root pin TENANT SHA256`) or the root
this operator built itself (`tenant create`), and the trusted root must chain
from it by the rotation rule (:func:`require_pin`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import prompts
from .client import Client, expect_dict, expect_list
from .config import Config, KeyInfo, Session
from .errors import CliError, Refused, ServerProblem, UsageProblem
from .output import note

if TYPE_CHECKING:  # the trust core loads where a command verifies or signs, not at start-up
    from rampart import trust
    from rampart.trust import OperatorKey, TrustedRoot

_config_dir: Path | None = None
_passphrase_override: str | None = None


def set_config_dir(path: Path | None) -> None:
    global _config_dir
    _config_dir = path


def config() -> Config:
    return Config(_config_dir)


def now() -> int:
    return int(time.time())


@contextmanager
def refusing(what: str) -> Iterator[None]:
    """Turn a TrustError (untrusted input failed a check) into one CLI line."""
    from rampart.trust import TrustError

    try:
        yield
    except TrustError as exc:
        raise Refused(f"{what}: {exc}") from exc


def api(cfg: Config | None = None) -> tuple[Config, Client, Session]:
    cfg = cfg or config()
    client, session = Client.for_config(cfg)
    return cfg, client, session


# --- tenants -------------------------------------------------------------------------------


def resolve_tenant(client: Client, text: str) -> dict[str, Any]:
    """A tenant by id (``tn-…``) or by exact name; one line error if none or ambiguous."""
    tenants = expect_list(client.get("/tenants"), "tenants")
    by_id = [t for t in tenants if isinstance(t, dict) and t.get("id") == text]
    if by_id:
        return by_id[0]
    by_name = [t for t in tenants if isinstance(t, dict) and t.get("name") == text]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise UsageProblem(f"several tenants are named {text!r}: use the tenant id")
    raise UsageProblem(f"no tenant {text!r} visible to this account")


def tenant_names(client: Client) -> dict[str, str]:
    """Tenant id -> name for the tenants this account sees (shown next to ids in tables)."""
    tenants = expect_list(client.get("/tenants"), "tenants")
    return {str(t["id"]): str(t.get("name") or t["id"]) for t in tenants
            if isinstance(t, dict) and isinstance(t.get("id"), str)}


def tenant_label(names: dict[str, str], tenant_id: object) -> str:
    """``name (tn-…)``, or the id alone when the name is not known."""
    tid = str(tenant_id)
    return f"{names[tid]} ({tid})" if tid in names and names[tid] != tid else tid


def envelope_bytes(doc: Any, what: str) -> bytes:
    """The exact envelope bytes from a server answer's ``envelope`` string."""
    env = doc.get("envelope") if isinstance(doc, dict) else None
    if not isinstance(env, str) or not env:
        raise ServerProblem(f"the server sent no {what} envelope")
    return env.encode("utf-8")


# --- trusted roots ---------------------------------------------------------------------------


def _server_roots(client: Client, tenant_id: str) -> list[tuple[int, bytes]]:
    docs = expect_list(client.get(f"/tenants/{tenant_id}/roots"), "roots")
    out: list[tuple[int, bytes]] = []
    for d in docs:
        d = expect_dict(d, "root")
        v = d.get("version")
        if not isinstance(v, int):
            raise ServerProblem("the server listed a root without a version")
        out.append((v, envelope_bytes(d, "root")))
    out.sort(key=lambda x: x[0])
    return out


def local_root(cfg: Config, tenant_id: str) -> TrustedRoot | None:
    """The root this operator verified last (expiry not checked here)."""
    from rampart import trust
    from rampart.trust import root_sha256

    data = cfg.load_root_bytes(tenant_id)
    if data is None:
        return None
    with refusing(f"the locally trusted root of {tenant_id} ({cfg.root_path(tenant_id)})"):
        tr = trust.pin_root(data, expected_sha256=root_sha256(data), now=0)
    if tr.tenant != tenant_id:
        raise Refused(f"{cfg.root_path(tenant_id)} holds the root of another tenant")
    return tr


def _verify_chain(start: TrustedRoot, steps: list[bytes], when: int) -> list[TrustedRoot]:
    """Verify each step with the rotation rule; the newest must be unexpired at ``when``."""
    from rampart import trust

    out: list[TrustedRoot] = []
    cur = start
    for i, data in enumerate(steps):
        cur = trust.update_root(cur, [data], now=when if i == len(steps) - 1 else 0)
        out.append(cur)
    return out


def _persist(cfg: Config, chain: list[TrustedRoot]) -> None:
    for tr in chain:
        cfg.save_root(tr.tenant, tr.version, tr.envelope, newest=False)
    if chain:
        cfg.save_root(chain[-1].tenant, chain[-1].version, chain[-1].envelope, newest=True)


def trust_root_v1(cfg: Config, envelope: bytes) -> TrustedRoot:
    """Trust a root v1 this operator built and signed itself (``tenant create``)."""
    from rampart import trust
    from rampart.trust import root_sha256

    with refusing("the new root"):
        tr = trust.pin_root(envelope, expected_sha256=root_sha256(envelope), now=now())
    _persist(cfg, [tr])
    cfg.save_pin(tr.tenant, tr.sha256)
    return tr


PIN_HINT = ("ask an owner for the root's SHA-256 (`rampart root show TENANT` on their machine "
            "prints it), then run `rampart root pin TENANT SHA256`")


def require_pin(cfg: Config, tenant_id: str, current: TrustedRoot | None = None) -> None:
    """Refuse unless this operator pinned a root of ``tenant_id`` out of band.

    The locally trusted root is stored only after it chained from the pinned
    version by the rotation rule, so the pin must be one of the verified versions.
    """
    from rampart.trust import root_sha256

    pin = cfg.load_pin(tenant_id)
    if pin is None:
        raise Refused(f"you have not pinned a root of tenant {tenant_id}, so nothing is signed "
                      f"for it: {PIN_HINT}")
    versions = {root_sha256(b) for b in cfg.root_history(tenant_id)}
    if current is not None:
        versions.add(current.sha256)
    if pin not in versions:
        raise Refused(f"the root you trust for tenant {tenant_id} does not chain from your pin "
                      f"{pin[:16]}…: {PIN_HINT}")


def pin_tenant_root(cfg: Config, client: Client, tenant_id: str, sha256: str) -> TrustedRoot:
    """Pin ``sha256`` (given out of band) and trust the newest root that chains from it.

    If the roots stored so far were only seen (not pinned) and do not contain
    the pin, they are replaced by the server's chain verified from v1, which
    must contain the pin.
    """
    from rampart.trust import root_sha256

    sha = sha256.strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise UsageProblem("a root pin is the 64 hex digit SHA-256 printed by `rampart root show`")
    local = local_root(cfg, tenant_id)
    if local is not None and sha in {root_sha256(b) for b in cfg.root_history(tenant_id)}:
        cfg.save_pin(tenant_id, sha)
        return trusted_root(cfg, client, tenant_id, allow_expired=True)
    if local is not None and cfg.load_pin(tenant_id) is not None:
        raise Refused(f"you already pinned a root of {tenant_id} and this SHA-256 is not one of "
                      "its verified versions")
    return trusted_root(cfg, client, tenant_id, pin_sha256=sha, allow_expired=True,
                        replace_unpinned=True)


def trusted_root(cfg: Config, client: Client | None, tenant_id: str, *,
                 pin_sha256: str | None = None, allow_expired: bool = False,
                 replace_unpinned: bool = False) -> TrustedRoot:
    """Return the newest root of ``tenant_id`` that this operator can verify.

    With a locally trusted root, newer versions from the server are accepted only
    through the rotation rule (each version signed by the owner thresholds of the
    previous and of itself) and persisted only after they all verify. Without
    one, the chain is verified from v1 and either must contain ``pin_sha256``
    (then the pin is recorded) or is only *seen*: stored for display, told on
    stderr, and never signed for (:func:`require_pin`).
    """
    from rampart import trust
    from rampart.trust import root_sha256

    when = 0 if allow_expired else now()
    current = None if replace_unpinned else local_root(cfg, tenant_id)
    if client is not None:
        server = _server_roots(client, tenant_id)
        with refusing(f"root of tenant {tenant_id} from the server"):
            if current is None:
                if not server:
                    raise Refused(f"tenant {tenant_id} has no published root yet")
                if server[0][0] != 1:
                    raise Refused("the server's root history does not start at version 1")
                first = trust.pin_root(server[0][1], expected_sha256=root_sha256(server[0][1]),
                                       now=when if len(server) == 1 else 0)
                if first.tenant != tenant_id:
                    raise Refused("the server's root names another tenant")
                chain = [first] + _verify_chain(first, [b for _, b in server[1:]], when)
                if pin_sha256 is not None:
                    if pin_sha256.lower() not in {tr.sha256 for tr in chain}:
                        raise Refused("no root version on the server has the pinned SHA-256")
                else:
                    note(f"showing the root of tenant {tenant_id} as the server sent it (not "
                         f"pinned, so you cannot sign for this tenant): v{chain[-1].version}, "
                         f"sha256 {chain[-1].sha256}; to sign, {PIN_HINT}")
                _persist(cfg, chain)
                if pin_sha256 is not None:
                    cfg.save_pin(tenant_id, pin_sha256.lower())
                current = chain[-1]
            else:
                mine = dict(server)
                if current.version in mine and mine[current.version] != current.envelope:
                    raise Refused(f"the server's root v{current.version} differs from the one "
                                  "you trust: the server may be compromised")
                newer = [b for v, b in server if v > current.version]
                if newer:
                    chain = _verify_chain(current, newer, when)
                    _persist(cfg, chain)
                    current = chain[-1]
    if current is None:
        raise Refused(f"no trusted root for tenant {tenant_id}")
    if not allow_expired and current.root.expires <= now():
        raise Refused(f"the trusted root v{current.version} of {tenant_id} has expired: owners "
                      "must publish a new version")
    return current


def verified_root_versions(cfg: Config, tenant_id: str) -> list[trust.TenantRoot]:
    """Every root version this operator verified, as decoded payloads (oldest first)."""
    from rampart import trust

    out: list[trust.TenantRoot] = []
    for data in cfg.root_history(tenant_id):
        with refusing("stored root"):
            env = trust.decode_envelope(data, expect_type=trust.TenantRoot.PAYLOAD_TYPE)
            out.append(trust.decode_payload(env.payload, trust.TenantRoot))
    cur = cfg.load_root_bytes(tenant_id)
    if cur is not None and not out:
        env = trust.decode_envelope(cur)
        out.append(trust.decode_payload(env.payload, trust.TenantRoot))
    return out


# --- signing keys ----------------------------------------------------------------------------


def pick_key(cfg: Config, session: Session, tenant_id: str | None,
             root: TrustedRoot | None = None, roles: tuple[str, ...] = ()) -> KeyInfo:
    """The key to sign with: tenant-specific first, else general; it must hold ``roles``."""
    candidates = cfg.key_candidates(session.username, tenant_id)
    if not candidates:
        raise UsageProblem(f"no operator key for {session.username} in {cfg.keys_dir}: "
                           "run `rampart key new --tenant TENANT`")
    if root is None:
        return candidates[0]
    if tenant_id is not None:
        require_pin(cfg, tenant_id, root)
    for k in candidates:
        held = set(root.root.roles_of(k.keyid))
        if k.keyid in root.root.keys and (not roles or set(roles) & held):
            return k
    need = " or ".join(roles) if roles else "any"
    raise Refused(
        f"none of your keys ({', '.join(k.keyid[:16] for k in candidates)}) has the {need} role in "
        f"root v{root.version} of {root.root.name}: an owner must add it "
        f"(rampart root propose {root.root.name} --add-key KEYID --role ROLE)"
    )


@contextmanager
def key_passphrase(passphrase: str) -> Iterator[None]:
    """Use ``passphrase`` for keys unlocked inside the block (for `rampart up`, in-process)."""
    global _passphrase_override
    old, _passphrase_override = _passphrase_override, passphrase
    try:
        yield
    finally:
        _passphrase_override = old


def new_key_passphrase(cfg: Config, session: Session) -> str:
    """The passphrase for a new key: the operator's existing one (checked) or a new one.

    One passphrase protects all of an operator's keys; when keys exist, the
    newest is unlocked with it first, so a typo never seals a key nobody can open.
    """
    existing = cfg.list_keys(session.username)
    if not existing:
        return _passphrase_override or prompts.key_passphrase(confirm=True)
    passphrase = _passphrase_override or prompts.key_passphrase()
    with key_passphrase(passphrase):
        unlock_key(existing[-1])
    return passphrase


def unlock_key(info: KeyInfo) -> OperatorKey:
    """Decrypt a key file with the passphrase (RAMPART_KEY_PASSPHRASE or prompt)."""
    from rampart import trust
    from rampart.trust import OperatorKey, TrustError

    try:
        data = info.path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read key file {info.path}: {exc.strerror}") from exc
    passphrase = _passphrase_override or prompts.key_passphrase()
    try:
        key = trust.decode_private_key(data, passphrase, expect_kind="operator")
    except trust.KeyFileError as exc:
        raise CliError(f"cannot open key {info.keyid[:16]}: {exc.message}") from exc
    except TrustError as exc:
        raise CliError(f"cannot open key {info.keyid[:16]}: {exc.message}") from exc
    if key.key_id != info.keyid or not isinstance(key, OperatorKey):
        raise CliError(f"key file {info.path} does not hold key {info.keyid[:16]}")
    return key
