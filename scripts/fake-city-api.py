#!/usr/bin/env python3
"""fake-city-api.py — DAARION.city's room API for benchmarks (CONTRACT.md
section 8), served on 127.0.0.1 from a JSON file holding every room:
`GET /v1/rooms?updated_since=&cursor=&limit=` pages it as DAARION.city does
(the cursor is an offset), so the service reads it a page at a time.

Usage: fake-city-api.py PORT FILE      (FILE: {"rooms": [...]}, re-read when it changes)
"""
import json
import os
import sys
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PORT, FILE = int(sys.argv[1]), sys.argv[2]
cache = {"mtime": None, "rooms": []}


def rooms():
    mtime = os.stat(FILE).st_mtime_ns
    if cache["mtime"] != mtime:
        with open(FILE) as f:
            cache["rooms"] = json.load(f)["rooms"]
        cache["mtime"] = mtime
    return cache["rooms"]


def when(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/v1/rooms":
            self.send_error(404)
            return
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        listed = rooms()
        if "updated_since" in query:
            since = when(query["updated_since"])
            listed = [r for r in listed if when(r["updated_at"]) >= since]
        start = int(query.get("cursor", "0"))
        limit = min(int(query.get("limit", "200")), 1000)
        page = listed[start : start + limit]
        more = start + limit < len(listed)
        body = json.dumps({"rooms": page, "next_cursor": str(start + limit) if more else None})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
