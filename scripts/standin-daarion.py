#!/usr/bin/env python3
"""A STAND-IN for DAARION Auth, for trying sign-in on this machine
(scripts/run-local.sh) and for the checks (scripts/check-sign-in.sh,
scripts/check-deploy.sh). It is NOT DAARION Auth: it has no real people and
no real passwords.

It plays two parts of DAARION Auth:

1. The sign-in page of the hand-off in CONTRACT.md section 7: GET
   /login?return_to=…&state=… shows a form; its answer is a page that POSTs
   `access_token` (an HS256 DAARION access token, as section 3 describes) and
   `state` back to `return_to`, or `error=access_denied` on "Cancel". It checks
   no password: it signs in as the DAARION id in its first field (README's
   example person, u_7f3c2a Олена Петренко, unless changed), or, with that
   field empty, as a person made up from the username typed.

2. The login API of CONTRACT.md section 10, POST /api/auth/login with JSON
   {"email", "password"}, answering as DAARION Auth does (200 with an access
   and a refresh token signed with the same HS256 key, 401, 403, 422). Its
   directory of people is made up:
   - olena@example.com is user_id u_7f3c2a, "Олена Петренко" (the README's
     example person);
   - inactive@example.com is an inactive person (403 with the right password);
   - any other address is a person whose user_id is
     uuid5(NAMESPACE_URL, "daarion-standin:" + the lower-cased email), named
     after the address's local part (taras.shevchenko -> "Taras Shevchenko").
   Everyone's password is STANDIN_PASSWORD (default "daarion-standin");
   anything else is 401. Emails compare case-insensitively.

3. A landing page for a newcomer (scripts/run-local.sh), when STANDIN_SYNAPSE_URL
   is set: GET / offers "Continue with DAARION", which goes through Synapse's
   single sign-on (and the service) and comes back to GET /welcome with
   Synapse's loginToken; that page completes the Matrix login and shows whom
   it signed in: Matrix id, display name, the rooms joined. Ukrainian or
   English by Accept-Language. STANDIN_IDP names Synapse's provider
   (oidc-daarion).

Env: STANDIN_PORT (7020), AUTH_JWT_SECRET_FILE (the key the service checks
tokens with), AUTH_JWT_ISSUER (the tokens' `iss`, default "daarion-auth" as
DAARION Auth's) / AUTH_JWT_AUDIENCE (an `aud`, only when set), as the
service's; STANDIN_PASSWORD. Only 127.0.0.1 is served."""

import base64
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = open(os.environ["AUTH_JWT_SECRET_FILE"], "rb").read().rstrip(b"\n")
PORT = int(os.environ.get("STANDIN_PORT", "7020"))
PASSWORD = os.environ.get("STANDIN_PASSWORD") or "daarion-standin"
ACCESS_TTL = 1800  # DAARION Auth's access tokens live 30 minutes
REFRESH_TTL = 7 * 24 * 3600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(username: str, name: str, user_id: str = "") -> str:
    now = int(time.time())
    claims = {
        # The DAARION id asked for, else a stable one per name, as DAARION's
        # own would be.
        "sub": user_id or "u_" + hashlib.sha256(username.encode()).hexdigest()[:12],
        "name": name or username or user_id,
        "sid": secrets.token_urlsafe(12),
        "iat": now,
        "exp": now + 300,
    }
    if username:
        claims["preferred_username"] = username
    for claim, var in (("iss", "AUTH_JWT_ISSUER"), ("aud", "AUTH_JWT_AUDIENCE")):
        if os.environ.get(var):
            claims[claim] = os.environ[var]
    return sign(claims)


def sign(claims: dict) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


# ---- the login API (CONTRACT.md section 10) -----------------------------------

# The made-up directory: email (lower case) -> person. Anyone else is made up
# from the address by person().
PEOPLE = {
    "olena@example.com": {"id": "u_7f3c2a", "display_name": "Олена Петренко", "is_active": True},
    "inactive@example.com": {"display_name": "Inactive Person", "is_active": False},
}
CREATED_AT = "2025-01-15T09:30:00+00:00"
# README's example person, whom the hosted sign-in page offers first.
EXAMPLE_ID, EXAMPLE_NAME = PEOPLE["olena@example.com"]["id"], PEOPLE["olena@example.com"]["display_name"]


def person(email: str) -> dict:
    email = email.lower()
    known = PEOPLE.get(email, {})
    local = email.split("@", 1)[0]
    name = " ".join(w[:1].upper() + w[1:] for w in re.split(r"[._+-]+", local) if w) or local
    return {
        "id": known.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, "daarion-standin:" + email)),
        "email": email,
        "display_name": known.get("display_name", name),
        "avatar_url": None,
        "roles": ["member"],
        "is_active": known.get("is_active", True),
        "created_at": CREATED_AT,
    }


def issuer_claims() -> dict:
    # DAARION Auth's tokens say iss "daarion-auth" and have no aud; the
    # stand-in follows the service's settings so its tokens are accepted.
    claims = {"iss": os.environ.get("AUTH_JWT_ISSUER") or "daarion-auth"}
    if os.environ.get("AUTH_JWT_AUDIENCE"):
        claims["aud"] = os.environ["AUTH_JWT_AUDIENCE"]
    return claims


def login_tokens(user: dict) -> dict:
    now = int(time.time())
    access = {
        "sub": user["id"], "email": user["email"], "name": user["display_name"],
        "roles": user["roles"], "type": "access", **issuer_claims(),
        "iat": now, "exp": now + ACCESS_TTL,
    }
    # Signed with the same key, as DAARION Auth's: the service must refuse it
    # where an access token is expected (its `type`).
    refresh = {
        "sub": user["id"], "type": "refresh", "session_id": str(uuid.uuid4()),
        **issuer_claims(), "iat": now, "exp": now + REFRESH_TTL,
    }
    return {
        "access_token": sign(access),
        "refresh_token": sign(refresh),
        "token_type": "bearer",
        "expires_in": ACCESS_TTL,
        "user": user,
    }


def field_error(loc: str, kind: str, msg: str) -> list:
    # As FastAPI (DAARION Auth's framework) words a request it cannot read.
    return [{"type": kind, "loc": ["body"] + ([loc] if loc else []), "msg": msg}]


def login(raw: bytes) -> tuple:
    """(status, JSON body) for POST /api/auth/login."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return 422, {"detail": field_error("", "json_invalid", "JSON decode error")}
    if not isinstance(body, dict):
        return 422, {"detail": field_error("", "model_attributes_type", "Input should be an object")}
    for key in ("email", "password"):
        if key not in body:
            return 422, {"detail": field_error(key, "missing", "Field required")}
        if not isinstance(body[key], str):
            return 422, {"detail": field_error(key, "string_type", "Input should be a valid string")}
    email = body["email"].strip()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        return 422, {"detail": field_error("email", "value_error",
                                           "value is not a valid email address")}
    if not hmac.compare_digest(body["password"].encode(), PASSWORD.encode()):
        return 401, {"detail": "Invalid email or password"}
    user = person(email)
    if not user["is_active"]:
        return 403, {"detail": "User account is inactive"}
    return 200, login_tokens(user)


BANNER = (
    "<p style='background:#fde68a;padding:.6rem;border:2px solid #b45309'>"
    "<b>STAND-IN</b> for DAARION Auth, for trying sign-in on this machine. It is "
    "not DAARION Auth: its people and passwords are made up. "
    "<b>ЗАМІННИК</b> DAARION Auth для спроб на цій машині.</p>"
)


def page(title: str, body: str, lang: str = "en") -> bytes:
    return (
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;"
        f"max-width:32rem;margin:3rem auto'>{BANNER}<h1>{title}</h1>{body}</body></html>"
    ).encode()


def hidden(fields: dict) -> str:
    return "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in fields.items()
    )


# ---- the newcomer's landing page (scripts/run-local.sh) -------------------------

SYNAPSE = (os.environ.get("STANDIN_SYNAPSE_URL") or "").rstrip("/")
IDP = os.environ.get("STANDIN_IDP") or "oidc-daarion"

WORDS = {
    "uk": {
        "start_title": "Спробуйте вхід у Matrix",
        "start_body": "Увійдіть у Matrix через DAARION: сервіс покаже сторінку входу "
                      "(електронна пошта та пароль), а потім ви повернетеся сюди.",
        "try_as": "Приклад: <code>olena@example.com</code>, пароль <code>{password}</code>.",
        "button": "Продовжити з DAARION",
        "welcome_title": "Ви увійшли в Matrix",
        "as": "Ви увійшли як",
        "rooms": "Кімнати, до яких ви приєдналися:",
        "no_rooms": "Поки що жодної кімнати.",
        "client": "Щоб читати повідомлення, вкажіть сервер <code>{synapse}</code> у будь-якому "
                  "клієнті Matrix (Element Desktop, Element X або Element Web, запущений локально; "
                  "app.element.io цієї машини не бачить).",
        "failed_title": "Вхід у Matrix не завершено",
        "failed": "Synapse не прийняв токен входу ({reason}). Почніть знову.",
        "again": "Почати знову",
    },
    "en": {
        "start_title": "Try signing in to Matrix",
        "start_body": "Sign in to Matrix with DAARION: the service shows its sign-in page "
                      "(email and password), then you come back here.",
        "try_as": "For example <code>olena@example.com</code>, password <code>{password}</code>.",
        "button": "Continue with DAARION",
        "welcome_title": "You are signed in to Matrix",
        "as": "Signed in as",
        "rooms": "Rooms you have joined:",
        "no_rooms": "No rooms yet.",
        "client": "To read the messages, point any Matrix client (Element Desktop, Element X, "
                  "or Element Web run locally; app.element.io cannot reach this machine) at the "
                  "homeserver <code>{synapse}</code>.",
        "failed_title": "The Matrix sign-in did not finish",
        "failed": "Synapse did not accept the login token ({reason}). Please start again.",
        "again": "Start again",
    },
}


def lang_of(header: str) -> str:
    best, best_q = "en", 0.0
    for part in (header or "").split(","):
        bits = part.strip().split(";")
        tag = bits[0].strip().lower().split("-")[0]
        q = 1.0
        for b in bits[1:]:
            if b.strip().startswith("q="):
                try:
                    q = float(b.strip()[2:])
                except ValueError:
                    q = 0.0
        if tag in ("uk", "ru", "en") and q > best_q:
            best, best_q = ("en" if tag == "en" else "uk"), q
    return best


def synapse_call(method: str, path: str, body=None, token=None) -> dict:
    req = urllib.request.Request(SYNAPSE + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def welcome(login_token: str, words: dict) -> tuple:
    """(status, title, HTML) of the page after Synapse's single sign-on."""
    start = f"<p><a href='/'>{words['again']}</a></p>"
    try:
        session = synapse_call("POST", "/_matrix/client/v3/login",
                               {"type": "m.login.token", "token": login_token})
    except urllib.error.HTTPError as e:
        reason = html.escape(f"{e.code} {e.reason}")
        return 400, words["failed_title"], f"<p>{words['failed'].format(reason=reason)}</p>{start}"
    except OSError as e:
        reason = html.escape(str(e))
        return 502, words["failed_title"], f"<p>{words['failed'].format(reason=reason)}</p>{start}"
    token, user_id = session["access_token"], session["user_id"]
    quoted = urllib.parse.quote(user_id)
    name = synapse_call("GET", f"/_matrix/client/v3/profile/{quoted}", token=token).get("displayname")
    rooms = []
    for room_id in synapse_call("GET", "/_matrix/client/v3/joined_rooms", token=token)["joined_rooms"]:
        try:
            state = synapse_call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}"
                                        "/state/m.room.name", token=token)
            rooms.append(state.get("name") or room_id)
        except urllib.error.HTTPError:
            rooms.append(room_id)
    who = (f"<p id='who'>{words['as']} <strong id='display_name'>{html.escape(name or user_id)}"
           f"</strong><br><code id='user_id'>{html.escape(user_id)}</code></p>")
    listed = ("<ul id='rooms'>" + "".join(f"<li>{html.escape(r)}</li>" for r in rooms) + "</ul>"
              if rooms else f"<p id='rooms'>{words['no_rooms']}</p>")
    client = f"<p>{words['client'].format(synapse=html.escape(SYNAPSE))}</p>"
    return 200, words["welcome_title"], f"{who}<p>{words['rooms']}</p>{listed}{client}"


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
        lang = lang_of(self.headers.get("Accept-Language", ""))
        words = WORDS[lang]
        if SYNAPSE and url.path == "/":
            back = f"http://127.0.0.1:{PORT}/welcome"
            start = (f"{SYNAPSE}/_matrix/client/v3/login/sso/redirect/{IDP}?"
                     + urllib.parse.urlencode({"redirectUrl": back}))
            body = (f"<p>{words['start_body']}</p><p>{words['try_as'].format(password=html.escape(PASSWORD))}</p>"
                    f"<p><a id='continue' href='{html.escape(start)}' style='display:inline-block;"
                    "padding:.5rem 1rem;background:#1b1b1f;color:#fff;border-radius:.4rem;"
                    f"text-decoration:none'>{words['button']}</a></p>")
            return self.answer(200, page(words["start_title"], body, lang))
        if SYNAPSE and url.path == "/welcome" and q.get("loginToken"):
            status, title, body = welcome(q["loginToken"], words)
            return self.answer(status, page(title, body, lang))
        if url.path != "/login" or "return_to" not in q or "state" not in q:
            return self.answer(404, page("Not here", "<p>Use /login?return_to=…&amp;state=…</p>"))
        form = (
            "<form method='post' action='/login'>"
            + hidden({"return_to": q["return_to"], "state": q["state"]})
            # README's example person by default; empty it to make one up
            # from the username.
            + f"<p><label>DAARION id <input id='user_id' name='user_id' value='{EXAMPLE_ID}'></label> "
            f"({html.escape(EXAMPLE_NAME)}; empty: a person made up from the username)</p>"
            "<p><label>Username <input id='username' name='username'></label></p>"
            "<p><label>Display name <input id='display_name' name='display_name'></label></p>"
            "<p><button id='sign_in' name='action' value='sign_in'>Sign in</button> "
            "<button id='cancel' name='action' value='cancel' formnovalidate>Cancel</button></p></form>"
        )
        self.answer(200, page("Sign in to DAARION", form))

    def answer_json(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 65536))
        if urllib.parse.urlsplit(self.path).path == "/api/auth/login":
            status, body = login(raw)
            print(f"standin-daarion: POST /api/auth/login -> {status}", file=sys.stderr, flush=True)
            return self.answer_json(status, body)
        q = dict(urllib.parse.parse_qsl(raw.decode()))
        return_to, state = q.get("return_to", ""), q.get("state", "")
        if not return_to.startswith(("http://", "https://")):
            return self.answer(400, page("Bad request", "<p>return_to is missing.</p>"))
        user_id, username = q.get("user_id", "").strip(), q.get("username", "").strip()
        name = q.get("display_name", "").strip()
        if user_id == EXAMPLE_ID and not (username or name):
            name = EXAMPLE_NAME
        if q.get("action") == "cancel" or not (user_id or username):
            fields = {"error": "access_denied", "state": state}
        else:
            fields = {"access_token": access_token(username, name, user_id), "state": state}
        body = (
            f"<form method='post' action='{html.escape(return_to)}'>{hidden(fields)}"
            "<button>Continue</button></form><script>document.forms[0].submit()</script>"
        )
        self.answer(200, page("Signing you in…", body))

    def log_message(self, fmt, *args) -> None:  # quiet: no tokens in logs
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(
    f"standin-daarion: a STAND-IN for DAARION Auth (not DAARION Auth) on http://127.0.0.1:{PORT}: "
    "sign-in page /login (no password checked), login API POST /api/auth/login "
    "(made-up people, everyone's password is "
    + ("STANDIN_PASSWORD" if os.environ.get("STANDIN_PASSWORD") else '"daarion-standin"') + ")",
    file=sys.stderr, flush=True)
server.serve_forever()
