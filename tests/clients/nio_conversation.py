"""A DAARION person chatting with an AI agent in a direct chat, with
matrix-nio (a Matrix client library we did not write): opens the chat as
Element's "Start chat" does (a private room, the agent invited with
is_direct), talks, edits, deletes, reacts, replies in threads, and records
everything it sees: timeline events of every type, who is typing, read
receipts. Driven by the test through stdin, one JSON command per line; one
JSON answer per line on stdout.

Usage: python nio_conversation.py HOMESERVER_URL MATRIX_USER_ID ACCESS_TOKEN

Commands:
  {"cmd": "open", "agent": USER_ID, "timeout": S}
      -> {"room_id": R, "agent_membership": "join" | "leave" | "invite"}
         once the agent answered the invitation (or the timeout passed)
  {"cmd": "send", "body": B, "thread_of": EVENT_ID?} -> {"event_id": ...}
  {"cmd": "edit", "event_id": E, "body": B} -> {"event_id": ...}
  {"cmd": "redact", "event_id": E} -> {"event_id": ...}
  {"cmd": "react", "event_id": E, "key": K} -> {"event_id": ...}
  {"cmd": "events", "sender": S, "until": {"type": T, "path": [...], "equals": V}?,
   "timeout": S}
      -> {"events": [event source, ...]} every timeline event from S seen so
         far, once one matches `until` (a field at `path` equal to V)
  {"cmd": "typing", "user_id": U, "timeout": S} -> {"typing": true|false}
      true once U was seen typing
  {"cmd": "receipt", "user_id": U, "event_id": E, "timeout": S} -> {"read": true|false}
  {"cmd": "read", "event_id": E} -> {"ok": true}   (a read receipt up to E)
  {"cmd": "leave"} -> {"ok": true}
"""

import asyncio
import json
import sys
import time

from nio import (
    AsyncClient,
    ReceiptEvent,
    RoomCreateResponse,
    RoomLeaveResponse,
    RoomPreset,
    RoomReadMarkersResponse,
    RoomRedactResponse,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
)

FILTER = {"room": {"timeline": {"limit": 200}}}


class Person:
    def __init__(self, homeserver, user_id, token):
        self.client = AsyncClient(homeserver, user_id)
        self.client.access_token = token
        self.client.user_id = user_id
        self.client.device_id = "NIOCHAT"
        self.room_id = None
        self.timeline = {}  # event_id -> source, in arrival order
        self.typing = set()  # user ids ever seen typing
        self.receipts = set()  # (user_id, event_id)
        self.members = {}  # user_id -> membership, from the timeline

    async def sync(self, timeout_ms=0):
        response = await self.client.sync(timeout=timeout_ms, sync_filter=FILTER)
        if not isinstance(response, SyncResponse):
            raise RuntimeError(f"sync: {response}")
        room = response.rooms.join.get(self.room_id) if self.room_id else None
        if room:
            for event in room.timeline.events:
                source = event.source
                self.timeline.setdefault(source["event_id"], source)
                if source.get("type") == "m.room.member":
                    self.members[source["state_key"]] = source["content"].get("membership")
            for event in room.ephemeral:
                if isinstance(event, TypingNoticeEvent):
                    self.typing.update(event.users)
                elif isinstance(event, ReceiptEvent):
                    for r in event.receipts:
                        self.receipts.add((r.user_id, r.event_id))

    async def open(self, agent, timeout):
        response = await self.client.room_create(
            is_direct=True, invite=[agent], preset=RoomPreset.trusted_private_chat
        )
        if not isinstance(response, RoomCreateResponse):
            raise RuntimeError(f"room_create: {response}")
        self.room_id = response.room_id
        deadline = time.monotonic() + timeout
        while self.members.get(agent) in (None, "invite") and time.monotonic() < deadline:
            await self.sync(timeout_ms=1000)
        return {"room_id": self.room_id, "agent_membership": self.members.get(agent)}

    async def room_send(self, event_type, content):
        response = await self.client.room_send(self.room_id, event_type, content)
        if not isinstance(response, RoomSendResponse):
            raise RuntimeError(f"room_send: {response}")
        return response.event_id

    async def send(self, body, thread_of=None):
        content = {"msgtype": "m.text", "body": body}
        if thread_of:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_of,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": thread_of},
            }
        return await self.room_send("m.room.message", content)

    async def edit(self, event_id, body):
        new = {"msgtype": "m.text", "body": body}
        content = dict(new, body=f"* {body}")
        content["m.new_content"] = new
        content["m.relates_to"] = {"rel_type": "m.replace", "event_id": event_id}
        return await self.room_send("m.room.message", content)

    async def redact(self, event_id):
        response = await self.client.room_redact(self.room_id, event_id)
        if not isinstance(response, RoomRedactResponse):
            raise RuntimeError(f"room_redact: {response}")
        return response.event_id

    async def react(self, event_id, key):
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.room_send("m.reaction", content)

    async def events(self, sender, until, timeout):
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.timeline.values() if e["sender"] == sender]
            if until is None or any(matches(e, until) for e in found):
                return found
            if time.monotonic() > deadline:
                return found
            await self.sync(timeout_ms=1000)

    async def wait_for(self, check, timeout):
        deadline = time.monotonic() + timeout
        while not check() and time.monotonic() < deadline:
            await self.sync(timeout_ms=500)
        return check()


def matches(event, until):
    if until.get("type") and event.get("type") != until["type"]:
        return False
    value = event
    for key in until.get("path", []):
        if not isinstance(value, dict):
            return False
        value = value.get(key)
    return value == until.get("equals")


async def main() -> int:
    homeserver, user_id, token = sys.argv[1:4]
    person = Person(homeserver, user_id, token)
    loop = asyncio.get_running_loop()
    try:
        await person.sync()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            command = json.loads(line)
            timeout = command.get("timeout", 30)
            try:
                cmd = command["cmd"]
                if cmd == "open":
                    answer = await person.open(command["agent"], timeout)
                elif cmd == "send":
                    answer = {"event_id": await person.send(command["body"], command.get("thread_of"))}
                elif cmd == "edit":
                    answer = {"event_id": await person.edit(command["event_id"], command["body"])}
                elif cmd == "redact":
                    answer = {"event_id": await person.redact(command["event_id"])}
                elif cmd == "react":
                    answer = {"event_id": await person.react(command["event_id"], command["key"])}
                elif cmd == "events":
                    answer = {"events": await person.events(
                        command["sender"], command.get("until"), timeout)}
                elif cmd == "typing":
                    user = command["user_id"]
                    answer = {"typing": await person.wait_for(lambda: user in person.typing, timeout)}
                elif cmd == "receipt":
                    pair = (command["user_id"], command["event_id"])
                    answer = {"read": await person.wait_for(lambda: pair in person.receipts, timeout)}
                elif cmd == "read":
                    response = await person.client.room_read_markers(
                        person.room_id, command["event_id"], command["event_id"])
                    if not isinstance(response, RoomReadMarkersResponse):
                        raise RuntimeError(f"room_read_markers: {response}")
                    answer = {"ok": True}
                elif cmd == "leave":
                    response = await person.client.room_leave(person.room_id)
                    if not isinstance(response, RoomLeaveResponse):
                        raise RuntimeError(f"room_leave: {response}")
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
