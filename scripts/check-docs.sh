#!/usr/bin/env bash
# check-docs.sh — proves that the Swagger UI at /docs works without internet:
# builds the service, starts it on SQLite in a temporary directory (Synapse is
# not needed for /docs), loads /docs/ in headless Chromium with every host but
# 127.0.0.1 unresolvable, and checks that the UI rendered the operations of
# /openapi.json. Leaves the rendered DOM and a screenshot for a person to see.
#
# Usage:   scripts/check-docs.sh [OUT_DIR]     (default: target/check-docs)
# Needs:   cargo; Debian's `chromium` (installed here with apt-get when missing,
#          so it runs on a fresh CI machine; needs root).
# Network: apt-get (Debian's packages) only when chromium is missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out="${1:-$repo/target/check-docs}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
    echo "check-docs: installing chromium (Debian package)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

cargo build --locked --quiet --bin matrix-provisioner
bin="$repo/target/debug/matrix-provisioner"

work="$(mktemp -d)"
port="$(free_port)"
service_env=(
    "PATH=$PATH"
    "BIND=127.0.0.1:$port"
    "DATABASE_URL=sqlite://$work/provisioner.db"
    "SYNAPSE_SERVER_NAME=docs.invalid"
    "SYNAPSE_REGISTRATION_SECRET=unused-here"
    "SYNAPSE_URL=http://127.0.0.1:9"
)
env -i "${service_env[@]}" "$bin" serve >"$out/service.log" 2>&1 &
pid=$!
cleanup() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    env -i "BIND=127.0.0.1:$port" "$bin" healthcheck 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$out/service.log" >&2; exit 1; }
    sleep 0.1
done
env -i "BIND=127.0.0.1:$port" "$bin" healthcheck

url="http://127.0.0.1:$port/docs/"
chromium_flags=(
    --headless --no-sandbox --disable-gpu --disable-dev-shm-usage
    --disable-background-networking --disable-component-update --disable-sync
    --disable-default-apps --disable-domain-reliability --no-first-run
    --no-default-browser-check --disable-client-side-phishing-detection
    --disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication
    # Nothing but this machine can be reached: the page must be self-contained.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
    --virtual-time-budget=15000
    --window-size=1280,1600
)
run_chromium() {
    chromium "${chromium_flags[@]}" --user-data-dir="$(mktemp -d -p "$work")" "$@" 2>>"$out/chromium.log"
}
run_chromium --dump-dom "$url" >"$out/docs.html"
run_chromium --screenshot="$out/docs.png" "$url" >/dev/null

fail=0
# Swagger UI renders one block per operation, with the path in the DOM.
for needle in 'class="swagger-ui' 'opblock' '/v1/webhooks/auth' '/v1/users/{user_id}' \
    '/healthz' '/readyz' '/metrics' 'matrix-provisioner'; do
    if ! grep -qF -- "$needle" "$out/docs.html"; then
        echo "check-docs: the rendered page lacks $needle" >&2
        fail=1
    fi
done
if grep -qiE 'Failed to load API definition|Fetch error' "$out/docs.html"; then
    echo "check-docs: Swagger UI could not load /openapi.json" >&2
    fail=1
fi
ops="$(grep -o 'data-path="[^"]*"' "$out/docs.html" | sort -u | wc -l)"
[[ -s "$out/docs.png" ]] || { echo "check-docs: no screenshot" >&2; fail=1; }
if [[ "$fail" -ne 0 ]]; then
    echo "check-docs: FAILED (DOM in $out/docs.html, chromium log in $out/chromium.log)" >&2
    exit 1
fi
echo "check-docs: /docs rendered $ops operations without internet; screenshot $out/docs.png"
