#!/usr/bin/env bash
# check-deploy-monitoring.sh — deploy/prometheus/ checked by the programs that
# read it (Debian's prometheus package: promtool and Prometheus itself):
#
#   1. deploy/render.sh renders .env.example; `promtool check config` reads
#      the rendered prometheus.yml and the alerts.yml beside it; docker-compose
#      (`config`) has a `prometheus` service with a pinned image, those files
#      mounted, its data in a named volume and its port on 127.0.0.1 only;
#   2. `promtool check rules` and `promtool test rules` (alerts.test.yml);
#      every alert has a test that fires it and one where it must not; every
#      matrix_provisioner_* metric and label value the rules name is one the
#      service's code exports;
#   3. a running Synapse (its metrics listener) and service, made to count
#      what the rules watch: an application service transaction Synapse sends
#      (a room made by an agent's puppet), one refused, a refused sign-in, a
#      DAARION person provisioned, the service's admin token logged out under
#      its feet. Prometheus then runs the rendered prometheus.yml (scraping
#      every second instead of 15) against them: both targets up, every rule
#      evaluated without error, the `up` alerts quiet, and every metric the
#      rules name scraped (Synapse's counters that nothing incremented yet:
#      declared in its scrape).
#
# Usage:   scripts/check-deploy-monitoring.sh [ENV_FILE]
#          ENV_FILE: a local layout of deploy/.env whose PostgreSQL, Synapse
#          and service are running (scripts/check-deploy.sh passes its own);
#          without it they are started here from .env.example's templates on
#          127.0.0.1, as check-deploy.sh does.
# Needs:   cargo, python3, PostgreSQL 15 server binaries; Debian's prometheus,
#          docker-compose and gettext-base (installed with apt-get when
#          missing; needs root); Synapse from PyPI (scripts/synapse-venv.sh).
# Network: apt-get and pip only when something is missing; everything else
#          stays on 127.0.0.1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
started=$SECONDS

say() { echo "check-deploy-monitoring: $*"; }
ok() { echo "check-deploy-monitoring: ok   $*"; }
fail() {
    echo "check-deploy-monitoring: FAIL $*" >&2
    exit 1
}

live_env="${1:-}"
if [[ -n "$live_env" ]]; then
    [[ -f "$live_env" ]] || fail "no $live_env"
    live_env="$(cd "$(dirname "$live_env")" && pwd)/$(basename "$live_env")"
fi

# ---- tools -----------------------------------------------------------------
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    # Debian's package starts nothing here (no systemd); recommends: exporters.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
cargo build --locked --quiet --bin matrix-provisioner
bin="$repo/target/debug/matrix-provisioner"
venv="$(scripts/synapse-venv.sh | tail -n 1)"
py="$venv/bin/python" # has yaml

scratch_dir mp-monitoring
pids=()
own_synapse=""
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # A Synapse of ours (not check-deploy.sh's): its pid file is in $work.
    if [[ -n "$own_synapse" ]]; then
        scripts/synapse-ctl.sh stop "$own_synapse" >/dev/null 2>&1 || true
    fi
    stop_scratch
}
trap stop_all EXIT

# set_env FILE KEY VALUE: sets KEY's value in an env file (the key must be there).
set_env() {
    awk -v k="$2" -v v="$3" '
        index($0, k "=") == 1 { print k "=" v; found = 1; next }
        { print }
        END { if (!found) exit 3 }' "$1" >"$1.tmp" || fail "set_env: no $2 in $1"
    mv "$1.tmp" "$1"
}

cat >"$work/checks.py" <<'PY'
import calendar, glob, json, os, re, subprocess, sys, time
import urllib.parse

import yaml

REPO = os.environ["REPO"]
PROM = os.path.join(REPO, "deploy", "prometheus")
sys.path.insert(0, os.path.join(REPO, "scripts"))
from deploy_checks import Checks, load_env, signed

C = Checks("check-deploy-monitoring")
ok, fail, check, call, jcall, until = C.ok, C.fail, C.check, C.call, C.jcall, C.until


def rules():
    return [r for g in yaml.safe_load(open(os.path.join(PROM, "alerts.yml")))["groups"] for r in g["rules"]]


def metric_names():
    """The metric names the rules' expressions use (`up` aside)."""
    names = set()
    for r in rules():
        names |= set(re.findall(r"\b((?:matrix_provisioner|synapse)_[a-z0-9_]+)\b", r["expr"]))
    return names


def cmd_compose():
    E = load_env(sys.argv[2])
    s = yaml.safe_load(open(sys.argv[3], encoding="utf8"))["services"]["prometheus"]
    image = s["image"]
    check(image == E["PROMETHEUS_IMAGE"] and ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"),
          f"prometheus: image {image!r} is not PROMETHEUS_IMAGE with a pinned tag")
    command = s.get("command") or []
    check("--config.file=/etc/prometheus/prometheus.yml" in command
          and "--storage.tsdb.path=/prometheus" in command
          and f"--storage.tsdb.retention.time={E['PROMETHEUS_RETENTION']}" in command,
          f"prometheus: command {command}")
    mounts = {}
    for v in s.get("volumes", []):
        src, dst = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
        mounts[dst] = src
    rendered = os.path.join(E["RENDERED_DIR"], "prometheus")
    check(os.path.normpath(mounts.get("/etc/prometheus", "")) == os.path.normpath(rendered),
          f"prometheus: /etc/prometheus is {mounts.get('/etc/prometheus')}, not {rendered}")
    for f in ("prometheus.yml", "alerts.yml"):
        check(os.path.isfile(os.path.join(rendered, f)), f"prometheus: no {f} in the mounted {rendered}")
    check(open(os.path.join(rendered, "alerts.yml")).read() == open(os.path.join(PROM, "alerts.yml")).read(),
          "the rendered alerts.yml is not deploy/prometheus/alerts.yml")
    check(mounts.get("/prometheus") == "prometheus-data", f"prometheus: no named volume at /prometheus: {mounts}")
    ports = [p if isinstance(p, str) else f"{p.get('host_ip')}:{p.get('published')}:{p.get('target')}/{p.get('protocol', 'tcp')}"
             for p in s.get("ports", [])]
    check(ports == [f"127.0.0.1:{E['PROMETHEUS_PORT']}:9090/tcp"], f"prometheus: ports {ports}, not on 127.0.0.1 only")
    check("matrix" in (s.get("networks") or {}), "prometheus is not on the matrix network")
    config = yaml.safe_load(open(os.path.join(rendered, "prometheus.yml")))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    want = {"synapse": ("/_synapse/metrics", f"{E['SYNAPSE_HOST']}:{E['SYNAPSE_METRICS_PORT']}"),
            "matrix-provisioner": ("/metrics", f"{E['PROVISIONER_HOST']}:{E['PROVISIONER_PORT']}")}
    for job, (path, target) in want.items():
        got = jobs.get(job, {})
        check(got.get("metrics_path") == path and got["static_configs"][0]["targets"] == [target],
              f"prometheus.yml: job {job} does not scrape {target}{path}")
    ok(f"docker-compose config: prometheus ({image}) with the rendered prometheus.yml and alerts.yml at "
       f"/etc/prometheus, its data in the prometheus-data volume, port 127.0.0.1:{E['PROMETHEUS_PORT']} only, "
       f"retention {E['PROMETHEUS_RETENTION']}; jobs synapse ({want['synapse'][1]}{want['synapse'][0]}) and "
       f"matrix-provisioner ({want['matrix-provisioner'][1]}/metrics)")


def cmd_rules():
    alerts = [r["alert"] for r in rules() if "alert" in r]
    tests = yaml.safe_load(open(os.path.join(PROM, "alerts.test.yml")))["tests"]
    fires, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    check(not set(alerts) - fires, f"alerts.test.yml fires no {sorted(set(alerts) - fires)}")
    check(not set(alerts) - quiet, f"alerts.test.yml has no series where {sorted(set(alerts) - quiet)} must not fire")
    for r in rules():
        check(r.get("labels", {}).get("severity") in ("critical", "warning"), f"{r.get('alert')}: no severity")
        check(r.get("annotations", {}).get("summary") and r["annotations"].get("description"),
              f"{r.get('alert')}: no summary or description")
    # What the service's code exports: its metric names and label values.
    source = ""
    for path in glob.glob(os.path.join(REPO, "src", "**", "*.rs"), recursive=True):
        source += open(path, encoding="utf8").read()
    literals = set(re.findall(r'"([a-z_]+)"', source))
    exported = set(re.findall(r'"(matrix_provisioner_[a-z_]+)"', source))
    names = metric_names()
    ours = {n for n in names if n.startswith("matrix_provisioner_")}
    check(ours <= exported, f"the rules name metrics the service does not export: {sorted(ours - exported)}")
    values = 0
    for r in rules():
        for selector in re.findall(r"matrix_provisioner_[a-z_]+\{([^}]*)\}", r["expr"]):
            for label, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', selector):
                for v in value.split("|"):
                    check(v in literals, f"{r['alert']}: {label}=\"{v}\" is no value the service's code has")
                    values += 1
    ok(f"every alert ({len(alerts)}) fires in alerts.test.yml and has series where it must not; each has a "
       f"severity, summary and description; the {len(ours)} matrix_provisioner_* metrics and {values} label "
       "values the rules name are the service's")


def cmd_exercise():
    """Makes the running service and Synapse count what the rules watch."""
    E = load_env(sys.argv[2])
    service = f"http://127.0.0.1:{E['PROVISIONER_PORT']}"
    synapse = f"http://127.0.0.1:{E['SYNAPSE_PORT']}"
    server = E["SYNAPSE_SERVER_NAME"]
    tag = f"{int(time.time())}{os.getpid()}"
    admin = E["ADMIN_API_TOKEN"]

    def scrape():
        status, _, data = call("GET", service + "/metrics")
        check(status == 200, f"GET /metrics: {status}")
        return data.decode()

    def sample(text, series):
        """The value of `series` (name{labels}, labels in any order) in `text`; 0 when absent."""
        name, _, labels = series.partition("{")
        want = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        for line in text.splitlines():
            m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == want:
                return float(m.group(3))
        return 0.0

    # Synapse -> the service: a room made by an agent's puppet (the
    # application service's namespace) is a transaction Synapse sends.
    as_token = E["APPSERVICE_AS_TOKEN"]
    puppet = f"@{E['AGENT_LOCALPART_PREFIX']}monitoring-{tag}:{server}"
    jcall("POST", synapse + "/_matrix/client/v3/register",
          {"type": "m.login.application_service", "username": puppet[1:].split(":")[0]}, token=as_token)
    before = sample(scrape(), 'matrix_provisioner_appservice_transactions_total{outcome="applied"}')
    jcall("POST", synapse + "/_matrix/client/v3/createRoom?user_id=" + urllib.parse.quote(puppet),
          {"name": "monitoring check"}, token=as_token)
    until(lambda: sample(scrape(), 'matrix_provisioner_appservice_transactions_total{outcome="applied"}') > before,
          "Synapse sent no transaction to the service for the puppet's new room", 30)
    # A transaction with a wrong hs_token: refused.
    status, _, _ = call("PUT", service + f"/_matrix/app/v1/transactions/monitoring-{tag}", {"events": []},
                        token="not-the-hs-token")
    check(status == 403, f"a transaction with a wrong hs_token: {status}, expected 403")
    # Sign-ins refused: a DAARION token that is none, an authorization request without parameters.
    status, _, _ = call("POST", service + "/v1/sso/login-token", {}, token="not-a-daarion-token")
    check(status == 401, f"POST /v1/sso/login-token with a bad token: {status}, expected 401")
    status, _, _ = call("GET", service + "/oidc/authorize")
    check(status == 400, f"GET /oidc/authorize without parameters: {status}, expected 400")

    # A DAARION person, provisioned by a job (which needs the admin token).
    def person(user_id):
        body = json.dumps({"id": f"evt_{user_id}", "type": "user.registered",
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "data": {"user_id": user_id, "display_name": f"Monitoring {user_id[-7:]}"}}).encode()
        secret = E["AUTH_WEBHOOK_SECRET"].split(",")[0]
        jcall("POST", service + "/v1/webhooks/auth", body, want=202, headers=signed(secret, body))
        return until(lambda: (lambda p: p if p.get("state") == "provisioned" else None)(
                         jcall("GET", service + f"/v1/users/{user_id}", token=admin)),
                     f"{user_id} is not provisioned", 30)

    first = person(f"u_mon{tag}a")
    # Synapse forgets the admin token the service keeps in its database (as
    # when someone logs the account's sessions out): the next admin call is
    # refused, counted, and the service logs in again.
    psql = [os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "psql"),
            f"postgres://postgres@127.0.0.1:{E['POSTGRES_PORT']}/{E['POSTGRES_PROVISIONER_DB']}", "-XtAq",
            "-c", "SELECT token FROM service_tokens WHERE name = 'synapse_admin'"]
    token = subprocess.run(psql, check=True, capture_output=True, text=True).stdout.strip()
    check(token, "the service keeps no admin token in its database")
    jcall("POST", synapse + "/_matrix/client/v3/logout", {}, token=token)
    refused = 'matrix_provisioner_synapse_admin_token_refusals_total{reason="unknown_token"}'
    before = sample(scrape(), refused)
    second = person(f"u_mon{tag}b")
    text = scrape()
    check(sample(text, refused) > before, f"{refused} did not count Synapse refusing the logged-out token")
    for series in ('matrix_provisioner_appservice_transactions_total{outcome="refused"}',
                   'matrix_provisioner_token_exchanges_total{kind="login_token",outcome="invalid_token"}',
                   'matrix_provisioner_sign_ins_total{step="authorize",outcome="bad_request"}'):
        check(sample(text, series) >= 1, f"/metrics has no {series}")
    ok(f"made the service count: a transaction from Synapse (a room of {puppet}) and one refused, a refused "
       f"DAARION token and authorization request, {first['matrix_user_id']} and {second['matrix_user_id']} "
       "provisioned, its admin token logged out under its feet (refused once, then a new one)")


def cmd_prometheus():
    """Prometheus (running the rendered prometheus.yml) against what runs."""
    E = load_env(sys.argv[2])
    base = sys.argv[3]
    synapse_metrics = f"http://127.0.0.1:{E['SYNAPSE_METRICS_PORT']}/_synapse/metrics"

    def api(path):
        status, _, data = call("GET", base + path)
        return json.loads(data) if status == 200 else None

    def targets_up():
        got = api("/api/v1/targets")
        if not got:
            return None
        active = {t["labels"]["job"]: t for t in got["data"]["activeTargets"]}
        return active if all(active.get(j, {}).get("health") == "up"
                             for j in ("synapse", "matrix-provisioner")) else None

    active = until(targets_up, "Prometheus does not scrape both targets (GET /api/v1/targets)", 30)
    scraped = time.time()

    def rules_evaluated():
        got = api("/api/v1/rules")
        if not got:
            return None
        rs = [r for g in got["data"]["groups"] for r in g["rules"]]
        # Evaluated (to the second) after the targets' first scrapes.
        done = all(r.get("lastEvaluation", "").startswith("2") and
                   calendar.timegm(time.strptime(r["lastEvaluation"][:19], "%Y-%m-%dT%H:%M:%S")) >= scraped + 1
                   for r in rs)
        return rs if done else None

    evaluated = until(rules_evaluated, "Prometheus has not evaluated every rule since the targets came up", 30)
    broken = [(r["name"], r.get("lastError")) for r in evaluated if r.get("health") != "ok"]
    check(not broken, f"rules that fail to evaluate: {broken}")
    check(len(evaluated) == len(rules()), f"Prometheus loaded {len(evaluated)} rules, alerts.yml has {len(rules())}")
    noisy = [r["name"] for r in evaluated
             if r["name"] in ("MatrixProvisionerDown", "SynapseDown", "MatrixProvisionerCannotReachSynapse")
             and r.get("state") != "inactive"]
    check(not noisy, f"with both targets up, these are not inactive: {noisy}")

    got = api("/api/v1/query?" + urllib.parse.urlencode(
        {"query": 'group by (__name__, job) ({__name__=~"matrix_provisioner_.+|synapse_.+"})'}))
    stored = {(m["metric"]["__name__"], m["metric"].get("job")) for m in got["data"]["result"]}
    status, _, data = call("GET", synapse_metrics)
    check(status == 200, f"{synapse_metrics}: {status}")
    declared = set(re.findall(r"^# TYPE (\S+) ", data.decode(), re.M))
    found, only_declared, absent = [], [], []
    for name in sorted(metric_names()):
        job = "matrix-provisioner" if name.startswith("matrix_provisioner_") else "synapse"
        if (name, job) in stored:
            found.append(name)
        elif job == "synapse" and name in declared:
            only_declared.append(name)
        else:
            absent.append(name)
    check(not absent, f"metrics the rules name that Prometheus did not scrape: {absent}")
    ok(f"Prometheus {sys.argv[4]} runs the rendered prometheus.yml: targets synapse "
       f"({active['synapse']['scrapeUrl']}) and matrix-provisioner ({active['matrix-provisioner']['scrapeUrl']}) "
       f"up, {len(evaluated)} rules evaluated without error, the up alerts inactive; the {len(found)} metrics "
       f"the rules name scraped from them ({', '.join(found)})"
       + (f"; declared by Synapse, none counted yet: {', '.join(only_declared)}" if only_declared else ""))


{"compose": cmd_compose, "rules": cmd_rules, "exercise": cmd_exercise,
 "prometheus": cmd_prometheus}[sys.argv[1]]()
PY
checks() { REPO="$repo" "$py" "$work/checks.py" "$@"; }

# ---- 1. rendered from .env.example ---------------------------------------------
deploy/new-env.sh "$work/prod.env" 2>/dev/null
set_env "$work/prod.env" RENDERED_DIR "$work/prod"
MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/prod.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses .env.example with fresh secrets"; }
promtool check config "$work/prod/prometheus/prometheus.yml" >"$work/promtool.log" 2>&1 ||
    { cat "$work/promtool.log" >&2; fail "promtool check config refuses the rendered prometheus.yml"; }
ok "$(promtool --version 2>&1 | head -n 1 | cut -d' ' -f1-3) check config: the rendered prometheus.yml and the alerts.yml beside it"
env -i "PATH=$PATH" "HOME=$work" docker-compose --env-file "$work/prod.env" \
    --project-directory deploy -f deploy/docker-compose.yml config >"$work/compose.yml" 2>"$work/compose.err" ||
    { cat "$work/compose.err" >&2; fail "docker-compose config refuses deploy/docker-compose.yml"; }
checks compose "$work/prod.env" "$work/compose.yml"

# ---- 2. the rules ------------------------------------------------------------------
promtool check rules deploy/prometheus/alerts.yml >"$work/promtool.log" 2>&1 ||
    { cat "$work/promtool.log" >&2; fail "promtool check rules refuses deploy/prometheus/alerts.yml"; }
ok "promtool check rules: $(grep -o '[0-9]* rules found' "$work/promtool.log")"
(cd deploy/prometheus && promtool test rules alerts.test.yml) >"$work/promtool.log" 2>&1 ||
    { cat "$work/promtool.log" >&2; fail "promtool test rules: deploy/prometheus/alerts.test.yml fails"; }
ok "promtool test rules: deploy/prometheus/alerts.test.yml passes ($(grep -c '^  - interval:' deploy/prometheus/alerts.test.yml) groups of series)"
checks rules

# ---- 3. against a running Synapse and service --------------------------------------
if [[ -z "$live_env" ]]; then
    # The local layout of check-deploy.sh: every service on 127.0.0.1.
    live_env="$work/test.env"
    cp "$work/prod.env" "$live_env"
    mkdir -p "$work/synapse-data"
    chmod 755 "$work/synapse-data"
    while read -r key value; do
        set_env "$live_env" "$key" "$value"
    done <<EOF
RENDERED_DIR $work/rendered
MATRIX_HOST 127.0.0.1
HTTPS_PORT $(free_port)
LISTEN_ADDRESS 127.0.0.1
POSTGRES_HOST 127.0.0.1
SYNAPSE_HOST 127.0.0.1
SYNAPSE_PORT $(free_port)
SYNAPSE_METRICS_PORT $(free_port)
SYNAPSE_CONFIG_DIR $work/rendered/synapse
SYNAPSE_DATA_DIR $work/synapse-data
PROVISIONER_HOST 127.0.0.1
PROVISIONER_PORT $(free_port)
PROVISIONER_CONFIG_DIR $work/rendered/provisioner
GATEWAY_IP 127.0.0.1
AUTH_PASSWORD_LOGIN_URL http://127.0.0.1:9/api/auth/login
AUTH_JWKS_URL
AUTH_JWT_SECRET $(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
EOF
    scripts/pg-cluster.sh start "$work/pg" >/dev/null
    set_env "$live_env" POSTGRES_PORT "$(cat "$work/pg/port")"
    MATRIX_PROVISIONER="$bin" deploy/render.sh "$live_env" >/dev/null 2>"$work/render.log" ||
        { cat "$work/render.log" >&2; fail "deploy/render.sh refuses the local layout"; }
    psql_super() { "${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" "postgres://postgres@127.0.0.1:$(cat "$work/pg/port")/postgres" -XtAq -v ON_ERROR_STOP=1 "$@"; }
    psql_super -c 'DROP DATABASE provisioner'
    psql_super -f "$work/rendered/postgres/init.sql" >/dev/null
    service_env=("PATH=$PATH")
    while IFS= read -r line; do
        [[ "$line" =~ ^[A-Z_]+= ]] && service_env+=("$line")
    done <"$work/rendered/provisioner.env"
    env -i "${service_env[@]}" "$bin" serve >"$work/service.log" 2>&1 &
    pids+=($!)
    own_synapse="$work/rendered/synapse"
    scripts/synapse-ctl.sh start "$own_synapse" >/dev/null 2>"$work/synapse-ctl.err" ||
        { cat "$work/synapse-ctl.err" >&2; fail "Synapse does not start from the rendered homeserver.yaml"; }
    port="$(grep '^PROVISIONER_PORT=' "$live_env" | cut -d= -f2)"
    for _ in $(seq 1 100); do
        env -i "BIND=127.0.0.1:$port" "$bin" healthcheck 2>/dev/null && break
        sleep 0.1
    done
    env -i "BIND=127.0.0.1:$port" "$bin" healthcheck 2>/dev/null ||
        { tail -n 20 "$work/service.log" >&2; fail "matrix-provisioner does not start from the rendered provisioner.env"; }
    ok "started PostgreSQL, Synapse (metrics listener on SYNAPSE_METRICS_PORT) and the service from the templates rendered with a local layout"
else
    say "using the Synapse and service of $live_env"
fi
checks exercise "$live_env" || { [[ -f "$work/service.log" ]] && tail -n 20 "$work/service.log" >&2; exit 1; }

# Prometheus runs the live layout's rendered prometheus.yml (targets on
# 127.0.0.1), scraping and evaluating every second instead of every 15.
rendered="$(grep '^RENDERED_DIR=' "$live_env" | cut -d= -f2)"
mkdir -p "$work/prometheus"
cp "$rendered/prometheus/prometheus.yml" "$rendered/prometheus/alerts.yml" "$work/prometheus/"
sed -i -E 's/^(  (scrape_interval|scrape_timeout|evaluation_interval):) .*/\1 1s/' "$work/prometheus/prometheus.yml"
[[ "$(grep -c ': 1s$' "$work/prometheus/prometheus.yml")" == 3 ]] || fail "cannot set the intervals of the rendered prometheus.yml"
prometheus_port="$(free_port)"
prometheus --config.file="$work/prometheus/prometheus.yml" --storage.tsdb.path="$work/prometheus/data" \
    --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
checks prometheus "$live_env" "http://127.0.0.1:$prometheus_port" \
    "$(prometheus --version 2>&1 | head -n 1 | cut -d' ' -f3)" || { tail -n 20 "$work/prometheus.log" >&2; exit 1; }

say "deploy/prometheus/ passes: promtool check config, check rules, test rules, Prometheus against a real Synapse and service ($((SECONDS - started)) s)"
