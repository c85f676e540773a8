"""T13: schemathesis fuzzes every API operation of a real server; no answer is a 5xx.

Bounded (a few examples per operation) so the run stays short; authenticated
as an MSP-wide owner so handlers run past the session check.
"""

from __future__ import annotations

import ssl
from typing import Any

import requests
import schemathesis
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

EXAMPLES_PER_OPERATION = 12


class PinnedAdapter(HTTPAdapter):
    """requests adapter that trusts exactly the server's pinned certificate."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)
SKIP = {("POST", "/api/v1/auth/logout")}  # would end the fuzzing session itself


def test_T13_fuzzed_requests_never_cause_a_server_error(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    setup_tenant(owner, "Acme")
    spec = ok(server.client(api=False).get("/openapi.json"))
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    session.mount("https://", PinnedAdapter(server.ssl_context()))
    headers = {"Authorization": f"Bearer {owner.token}"}
    failures: list[str] = []
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @given(case=operation.as_strategy(), auth=st.booleans())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any, auth: bool) -> None:
            nonlocal count
            response = case.call(base_url=server.url, session=session,
                                 headers=headers if auth else {}, timeout=30)
            count += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:200]}")
            content_type = (response.headers.get("content-type") or [""])[0]
            assert content_type.startswith("application/json")
            detail = response.json().get("detail") if response.status_code >= 400 else None
            assert detail is None or isinstance(detail, str)

        run()
    assert count > 100
    assert not failures, failures
    assert ok(owner.http.get("/me"))["username"] == "owner"
