#!/usr/bin/env bash
# test.sh — runs every test: unit tests, and the integration tests against a
# real Synapse (installed from PyPI into .cache/) and a throwaway PostgreSQL
# cluster, both started here on 127.0.0.1 and stopped on exit.
#
# With no arguments it then checks the running service against its own
# OpenAPI description (Schemathesis), Swagger UI at /docs in headless
# Chromium (installed with apt-get when missing), and "Continue with DAARION"
# in headless Chromium from Synapse's own login page, and deploy/ with the
# programs that read it (scripts/check-deploy.sh: Synapse, PostgreSQL, nginx,
# docker-compose config, the sign-in through the gateway).
#
# Usage:   scripts/test.sh [cargo test arguments…]   (arguments: cargo test only)
# Needs:   cargo, python3 (venv), PostgreSQL 15 server binaries, nats-server
#          (installed with apt-get when missing).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

scripts/synapse-venv.sh >/dev/null
# NATS JetStream (tests/integration/nats.rs starts a server of its own per
# test): Debian's package.
if ! command -v nats-server >/dev/null; then
    echo "test.sh: installing nats-server" >&2
    apt-get install -y nats-server >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
fi
# The password module inside a real Synapse of its own, against a fake of
# the service's endpoint (about 10 s); the Rust suite then drives it with the
# real service.
if [[ $# -eq 0 ]]; then
    python3 synapse-module/tests/test_against_synapse.py
fi

scratch_dir mp-test

echo "test.sh: starting PostgreSQL and Synapse in $work" >&2
pg_url="$(scripts/pg-cluster.sh start "$work/pg" | tail -n 1)"

export MP_TEST_SYNAPSE_SERVER_NAME="test.daarion.space"
export MP_TEST_SYNAPSE_SECRET="test-registration-secret-$RANDOM$RANDOM"
export MP_TEST_SYNAPSE_JWT_SECRET="test-jwt-secret-$RANDOM$RANDOM"
# Synapse's "Continue with DAARION": one provider per database back end, on
# ports the OpenID tests bind the service to (one test at a time per port).
export MP_TEST_OIDC_SECRET="test-oidc-secret-$RANDOM$RANDOM"
MP_TEST_OIDC_PORT_SQLITE="$(fixed_port)"
MP_TEST_OIDC_PORT_POSTGRES="$(fixed_port)"
until [[ "$MP_TEST_OIDC_PORT_POSTGRES" != "$MP_TEST_OIDC_PORT_SQLITE" ]]; do
    MP_TEST_OIDC_PORT_POSTGRES="$(fixed_port)"
done
export MP_TEST_OIDC_PORT_SQLITE MP_TEST_OIDC_PORT_POSTGRES
# The application service of each back end (City Rooms): registration files
# printed by the service itself, loaded by Synapse. Synapse reaches the
# service on the back end's fixed port; bot, agents and aliases are apart.
export MP_TEST_AS_TOKEN="test-as-token-$RANDOM$RANDOM" MP_TEST_HS_TOKEN="test-hs-token-$RANDOM$RANDOM"
registrations=""
for backend in sqlite postgres; do
    port_var="MP_TEST_OIDC_PORT_${backend^^}"
    SYNAPSE_SERVER_NAME="$MP_TEST_SYNAPSE_SERVER_NAME" SYNAPSE_REGISTRATION_SECRET=unused \
        APPSERVICE_ID="daarion-$backend" APPSERVICE_BOT="daarion-$backend" \
        AGENT_LOCALPART_PREFIX="agent-$backend-" ROOM_ALIAS_PREFIX="city-$backend-" \
        APPSERVICE_AS_TOKEN="$MP_TEST_AS_TOKEN-$backend" APPSERVICE_HS_TOKEN="$MP_TEST_HS_TOKEN-$backend" \
        APPSERVICE_URL="http://127.0.0.1:${!port_var}" \
        cargo run --locked --quiet -- appservice-registration > "$work/appservice-$backend.yaml"
    registrations+="${registrations:+,}$work/appservice-$backend.yaml"
done

port="$(SERVER_NAME="$MP_TEST_SYNAPSE_SERVER_NAME" \
    REGISTRATION_SECRET="$MP_TEST_SYNAPSE_SECRET" \
    JWT_SECRET="$MP_TEST_SYNAPSE_JWT_SECRET" \
    OIDC_PROVIDERS="daarion-sqlite=http://127.0.0.1:$MP_TEST_OIDC_PORT_SQLITE,daarion-postgres=http://127.0.0.1:$MP_TEST_OIDC_PORT_POSTGRES" \
    OIDC_CLIENT_SECRET="$MP_TEST_OIDC_SECRET" SSO_CLIENT_WHITELIST="http://element.test/" \
    APPSERVICE_FILES="$registrations" \
    BCRYPT_ROUNDS=4 RELAX_RATELIMITS=1 start_synapse "$work/synapse")"

export MP_TEST_SYNAPSE_URL="http://127.0.0.1:$port"
export MP_TEST_POSTGRES_URL="$pg_url"

cargo test --locked "$@"

if [[ $# -eq 0 ]]; then
    scripts/synapse-ctl.sh stop "$work/synapse" >/dev/null
    scripts/schemathesis.sh
    scripts/check-docs.sh
    scripts/check-sign-in.sh
    scripts/check-deploy.sh
fi
