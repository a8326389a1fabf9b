"""A DAARION person in a City Room, with matrix-nio (a Matrix client library
we did not write): it syncs (so Synapse shows it online), reads what agents
say, answers, sends and downloads files, and looks at agents' presence.
Driven by the test through stdin, one JSON command per line; one JSON
answer per line on stdout.

Usage: python nio_city_room.py HOMESERVER_URL MATRIX_USER_ID ACCESS_TOKEN ROOM_ID

Commands:
  {"cmd": "messages", "sender": S, "count": N, "timeout": SECONDS}
      -> {"messages": [{event_id, sender, msgtype, body, format, formatted_body,
                        reply_to, origin_server_ts, message_id, url, filename,
                        info}, ...]}
         every m.room.message from S seen so far, once N are seen
  {"cmd": "send", "body": B, "reply_to": EVENT_ID?, "mentions": [USER_ID]?}
      -> {"event_id": ...}
  {"cmd": "send_file", "base64": DATA, "name": N, "mimetype": M, "msgtype": T,
   "info": {...}?}
      -> {"event_id": ..., "mxc": ...}
         uploads DATA (as Element does, through the media repository) and
         sends it as a T (m.image, m.file, …) with info.size and info.mimetype
         set, plus the given info fields
  {"cmd": "download", "mxc": URI}
      -> {"base64": ..., "content_type": ...}   (authenticated media)
  {"cmd": "presence", "user_id": U} -> {"presence": ..., "last_active_ago": ...}
  {"cmd": "sync"} -> {"ok": true}
"""

import asyncio
import base64
import io
import json
import sys
import time

from nio import (
    AsyncClient,
    MemoryDownloadResponse,
    PresenceGetResponse,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)

FILTER = {"room": {"timeline": {"limit": 100}}}


class Person:
    def __init__(self, homeserver, user_id, token, room_id):
        self.client = AsyncClient(homeserver, user_id)
        self.client.access_token = token
        self.client.user_id = user_id
        self.client.device_id = "NIOTEST"
        self.room_id = room_id
        self.seen = {}  # event_id -> event source, in arrival order

    async def sync(self, timeout_ms=0):
        response = await self.client.sync(
            timeout=timeout_ms, sync_filter=FILTER, set_presence="online"
        )
        if not isinstance(response, SyncResponse):
            raise RuntimeError(f"sync: {response}")
        room = response.rooms.join.get(self.room_id)
        if room:
            for event in room.timeline.events:
                source = event.source
                if source.get("type") == "m.room.message":
                    self.seen.setdefault(source["event_id"], source)

    async def messages(self, sender, count, timeout):
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.seen.values() if e["sender"] == sender]
            if len(found) >= count or time.monotonic() > deadline:
                return [describe(e) for e in found]
            await self.sync(timeout_ms=1000)

    async def send(self, body, reply_to=None, mentions=None):
        content = {"msgtype": "m.text", "body": body}
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        if mentions:
            content["m.mentions"] = {"user_ids": mentions}
        response = await self.client.room_send(self.room_id, "m.room.message", content)
        if not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"room_send: {response}")
        return response.event_id

    async def send_file(self, data, name, mimetype, msgtype, info=None):
        upload, _ = await self.client.upload(
            io.BytesIO(data), content_type=mimetype, filename=name, filesize=len(data)
        )
        if not isinstance(upload, UploadResponse):
            raise RuntimeError(f"upload: {upload}")
        content = {
            "msgtype": msgtype,
            "body": name,
            "filename": name,
            "url": upload.content_uri,
            "info": {"size": len(data), "mimetype": mimetype, **(info or {})},
        }
        response = await self.client.room_send(self.room_id, "m.room.message", content)
        if not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"room_send: {response}")
        return {"event_id": response.event_id, "mxc": upload.content_uri}

    async def download(self, mxc):
        response = await self.client.download(mxc=mxc)
        if not isinstance(response, MemoryDownloadResponse):
            raise RuntimeError(f"download: {response}")
        return {
            "base64": base64.b64encode(response.body).decode(),
            "content_type": response.content_type,
        }

    async def presence(self, user_id):
        response = await self.client.get_presence(user_id)
        if not isinstance(response, PresenceGetResponse):
            raise RuntimeError(f"get_presence: {response}")
        return {"presence": response.presence, "last_active_ago": response.last_active_ago}


def describe(source):
    content = source.get("content", {})
    return {
        "event_id": source["event_id"],
        "sender": source["sender"],
        "msgtype": content.get("msgtype"),
        "body": content.get("body"),
        "format": content.get("format"),
        "formatted_body": content.get("formatted_body"),
        "reply_to": content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id"),
        "origin_server_ts": source.get("origin_server_ts"),
        "message_id": content.get("city.daarion.message_id"),
        "url": content.get("url"),
        "filename": content.get("filename"),
        "info": content.get("info"),
    }


async def main() -> int:
    homeserver, user_id, token, room_id = sys.argv[1:5]
    person = Person(homeserver, user_id, token, room_id)
    loop = asyncio.get_running_loop()
    try:
        await person.sync()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            command = json.loads(line)
            try:
                cmd = command["cmd"]
                if cmd == "messages":
                    answer = {"messages": await person.messages(
                        command["sender"], command["count"], command.get("timeout", 30))}
                elif cmd == "send":
                    answer = {"event_id": await person.send(
                        command["body"], command.get("reply_to"), command.get("mentions"))}
                elif cmd == "send_file":
                    answer = await person.send_file(
                        base64.b64decode(command["base64"]), command["name"],
                        command["mimetype"], command["msgtype"], command.get("info"))
                elif cmd == "download":
                    answer = await person.download(command["mxc"])
                elif cmd == "presence":
                    answer = await person.presence(command["user_id"])
                elif cmd == "sync":
                    await person.sync()
                    answer = {"ok": True}
                else:
                    answer = {"error": f"unknown command {cmd}"}
            except Exception as e:  # reported to the test, which fails with it
                answer = {"error": repr(e)}
            print(json.dumps(answer), flush=True)
    finally:
        await person.client.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
