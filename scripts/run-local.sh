#!/usr/bin/env bash
# run-local.sh — runs matrix-provisioner for real on this machine: a local
# Synapse (installed from PyPI into .cache/, its data kept in .local/synapse)
# on 127.0.0.1:${SYNAPSE_PORT:-8008}, and the service on 127.0.0.1:7030 with
# the embedded SQLite default (./matrix-provisioner.db). Secrets are made once
# and kept in .local/secrets/ (one file each; the service reads them through
# the *_FILE settings). Ctrl-C stops all.
#
# Sign-in works as with DAARION Auth as it runs (CONTRACT.md sections 10 and
# 11), against a STAND-IN for DAARION Auth's login API
# (scripts/standin-daarion.py on 127.0.0.1:7020: made-up people, everyone's
# password "daarion-standin"; olena@example.com is README's u_7f3c2a):
# - with a password from any Matrix client (Element X's way): Synapse loads
#   the password module from synapse-module/, which asks the service;
# - in a browser: open http://127.0.0.1:7020/ (the stand-in's start page) and
#   press "Continue with DAARION": Synapse's single sign-on (the service is its
#   OpenID provider) leads to the service's own email-and-password page, and
#   the browser comes back to a page that shows whom it signed in.
#
# For checking Synapse by hand, a local Synapse admin account of the
# newcomer's own (not the service's) is made once; its access token is in
# .local/secrets/synapse_admin_token.
#
# City Rooms are on too: the service is Synapse's application service (its
# registration, printed by the service, in .local/appservice.yaml), so
# signed `room.*` webhooks to /v1/webhooks/city (CITY_WEBHOOK_SECRET in
# .local/secrets/city_webhook) become Matrix rooms.
#
# Usage:   scripts/run-local.sh
# Env:     SYNAPSE_PORT (8008), SYNAPSE_SERVER_NAME (localhost), BIND (127.0.0.1:7030),
#          STANDIN_PORT (7020)
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
for name in registration jwt webhook admin auth_jwt oidc_client as_token hs_token city_webhook \
    password_module; do
    secret "$name"
done
bind="${BIND:-127.0.0.1:7030}"
public_url="http://$bind"
standin_port="${STANDIN_PORT:-7020}"

echo "run-local: building matrix-provisioner (release)…" >&2
cargo build --release --locked --quiet

echo "run-local: setting up Synapse for $server_name on 127.0.0.1:$port…" >&2
scripts/synapse-venv.sh >/dev/null
# The service's settings, shared by its registration file and `serve`.
export SYNAPSE_URL="http://127.0.0.1:$port" SYNAPSE_SERVER_NAME="$server_name" \
    SYNAPSE_REGISTRATION_SECRET_FILE="$secrets/registration" \
    APPSERVICE_AS_TOKEN_FILE="$secrets/as_token" APPSERVICE_HS_TOKEN_FILE="$secrets/hs_token" \
    APPSERVICE_URL="$public_url" CITY_WEBHOOK_SECRET_FILE="$secrets/city_webhook"
target/release/matrix-provisioner appservice-registration >"$local_dir/appservice.yaml"
chmod 600 "$local_dir/appservice.yaml"
SERVER_NAME="$server_name" \
REGISTRATION_SECRET="$(cat "$secrets/registration")" \
JWT_SECRET="$(cat "$secrets/jwt")" \
OIDC_PROVIDERS="daarion=$public_url" \
OIDC_CLIENT_SECRET="$(cat "$secrets/oidc_client")" \
SSO_CLIENT_WHITELIST="http://127.0.0.1:$standin_port/" \
APPSERVICE_FILES="$local_dir/appservice.yaml" \
PASSWORD_MODULE_URL="$public_url" \
PASSWORD_MODULE_SECRET="$(cat "$secrets/password_module")" \
    scripts/synapse-config.sh "$local_dir/synapse" "$port" >/dev/null
scripts/synapse-ctl.sh start "$local_dir/synapse" >/dev/null
trap 'scripts/synapse-ctl.sh stop "$local_dir/synapse" >/dev/null' EXIT

# The newcomer's own Synapse admin token: kept while Synapse still accepts
# it, else a fresh admin account by shared-secret registration (no password
# login, which would ask the service before it runs).
admin_token="$secrets/synapse_admin_token"
if ! [[ -s "$admin_token" ]] || ! curl -sf -H "Authorization: Bearer $(cat "$admin_token")" \
        "http://127.0.0.1:$port/_matrix/client/v3/account/whoami" >/dev/null; then
    python3 - "http://127.0.0.1:$port" "$secrets/registration" >"$admin_token.new" <<'PY'
import hashlib, hmac, json, secrets, sys, urllib.request
url, secret = sys.argv[1], open(sys.argv[2]).read().strip()
def call(method, body=None):
    req = urllib.request.Request(url + "/_synapse/admin/v1/register", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    return json.load(urllib.request.urlopen(req, timeout=10))
nonce = call("GET")["nonce"]
user, password = "local-admin-" + secrets.token_hex(3), secrets.token_urlsafe(24)
mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
mac.update(b"\0".join([nonce.encode(), user.encode(), password.encode(), b"admin"]))
print(call("POST", {"nonce": nonce, "username": user, "password": password, "admin": True,
                    "mac": mac.hexdigest()})["access_token"])
PY
    mv "$admin_token.new" "$admin_token"
    chmod 600 "$admin_token"
fi

STANDIN_PORT="$standin_port" AUTH_JWT_SECRET_FILE="$secrets/auth_jwt" \
STANDIN_SYNAPSE_URL="http://127.0.0.1:$port" \
    python3 scripts/standin-daarion.py &
standin=$!
trap 'kill "$standin" 2>/dev/null; scripts/synapse-ctl.sh stop "$local_dir/synapse" >/dev/null' EXIT

cat >&2 <<MSG
run-local: Synapse is up at http://127.0.0.1:$port (server name $server_name).
run-local: secrets are in $secrets/ (webhook: AUTH_WEBHOOK_SECRET, city_webhook:
run-local:   CITY_WEBHOOK_SECRET, admin: ADMIN_API_TOKEN, synapse_admin_token: a Synapse
run-local:   admin account of your own, for checking Synapse by hand).
run-local: starting matrix-provisioner on $bind; Ctrl-C stops all.
run-local: sign in as olena@example.com, password daarion-standin (a STAND-IN DAARION on
run-local:   127.0.0.1:$standin_port): from a Matrix client at http://127.0.0.1:$port, or in a
run-local:   browser at http://127.0.0.1:$standin_port/ ("Continue with DAARION").
MSG
SYNAPSE_JWT_SECRET_FILE="$secrets/jwt" \
AUTH_WEBHOOK_SECRET_FILE="$secrets/webhook" \
ADMIN_API_TOKEN_FILE="$secrets/admin" \
AUTH_JWT_SECRET_FILE="$secrets/auth_jwt" \
PUBLIC_URL="$public_url" \
OIDC_CLIENT_SECRET_FILE="$secrets/oidc_client" \
AUTH_PASSWORD_LOGIN_URL="http://127.0.0.1:$standin_port/api/auth/login" \
PASSWORD_MODULE_SECRET_FILE="$secrets/password_module" \
SIGN_IN_START_URL="http://127.0.0.1:$standin_port/" \
BIND="$bind" \
    target/release/matrix-provisioner serve
