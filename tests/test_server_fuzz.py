"""T13: schemathesis fuzzes every API operation of a real server.

Two bounded runs (a few examples per operation, authenticated as an MSP-wide
owner so handlers run past the session check, and without a session):

* no answer is a 5xx;
* every answer keeps the OpenAPI document's contract (schemathesis's
  conformance checks: a documented status, content type, headers and body
  schema; invalid input refused), an operation needing a session refuses
  one without it (401, or a body refused before the session is read), and an
  undeclared method is a 405 whose ``Allow`` lists exactly the path's methods
  (docs/design/server.md, "The API contract").
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import requests
import schemathesis
from harness.operators import bootstrap_owner, ok, setup_tenant
from harness.server import RunningServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup

EXAMPLES_PER_OPERATION = 12
#: Per operation and generation mode (valid data, invalid data) in the conformance run.
CONFORMANCE_EXAMPLES = 8
CONFORMANCE_CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
                      checks.content_type_conformance, checks.response_schema_conformance,
                      checks.response_headers_conformance, checks.negative_data_rejection]
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
#: What an operation needing a session may answer without one: 401, or a body refused
#: before the session is looked at (unparsable 400/422, too large 413). Never a 404 or
#: 403 that would tell what exists (T12), never a success.
BEFORE_SESSION = {400, 401, 413, 422}


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


def test_T13_every_answer_keeps_the_openapi_contract(server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    setup_tenant(owner, "Acme")
    spec = ok(server.client(api=False).get("/openapi.json"))
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    session.mount("https://", PinnedAdapter(server.ssl_context()))
    headers = {"Authorization": f"Bearer {owner.token}"}
    failures: dict[tuple[str, str, int], str] = {}
    count = 0

    def fuzz(operation: Any, mode: GenerationMode, secured: bool) -> None:
        @given(case=operation.as_strategy(generation_mode=mode), auth=st.booleans())
        @settings(max_examples=CONFORMANCE_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any, auth: bool) -> None:
            nonlocal count
            sent = headers if auth else {}
            response = case.call(base_url=server.url, session=session, headers=sent, timeout=30)
            count += 1
            where = f"{case.method} {case.formatted_path} ({mode.value}, " \
                    f"{'session' if auth else 'no session'}) -> {response.status_code}"
            if secured and not auth and response.status_code not in BEFORE_SESSION:
                failures[(operation.label, "needs a session", response.status_code)] = \
                    f"{where}: answered without a session: {response.text[:200]}"
            try:
                case.validate_response(response, checks=CONFORMANCE_CHECKS, headers=sent)
            except FailureGroup as group:
                for failure in group.exceptions:
                    failures.setdefault((operation.label, failure.title, response.status_code),
                                        f"{where}: {failure.title}: {failure.message[:300]}")

        try:
            run()
        except Unsatisfiable:  # no parameter or body to make invalid: nothing to send
            assert mode is GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue
        secured = bool(spec["paths"][operation.path][operation.method.lower()].get("security"))
        fuzz(operation, GenerationMode.POSITIVE, secured)
        fuzz(operation, GenerationMode.NEGATIVE, secured)
    assert count > 500
    assert not failures, "\n".join(failures.values())
    assert ok(owner.http.get("/me"))["username"] == "owner"


def test_T13_an_undeclared_method_is_405_with_the_paths_methods_in_allow(
        server: RunningServer) -> None:
    owner = bootstrap_owner(server)
    spec = ok(server.client(api=False).get("/openapi.json"))
    client = server.client(owner.token, api=False)
    wrong: list[str] = []
    probes = 0
    for path, item in spec["paths"].items():
        declared = {method.upper() for method in item}
        target = re.sub(r"\{[^}]+\}", "x", path)
        for method in sorted(set(METHODS) - declared):
            response = client.request(method, target)
            probes += 1
            allow = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
            if response.status_code != 405 or allow != declared \
                    or set(response.json()) != {"detail"}:
                wrong.append(f"{method} {path}: {response.status_code} Allow: {sorted(allow)} "
                             f"(declared {sorted(declared)})")
    assert probes > 300
    assert not wrong, "\n".join(wrong)
