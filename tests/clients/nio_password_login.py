"""Signs in the way Element X does, with m.login.password, using matrix-nio
(a Matrix client library we did not write), then syncs once.

Usage: NIO_PASSWORD=... python nio_password_login.py HOMESERVER_URL user|email IDENTIFIER

  user   IDENTIFIER is a localpart or a full Matrix id (m.id.user, through
         nio's AsyncClient.login)
  email  IDENTIFIER is an email address (m.id.thirdparty, medium email,
         through nio's login_raw)

The password comes from the environment (NIO_PASSWORD), never from argv.
Prints ONE JSON line and exits 0 whatever Synapse answered:
  {"user_id", "device_id", "joined_rooms": [...], "synced": true}
  {"error": "<errcode>", "status": <http status>, "retry_after_ms": <int or null>,
   "message": "<Synapse's error text>", "stage": "login" | "sync"}
A 429 is reported, not waited out. Exits non-zero only when it crashes
(bad arguments, Synapse unreachable).
"""

import asyncio
import json
import logging
import os
import sys

from nio import AsyncClient, AsyncClientConfig, ErrorResponse, LoginResponse, SyncResponse


def failure(stage, response):
    transport = getattr(response, "transport_response", None)
    return {
        "error": getattr(response, "status_code", None) or "M_UNKNOWN",
        "status": transport.status if transport is not None else None,
        "retry_after_ms": getattr(response, "retry_after_ms", None),
        "message": getattr(response, "message", None) or str(response),
        "stage": stage,
    }


async def main() -> int:
    if len(sys.argv) != 4 or sys.argv[2] not in ("user", "email"):
        print(__doc__, file=sys.stderr)
        return 2
    homeserver, kind, identifier = sys.argv[1:4]
    # nio logs every error body it fails to read as a success ("'user_id' is
    # a required property"); the JSON line says what happened.
    logging.getLogger("nio").setLevel(logging.CRITICAL)
    password = os.environ.get("NIO_PASSWORD")
    if password is None:
        print("NIO_PASSWORD is not set", file=sys.stderr)
        return 2

    # No retries: the caller wants to see a 429 (and a connection error is a crash).
    config = AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0, request_timeout=30)
    client = AsyncClient(homeserver, identifier if kind == "user" else "", config=config)
    try:
        if kind == "user":
            response = await client.login(password=password, device_name="nio password login")
        else:
            # nio's login() guesses "email" from an "@" without ":"; say it
            # explicitly instead. login_raw also sets the client's
            # access_token, user_id and device_id on success.
            response = await client.login_raw(
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": identifier},
                    "password": password,
                    "initial_device_display_name": "nio password login",
                }
            )
        if not isinstance(response, LoginResponse):
            print(json.dumps(failure("login", response)))
            return 0
        if not (client.access_token and client.user_id and client.device_id):
            # Older nio did not take over the session from login_raw.
            client.access_token = response.access_token
            client.user_id = response.user_id
            client.device_id = response.device_id

        sync = await client.sync(timeout=0, full_state=True)
        if not isinstance(sync, SyncResponse):
            if isinstance(sync, ErrorResponse):
                print(json.dumps(failure("sync", sync)))
                return 0
            raise RuntimeError(f"sync: {sync}")
        print(
            json.dumps(
                {
                    "user_id": response.user_id,
                    "device_id": response.device_id,
                    "joined_rooms": sorted(sync.rooms.join),
                    "synced": True,
                }
            )
        )
        return 0
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
