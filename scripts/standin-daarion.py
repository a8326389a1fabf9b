#!/usr/bin/env python3
"""A STAND-IN for DAARION Auth's sign-in page, for trying "Continue with
DAARION" on this machine (scripts/run-local.sh) and for the browser check
(scripts/check-sign-in.sh). It is NOT DAARION Auth and checks no password:
whoever types a name is signed in as that name.

It plays DAARION's side of the hand-off in CONTRACT.md section 7: GET
/login?return_to=…&state=… shows a form; its answer is a page that POSTs
`access_token` (an HS256 DAARION access token, as section 3 describes) and
`state` back to `return_to`, or `error=access_denied` on "Cancel".

Env: STANDIN_PORT (7020), AUTH_JWT_SECRET_FILE (the key the service checks
tokens with), AUTH_JWT_ISSUER / AUTH_JWT_AUDIENCE (optional, as the service's).
Only 127.0.0.1 is served."""

import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = open(os.environ["AUTH_JWT_SECRET_FILE"], "rb").read().rstrip(b"\n")
PORT = int(os.environ.get("STANDIN_PORT", "7020"))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(username: str, name: str) -> str:
    now = int(time.time())
    claims = {
        # A stable DAARION id per name, as DAARION's own would be.
        "sub": "u_" + hashlib.sha256(username.encode()).hexdigest()[:12],
        "preferred_username": username,
        "name": name or username,
        "sid": secrets.token_urlsafe(12),
        "iat": now,
        "exp": now + 300,
    }
    for claim, var in (("iss", "AUTH_JWT_ISSUER"), ("aud", "AUTH_JWT_AUDIENCE")):
        if os.environ.get(var):
            claims[claim] = os.environ[var]
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


BANNER = (
    "<p style='background:#fde68a;padding:.6rem;border:2px solid #b45309'>"
    "<b>STAND-IN</b> for DAARION Auth's sign-in page, for trying sign-in on this "
    "machine. It is not DAARION Auth and checks no password.</p>"
)


def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;"
        f"max-width:32rem;margin:3rem auto'>{BANNER}<h1>{title}</h1>{body}</body></html>"
    ).encode()


def hidden(fields: dict) -> str:
    return "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in fields.items()
    )


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path != "/login" or "return_to" not in q or "state" not in q:
            return self.answer(404, page("Not here", "<p>Use /login?return_to=…&amp;state=…</p>"))
        form = (
            "<form method='post' action='/login'>"
            + hidden({"return_to": q["return_to"], "state": q["state"]})
            + "<p><label>Username <input id='username' name='username' required></label></p>"
            "<p><label>Display name <input id='display_name' name='display_name'></label></p>"
            "<p><button id='sign_in' name='action' value='sign_in'>Sign in</button> "
            "<button id='cancel' name='action' value='cancel' formnovalidate>Cancel</button></p></form>"
        )
        self.answer(200, page("Sign in to DAARION", form))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        q = dict(urllib.parse.parse_qsl(self.rfile.read(min(length, 65536)).decode()))
        return_to, state = q.get("return_to", ""), q.get("state", "")
        if not return_to.startswith(("http://", "https://")):
            return self.answer(400, page("Bad request", "<p>return_to is missing.</p>"))
        if q.get("action") == "cancel" or not q.get("username", "").strip():
            fields = {"error": "access_denied", "state": state}
        else:
            token = access_token(q["username"].strip(), q.get("display_name", "").strip())
            fields = {"access_token": token, "state": state}
        body = (
            f"<form method='post' action='{html.escape(return_to)}'>{hidden(fields)}"
            "<button>Continue</button></form><script>document.forms[0].submit()</script>"
        )
        self.answer(200, page("Signing you in…", body))

    def log_message(self, fmt, *args) -> None:  # quiet: no tokens in logs
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
