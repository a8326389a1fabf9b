#!/usr/bin/env bash
# check-deploy-federation.sh — deploy/'s FEDERATION setting checked for real,
# on this machine: two homeservers rendered from deploy/ with their own
# server names, one.test and two.test, each with PostgreSQL databases,
# Synapse, matrix-provisioner and its own nginx gateway (the rendered
# gateway.conf, TLS on port 443 of its own loopback address, a certificate
# of a CA made here), federating through the gateways:
#
#   FEDERATION=on (both): /.well-known/matrix/server delegates each name to
#     its gateway on port 443; a public City Room of one made by a signed
#     DAARION.city webhook, an agent in it and a private City Room (both
#     created with m.federate true); a person of two joins the public room
#     by its alias over federation (two finds one through one.test's
#     /.well-known, as any server would), the agent's message, one's
#     person's and two's person's messages are seen on both servers (their
#     client APIs), two's person's message reaches DAARION.city (the
#     service's CITY_EVENTS_URL), and the private City Room refuses them;
#   FEDERATION=off (one re-rendered, Synapse restarted, gateway reloaded):
#     one's gateway answers nginx's 404 for /_matrix/federation/*,
#     /_matrix/key/* and /.well-known/matrix/server, one's Synapse serves no
#     federation resource and connects to no other server, two cannot join
#     or look up one's rooms, and messages no longer cross either way;
#   FEDERATION=on again on one: the agent's next message reaches two, and a
#     person of two joins the City Room made while federation was off.
#
# Name resolution without /etc/hosts or a DNS server: both Synapses get
# Synapse's own https_proxy setting pointing at a small CONNECT proxy
# written here, which maps the names one.test, matrix.one.test, two.test and
# matrix.two.test to the two loopback addresses and refuses every other
# name (this script's client has a second one). Synapse sends federation
# requests, its /.well-known lookups and the OpenID provider's discovery
# through an https_proxy, so the names go through it unresolved and
# Synapse's delegation logic runs as in a deployment (/.well-known/matrix/server
# found, so no SRV lookup). Its log shows where the Synapses connected: only
# one's Synapse ever asks for a two.test name. Certificates are checked (no
# federation_verify_certificates: false): Synapse trusts this CA through
# federation_custom_ca_list (and SSL_CERT_FILE for the OpenID discovery).
# Those settings, and trusted_key_servers: [] (matrix.org is out of
# reach), are the only ones added to the rendered homeserver.yaml, and only
# here.
#
# Usage:   scripts/check-deploy-federation.sh     (scripts/check-deploy.sh calls it)
# Needs:   cargo, python3, PostgreSQL 15 server binaries, openssl; Debian's
#          nginx and gettext-base (installed with apt-get when missing; needs
#          root, which also binds port 443), Synapse from PyPI
#          (scripts/synapse-venv.sh).
# Network: apt-get and pip only when something is missing; everything else
#          stays on loopback addresses (127.0.0.1 and two of 127.0.0.0/8).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
started=$SECONDS

say() { echo "check-federation: $*"; }
ok() { echo "check-federation: ok   $* [$((SECONDS - started)) s]"; }
fail() {
    echo "check-federation: FAIL $*" >&2
    exit 1
}

# ---- tools -----------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

cargo build --locked --quiet --bin matrix-provisioner
bin="$repo/target/debug/matrix-provisioner"
venv="$(scripts/synapse-venv.sh | tail -n 1)"
py="$venv/bin/python" # has yaml

scratch_dir mp-federation
pids=()
declare -A synapse_pid=()
stop_synapse() {
    local pid="${synapse_pid[$1]:-}"
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    synapse_pid[$1]=""
}
stop_all() {
    local pid
    stop_synapse one
    stop_synapse two
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    stop_scratch
}
trap stop_all EXIT
show_logs() {
    local name f
    for name in one two; do
        if [[ -f "$work/$name/synapse.out" ]]; then
            echo "---- $name: Synapse's warnings and errors ----" >&2
            grep -E -A8 ' - (ERROR|CRITICAL) - ' "$work/$name/synapse.out" | tail -n 30 >&2 || true
        fi
        for f in "$work/$name/service.log" "$work/$name/nginx/error.log"; do
            [[ -f "$f" ]] || continue
            echo "---- tail of $f ----" >&2
            tail -n 12 "$f" >&2
        done
    done
    if [[ -f "$work/proxy.log" ]]; then
        echo "---- the name proxy's connections ----" >&2
        tail -n 20 "$work/proxy.log" >&2
    fi
}

# set_env FILE KEY VALUE: sets KEY's value in an env file (the key must be there).
set_env() {
    awk -v k="$2" -v v="$3" '
        index($0, k "=") == 1 { print k "=" v; found = 1; next }
        { print }
        END { if (!found) exit 3 }' "$1" >"$1.tmp" || fail "set_env: no $2 in $1"
    mv "$1.tmp" "$1"
}

# ---- the two servers' addresses ----------------------------------------------
# Two loopback addresses of their own (ports 443 and 80 free on both).
for _ in $(seq 1 20); do
    net="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1))"
    python3 - "$net" <<'PY' && break
import socket, sys
for host in (sys.argv[1] + ".1", sys.argv[1] + ".2"):
    for port in (443, 80):
        s = socket.socket()
        try:
            s.bind((host, port))
        except OSError:
            sys.exit(1)
        finally:
            s.close()
PY
    net=""
done
[[ -n "$net" ]] || fail "no pair of loopback addresses with ports 443 and 80 free (binding 443 needs root)"
declare -A addr=([one]="$net.1" [two]="$net.2")

# ---- a CA, and a certificate for each server's two names -------------------------
mkdir -p "$work/tls" "$work/acme"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=check-federation CA" \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign \
    -keyout "$work/tls/ca.key" -out "$work/tls/ca.pem" 2>/dev/null
for name in one two; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=matrix.$name.test" \
        -keyout "$work/tls/$name.key" -out "$work/tls/$name.csr" 2>/dev/null
    printf 'subjectAltName=DNS:matrix.%s.test,DNS:%s.test\nextendedKeyUsage=serverAuth\n' "$name" "$name" >"$work/tls/$name.ext"
    openssl x509 -req -in "$work/tls/$name.csr" -CA "$work/tls/ca.pem" -CAkey "$work/tls/ca.key" \
        -CAcreateserial -days 2 -extfile "$work/tls/$name.ext" -out "$work/tls/$name.pem" 2>/dev/null
done

# ---- the helpers: the name proxy, DAARION.city's receiver, the checks ----------------
cat >"$work/helpers.py" <<'PY'
"""proxy: an HTTP CONNECT proxy that stands in for DNS: *.one.test and
*.two.test (the names of MAP) go to their loopback addresses, every other
name is refused (502). Logs each CONNECT to LOG.
city: DAARION.city's receiver of the service's events (CITY_EVENTS_URL):
stores each signed POST's body, one a line."""
import asyncio, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def proxy(port, mapping, log):
    mapping = json.loads(mapping)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader, writer):
        try:
            request = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            method, target = request[0], request[1]
            host, _, port = target.rpartition(":")
            to = mapping.get(host.lower().rstrip("."))
            with open(log, "a") as f:
                print(f"{time.time():.3f} {method} {target} -> {to or 'refused'}", file=f, flush=True)
            if method != "CONNECT" or to is None:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(to, int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, OSError, IndexError, ValueError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", int(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def city(port, secret, out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            parts = dict(p.split("=", 1) for p in self.headers.get("X-Daarion-Signature", "").split(",") if "=" in p)
            mac = hmac.new(secret.encode(), f"{parts.get('t')}.".encode() + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(mac, parts.get("v1", "")):
                self.send_response(401)
                self.end_headers()
                return
            with open(out, "ab") as f:
                f.write(body.replace(b"\n", b" ") + b"\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


{"proxy": proxy, "city": city}[sys.argv[1]](*sys.argv[2:])
PY

proxy_port="$(free_port)"
client_proxy_port="$(free_port)"
city_port="$(free_port)"
mapping="{\"one.test\": \"${addr[one]}\", \"matrix.one.test\": \"${addr[one]}\",
          \"two.test\": \"${addr[two]}\", \"matrix.two.test\": \"${addr[two]}\"}"
# The Synapses' (its log shows which names they connected to) and this script's.
python3 "$work/helpers.py" proxy "$proxy_port" "$mapping" "$work/proxy.log" 2>"$work/proxy.err" &
pids+=($!)
python3 "$work/helpers.py" proxy "$client_proxy_port" "$mapping" "$work/client-proxy.log" 2>"$work/client-proxy.err" &
pids+=($!)

# ---- PostgreSQL: one cluster, each server's databases and roles ---------------------
scripts/pg-cluster.sh start "$work/pg" >/dev/null
pg_port="$(cat "$work/pg/port")"
psql_super() { "${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" "postgres://postgres@127.0.0.1:$pg_port/postgres" -XtAq -v ON_ERROR_STOP=1 "$@"; }

# ---- render each server from deploy/ ----------------------------------------------
# render_server NAME FEDERATION: .env.example with fresh secrets and this
# machine's layout (as scripts/check-deploy.sh does), rendered by
# deploy/render.sh; then the check's own additions to homeserver.yaml.
declare -A port_synapse=() port_metrics=() port_service=() port_element=()
for name in one two; do
    port_synapse[$name]="$(free_port)"
    port_metrics[$name]="$(free_port)"
    port_service[$name]="$(free_port)"
    port_element[$name]="$(free_port)"
    mkdir -p "$work/$name/synapse-data"
    chmod 755 "$work/$name" "$work/$name/synapse-data"
    deploy/new-env.sh "$work/$name/.env" 2>/dev/null
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$work/$name/auth_jwt"
    while read -r key value; do
        set_env "$work/$name/.env" "$key" "$value"
    done <<EOF
SYNAPSE_SERVER_NAME $name.test
MATRIX_HOST matrix.$name.test
HTTPS_PORT 443
HTTP_PORT 80
RENDERED_DIR $work/$name/rendered
LISTEN_ADDRESS ${addr[$name]}
POSTGRES_HOST 127.0.0.1
POSTGRES_PORT $pg_port
POSTGRES_SYNAPSE_DB synapse_$name
POSTGRES_PROVISIONER_DB provisioner_$name
SYNAPSE_HOST ${addr[$name]}
SYNAPSE_PORT ${port_synapse[$name]}
SYNAPSE_METRICS_PORT ${port_metrics[$name]}
SYNAPSE_CONFIG_DIR $work/$name/rendered/synapse
SYNAPSE_DATA_DIR $work/$name/synapse-data
PROVISIONER_HOST ${addr[$name]}
PROVISIONER_PORT ${port_service[$name]}
PROVISIONER_CONFIG_DIR $work/$name/rendered/provisioner
ELEMENT_HOST ${addr[$name]}
ELEMENT_PORT ${port_element[$name]}
GATEWAY_IP 127.0.0.1
TLS_DIR $work/tls
TLS_CERTIFICATE $work/tls/$name.pem
TLS_CERTIFICATE_KEY $work/tls/$name.key
ACME_WEBROOT $work/acme
AUTH_PASSWORD_LOGIN_URL http://127.0.0.1:9/api/auth/login
AUTH_JWKS_URL
AUTH_JWT_SECRET $(cat "$work/$name/auth_jwt")
CITY_EVENTS_URL http://127.0.0.1:$city_port/events
FEDERATION on
EOF
done

render_server() {
    local name="$1" federation="$2"
    set_env "$work/$name/.env" FEDERATION "$federation"
    MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/$name/.env" >/dev/null 2>"$work/$name/render.log" ||
        { cat "$work/$name/render.log" >&2; fail "deploy/render.sh refuses $name's settings (FEDERATION=$federation)"; }
    cat >>"$work/$name/rendered/synapse/homeserver.yaml" <<EOF

# ---- Added by scripts/check-deploy-federation.sh, never in a deployment ----
# Other servers' names through the check's CONNECT proxy (its stand-in for DNS).
https_proxy: "http://127.0.0.1:$proxy_port"
no_proxy_hosts: ["127.0.0.1", "${addr[one]}", "${addr[two]}"]
# Certificates checked, against the check's own CA.
federation_custom_ca_list: ["$work/tls/ca.pem"]
# No notary: matrix.org is out of reach here (and looking it up would
# leave the machine). The last value of a key counts.
trusted_key_servers: []
EOF
}

start_synapse_of() {
    local name="$1"
    (
        cd "$work/$name/rendered/synapse"
        exec env SSL_CERT_FILE="$work/tls/ca.pem" "$py" -m synapse.app.homeserver \
            -c "$work/$name/rendered/synapse/homeserver.yaml" </dev/null >"$work/$name/synapse.out" 2>&1
    ) &
    synapse_pid[$name]=$!
}

wait_synapse() {
    local name="$1"
    for _ in $(seq 1 600); do
        if python3 -c "import urllib.request, sys
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.exit(0 if o.open('http://${addr[$name]}:${port_synapse[$name]}/health', timeout=2).read() == b'OK' else 1)" 2>/dev/null; then
            return 0
        fi
        kill -0 "${synapse_pid[$name]}" 2>/dev/null || break
        sleep 0.2
    done
    show_logs
    fail "Synapse of $name.test does not start from its rendered homeserver.yaml"
}

# nginx as the image runs it: the site from conf.d/, the rendered nginx/.
start_gateway() {
    local name="$1" dir="$work/$1/nginx"
    mkdir -p "$dir/tmp"
    ln -sfn "$work/$name/rendered/nginx" "$dir/conf.d"
    cat >"$dir/nginx.conf" <<'EOF'
daemon off;
worker_processes 1;
pid nginx.pid;
events {
    worker_connections 256;
}
http {
    access_log access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include conf.d/*.conf;
}
EOF
    nginx -t -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/test.log" ||
        { cat "$dir/test.log" >&2; fail "nginx -t refuses $name's rendered gateway config"; }
    nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
    pids+=($!)
}

for name in one two; do
    render_server "$name" on
    psql_super -f "$work/$name/rendered/postgres/init.sql" >/dev/null ||
        fail "PostgreSQL refuses $name's rendered init.sql"
done
ok "deploy/render.sh renders one.test and two.test with FEDERATION=on; PostgreSQL runs both init.sql (databases synapse_one, synapse_two, provisioner_one, provisioner_two)"

python3 "$work/helpers.py" city "$city_port" "$(grep '^CITY_WEBHOOK_SECRET=' "$work/one/.env" | cut -d= -f2 | cut -d, -f1)" \
    "$work/city-events.jsonl" 2>"$work/city.err" &
pids+=($!)

for name in one two; do
    start_gateway "$name"
    service_env=("PATH=$PATH")
    while IFS= read -r line; do
        [[ "$line" =~ ^[A-Z_]+= ]] && service_env+=("$line")
    done <"$work/$name/rendered/provisioner.env"
    env -i "${service_env[@]}" "$bin" serve >"$work/$name/service.log" 2>&1 &
    pids+=($!)
done
for name in one two; do
    for _ in $(seq 1 100); do
        env -i "BIND=${addr[$name]}:${port_service[$name]}" "$bin" healthcheck 2>/dev/null && break
        sleep 0.1
    done
    env -i "BIND=${addr[$name]}:${port_service[$name]}" "$bin" healthcheck 2>/dev/null ||
        { show_logs; fail "matrix-provisioner of $name.test does not start from its rendered provisioner.env"; }
done
# Both Synapses at once (their first start makes the schema).
start_synapse_of one
start_synapse_of two
wait_synapse one
wait_synapse two
ok "one.test and two.test run: each its Synapse, matrix-provisioner and nginx gateway (${addr[one]}:443, ${addr[two]}:443) from its rendered files"

# ---- the checks ---------------------------------------------------------------------
cat >"$work/checks.py" <<'PY'
import json, os, sys, time, uuid
import urllib.parse

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from deploy_checks import Checks, load_env, registration_mac, signed

WORK = os.environ["WORK"]
ENV = {name: load_env(os.path.join(WORK, name, ".env")) for name in ("one", "two")}
STATE = os.path.join(WORK, "state.json")
PROXY = os.environ["PROXY"]
# https through the name proxy (certificates checked against the check's
# CA), http to the loopback addresses directly.
C = Checks("check-federation", started=os.environ["STARTED"], cafile=os.path.join(WORK, "tls", "ca.pem"),
           https_proxy=PROXY, timeout=60)
ok, fail, check, call, jcall, until = C.ok, C.fail, C.check, C.call, C.jcall, C.until


def gateway(name, path):
    return f"https://matrix.{name}.test{path}"


def synapse(name, path):
    return f"http://{ENV[name]['LISTEN_ADDRESS']}:{ENV[name]['SYNAPSE_PORT']}{path}"


def service(name, path):
    return f"http://{ENV[name]['LISTEN_ADDRESS']}:{ENV[name]['PROVISIONER_PORT']}{path}"


def q(s):
    return urllib.parse.quote(s, safe="")


def register(name, user, admin=False):
    """An account through shared-secret registration (Synapse directly: its
    admin API is closed at the gateway); its access token."""
    secret = ENV[name]["SYNAPSE_REGISTRATION_SECRET"]
    nonce = jcall("GET", synapse(name, "/_synapse/admin/v1/register"))["nonce"]
    password = "federation-check-" + user
    return jcall("POST", synapse(name, "/_synapse/admin/v1/register"), {
        "nonce": nonce, "username": user, "password": password, "admin": admin,
        "mac": registration_mac(secret, nonce, user, password, admin)})["access_token"]


def city_event(etype, data):
    """A signed DAARION.city webhook to one's service (directly: the gateway
    does not open webhooks by default)."""
    body = json.dumps({"id": "evt_" + uuid.uuid4().hex, "type": etype,
                       "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "data": data}).encode()
    secret = ENV["one"]["CITY_WEBHOOK_SECRET"].split(",")[0]
    status, _, _ = call("POST", service("one", "/v1/webhooks/city"), body, headers=signed(secret, body))
    check(status == 202, f"DAARION.city webhook {etype}: {status}")


def admin_get(path):
    return jcall("GET", service("one", path), token=ENV["one"]["ADMIN_API_TOKEN"])


def send(name, token, room_id, body):
    txn = uuid.uuid4().hex
    return jcall("PUT", gateway(name, f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/{txn}"),
                 {"msgtype": "m.text", "body": body}, token)["event_id"]


def timeline(name, token, room_id):
    """The room's latest messages as `name`'s client API gives them."""
    got = jcall("GET", gateway(name, f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=100"),
                token=token)
    return [e for e in got["chunk"] if e["type"] == "m.room.message"]


def sees(name, token, room_id, sender, body):
    """The event of `sender` with `body` in `name`'s timeline, or None."""
    return next((e for e in timeline(name, token, room_id)
                 if e["sender"] == sender and e["content"].get("body") == body), None)


def nginx_404(url, method="GET"):
    status, _, data = call(method, url, b"{}" if method == "POST" else None)
    check(status == 404 and b"errcode" not in data and b"nginx" in data,
          f"{method} {url}: {status} {data[:200]!r}, expected nginx's 404")


def cmd_on():
    s = {}
    # Delegation: each name's /.well-known/matrix/server sends other servers to its gateway on 443.
    for name in ("one", "two"):
        for host in (f"{name}.test", f"matrix.{name}.test"):
            got = jcall("GET", f"https://{host}/.well-known/matrix/server")
            check(got == {"m.server": f"matrix.{name}.test:443"}, f"https://{host}/.well-known/matrix/server: {got}")
        copy = json.load(open(os.path.join(ENV[name]["RENDERED_DIR"], "well-known", "matrix", "server")))
        check(copy == {"m.server": f"matrix.{name}.test:443"}, f"{name}'s rendered well-known/matrix/server: {copy}")
        version = jcall("GET", gateway(name, "/_matrix/federation/v1/version"))
        check(version["server"]["name"] == "Synapse", f"{name}'s federation version: {version}")
        keys = jcall("GET", gateway(name, "/_matrix/key/v2/server"))
        check(keys["server_name"] == f"{name}.test", f"{name}'s keys: {keys}")
        # The key it signs with is the one in its data volume (SYNAPSE_DATA_DIR/signing.key).
        algo, key_id, _ = open(os.path.join(ENV[name]["SYNAPSE_DATA_DIR"], "signing.key")).read().split()
        check(f"{algo}:{key_id}" in keys["verify_keys"],
              f"{name}'s published keys {sorted(keys['verify_keys'])} are not {algo}:{key_id} of signing.key")
    ok("FEDERATION=on: https://one.test and two.test /.well-known/matrix/server delegate to matrix.<name>.test:443 "
       "(the rendered copies agree); /_matrix/federation/v1/version and /_matrix/key/v2/server through each "
       "gateway, signed with the key in SYNAPSE_DATA_DIR/signing.key")

    # City Rooms of one, by DAARION.city's signed webhooks, and an agent in the public one.
    pub, priv, agent = "r_fed_square", "r_fed_private", "a_herald"
    city_event("room.created", {"room_id": pub, "slug": "fed-square", "name": "Федерація · Площа",
                                "visibility": "public"})
    city_event("room.created", {"room_id": priv, "slug": "fed-private", "name": "Private", "visibility": "private"})
    city_event("agent.created", {"agent_id": agent, "slug": "herald", "display_name": "Herald"})
    city_event("room.member_added", {"room_id": pub, "member_id": agent, "role": "member"})
    rooms = {}
    for room in (pub, priv):
        got = until(lambda: (lambda r: r if r["state"] == "ready" else None)(admin_get(f"/v1/rooms/{room}")),
                    f"City Room {room} is not ready: {admin_get(f'/v1/rooms/{room}')}")
        rooms[room] = got
    agent_user = until(lambda: (lambda a: a["matrix_user_id"] if a["state"] == "ready" else None)(
        admin_get(f"/v1/agents/{agent}")), f"agent {agent} is not ready")
    pub_id, priv_id = rooms[pub]["matrix_room_id"], rooms[priv]["matrix_room_id"]
    pub_alias, priv_alias = rooms[pub]["alias"], rooms[priv]["alias"]
    check(pub_alias == "#city-fed-square:one.test", f"alias {pub_alias}")
    admin = register("one", "fedcheckadmin", admin=True)
    for room_id in (pub_id, priv_id):
        state = jcall("GET", synapse("one", f"/_synapse/admin/v1/rooms/{q(room_id)}/state"), token=admin)["state"]
        create = next(e for e in state if e["type"] == "m.room.create")
        check(create["content"].get("m.federate") is True, f"{room_id}'s m.room.create: {create['content']}")
        rules = next(e for e in state if e["type"] == "m.room.join_rules")["content"]["join_rule"]
        check(rules == ("public" if room_id == pub_id else "invite"), f"{room_id}'s join rule {rules}")
    ok(f"one's service made City Rooms from signed webhooks: public {pub_alias} and private {priv_alias}, "
       f"both with m.federate true; agent {agent_user} joined the public one")

    # A person of each server in the public City Room: one's by the room's alias on
    # one, two's over federation (two resolves one.test itself).
    olena = register("one", "olena")
    jcall("POST", gateway("one", f"/_matrix/client/v3/join/{q(pub_alias)}"), {}, olena)
    mykola = register("two", "mykola")
    joined = jcall("POST", gateway("two", f"/_matrix/client/v3/join/{q(pub_alias)}"), {}, mykola)
    check(joined["room_id"] == pub_id, f"two joined {joined['room_id']}, not {pub_id}")
    # As any server would: one.test's /.well-known first, then the gateway it names.
    targets = [l.split()[2] for l in open(os.path.join(WORK, "proxy.log")) if " CONNECT " in l]
    check("one.test:443" in targets and "matrix.one.test:443" in targets
          and targets.index("one.test:443") < len(targets) - 1 - targets[::-1].index("matrix.one.test:443"),
          f"the Synapses' connections: {targets}")
    members = jcall("GET", gateway("one", f"/_matrix/client/v3/rooms/{q(pub_id)}/joined_members"), token=olena)["joined"]
    check({"@olena:one.test", "@mykola:two.test", agent_user} <= set(members), f"members on one: {sorted(members)}")
    ok(f"@mykola:two.test joined {pub_alias} from two.test over federation (two found one through "
       f"https://one.test/.well-known/matrix/server); one lists {len(members)} members, two's among them")

    # Messages both ways: the agent's (a DAARION.city webhook), one's person's, two's person's.
    city_event("agent.message", {"message_id": "m_fed_1", "agent_id": agent, "room_id": pub,
                                 "body": "**Вітаю, two.test!**", "format": "markdown"})
    msg = until(lambda: (lambda m: m if m["state"] == "sent" else None)(admin_get("/v1/messages/m_fed_1")),
                "the agent's message was not sent")
    send("one", olena, pub_id, "Привіт від one.test")
    send("two", mykola, pub_id, "Hello from two.test")
    agent_seen = until(lambda: sees("two", mykola, pub_id, agent_user, "**Вітаю, two.test!**"),
                       "two does not see the agent's message")
    check(agent_seen["event_id"] == msg["event_id"] and "<strong>" in agent_seen["content"].get("formatted_body", ""),
          f"the agent's message on two: {agent_seen}")
    until(lambda: sees("two", mykola, pub_id, "@olena:one.test", "Привіт від one.test"),
          "two does not see one's person's message")
    until(lambda: sees("one", olena, pub_id, "@mykola:two.test", "Hello from two.test"),
          "one does not see two's person's message")
    until(lambda: sees("one", olena, pub_id, agent_user, "**Вітаю, two.test!**"), "one does not see the agent's message")
    # DAARION.city hears what two's person said (the service's matrix.message).
    def city_heard():
        try:
            lines = open(os.path.join(WORK, "city-events.jsonl"), encoding="utf8").readlines()
        except FileNotFoundError:
            return None
        return next((e for e in map(json.loads, lines) if e["type"] == "matrix.message"
                     and e["data"]["matrix_user_id"] == "@mykola:two.test"), None)
    heard = until(city_heard, "DAARION.city got no matrix.message of @mykola:two.test")
    check(heard["data"]["room_id"] == pub and heard["data"]["sender_id"] is None
          and heard["data"]["body"] == "Hello from two.test", f"matrix.message: {heard['data']}")
    ok(f"both servers' client APIs show the agent's message ({msg['event_id']}, formatted), @olena:one.test's "
       "and @mykola:two.test's; DAARION.city got two's person's message (matrix.message, sender_id null)")

    # The private City Room cannot be joined from outside.
    status, _, data = call("POST", gateway("two", f"/_matrix/client/v3/join/{q(priv_alias)}"), {}, mykola)
    check(status == 403 and json.loads(data).get("errcode") == "M_FORBIDDEN",
          f"two joining {priv_alias}: {status} {data[:200]!r}, expected 403 M_FORBIDDEN")
    status, _, data = call("POST", gateway("two", f"/_matrix/client/v3/join/{q(priv_id)}?server_name=one.test"), {}, mykola)
    check(status == 403, f"two joining {priv_id} by id: {status} {data[:200]!r}, expected 403")
    members = jcall("GET", synapse("one", f"/_synapse/admin/v1/rooms/{q(priv_id)}/members"), token=admin)["members"]
    check(not any(m.endswith(":two.test") for m in members), f"{priv_alias}'s members: {members}")
    ok(f"@mykola:two.test cannot join the private {priv_alias} (403 M_FORBIDDEN, by alias and by id)")

    s.update(pub=pub, pub_id=pub_id, pub_alias=pub_alias, agent=agent, agent_user=agent_user,
             olena=olena, mykola=mykola, admin=admin)
    json.dump(s, open(STATE, "w"))


def cmd_off():
    s = json.load(open(STATE))
    import yaml
    hs = yaml.safe_load(open(os.path.join(ENV["one"]["RENDERED_DIR"], "synapse", "homeserver.yaml")))
    check(hs["federation_domain_whitelist"] == [], f"federation_domain_whitelist: {hs['federation_domain_whitelist']}")
    check(hs["listeners"][0]["resources"][0]["names"] == ["client"], f"listener: {hs['listeners'][0]}")
    check(not os.path.exists(os.path.join(ENV["one"]["RENDERED_DIR"], "well-known", "matrix", "server")),
          "FEDERATION=off still renders well-known/matrix/server")

    # The gateway: nginx's 404 for federation, keys and the delegation (after the reload took).
    def gone():
        status, _, _ = call("GET", gateway("one", "/_matrix/federation/v1/version"))
        return status == 404
    until(gone, "one's gateway still serves federation after the reload", 15)
    for url in (gateway("one", "/_matrix/federation/v1/version"), gateway("one", "/_matrix/federation"),
                gateway("one", "//_matrix/federation/v1/version"), gateway("one", "/_matrix/%66ederation/v1/version"),
                gateway("one", "/_matrix/key/v2/server"), gateway("one", "/_matrix/key/v2/query/two.test"),
                "https://one.test/.well-known/matrix/server", gateway("one", "/.well-known/matrix/server")):
        nginx_404(url)
    nginx_404(gateway("one", "/_matrix/federation/v1/send/x"), "PUT")
    nginx_404(gateway("one", "/_matrix/key/v2/query"), "POST")
    # Synapse itself serves no federation (no resource on its listener).
    for path in ("/_matrix/federation/v1/version", "/_matrix/key/v2/server"):
        status, _, _ = call("GET", synapse("one", path))
        check(status == 404, f"one's Synapse directly {path}: {status}, expected 404")
    # The client API still works.
    jcall("GET", gateway("one", "/_matrix/client/v3/account/whoami"), token=s["olena"])
    ok("FEDERATION=off on one: nginx 404 for /_matrix/federation* and /_matrix/key* (also //, %-encoded, PUT, POST) "
       "and /.well-known/matrix/server (none rendered); Synapse directly 404 (listener [client], "
       "federation_domain_whitelist []); the client API works")

    # Two cannot reach one: a new person of two can neither look a room up
    # nor join one that two is not in yet (a public City Room made now).
    city_event("room.created", {"room_id": "r_fed_later", "slug": "fed-later", "name": "Later",
                                "visibility": "public"})
    later = until(lambda: (lambda r: r if r["state"] == "ready" else None)(admin_get("/v1/rooms/r_fed_later")),
                  "City Room r_fed_later is not ready")
    taras = register("two", "taras")
    for alias in (s["pub_alias"], later["alias"]):
        status, _, data = call("GET", gateway("two", f"/_matrix/client/v3/directory/room/{q(alias)}"), token=taras)
        check(status != 200, f"two still resolves {alias}: {status} {data[:200]!r}")
    for path in (q(s["pub_alias"]), q(later["alias"]), q(later["matrix_room_id"]) + "?server_name=one.test"):
        status, _, data = call("POST", gateway("two", f"/_matrix/client/v3/join/{path}"), {}, taras)
        check(status != 200, f"@taras:two.test joined {urllib.parse.unquote(path)} with federation off: {data[:200]!r}")
    # In the room two is already in, two lets its own person in by itself
    # (it holds the room's state), but one never hears of it (below).
    jcall("POST", gateway("two", f"/_matrix/client/v3/join/{q(s['pub_id'])}"), {}, taras)
    # Nothing crosses any more: the agent's next message stays on one, two's stays on two.
    city_event("agent.message", {"message_id": "m_fed_2", "agent_id": s["agent"], "room_id": s["pub"],
                                 "body": "Only on one.test now", "format": "plain"})
    until(lambda: admin_get("/v1/messages/m_fed_2")["state"] == "sent", "the agent's second message was not sent")
    send("two", s["mykola"], s["pub_id"], "Still there, one.test?")
    time.sleep(8)
    check(sees("two", s["mykola"], s["pub_id"], s["agent_user"], "Only on one.test now") is None,
          "two received the agent's message with one's federation off")
    check(sees("one", s["olena"], s["pub_id"], "@mykola:two.test", "Still there, one.test?") is None,
          "one received two's message with its federation off")
    check(sees("one", s["olena"], s["pub_id"], s["agent_user"], "Only on one.test now") is not None,
          "one does not show its agent's message")
    # Since the switch: no connection to two (only one's Synapse would open
    # one), and whatever two sent to one's gateway got nginx's 404.
    connects = [l.split()[2] for l in open(os.path.join(WORK, "proxy.log")).readlines()[int(os.environ["PROXY_MARK"]):]
                if " CONNECT " in l]
    check(not any("two.test" in c for c in connects), f"one's Synapse connected to two: {connects}")
    federation = []
    for line in open(os.path.join(WORK, "one", "nginx", "access.log")).readlines()[int(os.environ["ACCESS_MARK"]):]:
        request, status = line.split('"')[1], line.split('"')[2].split()[0]
        if request.split()[1].startswith(("/_matrix/federation", "/_matrix/key")) and "Synapse" in line:
            federation.append((request, status))
    check(federation and all(status == "404" for _, status in federation),
          f"two's federation requests at one's gateway since the switch: {federation}")
    members = jcall("GET", synapse("one", f"/_synapse/admin/v1/rooms/{q(s['pub_id'])}/members"),
                    token=s["admin"])["members"]
    check("@taras:two.test" not in members, f"members on one: {members}")
    refused = [l for l in open(os.path.join(WORK, "proxy.log")) if l.rstrip().endswith("refused")]
    check(not refused, f"a Synapse looked for a server other than one.test and two.test: {refused}")
    ok(f"FEDERATION=off: two.test cannot look up {s['pub_alias']} or {later['alias']}, nor join the room made "
       "since (alias and id); @taras:two.test's join of the room two was in stays on two; the agent's next "
       "message stays on one, two's person's stays on two; one's Synapse opened no connection to two; "
       f"two's {len(federation)} federation requests to one's gateway all got 404")


def cmd_again():
    s = json.load(open(STATE))
    # The room made while on carries messages again: one sends to two
    # first (which also ends any backoff two keeps for one.test: Synapse
    # resets it when the server it backed off from calls).
    city_event("agent.message", {"message_id": "m_fed_3", "agent_id": s["agent"], "room_id": s["pub"],
                                 "body": "Back on two.test", "format": "plain"})
    until(lambda: admin_get("/v1/messages/m_fed_3")["state"] == "sent", "the agent's third message was not sent")
    until(lambda: sees("two", s["mykola"], s["pub_id"], s["agent_user"], "Back on two.test"),
          "two does not get the agent's message after FEDERATION=on", 60)
    # The City Room made while off is not left behind: a person of two
    # finds it by its alias and joins (it was created with m.federate true).
    later = admin_get("/v1/rooms/r_fed_later")
    petro = register("two", "petro")

    def joined():
        status, _, data = call("POST", gateway("two", f"/_matrix/client/v3/join/{q(later['alias'])}"), {}, petro)
        return json.loads(data) if status == 200 else None
    got = until(joined, f"@petro:two.test cannot join {later['alias']} after FEDERATION=on", 60)
    check(got["room_id"] == later["matrix_room_id"], f"two joined {got['room_id']}, not {later['matrix_room_id']}")
    members = jcall("GET", synapse("one", f"/_synapse/admin/v1/rooms/{q(later['matrix_room_id'])}/members"),
                    token=s["admin"])["members"]
    check("@petro:two.test" in members, f"{later['alias']}'s members on one: {members}")
    ok(f"FEDERATION=on again: the agent's next message in {s['pub_alias']} reaches two, and @petro:two.test "
       f"joins {later['alias']}, the City Room made while federation was off")


{"on": cmd_on, "off": cmd_off, "again": cmd_again}[sys.argv[1]]()
PY
checks() { STARTED="$(($(date +%s) - SECONDS + started))" REPO="$repo" WORK="$work" PROXY="http://127.0.0.1:$client_proxy_port" "$py" "$work/checks.py" "$@"; }

checks on || { show_logs; exit 1; }

# ---- FEDERATION=off on one: render, restart Synapse, reload the gateway ---------------
# What the proxy and one's gateway saw before the switch is not counted after it.
export PROXY_MARK="$(wc -l <"$work/proxy.log")" ACCESS_MARK="$(wc -l <"$work/one/nginx/access.log")"
render_server one off
nginx -t -p "$work/one/nginx/" -c "$work/one/nginx/nginx.conf" -e "$work/one/nginx/error.log" 2>"$work/one/nginx/test.log" ||
    { cat "$work/one/nginx/test.log" >&2; fail "nginx -t refuses one's gateway with FEDERATION=off"; }
kill -HUP "$(cat "$work/one/nginx/nginx.pid")"
stop_synapse one
start_synapse_of one
wait_synapse one
checks off || { show_logs; exit 1; }

# ---- FEDERATION=on again: the rooms made meanwhile are not left behind ---------------
render_server one on
nginx -t -p "$work/one/nginx/" -c "$work/one/nginx/nginx.conf" -e "$work/one/nginx/error.log" 2>"$work/one/nginx/test.log" ||
    { cat "$work/one/nginx/test.log" >&2; fail "nginx -t refuses one's gateway with FEDERATION=on again"; }
kill -HUP "$(cat "$work/one/nginx/nginx.pid")"
stop_synapse one
start_synapse_of one
wait_synapse one
checks again || { show_logs; exit 1; }

say "federation passes in $((SECONDS - started)) s: FEDERATION=on federates one.test and two.test through their gateways (public City Room, agent, private room refused); FEDERATION=off cuts one.test off, and on again brings its rooms back, the one made meanwhile too"
