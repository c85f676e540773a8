"""The code stays lint-clean and type-clean, and the trust core keeps its layering and surface."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import rampart.trust

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "rampart", "tests", "bench"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_finds_nothing() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "rampart"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_trust_core_imports_no_io_layer() -> None:
    """rampart.trust is pure: it never imports the server, agent, CLI or an I/O library."""
    forbidden = ("rampart.server", "rampart.agent", "rampart.cli", "rampart.console", "socket",
                 "subprocess", "sqlite3", "httpx", "websockets", "sqlalchemy", "pathlib", "io")
    for path in (REPO / "rampart" / "trust").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), \
                    f"{path.name} imports {name}"


def test_trust_public_surface_is_locked() -> None:
    """Adding or removing a public name of the trust core is a deliberate change: update this list."""
    assert sorted(rampart.trust.__all__) == sorted([
        "ACTION_CAPABILITY", "ALL_CAPABILITIES", "CHECKPOINT_TYPE", "DEFAULT_LIMITS",
        "FINGERPRINT_GROUPS", "GRANT_TYPE", "JOB_TYPE", "PAYLOAD_FREE_ACTIONS", "RECEIPT_TYPE",
        "REVOCATION_TYPE", "ROOT_TYPE", "ActionKind", "Limits", "Payload", "PrivateKey", "PublicKey",
        "RootDiff", "SignerResult", "b64decode_strict", "default_key_name", "key_fingerprint",
        "key_fingerprint_b64", "merkle", "new_id", "normalise_fingerprint", "root_diff",
        "Action", "Authorization", "AutomationKey", "AutomationPublicKey", "CapabilityError",
        "Checkpoint", "ContainmentReport", "DecodeError", "Declared", "DeviceKey", "DevicePolicy",
        "DevicePublicKey", "DigestMismatchError", "Effective", "Envelope", "ExpiredError", "Grant",
        "GrantStatus", "InconsistentLogError", "Job", "KeyEntry", "KeyFileError", "LogEvidence",
        "LogKey", "LogPublicKey", "OperatorKey", "OperatorPublicKey", "PayloadRef", "Policy",
        "Receipt", "Repeat", "RepeatAuthorization", "ReplayError", "Revocation", "RevokedError",
        "RoleSpec", "Roles", "SessionRecord", "SessionSpec", "SessionSummary",
        "RollbackError", "SignatureError", "TenantRoot", "ThresholdError", "TrustError",
        "TrustedRoot", "UnknownKeyError", "UsageError", "WrongDeviceError", "WrongTenantError",
        "add_signature", "approvers_required", "authorize_job", "authorize_repeat",
        "check_log_progress",
        "DeviceProof", "DeviceProofs", "DeviceSet", "DeviceSetTree", "commit_devices", "expand", "is_member",
    "ProofHash", "check_proof_hashes",
        "check_root_signatures", "decode_envelope", "decode_payload", "decode_private_key",
        "device_id_for", "encode_payload", "encode_plain_private_key", "encrypt_private_key",
        "grant_status", "key_id", "new_grant_id", "new_job_id", "new_nonce", "new_tenant_id",
        "pae", "pin_root", "reload_root", "root_sha256", "sign_envelope", "update_root",
        "verified_signers", "verify_checkpoint", "verify_grant", "verify_receipt",
        "verify_revocation", "verify_session_record",
        "PASSKEY_KEY_TYPE", "PasskeyAssertion", "PasskeyCounterError", "PasskeyError",
        "PasskeyPublicKey", "add_passkey_signature", "assertion_challenge", "passkey_blob",
        "CANCELLATION_TYPE", "Cancellation", "CancelledError", "check_cancellation", "verify_cancellation",
        "WitnessKey", "WitnessPublicKey", "WitnessQuorumError", "cosign_checkpoint", "witness_checkpoint",
    ])
    for name in rampart.trust.__all__:
        assert hasattr(rampart.trust, name), name


# --- import graph (issue 12: layering) ---------------------------------------------------------------
#
# Self-contained: these helpers read the source with ``ast`` (nothing is imported) and resolve
# relative imports. ``from package import name`` counts as importing ``package.name`` when that is
# a module of rampart, else ``package``; importing ``a.b.c`` counts as ``a.b.c`` only (the parent
# packages' ``__init__`` modules it runs are not counted as edges).

def _graph_modules() -> dict[str, Path]:
    """Every module under rampart/, by dotted name (a package by its own name)."""
    out = {}
    for path in (REPO / "rampart").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _graph_is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _graph_imports(name: str, path: Path, known: dict[str, Path], *,
                   in_functions: bool) -> set[str]:
    """The rampart modules ``name`` imports: module level (including ``if TYPE_CHECKING:``
    blocks), and with ``in_functions`` also the imports inside function bodies."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for a in node.names:
                    found.add(f"{module}.{a.name}" if f"{module}.{a.name}" in known else module)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(ast.parse(path.read_text()).body)
    resolved = set()
    for module in found:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module != name:
            resolved.add(module)
    return resolved


def _graph_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_rampart_has_no_import_cycles() -> None:
    """No two modules of rampart/ import each other, directly or through others.

    Counted: every import, at module level, under ``if TYPE_CHECKING:`` (a cycle of type names
    is still a cycle of design) and inside function bodies (a deferred import that closes a
    cycle only hides it). The parent packages an import runs are not edges (see above).
    """
    known = _graph_modules()
    graph = {n: _graph_imports(n, p, known, in_functions=True) for n, p in known.items()}
    cycles = _graph_cycles(graph)
    assert not cycles, "\n".join(
        " <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
        for c in cycles)


def test_graph_helpers_find_a_cycle_and_resolve_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a relative import cycle and a package import are resolved."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from . import a\n")
    (tmp_path / "pkg" / "a.py").write_text("from .b import thing\n")
    (tmp_path / "pkg" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
        "def f():\n    from pkg import c\n")
    (tmp_path / "pkg" / "c.py").write_text("")
    known = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.a": tmp_path / "pkg" / "a.py",
             "pkg.b": tmp_path / "pkg" / "b.py", "pkg.c": tmp_path / "pkg" / "c.py"}
    graph = {n: _graph_imports(n, p, known, in_functions=False) for n, p in known.items()}
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}
    assert _graph_cycles(graph) == [["pkg.a", "pkg.b"]]
    assert _graph_imports("pkg.b", known["pkg.b"], known, in_functions=True) == {"pkg.a", "pkg.c"}


#: Server modules that assemble the HTTP application from the routers of rampart.server.api.
_SERVER_COMPOSITION_ROOT = {"rampart.server.app"}


def test_server_core_never_imports_server_api() -> None:
    """rampart.server.* (outside rampart/server/api/) never imports rampart.server.api, not even
    inside a function: the API is a layer on the core, not a library for it. The one exception
    is the composition root, rampart/server/app.py, which mounts the API's routers."""
    known = _graph_modules()
    bad = []
    for name, path in sorted(known.items()):
        if not name.startswith("rampart.server.") or name.startswith("rampart.server.api") \
                or name in _SERVER_COMPOSITION_ROOT:
            continue
        for target in _graph_imports(name, path, known, in_functions=True):
            if target == "rampart.server.api" or target.startswith("rampart.server.api."):
                bad.append(f"{name} imports {target}")
    assert not bad, bad


#: Files being edited by someone else while issue 12 landed; their trust imports move to
#: ``rampart.trust`` with that work. Remove a file from here once it passes.
_TRUST_SURFACE_PENDING: set[str] = set()


def test_trust_is_used_through_its_public_surface() -> None:
    """Outside rampart/trust, code imports the trust core from ``rampart.trust`` (its ``__all__``,
    which includes the ``merkle`` namespace) and never from another submodule: no
    ``from rampart.trust.payloads import ...``, no ``trust.limits.X``. A name callers need is
    exported from rampart/trust/__init__.py (and listed in the locked surface above)."""
    public = set(rampart.trust.__all__)
    private = {p.stem for p in (REPO / "rampart" / "trust").glob("*.py")} - public - {"__init__"}
    bad = []
    for top in ("rampart", "tests", "bench"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("rampart/trust/") or rel in _TRUST_SURFACE_PENDING:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id == "trust":
                    names = [f"rampart.trust.{node.attr}"]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[:2] == ["rampart", "trust"] and len(parts) > 2 and parts[2] in private:
                        bad.append(f"{rel}:{node.lineno} uses {'.'.join(parts[:3])}")
    assert not bad, "\n".join(bad)


def test_layout_doc_lists_every_module() -> None:
    """docs/design/layout.md names every module of rampart/ (its rule: by path relative to
    rampart/, or inside a package listed as a whole), and names no module that does not exist."""
    text = (REPO / "docs" / "design" / "layout.md").read_text()
    section = text[text.index("## Every module"):]
    named = set(re.findall(r"`([\w/.]+\.py)`", section))
    whole = set(re.findall(r"`([\w/]+/)`\s+\(whole package", section))
    root = REPO / "rampart"
    modules = {p.relative_to(root).as_posix() for p in root.rglob("*.py")}
    missing = sorted(m for m in modules if m not in named and not any(m.startswith(w) for w in whole))
    assert not missing, f"not in docs/design/layout.md: {missing}"
    stale = sorted(named - modules) + sorted(w for w in whole if not (root / w).is_dir())
    assert not stale, f"docs/design/layout.md names what does not exist: {stale}"


def test_server_doc_names_every_server_module() -> None:
    """docs/design/server.md's module table names every module at the top of rampart/server/."""
    named = set(re.findall(r"`([\w/.]+\.py)`", (REPO / "docs" / "design" / "server.md").read_text()))
    modules = sorted(p.name for p in (REPO / "rampart" / "server").glob("*.py"))
    missing = [m for m in modules if m not in named]
    assert not missing, f"not in docs/design/server.md: {missing}"


# --- the wire contract (rampart.wire) and the server/agent boundary ------------------------------

_WIRE_ALLOWED_STDLIB = frozenset({
    "__future__", "base64", "binascii", "collections", "dataclasses", "hashlib", "re", "secrets", "typing",
    "types", "zlib",
    "urllib",  # urllib.parse only (rampart/wire/gateways.py): pure string work
})


def _wire_imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (relative imports stay inside rampart.wire)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mod = node.module or ""
            # ``from rampart import trust`` imports rampart.trust; ``from rampart import agent`` must show.
            names += [f"{mod}.{a.name}" for a in node.names] if mod == "rampart" else [mod]
    return names


def test_wire_is_pure() -> None:
    """rampart.wire imports only rampart.trust, msgspec, PyNaCl's libsodium bindings (the session seals of
    rampart.wire.session, as the trust core's signatures) and I/O-free standard modules."""
    for path in (REPO / "rampart" / "wire").glob("*.py"):
        for name in _wire_imports(path):
            top = name.split(".")[0]
            ok = (name == "rampart.trust" or name.startswith("rampart.trust.")
                  or top in ("msgspec", "nacl") or top in _WIRE_ALLOWED_STDLIB)
            assert ok, f"rampart/wire/{path.name} imports {name}"


def test_wire_public_surface_is_locked() -> None:
    """Adding or removing a public name of the wire contract is a deliberate change: update this list."""
    import rampart.wire

    assert sorted(rampart.wire.__all__) == sorted([
        "AGENT_MESSAGE_TYPES", "AUTH_CONTEXT", "MAX_DETAIL_CHARS", "MAX_MESSAGE_BYTES",
        "SERVER_MESSAGE_TYPES", "AckMessage", "AgentMessage", "Challenge", "CheckAckMessage", "CheckResult",
        "CheckResultMessage",
        "Delta", "DeltaError", "DetectionMessage", "EarlierFinding", "ErrorMessage", "Finding", "Hello",
        "Inventory", "InventoryAckMessage", "InventoryFullMessage", "InventoryMessage",
        "InventoryRequestMessage", "JobLog", "JobMessage", "Message", "ReceiptMessage", "Report",
        "ReportError", "RevocationsMessage", "RootsMessage", "ServerMessage", "StateMessage", "ToolSeen",
        "Welcome", "WireError", "apply", "auth_message", "check_hello", "decode_agent_message",
        "decode_challenge", "decode_hello", "decode_report", "decode_result", "decode_server_message",
        "decode_welcome", "diff", "digest", "encode_message", "encode_report", "encode_result",
        "new_challenge", "sign_hello", "CancellationsMessage",
    ])
    for name in rampart.wire.__all__:
        assert hasattr(rampart.wire, name), name


def _server_module_imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` (in ``package``) imports, relative imports resolved to absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # ``from rampart import agent``
    return found


def test_server_never_imports_the_agent() -> None:
    """No module under rampart/server imports rampart.agent (statically, at any depth, relative or not)."""
    server = REPO / "rampart" / "server"
    for path in sorted(server.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        package = ".".join(rel.parts[:-1]) if rel.name != "__init__" else ".".join(rel.parts[:-1])
        for mod in _server_module_imports(path, package):
            assert not (mod == "rampart.agent" or mod.startswith("rampart.agent.")), \
                f"{path.relative_to(REPO)} imports {mod}"


def test_server_app_loads_no_agent_module() -> None:
    """The same at run time: importing the server application loads no rampart.agent module."""
    r = subprocess.run([sys.executable, "-c", "import sys, rampart.server.app; "
                        "print(sorted(m for m in sys.modules if m.startswith('rampart.agent')))"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --- the local signing console (issue 14 part 3) -------------------------------------------------

#: The one module that may import rampart.console: the `rampart console` command.
_CONSOLE_ENTRY = {"rampart.cli.console_cmds"}


def test_local_console_never_imports_the_server_and_only_its_command_imports_it() -> None:
    """rampart.console (the pages that sign) imports nothing of rampart.server, not even inside a
    function, and no module outside rampart/console but `rampart console`'s own command imports
    it: the Rampart server can never serve the code that asks a key to sign (layout.md rule 7)."""
    known = _graph_modules()
    bad = []
    for name, path in sorted(known.items()):
        targets = _graph_imports(name, path, known, in_functions=True)
        inside = name == "rampart.console" or name.startswith("rampart.console.")
        for target in targets:
            to_server = target == "rampart.server" or target.startswith("rampart.server.")
            to_console = target == "rampart.console" or target.startswith("rampart.console.")
            if inside and to_server:
                bad.append(f"{name} imports {target}")
            if to_console and not inside and name not in _CONSOLE_ENTRY:
                bad.append(f"{name} imports {target}")
    assert not bad, bad
    console = {n for n in known if n.startswith("rampart.console.")}
    assert {"rampart.console.app", "rampart.console.web", "rampart.console.serve"} <= console


def test_server_app_loads_no_local_console_module() -> None:
    """At run time: the server application loads no rampart.console module."""
    r = subprocess.run([sys.executable, "-c", "import sys, rampart.server.app; "
                        "print(sorted(m for m in sys.modules if m.startswith('rampart.console')))"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
