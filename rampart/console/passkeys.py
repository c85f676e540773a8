"""Passkeys in the local console (issue 14 part 4; docs/design/passkeys.md): register one, and
approve a grant with one.

Registration: the page asks the browser for a new credential (``navigator.credentials.create``)
with a challenge made here and kept for one use; the answer's clientDataJSON must be a
``webauthn.create`` for that challenge from this console's own origin. The credential's public
key (SubjectPublicKeyInfo, from ``getPublicKey()``), its id, the RP ID ``localhost`` and that
origin make the passkey's root key (:func:`rampart.trust.passkey_blob`). It is written, public
parts only, to ``CONFIG/passkeys/KEYID.json``: the file an owner adds to the root with
``rampart root propose … --add-passkey FILE`` (fingerprint confirmed while signing, as any key).

Approval: the challenge is computed here, from the grant envelope this console fetched, decoded
and showed: ``base64url(SHA-256(PAE(payloadType, payload)))``; the page only carries it to the
authenticator. At the POST the grant is fetched again and must be the one reviewed (payload
SHA-256), every check ``rampart grant approve`` makes is made, and the assertion must pass the
agents' own check (:meth:`rampart.trust.PasskeyPublicKey.check_assertion`) against the key of
the trusted root before it is added to the envelope and sent. The server never chooses what is
signed, and a wrong assertion is refused here with its precise reason, nothing sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rampart import trust
from rampart.cli.common import refusing, trusted_root
from rampart.cli.config import Config, write_private_json
from rampart.cli.errors import CliError, Refused, UsageProblem
from rampart.cli.grant_cmds import GrantReview, approval_checks, approval_key, grant_doc, review_grant
from rampart.cli.job_cmds import payload_ref, prepare_job, submit_job
from rampart.trust import JOB_TYPE, Action, Declared, Job, PasskeyPublicKey, TrustedRoot, key_fingerprint

from . import actions
from .actions import _root_doc, connected

RP_ID: Final = "localhost"
#: A registration challenge may be answered this long after the page was served, once.
CHALLENGE_TTL_S: Final = 300.0
ALGORITHMS: Final = {-7: "ES256", -8: "EdDSA"}


def passkeys_dir(cfg: Config) -> Path:
    return cfg.dir / "passkeys"


@dataclass(frozen=True, slots=True)
class PasskeyRecord:
    """A passkey this operator registered here (public parts only)."""

    keyid: str
    name: str
    tenant: str
    username: str
    public: str  # base64 of the canonical blob, as a root's KeyEntry holds it

    @property
    def key(self) -> PasskeyPublicKey:
        return PasskeyPublicKey.from_b64(self.public)

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "name": self.name, "tenant": self.tenant, "username": self.username,
                "type": trust.PASSKEY_KEY_TYPE, "public": self.public,
                "fingerprint": key_fingerprint(self.key.raw)}


def load_passkeys(cfg: Config, username: str, tenant_id: str) -> list[PasskeyRecord]:
    """This operator's passkeys for the tenant, each re-checked (its key id hashes its key)."""
    out = []
    d = passkeys_dir(cfg)
    if not d.is_dir():
        return []
    for path in sorted(d.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            rec = PasskeyRecord(keyid=doc["keyid"], name=doc["name"], tenant=doc["tenant"],
                                username=doc["username"], public=doc["public"])
            if rec.key.key_id != rec.keyid:
                continue
        except (OSError, ValueError, KeyError, TypeError, trust.TrustError):
            continue
        if rec.username == username and rec.tenant == tenant_id:
            out.append(rec)
    return out


@dataclass
class Challenges:
    """Registration challenges issued by this launch: each answered once, within the TTL."""

    _issued: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self) -> str:
        value = _b64url(secrets.token_bytes(32))
        with self._lock:
            now = time.monotonic()
            self._issued = {k: t for k, t in self._issued.items() if now - t < CHALLENGE_TTL_S}
            self._issued[value] = now
        return value

    def spend(self, value: str) -> bool:
        with self._lock:
            issued = self._issued.pop(value, None)
        return issued is not None and time.monotonic() - issued < CHALLENGE_TTL_S


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str, *, url: bool = False) -> bytes:
    try:
        if url:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UsageProblem(f"the browser sent an invalid {what}") from None


def register_form(cfg: Config, tenant_id: str, origin: str, challenges: Challenges) -> dict[str, Any]:
    """What the registration page needs: a fresh challenge, and whether this origin can use passkeys."""
    with connected(cfg) as (_, session):
        pass
    return {"session": session, "tenant_id": tenant_id, "origin": origin,
            "usable": origin.startswith(f"http://{RP_ID}:"), "challenge": challenges.new(),
            "user_id": _b64url(hashlib.sha256(f"{session.server}\0{session.username}".encode()).digest()),
            "username": session.username,
            "mine": [r.to_json() for r in load_passkeys(cfg, session.username, tenant_id)]}


def register(cfg: Config, tenant_id: str, *, origin: str, challenges: Challenges, name: str,
             credential_id: str, spki: str, alg: str, client_data: str) -> dict[str, Any]:
    """Check the browser's new credential and keep its public key as a passkey record."""
    if not origin.startswith(f"http://{RP_ID}:"):
        raise UsageProblem(f"passkeys need this console at http://{RP_ID}:PORT (rampart console --localhost)")
    name = name.strip()
    if not 0 < len(name) <= 64:
        raise UsageProblem("name the passkey (at most 64 characters)")
    cd = _unb64(client_data, "clientDataJSON")
    try:
        client = json.loads(cd)
    except ValueError:
        raise UsageProblem("the browser sent an invalid clientDataJSON") from None
    if not isinstance(client, dict) or client.get("type") != "webauthn.create":
        raise Refused("this is not a passkey registration")
    if client.get("origin") != origin:
        raise Refused("the registration comes from another origin than this console")
    challenge = client.get("challenge")
    if not isinstance(challenge, str) or not challenges.spend(challenge):
        raise Refused("this registration page was used already or is too old: open it again")
    try:
        algorithm = ALGORITHMS[int(alg)]
    except (ValueError, KeyError):
        raise UsageProblem("the authenticator offers neither ES256 nor EdDSA") from None
    try:
        blob = trust.passkey_blob(alg=algorithm, spki=_unb64(spki, "public key"),
                                  credential_id=_unb64(credential_id, "credential id", url=True),
                                  rp_id=RP_ID, origin=origin)
    except trust.TrustError as exc:
        raise Refused(f"the authenticator's key cannot be used: {exc.message}") from None
    key = PasskeyPublicKey(blob)
    with connected(cfg) as (client, session):
        # The server learns the key id only: the account may then ask for grants for it. The key
        # itself reaches a root from this file, by the owners' ceremony.
        client.post("/keys", {"public": f"rampart-passkey-id:{key.key_id}", "tenant": tenant_id,
                              "name": name})
    rec = PasskeyRecord(keyid=key.key_id, name=name, tenant=tenant_id, username=session.username,
                        public=key.to_b64())
    path = passkeys_dir(cfg) / f"{key.key_id}.json"
    cfg.ensure()
    passkeys_dir(cfg).mkdir(mode=0o700, exist_ok=True)
    write_private_json(path, rec.to_json())
    return {"session": session, "tenant_id": tenant_id, "passkey": rec.to_json(), "path": str(path),
            "origin": origin}


# --- approving a grant ---------------------------------------------------------------------------


def review(cfg: Config, grant_id: str, origin: str) -> dict[str, Any]:
    """The grant page (as :func:`rampart.console.actions.review`) plus, from the same fetch, what
    approving it with this operator's passkey needs."""
    with connected(cfg) as (client, session):
        r = review_grant(cfg, client, grant_id)
    try:
        approval_key(cfg, session, r)
        cannot = None
    except CliError as exc:
        cannot = exc.message
    key_file_ok = cannot is None
    passkey = signing_doc(cfg, session.username, r, origin)
    if passkey is not None:
        try:
            approval_checks(session, r)
            cannot = None  # the passkey may approve even if no key file may
        except CliError as exc:
            cannot, passkey = exc.message, None
    doc = r.doc()
    doc["payload_sha256"] = r.payload_sha256
    return {"session": session, "grant": doc, "root": _root_doc(cfg, session, r.root),
            "cannot_approve": cannot, "key_file_ok": key_file_ok, "passkey": passkey}


def approver_passkey(cfg: Config, username: str, review: GrantReview) -> PasskeyRecord | None:
    """This operator's passkey that is an approver of the trusted root (not the grantee), if any."""
    for rec in load_passkeys(cfg, username, review.grant.tenant):
        if rec.keyid in review.root.approvers and rec.keyid != review.grant.grantee:
            return rec
    return None


def challenge_for(review: GrantReview) -> str:
    """The challenge that signs this exact grant: base64url(SHA-256(PAE)) of the reviewed envelope."""
    return trust.assertion_challenge(review.envelope.signed_message())


def signing_doc(cfg: Config, username: str, review: GrantReview, origin: str) -> dict[str, Any] | None:
    """What the grant page needs to approve with a passkey (None: no passkey of this operator can)."""
    rec = approver_passkey(cfg, username, review)
    if rec is None:
        return None
    key = rec.key
    return {"keyid": rec.keyid, "name": rec.name, "credential_id": _b64url(key.credential_id),
            "rp_id": key.rp_id, "origin": key.origin, "challenge": challenge_for(review),
            "usable": key.origin == origin, "fingerprint": key_fingerprint(key.raw)}


def _approver_key(root: TrustedRoot, keyid: str) -> PasskeyPublicKey:
    key = root.approvers.get(keyid)
    if not isinstance(key, PasskeyPublicKey):
        raise Refused(f"passkey {keyid[:16]}… is not an approver of the root v{root.version} you trust")
    return key


def approve(cfg: Config, grant_id: str, *, reviewed_sha256: str, keyid: str, authenticator_data: str,
            client_data: str, signature: str, step_up_code: str | None) -> dict[str, Any]:
    """Add this operator's passkey assertion to the reviewed grant (every CLI check first)."""
    if len(reviewed_sha256) != 64:
        raise UsageProblem("review the grant before approving it")
    assertion = trust.PasskeyAssertion(_unb64(authenticator_data, "authenticatorData"),
                                       _unb64(client_data, "clientDataJSON"),
                                       _unb64(signature, "signature"))
    with connected(cfg, step_up_code) as (client, session):
        review = review_grant(cfg, client, grant_id)
        if review.payload_sha256 != reviewed_sha256:
            raise Refused("the grant the server sends now differs from the one you reviewed: "
                          "nothing was signed")
        approval_checks(session, review)
        rec = approver_passkey(cfg, session.username, review)
        if rec is None or rec.keyid != keyid:
            raise Refused("none of your passkeys is an approver of this tenant's root you trust")
        key = _approver_key(review.root, keyid)
        try:
            key.check_assertion(assertion.to_sig(), review.envelope.signed_message())
        except trust.TrustError as exc:
            raise Refused(f"the passkey's answer does not sign this grant ({exc.reason}): "
                          "nothing was sent") from None
        signed = trust.add_passkey_signature(review.envelope, keyid, assertion.to_sig()).to_bytes()
        client.post(f"/grants/{grant_id}/signatures", {"envelope": signed.decode()})
        with refusing("signed grant"):
            after = trust.grant_status(review.root, signed)
    if keyid not in after.approved_by:
        raise Refused("the approval did not count")
    return {"session": session, "grant": grant_doc(review.grant, review.root, after,
                                                   "approved" if after.complete else "requested",
                                                   review.devices),
            "passkey": rec.name}


# --- signing a script job ------------------------------------------------------------------------

#: Jobs prepared for a passkey signature in this launch, waiting for the authenticator.
MAX_PENDING: Final = 16
PENDING_TTL_S: Final = 600.0


@dataclass
class PendingJobs:
    """Unsigned jobs this console built, by id: only these can be signed and sent (bounded, 10 min)."""

    _jobs: dict[str, tuple[float, bytes, Job, bytes, list[str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, payload: bytes, job: Job, script: bytes, targets: list[str]) -> None:
        with self._lock:
            now = time.monotonic()
            self._jobs = {k: v for k, v in self._jobs.items() if now - v[0] < PENDING_TTL_S}
            while len(self._jobs) >= MAX_PENDING:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job.id] = (now, payload, job, script, targets)

    def take(self, job_id: str) -> tuple[bytes, Job, bytes, list[str]] | None:
        with self._lock:
            item = self._jobs.pop(job_id, None)
        if item is None or time.monotonic() - item[0] >= PENDING_TTL_S:
            return None
        return item[1], item[2], item[3], item[4]


def passkey_ids(cfg: Config, tenant_id: str) -> frozenset[str]:
    """Key ids of this operator's passkeys for the tenant (for the run and tenant pages)."""
    session = cfg.require_session()
    return frozenset(r.keyid for r in load_passkeys(cfg, session.username, tenant_id))


def run_form(cfg: Config, tenant_id: str, grant_id: str | None, origin: str) -> dict[str, Any]:
    view = actions.run_form(cfg, tenant_id, grant_id, passkey_ids(cfg, tenant_id))
    view["origin"] = origin
    return view


def prepare_script(cfg: Config, tenant_id: str, *, grant_id: str, devices: list[str], script: str,
                   timeout_s: str, origin: str, pending: PendingJobs) -> dict[str, Any]:
    """Build the script job as ``rampart run`` would (every check), unsigned, for this operator's
    passkey that is the grant's grantee; the page shows it and the challenge computed here."""
    body, timeout = actions.script_job_input(devices, script, timeout_s)
    with connected(cfg) as (client, session):
        mine = {r.keyid: r for r in load_passkeys(cfg, session.username, tenant_id)}
        payload, job, targets = prepare_job(
            cfg, client, session, tenant_id, grant_id=grant_id, devices=devices,
            action=Action(kind="script", payloads=[payload_ref("script", body)]),
            declared=Declared(writes=[], connect=[], run_as="job"), timeout_s=timeout,
            lifetime_s=3600, mine=set(mine))
    rec = mine[job.signer]
    if rec.key.origin != origin:
        raise UsageProblem(f"this passkey signs only at {rec.key.origin}: open the console there")
    pending.put(payload, job, body, targets)
    return {"session": session, "tenant_id": tenant_id, "job": actions.signed_doc(job, body, targets),
            "passkey": {"keyid": rec.keyid, "name": rec.name, "fingerprint": key_fingerprint(rec.key.raw),
                        "credential_id": _b64url(rec.key.credential_id), "rp_id": rec.key.rp_id,
                        "challenge": trust.assertion_challenge(trust.pae(JOB_TYPE, payload))},
            "payload_sha256": hashlib.sha256(payload).hexdigest()}


def sign_script(cfg: Config, tenant_id: str, job_id: str, *, authenticator_data: str, client_data: str,
                signature: str, step_up_code: str | None, pending: PendingJobs,
                signed: dict[str, dict[str, Any]]) -> str:
    """Add the passkey's assertion to the job prepared here, check it as agents do, send it."""
    item = pending.take(job_id)
    if item is None:
        raise Refused("this job was not prepared here, was sent already or is too old: prepare it again")
    payload, job, body, targets = item
    sig = trust.PasskeyAssertion(_unb64(authenticator_data, "authenticatorData"),
                                 _unb64(client_data, "clientDataJSON"),
                                 _unb64(signature, "signature")).to_sig()
    env = trust.add_passkey_signature(trust.Envelope(JOB_TYPE, payload, ()), job.signer, sig)
    with connected(cfg, step_up_code) as (client, _):
        root = trusted_root(cfg, client, tenant_id)
        key = root.technicians.get(job.signer)
        if not isinstance(key, PasskeyPublicKey):
            raise Refused("the job's signer is not a technician passkey of the root you trust")
        try:
            key.check_assertion(sig, env.signed_message())
        except trust.TrustError as exc:
            raise Refused(f"the passkey's answer does not sign this job ({exc.reason}): "
                          "nothing was sent") from None
        doc = submit_job(client, tenant_id, env.to_bytes(), {"script": body}, job, targets)
    if doc.get("id") != job.id:
        raise Refused("the server stored the job under another id")
    signed[job.id] = actions.signed_doc(job, body, targets)
    return job.id
