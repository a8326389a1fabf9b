"""The password module inside a real Synapse, against a fake of the service.

Starts a throwaway Synapse on 127.0.0.1 through the repository's scripts
(synapse-config.sh with PASSWORD_MODULE_URL, synapse-ctl.sh; synapse-venv.sh
installs the current synapse-module/ into the cached venv first) and a fake
of matrix-provisioner's POST /v1/sso/password that answers per user, then
signs in over the client API and checks what the client gets.

Usage (from anywhere; stdlib only, so any python3 >= 3.9 runs it):
    MP_CACHE=<cache dir, default <repo>/.cache> python3 synapse-module/tests/test_against_synapse.py
Takes about 12 s on 2 cores, most of it Synapse starting (twice more, for
the start-up checks of a bad secret file).
"""

import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
SERVER_NAME = "localhost"
TIMEOUT_SECONDS = 1  # the module's timeout_seconds in this Synapse
SLOW_SECONDS = 4  # how long the fake keeps the "slow" user waiting

# Passwords: random, so the log check below finds them if they are logged.
RIGHT = "right-" + secrets.token_hex(8)
WRONG = "wrong-" + secrets.token_hex(8)
ALICE_LOCAL = "alice-local-" + secrets.token_hex(8)  # alice's own Synapse password
LOCALONLY = "localonly-" + secrets.token_hex(8)  # a user DAARION does not know
MODULE_SECRET = "module-secret-" + secrets.token_hex(16)

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------
# The fake service
# --------------------------------------------------------------------------


class FakeService:
    """POST /v1/sso/password answering per user (see answer())."""

    def __init__(self):
        self.expected_secret = MODULE_SECRET
        self.calls = []
        self.connections = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as the real service (and Synapse's connection pool) does.
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with fake.lock:
                    fake.connections.append(self.connection)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with fake.lock:
                    fake.calls.append(
                        {
                            "path": self.path,
                            "authorization": self.headers.get("Authorization"),
                            "content_type": self.headers.get("Content-Type"),
                            "body": body,
                        }
                    )
                status, payload, headers = fake.answer(self.path, self.headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the module gave up on us (the "slow" user)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path, headers, body):
        if path != "/v1/sso/password":
            return 404, {"error": "not_found"}, {}
        if headers.get("Authorization") != "Bearer " + self.expected_secret:
            return 401, {"error": "unauthorized"}, {}
        if not isinstance(body, dict) or not isinstance(body.get("user"), str):
            return 400, {"error": "bad_request"}, {}
        user, password = body["user"], body.get("password")
        if user in ("alice", "@alice:localhost", "alice@example.org"):
            if password == RIGHT:
                return 200, {"matrix_user_id": "@alice:localhost"}, {}
            return 401, {"error": "invalid_credentials"}, {}
        local = user.split("@")[0] if "@" in user and not user.startswith("@") else user
        if local == "gone":
            return 403, {"error": "user_deactivated"}, {}
        if local == "busy":
            return 429, {"error": "too_many_attempts"}, {"Retry-After": "7"}
        if local == "down":
            return 503, {"error": "auth_unavailable"}, {}
        if local == "slow":
            time.sleep(SLOW_SECONDS)
            return 200, {"matrix_user_id": "@alice:localhost"}, {}
        if local == "garbage":
            return 200, b"<html>not json</html>", {}
        if local == "foreign":
            return 200, {"matrix_user_id": "@alice:elsewhere.example"}, {}
        if local == "weird404":
            return 404, {"error": "not_found"}, {}
        if local == "teapot":
            return 418, {"error": "teapot"}, {}
        return 404, {"error": "unknown_user"}, {}

    def take_calls(self):
        with self.lock:
            calls, self.calls = self.calls, []
        return calls

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            connections, self.connections = self.connections, []
        for connection in connections:  # the kept-alive ones too: the service is gone
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------
# Synapse
# --------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, headers=None, token=None):
    """(status, headers, json body) of one client API request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with NO_PROXY.open(request, timeout=30) as response:
            return response.status, response.headers, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return e.code, e.headers, payload


def register(base, registration_secret, username, password):
    status, _, nonce = call(base, "GET", "/_synapse/admin/v1/register")
    assert status == 200, nonce
    mac = hmac.new(registration_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\0".join([nonce["nonce"].encode(), username.encode(), password.encode(), b"notadmin"]))
    status, _, answer = call(
        base,
        "POST",
        "/_synapse/admin/v1/register",
        {
            "nonce": nonce["nonce"],
            "username": username,
            "password": password,
            "admin": False,
            "mac": mac.hexdigest(),
            "inhibit_login": True,
        },
    )
    assert status == 200, answer


def run(*args, env=None, check=True, timeout=300):
    return subprocess.run(
        [str(a) for a in args],
        cwd=REPO,
        env=env,
        check=check,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def user_login(localpart_or_mxid, password):
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart_or_mxid},
        "password": password,
    }


def email_login(address, password):
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": address},
        "password": password,
    }


class PasswordModuleAgainstSynapse(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = Path(tempfile.mkdtemp(prefix="mp-password-module."))
        cls.synapse_dir = cls.work / "synapse"
        cls.fake = FakeService()
        cls.registration_secret = secrets.token_hex(16)
        env = dict(os.environ)
        env.update(
            REGISTRATION_SECRET=cls.registration_secret,
            SERVER_NAME=SERVER_NAME,
            BCRYPT_ROUNDS="4",
            RELAX_RATELIMITS="1",
            PASSWORD_MODULE_URL="http://127.0.0.1:%d" % cls.fake.port,
            PASSWORD_MODULE_SECRET=MODULE_SECRET,
            PASSWORD_MODULE_TIMEOUT=str(TIMEOUT_SECONDS),
        )
        cls.env = env
        try:
            cls.venv_python = run(SCRIPTS / "synapse-venv.sh", env=env).stdout.strip().splitlines()[-1] + "/bin/python"
            run(SCRIPTS / "synapse-config.sh", cls.synapse_dir, free_port(), env=env)
            cls.base = run(SCRIPTS / "synapse-ctl.sh", "start", cls.synapse_dir, env=env).stdout.strip().splitlines()[-1]
            register(cls.base, cls.registration_secret, "alice", ALICE_LOCAL)
            register(cls.base, cls.registration_secret, "localonly", LOCALONLY)
        except subprocess.CalledProcessError as e:
            cls.tearDownClass()
            raise RuntimeError("setting up Synapse failed:\n%s\n%s" % (e.stdout, e.stderr))
        except BaseException:
            cls.tearDownClass()
            raise
        cls.fake.take_calls()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.synapse_dir.exists():
                run(SCRIPTS / "synapse-ctl.sh", "stop", cls.synapse_dir, env=cls.env, check=False)
        finally:
            try:
                cls.fake.stop()
            except Exception:
                pass
            log = cls.synapse_dir / "homeserver.log"
            if os.environ.get("KEEP_TEST_DIR"):
                print("\nkept %s" % cls.work, file=sys.stderr)
            else:
                if log.exists():
                    shutil.copy(log, Path(tempfile.gettempdir()) / "mp-password-module-last-homeserver.log")
                shutil.rmtree(cls.work, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def login(self, body, headers=None):
        self.fake.take_calls()
        return call(self.base, "POST", "/_matrix/client/v3/login", body, headers=headers)

    def one_call(self):
        calls = self.fake.take_calls()
        self.assertEqual(len(calls), 1, calls)
        return calls[0]

    def assert_unavailable(self, status, payload):
        self.assertEqual(status, 503, payload)
        self.assertEqual(payload.get("errcode"), "M_UNKNOWN", payload)
        self.assertIn("unavailable", payload.get("error", ""), payload)

    def log_text(self):
        return (self.synapse_dir / "homeserver.log").read_text(encoding="utf8", errors="replace")

    # -- tests (unittest runs them in name order) ------------------------------

    def test_a_password_flow_offered(self):
        status, _, flows = call(self.base, "GET", "/_matrix/client/v3/login")
        self.assertEqual(status, 200)
        self.assertIn("m.login.password", [f["type"] for f in flows["flows"]])

    def test_b_localpart(self):
        status, _, payload = self.login(user_login("alice", RIGHT))
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["user_id"], "@alice:localhost")
        request = self.one_call()
        self.assertEqual(request["path"], "/v1/sso/password")
        self.assertEqual(request["authorization"], "Bearer " + MODULE_SECRET)
        self.assertEqual(request["content_type"], "application/json")
        self.assertEqual(request["body"], {"user": "alice", "password": RIGHT, "client_ip": "127.0.0.1"})
        # The session works.
        status, _, whoami = call(
            self.base, "GET", "/_matrix/client/v3/account/whoami", token=payload["access_token"]
        )
        self.assertEqual((status, whoami.get("user_id")), (200, "@alice:localhost"), whoami)

    def test_c_full_matrix_id(self):
        status, _, payload = self.login(user_login("@alice:localhost", RIGHT))
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["user_id"], "@alice:localhost")
        self.assertEqual(self.one_call()["body"]["user"], "@alice:localhost")

    def test_d_email(self):
        # Synapse lower-cases the address before the module sees it.
        status, _, payload = self.login(email_login("Alice@Example.ORG", RIGHT))
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["user_id"], "@alice:localhost")
        self.assertEqual(self.one_call()["body"]["user"], "alice@example.org")

    def test_e_client_ip_from_x_forwarded_for(self):
        # The listener has x_forwarded: true.
        status, _, payload = self.login(
            user_login("alice", RIGHT), headers={"X-Forwarded-For": "203.0.113.7"}
        )
        self.assertEqual(status, 200, payload)
        self.assertEqual(self.one_call()["body"]["client_ip"], "203.0.113.7")

    def test_f_wrong_password_is_forbidden(self):
        status, _, payload = self.login(user_login("alice", WRONG))
        self.assertEqual((status, payload.get("errcode")), (403, "M_FORBIDDEN"), payload)
        self.one_call()
        status, _, payload = self.login(email_login("alice@example.org", WRONG))
        self.assertEqual((status, payload.get("errcode")), (403, "M_FORBIDDEN"), payload)
        self.one_call()

    def test_g_after_401_synapse_checks_its_own_password(self):
        # Documented in README.md: the module declines, Synapse's local
        # password database (localdb_enabled, on by default) still accepts.
        status, _, payload = self.login(user_login("alice", ALICE_LOCAL))
        self.assertEqual(status, 200, payload)
        self.one_call()

    def test_h_deactivated(self):
        for body in (user_login("gone", RIGHT), email_login("gone@example.org", RIGHT)):
            status, _, payload = self.login(body)
            self.assertEqual((status, payload.get("errcode")), (403, "M_USER_DEACTIVATED"), payload)
            self.one_call()

    def test_i_too_many_attempts(self):
        for body in (user_login("busy", RIGHT), email_login("busy@example.org", RIGHT)):
            status, headers, payload = self.login(body)
            self.assertEqual((status, payload.get("errcode")), (429, "M_LIMIT_EXCEEDED"), payload)
            self.assertEqual(payload.get("retry_after_ms"), 7000, payload)
            self.assertEqual(headers.get("Retry-After"), "7")
            self.one_call()

    def test_j_service_says_unavailable(self):
        for body in (user_login("down", RIGHT), email_login("down@example.org", RIGHT)):
            status, _, payload = self.login(body)
            self.assert_unavailable(status, payload)
            self.one_call()

    def test_k_unknown_user_falls_through_to_synapse(self):
        status, _, payload = self.login(user_login("localonly", LOCALONLY))
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["user_id"], "@localonly:localhost")
        self.assertEqual(self.one_call()["body"]["user"], "localonly")
        status, _, payload = self.login(user_login("localonly", WRONG))
        self.assertEqual((status, payload.get("errcode")), (403, "M_FORBIDDEN"), payload)
        status, _, payload = self.login(email_login("nobody@example.org", WRONG))
        self.assertEqual((status, payload.get("errcode")), (403, "M_FORBIDDEN"), payload)
        self.one_call()

    def test_l_no_answer_in_time(self):
        started = time.monotonic()
        status, _, payload = self.login(user_login("slow", RIGHT))
        elapsed = time.monotonic() - started
        self.assert_unavailable(status, payload)
        self.assertLess(elapsed, TIMEOUT_SECONDS + 1.5, "the module waited %.1f s" % elapsed)

    def test_m_answers_the_module_cannot_trust(self):
        for user in ("garbage", "foreign", "weird404", "teapot"):
            with self.subTest(user=user):
                status, _, payload = self.login(user_login(user, RIGHT))
                self.assert_unavailable(status, payload)
                self.one_call()

    def test_n_phone_numbers_are_not_sent(self):
        status, _, payload = self.login(
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.thirdparty", "medium": "msisdn", "address": "447700900123"},
                "password": RIGHT,
            }
        )
        self.assertEqual((status, payload.get("errcode")), (403, "M_FORBIDDEN"), payload)
        self.assertEqual(self.fake.take_calls(), [])

    def test_o_secret_refused(self):
        self.fake.expected_secret = "the-service-has-another-one"
        try:
            status, _, payload = self.login(user_login("alice", RIGHT))
        finally:
            self.fake.expected_secret = MODULE_SECRET
        self.assert_unavailable(status, payload)
        self.one_call()
        self.assertRegex(self.log_text(), r"ERROR - .*PASSWORD_MODULE_SECRET")

    def test_p_bad_secret_file_stops_start_up(self):
        config = (self.synapse_dir / "homeserver.yaml").read_text(encoding="utf8")
        secret_path = str(self.synapse_dir / "password-module-secret")
        for name, content in (("missing-secret", None), ("empty-secret", "  \n")):
            with self.subTest(name):
                path = self.work / name
                if content is not None:
                    path.write_text(content)
                bad = self.work / (name + ".yaml")
                bad.write_text(config.replace(secret_path, str(path)), encoding="utf8")
                # Synapse itself, as an operator starts it: it stops at the
                # config, before listening, with the module's message.
                result = run(
                    self.venv_python, "-m", "synapse.app.homeserver", "-c", bad, check=False, timeout=60
                )
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(
                    "the password module secret file %s" % path, result.stdout + result.stderr
                )

    def test_y_log(self):
        log = self.log_text()
        self.assertIn("accepted as @alice:localhost", log)
        # Each refusal reached the client as the module meant it, not through
        # Synapse's "a callback failed, carry on" path.
        self.assertNotIn("Failed to run module API callback", log)
        for secret in (RIGHT, WRONG, ALICE_LOCAL, LOCALONLY, MODULE_SECRET):
            self.assertNotIn(secret, log)

    def test_z_service_down(self):
        self.fake.stop()
        status, _, payload = self.login(user_login("alice", RIGHT))
        self.assert_unavailable(status, payload)
        status, _, payload = self.login(email_login("alice@example.org", RIGHT))
        self.assert_unavailable(status, payload)


if __name__ == "__main__":
    unittest.main(verbosity=2)
