#!/usr/bin/env bash
# bench-sync.sh — measures the profile sync pass (issue 4): backfill rate next
# to Synapse's raw admin-PUT rate, and passes over PEOPLE people with nothing
# or 1% changed. Starts its own Synapse (and PostgreSQL with DATABASE=postgres)
# on 127.0.0.1 and a fake DAARION user API in-process; stops them on exit.
#
# Usage:   scripts/bench-sync.sh
# Env:     PEOPLE         people in the user API (default 100000)
#          BACKFILL       of them created in Synapse by passes (default 8000)
#          ROUNDS         the backfill alternates with the raw rate in this many
#                         rounds (default 8; which goes first alternates)
#          CONCURRENCY    SYNAPSE_MAX_CONCURRENCY, also used for the raw rate (16)
#          BCRYPT_ROUNDS  Synapse's bcrypt_rounds (default 12, Synapse's own default;
#                         the admin-API backfill does not hash, registration does)
#          DATABASE       sqlite (default) or postgres (PostgreSQL 15, durable:
#                         fsync and synchronous_commit on)
#          PROFILE_DRIFT  enforce (default), report or off
#          BENCH_BUILD    release (default) or debug (a quick check that it runs;
#                         its figures mean nothing)
#          MP_CACHE       passed on to synapse-venv.sh
# Prints each figure with the load average after it; the machine's core count
# and load at start come first. Figures from a loaded machine are pessimistic:
# rerun on a quiet one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${BCRYPT_ROUNDS:=12}"
: "${DATABASE:=sqlite}"
: "${BENCH_BUILD:=release}"
export BCRYPT_ROUNDS

echo "bench-sync: building ($BENCH_BUILD)…" >&2
case "$BENCH_BUILD" in
    release) cargo build --release --locked --example bench_sync >&2 ;;
    debug) cargo build --locked --example bench_sync >&2 ;;
    *) echo "bench-sync: BENCH_BUILD must be release or debug" >&2; exit 2 ;;
esac

scripts/synapse-venv.sh >/dev/null
scratch_dir mp-bench

export MP_BENCH_SERVER_NAME="bench.daarion.space"
export MP_BENCH_REGISTRATION_SECRET="bench-secret-$RANDOM$RANDOM"
port="$(SERVER_NAME="$MP_BENCH_SERVER_NAME" REGISTRATION_SECRET="$MP_BENCH_REGISTRATION_SECRET" \
    SYNAPSE_LOG_LEVEL=WARNING RELAX_RATELIMITS=0 start_synapse "$work/synapse")"
export MP_BENCH_SYNAPSE_URL="http://127.0.0.1:$port"
export MP_BENCH_SYNAPSE_PID="$(cat "$work/synapse/synapse.pid")"

if [[ "$DATABASE" == postgres ]]; then
    export BENCH_DATABASE_URL="$(scripts/pg-cluster.sh start "$work/pg" | tail -n 1)"
    # The test cluster trades durability for speed; measure with it on.
    psql -q "$BENCH_DATABASE_URL" -c "ALTER SYSTEM SET fsync = on" \
        -c "ALTER SYSTEM SET synchronous_commit = on" \
        -c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null
fi

target="${CARGO_TARGET_DIR:-$repo/target}"
"$target/$BENCH_BUILD/examples/bench_sync"
