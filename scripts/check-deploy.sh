#!/usr/bin/env bash
# check-deploy.sh — deploy/ checked by the programs that read its files, on
# this machine (no Docker engine):
#
#   1. deploy/render.sh renders .env.example (with fresh secrets) and
#      refuses a setting the files could not hold;
#   2. Element's config.json has what Element reads, agreeing with Synapse's;
#   3. docker-compose (Debian's, `config`) accepts the compose file, whose
#      images, build context, Dockerfile, volumes and mounted files exist;
#   4. the same templates rendered with a local layout (everything on
#      127.0.0.1, paths in a scratch directory, a self-signed certificate):
#      PostgreSQL runs the rendered init.sql; Synapse starts on it from the
#      rendered homeserver.yaml with the OpenID provider and the application
#      service loaded; the service runs from the rendered environment and
#      reaches a nats-server -js (Debian's) as DAARION's NATS over TLS with a
#      user and password (NATS_URL and the rest of .env.example); nginx
#      loads the rendered gateway config in front of them (and a stand-in of
#      Element's container serving the rendered config.json), and every
#      path answers through the gateway as deploy/README.md says: Matrix,
#      the /.well-known answers, the sign-in paths, Element, uploads up to
#      AVATAR_MAX_BYTES, and 404 for the webhooks, the operators' paths, the
#      application service and the password module's /v1/sso/password while
#      they work directly;
#   5. "Continue with DAARION" in headless Chromium from Synapse's login page
#      at the gateway's origin (https), through the service and the stand-in
#      DAARION page (scripts/standin-daarion.py), back signed in; then, as
#      .env.example deploys it (AUTH_LOGIN_URL empty), on the service's own
#      sign-in page (email and password, the stand-in's login API); password
#      sign-in as Element X does it (m.login.password through the gateway,
#      Synapse's password module, the service, the stand-in's login API), the
#      adoption of an account DAARION Auth made, and deploy/README.md's admin
#      API calls that end what DAARION Auth left on it;
#   6. the gateway's switches: GATEWAY_EXPOSE_WEBHOOKS and GATEWAY_ADMIN_ALLOW
#      open what they say, re-rendered and reloaded into the running nginx.
#   7. FEDERATION, on and off, with two homeservers rendered from deploy/
#      federating through their gateways (scripts/check-deploy-federation.sh).
#   8. calls: scripts/check-deploy-turn.sh (coturn and Synapse's TURN settings).
#   9. monitoring: scripts/check-deploy-monitoring.sh with the Synapse and
#      service running here (promtool, and Prometheus scraping them).
#
# Usage:   scripts/check-deploy.sh
# Needs:   cargo, python3, PostgreSQL 15 server binaries, openssl; Debian's
#          nginx, docker-compose, gettext-base, chromium, chromium-driver and nats-server
#          (installed here with apt-get when missing; needs root); selenium
#          from PyPI (${MP_CACHE:-.cache}/browser-venv), Synapse from PyPI
#          (scripts/synapse-venv.sh).
# Network: apt-get and pip only when something is missing; everything else
#          stays on 127.0.0.1.
set -euo pipefail

SELENIUM_VERSION=4.38.0 # as scripts/check-sign-in.sh

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cache="${MP_CACHE:-$repo/.cache}"
mkdir -p "$cache"

say() { echo "check-deploy: $*"; }
ok() { echo "check-deploy: ok   $*"; }
fail() {
    echo "check-deploy: FAIL $*" >&2
    exit 1
}

# ---- tools -----------------------------------------------------------------
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian packages)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
browser_venv="$cache/browser-venv"
exec 9>"$cache/.browser-venv.lock"
flock 9
if ! "$browser_venv/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
    say "installing selenium $SELENIUM_VERSION into $browser_venv" >&2
    [[ -x "$browser_venv/bin/python" ]] || python3 -m venv "$browser_venv"
    "$browser_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "selenium==$SELENIUM_VERSION" >&2
fi
flock -u 9

cargo build --locked --quiet --bin matrix-provisioner
bin="$repo/target/debug/matrix-provisioner"
venv="$(scripts/synapse-venv.sh | tail -n 1)"
py="$venv/bin/python" # has yaml and cryptography

scratch_dir mp-deploy
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
    if [[ -f "$work/rendered/synapse/synapse.out" ]]; then
        echo "---- Synapse's warnings and errors ----" >&2
        grep -E -A8 ' - (ERROR|CRITICAL) - ' "$work/rendered/synapse/synapse.out" | tail -n 40 >&2 || true
    fi
    for f in "$work/service.log" "$work/nginx/error.log" "$work/standin.log"; do
        [[ -f "$f" ]] || continue
        echo "---- tail of $f ----" >&2
        tail -n 15 "$f" >&2
    done
}

# set_env FILE KEY VALUE: sets KEY's value in an env file (the key must be there).
set_env() {
    awk -v k="$2" -v v="$3" '
        index($0, k "=") == 1 { print k "=" v; found = 1; next }
        { print }
        END { if (!found) exit 3 }' "$1" >"$1.tmp" || fail "set_env: no $2 in $1"
    mv "$1.tmp" "$1"
}

# The checks written in Python (HTTP, JSON, YAML), one subcommand each.
cat >"$work/checks.py" <<'PY'
import base64, hashlib, json, os, sys, time
import urllib.parse

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from deploy_checks import Checks, load_env, registration_mac

E = load_env(sys.argv[2])
REPO = os.environ["REPO"]
deploy = os.path.join(REPO, "deploy")
rendered = E["RENDERED_DIR"]
if not os.path.isabs(rendered):
    rendered = os.path.join(deploy, rendered)
port = E["HTTPS_PORT"]
ORIGIN = f"https://{E['MATRIX_HOST']}" + ("" if port == "443" else f":{port}")
SERVER = E["SYNAPSE_SERVER_NAME"]
C = Checks("check-deploy", cafile=E["TLS_CERTIFICATE"])
ok, fail, check, call, jcall = C.ok, C.fail, C.check, C.call, C.jcall


def service(path):
    return f"http://127.0.0.1:{E['PROVISIONER_PORT']}{path}"


def synapse(path):
    return f"http://127.0.0.1:{E['SYNAPSE_PORT']}{path}"


def admin_token():
    """A fresh Synapse admin through shared-secret registration."""
    nonce = jcall("GET", synapse("/_synapse/admin/v1/register"))["nonce"]
    user, password = f"deploycheck{int(time.time() * 1000)}", "deploy-check-password"
    return jcall("POST", synapse("/_synapse/admin/v1/register"), {
        "nonce": nonce, "username": user, "password": password, "admin": True,
        "mac": registration_mac(E["SYNAPSE_REGISTRATION_SECRET"], nonce, user, password, True)})["access_token"]


def closed(method, path, direct_status, token=None, body=None, direct=None):
    """404 from nginx (not the service's JSON) at the gateway; direct_status directly."""
    status, _, data = call(method, ORIGIN + path, body, token)
    check(status == 404 and b'"error"' not in data,
          f"{method} {path} through the gateway: {status} {data[:200]!r}, expected nginx's 404")
    url = (direct or service)(path)
    status, _, data = call(method, url, body, token)
    check(status == direct_status, f"{method} {url} directly: {status} {data[:200]!r}, expected {direct_status}")
    return f"{path} {direct_status}"


def cmd_element():
    path = os.path.join(rendered, "element", "config.json")
    c = json.load(open(path, encoding="utf8"))
    # The keys Element Web reads (its IConfigOptions); anything else is a typo.
    known = {
        "default_server_config", "default_server_name", "default_hs_url", "default_is_url",
        "disable_custom_urls", "disable_guests", "disable_3pid_login",
        "disable_login_language_selector", "brand", "branding", "embedded_pages",
        "sso_redirect_options", "logout_redirect_url", "room_directory",
        "default_country_code", "setting_defaults", "show_labs_settings", "features",
        "default_theme", "default_federate", "permalink_prefix", "integrations_ui_url",
        "integrations_rest_url", "integrations_widgets_urls", "bug_report_endpoint_url",
        "jitsi", "element_call", "map_style_url", "mobile_guide_toast", "help_url",
        "terms_and_conditions_links", "privacy_policy_url", "voip", "welcome_user_id",
        "oidc_static_clients", "default_device_display_name", "desktop_builds",
        "mobile_builds", "custom_translations_url", "report_event",
        "enable_presence_by_hs_url", "analytics_owner", "posthog", "sentry",
    }
    check(not set(c) - known, f"{path}: keys Element does not read: {sorted(set(c) - known)}")
    hs = c.get("default_server_config", {}).get("m.homeserver", {})
    check(hs.get("base_url") == ORIGIN, f"{path}: m.homeserver base_url {hs.get('base_url')!r}, expected {ORIGIN}")
    check(hs.get("server_name") == SERVER, f"{path}: m.homeserver server_name {hs.get('server_name')!r}")
    check(c.get("sso_redirect_options", {}).get("immediate") is True,
          f"{path}: sso_redirect_options.immediate is not true (straight to DAARION)")
    check(c.get("logout_redirect_url") == E["DAARION_LOGOUT_URL"], f"{path}: logout_redirect_url")
    check(c.get("brand") == E["ELEMENT_BRAND"], f"{path}: brand")
    for flag in ("disable_custom_urls", "disable_guests"):
        check(c.get(flag) is True, f"{path}: {flag} is not true")
    check(c.get("room_directory", {}).get("servers") == [SERVER], f"{path}: room_directory.servers")
    import yaml
    hs_yaml = yaml.safe_load(open(os.path.join(rendered, "synapse", "homeserver.yaml")))
    element_url = ORIGIN + "/element/"
    check(element_url in hs_yaml["sso"]["client_whitelist"],
          f"Synapse's sso.client_whitelist lacks Element's {element_url}")
    check(hs_yaml["public_baseurl"] == ORIGIN + "/", "Synapse's public_baseurl is not Element's base_url")
    ok(f"Element's config.json: homeserver {ORIGIN} ({SERVER}), SSO straight to DAARION, "
       f"sign-out to {c['logout_redirect_url']}, brand {c['brand']!r}, custom URLs and guests off; "
       f"Synapse lets {element_url} back in without a page")


def environment(service):
    """A service's environment as `config` resolved it (env_file included)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    env = {k: ("" if v is None else str(v)) for k, v in env.items()}
    files = service.get("env_file") or []
    for f in [files] if isinstance(files, str) else files:
        path = f["path"] if isinstance(f, dict) else f
        for k, v in load_env(path).items():
            env.setdefault(k, v)
    return env


def cmd_compose():
    import yaml
    out = yaml.safe_load(open(sys.argv[3], encoding="utf8"))
    services = out["services"]
    check(set(services) == {"postgres", "synapse", "provisioner", "element", "gateway", "coturn", "prometheus"},
          f"services: {sorted(services)}")
    for name, s in services.items():
        image = s.get("image", "")
        last = image.rsplit("/", 1)[-1]
        check(":" in last and not last.endswith(":latest"), f"{name}: image {image!r} has no pinned tag")
    synapse_version = next(l.split("=", 1)[1].strip() for l in open(os.path.join(REPO, "scripts/synapse-venv.sh"))
                           if l.startswith("SYNAPSE_VERSION="))
    synapse_base = ((services["synapse"].get("build") or {}).get("args") or {}).get("SYNAPSE_IMAGE", "")
    check(synapse_base == E["SYNAPSE_IMAGE"] and synapse_base.endswith(":v" + synapse_version),
          f"Synapse is not built from SYNAPSE_IMAGE of the version the checks run ({synapse_version}): {synapse_base!r}")
    pg_major = next(l.split("/postgresql/")[1].split("/")[0] for l in open(os.path.join(REPO, "scripts/pg-cluster.sh"))
                    if l.startswith('PG_BIN="${PG_BIN:-'))
    check(services["postgres"]["image"].split(":")[1].startswith(pg_major),
          f"PostgreSQL image {services['postgres']['image']} is not the major version the checks run ({pg_major})")

    ignored = [l.strip().rstrip("/") for l in open(os.path.join(REPO, ".dockerignore"))
               if l.strip() and not l.startswith("#")] if os.path.exists(os.path.join(REPO, ".dockerignore")) else []

    def dockerfile_of(name):
        """The service's Dockerfile (its build context must be the repository), its text."""
        build = services[name]["build"]
        context = build["context"] if isinstance(build, dict) else build
        dockerfile = os.path.join(context, (build.get("dockerfile") if isinstance(build, dict) else None) or "Dockerfile")
        check(os.path.isdir(context) and os.path.samefile(context, REPO), f"{name} build context {context} is not the repository")
        check(os.path.isfile(dockerfile), f"no {dockerfile}")
        text = open(dockerfile).read()
        # What it copies from the context is there and not left out by .dockerignore.
        for line in text.splitlines():
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for src in words[1:-1]:
                check(os.path.exists(os.path.join(REPO, src)), f"{dockerfile}: COPY {src}: not in the repository")
                parts = src.strip("/").split("/")
                for i in range(1, len(parts) + 1):
                    check("/".join(parts[:i]) not in ignored, f"{dockerfile}: COPY {src}: .dockerignore leaves it out")
        return dockerfile, text

    dockerfile, text = dockerfile_of("provisioner")
    check('ENTRYPOINT ["matrix-provisioner"]' in text and "HEALTHCHECK" in text,
          f"{dockerfile}: no matrix-provisioner ENTRYPOINT or HEALTHCHECK (compose waits for it healthy)")
    synapse_dockerfile, text = dockerfile_of("synapse")
    check("ARG SYNAPSE_IMAGE" in text and "FROM ${SYNAPSE_IMAGE}" in text and "pip install" in text
          and "synapse-module" in text,
          f"{synapse_dockerfile}: not FROM ${{SYNAPSE_IMAGE}} with synapse-module/ pip-installed")

    named = set(out.get("volumes") or {})

    def mounts(s):
        for v in s.get("volumes", []):
            if isinstance(v, dict):
                yield v.get("type"), v.get("source"), v["target"]
            else:
                parts = v.split(":")
                src, dst = parts[0], parts[1]
                yield ("bind" if src.startswith(("/", ".")) else "volume"), src, dst

    tls_dir = E["TLS_DIR"]
    host_of = {}
    outside = []
    for name, s in services.items():
        for kind, src, dst in mounts(s):
            if kind == "volume":
                check(src in named, f"{name}: volume {src} is not declared")
                continue
            if not src.startswith("/"):
                src = os.path.normpath(os.path.join(deploy, src))
            host_of[(name, dst)] = src
            if src == tls_dir or src.startswith(tls_dir + "/"):
                outside.append(src)  # the certificates live on the server
                continue
            check(os.path.exists(src), f"{name}: mounted {src} does not exist (after rendering)")
    for name, target in (("postgres", "/var/lib/postgresql/data"), ("synapse", E["SYNAPSE_DATA_DIR"]),
                         ("provisioner", "/var/lib/matrix-provisioner")):
        check(any(k == "volume" and d == target for k, _, d in mounts(services[name])),
              f"{name}: no named volume at {target}")
    config_path = environment(services["synapse"])["SYNAPSE_CONFIG_PATH"]
    config_dir = E["SYNAPSE_CONFIG_DIR"]
    check(os.path.dirname(config_path) == config_dir, f"SYNAPSE_CONFIG_PATH {config_path} is not in {config_dir}")
    for rel in ("homeserver.yaml", "log.config", "appservice.yaml", "password-module-secret"):
        check(os.path.isfile(os.path.join(host_of[("synapse", config_dir)], rel)), f"Synapse's {rel} is not mounted")
    # The password module: loaded, asking the service on the network with the service's secret.
    hs_yaml = yaml.safe_load(open(os.path.join(host_of[("synapse", config_dir)], "homeserver.yaml")))
    modules = [m for m in hs_yaml.get("modules") or [] if m["module"] == "matrix_provisioner_synapse.PasswordAuthProvider"]
    check(len(modules) == 1, f"homeserver.yaml loads no password module: {hs_yaml.get('modules')}")
    module = modules[0]["config"]
    service_url = f"http://{E['PROVISIONER_HOST']}:{E['PROVISIONER_PORT']}"
    check(module["service_url"] == service_url, f"the password module asks {module['service_url']}, not {service_url}")
    secret_path = module["secret_path"]
    check(os.path.dirname(secret_path) == config_dir, f"the module's secret_path {secret_path} is not in {config_dir}")
    secret = open(os.path.join(host_of[("synapse", config_dir)], os.path.basename(secret_path))).read().strip()
    check(secret == E["PASSWORD_MODULE_SECRET"], "the module's secret file is not PASSWORD_MODULE_SECRET")
    password_config = hs_yaml.get("password_config") or {}
    check(password_config.get("enabled") is True and password_config.get("localdb_enabled", True) is True,
          f"password_config: {password_config} (password logins and Synapse's own passwords must stay on)")
    check(os.path.isfile(host_of[("element", "/app/config.json")]), "Element's config.json is not a file")
    check(os.path.isfile(host_of[("postgres", "/docker-entrypoint-initdb.d/init.sql")]), "init.sql is not a file")
    check(os.path.isfile(os.path.join(host_of[("gateway", "/etc/nginx/conf.d")], "gateway.conf")), "gateway.conf is not mounted")

    env = environment(services["provisioner"])
    for key, want in (("PUBLIC_URL", ORIGIN), ("SYNAPSE_REGISTRATION_SECRET", E["SYNAPSE_REGISTRATION_SECRET"]),
                      ("APPSERVICE_URL", f"http://{E['PROVISIONER_HOST']}:{E['PROVISIONER_PORT']}"),
                      ("TRUSTED_PROXIES", E["GATEWAY_IP"]), ("PASSWORD_MODULE_SECRET", secret),
                      ("AUTH_PASSWORD_LOGIN_URL", E["AUTH_PASSWORD_LOGIN_URL"]),
                      ("LOCALPART_SOURCES", E["LOCALPART_SOURCES"]),
                      ("ADOPT_LOCALPART_TEMPLATE", E["ADOPT_LOCALPART_TEMPLATE"])):
        check(env.get(key) == want, f"provisioner's {key} from provisioner.env is {env.get(key)!r}")

    for name, s in services.items():
        # prometheus: on the host's loopback only (scripts/check-deploy-monitoring.sh).
        if name not in ("gateway", "prometheus"):
            check(not s.get("ports"), f"{name} publishes ports; only the gateway may")
    published = set()
    for p in services["gateway"].get("ports", []):
        published.add(str(p.get("published")) if isinstance(p, dict) else p.split(":")[0])
    check(published == {E["HTTPS_PORT"], E["HTTP_PORT"]}, f"gateway publishes {sorted(published)}")
    net = services["gateway"]["networks"]["matrix"]
    check(net.get("ipv4_address") == E["GATEWAY_IP"] and E["MATRIX_HOST"] in (net.get("aliases") or []),
          "gateway: no fixed address or MATRIX_HOST alias on the network")
    ok("docker-compose config: %d services, pinned images (Synapse v%s with the password module, PostgreSQL %s), "
       "build context %s with the service's and Synapse's Dockerfiles, %d named volumes, every mounted file "
       "rendered%s; Synapse's password module asks %s with PASSWORD_MODULE_SECRET" % (
           len(services), synapse_version, pg_major, REPO, len(named),
           f"; TLS from {tls_dir} on the server" if outside else "", service_url))


def cmd_live():
    # Synapse: the OpenID provider and the application service are loaded.
    flows = jcall("GET", ORIGIN + "/_matrix/client/v3/login")["flows"]
    types = {f["type"] for f in flows}
    sso = next((f for f in flows if f["type"] == "m.login.sso"), {})
    idps = {(i["id"], i.get("name")) for i in sso.get("identity_providers", [])}
    idp = f"oidc-{E['OIDC_IDP_ID']}"
    check((idp, "DAARION") in idps, f"login flows list no {idp} provider: {flows}")
    check({"org.matrix.login.jwt", "m.login.application_service", "m.login.password"} <= types,
          f"login flows: {sorted(types)}")
    ok(f"Synapse answers through the gateway: login flows {sorted(types)}, SSO provider {idp} (DAARION)")

    as_token = E["APPSERVICE_AS_TOKEN"]
    puppet = f"{E['AGENT_LOCALPART_PREFIX']}deploy-check"
    got = jcall("POST", ORIGIN + "/_matrix/client/v3/register",
                {"type": "m.login.application_service", "username": puppet}, token=as_token)
    check(got["user_id"] == f"@{puppet}:{SERVER}", f"registered {got}")
    ping = jcall("POST", ORIGIN + f"/_matrix/client/v1/appservice/{E['APPSERVICE_ID']}/ping", {}, token=as_token)
    ok(f"application service loaded: {got['user_id']} registered with the as_token; Synapse pinged "
       f"the service at {E['PROVISIONER_HOST']}:{E['PROVISIONER_PORT']} directly ({ping.get('duration_ms')} ms)")

    # Federation delegation (FEDERATION=on only; scripts/check-deploy-federation.sh
    # checks both) and client discovery.
    answers = [("client", {"m.homeserver": {"base_url": ORIGIN}})]
    if E["FEDERATION"] == "on":
        answers.append(("server", {"m.server": f"{E['MATRIX_HOST']}:{E['HTTPS_PORT']}"}))
    else:
        status, _, data = call("GET", ORIGIN + "/.well-known/matrix/server")
        check(status == 404 and not os.path.exists(os.path.join(rendered, "well-known", "matrix", "server")),
              f"FEDERATION=off: /.well-known/matrix/server {status} {data[:100]!r} (or a rendered copy), expected 404")
    for name, want in answers:
        status, headers, data = call("GET", ORIGIN + f"/.well-known/matrix/{name}")
        check(status == 200 and headers.get("Content-Type", "").startswith("application/json"),
              f"/.well-known/matrix/{name}: {status} {headers.get('Content-Type')}")
        check(json.loads(data) == want, f"/.well-known/matrix/{name}: {data!r}, expected {want}")
        check(headers.get("Access-Control-Allow-Origin") == "*", f"/.well-known/matrix/{name}: no CORS header")
        copy = json.load(open(os.path.join(rendered, "well-known", "matrix", name)))
        check(copy == want, f"rendered well-known/matrix/{name} differs from the gateway's answer")
    ok(" and ".join(f"/.well-known/matrix/{name} {json.dumps(want)}" for name, want in answers)
       + " (JSON, CORS), the same as the rendered copies"
       + ("" if E["FEDERATION"] == "on" else "; /.well-known/matrix/server 404 (FEDERATION=off)"))

    # The OpenID provider at the one origin, signing with the key from OIDC_SIGNING_KEY_PATH.
    disco = jcall("GET", ORIGIN + "/.well-known/openid-configuration")
    check(disco["issuer"] == ORIGIN and disco["authorization_endpoint"].startswith(ORIGIN + "/oidc/"),
          f"discovery: {disco}")
    jwks = jcall("GET", ORIGIN + "/oidc/jwks")["keys"]
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    numbers = load_pem_private_key(open(E["OIDC_SIGNING_KEY_PATH"], "rb").read(), None).public_key().public_numbers()
    b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
    check(any(k.get("x") == b64(numbers.x) and k.get("y") == b64(numbers.y) for k in jwks),
          "the JWKS does not hold the key of OIDC_SIGNING_KEY_PATH")
    ok(f"OpenID provider through the gateway: issuer {ORIGIN}, JWKS holds the key of OIDC_SIGNING_KEY_PATH")

    # Element through the gateway; / goes there.
    status, headers, _ = call("GET", ORIGIN + "/")
    check(status == 302 and headers["Location"].endswith("/element/"), f"/: {status} {headers.get('Location')}")
    status, _, data = call("GET", ORIGIN + "/element/config.json")
    check(status == 200 and json.loads(data) == json.load(open(os.path.join(rendered, "element", "config.json"))),
          f"/element/config.json: {status}")
    ok("Element at /element/ (its rendered config.json), / redirects there")

    # Plain HTTP: ACME challenges, else a redirect to the origin.
    http = f"http://127.0.0.1:{E['HTTP_PORT']}"
    status, headers, _ = call("GET", http + "/_matrix/client/versions")
    check(status == 301 and headers["Location"] == ORIGIN + "/_matrix/client/versions",
          f"http: {status} {headers.get('Location')}")
    status, _, data = call("GET", http + "/.well-known/acme-challenge/deploy-check")
    check(status == 200 and data == b"acme-token\n", f"ACME challenge: {status} {data[:100]!r}")
    ok(f"port {E['HTTP_PORT']}: ACME challenges from ACME_WEBROOT, everything else 301 to {ORIGIN}")

    # Avatars as big as the service uploads pass the gateway and Synapse.
    token = admin_token()
    size = int(E["AVATAR_MAX_BYTES"])
    status, _, data = call("POST", ORIGIN + "/_matrix/media/v3/upload?filename=avatar", os.urandom(size), token,
                           {"Content-Type": "application/octet-stream"})
    check(status == 200 and json.loads(data)["content_uri"].startswith("mxc://"),
          f"upload of {size} bytes: {status} {data[:200]!r}")
    media = os.path.join(E["SYNAPSE_DATA_DIR"], "media_store")
    check(os.path.isfile(os.path.join(E["SYNAPSE_DATA_DIR"], "signing.key")) and os.path.isdir(media),
          f"no signing.key or media_store in SYNAPSE_DATA_DIR {E['SYNAPSE_DATA_DIR']}")
    ok(f"an upload of AVATAR_MAX_BYTES ({size} bytes) passes through the gateway; signing key and media in SYNAPSE_DATA_DIR")

    metrics = call("GET", f"http://127.0.0.1:{E['SYNAPSE_METRICS_PORT']}/_synapse/metrics")
    check(metrics[0] == 200 and b"synapse_" in metrics[2], f"Synapse metrics: {metrics[0]}")
    ok(f"Synapse's metrics on port SYNAPSE_METRICS_PORT ({E['SYNAPSE_METRICS_PORT']}), not routed by the gateway")

    # Closed at the gateway, working directly.
    admin = E["ADMIN_API_TOKEN"]
    done = [
        closed("POST", "/v1/webhooks/auth", 401, body={}),
        closed("POST", "/v1/webhooks/city", 401, body={}),
        closed("GET", "/v1/admin/outbox", 200, token=admin),
        closed("GET", "/v1/rooms/r_deploy_check", 404, token=admin),
        closed("GET", "/v1/agents/a_deploy_check", 404, token=admin),
        closed("GET", "/v1/messages/m_deploy_check", 404, token=admin),
        closed("GET", "/metrics", 200),
        closed("GET", "/docs", 308),
        closed("GET", "/openapi.json", 200),
        closed("GET", "/healthz", 200),
        closed("PUT", "/_matrix/app/v1/transactions/deploy-check", 200, token=E["APPSERVICE_HS_TOKEN"],
               body={"events": []}),
        closed("GET", "/_synapse/admin/v1/server_version", 200, direct=synapse),
        # Only Synapse's password module asks it (without its secret: 401 directly).
        closed("POST", "/v1/sso/password", 401, body={"user": "olena@example.com", "password": "x"}),
    ]
    for path in ("/v1/sso/password/", "/v1/sso//password", "/v1/sso/pass%77ord", "/v1/sso/./password",
                 "/v1/sso/password?x=1"):
        status, _, data = call("POST", ORIGIN + path, {"user": "olena@example.com", "password": "x"})
        check(status == 404 and b'"error"' not in data,
              f"POST {path} through the gateway: {status} {data[:200]!r}, expected nginx's 404")
    ok("closed at the gateway (nginx 404), answering directly: " + ", ".join(done)
       + "; /v1/sso/password also as /password/, //password, %-encoded, /./password")


def cmd_signed_in():
    username = sys.argv[3]
    token = admin_token()
    user = f"@{username}:{SERVER}"
    devices = jcall("GET", synapse(f"/_synapse/admin/v2/users/{user}/devices"), token=token)
    check(devices["total"] >= 1, f"{user} has no device")
    profile = jcall("GET", synapse(f"/_synapse/admin/v2/users/{user}"), token=token)
    ids = {e["auth_provider"] for e in profile["external_ids"]}
    check(ids == {"daarion", f"oidc-{E['OIDC_IDP_ID']}"}, f"external ids {profile['external_ids']}")
    sub = "u_" + hashlib.sha256(username.encode()).hexdigest()[:12]  # as the stand-in makes it
    person = closed("GET", f"/v1/users/{sub}", 200, token=E["ADMIN_API_TOKEN"])
    ok(f"Chromium signed in as {user} through {ORIGIN} (Synapse's SSO, the service, the stand-in DAARION "
       f"page and back): {devices['total']} device, external ids {sorted(ids)}; {person} directly, 404 at the gateway")


def cmd_own_signed_in():
    localpart = sys.argv[3]
    token = admin_token()
    user = f"@{localpart}:{SERVER}"
    devices = jcall("GET", synapse(f"/_synapse/admin/v2/users/{user}/devices"), token=token)
    check(devices["total"] >= 1, f"{user} has no device")
    profile = jcall("GET", synapse(f"/_synapse/admin/v2/users/{user}"), token=token)
    ids = {e["auth_provider"] for e in profile["external_ids"]}
    check(ids == {"daarion", f"oidc-{E['OIDC_IDP_ID']}"}, f"external ids {profile['external_ids']}")
    ok(f"Chromium signed in as {user} through {ORIGIN} on the service's own sign-in page (AUTH_LOGIN_URL "
       f"empty, as .env.example has it: email and password checked by the stand-in's login API), "
       f"{devices['total']} device, external ids {sorted(ids)}")


# Password sign-in as Element X does it (CONTRACT.md section 11): through the
# gateway to Synapse, its password module, the service and the stand-in's
# login API (AUTH_PASSWORD_LOGIN_URL).
def password_login(identifier, pw):
    status, _, data = call("POST", ORIGIN + "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": identifier, "password": pw,
        "initial_device_display_name": "check-deploy"})
    return status, json.loads(data or b"{}")


def signed_in(identifier, pw, want_user=None):
    """Logs in with a password, /syncs with the token; the login's answer."""
    status, got = password_login(identifier, pw)
    check(status == 200, f"password login {identifier}: {status} {got}")
    check(want_user is None or got["user_id"] == want_user, f"login {identifier} gave {got['user_id']}, not {want_user}")
    sync = jcall("GET", ORIGIN + "/_matrix/client/v3/sync?timeout=0", token=got["access_token"])
    check("next_batch" in sync, f"/sync as {got['user_id']}: {sync}")
    return got


def refused(identifier, pw):
    status, got = password_login(identifier, pw)
    check(status == 403 and got.get("errcode") == "M_FORBIDDEN",
          f"login {identifier} with a wrong password: {status} {got}, expected 403 M_FORBIDDEN")


def token_works(token):
    status, _, data = call("GET", ORIGIN + "/_matrix/client/v3/account/whoami", token=token)
    check(status in (200, 401), f"whoami: {status} {data[:200]!r}")
    return status == 200


def by_email(address):
    return {"type": "m.id.thirdparty", "medium": "email", "address": address}


def by_name(localpart):
    return {"type": "m.id.user", "user": localpart}


def external_ids(admin, user):
    profile = jcall("GET", synapse(f"/_synapse/admin/v2/users/{urllib.parse.quote(user)}"), token=admin)
    return {(e["auth_provider"], e["external_id"]) for e in profile["external_ids"]}


OLD_PASSWORD = "daarion-auth-provisioning-password"


def adopted(admin, address):
    """An account as DAARION Auth's own provisioning made it for the stand-in's
    person `address` (daarion_<hex8>, a Synapse password, a session), then the
    person's first password sign-in: the account is adopted. A dict of it."""
    import uuid
    user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "daarion-standin:" + address))
    localpart = E["ADOPT_LOCALPART_TEMPLATE"].replace("{user_id_hex8}", user_id.replace("-", "")[:8])
    user = f"@{localpart}:{SERVER}"
    nonce = jcall("GET", synapse("/_synapse/admin/v1/register"))["nonce"]
    old_session = jcall("POST", synapse("/_synapse/admin/v1/register"), {
        "nonce": nonce, "username": localpart, "password": OLD_PASSWORD, "admin": False,
        "mac": registration_mac(E["SYNAPSE_REGISTRATION_SECRET"], nonce, localpart, OLD_PASSWORD, False)})["access_token"]
    new_session = signed_in(by_email(address), os.environ["STANDIN_PASSWORD"], user)["access_token"]
    check(("daarion", user_id) in external_ids(admin, user), f"{user}: external ids {external_ids(admin, user)}")
    # What deploy/README.md's "Ending what DAARION Auth left" is for:
    signed_in(by_name(localpart), OLD_PASSWORD, user)
    return {"address": address, "user": user, "localpart": localpart,
            "old_session": old_session, "new_session": new_session}


def cmd_password():
    password = os.environ["STANDIN_PASSWORD"]
    check(E["AUTH_PASSWORD_LOGIN_URL"].startswith(os.environ["STANDIN_URL"]),
          f"AUTH_PASSWORD_LOGIN_URL {E['AUTH_PASSWORD_LOGIN_URL']} is not the stand-in's")
    admin = admin_token()

    # A DAARION person signs in for the first time: the account is made on the spot.
    user = signed_in(by_email("Olena@Example.com"), password)["user_id"]
    check(user == f"@olena.petrenko:{SERVER}",
          f"Олена Петренко got {user}, not @olena.petrenko (LOCALPART_SOURCES {E['LOCALPART_SOURCES']})")
    check(("daarion", "u_7f3c2a") in external_ids(admin, user), f"{user}: external ids {external_ids(admin, user)}")
    localpart = user[1:].split(":")[0]
    signed_in(by_name(localpart), password, user)
    signed_in(by_name(user), password, user)
    refused(by_email("olena@example.com"), "not-" + password)
    refused(by_name(localpart), "not-" + password)
    ok(f"password sign-in through {ORIGIN} (m.login.password, Synapse's module, the service, the stand-in's "
       f"login API): olena@example.com became {user} (external id daarion u_7f3c2a) and /syncs; by localpart "
       "and by Matrix id too; a wrong password is 403 M_FORBIDDEN")

    # An account DAARION Auth made itself is adopted; deploy/README.md's calls
    # end what DAARION Auth left on it, keeping the session opened since ...
    taras = adopted(admin, "taras.shevchenko@example.com")
    old_user = taras["user"]
    ok(f"ADOPT_LOCALPART_TEMPLATE: {taras['address']} signs in to the account DAARION Auth made, {old_user} "
       "(external id daarion added), whose own password still works too")
    listed = jcall("GET", synapse("/_synapse/admin/v2/users?user_id=daarion_&limit=1000"), token=admin)["users"]
    check(old_user in {u["name"] for u in listed}, f"/_synapse/admin/v2/users?user_id=daarion_ lists no {old_user}")
    jcall("POST", synapse(f"/_synapse/admin/v1/reset_password/{old_user}"),
          {"new_password": os.urandom(32).hex(), "logout_devices": False}, token=admin)
    base = synapse(f"/_synapse/admin/v2/users/{old_user}")
    devices = jcall("GET", base + "/devices", token=admin)["devices"]
    old_device = jcall("GET", ORIGIN + "/_matrix/client/v3/account/whoami", token=taras["old_session"])["device_id"]
    check(old_device in {d["device_id"] for d in devices}, f"{old_user}'s devices: {devices}")
    status, _, data = call("DELETE", base + f"/devices/{old_device}", token=admin)
    check(status == 200, f"DELETE {old_user}'s device {old_device}: {status} {data[:200]!r}")
    refused(by_name(taras["localpart"]), OLD_PASSWORD)
    check(not token_works(taras["old_session"]), f"{old_user}'s old session still works after its device was deleted")
    check(token_works(taras["new_session"]), f"{old_user}'s session opened with the DAARION password ended")
    signed_in(by_email(taras["address"]), password, old_user)
    ok(f"deploy/README.md's calls keeping the sessions opened since: {old_user} listed, a random password "
       "(logout_devices false), its old device deleted; the old password and session are refused, the DAARION "
       "password and the session it opened work")

    # ... and a second one for the README's shell commands at the switch (cmd_readme_ended).
    ivan = adopted(admin, "ivan.franko@example.com")
    json.dump(ivan, open(os.environ["ADOPTED_STATE"], "w"))


def cmd_readme_ended():
    """After deploy/README.md's shell commands "at the switch" ran as written."""
    ivan = json.load(open(os.environ["ADOPTED_STATE"]))
    refused(by_name(ivan["localpart"]), OLD_PASSWORD)
    check(not token_works(ivan["old_session"]), f"{ivan['user']}'s old session still works")
    check(not token_works(ivan["new_session"]), f"{ivan['user']}'s sessions opened since still work (logout_devices)")
    signed_in(by_email(ivan["address"]), os.environ["STANDIN_PASSWORD"], ivan["user"])
    ok(f"deploy/README.md's shell commands at the switch, as written (docker-compose exec run here): the "
       f"admin token, the daarion_ accounts listed, {ivan['user']}'s password random and every session ended; "
       "the DAARION password signs in")


def cmd_admin_password():
    """deploy/README.md's formula for the password of the service's admin account."""
    password = os.environ["ADMIN_PASSWORD"]
    got = jcall("POST", ORIGIN + "/_matrix/client/v3/login", {
        "type": "m.login.password", "password": password,
        "identifier": {"type": "m.id.user", "user": "matrix-provisioner"}})
    jcall("POST", ORIGIN + "/_matrix/client/v3/logout", {}, token=got["access_token"])
    ok(f"{got['user_id']} (the service's admin account) accepts the password deploy/README.md derives "
       "from SYNAPSE_REGISTRATION_SECRET with openssl (its rotation)")


def wait_for(fn, what):
    # After a reload nginx's old workers still answer for a moment with the
    # old configuration: the new one counts once it answered three times
    # in a row.
    deadline = time.time() + 15
    streak = 0
    while streak < 3:
        got = fn()
        streak = streak + 1 if got is True else 0
        if streak == 0 and time.time() > deadline:
            fail(f"{what}: {got}")
        time.sleep(0.3)


def cmd_webhooks_open():
    def probe():
        status, _, data = call("POST", ORIGIN + "/v1/webhooks/auth", {})
        if not (status == 401 and b'"error"' in data):
            return (status, data[:200])
        status, _, data = call("GET", ORIGIN + "/metrics")
        return True if status == 403 else ("/metrics", status, data[:200])
    wait_for(probe, "GATEWAY_EXPOSE_WEBHOOKS=yes: POST /v1/webhooks/auth through the gateway")
    status, _, _ = call("GET", ORIGIN + "/metrics")
    check(status == 403, f"/metrics from an address GATEWAY_ADMIN_ALLOW does not list: {status}")
    ok("GATEWAY_EXPOSE_WEBHOOKS=yes: /v1/webhooks/* reach the service (401 unsigned); "
       "GATEWAY_ADMIN_ALLOW=192.0.2.0/24: /metrics 403 from 127.0.0.1")


def cmd_admin_open():
    def probe():
        status, _, data = call("GET", ORIGIN + "/metrics")
        if not (status == 200 and b"matrix_provisioner_" in data):
            return (status, data[:200])
        status, _, data = call("GET", ORIGIN + "/v1/admin/outbox", token=E["ADMIN_API_TOKEN"])
        return True if status == 200 else ("/v1/admin/outbox", status, data[:200])
    wait_for(probe, "GATEWAY_ADMIN_ALLOW=127.0.0.1: GET /metrics through the gateway")
    jcall("GET", ORIGIN + "/v1/admin/outbox", token=E["ADMIN_API_TOKEN"])
    status, _, _ = call("GET", ORIGIN + "/v1/admin/outbox")
    check(status == 401, f"/v1/admin/outbox without the admin token: {status}")
    status, _, data = call("PUT", ORIGIN + "/_matrix/app/v1/transactions/x", {"events": []},
                           token=E["APPSERVICE_HS_TOKEN"])
    check(status == 404 and b'"error"' not in data, f"/_matrix/app/ opened along: {status}")
    ok("GATEWAY_ADMIN_ALLOW=127.0.0.1: /metrics and /v1/admin/* reach the service (admin token still "
       "required); /_matrix/app/* stays closed")


{"element": cmd_element, "compose": cmd_compose, "live": cmd_live, "signed-in": cmd_signed_in,
 "own-signed-in": cmd_own_signed_in,
 "admin-password": cmd_admin_password, "password": cmd_password, "readme-ended": cmd_readme_ended,
 "webhooks-open": cmd_webhooks_open, "admin-open": cmd_admin_open}[sys.argv[1]]()
PY
checks() { REPO="$repo" "$py" "$work/checks.py" "$@"; }

# ---- 1. render .env.example -------------------------------------------------
deploy/new-env.sh "$work/prod.env" 2>/dev/null
set_env "$work/prod.env" RENDERED_DIR "$work/prod"
MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/prod.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses .env.example with fresh secrets"; }
files="$(grep -c '^render: wrote' "$work/render.log")"
leftover="$(grep -rl '\${' "$work/prod" || true)"
[[ -z "$leftover" ]] || fail "\${…} left in $leftover"
ok "deploy/render.sh renders .env.example (fresh secrets from deploy/new-env.sh): $files files, nothing left unsubstituted"

refused=()
for case in 'MEDIA_MAX_UPLOAD_SIZE=4M' 'ADMIN_API_TOKEN=short' 'ELEMENT_BRAND=a"b' 'AUTH_JWKS_URL=' \
    'GATEWAY_EXPOSE_WEBHOOKS=maybe' 'GATEWAY_ADMIN_ALLOW=everyone' 'PASSWORD_MODULE_SECRET=' \
    'AUTH_PASSWORD_LOGIN_URL=' 'AUTH_PASSWORD_LOGIN_URL=daarion-auth:7020' 'LOCALPART_SOURCES=nickname' \
    'ADOPT_LOCALPART_TEMPLATE=daarion_' 'FEDERATION=maybe' 'NATS_URL=http://nats:4222' \
    'NATS_URL=nats://user:secret@nats:4222' 'NATS_OUT=yes' 'NATS_OUT=true' 'NATS_PASSWORD=alone' \
    'NATS_TLS_CA_PATH=/nonexistent/ca.pem'; do
    cp "$work/prod.env" "$work/bad.env"
    set_env "$work/bad.env" "${case%%=*}" "${case#*=}"
    if MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/bad.env" >/dev/null 2>&1; then
        fail "deploy/render.sh accepts $case"
    fi
    refused+=("$case")
done
grep -v '^ELEMENT_PORT=' "$work/prod.env" >"$work/bad.env"
MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/bad.env" >/dev/null 2>&1 && fail "deploy/render.sh accepts a missing setting"
ok "deploy/render.sh refuses ${refused[*]} and a missing setting"

# ---- 2. Element's config.json --------------------------------------------------
checks element "$work/prod.env"

# ---- 3. docker-compose ----------------------------------------------------------
if ! env -i "PATH=$PATH" "HOME=$work" docker-compose --env-file "$work/prod.env" \
    --project-directory deploy -f deploy/docker-compose.yml config >"$work/compose.yml" 2>"$work/compose.err"; then
    cat "$work/compose.err" >&2
    fail "docker-compose config refuses deploy/docker-compose.yml"
fi
grep -v '^\s*$' "$work/compose.err" | sed 's/^/check-deploy:      docker-compose: /' >&2 || true
checks compose "$work/prod.env" "$work/compose.yml"

# ---- 4. the same templates, run on this machine -------------------------------------
https_port="$(free_port)"
http_port="$(free_port)"
synapse_port="$(free_port)"
metrics_port="$(free_port)"
service_port="$(free_port)"
element_port="$(free_port)"
standin_port="$(free_port)"
nats_port="$(free_port)"
nats_monitor_port="$(free_port)"

mkdir -p "$work/tls" "$work/acme/.well-known/acme-challenge" "$work/synapse-data" "$work/element-root"
chmod 755 "$work/synapse-data"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/oidc-signing-key.pem" 2>/dev/null
echo acme-token >"$work/acme/.well-known/acme-challenge/deploy-check"
# DAARION's NATS as the deployment reaches it: TLS with a CA of its own
# (NATS_TLS_CA_PATH), a user and a password.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=nats-test-ca \
    -keyout "$work/tls/nats-ca-key.pem" -out "$work/tls/nats-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/tls/nats-key.pem" -out "$work/tls/nats.csr" 2>/dev/null
openssl x509 -req -in "$work/tls/nats.csr" -CA "$work/tls/nats-ca.pem" -CAkey "$work/tls/nats-ca-key.pem" \
    -CAcreateserial -days 2 -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n') \
    -out "$work/tls/nats-cert.pem" 2>/dev/null
nats_password="nats-$RANDOM$RANDOM$RANDOM"
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$work/auth_jwt"

# The production settings with a local layout: what deploy/.env.example
# calls "Layout", plus the stand-in for DAARION Auth.
cp "$work/prod.env" "$work/test.env"
while read -r key value; do
    set_env "$work/test.env" "$key" "$value"
done <<EOF
RENDERED_DIR $work/rendered
MATRIX_HOST 127.0.0.1
HTTPS_PORT $https_port
HTTP_PORT $http_port
LISTEN_ADDRESS 127.0.0.1
POSTGRES_HOST 127.0.0.1
SYNAPSE_HOST 127.0.0.1
SYNAPSE_PORT $synapse_port
SYNAPSE_METRICS_PORT $metrics_port
SYNAPSE_CONFIG_DIR $work/rendered/synapse
SYNAPSE_DATA_DIR $work/synapse-data
PROVISIONER_HOST 127.0.0.1
PROVISIONER_PORT $service_port
PROVISIONER_CONFIG_DIR $work/rendered/provisioner
ELEMENT_HOST 127.0.0.1
ELEMENT_PORT $element_port
GATEWAY_IP 127.0.0.1
TLS_DIR $work/tls
TLS_CERTIFICATE $work/tls/cert.pem
TLS_CERTIFICATE_KEY $work/tls/key.pem
ACME_WEBROOT $work/acme
AUTH_LOGIN_URL http://127.0.0.1:$standin_port/login
AUTH_PASSWORD_LOGIN_URL http://127.0.0.1:$standin_port/api/auth/login
AUTH_JWKS_URL
AUTH_JWT_SECRET $(cat "$work/auth_jwt")
OIDC_SIGNING_KEY_PATH $work/oidc-signing-key.pem
NATS_URL tls://127.0.0.1:$nats_port
NATS_USER matrix-provisioner
NATS_PASSWORD $nats_password
NATS_TLS_CA_PATH $work/tls/nats-ca.pem
NATS_CREATE_STREAMS true
NATS_OUT true
EOF

scripts/pg-cluster.sh start "$work/pg" >/dev/null
pg_port="$(cat "$work/pg/port")"
set_env "$work/test.env" POSTGRES_PORT "$pg_port"
MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/test.env" >/dev/null 2>"$work/render.log" ||
    { cat "$work/render.log" >&2; fail "deploy/render.sh refuses the local layout"; }

# PostgreSQL's first start: the image runs init.sql as the superuser on a
# fresh cluster (pg-cluster.sh made a `provisioner` database of its own).
# psql_in DB ARGS…: psql as the superuser.
psql_in() { "${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" "postgres://postgres@127.0.0.1:$pg_port/$1" -XtAq -v ON_ERROR_STOP=1 "${@:2}"; }
psql_super() { psql_in postgres "$@"; }
psql_super -c 'DROP DATABASE provisioner'
psql_super -f "$work/rendered/postgres/init.sql" >/dev/null || fail "PostgreSQL refuses the rendered init.sql"
collation="$(psql_super -c "SELECT datcollate || '/' || datctype FROM pg_database WHERE datname = 'synapse'")"
[[ "$collation" == C/C ]] || fail "Synapse's database has collation $collation"
owners="$(psql_super -c "SELECT string_agg(datname || ':' || pg_get_userbyid(datdba), ',' ORDER BY datname)
                         FROM pg_database WHERE datname IN ('synapse', 'provisioner')")"
[[ "$owners" == provisioner:provisioner,synapse:synapse ]] || fail "databases and owners: $owners"
ok "PostgreSQL 15 runs the rendered init.sql: databases synapse (collation C/C) and provisioner, each owned by its role"

# In the deployment's order: the gateway, the service and Element, then
# Synapse, which loads the provider's discovery through the gateway as it starts.

# The nginx image's nginx.conf, on a scratch prefix: conf.d/ is the rendered nginx/.
mkdir -p "$work/nginx/tmp"
ln -s "$work/rendered/nginx" "$work/nginx/conf.d"
cat >"$work/nginx/nginx.conf" <<'EOF'
# As the nginx image's /etc/nginx/nginx.conf: the site comes from conf.d/.
daemon off;
worker_processes 1;
pid nginx.pid;
events {
    worker_connections 512;
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
nginx_args=(-p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log")
nginx -t "${nginx_args[@]}" 2>"$work/nginx/test.log" || { cat "$work/nginx/test.log" >&2; fail "nginx -t refuses the rendered gateway config"; }
ok "nginx $(nginx -v 2>&1 | sed 's,.*/,,') accepts the rendered gateway.conf (nginx -t)"

nginx "${nginx_args[@]}" &
pids+=($!)
for _ in $(seq 1 50); do
    [[ -s "$work/nginx/nginx.pid" ]] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $https_port), 1)" 2>/dev/null && break
    sleep 0.1
done

nats-server -js -a 127.0.0.1 -p "$nats_port" -m "$nats_monitor_port" -sd "$work/nats" \
    --user matrix-provisioner --pass "$nats_password" \
    --tls --tlscert "$work/tls/nats-cert.pem" --tlskey "$work/tls/nats-key.pem" >"$work/nats.log" 2>&1 &
pids+=($!)
service_env=("PATH=$PATH")
while IFS= read -r line; do
    [[ "$line" =~ ^[A-Z_]+= ]] && service_env+=("$line")
done <"$work/rendered/provisioner.env"
env -i "${service_env[@]}" "$bin" serve >"$work/service.log" 2>&1 &
service_pid=$!
pids+=("$service_pid")
cp "$work/rendered/element/config.json" "$work/element-root/config.json"
echo '<!doctype html><title>Element stand-in</title>' >"$work/element-root/index.html"
python3 -m http.server "$element_port" --bind 127.0.0.1 --directory "$work/element-root" >/dev/null 2>&1 &
pids+=($!)
standin_password="standin-$RANDOM$RANDOM"
STANDIN_PORT="$standin_port" AUTH_JWT_SECRET_FILE="$work/auth_jwt" STANDIN_PASSWORD="$standin_password" \
    python3 scripts/standin-daarion.py 2>"$work/standin.log" &
pids+=($!)

for _ in $(seq 1 100); do
    env -i "BIND=127.0.0.1:$service_port" "$bin" healthcheck 2>/dev/null && break
    sleep 0.1
done
env -i "BIND=127.0.0.1:$service_port" "$bin" healthcheck 2>/dev/null ||
    { show_logs; fail "matrix-provisioner does not start from the rendered provisioner.env"; }
migrations="$(psql_in provisioner -c "SELECT pg_get_userbyid(c.relowner) || ':' || count(m.*)
    FROM pg_class c, _sqlx_migrations m WHERE c.relname = '_sqlx_migrations' GROUP BY c.relowner")" ||
    fail "no migrations in the provisioner database"
[[ "$migrations" == provisioner:* ]] || fail "the provisioner database's migrations belong to ${migrations%%:*}"
ok "matrix-provisioner serves from the rendered provisioner.env: database provisioner, ${migrations#*:} migrations applied as its role"
# The service reached DAARION's NATS with the rendered settings: over TLS
# (the CA copied beside provisioner.env), as its user, and made its streams
# and durable consumers (NATS_CREATE_STREAMS=true).
nats_state=""
nats_ok=""
for _ in $(seq 1 100); do
    nats_state="$(python3 - "$service_port" "$nats_monitor_port" <<'PY' 2>/dev/null
import json, sys, urllib.request
ready = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2))
jsz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/jsz?consumers=true", timeout=2))
streams = {s["name"]: [c["name"] for c in s.get("consumer_detail", [])]
           for a in jsz.get("account_details", []) for s in a.get("stream_detail", [])}
print(f"nats {ready.get('nats')}, streams {json.dumps(streams, sort_keys=True)}")
wanted = ready.get("nats") == "connected" and "MATRIX_EVENTS" in streams and all(
    streams.get(s) == ["matrix-provisioner"] for s in ("DAARION_AUTH", "DAARION_CITY"))
sys.exit(0 if wanted else 1)
PY
)" && nats_ok=yes && break
    sleep 0.2
done
[[ -n "$nats_ok" ]] ||
    { show_logs; cat "$work/nats.log" >&2; fail "matrix-provisioner did not reach NATS from the rendered settings: $nats_state"; }
ok "matrix-provisioner reaches NATS from the rendered settings: /readyz says connected (tls:// with NATS_TLS_CA_PATH copied beside provisioner.env, NATS_USER + NATS_PASSWORD): $nats_state"

# Synapse trusts the gateway's certificate: it fetches the provider's
# discovery and tokens from https://MATRIX_HOST, as in the deployment.
SSL_CERT_FILE="$work/tls/cert.pem" scripts/synapse-ctl.sh start "$work/rendered/synapse" \
    >/dev/null 2>"$work/synapse-ctl.err" ||
    { cat "$work/synapse-ctl.err" >&2; fail "Synapse does not start from the rendered homeserver.yaml"; }
ok "Synapse $("$py" -c 'import synapse; print(synapse.__version__)') starts from the rendered homeserver.yaml on PostgreSQL (log config, signing key, media store, app service file, password module and its secret from the local layout)"

checks live "$work/test.env" || { show_logs; exit 1; }
if grep -q 'Error while preloading OIDC provider' "$work/rendered/synapse/synapse.out"; then
    show_logs
    fail "Synapse could not load the OpenID provider's discovery through the gateway as it started"
fi
ok "Synapse loaded the OpenID provider's discovery from https://127.0.0.1:$https_port as it started (the gateway's certificate trusted)"

# ---- 5. "Continue with DAARION" through the gateway ----------------------------
origin="https://127.0.0.1:$https_port"
username="deploy-$RANDOM"
ORIGIN="$origin" USERNAME="$username" OUT="$work" REPO="$repo" "$browser_venv/bin/python" - <<'PY' || { show_logs; exit 1; }
import os, sys, urllib.parse

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from chromium import chromium, confirm_and_log_in, waiting

origin, username = os.environ["ORIGIN"], os.environ["USERNAME"]
browser = chromium(insecure=True)  # the gateway's certificate is self-signed here
wait = waiting(browser)
try:
    browser.get(f"{origin}/_matrix/static/client/login/")
    button = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#sso_form input[type=submit]")))
    button.click()  # Synapse -> the service's /oidc/authorize (gateway) -> the stand-in DAARION page
    wait.until(ready.presence_of_element_located((By.ID, "username")))
    return_to = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)["return_to"][0]
    if return_to != f"{origin}/v1/sso/return":
        sys.exit(f"check-deploy: FAIL DAARION's page returns to {return_to}, not through the gateway")
    browser.find_element(By.ID, "user_id").clear()  # not README's person: one of its own
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "display_name").send_keys("Деплой Перевірка")
    browser.find_element(By.ID, "sign_in").click()
    # The service's confirmation, on the gateway's origin, then on to Synapse.
    confirm_and_log_in(browser, wait, origin, "check-deploy")
except Exception:
    browser.save_screenshot(os.path.join(os.environ["OUT"], "sign-in-failure.png"))
    print(f"check-deploy: FAIL the browser stopped at {browser.current_url}", file=sys.stderr)
    raise
finally:
    browser.quit()
PY
checks signed-in "$work/test.env" "$username" || { show_logs; exit 1; }
registration_secret="$(grep '^SYNAPSE_REGISTRATION_SECRET=' "$work/test.env" | cut -d= -f2)"
ADMIN_PASSWORD="$(printf 'matrix-provisioner admin password v1\0matrix-provisioner' |
    openssl dgst -sha256 -hmac "$registration_secret" -hex | cut -d' ' -f2)" \
    checks admin-password "$work/test.env" || { show_logs; exit 1; }
STANDIN_PASSWORD="$standin_password" STANDIN_URL="http://127.0.0.1:$standin_port/" ADOPTED_STATE="$work/adopted.json" \
    checks password "$work/test.env" || { show_logs; exit 1; }

# deploy/README.md's shell commands that end what DAARION Auth left on the
# accounts it made ("at the switch"), as written, in a directory whose .env
# is the local layout's, with `docker-compose exec -T synapse` running here
# and Synapse's localhost:8008 at its local port.
mkdir -p "$work/readme"
cp "$work/test.env" "$work/readme/.env"
"$py" - "$repo/deploy/README.md" "$synapse_port" >"$work/readme/commands.sh" <<'PY' ||
import re, sys
text = open(sys.argv[1], encoding="utf8").read()
section = text.split("### Ending what DAARION Auth left on the accounts it made", 1)[1].split("\n## ", 1)[0]
blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "token=$(" in b or "while read -r user" in b]
if len(blocks) != 2:
    sys.exit("deploy/README.md: no admin-token and \"at the switch\" blocks under \"Ending what DAARION Auth left\"")
print("\n".join(blocks).replace("http://localhost:8008", f"http://127.0.0.1:{sys.argv[2]}"))
PY
    fail "cannot find deploy/README.md's commands"
(
    cd "$work/readme"
    docker-compose() {
        [[ "$1 $2 $3" == "exec -T synapse" ]] || { echo "unexpected: docker-compose $*" >&2; return 99; }
        shift 3
        "$@"
    }
    export no_proxy=127.0.0.1 NO_PROXY=127.0.0.1
    source ./commands.sh
) >"$work/readme/out.log" 2>&1 || { cat "$work/readme/out.log" >&2; fail "deploy/README.md's commands fail"; }
grep -qx '@daarion_[0-9a-f]\{8\}:.*' "$work/readme/daarion-accounts.txt" ||
    { cat "$work/readme/out.log" >&2; fail "deploy/README.md's commands listed no daarion_ account"; }
STANDIN_PASSWORD="$standin_password" ADOPTED_STATE="$work/adopted.json" \
    checks readme-ended "$work/test.env" || { cat "$work/readme/out.log" >&2; show_logs; exit 1; }

# The service's own sign-in page, as .env.example deploys it (AUTH_LOGIN_URL
# empty: DAARION Auth has no hosted page): the service restarted without
# the stand-in's page, and Chromium through the gateway from Synapse's login
# page to the form, DAARION's login API behind it, and back signed in.
kill -TERM "$service_pid"
wait "$service_pid" 2>/dev/null || true
own_env=()
for line in "${service_env[@]}"; do
    [[ "$line" == AUTH_LOGIN_URL=* ]] || own_env+=("$line")
done
env -i "${own_env[@]}" "$bin" serve >>"$work/service.log" 2>&1 &
service_pid=$!
pids+=("$service_pid")
for _ in $(seq 1 100); do
    env -i "BIND=127.0.0.1:$service_port" "$bin" healthcheck 2>/dev/null && break
    sleep 0.1
done
own_email="deploy.own$RANDOM@example.com"
ORIGIN="$origin" EMAIL="$own_email" PASSWORD="$standin_password" OUT="$work" REPO="$repo" \
    "$browser_venv/bin/python" - <<'PY' || { show_logs; exit 1; }
import os, sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from chromium import chromium, confirm_and_log_in, waiting

origin = os.environ["ORIGIN"]
browser = chromium(lang="en-US", insecure=True)  # the gateway's certificate is self-signed here
wait = waiting(browser)
try:
    browser.get(f"{origin}/_matrix/static/client/login/")
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#sso_form input[type=submit]"))).click()
    wait.until(ready.presence_of_element_located((By.ID, "password")))
    if not browser.current_url.startswith(origin + "/v1/sso/sign-in?"):
        sys.exit(f"check-deploy: FAIL the own sign-in page is at {browser.current_url}")
    browser.find_element(By.ID, "email").send_keys(os.environ["EMAIL"])
    browser.find_element(By.ID, "password").send_keys(os.environ["PASSWORD"])
    browser.find_element(By.ID, "sign_in").click()
    confirm_and_log_in(browser, wait, origin, "check-deploy")
except Exception:
    browser.save_screenshot(os.path.join(os.environ["OUT"], "own-sign-in-failure.png"))
    print(f"check-deploy: FAIL the browser stopped at {browser.current_url}", file=sys.stderr)
    raise
finally:
    browser.quit()
PY
checks own-signed-in "$work/test.env" "${own_email%@*}" || { show_logs; exit 1; }

# ---- 6. the gateway's switches ---------------------------------------------------
# reopen KEY=VALUE...: renders the local layout with these settings into a
# second directory and reloads the running nginx onto it.
reopen() {
    cp "$work/test.env" "$work/open.env"
    set_env "$work/open.env" RENDERED_DIR "$work/rendered-open"
    local pair
    for pair in "$@"; do set_env "$work/open.env" "${pair%%=*}" "${pair#*=}"; done
    MATRIX_PROVISIONER="$bin" deploy/render.sh "$work/open.env" >/dev/null 2>"$work/render.log" ||
        { cat "$work/render.log" >&2; fail "deploy/render.sh refuses $*"; }
    ln -sfn "$work/rendered-open/nginx" "$work/nginx/conf.d"
    nginx -t "${nginx_args[@]}" 2>"$work/nginx/test.log" || { cat "$work/nginx/test.log" >&2; fail "nginx -t refuses $*"; }
    kill -HUP "$(cat "$work/nginx/nginx.pid")"
}
reopen GATEWAY_EXPOSE_WEBHOOKS=yes GATEWAY_ADMIN_ALLOW=192.0.2.0/24
checks webhooks-open "$work/open.env" || { show_logs; exit 1; }
reopen GATEWAY_ADMIN_ALLOW=127.0.0.1,::1
checks admin-open "$work/open.env" || { show_logs; exit 1; }

# ---- 7. monitoring: deploy/prometheus/ against what runs above --------------------
scripts/check-deploy-monitoring.sh "$work/test.env" || { show_logs; exit 1; }

say "deploy/ passes: render, Element's config, docker-compose config, PostgreSQL, Synapse, the service and nginx from the rendered files, sign-in through the gateway (single sign-on and passwords)"

# ---- 7. federation: two homeservers rendered from deploy/ (FEDERATION on and off) ----
scripts/check-deploy-federation.sh
scripts/check-deploy-workers.sh # SYNAPSE_WORKERS=on (deploy/README.md, "More than one process")
# ---- calls: coturn (its own script; runs on its own too) -------------------------
scripts/check-deploy-turn.sh
