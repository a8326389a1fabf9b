#!/usr/bin/env bash
# bench.sh — measures webhook intake, SSO token exchange and end-to-end
# provisioning, each next to a baseline taken in the same run: /healthz of the
# same binary for intake and SSO, Synapse's own shared-secret registration
# rate for provisioning. Starts its
# own Synapse (default bcrypt_rounds 12 unless BCRYPT_ROUNDS is set) and
# PostgreSQL on 127.0.0.1; prints one JSON line per measurement.
#
# City Rooms (part "rooms", its own Synapse with bcrypt_rounds 4, since
# accounts are set-up there, not measured): 2×JOINS people, then JOINS joins
# to one City Room through the service next to the same joins sent raw to
# Synapse's admin join API at the same concurrency; then a reconcile pass
# over ROOMS rooms of MEMBERS members: the backfill, then an incremental and
# a full pass with nothing changed (time, Synapse requests, service memory),
# first over ROOMS rooms of MEMBERS people who have no Matrix account yet (so
# the rooms hold only the bot: the listing's size at no cost of joins), then
# over JOINED_ROOMS more rooms of JOINED_MEMBERS people who are all joined
# (the listing then has both sets, as DAARION.city keeps its rooms).
#
# Agents (part "agents", the same Synapse): AGENT_MESSAGES agent messages
# through the service (webhook in, until all are Matrix events) next to the
# same sends made raw by the application service, into one room and into
# AGENT_ROOMS rooms; then PEOPLE_MESSAGES messages of a person, with the
# delay until DAARION.city's receiver has each (p50, p99).
#
# Conversations (part "conversations", the same Synapse): a DAARION person in
# a direct chat with an agent, with matrix-nio syncing (scripts/
# bench-conversation.py): CONVERSATION_MESSAGES agent messages through the
# service, from the webhook's 202 to the client seeing them, next to as many
# sent raw by the application service as the same puppet (p50, p99); then
# STREAMS streamed answers of 50 parts 40 ms apart: edits per message and per
# second, and the final text's delay after the last part.
#
# Password sign-in (part "password", its own Synapse with the password module
# of synapse-module/ asking the service, bcrypt_rounds as above): PEOPLE
# DAARION people signed up by webhook (an address and a name, no username),
# DAARION Auth's login API played by the load generator (answering at once);
# m.login.password logins through the module next to Synapse's own password
# logins of PEOPLE local accounts, PASSWORD_CONCURRENCY in flight, two rounds
# of SECONDS_PER_RUN/2 a side; then POST /v1/sso/password alone, at that
# concurrency and one at a time.
#
# NATS JetStream (part "nats", CONTRACT.md section 12; nats-server from
# Debian, installed when missing): NATS_EVENTS signed user.registered events
# published to DAARION_AUTH before any consumer exists, then on each back
# end: events accepted per second (stored by the intake and acknowledged) by
# the service with NATS_URL, from its durable consumer's creation until
# nothing is pending or unacknowledged; the same events as signed webhooks to
# the same binary (INTAKE_CONCURRENCY in flight, until all are answered 202);
# and a bare async-nats pull consumer that only acknowledges (the upper
# bound). The service's line carries of_bare and of_webhooks, its rate over
# theirs. "Synapse" never answers, as for intake.
#
# Usage:   scripts/bench.sh            (about 8 minutes without rooms and agents)
#          PARTS=nats scripts/bench.sh (about 1 minute after the build)
# Env:     PARTS ("intake nats sso signin password e2e rooms agents conversations": which to run), SECONDS_PER_RUN (10), INTAKE_CONCURRENCY (64), WORKERS (8), PEOPLE (200),
#          BCRYPT_ROUNDS (12), PASSWORD_CONCURRENCY (16), JOINS (1000), JOIN_CONCURRENCY (16), ROOMS (1000), MEMBERS (100),
#          JOINED_ROOMS (100), JOINED_MEMBERS (100), AGENT_MESSAGES (1000), AGENT_ROOMS (20),
#          PEOPLE_MESSAGES (200), CONVERSATION_MESSAGES (200), STREAMS (10), NATS_EVENTS (20000), MP_CACHE,
#          SERVICE_LOG_LEVEL (warn; the log stays in .cache/last-bench-service.log)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
run_secs="${SECONDS_PER_RUN:-10}"
intake_c="${INTAKE_CONCURRENCY:-64}"
workers="${WORKERS:-8}"
people="${PEOPLE:-200}"
rounds="${BCRYPT_ROUNDS:-12}"
parts=" ${PARTS:-intake nats sso signin password e2e rooms agents conversations} "
password_c="${PASSWORD_CONCURRENCY:-16}"
joins="${JOINS:-1000}"
join_c="${JOIN_CONCURRENCY:-16}"
rooms="${ROOMS:-1000}"
members="${MEMBERS:-100}"
joined_rooms="${JOINED_ROOMS:-100}"
joined_members="${JOINED_MEMBERS:-100}"
agent_msgs="${AGENT_MESSAGES:-1000}"
agent_rooms="${AGENT_ROOMS:-20}"
people_msgs="${PEOPLE_MESSAGES:-200}"
conversation_msgs="${CONVERSATION_MESSAGES:-200}"
streams="${STREAMS:-10}"
nats_events="${NATS_EVENTS:-20000}"

cargo build --release --locked --quiet
cargo bench --locked --no-run --bench load --quiet
load="$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n 1)"
venv="$(scripts/synapse-venv.sh | tail -n 1)"

scratch_dir mp-bench
service_pid=""
jwks_pid=""
silent_pid=""
city_pid=""
nats_pid=""
cleanup() {
    [[ -n "$nats_pid" ]] && kill "$nats_pid" 2>/dev/null
    [[ -n "$city_pid" ]] && kill "$city_pid" 2>/dev/null
    scripts/synapse-ctl.sh stop "$work/synapse-rooms" >/dev/null 2>&1 || true
    scripts/synapse-ctl.sh stop "$work/synapse-password" >/dev/null 2>&1 || true
    [[ -n "$silent_pid" ]] && kill "$silent_pid" 2>/dev/null
    [[ -n "$jwks_pid" ]] && kill "$jwks_pid" 2>/dev/null
    [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
    cp "$work/service.log" .cache/last-bench-service.log 2>/dev/null || true
    stop_scratch
}
trap cleanup EXIT

pg_url="$(scripts/pg-cluster.sh start "$work/pg" | tail -n 1)"
# The cluster from pg-cluster.sh is for tests (fsync=off); benchmarks want
# real durability, so turn fsync back on.
runuser -u postgres -- psql -q "$pg_url" -c "ALTER SYSTEM SET fsync = on" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 \
    || psql -q "$pg_url" -c "ALTER SYSTEM SET fsync = on" -c "SELECT pg_reload_conf()" >/dev/null
secret="bench-registration-secret"
# The port of the service that Synapse's "Continue with DAARION" talks to.
oidc_port="$(fixed_port)"
synapse_port="$(SERVER_NAME=bench.daarion.space REGISTRATION_SECRET="$secret" JWT_SECRET=bench-synapse-jwt \
    BCRYPT_ROUNDS="$rounds" RELAX_RATELIMITS=1 OIDC_PROVIDERS="daarion=http://127.0.0.1:$oidc_port" \
    OIDC_CLIENT_SECRET=bench-oidc SSO_CLIENT_WHITELIST=http://element.bench/ \
    start_synapse "$work/synapse")"
synapse="http://127.0.0.1:$synapse_port"

# DAARION Auth's JWKS for RS256 tokens, served as a static file.
mkdir -p "$work/jwks"
"$load" jwks tests/fixtures/jwt/rsa-a.pem bench-k1 >"$work/jwks/jwks.json"
jwks_port="$(free_port)"
python3 -m http.server --bind 127.0.0.1 --directory "$work/jwks" "$jwks_port" >/dev/null 2>&1 &
jwks_pid=$!

start_service() { # start_service DATABASE_URL [SYNAPSE_URL]   (PORT: a fixed port)
    local port; port="${PORT:-$(free_port)}"
    AUTH_JWT_SECRET=bench-auth AUTH_JWKS_URL="http://127.0.0.1:$jwks_port/jwks.json" \
    PUBLIC_URL="http://127.0.0.1:$port" OIDC_CLIENT_SECRET=bench-oidc \
    OIDC_REDIRECT_URIS="http://bench.client/cb,$synapse/_synapse/client/oidc/callback" \
    AUTH_LOGIN_URL=http://127.0.0.1:9/login \
    SYNAPSE_JWT_SECRET=bench-synapse-jwt \
    BIND="127.0.0.1:$port" DATABASE_URL="$1" SYNAPSE_URL="${2:-$synapse}" \
    SYNAPSE_SERVER_NAME=bench.daarion.space SYNAPSE_REGISTRATION_SECRET="$secret" \
    AUTH_WEBHOOK_SECRET=bench-webhook ADMIN_API_TOKEN=bench-admin \
    WORKER_CONCURRENCY="$workers" RUST_LOG="${SERVICE_LOG_LEVEL:-warn}" \
        target/release/matrix-provisioner serve 2>>"$work/service.log" &
    service_pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    url="http://127.0.0.1:$port"
}
stop_service() { kill "$service_pid"; wait "$service_pid" 2>/dev/null || true; service_pid=""; }
new_pg_db() { # new_pg_db NAME: prints its URL
    runuser -u postgres -- psql -q "$pg_url" -c "CREATE DATABASE $1" >/dev/null 2>&1 \
        || psql -q "$pg_url" -c "CREATE DATABASE $1" >/dev/null
    echo "${pg_url%/*}/$1"
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# intake: $intake_c in flight, ${run_secs}s each; provisioning: $people people, $workers in flight, bcrypt_rounds $rounds"
# Intake alone: "Synapse" is a socket that takes connections and never
# answers, so the signups' jobs wait out their timeout instead of sharing the
# two cores with Synapse's bcrypt work (or, with a closed port, failing and
# retrying as fast as the database lets them).
if [[ $parts == *" intake "* || $parts == *" nats "* ]]; then
silent_port="$(free_port)"
python3 -c "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', $silent_port)); s.listen(4096); time.sleep(3600)" &
silent_pid=$!
nowhere="http://127.0.0.1:$silent_port"
fi
if [[ $parts == *" intake "* ]]; then
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/intake.db"; else db="$(new_pg_db intake)"; fi
    start_service "$db" "$nowhere"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" get "$url/healthz" "$intake_c" "$run_secs")}"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" webhooks "$url" bench-webhook "$intake_c" "$run_secs")}"
    stop_service
done
fi
if [[ $parts == *" nats "* ]]; then
# JetStream intake (CONTRACT.md section 12): NATS_EVENTS signed signups are
# published to DAARION_AUTH before any consumer exists; then, per back end,
# a bare pull consumer that only acknowledges (the upper bound), the same
# events as signed webhooks to a service of their own (fresh database,
# INTAKE_CONCURRENCY in flight), and the service with NATS_URL on a fresh
# database and a durable consumer of its own. A NATS rate is from the
# consumer's creation until it has nothing pending and nothing unacked.
# "Synapse" never answers, as for intake: the timing is of acceptance.
if ! command -v nats-server >/dev/null; then
    echo "bench.sh: installing nats-server" >&2
    apt-get install -y nats-server >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
fi
nats_port="$(free_port)"
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" -l "$work/nats.log" &
nats_pid=$!
nats_url="nats://127.0.0.1:$nats_port"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
    sleep 0.1
done
echo "# nats: $nats_events events, webhooks $intake_c in flight"
echo "{\"backend\":\"nats\",\"result\":$("$load" nats-publish "$nats_url" bench-webhook "$nats_events" "$work/nats-events")}"
for backend in sqlite postgres; do
    bare="$("$load" nats-bare "$nats_url" DAARION_AUTH "bare-$backend" "$nats_events")"
    echo "{\"backend\":\"$backend\",\"result\":$bare}"
    if [[ $backend == sqlite ]]; then db="sqlite://$work/nats-webhooks.db"; else db="$(new_pg_db nats_webhooks)"; fi
    start_service "$db" "$nowhere"
    hooks="$("$load" webhooks-file "$url" bench-webhook "$intake_c" "$work/nats-events")"
    echo "{\"backend\":\"$backend\",\"result\":$hooks}"
    stop_service
    if [[ $backend == sqlite ]]; then db="sqlite://$work/nats.db"; else db="$(new_pg_db nats)"; fi
    # The waiter first: it times from the consumer's creation, made by the
    # service as soon as it is up.
    "$load" nats-drain "$nats_url" DAARION_AUTH "mp-$backend" "$nats_events" >"$work/nats-drain" &
    drain_pid=$!
    NATS_URL="$nats_url" NATS_CONSUMER="mp-$backend" NATS_REQUIRE_SIGNATURE=true \
        start_service "$db" "$nowhere"
    wait "$drain_pid"
    # Stored by the intake, not duplicates: the service's own count.
    accepted="$(curl -sf "$url/metrics" | awk '/^matrix_provisioner_nats_messages_total\{.*outcome="accepted"/ {n += $NF} END {print n + 0}')"
    stop_service
    jq -c --arg backend "$backend" --argjson accepted "$accepted" --argjson bare "$bare" --argjson hooks "$hooks" \
        '{backend: $backend, result: (. + {accepted: $accepted}),
          of_bare: ((.per_second / $bare.per_second * 100 | round) / 100),
          of_webhooks: ((.per_second / $hooks.per_second * 100 | round) / 100)}' "$work/nats-drain"
done
kill "$nats_pid"
wait "$nats_pid" 2>/dev/null || true
nats_pid=""
fi
if [[ $parts == *" sso "* ]]; then
# SSO for an already provisioned person (the first exchange provisions),
# with no other work queued.
start_service "sqlite://$work/sso.db"
hs="$("$load" token hs256 bench-auth u_sso_bench)"
rs="$("$load" token rs256 tests/fixtures/jwt/rsa-a.pem bench-k1 u_sso_bench)"
curl -sf -X POST -H "Authorization: Bearer $hs" "$url/v1/sso/login-token" >/dev/null
echo "{\"backend\":\"sqlite\",\"result\":$("$load" get "$url/healthz" "$intake_c" "$run_secs")}"
echo "{\"backend\":\"sqlite\",\"sso\":\"HS256\",\"result\":$("$load" post "$url/v1/sso/login-token" "$hs" "$intake_c" "$run_secs")}"
echo "{\"backend\":\"sqlite\",\"sso\":\"RS256\",\"result\":$("$load" post "$url/v1/sso/login-token" "$rs" "$intake_c" "$run_secs")}"
stop_service
fi
if [[ $parts == *" signin "* ]]; then
# "Continue with DAARION" through the provider alone (authorize, DAARION's
# return, continue, token; DAARION's page itself skipped) for a provisioned
# person, then whole Element-path sign-ins through Synapse.
hs="$("$load" token hs256 bench-auth u_signin_bench)"
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/signin.db"; else db="$(new_pg_db signin)"; fi
    PORT="$oidc_port" start_service "$db"
    curl -sf -X POST -H "Authorization: Bearer $hs" "$url/v1/sso/login-token" >/dev/null
    echo "{\"backend\":\"$backend\",\"result\":$("$load" get "$url/healthz" "$intake_c" "$run_secs")}"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" signin "$url" "$hs" bench-oidc 16 "$run_secs")}"
    # One at a time: a sign-in's own latency, without queueing behind others.
    echo "{\"backend\":\"$backend\",\"result\":$("$load" signin "$url" "$hs" bench-oidc 1 "$run_secs")}"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" element "$synapse" "$url" daarion "$hs" 20)}"
    stop_service
done
fi
if [[ $parts == *" password "* ]]; then
# Element X's m.login.password: Synapse's module asks the service (on a port
# fixed before Synapse starts), which asks DAARION Auth's login API (served
# by the load generator on login_port, tokens signed with the service's
# AUTH_JWT_SECRET). Synapse's own side: local accounts with passwords,
# registered once, reused by the second back end.
password_port="$(fixed_port)"
login_port="$(fixed_port)"
while [[ $login_port == "$password_port" ]]; do login_port="$(fixed_port)"; done
password_synapse_port="$(SERVER_NAME=bench.daarion.space REGISTRATION_SECRET="$secret" \
    BCRYPT_ROUNDS="$rounds" RELAX_RATELIMITS=1 \
    PASSWORD_MODULE_URL="http://127.0.0.1:$password_port" PASSWORD_MODULE_SECRET=bench-module \
    start_synapse "$work/synapse-password")"
password_synapse="http://127.0.0.1:$password_synapse_port"
echo "# password: $people people a side, $password_c in flight, ${run_secs}s a side, bcrypt_rounds $rounds"
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/password.db"; else db="$(new_pg_db password)"; fi
    PORT="$password_port" AUTH_PASSWORD_LOGIN_URL="http://127.0.0.1:$login_port/api/auth/login" \
        AUTH_JWT_ISSUER=daarion-auth PASSWORD_MODULE_SECRET=bench-module \
        start_service "$db" "$password_synapse"
    SYNAPSE_PID="$(cat "$work/synapse-password/synapse.pid")" SERVICE_PID="$service_pid" \
        "$load" password "$password_synapse" "$url" "$login_port" bench-auth bench-module \
        bench-webhook bench-admin "$secret" "$work/password-local-people" \
        "$people" "$password_c" "$run_secs" |
        while IFS= read -r line; do echo "{\"backend\":\"$backend\",\"result\":$line}"; done
    stop_service
done
scripts/synapse-ctl.sh stop "$work/synapse-password" >/dev/null
fi
# Provisioning: a fresh service with an empty queue, then Synapse's raw rate.
[[ $parts == *" e2e "* ]] && for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/e2e.db"; else db="$(new_pg_db e2e)"; fi
    start_service "$db"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" e2e "$url" bench-webhook bench-admin "$workers" "$people")}"
    stop_service
    echo "{\"backend\":\"synapse\",\"result\":$("$load" raw-register "$synapse" "$secret" "$workers" "$people")}"
done
if [[ $parts == *" rooms "* || $parts == *" agents "* || $parts == *" conversations "* ]]; then
# The application service's registration, printed by the service, loaded by
# a Synapse of its own (bcrypt_rounds 4: the people are set-up, not measured).
as_port="$(fixed_port)"
as_env=(APPSERVICE_ID=bench APPSERVICE_BOT=bench-bot APPSERVICE_AS_TOKEN=bench-as APPSERVICE_HS_TOKEN=bench-hs
        APPSERVICE_URL="http://127.0.0.1:$as_port" CITY_WEBHOOK_SECRET=bench-city)
env "${as_env[@]}" SYNAPSE_SERVER_NAME=bench.daarion.space SYNAPSE_REGISTRATION_SECRET="$secret" \
    target/release/matrix-provisioner appservice-registration >"$work/appservice.yaml"
rooms_port="$(SERVER_NAME=bench.daarion.space REGISTRATION_SECRET="$secret" JWT_SECRET=bench-synapse-jwt \
    BCRYPT_ROUNDS=4 RELAX_RATELIMITS=1 APPSERVICE_FILES="$work/appservice.yaml" \
    start_synapse "$work/synapse-rooms")"
rooms_synapse="http://127.0.0.1:$rooms_port"
# DAARION.city's room API, paged as the contract says.
mkdir -p "$work/city"
echo '{"rooms": []}' >"$work/city/rooms.json"
city_port="$(free_port)"
python3 scripts/fake-city-api.py "$city_port" "$work/city/rooms.json" &
city_pid=$!
peak_rss() { # the service's peak resident memory since reset_peak, in MiB
    awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$service_pid/status"
}
reset_peak() { echo 5 >"/proc/$service_pid/clear_refs"; } # VmHWM := VmRSS now
fi
if [[ $parts == *" rooms "* ]]; then
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/rooms.db"; else db="$(new_pg_db rooms)"; fi
    # The last part: its settings may stay in the environment.
    export "${as_env[@]}" CITY_API_URL="http://127.0.0.1:$city_port" SYNC_JOB_WAIT_SECONDS=3600
    start_service "$db" "$rooms_synapse"
    "$load" people "$url" bench-webhook bench-admin $((2 * joins)) "$work/people-$backend" >/dev/null
    echo "{\"backend\":\"$backend\",\"result\":$("$load" room-joins "$url" "$rooms_synapse" bench-city bench-admin bench-as "$work/people-$backend" "$join_c")}"
    pass() { # pass FULL: one reconcile pass through the admin endpoint
        curl -sf -X POST -H "Authorization: Bearer bench-admin" -H "Content-Type: application/json" \
            -d "{\"full\": $1}" "$url/v1/admin/room-sync"
    }
    earlier=""
    for shape in "unjoined $rooms $members -" "joined $joined_rooms $joined_members $work/people-$backend"; do
        read -r kind n m people <<<"$shape"
        # The city keeps its earlier rooms: the second listing has both.
        "$load" listing "$kind$backend" "$n" "$m" "$people" ${earlier:-} >"$work/listing"
        mv "$work/listing" "$work/city/rooms.json"
        earlier="$work/city/rooms.earlier"
        cp "$work/city/rooms.json" "$earlier"
        reset_peak
        echo "{\"backend\":\"$backend\",\"rooms\":$n,\"members\":$m,\"members_in_matrix\":\"$kind\",\"pass\":\"backfill\",\"result\":$(pass false),\"peak_rss_mib\":$(peak_rss)}"
        for full in false true; do
            reset_peak
            echo "{\"backend\":\"$backend\",\"rooms\":$n,\"members\":$m,\"members_in_matrix\":\"$kind\",\"pass\":\"nothing changed, full $full\",\"result\":$(pass $full),\"peak_rss_mib\":$(peak_rss)}"
        done
    done
    stop_service
done
fi
if [[ $parts == *" agents "* ]]; then
# Agents' messages into Matrix (one room: the service sends a room's
# messages in order, so the raw side sends one at a time too; many rooms:
# the raw side with as many in flight as the service has workers), and
# people's messages back to DAARION.city (a receiver inside the load
# generator). The service listens on the registration's port, so Synapse's
# transactions reach it.
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/agents.db"; else db="$(new_pg_db agents)"; fi
    receiver_port="$(free_port)"
    export "${as_env[@]}" CITY_EVENTS_URL="http://127.0.0.1:$receiver_port/events"
    PORT="$as_port" start_service "$db" "$rooms_synapse"
    "$load" people "$url" bench-webhook bench-admin 1 "$work/agents-people-$backend" >/dev/null
    echo "{\"backend\":\"$backend\",\"result\":$("$load" agent-messages "$url" "$rooms_synapse" bench-city bench-admin bench-as agent- "$agent_msgs" 1 1)}"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" agent-messages "$url" "$rooms_synapse" bench-city bench-admin bench-as agent- "$agent_msgs" "$agent_rooms" "$workers")}"
    echo "{\"backend\":\"$backend\",\"result\":$("$load" people-messages "$url" "$rooms_synapse" bench-city bench-admin bench-as "$work/agents-people-$backend" "$receiver_port" "$people_msgs")}"
    stop_service
done
fi
if [[ $parts == *" conversations "* ]]; then
for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then db="sqlite://$work/conversations.db"; else db="$(new_pg_db conversations)"; fi
    receiver_port="$(free_port)"
    export "${as_env[@]}" CITY_EVENTS_URL="http://127.0.0.1:$receiver_port/events"
    PORT="$as_port" start_service "$db" "$rooms_synapse"
    "$load" people "$url" bench-webhook bench-admin 1 "$work/conversation-people-$backend" >/dev/null
    "$venv/bin/python" scripts/bench-conversation.py "$url" "$rooms_synapse" bench-city bench-admin \
        bench-as "$secret" "$work/conversation-people-$backend" "$receiver_port" \
        "$conversation_msgs" "$streams" 50 40 |
        while IFS= read -r line; do echo "{\"backend\":\"$backend\",\"result\":$line}"; done
    stop_service
done
fi
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
