"""Enrolment: make the device key, pin the server certificate and the tenant root.

Security invariants:

* The server certificate is trusted only if its SHA-256 equals the pin given
  out of band (the enrolment command line); so is the root (by the SHA-256 of
  its exact envelope bytes). Later root versions are accepted only through
  the rotation rule (:func:`rampart.trust.update_root`).
* The device key is generated here and never leaves the device; it is written
  0600 inside the 0700 state directory before it is registered.
* Nothing is marked enrolled until every piece is durably stored.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from rampart import tlspin, trust
from rampart.private_files import write_private_atomic
from rampart.trust import DeviceKey
from rampart.wire.gateways import check_gateway_url, check_gateway_urls

from .device_config import DeviceConfig
from .errors import LocalFault
from .gateways import save as save_gateways
from .state import (
    CERT_FILE,
    KEY_FILE,
    POLICY_FILE,
    AgentState,
    StateError,
    ensure_private_dir,
)

AGENT_VERSION = "0.1.0"


class EnrollError(LocalFault):
    """Enrolment failed; the message is one line for the operator."""


def split_server(url: str) -> tuple[str, int]:
    """``https://host:port`` → (host, port). Only https is accepted."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EnrollError("the server URL must be https://HOST[:PORT]")
    return parts.hostname, parts.port or 443


def load_device_key(state_dir: Path) -> DeviceKey:
    try:
        data = (state_dir / KEY_FILE).read_bytes()
    except FileNotFoundError:
        raise StateError(f"no device key in {state_dir}: enrol the agent first") from None
    except PermissionError:
        raise StateError(f"cannot read the device key in {state_dir}") from None
    key = trust.decode_private_key(data, expect_kind="device")
    assert isinstance(key, DeviceKey)
    return key


def load_certificate(state_dir: Path) -> bytes:
    try:
        return (state_dir / CERT_FILE).read_bytes()
    except FileNotFoundError:
        raise StateError(f"no pinned server certificate in {state_dir}") from None


def enroll(*, server_url: str, token: str, root_sha256: str, cert_sha256: str,
           state_dir: Path, config: DeviceConfig, hostname: str | None = None,
           gateways: list[str] | None = None) -> str:
    """Enrol this device; return its device id. ``gateways`` (``--gateway``, the device's own
    choice) replaces the list the server names."""
    host, port = split_server(server_url)
    if gateways:
        try:
            gateways = check_gateway_urls(gateways)
        except ValueError as exc:
            raise EnrollError(f"--gateway: {exc}") from None
    try:
        pin = tlspin.normalise_fingerprint(cert_sha256)
    except ValueError as exc:
        raise EnrollError(str(exc)) from None
    if len(root_sha256) != 64 or any(c not in "0123456789abcdef" for c in root_sha256.lower()):
        raise EnrollError("--root-sha256 must be 64 hex characters")
    ensure_private_dir(state_dir)
    state = AgentState(state_dir)
    try:
        if state.enrolled:
            raise EnrollError(f"{state_dir} already holds an enrolled agent")
        try:
            cert = tlspin.fetch_pinned_certificate(host, port, pin)
        except tlspin.PinError as exc:
            raise EnrollError(str(exc)) from None
        except OSError as exc:
            raise EnrollError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
        write_private_atomic(state_dir / CERT_FILE, cert, 0o600)
        key = DeviceKey.generate()
        write_private_atomic(state_dir / KEY_FILE, trust.encode_plain_private_key(key), 0o600)
        device_id = trust.device_id_for(key.public)  # type: ignore[arg-type]
        body = {"token": token, "public_key": key.public.to_text(),
                "hostname": hostname or socket.gethostname(), "agent_version": AGENT_VERSION}
        try:
            with httpx.Client(verify=tlspin.pinned_context(cert), timeout=30) as client:
                resp = client.post(f"https://{host}:{port}/agent/v1/enroll", json=body)
        except httpx.HTTPError as exc:
            raise EnrollError(f"enrolment request failed: {type(exc).__name__}") from None
        if resp.status_code != 200:
            try:
                detail = resp.json().get("detail", "")
            except ValueError:
                detail = ""
            raise EnrollError(f"the server refused enrolment ({resp.status_code}): {detail}")
        doc = resp.json()
        if doc.get("device_id") != device_id:
            raise EnrollError("the server answered with another device id")
        envelopes = [e.encode() for e in doc.get("roots", []) if isinstance(e, str)]
        now = int(time.time())
        pinned = None
        for i, env in enumerate(envelopes):
            if trust.root_sha256(env) == root_sha256.lower():
                pinned = trust.pin_root(env, expected_sha256=root_sha256.lower(), now=now) \
                    if i == len(envelopes) - 1 else trust.reload_root(env)
                later = envelopes[i + 1:]
                break
        if pinned is None:
            raise EnrollError("the server did not offer the root with the pinned SHA-256")
        trusted = trust.update_root(pinned, later, now=now) if later else pinned
        try:
            named = _named_gateways(doc)
        except ValueError as exc:
            raise EnrollError(f"the server named an unusable agent gateway: {exc}") from None
        write_private_atomic(state_dir / POLICY_FILE,
                           (json.dumps(config.to_dict(), indent=1) + "\n").encode(), 0o600)
        with state.transaction() as db:
            state.save_root(db, pinned.version, pinned.envelope)
            for env in later:
                v = trust.decode_payload(trust.decode_envelope(env).payload, trust.TenantRoot).version
                state.save_root(db, v, env)
            meta = {"device_id": device_id, "tenant": trusted.tenant,
                    "server_url": f"https://{host}:{port}", "enrolled": "1"}
            state.set_many(db, meta)
            if gateways or named:  # every gateway serves the same pinned certificate as the API
                save_gateways(state, db, gateways or named)
        return device_id
    except trust.TrustError as exc:
        raise EnrollError(f"the tenant root was refused: {exc}") from None
    finally:
        state.close()


def _named_gateways(doc: dict[str, object]) -> list[str]:
    """The gateways the enrolment answer names (``gateway_urls``, else ``gateway_url``); [] for none."""
    many = doc.get("gateway_urls")
    if many is not None:
        return check_gateway_urls(many)
    one = doc.get("gateway_url")
    return [] if one is None else [check_gateway_url(one)]
