"""Logs in the way a DAARION app would, with matrix-nio (a Matrix client
library we did not write), using the `login` object that matrix-provisioner's
POST /v1/sso/login-token answered; then creates a room and sends a message.

Usage: python nio_sso_login.py HOMESERVER_URL MATRIX_USER_ID MESSAGE < login.json
Prints one JSON object: user_id, device_id, room_id, event_id (or "error").
"""

import asyncio
import json
import sys

from nio import AsyncClient, LoginResponse, RoomCreateResponse, RoomSendResponse, WhoamiResponse


async def main() -> int:
    homeserver, user_id, message = sys.argv[1], sys.argv[2], sys.argv[3]
    login = json.load(sys.stdin)
    client = AsyncClient(homeserver, user_id)
    try:
        response = await client.login_raw(dict(login, initial_device_display_name="nio SSO test"))
        if not isinstance(response, LoginResponse):
            print(json.dumps({"error": f"login: {response}"}))
            return 1
        whoami = await client.whoami()
        if not isinstance(whoami, WhoamiResponse):
            print(json.dumps({"error": f"whoami: {whoami}"}))
            return 1
        room = await client.room_create(name="nio SSO test")
        if not isinstance(room, RoomCreateResponse):
            print(json.dumps({"error": f"room_create: {room}"}))
            return 1
        sent = await client.room_send(
            room.room_id, "m.room.message", {"msgtype": "m.text", "body": message}
        )
        if not isinstance(sent, RoomSendResponse):
            print(json.dumps({"error": f"room_send: {sent}"}))
            return 1
        print(json.dumps({
            "user_id": whoami.user_id,
            "device_id": response.device_id,
            "room_id": room.room_id,
            "event_id": sent.event_id,
        }))
        return 0
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
