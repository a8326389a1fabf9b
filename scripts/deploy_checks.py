"""deploy_checks.py — what the Python halves of the deploy checks share.

scripts/check-deploy.sh, check-deploy-federation.sh, check-deploy-workers.sh
and check-deploy-monitoring.sh write their checks in Python (one subcommand
each, run with Synapse's virtualenv), and scripts/turn-client.py is such a
file of its own. Each says ok and fails in its own name, reads the rendered
.env, and speaks HTTP to what runs; this module is that part, once:

    sys.path.insert(0, os.path.join(os.environ["REPO"], "scripts"))
    from deploy_checks import Checks, load_env

    E = load_env(sys.argv[2])
    C = Checks("check-deploy", cafile=E["TLS_CERTIFICATE"])
    ok, fail, check, call, jcall = C.ok, C.fail, C.check, C.call, C.jcall

Standard library only: it runs under any python3 the scripts pick.
"""

import hashlib
import hmac
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def load_env(path):
    """The settings of an env file (deploy/.env, as render.sh writes and
    reads it): {KEY: value} of its KEY=value lines, the value as written
    (no quotes taken off); blank lines and # comments skipped."""
    env = {}
    for line in open(path, encoding="utf8"):
        line = line.rstrip("\n")
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def signed(secret, body):
    """The X-Daarion-Signature header of a webhook body (bytes) as DAARION
    Auth and DAARION.city sign it: t=<now>,v1=hex(HMAC-SHA256(secret, "t.body"))."""
    t = str(int(time.time()))
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Daarion-Signature": f"t={t},v1={mac}"}


def registration_mac(secret, nonce, user, password, admin):
    """The mac of Synapse's shared-secret registration
    (POST /_synapse/admin/v1/register): HMAC-SHA1 of nonce, user, password
    and admin/notadmin, NUL-separated, keyed with registration_shared_secret."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\0".join([nonce.encode(), user.encode(), password.encode(),
                           b"admin" if admin else b"notadmin"]))
    return mac.hexdigest()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to look at, not a request to make."""

    def redirect_request(self, *args, **kwargs):
        return None


class Checks:
    """One check's voice and HTTP client.

    prefix:      what its lines start with ("check-deploy" prints
                 "check-deploy: ok   …" on stdout, "check-deploy: FAIL …" on stderr).
    started:     a Unix time; when given, each ok line ends " [N s]", the
                 seconds since then.
    cafile:      the CA file https answers must be signed by (read at each
                 call: the check may make it after this object); None: the
                 system's.
    https_proxy: a proxy for https URLs only (http always goes direct);
                 None: no proxy at all, whatever the environment says.
    timeout:     seconds one HTTP call may take.
    """

    def __init__(self, prefix, started=None, cafile=None, https_proxy=None, timeout=30):
        self.prefix, self.started = prefix, started
        self.cafile, self.https_proxy, self.timeout = cafile, https_proxy, timeout

    def ok(self, msg):
        """Says that msg holds, on stdout."""
        took = "" if self.started is None else f" [{int(time.time()) - int(self.started)} s]"
        print(f"{self.prefix}: ok   {msg}{took}", flush=True)

    def fail(self, msg):
        """Says msg on stderr and ends the check with status 1."""
        print(f"{self.prefix}: FAIL {msg}", file=sys.stderr, flush=True)
        sys.exit(1)

    def check(self, cond, msg):
        """Fails with msg unless cond."""
        if not cond:
            self.fail(msg)

    def call(self, method, url, body=None, token=None, headers=None, jar=None, form=None):
        """One HTTP request; (status, headers, body bytes) whatever the status.

        body: bytes as they are, anything else as JSON (Content-Type
        application/json unless headers name another); form: a dict sent as
        application/x-www-form-urlencoded instead; token: a bearer token;
        jar: an http.cookiejar.CookieJar that sends and keeps cookies.
        Redirects are answers, not followed."""
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers = {**(headers or {}), "Content-Type": "application/x-www-form-urlencoded"}
        else:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None and not (headers and "Content-Type" in headers):
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        handlers = [NoRedirect, urllib.request.ProxyHandler({"https": self.https_proxy} if self.https_proxy else {})]
        if url.startswith("https:") and self.cafile:
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=self.cafile)))
        if jar is not None:
            handlers.append(urllib.request.HTTPCookieProcessor(jar))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=self.timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def jcall(self, method, url, body=None, token=None, want=200, headers=None):
        """call, which must answer status want: its body's JSON."""
        status, _, data = self.call(method, url, body, token, headers)
        self.check(status == want, f"{method} {url}: {status} {data[:300]!r}, expected {want}")
        return json.loads(data)

    def until(self, fn, what, timeout=60):
        """fn's first true answer, asked every 0.3 s; after timeout seconds
        without one, fails with "what (waited timeout s)"."""
        deadline = time.time() + timeout
        while True:
            got = fn()
            if got:
                return got
            if time.time() > deadline:
                self.fail(f"{what} (waited {timeout} s)")
            time.sleep(0.3)
