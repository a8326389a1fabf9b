"""Conversations with an agent, measured from the person's side (issue 22):
a DAARION person in a direct chat with an agent, with matrix-nio syncing
(long polls, same machine), sees

  - N agent messages sent through the service (`agent.message` webhook,
    from its `202` to the client seeing the event), next to N messages sent
    raw by the application service as the same puppet into the same room
    (from the send request to the client seeing it), one at a time, the two
    sides alternating;
  - STREAMS streamed answers of PARTS parts sent PART_MS apart: the edits the
    client sees per message and per second, and the delay from the last
    part's `202` to the client seeing the final text.

Prints one JSON line per measurement. Run by scripts/bench.sh (part
"conversations"), which starts Synapse (with the service's application
service registration) and the service on the registration's port.

Usage: python bench-conversation.py SERVICE SYNAPSE CITY_SECRET ADMIN_TOKEN AS_TOKEN
           REGISTRATION_SECRET PEOPLE_FILE RECEIVER_PORT N STREAMS PARTS PART_MS
(ADMIN_TOKEN: the service's; RECEIVER_PORT: where CITY_EVENTS_URL points.)
"""

import asyncio
import hashlib
import hmac
import json
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nio import AsyncClient, RoomCreateResponse, RoomPreset, SyncResponse

(service, synapse, city_secret, admin_token, as_token, registration_secret,
 people_file, receiver_port, n, streams, parts, part_ms) = sys.argv[1:13]
n, streams, parts, part_ms = int(n), int(streams), int(parts), int(part_ms)


def call(url, method="GET", body=None, token=None, headers=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, method=method, data=data)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.status, json.loads(response.read() or b"{}")


def city(kind, data):
    """A signed DAARION.city event; returns when the service answered 202."""
    body = json.dumps({"id": f"bench-{uuid.uuid4()}", "type": kind,
                       "created_at": _now_rfc3339(), "data": data}).encode()
    t = str(int(time.time()))
    mac = hmac.new(city_secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    status, answer = call(service + "/v1/webhooks/city", "POST", body,
                          headers={"X-Daarion-Signature": f"t={t},v1={mac}"})
    assert status == 202, answer
    return answer


def _now_rfc3339():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


class Receiver(BaseHTTPRequestHandler):
    """DAARION.city's receiver: answers 200, remembers conversation starts."""
    started = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("type") == "matrix.conversation_started":
            Receiver.started[body["data"]["matrix_room_id"]] = body["data"]["conversation_id"]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Watcher:
    """The person's client, syncing all along as Element does (long polls):
    when each event was first seen."""

    def __init__(self, client, room_id):
        self.client, self.room_id = client, room_id
        self.seen = {}  # key -> monotonic time first seen
        self.edits = 0
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self):
        while True:
            response = await self.client.sync(timeout=30000, full_state=False)
            now = time.monotonic()
            if not isinstance(response, SyncResponse):
                raise RuntimeError(f"sync: {response}")
            room = response.rooms.join.get(self.room_id)
            for event in (room.timeline.events if room else []):
                content = event.source.get("content", {})
                self.seen.setdefault(event.source["event_id"], now)
                if "city.daarion.message_id" in content:
                    self.seen.setdefault(content["city.daarion.message_id"], now)
                new = content.get("m.new_content", {}).get("body")
                if new is not None:
                    self.seen.setdefault("text:" + new, now)
                    self.edits += 1

    async def until(self, keys, timeout=60):
        deadline = time.monotonic() + timeout
        while not all(k in self.seen for k in keys):
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not seen: {[k for k in keys if k not in self.seen]}")
            await asyncio.sleep(0.001)


async def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(receiver_port)), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with open(people_file) as f:
        _, person = f.readline().split()
    # A Synapse admin (shared-secret registration) logs the person in.
    _, nonce = call(f"{synapse}/_synapse/admin/v1/register")
    name = f"bench-admin-{uuid.uuid4().hex[:8]}"
    mac = hmac.new(registration_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\0".join([nonce["nonce"].encode(), name.encode(), b"bench-password", b"admin"]))
    _, admin = call(f"{synapse}/_synapse/admin/v1/register", "POST", {
        "nonce": nonce["nonce"], "username": name, "password": "bench-password", "admin": True,
        "mac": mac.hexdigest()})
    _, login = call(f"{synapse}/_synapse/admin/v1/users/{urllib.request.quote(person)}/login",
                    "POST", {}, admin["access_token"])
    server_name = person.split(":", 1)[1]
    agent_id = f"a_bench_{uuid.uuid4().hex[:8]}"
    slug = agent_id.replace("_", "-")
    city("agent.created", {"agent_id": agent_id, "slug": slug, "display_name": "Bench",
                           "accepts_direct_chats": True})
    puppet = f"@agent-{slug}:{server_name}"
    for _ in range(600):
        _, agent = call(f"{service}/v1/agents/{agent_id}", token=admin_token)
        if agent.get("state") == "ready":
            break
        await asyncio.sleep(0.1)
    client = AsyncClient(synapse, person)
    client.access_token, client.user_id, client.device_id = login["access_token"], person, "BENCH"
    await client.sync(timeout=0)
    created = await client.room_create(is_direct=True, invite=[puppet],
                                       preset=RoomPreset.trusted_private_chat)
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    for _ in range(600):
        if room_id in Receiver.started:
            break
        await asyncio.sleep(0.1)
    conversation = Receiver.started[room_id]
    watcher = Watcher(client, room_id)
    watcher.start()

    service_ms, raw_ms = [], []
    for i in range(n):
        message_id = f"bench-{uuid.uuid4().hex}"
        # Blocking calls go to a thread: the client keeps syncing meanwhile.
        await asyncio.to_thread(city, "agent.message", {
            "message_id": message_id, "agent_id": agent_id,
            "conversation_id": conversation, "body": f"through the service {i}"})
        accepted = time.monotonic()
        await watcher.until([message_id])
        service_ms.append((watcher.seen[message_id] - accepted) * 1000)
        txn = uuid.uuid4().hex
        path = (f"/_matrix/client/v3/rooms/{urllib.request.quote(room_id)}/send/m.room.message/{txn}"
                f"?user_id={urllib.request.quote(puppet)}")
        # The raw side is timed from the request (its event exists only
        # once Synapse answers); the service's from DAARION.city's 202.
        issued = time.monotonic()
        _, sent = await asyncio.to_thread(
            call, synapse + path, "PUT", {"msgtype": "m.text", "body": f"raw {i}"}, as_token)
        await watcher.until([sent["event_id"]])
        raw_ms.append((watcher.seen[sent["event_id"]] - issued) * 1000)
    def summary(v):
        return {"p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1)}

    print(json.dumps({"mode": "conversation-message-seen", "messages": n,
                      "service": summary(service_ms), "raw_appservice_send": summary(raw_ms),
                      "p50_ratio": round(percentile(service_ms, 0.5) / percentile(raw_ms, 0.5), 2)}),
          flush=True)

    per_stream = []
    for s in range(streams):
        message_id = f"stream-{uuid.uuid4().hex}"
        edits_before = watcher.edits
        words = [f"s{s}w{k}" for k in range(1, parts + 1)]
        begin = time.monotonic()
        for k in range(1, parts + 1):
            await asyncio.to_thread(city, "agent.message", {
                "message_id": message_id, "agent_id": agent_id, "conversation_id": conversation,
                "body": " ".join(words[:k]), "final": k == parts})
            rest = begin + k * part_ms / 1000 - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        last = time.monotonic()
        final = "text:" + " ".join(words)
        await watcher.until([message_id, final])
        edits = watcher.edits - edits_before
        window = max(watcher.seen[final] - watcher.seen[message_id], 0.001)
        per_stream.append({"edits": edits, "edits_per_second": edits / window,
                           "final_after_last_part_ms": (watcher.seen[final] - last) * 1000})
    print(json.dumps({
        "mode": "streamed-answer", "streams": streams, "parts": parts, "part_ms": part_ms,
        "edits_per_message_median": statistics.median(p["edits"] for p in per_stream),
        "edits_per_second_median": round(statistics.median(p["edits_per_second"] for p in per_stream), 1),
        "final_after_last_part_ms_p50": round(statistics.median(
            p["final_after_last_part_ms"] for p in per_stream), 1),
        "final_after_last_part_ms_max": round(max(p["final_after_last_part_ms"] for p in per_stream), 1),
    }), flush=True)
    watcher.task.cancel()
    await client.close()
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
