# Sourced by ./quickstart and ./run-tests: make .venv with Rampart installed.
# Installs Debian packages only when something is missing (python3-venv, PostgreSQL for tests).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root (or sudo) to run: $*" >&2; exit 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "error: please install: $*" >&2; exit 1; }
  if [ -z "${RAMPART_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq >/dev/null
    export RAMPART_APT_UPDATED=1
  fi
  # No package's service is started by these installs (slapd, xrdp, PostgreSQL, rsyslog would listen
  # beyond loopback): a policy-rc.d refuses every start while apt runs, unless one already exists.
  local policy=/usr/sbin/policy-rc.d made="" rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && made=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  if [ -n "$made" ]; then as_root rm -f "$policy"; fi
  return "$rc"
}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: Rampart needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
fi

# WeasyPrint (the posture report's PDF, docs/compliance.md) loads Pango and HarfBuzz at run time.
if command -v ldconfig >/dev/null && ! ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so'; then
  apt_install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core
fi

# Reinstall only when the project definition changed.
stamp="$VENV/.rampart-installed-$1"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  target="$ROOT"
  [ "$1" = test ] && target="$ROOT[test]"
  echo "Installing Rampart into $VENV ..." >&2
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e "$target"; } >"$VENV/install.log" 2>&1; then
    cat "$VENV/install.log" >&2
    echo "error: installing Rampart failed (log above, also in $VENV/install.log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
