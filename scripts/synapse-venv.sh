#!/usr/bin/env bash
# synapse-venv.sh — owns the Python virtualenv that runs a throwaway Synapse for
# tests and benchmarks: ${MP_CACHE:-<repo>/.cache}/synapse-venv with
# matrix-synapse[postgres,jwt,oidc] and matrix-nio at pinned versions.
#
# Usage:   scripts/synapse-venv.sh            (prints the venv path as last line)
# Env:     MP_CACHE        cache dir (default <repo>/.cache)
#          SYNAPSE_PYTHON  interpreter used to create the venv (default python3.11,
#                          else python3)
# Idempotent: when the pinned versions are already installed it does nothing.
# Network: only pip talking to PyPI.
set -euo pipefail

SYNAPSE_VERSION=1.163.2
NIO_VERSION=0.26.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MP_CACHE:-$repo/.cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
venv="$cache/synapse-venv"

if [[ -n "${SYNAPSE_PYTHON:-}" ]]; then
    py="$SYNAPSE_PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    py=python3.11
else
    py=python3
fi

installed_ok() {
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$SYNAPSE_VERSION" "$NIO_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
want_synapse, want_nio = sys.argv[1], sys.argv[2]
assert version("matrix-synapse") == want_synapse
assert version("matrix-nio") == want_nio
# the [jwt] extra is authlib here (not PyJWT); [postgres] is psycopg2
from importlib.util import find_spec
for mod in ("authlib", "psycopg2", "yaml", "synapse", "nio"):
    assert find_spec(mod) is not None, mod
EOF
}

# Serialise concurrent callers (parallel test runs) on one lock per cache dir.
exec 9>"$cache/.synapse-venv.lock"
flock 9

if ! installed_ok; then
    echo "synapse-venv: installing matrix-synapse $SYNAPSE_VERSION into $venv" >&2
    if [[ ! -x "$venv/bin/python" ]]; then
        "$py" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "matrix-synapse[postgres,jwt,oidc]==$SYNAPSE_VERSION" \
        "matrix-nio==$NIO_VERSION" >&2
    if ! installed_ok; then
        echo "synapse-venv: installation in $venv is incomplete" >&2
        exit 1
    fi
fi

echo "$venv"
