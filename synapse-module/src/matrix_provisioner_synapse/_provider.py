"""The password auth provider itself; see README.md for what it does."""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import math
import time
import urllib.parse
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from synapse.api.errors import (
    Codes,
    LimitExceededError,
    SynapseError,
    UserDeactivatedError,
)
from synapse.module_api import ModuleApi, make_deferred_yieldable, run_in_background
from synapse.module_api.errors import ConfigError

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/v1/sso/password"
UNAVAILABLE_MESSAGE = "Signing in is unavailable right now; please try again later"
DEAD_ACCOUNT_MESSAGE = "This account has been deactivated"
# When the service answers 429 without a usable Retry-After.
DEFAULT_RETRY_AFTER_SECONDS = 60
CONFIG_KEYS = ("service_url", "secret_path", "timeout_seconds")
DEFAULT_TIMEOUT_SECONDS = 10

LoginResult = Optional[Tuple[str, Optional[Callable[[Any], Awaitable[None]]]]]


# ---------------------------------------------------------------------------
# Errors that reach the client.
#
# THE TRAP. A password-auth callback cannot simply raise a SynapseError to
# answer the client: Synapse's PasswordAuthProvider.check_auth and
# check_3pid_auth (synapse/handlers/auth.py) run each callback as
#
#     try:
#         result = await delay_cancellation(callback(...))
#     except CancelledError:          # twisted.internet.defer.CancelledError
#         raise
#     except Exception as e:
#         logger.warning("Failed to run module API callback %s: %s", callback, e)
#         continue
#
# so any ordinary exception only becomes a warning, and Synapse goes on to its
# own password database and finally answers 403 M_FORBIDDEN "Invalid username
# or password": exactly what a person must not be told when DAARION Auth is
# down or their account is deactivated. Only Twisted's CancelledError gets
# through. On the way out, synapse/http/server.py return_json_error checks
# `f.check(SynapseError)` BEFORE `f.check(CancelledError)`, so an exception that
# is both a SynapseError (or a subclass such as LimitExceededError) and a
# CancelledError passes the callback loop and is then answered to the client
# as the SynapseError it also is: its status, errcode, extra fields
# (retry_after_ms) and headers (Retry-After). Nothing between the two (the
# login servlet, validate_login, _async_render_wrapper) catches CancelledError
# or treats it differently from other exceptions, and validate_login only
# counts a failed attempt for LoginError, which these are not.
#
# Checked by reading the source of, and by tests against, Synapse 1.163.2
# (synapse-module/tests/test_against_synapse.py runs a real Synapse). If a
# future Synapse changes either of the two places above, that test fails: the
# client would then get 403 M_FORBIDDEN (or 499) instead of 403
# M_USER_DEACTIVATED / 429 / 503.
# ---------------------------------------------------------------------------


class SignInUnavailable(SynapseError, CancelledError):
    """503 M_UNKNOWN: DAARION Auth or the service cannot decide right now.

    A SynapseError *and* a Twisted CancelledError: see THE TRAP above.
    """

    def __init__(self) -> None:
        SynapseError.__init__(self, 503, UNAVAILABLE_MESSAGE, Codes.UNKNOWN)


class AccountDeactivated(UserDeactivatedError, CancelledError):
    """403 M_USER_DEACTIVATED: DAARION says this person is not active.

    A SynapseError *and* a Twisted CancelledError: see THE TRAP above.
    """

    def __init__(self) -> None:
        UserDeactivatedError.__init__(self, DEAD_ACCOUNT_MESSAGE)


class TooManyAttempts(LimitExceededError, CancelledError):
    """429 M_LIMIT_EXCEEDED with retry_after_ms and a Retry-After header.

    A SynapseError *and* a Twisted CancelledError: see THE TRAP above.
    """

    def __init__(self, retry_after_ms: int) -> None:
        try:
            # Synapse >= 1.104: LimitExceededError(limiter_name, code, retry_after_ms, ...)
            LimitExceededError.__init__(
                self, limiter_name="matrix_provisioner_password", retry_after_ms=retry_after_ms
            )
        except TypeError:
            # Older Synapse: no limiter_name.
            LimitExceededError.__init__(self, retry_after_ms=retry_after_ms)
        if not getattr(self, "headers", None):
            self.headers = {"Retry-After": str(math.ceil(retry_after_ms / 1000))}


class _TimedOut(Exception):
    pass


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class PasswordModuleConfig:
    """The parsed `config:` of the module entry in homeserver.yaml."""

    def __init__(
        self, service_url: str, secret_path: str, secret: str, timeout_seconds: float
    ) -> None:
        self.service_url = service_url
        self.endpoint = service_url.rstrip("/") + ENDPOINT_PATH
        self.secret_path = secret_path
        self.secret = secret
        self.timeout_seconds = timeout_seconds

    def __repr__(self) -> str:  # never shows the secret
        return "PasswordModuleConfig(service_url=%r, secret_path=%r, timeout_seconds=%r)" % (
            self.service_url,
            self.secret_path,
            self.timeout_seconds,
        )

    @classmethod
    def parse(cls, config: Any) -> "PasswordModuleConfig":
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise ConfigError("the module's config must be a mapping")
        unknown = sorted(str(k) for k in config if k not in CONFIG_KEYS)
        if unknown:
            raise ConfigError(
                "unknown setting(s) %s; known: %s" % (", ".join(unknown), ", ".join(CONFIG_KEYS))
            )

        service_url = config.get("service_url")
        if not isinstance(service_url, str) or not service_url.strip():
            raise ConfigError(
                "service_url is required: the base URL of matrix-provisioner,"
                ' e.g. "http://127.0.0.1:7030"',
                ("service_url",),
            )
        service_url = service_url.strip()
        parts = urllib.parse.urlsplit(service_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "service_url must be an http:// or https:// URL with a host, got %r"
                % (service_url,),
                ("service_url",),
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                "service_url must not have a query or fragment, got %r" % (service_url,),
                ("service_url",),
            )

        secret_path = config.get("secret_path")
        if not isinstance(secret_path, str) or not secret_path.strip():
            raise ConfigError(
                "secret_path is required: a file holding matrix-provisioner's"
                " PASSWORD_MODULE_SECRET",
                ("secret_path",),
            )
        try:
            with open(secret_path, encoding="utf-8") as f:
                secret = f.read().strip()
        except FileNotFoundError:
            raise ConfigError(
                "the password module secret file %s does not exist; write"
                " matrix-provisioner's PASSWORD_MODULE_SECRET into it" % (secret_path,),
                ("secret_path",),
            )
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                "cannot read the password module secret file %s: %s" % (secret_path, e),
                ("secret_path",),
            )
        if not secret:
            raise ConfigError(
                "the password module secret file %s is empty; write"
                " matrix-provisioner's PASSWORD_MODULE_SECRET into it" % (secret_path,),
                ("secret_path",),
            )
        if not secret.isascii() or not secret.isprintable():
            # It goes into an HTTP header.
            raise ConfigError(
                "the password module secret in %s must be printable ASCII on one line"
                % (secret_path,),
                ("secret_path",),
            )

        timeout = config.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(
                "timeout_seconds must be a positive number, got %r" % (timeout,),
                ("timeout_seconds",),
            )
        return cls(service_url, secret_path, secret, float(timeout))


# ---------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------


class PasswordAuthProvider:
    """m.login.password (user or email identifier) checked by matrix-provisioner."""

    def __init__(self, config: PasswordModuleConfig, api: ModuleApi) -> None:
        self._config = config
        self._api = api
        self._http_client = api.http_client
        reactor = getattr(self._http_client, "reactor", None)
        if reactor is None or not hasattr(reactor, "callLater"):
            from twisted.internet import reactor  # type: ignore[no-redef]
        self._reactor = reactor
        self._authorization = b"Bearer " + config.secret.encode("ascii")
        api.register_password_auth_provider_callbacks(
            auth_checkers={("m.login.password", ("password",)): self.check_auth},
            check_3pid_auth=self.check_3pid_auth,
        )
        logger.info(
            "matrix_provisioner_synapse: password sign-in is checked by %s (timeout %g s)",
            config.endpoint,
            config.timeout_seconds,
        )

    @staticmethod
    def parse_config(config: Any) -> PasswordModuleConfig:
        return PasswordModuleConfig.parse(config)

    async def check_auth(self, username: str, login_type: str, login_dict: dict) -> LoginResult:
        """`m.login.password` with a user identifier: `username` is what the
        client gave, a localpart or a full Matrix id."""
        if login_type != "m.login.password":
            return None
        password = login_dict.get("password")
        if not isinstance(username, str) or not username or not isinstance(password, str):
            return None
        return await self._ask(username, password)

    async def check_3pid_auth(self, medium: str, address: str, password: str) -> LoginResult:
        """`m.login.password` with a third-party identifier; Synapse has already
        canonicalised (lower-cased) an email address."""
        if medium != "email":
            return None
        if not isinstance(address, str) or not address or not isinstance(password, str):
            return None
        return await self._ask(address, password)

    # -- one question to the service -----------------------------------------

    async def _ask(self, user: str, password: str) -> LoginResult:
        # Read before the first await: the request's logging context is the
        # current one only until then.
        client_ip = _client_ip()
        body = {"user": user, "password": password}
        if client_ip:
            body["client_ip"] = client_ip
        data = json.dumps(body).encode("utf-8")
        started = time.monotonic()
        try:
            status, retry_after, raw = await self._post(data)
        except _TimedOut:
            logger.warning(
                "Password sign-in of %r: %s did not answer within %g s; answering 503",
                user,
                self._config.endpoint,
                self._config.timeout_seconds,
            )
            raise SignInUnavailable()
        except Exception as e:
            logger.warning(
                "Password sign-in of %r: cannot reach %s (%s: %s); answering 503",
                user,
                self._config.endpoint,
                type(e).__name__,
                e,
            )
            raise SignInUnavailable()
        elapsed_ms = (time.monotonic() - started) * 1000
        return self._outcome(user, status, retry_after, raw, elapsed_ms)

    async def _post(self, data: bytes) -> Tuple[int, List[bytes], bytes]:
        """POSTs to the service; (status, Retry-After values, body). Raises
        _TimedOut after timeout_seconds for the whole exchange (Synapse's own
        client waits 60 s for headers and forever for a body)."""
        deferred = run_in_background(self._exchange, data)
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            deferred.cancel()

        call = self._reactor.callLater(self._config.timeout_seconds, expire)
        try:
            return await make_deferred_yieldable(deferred)
        except Exception as e:
            if timed_out:
                raise _TimedOut() from e
            raise
        finally:
            if call.active():
                call.cancel()

    async def _exchange(self, data: bytes) -> Tuple[int, List[bytes], bytes]:
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"Accept": [b"application/json"],
                b"Authorization": [self._authorization],
            }
        )
        response = await self._http_client.request(
            "POST", self._config.endpoint, data=data, headers=headers
        )
        raw = await make_deferred_yieldable(readBody(response))
        retry_after = response.headers.getRawHeaders(b"retry-after") or []
        return response.code, retry_after, raw

    def _outcome(
        self, user: str, status: int, retry_after: List[bytes], raw: bytes, elapsed_ms: float
    ) -> LoginResult:
        payload = _json_object(raw)
        error = payload.get("error") if payload is not None else None
        shown = error if isinstance(error, str) else "no error code"

        if status == 200:
            user_id = payload.get("matrix_user_id") if payload is not None else None
            if isinstance(user_id, str) and self._is_local_user(user_id):
                logger.info(
                    "Password sign-in of %r: accepted as %s (200, %.0f ms)",
                    user,
                    user_id,
                    elapsed_ms,
                )
                return user_id, None
            logger.error(
                "Password sign-in of %r: %s answered 200 without a Matrix user id of"
                " this server (matrix_user_id %r); answering 503",
                user,
                self._config.endpoint,
                user_id,
            )
            raise SignInUnavailable()

        if status == 401 and error == "invalid_credentials":
            logger.info(
                "Password sign-in of %r: wrong email, username or password for DAARION"
                " (401 invalid_credentials, %.0f ms); Synapse's own checks go on",
                user,
                elapsed_ms,
            )
            return None

        if status == 404 and error == "unknown_user":
            logger.info(
                "Password sign-in of %r: not a DAARION person (404 unknown_user, %.0f ms);"
                " Synapse's own checks go on",
                user,
                elapsed_ms,
            )
            return None

        if status == 403 and error == "user_deactivated":
            logger.warning(
                "Password sign-in of %r: the DAARION account is deactivated"
                " (403 user_deactivated); answering 403 M_USER_DEACTIVATED",
                user,
            )
            raise AccountDeactivated()

        if status == 429:
            seconds = _retry_after_seconds(retry_after, payload)
            logger.warning(
                "Password sign-in of %r: too many attempts (429, retry after %d s);"
                " answering 429 M_LIMIT_EXCEEDED",
                user,
                seconds,
            )
            raise TooManyAttempts(seconds * 1000)

        if status == 503:
            logger.warning(
                "Password sign-in of %r: the service cannot reach DAARION Auth (503 %s);"
                " answering 503",
                user,
                shown,
            )
            raise SignInUnavailable()

        if status == 401:
            logger.error(
                "Password sign-in of %r: %s refused this module (401 %s): the secret"
                " in %s must be the service's PASSWORD_MODULE_SECRET. Every password"
                " sign-in fails with 503 until the two agree.",
                user,
                self._config.endpoint,
                shown,
                self._config.secret_path,
            )
            raise SignInUnavailable()

        logger.error(
            "Password sign-in of %r: unexpected answer %d (%s) from %s; answering 503",
            user,
            status,
            shown,
            self._config.endpoint,
        )
        raise SignInUnavailable()

    def _is_local_user(self, user_id: str) -> bool:
        if not user_id.startswith("@") or ":" not in user_id:
            return False
        try:
            return bool(self._api.is_mine(user_id))
        except Exception:
            return False


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _client_ip() -> str:
    """The address of the client whose /login this is, as Synapse saw it
    (X-Forwarded-For when the listener has x_forwarded); "" when unknown.

    Auth callbacks get no request, but the request's logging context carries
    a copy of what Synapse knows about it (synapse.logging.context.ContextRequest).
    """
    try:
        from synapse.logging.context import current_context

        request = getattr(current_context(), "request", None)
        ip = getattr(request, "ip_address", None)
        return ip if isinstance(ip, str) else ""
    except Exception:  # a Synapse without these internals: go without
        return ""


def _json_object(raw: bytes) -> Optional[dict]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _retry_after_seconds(values: List[bytes], payload: Optional[dict]) -> int:
    """Seconds from Retry-After (delta-seconds or an HTTP date), else from a
    `retry_after_ms` in the body, else DEFAULT_RETRY_AFTER_SECONDS."""
    for value in values:
        text = value.decode("latin-1").strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            if math.isfinite(number):
                return max(0, math.ceil(number))
            continue
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if when is None:
            continue
        if when.tzinfo is None:  # "-0000": UTC
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0, math.ceil(when.timestamp() - time.time()))
    ms = payload.get("retry_after_ms") if payload is not None else None
    if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0:
        return math.ceil(ms / 1000)
    return DEFAULT_RETRY_AFTER_SECONDS
