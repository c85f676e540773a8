"""The API's error contract: one error model and the refusals every operation declares.

The routes declare only their success response; the refusals are declared
here, once, from the shape of each operation, by post-processing the OpenAPI
document FastAPI generates (:func:`install`). The rules are what the server
really does (``app.py``'s error handlers, :mod:`rampart.server.errors`):

* every refusal is :func:`error_schema`: a one-line ``detail`` and, for some
  403s, a machine-readable ``code`` (the ``code`` values are read from the
  error classes, so a new one is documented when it is added);
* 422 (request validation) wherever FastAPI validates parameters or a body
  (where it declared 422 itself), with :func:`error_schema`, not FastAPI's
  array of errors: the server sends one line;
* 401 (with ``WWW-Authenticate: Bearer``) and 403 on every operation that
  needs a session (role, approved networks, step-up), and on the operations
  that take credentials in their body (:data:`CREDENTIALS`);
* 404 wherever the path names something (a tenant, device, job, ...), and on
  the operations of :data:`BODY_REFERENCES` whose body names one;
* 400 (input the schema cannot state: signatures, trust checks, CIDR) and 409
  (the state does not allow it) on every write (POST, PUT, DELETE); 400 also
  where a route declares it itself (a read checking a page cursor);
* 413 on every operation with a request body (``BodyLimit``);
* 429 (with ``Retry-After``) where failed logins are paced (:data:`PACED`);
* 503 (with ``Retry-After``) on every operation that reads the store (all but
  :data:`STORELESS`): the store stayed locked past its busy timeout.

The contract is checked by tests/test_server_fuzz.py with schemathesis's
conformance checks against a real server (docs/design/server.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from starlette.routing import compile_path

from ..errors import ServerError

ERROR_SCHEMA = "ErrorOut"
WRITES = frozenset({"post", "put", "delete", "patch"})
#: Operations that take credentials in their body instead of a session.
CREDENTIALS = frozenset({("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/bootstrap"),
                         ("post", "/api/v1/auth/activate"), ("post", "/api/v1/auth/totp/confirm"),
                         ("post", "/agent/v1/enroll"),
                         ("post", "/api/v1/tenants/{t}/directories")})  # the LDAP bind password
#: Operations where failed attempts are paced (T11).
PACED = frozenset({("post", "/api/v1/auth/login"), ("post", "/api/v1/auth/bootstrap"),
                   ("post", "/api/v1/auth/activate"), ("post", "/api/v1/auth/totp/confirm"),
                   ("post", "/api/v1/auth/step-up")})
#: Operations without a path parameter whose body names a record that may not exist.
BODY_REFERENCES = frozenset({("post", "/api/v1/accounts"), ("post", "/api/v1/keys")})
#: Operations that never touch the store (so never answer 503).
STORELESS = frozenset({("get", "/api/v1/health")})


def _codes() -> list[str]:
    seen: set[str] = set()
    stack: list[type[ServerError]] = [ServerError]
    while stack:
        cls = stack.pop()
        if cls.code is not None:
            seen.add(cls.code)
        stack.extend(cls.__subclasses__())
    return sorted(seen)


def error_schema() -> dict[str, Any]:
    """Every refusal's body (``app.py``): one line, never a secret nor an echo of the input."""
    return {
        "title": ERROR_SCHEMA,
        "type": "object",
        "required": ["detail"],
        "additionalProperties": False,
        "properties": {
            "detail": {"type": "string", "description": "what was refused and why, in one line"},
            "code": {"type": "string", "enum": _codes(),
                     "description": "set on some 403s: what would allow the request"},
        },
    }


_DESCRIPTIONS = {
    400: "Input the schema cannot state was refused (signature, trust check, format)",
    401: "No valid session, or invalid credentials",
    403: "The role, the approved networks or a missing step-up does not allow it",
    404: "Absent, or in a tenant the caller cannot reach",
    409: "The current state does not allow it",
    413: "The request body exceeds its limit",
    422: "A parameter or the body failed validation (the first failing field, in one line)",
    429: "Too many failed attempts; retry after Retry-After seconds",
    503: "The store is busy; retry after Retry-After seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True,
                                "schema": {"type": "string", "pattern": r"^[0-9]+$"}}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "the scheme to authenticate with", "required": True,
                               "schema": {"type": "string", "pattern": "^Bearer"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def refusals(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The refusal statuses the server may answer for one operation of the document."""
    key = (method, path)
    statuses: set[int] = set()
    declared = operation.get("responses", {})
    if "422" in declared:
        statuses.add(422)
    if "400" in declared:  # a read that checks input the schema cannot state (a page cursor)
        statuses.add(400)
    if operation.get("security") or key in CREDENTIALS:
        statuses |= {401, 403}
    if "{" in path or key in BODY_REFERENCES:
        statuses.add(404)
    if method in WRITES:
        statuses |= {400, 409}
    if "requestBody" in operation:
        statuses.add(413)
    if key in PACED:
        statuses.add(429)
    if key not in STORELESS:
        statuses.add(503)
    return statuses


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch", "options", "head", "trace"}:
                yield method, path, operation


def declare_refusals(doc: dict[str, Any]) -> dict[str, Any]:
    """Add every operation's refusals with :func:`error_schema` to ``doc`` (in place, returned)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = error_schema()
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    for method, path, operation in _operations(doc):
        responses = operation.setdefault("responses", {})
        for status in sorted(refusals(method, path, operation)):
            entry = responses.setdefault(str(status), {})
            entry.setdefault("description", _DESCRIPTIONS[status])
            entry["content"] = {"application/json": {"schema": ref}}
            if status in _HEADERS:
                entry["headers"] = {**_HEADERS[status], **entry.get("headers", {})}
    # FastAPI's own validation error models describe a body the server never sends.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc


def install(app: FastAPI) -> None:
    """Serve the document with the refusals declared (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_refusals(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _routes(app: FastAPI) -> Iterator[Any]:
    try:  # FastAPI >= 0.16x keeps included routers nested; this walks them with their prefixes
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens them into app.routes
        yield from app.router.routes
        return
    yield from iter_route_contexts(app.router.routes)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (for ``Allow`` on a 405).

    Starlette names only the methods of the first route whose path matched; a
    path served by several routes (GET in one, PUT in another) needs them all.
    """
    methods: set[str] = set()
    for route in _routes(app):
        template, route_methods = getattr(route, "path", None), getattr(route, "methods", None)
        if template and route_methods and compile_path(template)[0].match(path):
            methods |= route_methods
    return sorted(methods)
