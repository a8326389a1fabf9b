#!/usr/bin/env bash
# check-sign-in.sh — "Continue with DAARION" in a real browser: headless
# Chromium opens Synapse's own login page, presses single sign-on's "Log in",
# goes through the service (Synapse's OpenID provider) to the stand-in DAARION
# page (scripts/standin-daarion.py), types a name, confirms on the service's
# page whom it signs in as, and comes back signed in. The result is read from
# Synapse: the person's account has a new device.
# Then the takeover of issue 24, in two Chromium profiles: an "attacker"
# starts a sign-in and hands its DAARION link to a "victim", who signs in to
# DAARION with it; the victim's browser is told the sign-in was started
# elsewhere, the attacker's browser (with the victim's link too) gets no
# code, and the victim's account never gets a Matrix session.
# Then DAARION as it runs (no hosted page, only its login API): the service
# restarted without AUTH_LOGIN_URL; Chromium, in Ukrainian, starts on the
# stand-in's start page (run-local.sh's), presses "Continue with DAARION",
# goes through Synapse's single sign-on to the service's own sign-in form,
# types a wrong password (the form says so), then the right one, confirms, and
# lands on the stand-in's page naming whom it signed in: the stand-in's
# olena@example.com (u_7f3c2a, "Олена Петренко", no username: @olena.petrenko).
# Leaves screenshots of each page in OUT_DIR for a person to look at.
#
# Usage:   scripts/check-sign-in.sh [OUT_DIR]     (default: target/check-sign-in)
# Needs:   cargo, python3; Debian's chromium and chromium-driver (installed
#          here with apt-get when missing; needs root); selenium from PyPI
#          (into ${MP_CACHE:-.cache}/browser-venv).
# Network: apt-get and pip only when something is missing; the browser
#          reaches nothing but 127.0.0.1.
set -euo pipefail

SELENIUM_VERSION=4.38.0

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out="${1:-$repo/target/check-sign-in}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cache="${MP_CACHE:-$repo/.cache}"
mkdir -p "$cache"

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "check-sign-in: installing chromium and chromium-driver (Debian packages)" >&2
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
venv="$cache/browser-venv"
exec 9>"$cache/.browser-venv.lock"
flock 9
if ! "$venv/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM_VERSION')" 2>/dev/null; then
    echo "check-sign-in: installing selenium $SELENIUM_VERSION into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "selenium==$SELENIUM_VERSION" >&2
fi
flock -u 9

cargo build --locked --quiet --bin matrix-provisioner
bin="$repo/target/debug/matrix-provisioner"
scripts/synapse-venv.sh >/dev/null

scratch_dir mp-sign-in
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    stop_scratch
}
trap stop_all EXIT

python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$work/auth_jwt"
registration="reg-$RANDOM$RANDOM"
client_secret="oidc-$RANDOM$RANDOM"
service_port="$(free_port)"
standin_port="$(free_port)"
synapse_port="$(SERVER_NAME=signin.test REGISTRATION_SECRET="$registration" BCRYPT_ROUNDS=4 \
    RELAX_RATELIMITS=1 OIDC_PROVIDERS="daarion=http://127.0.0.1:$service_port" \
    OIDC_CLIENT_SECRET="$client_secret" SSO_CLIENT_WHITELIST="http://127.0.0.1:$standin_port/" \
    start_synapse "$work/synapse")"

STANDIN_PORT="$standin_port" AUTH_JWT_SECRET_FILE="$work/auth_jwt" \
    STANDIN_SYNAPSE_URL="http://127.0.0.1:$synapse_port" python3 scripts/standin-daarion.py &
pids+=($!)
service_env=(
    "PATH=$PATH" "BIND=127.0.0.1:$service_port" "DATABASE_URL=sqlite://$work/provisioner.db"
    "SYNAPSE_URL=http://127.0.0.1:$synapse_port" "SYNAPSE_SERVER_NAME=signin.test"
    "SYNAPSE_REGISTRATION_SECRET=$registration" "AUTH_JWT_SECRET_FILE=$work/auth_jwt"
    "PUBLIC_URL=http://127.0.0.1:$service_port" "OIDC_CLIENT_SECRET=$client_secret"
)
start_service() { # start_service [SETTING=VALUE…]: the service, until it answers
    env -i "${service_env[@]}" "$@" "$bin" serve >>"$out/service.log" 2>&1 &
    service_pid=$!
    pids+=("$service_pid")
    for _ in $(seq 1 100); do
        env -i "BIND=127.0.0.1:$service_port" "$bin" healthcheck 2>/dev/null && return 0
        sleep 0.1
    done
    echo "check-sign-in: the service did not start" >&2
    return 1
}
: >"$out/service.log"
start_service "AUTH_LOGIN_URL=http://127.0.0.1:$standin_port/login"

username="browser-$RANDOM"
SYNAPSE="http://127.0.0.1:$synapse_port" REGISTRATION="$registration" USERNAME="$username" \
    SERVICE="http://127.0.0.1:$service_port" OUT="$out" REPO="$repo" "$venv/bin/python" - <<'PY'
import hashlib, hmac, json, os, sys, time, urllib.error, urllib.parse, urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from chromium import chromium, waiting

synapse, out, username = os.environ["SYNAPSE"], os.environ["OUT"], os.environ["USERNAME"]
service = os.environ["SERVICE"]

browser = chromium()
wait = waiting(browser)
step = 0

def shot(name, who=None):
    global step
    step += 1
    (who or browser).save_screenshot(os.path.join(out, f"{step}-{name}.png"))

try:
    browser.get(f"{synapse}/_matrix/static/client/login/")
    button = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#sso_form input[type=submit]")))
    shot("synapse-login")
    button.click()  # Synapse -> the service's authorize -> the stand-in DAARION page
    wait.until(ready.presence_of_element_located((By.ID, "username")))
    shot("daarion-standin")
    browser.find_element(By.ID, "user_id").clear()  # not README's person: one of its own
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "display_name").send_keys("Браузер Тест")
    browser.find_element(By.ID, "sign_in").click()
    # The service's own page: whom DAARION signed in, before any code.
    wait.until(ready.element_to_be_clickable((By.ID, "continue")))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert browser.current_url.startswith(service + "/v1/sso/continue?"), browser.current_url
    assert f"@{username}:signin.test" in text and "Браузер Тест" in text, text
    shot("confirm")
    browser.find_element(By.ID, "continue").click()
    # Back on Synapse's page with a login token, which the page logs in with.
    wait.until(lambda b: "loginToken=" in b.current_url)
    wait.until(lambda b: b.find_element(By.ID, "title").text == "Logging in...")
    shot("back-on-synapse")
finally:
    final_url = browser.current_url
    browser.quit()

# Ask Synapse: a fresh admin (shared-secret registration) reads the account.
def call(method, path, body=None, token=None):
    req = urllib.request.Request(synapse + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req, timeout=10))

nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
admin, password = f"checker{int(time.time())}", "checker-password"
mac = hmac.new(os.environ["REGISTRATION"].encode(), digestmod=hashlib.sha1)
mac.update(b"\0".join([nonce.encode(), admin.encode(), password.encode(), b"admin"]))
token = call("POST", "/_synapse/admin/v1/register", {
    "nonce": nonce, "username": admin, "password": password, "admin": True,
    "mac": mac.hexdigest()})["access_token"]
user = f"@{username}:signin.test"
deadline = time.time() + 30
while True:
    devices = call("GET", f"/_synapse/admin/v2/users/{user}/devices", token=token)
    if devices["total"] >= 1:
        break
    if time.time() > deadline:
        sys.exit(f"check-sign-in: {user} has no device after the browser came back to {final_url}")
    time.sleep(0.2)
profile = call("GET", f"/_synapse/admin/v2/users/{user}", token=token)
ids = {e["auth_provider"] for e in profile["external_ids"]}
assert ids == {"daarion", "oidc-daarion"}, profile["external_ids"]
assert profile["displayname"] == "Браузер Тест", profile["displayname"]
print(f"check-sign-in: Chromium signed in as {user} ({devices['total']} device) through DAARION")

# The takeover of issue 24: a sign-in link handed from one browser to another.
victim_name = f"victim{int(time.time())}"
attacker, victim = chromium(), chromium()
visited = []
try:
    attacker.get(f"{synapse}/_matrix/static/client/login/")
    waiting(attacker).until(ready.element_to_be_clickable(
        (By.CSS_SELECTOR, "#sso_form input[type=submit]"))).click()
    waiting(attacker).until(ready.presence_of_element_located((By.ID, "username")))
    link = attacker.current_url  # DAARION's page with our return_to and state
    shot("attacker-stops-at-daarion", attacker)
    # The victim, signed in to DAARION, opens the link and goes on.
    victim.get(link)
    waiting(victim).until(ready.presence_of_element_located((By.ID, "username")))
    victim.find_element(By.ID, "user_id").clear()  # not README's person: one of its own
    victim.find_element(By.ID, "username").send_keys(victim_name)
    victim.find_element(By.ID, "sign_in").click()
    waiting(victim).until(lambda b: b.find_element(By.TAG_NAME, "h1").text == "Sign-in stopped")
    victim_link = victim.current_url
    assert victim_link.startswith(service + "/v1/sso/continue?"), victim_link
    assert "another browser" in victim.find_element(By.TAG_NAME, "body").text
    shot("victim-told-started-elsewhere", victim)
    # The attacker's browser, holding the sign-in's cookie: the continue
    # step with only the state, then with the victim's whole link.
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["state"][0]
    for url in (f"{service}/v1/sso/continue?state={urllib.parse.quote(state)}", victim_link):
        attacker.get(url)
        visited.append(attacker.current_url)
        waiting(attacker).until(lambda b: b.find_element(By.TAG_NAME, "h1").text)
        assert attacker.find_elements(By.ID, "continue") == [], "a confirmation for the attacker"
    shot("attacker-gets-nothing", attacker)
finally:
    attacker.quit()
    victim.quit()
assert not any("oidc/callback" in u or "loginToken" in u for u in visited), visited
victim_user = f"@{victim_name}:signin.test"
try:
    call("GET", f"/_synapse/admin/v2/users/{victim_user}", token=token)
    devices = call("GET", f"/_synapse/admin/v2/users/{victim_user}/devices", token=token)
    assert devices["total"] == 0, f"the victim has a Matrix session: {devices}"
except urllib.error.HTTPError as e:
    assert e.code == 404, e  # no account was even made for the victim
print("check-sign-in: a sign-in link handed to another browser signs nobody in (Chromium, two profiles)")

# The stand-in's page offers README's example person first (issue 25): a
# newcomer who only presses "Sign in" is u_7f3c2a, Олена Петренко.
readme = chromium()
try:
    readme.get(f"{synapse}/_matrix/static/client/login/")
    waiting(readme).until(ready.element_to_be_clickable(
        (By.CSS_SELECTOR, "#sso_form input[type=submit]"))).click()
    waiting(readme).until(ready.presence_of_element_located((By.ID, "user_id")))
    assert readme.find_element(By.ID, "user_id").get_attribute("value") == "u_7f3c2a"
    readme.find_element(By.ID, "sign_in").click()
    waiting(readme).until(ready.element_to_be_clickable((By.ID, "continue")))
    text = readme.find_element(By.TAG_NAME, "body").text
    assert "Олена Петренко" in text and "@olena.petrenko:signin.test" in text, text
    shot("readme-person", readme)
finally:
    readme.quit()
print("check-sign-in: the stand-in's page signs in as README's person by default (u_7f3c2a, Олена Петренко)")
PY

# DAARION as it runs: no hosted page, the service's own form.
kill -TERM "$service_pid"
wait "$service_pid" 2>/dev/null || true
start_service "AUTH_PASSWORD_LOGIN_URL=http://127.0.0.1:$standin_port/api/auth/login"
SYNAPSE="http://127.0.0.1:$synapse_port" REGISTRATION="$registration" \
    SERVICE="http://127.0.0.1:$service_port" STANDIN="http://127.0.0.1:$standin_port" \
    OUT="$out" REPO="$repo" "$venv/bin/python" - <<'PY'
import hashlib, hmac, json, os, sys, time, urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready

sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
from chromium import chromium, waiting

synapse, out, service = os.environ["SYNAPSE"], os.environ["OUT"], os.environ["SERVICE"]
browser = chromium(lang="uk")
wait = waiting(browser)

def body():
    return browser.find_element(By.TAG_NAME, "body").text

try:
    # The newcomer's start page (the stand-in's, as run-local.sh serves it).
    browser.get(os.environ["STANDIN"] + "/")
    wait.until(ready.element_to_be_clickable((By.ID, "continue")))
    assert "Продовжити з DAARION" in body(), body()
    browser.save_screenshot(os.path.join(out, "own-0-start.png"))
    browser.find_element(By.ID, "continue").click()
    # The service's own sign-in page, in Ukrainian.
    wait.until(ready.presence_of_element_located((By.ID, "password")))
    assert browser.current_url.startswith(service + "/v1/sso/sign-in?"), browser.current_url
    assert "Увійти через DAARION" in body(), body()
    browser.save_screenshot(os.path.join(out, "own-1-form.png"))
    browser.find_element(By.ID, "email").send_keys("Olena@Example.com")
    browser.find_element(By.ID, "password").send_keys("not-the-password")
    browser.find_element(By.ID, "sign_in").click()
    wait.until(ready.presence_of_element_located((By.ID, "note")))
    assert "Неправильна електронна пошта або пароль" in body(), body()
    browser.save_screenshot(os.path.join(out, "own-2-wrong-password.png"))
    # The address stays filled in; the password does not.
    assert browser.find_element(By.ID, "email").get_attribute("value") == "Olena@Example.com"
    assert browser.find_element(By.ID, "password").get_attribute("value") == ""
    browser.find_element(By.ID, "password").send_keys("daarion-standin")
    browser.find_element(By.ID, "sign_in").click()
    wait.until(ready.element_to_be_clickable((By.ID, "continue")))
    assert "@olena.petrenko:signin.test" in body() and "Олена Петренко" in body(), body()
    browser.save_screenshot(os.path.join(out, "own-3-confirm.png"))
    browser.find_element(By.ID, "continue").click()
    # Back on the start page's side, which completes the Matrix login and
    # says whom it signed in.
    wait.until(ready.presence_of_element_located((By.ID, "user_id")))
    assert browser.current_url.startswith(os.environ["STANDIN"] + "/welcome?loginToken="), browser.current_url
    assert "Ви увійшли в Matrix" in body(), body()
    assert browser.find_element(By.ID, "user_id").text == "@olena.petrenko:signin.test"
    assert browser.find_element(By.ID, "display_name").text == "Олена Петренко"
    browser.save_screenshot(os.path.join(out, "own-4-signed-in.png"))
except Exception:
    browser.save_screenshot(os.path.join(out, "own-failure.png"))
    print(f"check-sign-in: the own page's sign-in stopped at {browser.current_url}: {body()[:500]}",
          file=sys.stderr)
    raise
finally:
    browser.quit()

def call(method, path, body=None, token=None):
    req = urllib.request.Request(synapse + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req, timeout=10))

nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
admin, password = f"checker-own{int(time.time())}", "checker-password"
mac = hmac.new(os.environ["REGISTRATION"].encode(), digestmod=hashlib.sha1)
mac.update(b"\0".join([nonce.encode(), admin.encode(), password.encode(), b"admin"]))
token = call("POST", "/_synapse/admin/v1/register", {
    "nonce": nonce, "username": admin, "password": password, "admin": True,
    "mac": mac.hexdigest()})["access_token"]
user = "@olena.petrenko:signin.test"
deadline = time.time() + 30
while call("GET", f"/_synapse/admin/v2/users/{user}/devices", token=token)["total"] < 1:
    if time.time() > deadline:
        sys.exit(f"check-sign-in: {user} has no device after the own sign-in page")
    time.sleep(0.2)
linked = call("GET", "/_synapse/admin/v1/auth_providers/daarion/users/u_7f3c2a", token=token)
assert linked["user_id"] == user, linked
print(f"check-sign-in: Chromium signed in as {user} on the service's own page (email and password)")
PY
