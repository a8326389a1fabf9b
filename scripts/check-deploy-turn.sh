#!/usr/bin/env bash
# check-deploy-turn.sh — deploy/'s calls (coturn, issue 21 part 1) checked by
# the programs that read its files, on this machine, everything on 127.0.0.1:
#
#   1. deploy/render.sh renders .env.example (fresh secrets from new-env.sh)
#      into a coturn config and homeserver.yaml that say what deploy/README.md
#      says (scripts/turn-client.py `rendered`: the denied ranges cover every
#      private, loopback, link-local, CGNAT, multicast and reserved range),
#      and refuses TURN settings the files could not hold; docker-compose
#      config has the coturn service on the host's network, built from this
#      machine's Debian release with its coturn package;
#   2. the same templates rendered with a local layout (TURN_HOST 127.0.0.1,
#      free ports, a self-signed certificate): Synapse, with the rendered TURN
#      settings, answers GET /_matrix/client/v3/voip/turnServer for a person
#      it registered and signed in;
#   3. Debian's coturn runs the rendered turnserver.conf, without any
#      capability as in compose, with what a test machine needs on top:
#      listening-ip and relay-ip 127.0.0.1 (and ::1 for IPv6 relays),
#      pidfile and userdb in the scratch directory. It allocates a relay with
#      exactly Synapse's credential over UDP, TCP and TLS, refuses wrong and
#      expired credentials, a TCP relay, a 13th allocation of one person, and a
#      relay to every denied address (CreatePermission 403: 127.0.0.1 and
#      10.0.0.1 included), by scripts/turn-client.py (which asserts each
#      answer) and by turnutils_uclient (127.0.0.1 and 10.0.0.1);
#   4. relaying needs a peer at an address the rendered config allows, and
#      every address a test machine has is one it denies (127.0.0.1; here
#      also 192.0.2.2 and fd00::2, documentation and unique local). So a
#      second copy adds, in this script only, `allow-loopback-peers` (coturn's
#      own loopback rule comes before any list) and `allowed-peer-ip=127.0.0.1`:
#      packets with exactly Synapse's credential go to turnutils_peer on
#      127.0.0.1 and come back, over UDP and TCP with turnutils_uclient and
#      over UDP, TCP and TLS with turn-client.py, while 127.0.0.2 stays
#      refused, now by the rendered denied-peer-ip range alone;
#   5. TURN_SHARED_SECRET=NEW,OLD (deploy/README.md's rotation) rendered and
#      run: Synapse signs with NEW, coturn accepts both; SIGUSR2 makes coturn
#      load a renewed certificate (the certbot deploy hook).
#
# Usage:   scripts/check-deploy-turn.sh           (also the last step of check-deploy.sh)
# Needs:   python3, openssl; Debian's coturn, gettext-base and docker-compose
#          (installed here with apt-get when missing; needs root); Synapse
#          from PyPI (scripts/synapse-venv.sh, ${MP_CACHE:-.cache}). No cargo:
#          the application service registration, which render.sh asks the
#          service for, comes from a stand-in (check-deploy.sh renders the
#          real one).
# Network: apt-get and pip only when something is missing; everything else
#          stays on 127.0.0.1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
started=$SECONDS

say() { echo "check-deploy-turn: $*"; }
ok() { echo "check-deploy-turn: ok   $*"; }
fail() {
    echo "check-deploy-turn: FAIL $*" >&2
    exit 1
}

# ---- tools -----------------------------------------------------------------
missing=()
for tool in turnserver turnutils_uclient turnutils_peer; do
    command -v "$tool" >/dev/null 2>&1 || { missing+=(coturn); break; }
done
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    # coturn's postinst starts no daemon (its /etc/default/coturn leaves it off).
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
venv="$(scripts/synapse-venv.sh | tail -n 1)"
py="$venv/bin/python" # has yaml

scratch_dir mp-turn
pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    stop_scratch # Synapse in $work/synapse, then the directory
}
trap stop_all EXIT

turn() { REPO="$repo" "$py" scripts/turn-client.py "$@"; }
# set_env FILE KEY VALUE: sets KEY's value in an env file (the key must be there).
set_env() {
    awk -v k="$2" -v v="$3" '
        index($0, k "=") == 1 { print k "=" v; found = 1; next }
        { print }
        END { if (!found) exit 3 }' "$1" >"$1.tmp" || fail "set_env: no $2 in $1"
    mv "$1.tmp" "$1"
}
env_of() { grep "^$2=" "$1" | cut -d= -f2-; }

# The application service registration render.sh prints last: a stand-in
# of the form render.sh reads (this check does not start the service).
cat >"$work/registration" <<'EOF'
#!/bin/sh
echo "# matrix-provisioner application service registration: stand-in of scripts/check-deploy-turn.sh"
echo "id: ${APPSERVICE_ID:-daarion}"
echo "url: http://127.0.0.1:9"
echo "as_token: ${APPSERVICE_AS_TOKEN}"
echo "hs_token: ${APPSERVICE_HS_TOKEN}"
echo "sender_localpart: ${APPSERVICE_BOT:-daarion}"
echo "namespaces: {users: [], aliases: [], rooms: []}"
EOF
chmod +x "$work/registration"
render() { MATRIX_PROVISIONER="$work/registration" deploy/render.sh "$@"; }

# ---- 1. .env.example -----------------------------------------------------------
deploy/new-env.sh "$work/prod.env" 2>/dev/null
set_env "$work/prod.env" RENDERED_DIR "$work/prod"
render "$work/prod.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses .env.example with fresh secrets"; }
[[ -n "$(env_of "$work/prod.env" TURN_SHARED_SECRET)" ]] || fail "new-env.sh made no TURN_SHARED_SECRET"
turn rendered "$work/prod.env"

refused=()
for case in 'TURN_SHARED_SECRET=' 'TURN_SHARED_SECRET=short' 'TURN_SHARED_SECRET=0123456789abcdef0123,short' \
    'TURN_USER_LIFETIME=3600' 'TURN_USER_LIFETIME=1 h' 'TURN_PORT=478' 'TURNS_PORT=3478' \
    'TURN_MIN_PORT=49300' 'TURN_MAX_PORT=70000' 'TURN_MIN_PORT=3400' 'TURN_HOST=https://turn.daarion.space' \
    'TURN_HOST=turn.daarion.space:3478' 'TURN_EXTERNAL_IP=the-public-one' 'TURN_REALM=a b'; do
    cp "$work/prod.env" "$work/bad.env"
    set_env "$work/bad.env" "${case%%=*}" "${case#*=}"
    if render "$work/bad.env" >/dev/null 2>&1; then
        fail "deploy/render.sh accepts $case"
    fi
    refused+=("$case")
done
grep -v '^TURN_MAX_PORT=' "$work/prod.env" >"$work/bad.env"
render "$work/bad.env" >/dev/null 2>&1 && fail "deploy/render.sh accepts a missing TURN_MAX_PORT"
ok "deploy/render.sh refuses ${refused[*]} and a missing TURN_MAX_PORT"

if ! env -i "PATH=$PATH" "HOME=$work" docker-compose --env-file "$work/prod.env" \
    --project-directory deploy -f deploy/docker-compose.yml config >"$work/compose.yml" 2>"$work/compose.err"; then
    cat "$work/compose.err" >&2
    fail "docker-compose config refuses deploy/docker-compose.yml"
fi
turn compose "$work/prod.env" "$work/compose.yml"

# ---- 2. the local layout, and Synapse's answer ------------------------------------
# IPv6 relays (and the IPv6 denied ranges) are checked where ::1 exists.
export TURN_CHECK_IPV6=1
python3 -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' 2>/dev/null || TURN_CHECK_IPV6=0
# Ports: TURN_PORT (UDP and TCP), TURNS_PORT and a relay range of 32, free on
# 127.0.0.1 (and ::1), below the ephemeral range (no socket bound to port 0
# takes them meanwhile).
read -r turn_port turns_port relay_min relay_max <<<"$(python3 - <<'PY'
import os, random, socket
low, high = 20000, int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 40
hosts = [(socket.AF_INET, "127.0.0.1")] + [(socket.AF_INET6, "::1")] * (os.environ["TURN_CHECK_IPV6"] == "1")
def free(port):
    socks = []
    try:
        for family, host in hosts:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(family, kind)
                socks.append(s)
                s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()
for _ in range(1000):
    start = random.randint(low, high)
    if all(free(p) for p in range(start, start + 34)):
        print(start, start + 1, start + 2, start + 33)
        break
PY
)"
[[ -n "$relay_max" ]] || fail "no 34 consecutive free ports on 127.0.0.1"
mkdir -p "$work/tls"
make_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=127.0.0.1 $1" -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$work/tls/key.pem.new" -out "$work/tls/cert.pem.new" 2>/dev/null
    chmod 600 "$work/tls/key.pem.new" # as Let's Encrypt's: the owner's alone
    mv "$work/tls/key.pem.new" "$work/tls/key.pem"
    mv "$work/tls/cert.pem.new" "$work/tls/cert.pem"
}
make_cert first

cp "$work/prod.env" "$work/test.env"
while read -r key value; do
    set_env "$work/test.env" "$key" "$value"
done <<EOF
RENDERED_DIR $work/rendered
TURN_HOST 127.0.0.1
TURN_PORT $turn_port
TURNS_PORT $turns_port
TURN_MIN_PORT $relay_min
TURN_MAX_PORT $relay_max
TLS_DIR $work/tls
TLS_CERTIFICATE $work/tls/cert.pem
TLS_CERTIFICATE_KEY $work/tls/key.pem
EOF
render "$work/test.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses the local layout"; }
turn rendered "$work/test.env" >/dev/null

# A throwaway Synapse (scripts/synapse-config.sh: SQLite, 127.0.0.1) with the
# rendered homeserver.yaml's TURN settings, as they are. check-deploy.sh
# starts Synapse with the whole rendered file; this one needs none of the
# rest (PostgreSQL, the service, the gateway).
synapse_port="$(free_port)"
REGISTRATION_SECRET="$(env_of "$work/test.env" SYNAPSE_REGISTRATION_SECRET)" BCRYPT_ROUNDS=4 \
    SERVER_NAME="$(env_of "$work/test.env" SYNAPSE_SERVER_NAME)" \
    scripts/synapse-config.sh "$work/synapse" "$synapse_port" >/dev/null
"$py" - "$work/rendered/synapse/homeserver.yaml" "$work/synapse/homeserver.yaml" <<'PY'
import sys, yaml
rendered = yaml.safe_load(open(sys.argv[1]))
turn = {k: v for k, v in rendered.items() if k.startswith("turn_")}
assert set(turn) == {"turn_uris", "turn_shared_secret", "turn_user_lifetime", "turn_allow_guests"}, sorted(turn)
config = yaml.safe_load(open(sys.argv[2]))
config.update(turn)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
PY
scripts/synapse-ctl.sh start "$work/synapse" >/dev/null 2>"$work/synapse-ctl.err" ||
    { cat "$work/synapse-ctl.err" >&2; fail "Synapse does not start with the rendered TURN settings"; }
turn synapse "$work/test.env" "http://127.0.0.1:$synapse_port" "$work/creds.json"
username="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["username"])' "$work/creds.json")"
password="$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["password"])' "$work/creds.json")"

# ---- 3. coturn as rendered -------------------------------------------------------------
# As compose runs it: root without any capability, unless this is not root.
drop=()
[[ "$(id -u)" -ne 0 ]] || drop=(setpriv --bounding-set=-all --inh-caps=-all --no-new-privs)
coturn_pid=""
# start_coturn NAME RENDERED_CONF [EXTRA LINE…]: the rendered file, then this
# machine's lines, as $work/NAME.conf; waits until it listens.
start_coturn() {
    local name="$1" conf="$2" line
    shift 2
    {
        cat "$conf"
        echo
        echo "# ---- scripts/check-deploy-turn.sh: this test machine only ----"
        echo "listening-ip=127.0.0.1"
        echo "relay-ip=127.0.0.1"
        ((TURN_CHECK_IPV6 == 0)) || echo "relay-ip=::1"
        echo "pidfile=$work/$name.pid"
        echo "userdb=$work/$name.db"
        for line in "$@"; do echo "$line"; done
    } >"$work/$name.conf"
    "${drop[@]}" turnserver -c "$work/$name.conf" >"$work/$name.log" 2>&1 &
    coturn_pid=$!
    pids+=("$coturn_pid")
    for _ in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $turns_port), 1)" 2>/dev/null &&
            grep -q 'Total General servers' "$work/$name.log"; then
            return 0
        fi
        kill -0 "$coturn_pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 30 "$work/$name.log" >&2
    fail "coturn does not start with $work/$name.conf"
}
stop_coturn() {
    kill -TERM "$coturn_pid" 2>/dev/null || true
    wait "$coturn_pid" 2>/dev/null || true
}

conf="$work/rendered/coturn/turnserver.conf"
start_coturn as-rendered "$conf"
# Every denied range was read (coturn 4.6 ignores a malformed one silently).
grep '^denied-peer-ip=' "$conf" | cut -d= -f2 | sort -u >"$work/ranges.rendered"
grep -o 'Black listing: .*' "$work/as-rendered.log" | cut -d' ' -f3 | sort -u >"$work/ranges.read"
diff "$work/ranges.rendered" "$work/ranges.read" >&2 ||
    fail "coturn did not read the rendered denied-peer-ip ranges (< rendered, > read)"
ranges="$(wc -l <"$work/ranges.rendered")"
if grep -E 'ERROR|CONFIG WARNING|Bad configuration|Unknown' "$work/as-rendered.log" >&2; then
    fail "coturn complains about the rendered turnserver.conf (above)"
fi
ok "Debian's coturn $(turnserver --version 2>/dev/null | tail -n 1) runs the rendered turnserver.conf without any capability: $ranges denied ranges read, no complaint"
turn coturn "$work/test.env" "$work/creds.json" "$conf" ||
    { tail -n 20 "$work/as-rendered.log" >&2; exit 1; }

# turnutils_uclient with Synapse's credential, to a denied peer: the
# allocation succeeds, the permission does not.
for peer in 127.0.0.1 10.0.0.1; do
    if timeout 20 turnutils_uclient -v -u "$username" -w "$password" -p "$turn_port" -e "$peer" -r 9 -n 3 -c \
        127.0.0.1 >"$work/uclient-denied.log" 2>&1; then
        cat "$work/uclient-denied.log" >&2
        fail "turnutils_uclient relayed to $peer through the rendered config"
    fi
    grep -q 'Received relay addr' "$work/uclient-denied.log" && grep -q 'error 403' "$work/uclient-denied.log" ||
        { cat "$work/uclient-denied.log" >&2; fail "turnutils_uclient to $peer: no allocation, or no 403"; }
done
ok "turnutils_uclient with Synapse's credential: relay allocated, then a relay to 127.0.0.1 and to 10.0.0.1 refused (403)"
stop_coturn

# ---- 4. relaying, to the one peer this machine has -------------------------------
peer_port="$(free_port)"
turnutils_peer -L 127.0.0.1 -p "$peer_port" >"$work/peer.log" 2>&1 &
pids+=($!)
start_coturn loopback "$conf" "allow-loopback-peers" "allowed-peer-ip=127.0.0.1"
turn loopback-allowed "$work/test.env" "$work/creds.json"
turn relay "$work/test.env" "$work/creds.json" "$peer_port"
# turnutils_uclient over UDP and TCP. Not over TLS: turnutils_uclient 4.6.1
# picks TLS 1.0, 1.1, 1.2 or "any" at random for each connection, and the
# rendered no-tlsv1, no-tlsv1_1 refuse the first two (turn-client.py relayed
# over TLS above).
relayed=()
for mode in udp tcp; do
    flags=()
    [[ "$mode" == udp ]] || flags=(-t)
    timeout 30 turnutils_uclient "${flags[@]}" -u "$username" -w "$password" -p "$turn_port" \
        -e 127.0.0.1 -r "$peer_port" -n 10 -l 120 -c 127.0.0.1 >"$work/uclient-$mode.log" 2>&1 ||
        { cat "$work/uclient-$mode.log" >&2; fail "turnutils_uclient over $mode with Synapse's credential"; }
    line="$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' "$work/uclient-$mode.log" | tail -n 1)"
    [[ "$line" =~ tot_send_msgs=([0-9]+),\ tot_recv_msgs=([0-9]+) ]] &&
        ((BASH_REMATCH[1] > 0 && BASH_REMATCH[2] == BASH_REMATCH[1])) ||
        { cat "$work/uclient-$mode.log" >&2; fail "turnutils_uclient over $mode: $line"; }
    relayed+=("$mode ${BASH_REMATCH[2]}/${BASH_REMATCH[1]}")
done
ok "turnutils_uclient with exactly Synapse's credential relays packets to turnutils_peer on 127.0.0.1 and gets them back (${relayed[*]})"
stop_coturn

# ---- 5. rotating TURN_SHARED_SECRET; a renewed certificate ---------------------------
old="$(env_of "$work/test.env" TURN_SHARED_SECRET)"
cp "$work/test.env" "$work/rotation.env"
set_env "$work/rotation.env" RENDERED_DIR "$work/rendered-rotation"
set_env "$work/rotation.env" TURN_SHARED_SECRET "$(od -An -N32 -tx1 /dev/urandom | tr -d " \n"),$old"
render "$work/rotation.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses TURN_SHARED_SECRET=NEW,OLD"; }
turn rendered "$work/rotation.env" >/dev/null
start_coturn rotation "$work/rendered-rotation/coturn/turnserver.conf"
turn rotation "$work/rotation.env" "$work/creds.json"

before="$(turn tls-cert "$work/test.env" "$work/creds.json")"
make_cert renewed
kill -USR2 "$coturn_pid"
for _ in $(seq 1 50); do
    after="$(turn tls-cert "$work/test.env" "$work/creds.json")"
    [[ "$after" == "$before" ]] || break
    sleep 0.1
done
want="$(openssl x509 -in "$work/tls/cert.pem" -outform DER | sha256sum | cut -d' ' -f1)"
[[ "$after" == "$want" ]] || fail "after SIGUSR2 coturn presents $after, not the renewed certificate $want"
ok "SIGUSR2 (the certbot deploy hook's \`docker-compose kill -s USR2 coturn\`) makes coturn present the renewed certificate"
stop_coturn

say "deploy/'s TURN passes in $((SECONDS - started)) s: rendered coturn and Synapse settings, Synapse's credentials, coturn allocating, relaying and refusing as deploy/README.md says"
