#!/usr/bin/env bash
# run-local.sh — runs matrix-provisioner for real on this machine: a local
# Synapse (installed from PyPI into .cache/, its data kept in .local/synapse)
# on 127.0.0.1:${SYNAPSE_PORT:-8008}, and the service on 127.0.0.1:7030 with
# the embedded SQLite default (./matrix-provisioner.db). Secrets are made once
# and kept in .local/secrets/ (one file each; the service reads them through
# the *_FILE settings). Ctrl-C stops both.
#
# Usage:   scripts/run-local.sh
# Env:     SYNAPSE_PORT (8008), SYNAPSE_SERVER_NAME (localhost), BIND (127.0.0.1:7030)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
port="${SYNAPSE_PORT:-8008}"
server_name="${SYNAPSE_SERVER_NAME:-localhost}"
local_dir="$repo/.local"
secrets="$local_dir/secrets"
mkdir -p "$secrets"
chmod 700 "$secrets"

secret() { # secret NAME: creates .local/secrets/NAME once
    [[ -s "$secrets/$1" ]] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$secrets/$1"
    chmod 600 "$secrets/$1"
}
for name in registration jwt webhook admin; do secret "$name"; done

echo "run-local: building matrix-provisioner (release)…" >&2
cargo build --release --locked --quiet

echo "run-local: setting up Synapse for $server_name on 127.0.0.1:$port…" >&2
scripts/synapse-venv.sh >/dev/null
SERVER_NAME="$server_name" \
REGISTRATION_SECRET="$(cat "$secrets/registration")" \
JWT_SECRET="$(cat "$secrets/jwt")" \
    scripts/synapse-config.sh "$local_dir/synapse" "$port" >/dev/null
scripts/synapse-ctl.sh start "$local_dir/synapse" >/dev/null
trap 'scripts/synapse-ctl.sh stop "$local_dir/synapse" >/dev/null' EXIT

cat >&2 <<MSG
run-local: Synapse is up at http://127.0.0.1:$port (server name $server_name).
run-local: secrets are in $secrets/ (webhook: AUTH_WEBHOOK_SECRET, admin: ADMIN_API_TOKEN).
run-local: starting matrix-provisioner on ${BIND:-127.0.0.1:7030}; Ctrl-C stops both.
MSG
SYNAPSE_URL="http://127.0.0.1:$port" \
SYNAPSE_SERVER_NAME="$server_name" \
SYNAPSE_REGISTRATION_SECRET_FILE="$secrets/registration" \
SYNAPSE_JWT_SECRET_FILE="$secrets/jwt" \
AUTH_WEBHOOK_SECRET_FILE="$secrets/webhook" \
ADMIN_API_TOKEN_FILE="$secrets/admin" \
    target/release/matrix-provisioner serve
