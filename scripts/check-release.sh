#!/usr/bin/env bash
# check-release.sh — what the Dockerfile's build and start do, without a Docker
# engine: builds the release binary with the very command the Dockerfile runs
# (cargo build --release --locked), then starts it once the way the container
# does (BIND=0.0.0.0:PORT, SQLite file created and migrated at start), against
# a throwaway Synapse; checks /healthz and /readyz, the `healthcheck`
# subcommand the HEALTHCHECK uses, then stops it with SIGTERM and expects exit
# status 0.
#
# Usage:   scripts/check-release.sh
# Needs:   cargo, python3 (Synapse venv, see synapse-venv.sh).
# Env:     MP_CACHE  passed on to the Synapse scripts
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The Dockerfile's build step, verbatim.
cargo build --release --locked
bin="$repo/target/release/matrix-provisioner"

scripts/synapse-venv.sh >/dev/null
work="$(mktemp -d /tmp/mp-release.XXXXXX)"
pid=""
cleanup() {
    [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    scripts/synapse-ctl.sh stop "$work/synapse" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

synapse_port="$(SERVER_NAME=release.test REGISTRATION_SECRET=release-registration-secret \
    JWT_SECRET=release-jwt-secret BCRYPT_ROUNDS=4 RELAX_RATELIMITS=1 start_synapse "$work/synapse")"

port="$(free_port)"
# As in the container: all addresses, SQLite in the working directory.
service_env=(
    "PATH=$PATH"
    "BIND=0.0.0.0:$port"
    "DATABASE_URL=sqlite://$work/matrix-provisioner.db"
    "SYNAPSE_URL=http://127.0.0.1:$synapse_port"
    "SYNAPSE_SERVER_NAME=release.test"
    "SYNAPSE_REGISTRATION_SECRET=release-registration-secret"
)
env -i "${service_env[@]}" "$bin" serve >"$work/service.log" 2>&1 &
pid=$!

healthy=0
for _ in $(seq 1 100); do
    if env -i "BIND=0.0.0.0:$port" "$bin" healthcheck 2>/dev/null; then
        healthy=1
        break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
fail() {
    echo "check-release: $*" >&2
    sed 's/^/  service: /' "$work/service.log" >&2
    exit 1
}
[[ "$healthy" -eq 1 ]] || fail "the healthcheck subcommand never succeeded"
[[ -f "$work/matrix-provisioner.db" ]] || fail "no SQLite database was created at start"

get() { python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=10)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}
healthz="$(get "http://127.0.0.1:$port/healthz")"
[[ "$healthz" == "200 "* ]] || fail "/healthz answered: $healthz"
readyz="$(get "http://127.0.0.1:$port/readyz")"
[[ "$readyz" == "200 "* ]] || fail "/readyz answered: $readyz"

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[[ "$status" -eq 0 ]] || fail "exit status $status after SIGTERM"
if env -i "BIND=127.0.0.1:$port" "$bin" healthcheck 2>/dev/null; then
    fail "the healthcheck subcommand succeeds with the service stopped"
fi
echo "check-release: release build starts, /healthz $healthz, /readyz $readyz, exits 0 on SIGTERM"
