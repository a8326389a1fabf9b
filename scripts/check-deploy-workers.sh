#!/usr/bin/env bash
# check-deploy-workers.sh — deploy/ with SYNAPSE_WORKERS=on (deploy/README.md,
# "More than one process"), checked by the programs that read its files, on
# this machine (no Docker engine):
#
#   1. deploy/render.sh renders .env.example with SYNAPSE_WORKERS=on (and
#      refuses it without COMPOSE_FILE naming docker-compose.workers.yml, and
#      the reverse); docker-compose (Debian's, `config`) accepts
#      docker-compose.yml with docker-compose.workers.yml: the workers, Redis
#      and the second replica, pinned images, every mounted file rendered;
#   2. the same templates rendered with a local layout (everything on
#      127.0.0.1, each process on its own port, a self-signed certificate):
#      PostgreSQL runs the rendered init.sql; Debian's redis-server runs the
#      rendered redis.conf; nginx the rendered gateway (gateway.conf,
#      gateway-workers.conf, gateway.d/workers.map); two replicas of the
#      service from the rendered provisioner.env on the one PostgreSQL;
#      Synapse's main process from the rendered homeserver.yaml and each
#      worker as its own process (`python -m synapse.app.generic_worker -c
#      homeserver.yaml -c workers/<name>.yaml`), all of them on Redis;
#   3. the gateway routes each path to the process the workers' map names,
#      proven twice for every request: by the upstream nginx logged for it
#      and by the Synapse process whose own access log has it (each request
#      carries a marker no other does): /sync, /login, room sends, the
#      client API's reads and single sign-on to the client worker, federation
#      to the federation reader, media and the admin API to the main process;
#      /_matrix/app/ closed at the public port, and at the internal port
#      Synapse's application service calls and its password module's
#      questions spread over both replicas, as are the OpenID provider's
#      endpoints at the public port;
#   4. sign-in through the workers: a password login (Element X's way:
#      the client worker, Synapse's password module, the internal port, a
#      replica, the stand-in DAARION's login API) and "Continue with DAARION"
#      (single sign-on through the client worker, the service's pages on
#      either replica and its OpenID token endpoint, back with a login token);
#   5. an agent's message: a City Room and an agent made by signed
#      DAARION.city webhooks sent to one replica and the other, the message
#      sent by the service through the client worker, written by the event
#      persister (Synapse's events.instance_name) and read back by the room's
#      member through the client worker.
#
# Usage:   scripts/check-deploy-workers.sh        (scripts/check-deploy.sh runs it last)
# Needs:   cargo, python3, PostgreSQL 15 server binaries, openssl; Debian's
#          nginx, redis-server, docker-compose and gettext-base (installed here
#          with apt-get when missing; needs root); Synapse from PyPI with its
#          redis extra (scripts/synapse-venv.sh).
# Network: apt-get and pip only when something is missing; everything else
#          stays on 127.0.0.1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
started=$SECONDS
# Run under a lock (`flock FILE scripts/check-deploy-workers.sh`), the
# processes started here would inherit its descriptor and hold the lock for
# as long as one of them lived: close what was handed down beyond 0-2.
self="$(readlink -f "${BASH_SOURCE[0]}")"
for fd in /proc/$$/fd/*; do
    target="$(readlink "$fd" 2>/dev/null)" || continue
    fd="${fd##*/}"
    # Not bash's own descriptor of this script.
    if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)) && [[ "$target" != "$self" ]]; then
        eval "exec $fd>&-" 2>/dev/null || true
    fi
done

say() { echo "check-deploy-workers: $*"; }
ok() { echo "check-deploy-workers: ok   $*"; }
fail() {
    echo "check-deploy-workers: FAIL $*" >&2
    exit 1
}

# ---- tools -----------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
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
py="$venv/bin/python" # has yaml, and Synapse with txredisapi and hiredis

scratch_dir mp-workers
pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    scripts/synapse-ctl.sh stop "$work/rendered/synapse" >/dev/null 2>&1 || true
    stop_scratch
}
trap stop_all EXIT
# Print the logs of what ran when a check fails.
show_logs() {
    local f
    for f in "$work/rendered/synapse/synapse.out" "$work"/logs/*.log; do
        [[ -f "$f" ]] || continue
        if grep -q -E ' - (ERROR|CRITICAL) - ' "$f"; then
            echo "---- errors in $f ----" >&2
            grep -E -A8 ' - (ERROR|CRITICAL) - ' "$f" | tail -n 30 >&2 || true
        fi
    done
    for f in "$work"/logs/service-*.log "$work/nginx/error.log" "$work/logs/redis.log"; do
        [[ -f "$f" ]] || continue
        echo "---- tail of $f ----" >&2
        tail -n 15 "$f" >&2
    done
}

# set_env FILE KEY VALUE: sets KEY's value in an env file (added when absent).
set_env() {
    awk -v k="$2" -v v="$3" '
        index($0, k "=") == 1 { print k "=" v; found = 1; next }
        { print }
        END { if (!found) print k "=" v }' "$1" >"$1.tmp"
    mv "$1.tmp" "$1"
}
render() {
    MATRIX_PROVISIONER="$bin" deploy/render.sh "$1" >/dev/null 2>"$work/render.log"
}

mkdir -p "$work/logs"
# The checks written in Python (HTTP, JSON, YAML), one subcommand each.
cat >"$work/checks.py" <<'PY'
import html.parser, http.cookiejar, json, os, re, secrets, subprocess, sys, time
import urllib.parse

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from deploy_checks import Checks, load_env, signed

E = load_env(sys.argv[2])
REPO = os.environ["REPO"]
deploy = os.path.join(REPO, "deploy")
rendered = E["RENDERED_DIR"] if os.path.isabs(E["RENDERED_DIR"]) else os.path.join(deploy, E["RENDERED_DIR"])
SERVER = E["SYNAPSE_SERVER_NAME"]
port = E["HTTPS_PORT"]
ORIGIN = f"https://{E['MATRIX_HOST']}" + ("" if port == "443" else f":{port}")
C = Checks("check-deploy-workers", cafile=E["TLS_CERTIFICATE"], timeout=60)
ok, fail, check, call, jcall = C.ok, C.fail, C.check, C.call, C.jcall


def cmd_compose():
    import yaml
    out = yaml.safe_load(open(sys.argv[3], encoding="utf8"))
    services = out["services"]
    workers = {"synapse-client": "client", "synapse-federation": "federation-reader",
               "synapse-federation-sender": "federation-sender", "synapse-events": "event-persister"}
    want = {"postgres", "synapse", "provisioner", "element", "gateway", "redis", "provisioner-2", *workers}
    check(want <= set(services), f"services: {sorted(services)}, expected at least {sorted(want)}")
    for name, s in services.items():
        image = s.get("image", "")
        last = image.rsplit("/", 1)[-1]
        check(":" in last and not last.endswith(":latest"), f"{name}: image {image!r} has no pinned tag")
        # prometheus: on the host's loopback only (scripts/check-deploy-monitoring.sh).
        if name not in ("gateway", "prometheus"):
            check(not s.get("ports"), f"{name} publishes ports; only the gateway may")
    # The Redis the check runs (Debian's) is the image's major version.
    debian = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    major = re.search(r"v=(\d+)\.", debian).group(1)
    check(services["redis"]["image"].split(":")[1].startswith(major + "."),
          f"Redis image {services['redis']['image']} is not the major version the check runs ({major})")

    def host_path(mount_src):
        return mount_src if os.path.isabs(mount_src) else os.path.normpath(os.path.join(deploy, mount_src))

    def mounts(s):
        for v in s.get("volumes", []):
            if isinstance(v, dict):
                yield v.get("type"), v.get("source"), v["target"]
            else:
                src, dst = v.split(":")[:2]
                yield ("bind" if src.startswith(("/", ".")) else "volume"), src, dst

    config_dir, data_dir = E["SYNAPSE_CONFIG_DIR"], E["SYNAPSE_DATA_DIR"]
    main_volumes = {(k, d) for k, _, d in mounts(services["synapse"])}
    for name, worker in workers.items():
        s = services[name]
        check(s["image"] == services["synapse"]["image"], f"{name} runs {s['image']}, not Synapse's image")
        cmd = s.get("entrypoint") or []
        check(cmd[:3] == ["python", "-m", "synapse.app.generic_worker"],
              f"{name}: entrypoint {cmd} is not synapse.app.generic_worker")
        paths = [cmd[i + 1] for i, a in enumerate(cmd) if a in ("-c", "--config-path")]
        check(paths == [f"{config_dir}/homeserver.yaml", f"{config_dir}/workers/{worker}.yaml"],
              f"{name}: config paths {paths}")
        binds = {d: host_path(src) for k, src, d in mounts(s) if k == "bind"}
        check(binds.get(config_dir) == os.path.join(rendered, "synapse"), f"{name}: {config_dir} is not rendered/synapse")
        for p in paths:
            check(os.path.isfile(os.path.join(rendered, "synapse", os.path.relpath(p, config_dir))),
                  f"{name}: {p} is not rendered")
        check(("volume", data_dir) in {(k, d) for k, _, d in mounts(s)} and ("volume", data_dir) in main_volumes,
              f"{name}: no data volume at {data_dir} (the signing key) shared with the main process")
        check(str(s.get("user", "")).startswith("991"), f"{name}: not Synapse's user 991")
        deps = s.get("depends_on") or {}
        check("synapse" in deps and (deps["synapse"] or {}).get("condition") == "service_healthy",
              f"{name}: does not wait for the main process to be healthy")
    check("redis" in (services["synapse"].get("depends_on") or {}), "synapse does not wait for Redis")
    redis_conf = {host_path(src) for k, src, _ in mounts(services["redis"]) if k == "bind"}
    check(redis_conf == {os.path.join(rendered, "redis", "redis.conf")}, f"redis mounts {redis_conf}")
    r2 = services["provisioner-2"]
    check(r2["image"] == services["provisioner"]["image"], "provisioner-2 runs another image")
    env = r2.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check(env.get("BIND") == f"{E['LISTEN_ADDRESS']}:{E['PROVISIONER_2_PORT']}", f"provisioner-2's BIND {env.get('BIND')}")
    gw_deps = set(services["gateway"].get("depends_on") or {})
    check({"synapse-client", "synapse-federation", "provisioner-2"} <= gw_deps, f"gateway depends on {sorted(gw_deps)}")

    # What render.sh wrote for them.
    import yaml as y
    hs = y.safe_load(open(os.path.join(rendered, "synapse", "homeserver.yaml")))
    check(hs["redis"]["enabled"] is True and hs["redis"]["host"] == E["REDIS_HOST"]
          and hs["redis"]["password"] == E["REDIS_PASSWORD"], f"homeserver.yaml redis: {hs.get('redis')}")
    check(hs["instance_map"] == {
        "main": {"host": E["SYNAPSE_HOST"], "port": int(E["SYNAPSE_REPLICATION_PORT"])},
        "event_persister1": {"host": E["SYNAPSE_EVENTS_WORKER_HOST"], "port": int(E["SYNAPSE_EVENTS_WORKER_PORT"])}},
        f"instance_map: {hs.get('instance_map')}")
    check(hs["stream_writers"] == {"events": "event_persister1"}, f"stream_writers: {hs.get('stream_writers')}")
    check(not any(k.startswith("worker_replication") for k in hs), "homeserver.yaml has worker_replication_* settings")
    repl = [l for l in hs["listeners"] if any("replication" in r["names"] for r in l.get("resources", []))]
    check(len(repl) == 1 and repl[0]["port"] == int(E["SYNAPSE_REPLICATION_PORT"]), f"replication listener: {repl}")
    url = f"http://{E['GATEWAY_IP']}:{E['GATEWAY_INTERNAL_PORT']}"
    reg = y.safe_load(open(os.path.join(rendered, "synapse", "appservice.yaml")))
    check(reg["url"] == url, f"the application service's url {reg['url']}, not the gateway's internal port {url}")
    check(hs["modules"][0]["config"]["service_url"] == url, "the password module does not ask the internal port")
    ok(f"docker-compose config with docker-compose.workers.yml: {len(services)} services (4 Synapse workers "
       f"running Synapse's image as generic_worker with homeserver.yaml and their rendered file, Redis "
       f"{services['redis']['image']}, provisioner-2 on the same database), only the gateway published; "
       f"homeserver.yaml: Redis, instance_map (main, event_persister1), stream_writers.events, a replication "
       f"listener, no worker_replication_*; Synapse reaches the replicas at the gateway's {url}")


# ---- the running processes ------------------------------------------------------
S = json.load(open(os.environ["STATE"]))


def marker():
    return "probe" + secrets.token_hex(6)


# Where each request went: nginx's log (the upstream it passed it to) and
# the access logs of Synapse's processes (which one served it).
PROCESS_OF_PORT = {str(p): name for name, p in S["ports"].items()}


def nginx_lines(needle):
    """(server port, request, upstream addresses) of nginx's log lines with needle."""
    got = []
    for line in open(S["nginx_log"], encoding="utf8", errors="replace"):
        if needle in line:
            server_port, request, upstream, status = line.rstrip("\n").split("\t")
            got.append((server_port, request, [a.strip() for a in upstream.split(",")], status))
    return got


def upstream_processes(needle):
    names = []
    for _, _, upstreams, _ in nginx_lines(needle):
        for a in upstreams:
            names.append(PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1], a))
    return names


def synapse_processes(needle):
    found = set()
    for name, path in S["synapse_logs"].items():
        with open(path, encoding="utf8", errors="replace") as f:
            if any(needle in line and "Processed request" in line for line in f):
                found.add(name)
    return found


def served_by(needle, want, what):
    """The request(s) with needle went to `want`, by nginx's log and by Synapse's."""
    deadline = time.time() + 10
    while True:
        via_nginx, via_synapse = set(upstream_processes(needle)), synapse_processes(needle)
        if via_nginx and via_synapse or time.time() > deadline:
            break
        time.sleep(0.2)
    check(via_nginx == {want}, f"{what}: nginx passed it to {sorted(via_nginx) or 'nothing'}, not {want}")
    check(via_synapse == {want}, f"{what}: served by {sorted(via_synapse) or 'no Synapse process'}, not {want}")
    return f"{what} -> {want}"


def cmd_processes():
    """Every Synapse process is up, on Redis, with its role."""
    for name in ("main", "client1", "federation_reader1", "federation_sender1", "event_persister1"):
        status, _, data = call("GET", f"http://127.0.0.1:{S['ports'][name]}/health")
        check(status == 200 and data == b"OK", f"{name}: /health {status} {data[:100]!r}")
    env = {**os.environ, "REDISCLI_AUTH": E["REDIS_PASSWORD"]}
    deadline = time.time() + 30
    while True:
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", E["REDIS_PORT"], "--no-auth-warning",
                              "PUBSUB", "NUMSUB", SERVER], capture_output=True, text=True, env=env).stdout.split()
        subscribers = int(out[1]) if len(out) == 2 else -1
        if subscribers == 5 or time.time() > deadline:
            break
        time.sleep(0.5)
    check(subscribers == 5, f"Redis channel {SERVER}: {subscribers} subscribers, expected Synapse's 5 processes")
    unauth = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", E["REDIS_PORT"], "PING"],
                            capture_output=True, text=True).stdout
    check("NOAUTH" in unauth, f"Redis answers PING without its password: {unauth!r}")
    ok(f"Synapse's main process and its 4 workers answer /health on their own ports and all 5 listen on "
       f"Redis's replication channel {SERVER} (PUBSUB NUMSUB); Redis wants its password")


def cmd_routes():
    """Paths through the public port, each marked, to the process the map names."""
    admin = E["ADMIN_API_TOKEN"]
    done = []
    m = marker()
    call("GET", f"{ORIGIN}/_matrix/client/versions?{m}")
    done.append(served_by(m, "client1", "GET /_matrix/client/versions"))
    m = marker()
    status, _, data = call("GET", f"{ORIGIN}/_matrix/federation/v1/version?{m}")
    check(status == 200 and b"Synapse" in data, f"/_matrix/federation/v1/version: {status} {data[:200]!r}")
    done.append(served_by(m, "federation_reader1", "GET /_matrix/federation/v1/version"))
    m = marker()
    status, _, _ = call("POST", f"{ORIGIN}/_matrix/key/v2/query?{m}", {"server_keys": {}})
    done.append(served_by(m, "federation_reader1", "POST /_matrix/key/v2/query"))
    # A path no rule names: the main process.
    m = marker()
    status, _, _ = call("GET", f"{ORIGIN}/_matrix/client/v3/pushrules/?{m}")
    check(status == 401, f"pushrules without a token: {status}")
    done.append(served_by(m, "main", "GET /_matrix/client/v3/pushrules/"))
    # Closed at the public port: the application service and the admin API.
    for method, path in (("PUT", "/_matrix/app/v1/transactions/x"), ("GET", "/_synapse/admin/v1/server_version")):
        status, _, data = call(method, ORIGIN + path, {"events": []} if method == "PUT" else None,
                               token=E["APPSERVICE_HS_TOKEN"])
        check(status == 404 and b'"error"' not in data and b"errcode" not in data,
              f"{method} {path} at the public port: {status} {data[:200]!r}, expected nginx's 404")
    ok("the public port routes by gateway.d/workers.map (nginx's upstream and the serving process's own "
       "access log agree): " + "; ".join(done) + "; /_matrix/app/ and /_synapse/admin/ are nginx's 404")


def password_login(identifier, password, m):
    status, _, data = call("POST", f"{ORIGIN}/_matrix/client/v3/login?{m}", {
        "type": "m.login.password", "identifier": identifier, "password": password,
        "initial_device_display_name": "check-deploy-workers"})
    check(status == 200, f"password login {identifier}: {status} {data[:300]!r}")
    return json.loads(data)


def cmd_password():
    done = []
    m = marker()
    got = password_login({"type": "m.id.thirdparty", "medium": "email", "address": "olena@example.com"},
                         os.environ["STANDIN_PASSWORD"], m)
    check(got["user_id"] == f"@olena.petrenko:{SERVER}", f"olena@example.com signed in as {got['user_id']}")
    done.append(served_by(m, "client1", "POST /_matrix/client/v3/login (m.login.password)"))
    # The module asked the service through the internal port.
    asked = [l for l in nginx_lines("/v1/sso/password") if l[0] == E["GATEWAY_INTERNAL_PORT"]]
    # 200 for the person, 404 for a name the service does not know (Synapse may ask more than once).
    check(asked and any(l[3] == "200" for l in asked) and all(l[3] in ("200", "404") for l in asked),
          f"the password module's questions at the internal port: {asked}")
    replicas = {PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1]) for l in asked for a in l[2]}
    check(replicas <= {"service1", "service2"}, f"the password module's questions went to {replicas}")
    m = marker()
    sync = jcall("GET", f"{ORIGIN}/_matrix/client/v3/sync?timeout=0&{m}", token=got["access_token"])
    check("next_batch" in sync, f"/sync: {sync}")
    done.append(served_by(m, "client1", "GET /_matrix/client/v3/sync"))
    m = marker()
    room = jcall("POST", f"{ORIGIN}/_matrix/client/v3/createRoom?{m}", {"name": "workers check"},
                 token=got["access_token"])["room_id"]
    done.append(served_by(m, "client1", "POST /_matrix/client/v3/createRoom"))
    txn = marker()
    sent = jcall("PUT", f"{ORIGIN}/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{txn}",
                 {"msgtype": "m.text", "body": "sent through the client worker"}, token=got["access_token"])
    done.append(served_by(txn, "client1", "PUT /_matrix/client/v3/rooms/{id}/send/m.room.message/{txn}"))
    persister = psql_synapse(f"SELECT instance_name FROM events WHERE event_id = '{sent['event_id']}'")
    check(persister == "event_persister1", f"{sent['event_id']} was written by {persister!r}, not event_persister1")
    m = marker()
    status, _, data = call("POST", f"{ORIGIN}/_matrix/media/v3/upload?filename=x&{m}", os.urandom(1024),
                           got["access_token"], {"Content-Type": "application/octet-stream"})
    check(status == 200, f"upload: {status} {data[:200]!r}")
    done.append(served_by(m, "main", "POST /_matrix/media/v3/upload"))
    ok(f"password sign-in through the workers: olena@example.com became {got['user_id']} (the client worker's "
       f"password module asked the service at the internal port: {len(asked)} question(s), answered by "
       f"{', '.join(sorted(replicas))}); "
       + "; ".join(done) + f"; its event {sent['event_id']} was written by event_persister1 (events.instance_name)")
    json.dump({"token": got["access_token"], "user": got["user_id"], "since": sync["next_batch"]},
              open(os.environ["OLENA"], "w"))


def psql_synapse(sql):
    return subprocess.run([os.environ["PSQL"], f"postgres://postgres@127.0.0.1:{E['POSTGRES_PORT']}/synapse",
                           "-XtAq", "-c", sql], capture_output=True, text=True, check=True).stdout.strip()


class Forms(html.parser.HTMLParser):
    """The forms of a page: [(action, {name: value}, [(name, value) of buttons])]."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append((a.get("action", ""), {}, []))
        elif self.forms and tag == "input" and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value") or ""
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1][2].append((a["name"], a.get("value") or ""))


def form_of(page, url):
    p = Forms()
    p.feed(page.decode())
    check(p.forms, f"no form on {url}: {page[:300]!r}")
    action, fields, buttons = p.forms[0]
    return urllib.parse.urljoin(url, action), fields, buttons


def cmd_sso():
    """"Continue with DAARION" as a browser does it, through the public port."""
    jar = http.cookiejar.CookieJar()
    element = ORIGIN + "/element/"
    m = marker()
    url = (f"{ORIGIN}/_matrix/client/v3/login/sso/redirect/oidc-{E['OIDC_IDP_ID']}"
           f"?redirectUrl={urllib.parse.quote(element, safe='')}&{m}")
    hops = []

    def hop(method, url, form=None, want=(302, 303)):
        status, headers, data = call(method, url, jar=jar, form=form)
        check(status in want, f"{method} {url.split('?')[0]}: {status} {data[:300]!r}")
        hops.append(urllib.parse.urlsplit(url).path)
        return urllib.parse.urljoin(url, headers.get("Location") or ""), data

    authorize, _ = hop("GET", url)
    check(authorize.startswith(ORIGIN + "/oidc/"), f"Synapse sent the browser to {authorize}")
    daarion, _ = hop("GET", authorize)
    check(daarion.startswith(E["AUTH_LOGIN_URL"]), f"the provider sent the browser to {daarion}")
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(daarion).query))
    username = "workers-" + secrets.token_hex(3)
    _, page = hop("POST", E["AUTH_LOGIN_URL"], form={
        "return_to": q["return_to"], "state": q["state"], "username": username,
        "display_name": "Воркер Перевірка", "action": "sign_in"}, want=(200,))
    action, fields, _ = form_of(page, E["AUTH_LOGIN_URL"])
    check(action == f"{ORIGIN}/v1/sso/return", f"DAARION's page returns to {action}")
    confirm, _ = hop("POST", action, form=fields)
    _, page = hop("GET", confirm, want=(200,))
    action, fields, buttons = form_of(page, confirm)
    check(("answer", "continue") in buttons, f"the confirmation page has no Continue: {buttons}")
    # A page that moves on by itself (200, Refresh and Location), not a redirect.
    callback, _ = hop("POST", action, form={**fields, "answer": "continue"}, want=(200,))
    check(callback.startswith(ORIGIN + "/_synapse/client/oidc/callback?"), f"the provider returned to {callback}")
    back, _ = hop("GET", callback)
    check(back.startswith(element) and "loginToken=" in back, f"Synapse's callback sent the browser to {back}")
    token = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))["loginToken"]
    m2 = marker()
    got = jcall("POST", f"{ORIGIN}/_matrix/client/v3/login?{m2}", {"type": "m.login.token", "token": token})
    check(got["user_id"] == f"@{username}:{SERVER}", f"signed in as {got['user_id']}, not @{username}")
    done = [served_by(m, "client1", "the SSO redirect"),
            served_by(urllib.parse.urlsplit(callback).query[:40], "client1", "/_synapse/client/oidc/callback"),
            served_by(m2, "client1", "POST /login (m.login.token)")]
    # The provider's token endpoint, which the client worker called through the public port.
    token_calls = nginx_lines("POST /oidc/token")
    check(token_calls and token_calls[-1][3] == "200", f"Synapse's calls of /oidc/token: {token_calls}")
    ok(f"\"Continue with DAARION\" through the workers, as a browser: {' -> '.join(hops)}; "
       f"{got['user_id']} signed in; " + "; ".join(done) + "; the client worker redeemed the code at /oidc/token (200)")


def city_event(replica, kind, data):
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps({"id": "wk-" + secrets.token_hex(6), "type": kind, "created_at": now, "data": data},
                      ensure_ascii=False).encode()
    status, _, got = call("POST", f"http://127.0.0.1:{S['ports'][replica]}/v1/webhooks/city", body,
                          headers=signed(E["CITY_WEBHOOK_SECRET"].split(",")[0], body))
    check(status in (200, 202), f"{kind} to {replica}: {status} {got[:300]!r}")
    time.sleep(0.01)  # a later created_at for the next one


def wait_state(replica, path, want, what, timeout=90):
    deadline = time.time() + timeout
    while True:
        got = jcall("GET", f"http://127.0.0.1:{S['ports'][replica]}{path}", token=E["ADMIN_API_TOKEN"])
        if got.get("state") == want:
            return got
        if got.get("state") == "failed" or time.time() > deadline:
            fail(f"{what}: {got}")
        time.sleep(0.5)


def cmd_agent():
    olena = json.load(open(os.environ["OLENA"]))
    slug = "workers" + secrets.token_hex(3)
    room_id, agent_id, message_id = "r_" + slug, "a_" + slug, "m_" + slug
    # Half to one replica, half to the other: one database behind both.
    city_event("service1", "room.created", {"room_id": room_id, "slug": slug, "name": "Воркери",
                                            "visibility": "public"})
    city_event("service2", "room.member_added", {"room_id": room_id, "member_id": "u_7f3c2a", "role": "owner"})
    city_event("service1", "agent.created", {"agent_id": agent_id, "slug": slug, "display_name": "Helper"})
    city_event("service2", "room.member_added", {"room_id": room_id, "member_id": agent_id})
    room = wait_state("service1", f"/v1/rooms/{room_id}", "ready", f"City Room {room_id}")
    city_event("service2", "agent.message", {"message_id": message_id, "agent_id": agent_id, "room_id": room_id,
                                             "body": "**Вітаю** через воркери", "format": "markdown"})
    msg = wait_state("service1", f"/v1/messages/{message_id}", "sent", f"agent's message {message_id}")
    event_id, matrix_room = msg["event_id"], room["matrix_room_id"]
    # The service sent it through the internal port, to the client worker.
    sends = [l for l in nginx_lines(f"/send/m.room.message/") if l[0] == E["GATEWAY_INTERNAL_PORT"]]
    check(sends, "the service sent no message through the gateway's internal port")
    by = {PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1]) for l in sends for a in l[2]}
    check(by == {"client1"}, f"the service's sends went to {by}, not the client worker")
    persister = psql_synapse(f"SELECT instance_name FROM events WHERE event_id = '{event_id}'")
    check(persister == "event_persister1", f"{event_id} was written by {persister!r}, not event_persister1")
    # The room's owner reads it through the client worker.
    m = marker()
    event = jcall("GET", f"{ORIGIN}/_matrix/client/v3/rooms/{urllib.parse.quote(matrix_room)}/event/"
                         f"{urllib.parse.quote(event_id)}?{m}", token=olena["token"])
    check(event["sender"] == f"@{E['AGENT_LOCALPART_PREFIX']}{slug}:{SERVER}"
          and "<strong>Вітаю</strong>" in event["content"].get("formatted_body", ""), f"the event: {event}")
    read = served_by(m, "client1", "GET /rooms/{id}/event/{event_id}")
    # Since her sign-in (Synapse keeps a /sync's answer for a while, by its
    # parameters: each try asks for a different timeline limit).
    m = marker()
    deadline = time.time() + 20
    for limit in range(20, 100):
        filt = urllib.parse.quote(json.dumps({"room": {"timeline": {"limit": limit}}}))
        sync = jcall("GET", f"{ORIGIN}/_matrix/client/v3/sync?timeout=0&since={olena['since']}&filter={filt}&{m}",
                     token=olena["token"])
        timeline = sync.get("rooms", {}).get("join", {}).get(matrix_room, {}).get("timeline", {}).get("events", [])
        if any(e.get("event_id") == event_id for e in timeline) or time.time() > deadline:
            break
        time.sleep(0.5)
    check(any(e.get("event_id") == event_id for e in timeline), f"{olena['user']}'s /sync lacks {event_id}")
    synced = served_by(m, "client1", "GET /sync")
    # Synapse's application service calls reached both replicas through the internal port.
    for _ in range(4):
        jcall("POST", f"{ORIGIN}/_matrix/client/v1/appservice/{E['APPSERVICE_ID']}/ping", {},
              token=E["APPSERVICE_AS_TOKEN"])
    app = [l for l in nginx_lines(" /_matrix/app/") if l[0] == E["GATEWAY_INTERNAL_PORT"]]
    replicas = {PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1]) for l in app for a in l[2]}
    check(replicas == {"service1", "service2"}, f"Synapse's /_matrix/app/ calls went to {replicas}")
    kinds = sorted({l[1].split()[1].split("?")[0].split("/")[4] for l in app})  # ping, rooms, transactions
    for _ in range(2):
        jcall("GET", f"{ORIGIN}/.well-known/openid-configuration")
    oidc = [l for l in nginx_lines(" /oidc/") + nginx_lines(" /.well-known/openid-configuration")
            if l[0] == E["HTTPS_PORT"]]
    balanced = {PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1]) for l in oidc for a in l[2]}
    check(balanced == {"service1", "service2"}, f"the OpenID provider's endpoints went to {balanced}")
    admin = [l for l in nginx_lines(" /_synapse/admin/") if l[0] == E["GATEWAY_INTERNAL_PORT"]]
    check(admin and {PROCESS_OF_PORT.get(a.rsplit(":", 1)[-1]) for l in admin for a in l[2]} == {"main"},
          f"the service's admin API calls: {admin[:3]}")
    ok(f"an agent's message through the workers: City Room {room_id} and agent {agent_id} from signed "
       f"webhooks to both replicas, {message_id} sent by the service through the internal port to the client "
       f"worker, written by event_persister1 ({event_id}), read by {olena['user']}: {read}; {synced}")
    ok(f"the internal port spreads Synapse's application service calls ({len(app)}: /_matrix/app/v1/ "
       f"{', '.join(kinds)}) over "
       f"both replicas, and sends the service's admin API calls ({len(admin)}) to the main process; the public "
       f"port spreads the OpenID provider's endpoints ({len(oidc)} requests) over both replicas")


{"compose": cmd_compose, "processes": cmd_processes, "routes": cmd_routes, "password": cmd_password,
 "sso": cmd_sso, "agent": cmd_agent}[sys.argv[1]]()
PY
checks() { REPO="$repo" STATE="$work/state.json" "$py" "$work/checks.py" "$@"; }

# ---- 1. render .env.example with SYNAPSE_WORKERS=on; docker-compose config ------
deploy/new-env.sh "$work/prod.env" 2>/dev/null
set_env "$work/prod.env" RENDERED_DIR "$work/prod"
set_env "$work/prod.env" SYNAPSE_WORKERS on
render "$work/prod.env" && fail "deploy/render.sh accepts SYNAPSE_WORKERS=on without COMPOSE_FILE"
grep -q 'COMPOSE_FILE=docker-compose.yml:docker-compose.workers.yml' "$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh does not say which COMPOSE_FILE SYNAPSE_WORKERS=on needs"; }
set_env "$work/prod.env" COMPOSE_FILE docker-compose.yml:docker-compose.workers.yml
render "$work/prod.env" || { cat "$work/render.log" >&2; fail "deploy/render.sh refuses SYNAPSE_WORKERS=on"; }
leftover="$(grep -rl '\${' "$work/prod" || true)"
[[ -z "$leftover" ]] || fail "\${…} left in $leftover"
cp "$work/prod.env" "$work/bad.env"
set_env "$work/bad.env" SYNAPSE_WORKERS off
render "$work/bad.env" && fail "deploy/render.sh accepts COMPOSE_FILE with docker-compose.workers.yml and SYNAPSE_WORKERS=off"
set_env "$work/bad.env" SYNAPSE_WORKERS maybe
render "$work/bad.env" && fail "deploy/render.sh accepts SYNAPSE_WORKERS=maybe"
ok "deploy/render.sh renders .env.example with SYNAPSE_WORKERS=on ($(find "$work/prod/synapse/workers" -name '*.yaml' | wc -l) worker files, redis.conf, the gateway's workers.map and internal port); refuses it without COMPOSE_FILE naming docker-compose.workers.yml, that COMPOSE_FILE with SYNAPSE_WORKERS=off, and SYNAPSE_WORKERS=maybe"

if ! env -i "PATH=$PATH" "HOME=$work" docker-compose --env-file "$work/prod.env" --project-directory deploy \
    -f deploy/docker-compose.yml -f deploy/docker-compose.workers.yml config >"$work/compose.yml" 2>"$work/compose.err"; then
    cat "$work/compose.err" >&2
    fail "docker-compose config refuses docker-compose.yml with docker-compose.workers.yml"
fi
echo '{"ports": {}, "synapse_logs": {}}' >"$work/state.json"
checks compose "$work/prod.env" "$work/compose.yml"

# ---- 2. the same templates, run on this machine -------------------------------------
declare -A P=()
for name in https http synapse metrics replication client federation sender events redis \
    service1 service2 internal element standin; do
    # Below the ephemeral range (lib.sh's fixed_port): a port picked from it
    # can be taken by an outgoing connection before its server binds it
    # (seen once in CI: "Address already in use" for a replica). Distinct.
    port="$(fixed_port)"
    while [[ " ${P[*]} " == *" $port "* ]]; do port="$(fixed_port)"; done
    P[$name]="$port"
done
mkdir -p "$work/tls" "$work/synapse-data" "$work/element-root" "$work/redis"
chmod 755 "$work/synapse-data"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$work/auth_jwt"

cp "$work/prod.env" "$work/test.env"
while read -r key value; do
    set_env "$work/test.env" "$key" "$value"
done <<EOF
RENDERED_DIR $work/rendered
FEDERATION on
MATRIX_HOST 127.0.0.1
HTTPS_PORT ${P[https]}
HTTP_PORT ${P[http]}
LISTEN_ADDRESS 127.0.0.1
POSTGRES_HOST 127.0.0.1
SYNAPSE_HOST 127.0.0.1
SYNAPSE_PORT ${P[synapse]}
SYNAPSE_METRICS_PORT ${P[metrics]}
SYNAPSE_CONFIG_DIR $work/rendered/synapse
SYNAPSE_DATA_DIR $work/synapse-data
PROVISIONER_HOST 127.0.0.1
PROVISIONER_PORT ${P[service1]}
PROVISIONER_CONFIG_DIR $work/rendered/provisioner
ELEMENT_HOST 127.0.0.1
ELEMENT_PORT ${P[element]}
GATEWAY_IP 127.0.0.1
TLS_DIR $work/tls
TLS_CERTIFICATE $work/tls/cert.pem
TLS_CERTIFICATE_KEY $work/tls/key.pem
ACME_WEBROOT $work/tls
AUTH_LOGIN_URL http://127.0.0.1:${P[standin]}/login
AUTH_PASSWORD_LOGIN_URL http://127.0.0.1:${P[standin]}/api/auth/login
AUTH_JWKS_URL
AUTH_JWT_SECRET $(cat "$work/auth_jwt")
SYNAPSE_REPLICATION_PORT ${P[replication]}
SYNAPSE_CLIENT_WORKER_HOST 127.0.0.1
SYNAPSE_CLIENT_WORKER_PORT ${P[client]}
SYNAPSE_FEDERATION_WORKER_HOST 127.0.0.1
SYNAPSE_FEDERATION_WORKER_PORT ${P[federation]}
SYNAPSE_FEDERATION_SENDER_HOST 127.0.0.1
SYNAPSE_FEDERATION_SENDER_PORT ${P[sender]}
SYNAPSE_EVENTS_WORKER_HOST 127.0.0.1
SYNAPSE_EVENTS_WORKER_PORT ${P[events]}
REDIS_HOST 127.0.0.1
REDIS_PORT ${P[redis]}
PROVISIONER_2_HOST 127.0.0.1
PROVISIONER_2_PORT ${P[service2]}
GATEWAY_INTERNAL_PORT ${P[internal]}
EOF

scripts/pg-cluster.sh start "$work/pg" >/dev/null
pg_port="$(cat "$work/pg/port")"
set_env "$work/test.env" POSTGRES_PORT "$pg_port"
render "$work/test.env" || { cat "$work/render.log" >&2; fail "deploy/render.sh refuses the local layout"; }
PSQL="${PG_BIN:-/usr/lib/postgresql/15/bin}/psql"
psql_super() { "$PSQL" "postgres://postgres@127.0.0.1:$pg_port/postgres" -XtAq -v ON_ERROR_STOP=1 "$@"; }
psql_super -c 'DROP DATABASE provisioner'
psql_super -f "$work/rendered/postgres/init.sql" >/dev/null || fail "PostgreSQL refuses the rendered init.sql"

# What the processes' logs and ports are, for the checks.
cat >"$work/state.json" <<EOF
{"ports": {"main": ${P[synapse]}, "client1": ${P[client]}, "federation_reader1": ${P[federation]},
           "federation_sender1": ${P[sender]}, "event_persister1": ${P[events]},
           "service1": ${P[service1]}, "service2": ${P[service2]}},
 "synapse_logs": {"main": "$work/rendered/synapse/synapse.out", "client1": "$work/logs/client.log",
                  "federation_reader1": "$work/logs/federation-reader.log",
                  "federation_sender1": "$work/logs/federation-sender.log",
                  "event_persister1": "$work/logs/event-persister.log"},
 "nginx_log": "$work/nginx/access.log"}
EOF

# Redis, as compose runs it: the rendered redis.conf.
(cd "$work/redis" && exec redis-server "$work/rendered/redis/redis.conf") >"$work/logs/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
    REDISCLI_AUTH="$(grep '^REDIS_PASSWORD=' "$work/test.env" | cut -d= -f2)" \
        redis-cli -h 127.0.0.1 -p "${P[redis]}" --no-auth-warning ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
ok "Debian's redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') runs the rendered redis.conf (password, nothing saved)"

# The gateway: the nginx image's nginx.conf on a scratch prefix (conf.d/ is
# the rendered nginx/), and a log of which upstream got each request.
mkdir -p "$work/nginx/tmp"
ln -s "$work/rendered/nginx" "$work/nginx/conf.d"
cat >"$work/nginx/nginx.conf" <<'EOF'
daemon off;
worker_processes 1;
pid nginx.pid;
events {
    worker_connections 512;
}
http {
    # The check's own: the port, the request and the upstream it went to.
    log_format routing '$server_port\t$request_method $request_uri\t$upstream_addr\t$status';
    access_log access.log routing;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include conf.d/*.conf;
}
EOF
nginx_args=(-p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log")
nginx -t "${nginx_args[@]}" 2>"$work/nginx/test.log" ||
    { cat "$work/nginx/test.log" >&2; fail "nginx -t refuses the rendered gateway with workers"; }
nginx "${nginx_args[@]}" &
pids+=($!)
ok "nginx accepts the rendered gateway.conf, gateway-workers.conf and gateway.d/workers.map (nginx -t) and runs them"

# Two replicas of the service on the one database, started together; the
# second's BIND as docker-compose.workers.yml sets it.
service_env=("PATH=$PATH")
while IFS= read -r line; do
    [[ "$line" =~ ^[A-Z_]+= ]] && service_env+=("$line")
done <"$work/rendered/provisioner.env"
env -i "${service_env[@]}" "$bin" serve >"$work/logs/service-1.log" 2>&1 &
pids+=($!)
env -i "${service_env[@]}" "BIND=127.0.0.1:${P[service2]}" "$bin" serve >"$work/logs/service-2.log" 2>&1 &
pids+=($!)
cp "$work/rendered/element/config.json" "$work/element-root/config.json"
python3 -m http.server "${P[element]}" --bind 127.0.0.1 --directory "$work/element-root" >/dev/null 2>&1 &
pids+=($!)
standin_password="standin-$RANDOM$RANDOM"
STANDIN_PORT="${P[standin]}" AUTH_JWT_SECRET_FILE="$work/auth_jwt" STANDIN_PASSWORD="$standin_password" \
    python3 scripts/standin-daarion.py 2>"$work/logs/standin.log" &
pids+=($!)
for replica in service1 service2; do
    for _ in $(seq 1 150); do
        env -i "BIND=127.0.0.1:${P[$replica]}" "$bin" healthcheck 2>/dev/null && break
        sleep 0.1
    done
    env -i "BIND=127.0.0.1:${P[$replica]}" "$bin" healthcheck 2>/dev/null ||
        { show_logs; fail "matrix-provisioner ($replica) does not start from the rendered provisioner.env"; }
done
ok "two replicas of matrix-provisioner serve from the rendered provisioner.env on one PostgreSQL database (ports ${P[service1]} and ${P[service2]})"

# Synapse: the main process, then each worker as its own process (they read
# the signing key the main process makes). Synapse trusts the gateway's
# certificate: it fetches the OpenID provider's discovery and tokens from
# https://MATRIX_HOST.
SSL_CERT_FILE="$work/tls/cert.pem" scripts/synapse-ctl.sh start "$work/rendered/synapse" \
    >/dev/null 2>"$work/synapse-ctl.err" ||
    { cat "$work/synapse-ctl.err" >&2; show_logs; fail "Synapse's main process does not start from the rendered homeserver.yaml"; }
declare -A worker_port=([client]=${P[client]} [federation-reader]=${P[federation]}
    [federation-sender]=${P[sender]} [event-persister]=${P[events]})
for worker in client federation-reader federation-sender event-persister; do
    (cd "$work/rendered/synapse" && SSL_CERT_FILE="$work/tls/cert.pem" exec "$py" -m synapse.app.generic_worker \
        -c homeserver.yaml -c "workers/$worker.yaml") </dev/null >"$work/logs/$worker.log" 2>&1 &
    pids+=($!)
done
for worker in client federation-reader federation-sender event-persister; do
    for _ in $(seq 1 600); do
        python3 -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:${worker_port[$worker]}/health', timeout=2).read() != b'OK')" \
            2>/dev/null && break
        sleep 0.2
    done
    python3 -c "import sys, urllib.request as u; u.urlopen('http://127.0.0.1:${worker_port[$worker]}/health', timeout=2)" 2>/dev/null ||
        { tail -n 40 "$work/logs/$worker.log" >&2; show_logs; fail "Synapse's $worker worker does not start"; }
done
ok "Synapse $("$py" -c 'import synapse; print(synapse.__version__)') runs as 5 processes from the rendered files: the main process (homeserver.yaml) and client, federation-reader, federation-sender and event-persister workers (python -m synapse.app.generic_worker -c homeserver.yaml -c workers/<name>.yaml)"

# ---- 3.-5. through the workers --------------------------------------------------
export PSQL OLENA="$work/olena.json" STANDIN_PASSWORD="$standin_password"
for step in processes routes password sso agent; do
    checks "$step" "$work/test.env" || { show_logs; exit 1; }
done
if grep -q 'Error while preloading OIDC provider' "$work/rendered/synapse/synapse.out" "$work/logs/client.log"; then
    show_logs
    fail "Synapse could not load the OpenID provider's discovery through the gateway as it started"
fi

say "deploy/ with SYNAPSE_WORKERS=on passes: docker-compose config, Redis, 5 Synapse processes, 2 replicas and the gateway's routing, sign-in and an agent's message through the workers ($((SECONDS - started)) s)"
