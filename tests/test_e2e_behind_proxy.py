"""The server behind a TLS-terminating proxy (`rampart server run --no-tls`), end to end.

The proxy holds the certificate that agents and operators pin; the server
speaks plain HTTP on loopback behind it, agents use `/agent/v1/ws` through the
same port, and the trust chain is unchanged: a real agent enrolled through the
proxy runs a signed job and returns its signed receipt.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness.agent import AgentProcess, traversable_dir
from harness.operators import approved_grant, bootstrap_owner, ok, setup_tenant
from harness.server import REPO, RunningServer, _env, free_port, init_server
from harness.tls_proxy import TlsProxy

from rampart import trust
from rampart.tlspin import fetch_pinned_certificate


@pytest.fixture
def proxied(tmp_path: Path, db_url: str | None) -> Iterator[RunningServer]:
    server = init_server(tmp_path, db_url)
    backend = free_port()
    log = server.log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rampart.server", "run", "--data", str(server.data_dir),
         "--listen", f"127.0.0.1:{backend}", "--no-tls", "--agent-listen", "off"],
        stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, start_new_session=True)
    log.close()
    proxy = TlsProxy(server.port, backend, server.data_dir / "tls" / "cert.pem",
                     server.data_dir / "tls" / "key.pem").start()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, server.log_path.read_text()[-2000:]
            try:
                with httpx.Client(timeout=2) as c:
                    if c.get(f"http://127.0.0.1:{backend}/api/v1/health").status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log_path.read_text()[-2000:]
            time.sleep(0.1)
        server.cert_der = fetch_pinned_certificate("127.0.0.1", server.port, server.cert_sha256)
        yield server
    finally:
        server.stop()
        proxy.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_job_runs_through_a_tls_terminating_proxy(proxied: RunningServer) -> None:
    base = traversable_dir("rampart-proxy-")
    try:
        owner = bootstrap_owner(proxied)
        t = setup_tenant(owner, "proxied")
        tok = ok(owner.http.post(f"/tenants/{t.id}/enrollment-tokens", json={"ttl_s": 600}))
        agent = AgentProcess(base / "agent")
        r = agent.enroll(proxied.url, tok["token"], tok["root_sha256"], proxied.cert_sha256)
        assert r.returncode == 0, r.stderr
        ok(owner.http.post(f"/tenants/{t.id}/devices/{agent.device_id}/approve"))
        agent.start()
        try:
            grant = approved_grant(t, [agent.device_id])
            script = b"echo through the proxy\n"
            now = int(time.time())
            job = trust.Job(
                id=trust.new_job_id(), tenant=t.id, grant=grant, signer=t.tech_key.key_id,
                devices=[agent.device_id],
                action=trust.Action(kind="script", payloads=[trust.PayloadRef(
                    name="script", sha256=hashlib.sha256(script).hexdigest(), size=len(script))]),
                nonce=trust.new_nonce(), issued_at=now, expires_at=now + 600)
            env = trust.sign_envelope(trust.Job.PAYLOAD_TYPE, trust.encode_payload(job), [t.tech_key])
            ok(t.tech.http.post(f"/tenants/{t.id}/jobs", json={
                "envelope": env.to_bytes().decode(),
                "payloads": {"script": base64.b64encode(script).decode()}}))
            deadline = time.time() + 60
            while time.time() < deadline:
                target = ok(t.tech.http.get(f"/jobs/{job.id}"))["targets"][0]
                if target["receipt"]:
                    break
                time.sleep(0.2)
            assert target["receipt"]["outcome"] == "ran", (target, agent.log_text()[-2000:])
            assert target["receipt"]["stdout"] == "through the proxy\n"
        finally:
            agent.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
