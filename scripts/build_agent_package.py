"""Build the agent's Debian package and its self-contained bundle from this checkout (issue 16).

    python scripts/build_agent_package.py fetch    # agent wheels into the wheelhouse (PyPI)
    python scripts/build_agent_package.py deb      # dist/rampart-agent_<version>_<arch>.deb
    python scripts/build_agent_package.py bundle   # dist/rampart-agent-<version>-linux-<machine>.tar.gz

Invariants (docs/design/agent-packaging.md):

* Only the agent ships: the ``rampart`` modules are the import closure of ``rampart/agent/``
  (computed from the source, every import counted), and the build fails if that closure reaches
  the server, the CLI or the consoles. Third-party distributions are those the closure imports,
  pinned to the versions this checkout's environment runs its tests with.
* The network is used by ``fetch`` only (binary wheels, never an sdist built here); ``deb`` and
  ``bundle`` install from the wheelhouse with ``--no-index``, so ./run-tests fetches before its
  tests run without a network.
* One private tree per CPython minor version (native extension wheels are per version); the
  wrapper runs the newest ``/usr/bin/python3.X`` it has a tree for, isolated (``-I``).
* Every file's time is the last commit's, and the build prints the artefact's SHA-256.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata as md
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "rampart"
PY_VERSIONS = ("3.11", "3.12", "3.13")
FORBIDDEN = ("rampart.server", "rampart.cli", "rampart.console", "rampart.webui", "rampart.sbom")
PLATFORMS = {"x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                        "manylinux_2_5_x86_64", "manylinux1_x86_64"),
             "aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
#: Left out of the package: uvloop is optional (the agent falls back to asyncio's own loop, which
#: one connection does not notice) and would add 14 MB per Python version.
LEFT_OUT = {"uvloop"}
UNIT_EXEC = "ExecStart=/usr/local/bin/rampart-agent "
# One command, no shell expansion of anything but our own fixed paths.
BOOT = "import sys; sys.path[:0] = [sys.argv.pop(1)]; from rampart.agent.main import main; sys.exit(main())"


class BuildError(Exception):
    pass


# --- what ships -------------------------------------------------------------------------------


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def agent_closure() -> tuple[list[Path], set[str]]:
    """The ``rampart`` source files the agent imports (transitively) and the third-party top-level
    modules they import. Every import counts, also those inside functions and ``try``."""
    todo = [_module_name(p) for p in sorted((SRC / "agent").rglob("*.py"))]
    seen: set[str] = set()
    third: set[str] = set()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        path = _module_file(name)
        if path is None:
            raise BuildError(f"{name}: imported but no source file")
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            mods: list[str] = []
            subs: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if is_pkg else parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                mods, subs = [mod], [f"{mod}.{a.name}" for a in node.names]
            for t in mods:
                top = t.split(".")[0]
                if top != "rampart" and top not in stdlib:
                    third.add(top)
            todo.extend(t for t in mods + subs
                        if t.split(".")[0] == "rampart" and _module_file(t) is not None)
    bad = sorted(m for m in seen if m.startswith(FORBIDDEN))
    if bad:
        raise BuildError(f"the agent's imports reach server/CLI/console modules: {', '.join(bad)}")
    files = sorted({p for m in seen if (p := _module_file(m)) is not None})
    return files, third


def requirements(third: set[str]) -> list[str]:
    """``name==version`` for each distribution the agent imports, as installed here."""
    owners = md.packages_distributions()
    reqs: set[str] = set()
    for top in sorted(third):
        dists = owners.get(top)
        if top in LEFT_OUT:
            continue
        if not dists:
            raise BuildError(f"third-party module {top!r} is imported by the agent but not installed")
        reqs.update(f"{d}=={md.version(d)}" for d in dists)
    return sorted(reqs)


def constraints() -> str:
    """Every distribution of this environment pinned: the agent's dependencies' dependencies too."""
    pins = {}
    for d in md.distributions():
        name = d.metadata["Name"]
        if name and name.lower() != "rampart":
            pins[name.lower()] = f"{name}=={d.version}"
    return "\n".join(sorted(pins.values())) + "\n"


def version() -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (SRC / "__init__.py").read_text(), re.M)
    if not m:
        raise BuildError("no __version__ in rampart/__init__.py")
    return m.group(1)


def source_epoch() -> int:
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    r = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True,
                       text=True)
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else 0


# --- wheels -----------------------------------------------------------------------------------


def _pip_target(pyver: str) -> list[str]:
    machine = platform.machine()
    if machine not in PLATFORMS:
        raise BuildError(f"no wheel platform known for {machine}")
    args = ["--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
            "--abi", "cp" + pyver.replace(".", "")]
    for plat in PLATFORMS[machine]:
        args += ["--platform", plat]
    return args


def _stamp(wheelhouse: Path, pyver: str, reqs: list[str], cons: str) -> Path:
    key = hashlib.sha256(("\n".join(reqs) + cons + platform.machine()).encode()).hexdigest()[:16]
    return wheelhouse / f".fetched-{pyver}-{key}"


def fetch(wheelhouse: Path, versions: tuple[str, ...]) -> None:
    """Download the agent's wheels for each Python version (skipped when already fetched)."""
    _, third = agent_closure()
    reqs, cons = requirements(third), constraints()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    (wheelhouse / "constraints.txt").write_text(cons)
    for pyver in versions:
        stamp = _stamp(wheelhouse, pyver, reqs, cons)
        if stamp.exists():
            continue
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
              "--dest", str(wheelhouse), "-c", str(wheelhouse / "constraints.txt"),
              *_pip_target(pyver), *reqs])
        stamp.touch()


def _run(cmd: list[str], **kw: object) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:6])} ...: exit {r.returncode}\n{r.stdout}{r.stderr}")


@dataclass(frozen=True)
class Trees:
    """The private trees built once (``lib/py3.X/``), copied as hard links into each artefact."""

    lib: Path
    versions: tuple[str, ...]
    reqs: list[str]

    def copy_to(self, dest: Path) -> None:
        shutil.copytree(self.lib, dest, copy_function=os.link)


def install_tree(dest: Path, wheelhouse: Path, versions: tuple[str, ...]) -> Trees:
    """``dest/py3.X/`` for each version: the agent's closure of ``rampart`` and its wheels."""
    files, third = agent_closure()
    reqs = requirements(third)
    cons = constraints()
    missing = [v for v in versions if not _stamp(wheelhouse, v, reqs, cons).exists()]
    if missing:
        fetch(wheelhouse, tuple(missing))

    def one(pyver: str) -> None:
        tree = dest / f"py{pyver}"
        tree.mkdir(parents=True)
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--no-index", "--find-links", str(wheelhouse), "--no-compile", "--target", str(tree),
              "-c", str(wheelhouse / "constraints.txt"), *_pip_target(pyver), *reqs])
        shutil.rmtree(tree / "bin", ignore_errors=True)  # scripts pip wrote for the build's Python
        for f in files:
            out = tree / f.relative_to(ROOT)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out)

    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        list(pool.map(one, versions))
    _share_identical(dest, versions)
    return Trees(dest, versions, reqs)


def _share_identical(dest: Path, versions: tuple[str, ...]) -> None:
    """Hard-link files identical across the version trees (pure Python, abi3 wheels): one copy
    in the package and on disk."""
    first = dest / f"py{versions[0]}"
    for pyver in versions[1:]:
        tree = dest / f"py{pyver}"
        for p in sorted(tree.rglob("*")):
            if p.is_symlink() or not p.is_file():
                continue
            twin = first / p.relative_to(tree)
            if twin.is_file() and not twin.is_symlink() and twin.stat().st_size == p.stat().st_size \
                    and twin.read_bytes() == p.read_bytes():
                p.unlink()
                os.link(twin, p)


def _wrapper(lib_rel: str, versions: tuple[str, ...]) -> str:
    newest_first = " ".join(sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True))
    return f"""#!/bin/sh
# rampart-agent: the Rampart endpoint agent, from its private tree ({lib_rel} next to this file).
# Runs the newest system Python it has a tree for, isolated: -I ignores PYTHON* variables, the user
# site directory and the current directory, so nothing writable by others decides what root runs.
set -e
lib="$(readlink -f "$(dirname "$(readlink -f "$0")")/{lib_rel}")"
for v in {newest_first}; do
  if [ -x "/usr/bin/python$v" ] && [ -f "$lib/py$v/rampart/agent/main.py" ]; then
    exec "/usr/bin/python$v" -I -B -c '{BOOT}' "$lib/py$v" "$@"
  fi
done
echo "rampart-agent: no supported Python in /usr/bin (one of: {newest_first})" >&2
exit 1
"""


def _unit(exec_path: str) -> str:
    text = (SRC / "agent" / "rampart-agent.service").read_text()
    if UNIT_EXEC not in text:
        raise BuildError(f"rampart/agent/rampart-agent.service has no '{UNIT_EXEC}' line to rewrite")
    text = text.replace(UNIT_EXEC, f"ExecStart={exec_path} ")
    _, sep, rest = text.partition("[Unit]")
    return ("# Rampart endpoint agent (installed by the rampart-agent package or bundle).\n"
            "# Enrol first (rampart-agent enroll ...), then: systemctl enable --now rampart-agent\n"
            + sep + rest)


def _normalise(tree: Path, epoch: int) -> None:
    """Files 0644 (0755 if executable), directories 0755 unless set otherwise, times = epoch."""
    for p in sorted(tree.rglob("*"), reverse=True):
        if p.is_symlink():
            continue
        os.utime(p, (epoch, epoch))
    os.utime(tree, (epoch, epoch))


def _fix_modes(tree: Path) -> None:
    for p in tree.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if p.stat().st_mode & 0o111 else 0o644)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the Debian package ----------------------------------------------------------------------

POSTINST = r"""#!/bin/sh
# rampart-agent postinst. Runs as root: trusts nothing others can write, never enrols, never
# enables or starts the agent (enrolment needs a one-time token the operator gives on purpose).
# On upgrade an agent that was running is restarted on the new code; nothing else is started.
set -e
R="${DPKG_ROOT:-}"
case "$1" in
  configure)
    for d in /etc/rampart-agent /var/lib/rampart-agent; do
      if [ -L "$R$d" ] || { [ -e "$R$d" ] && [ ! -d "$R$d" ]; }; then
        echo "rampart-agent: $d is not a plain directory; refusing to use it" >&2
        exit 1
      fi
      mkdir -p "$R$d"
      chown root:root "$R$d"
      chmod 0700 "$R$d"
    done
    for v in @VERSIONS@; do
      if [ -x "/usr/bin/python$v" ] && [ -d "$R/usr/lib/rampart-agent/py$v" ]; then
        "/usr/bin/python$v" -I -m compileall -q "$R/usr/lib/rampart-agent/py$v" >/dev/null || true
      fi
    done
    if [ -z "$R" ] && [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
      if [ -n "$2" ]; then systemctl try-restart rampart-agent.service || true; fi
    fi
    ;;
esac
exit 0
"""

PRERM = r"""#!/bin/sh
# rampart-agent prerm: stop (and on removal disable) the agent; drop the bytecode postinst wrote.
set -e
R="${DPKG_ROOT:-}"
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  case "$1" in
    remove) systemctl disable --now rampart-agent.service >/dev/null 2>&1 || true ;;
    upgrade) ;;  # postinst restarts it on the new code
  esac
fi
if [ -d "$R/usr/lib/rampart-agent" ]; then
  find "$R/usr/lib/rampart-agent" -depth -type d -name __pycache__ -exec rm -rf {} + || true
fi
exit 0
"""

POSTRM = r"""#!/bin/sh
# rampart-agent postrm: purge removes the device's enrolment (its key and state) and local config.
set -e
R="${DPKG_ROOT:-}"
if [ "$1" = purge ]; then
  rm -rf "$R/var/lib/rampart-agent" "$R/etc/rampart-agent" "$R/var/log/rampart-agent"
fi
if [ -z "$R" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rampart
License: Apache-2.0 (Rampart); the bundled Python distributions under
 /usr/lib/rampart-agent/py3.X/ carry their own licences in their *.dist-info directories.
"""


def _py_depends(versions: tuple[str, ...]) -> str:
    lo = min(versions, key=lambda v: tuple(map(int, v.split("."))))
    major, minor = map(int, max(versions, key=lambda v: tuple(map(int, v.split(".")))).split("."))
    return f"python3 (>= {lo}), python3 (<< {major}.{minor + 1})"


def build_deb(out_dir: Path, trees: Trees) -> Path:
    machine = platform.machine()
    arch = DEB_ARCH.get(machine)
    if arch is None:
        raise BuildError(f"no Debian architecture known for {machine}")
    ver = version()
    epoch = source_epoch()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rampart-deb-") as tmp:
        pkg = Path(tmp) / "pkg"
        lib = pkg / "usr/lib/rampart-agent"
        versions, reqs = trees.versions, trees.reqs
        trees.copy_to(lib)
        (pkg / "usr/bin").mkdir(parents=True)
        (pkg / "usr/bin/rampart-agent").write_text(_wrapper("../lib/rampart-agent", versions))
        (pkg / "usr/bin/rampart-agent").chmod(0o755)
        (pkg / "usr/lib/systemd/system").mkdir(parents=True)
        (pkg / "usr/lib/systemd/system/rampart-agent.service").write_text(_unit("/usr/bin/rampart-agent"))
        doc = pkg / "usr/share/doc/rampart-agent"
        doc.mkdir(parents=True)
        (doc / "copyright").write_text(COPYRIGHT)
        (doc / "requirements.txt").write_text("\n".join(reqs) + "\n")
        _fix_modes(pkg)
        for d in ("etc/rampart-agent", "var/lib/rampart-agent"):
            (pkg / d).mkdir(parents=True)
            (pkg / d).chmod(0o700)
        inodes = {p.stat().st_ino: p.stat().st_size for p in pkg.rglob("*") if p.is_file()}
        size_kib = sum(inodes.values()) // 1024 + 1
        debian = pkg / "DEBIAN"
        debian.mkdir()
        (debian / "control").write_text(
            f"Package: rampart-agent\nVersion: {ver}\nArchitecture: {arch}\n"
            "Maintainer: Rampart maintainers <rampart@localhost>\n"
            f"Installed-Size: {size_kib}\nDepends: {_py_depends(versions)}\n"
            "Section: admin\nPriority: optional\n"
            "Homepage: https://github.com/rampart-rmm/rampart\n"
            "Description: Rampart endpoint agent (runs only signed, logged, contained jobs)\n"
            " The agent of Rampart, an RMM whose endpoints refuse what the responsible\n"
            " people did not sign. Installing it enrols nothing and starts nothing:\n"
            " run 'rampart-agent enroll' with a one-time token, then enable the unit.\n")
        for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
            (debian / name).write_text(text.replace("@VERSIONS@", " ".join(versions)))
            (debian / name).chmod(0o755)
        (debian / "control").chmod(0o644)
        _normalise(pkg, epoch)
        out = out_dir / f"rampart-agent_{ver}_{arch}.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(out)], env=env)
    return out


# --- the self-contained bundle ---------------------------------------------------------------

INSTALL_SH = r"""#!/bin/sh
# Install the Rampart agent bundle into /opt/rampart-agent (any Linux with systemd and Python
# @VERSIONS_OR@ in /usr/bin). Run as root from the unpacked bundle:  ./install.sh [--root DIR]
# It never enrols and never starts the agent; it prints what to run next.
set -eu
R=""
if [ "${1:-}" = "--root" ]; then R="${2:?--root needs a directory}"; fi
if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then echo "install.sh: run as root" >&2; exit 1; fi
here="$(cd "$(dirname "$0")" && pwd -P)"
for d in /opt /etc/systemd/system /usr/local/bin; do mkdir -p "$R$d"; done
for d in /opt/rampart-agent /etc/rampart-agent /var/lib/rampart-agent; do
  if [ -L "$R$d" ] || { [ -e "$R$d" ] && [ ! -d "$R$d" ]; }; then
    echo "install.sh: $d is not a plain directory; refusing to use it" >&2; exit 1
  fi
done
# Build the new tree beside the old one, then swap: a running agent keeps working until restarted.
new="$R/opt/.rampart-agent.new.$$"
rm -rf "$new"
mkdir -m 0755 "$new"
cp -a "$here/bin" "$here/lib" "$new/"  # -a keeps the hard links between the version trees
chown -R root:root "$new" 2>/dev/null || true
chmod -R go-w "$new"
for v in @VERSIONS@; do
  if [ -x "/usr/bin/python$v" ] && [ -d "$new/lib/py$v" ]; then
    "/usr/bin/python$v" -I -m compileall -q "$new/lib/py$v" >/dev/null || true
  fi
done
rm -rf "$R/opt/rampart-agent.old"
if [ -d "$R/opt/rampart-agent" ]; then mv "$R/opt/rampart-agent" "$R/opt/rampart-agent.old"; fi
mv "$new" "$R/opt/rampart-agent"
rm -rf "$R/opt/rampart-agent.old"
install -m 0644 "$here/rampart-agent.service" "$R/etc/systemd/system/rampart-agent.service"
for d in /etc/rampart-agent /var/lib/rampart-agent; do
  mkdir -p "$R$d"; chown root:root "$R$d" 2>/dev/null || true; chmod 0700 "$R$d"
done
link="$R/usr/local/bin/rampart-agent"
if [ ! -e "$link" ] || [ "$(readlink "$link" 2>/dev/null)" = /opt/rampart-agent/bin/rampart-agent ]; then
  ln -sfn /opt/rampart-agent/bin/rampart-agent "$link"
else
  echo "install.sh: $link exists (another installation?); use /opt/rampart-agent/bin/rampart-agent" >&2
fi
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl try-restart rampart-agent.service || true
fi
echo "installed /opt/rampart-agent; it enrols nothing and starts nothing. Next:"
echo "  /opt/rampart-agent/bin/rampart-agent enroll ...   (token in RAMPART_ENROLL_TOKEN)"
echo "  systemctl enable --now rampart-agent"
"""


def build_bundle(out_dir: Path, trees: Trees) -> Path:
    ver = version()
    epoch = source_epoch()
    name = f"rampart-agent-{ver}-linux-{platform.machine()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rampart-bundle-") as tmp:
        top = Path(tmp) / name
        versions, reqs = trees.versions, trees.reqs
        trees.copy_to(top / "lib")
        (top / "bin").mkdir()
        (top / "bin/rampart-agent").write_text(_wrapper("../lib", versions))
        (top / "bin/rampart-agent").chmod(0o755)
        (top / "rampart-agent.service").write_text(_unit("/opt/rampart-agent/bin/rampart-agent"))
        (top / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (top / "install.sh").write_text(INSTALL_SH.replace("@VERSIONS@", " ".join(versions))
                                        .replace("@VERSIONS_OR@", " or ".join(versions)))
        (top / "install.sh").chmod(0o755)
        _fix_modes(top)
        _normalise(top, epoch)
        out = out_dir / f"{name}.tar.gz"

        def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mtime = epoch
            return ti

        with open(out, "wb") as raw:
            import gzip

            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=epoch, filename="") as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for p in [top, *sorted(top.rglob("*"))]:
                    tar.add(p, arcname=str(p.relative_to(Path(tmp))), recursive=False, filter=clean)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="+", choices=["fetch", "deb", "bundle", "closure"],
                   help="deb and bundle together share one build of the trees")
    p.add_argument("--out", type=Path, default=ROOT / "dist")
    p.add_argument("--wheelhouse", type=Path, default=ROOT / "dist" / "agent-wheels")
    p.add_argument("--python", dest="versions", default=" ".join(PY_VERSIONS),
                   help="CPython minor versions to ship trees for (default: %(default)s)")
    a = p.parse_args(argv)
    versions = tuple(a.versions.split())
    try:
        if "closure" in a.what:
            files, third = agent_closure()
            for f in files:
                print(f.relative_to(ROOT))
            print("third-party:", " ".join(requirements(third)))
        if "fetch" in a.what:
            fetch(a.wheelhouse, versions)
        builds = [b for w, b in (("deb", build_deb), ("bundle", build_bundle)) if w in a.what]
        if not builds:
            return 0
        with tempfile.TemporaryDirectory(prefix="rampart-agent-trees-") as tmp:
            trees = install_tree(Path(tmp) / "lib", a.wheelhouse, versions)
            outs = [build(a.out, trees) for build in builds]
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for out in outs:
        print(f"{out}")
        print(f"SHA-256 {sha256(out)}  {out.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
