#!/usr/bin/env bash
# synapse-venv.sh — owns the Python virtualenv that runs a throwaway Synapse for
# tests and benchmarks: ${MP_CACHE:-<repo>/.cache}/synapse-venv with
# matrix-synapse[postgres,jwt,oidc,redis] and matrix-nio at pinned versions, plus this
# repository's Synapse module (synapse-module/, package matrix_provisioner_synapse).
#
# Usage:   scripts/synapse-venv.sh            (prints the venv path as last line)
# Env:     MP_CACHE        cache dir (default <repo>/.cache)
#          SYNAPSE_PYTHON  interpreter used to create the venv (default python3.11,
#                          else python3)
# Idempotent: when the pinned versions are already installed it does nothing;
# the module is reinstalled (non-editable) whenever a file of synapse-module/
# (pyproject.toml, README.md, src/) changed, by a hash kept in
# VENV/.matrix-provisioner-synapse.sha256.
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
# the [jwt] extra is authlib here (not PyJWT); [postgres] is psycopg2; [redis]
# (Synapse's workers: scripts/check-deploy-workers.sh) is txredisapi and hiredis
from importlib.util import find_spec
for mod in ("authlib", "psycopg2", "yaml", "synapse", "nio", "txredisapi", "hiredis"):
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
        "matrix-synapse[postgres,jwt,oidc,redis]==$SYNAPSE_VERSION" \
        "matrix-nio==$NIO_VERSION" >&2
    if ! installed_ok; then
        echo "synapse-venv: installation in $venv is incomplete" >&2
        exit 1
    fi
fi

# The Synapse module of this repository, installed as an operator would
# (`pip install ./synapse-module`), from a copy so that no build/ or
# *.egg-info/ is left in the source tree.
module_src="$repo/synapse-module"
module_stamp="$venv/.matrix-provisioner-synapse.sha256"

module_hash() {
    (
        cd "$module_src" &&
            find pyproject.toml README.md src -type f \
                ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}

module_ok() {
    [[ -f "$module_stamp" && "$(cat "$module_stamp")" == "$1" ]] || return 1
    "$venv/bin/python" -c 'import importlib.util, sys
sys.exit(importlib.util.find_spec("matrix_provisioner_synapse") is None)' >/dev/null 2>&1
}

want="$(module_hash)"
if ! module_ok "$want"; then
    echo "synapse-venv: installing synapse-module (matrix_provisioner_synapse) into $venv" >&2
    copy="$(mktemp -d)"
    trap 'rm -rf "$copy"' EXIT
    cp -R "$module_src/pyproject.toml" "$module_src/README.md" "$module_src/src" "$copy/"
    rm -rf "$copy/src/"*.egg-info
    # The venv's own setuptools builds it when it can (>= 61 for pyproject
    # metadata, and bdist_wheel: from setuptools >= 70.1 or the wheel package);
    # otherwise pip fetches one from PyPI into an isolated build environment.
    isolation=()
    if "$venv/bin/python" -c 'import sys, setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
try:
    import wheel
    has_wheel = True
except ImportError:
    has_wheel = False
sys.exit(0 if v >= (61, 0) and (has_wheel or v >= (70, 1)) else 1)' >/dev/null 2>&1; then
        isolation=(--no-build-isolation)
    fi
    rm -f "$module_stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --force-reinstall "${isolation[@]}" "$copy" >&2
    echo "$want" >"$module_stamp"
    rm -rf "$copy"
    trap - EXIT
fi

echo "$venv"
