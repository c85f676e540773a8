"""A tenant's signing authorities held by the test itself (owners, approvers, technicians).

This plays the operators' side of the trust chain with real keys, so agent
tests can make valid objects and every kind of forged one.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from rampart import trust
from rampart.trust import (
    Action,
    AutomationKey,
    Checkpoint,
    Declared,
    Grant,
    Job,
    KeyEntry,
    LogKey,
    OperatorKey,
    PayloadRef,
    Policy,
    PrivateKey,
    Roles,
    RoleSpec,
    TenantRoot,
    merkle,
)


def env_bytes(obj: trust.Payload, *keys: PrivateKey) -> bytes:
    return trust.sign_envelope(type(obj).PAYLOAD_TYPE, trust.encode_payload(obj), keys).to_bytes()


def _targets(devices: list[str], commit: bool) -> dict[str, object]:
    """A grant's or job's target fields: the list, or (``commit``) the committed device set."""
    return {"device_set": trust.commit_devices(devices)} if commit else {"devices": devices}


@dataclass
class Tenant:
    """Keys and a root for one tenant, plus its audit log."""

    id: str = field(default_factory=trust.new_tenant_id)
    owners: list[OperatorKey] = field(default_factory=lambda: [OperatorKey.generate()])
    approvers: list[OperatorKey] = field(default_factory=lambda: [OperatorKey.generate() for _ in range(3)])
    technicians: list[OperatorKey] = field(default_factory=lambda: [OperatorKey.generate() for _ in range(2)])
    automation: list[AutomationKey] = field(default_factory=lambda: [AutomationKey.generate()])
    log_key: LogKey = field(default_factory=LogKey.generate)
    policy: Policy = field(default_factory=Policy)
    #: Outside witnesses the root names (none by default: the root's bytes are as before).
    witnesses: list[trust.WitnessKey] = field(default_factory=list)
    roots: list[bytes] = field(default_factory=list)
    tree: merkle.MerkleTree = field(default_factory=merkle.MerkleTree)
    checkpoints: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.roots.append(self.make_root(1))

    # --- roots ----------------------------------------------------------------------

    def root_doc(self, version: int, *, owners: list[OperatorKey] | None = None,
                 technicians: list[OperatorKey] | None = None, owner_threshold: int = 1,
                 expires: int | None = None) -> TenantRoot:
        owners = self.owners if owners is None else owners
        technicians = self.technicians if technicians is None else technicians
        everyone: list[PrivateKey] = [*owners, *self.approvers, *technicians, *self.automation]
        keys = {k.key_id: KeyEntry(public=k.public.to_b64(), name=f"key{i}") for i, k in enumerate(everyone)}
        return TenantRoot(
            tenant=self.id, name="acme", version=version,
            expires=expires if expires is not None else int(time.time()) + 86400,
            keys=keys,
            roles=Roles(
                owner=RoleSpec(keyids=[k.key_id for k in owners], threshold=owner_threshold),
                approver=RoleSpec(keyids=[k.key_id for k in self.approvers]),
                technician=RoleSpec(keyids=[k.key_id for k in technicians]),
                automation=RoleSpec(keyids=[k.key_id for k in self.automation]),
            ),
            log_keys={self.log_key.key_id: self.log_key.public.to_b64()},
            policy=self.policy,
            **({"witness_keys": {w.key_id: w.public.to_b64() for w in self.witnesses}}
               if self.witnesses else {}),  # type: ignore[arg-type]
        )

    def make_root(self, version: int, *signers: PrivateKey, **kw: object) -> bytes:
        doc = self.root_doc(version, **kw)  # type: ignore[arg-type]
        return env_bytes(doc, *(signers or tuple(self.owners)))

    @property
    def root_sha256(self) -> str:
        return trust.root_sha256(self.roots[0])

    # --- grants and jobs --------------------------------------------------------------

    def grant(self, devices: list[str], *, caps: tuple[str, ...] = ("script",),
              grantee: PrivateKey | None = None, approvers: list[PrivateKey] | None = None,
              not_before: int | None = None, seconds: int = 3600,
              actions: tuple[str, ...] = (), commit: bool = False) -> bytes:
        now = int(time.time())
        g = Grant(
            id=trust.new_grant_id(), tenant=self.id,
            grantee=(grantee or self.technicians[0]).key_id,
            **_targets(devices, commit),  # type: ignore[arg-type]
            capabilities=list(caps), actions=list(actions),  # type: ignore[arg-type]
            not_before=not_before if not_before is not None else now - 60,
            not_after=(not_before if not_before is not None else now - 60) + seconds,
            reason="test",
        )
        return env_bytes(g, *(approvers if approvers is not None else self.approvers[:1]))

    def job(self, grant: bytes, devices: list[str], script: bytes = b"echo hello\n", *,
            signer: PrivateKey | None = None, writes: tuple[str, ...] = (),
            connect: tuple[int, ...] = (), run_as: str = "job", expires_in: int = 600,
            kind: str = "script", timeout_s: int = 60, issued_at: int | None = None,
            repeat: trust.Repeat | None = None, commit: bool = False) -> bytes:
        g = trust.decode_payload(trust.decode_envelope(grant).payload, Grant)
        now = int(time.time()) if issued_at is None else issued_at
        payloads = [] if kind != "script" else [
            PayloadRef(name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]
        j = Job(
            id=trust.new_job_id(), tenant=self.id, grant=g.id,
            signer=(signer or self.technicians[0]).key_id,
            **_targets(devices, commit),  # type: ignore[arg-type]
            action=Action(kind=kind, payloads=payloads),  # type: ignore[arg-type]
            declared=Declared(writes=list(writes), connect=list(connect), run_as=run_as),  # type: ignore[arg-type]
            timeout_s=timeout_s, nonce=trust.new_nonce(), issued_at=now, expires_at=now + expires_in,
            **({"repeat": repeat} if repeat is not None else {}),  # type: ignore[arg-type]
        )
        return env_bytes(j, signer or self.technicians[0])

    # --- audit log --------------------------------------------------------------------

    def append(self, data: bytes) -> int:
        return self.tree.append(merkle.leaf_hash(data))

    def checkpoint(self, *, key: PrivateKey | None = None, size: int | None = None,
                   root: bytes | None = None) -> bytes:
        size = self.tree.size if size is None else size
        cp = Checkpoint(log=self.id, size=size,
                        root=(root or self.tree.root(size)).hex(), time=int(time.time()))
        data = env_bytes(cp, key or self.log_key)
        self.checkpoints.append(data)
        return data
