#!/usr/bin/env python3
"""Auth webhook for the auth specs (python3 standard library only).

Binds 127.0.0.1 on a free port and prints "<port> <pid>" once listening (the
readiness signal, as echo_server.py). Stops on SIGTERM and when its parent dies.

POST /auth with {"authData": {...}, "connectionData": {...}} answers by
authData.username:
  ann          200 JSON {"id": "ann-id", "clientData": {"c": 1}, "serverData": {"role": "admin"}}
  plain        200 text body "plain-id"
  empty        200 with an empty body
  supplier     200 JSON {"id": "sup", "token": "<authData.token>"}
  slow         200 JSON {"id": "slow"} after authData.ms milliseconds
  flaky        authData.fail_times times 504 (counted per authData.key), then 200 {"id": "flaky"}
  anything else 401 "no"
GET /last      200 JSON of the last /auth request: body and headers (lowercased names)
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from child_server import serve

MAX_BODY = 1024 * 1024
state = {"last": None, "flaky": {}}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def send(self, status, body=b"", content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/last":
            with lock:
                self.send(200, json.dumps(state["last"]).encode())
        else:
            self.send(404, b"not found", "text/plain")

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            return self.send(413, b"too large", "text/plain")
        raw = self.rfile.read(n)
        try:
            doc = json.loads(raw)
        except ValueError:
            return self.send(400, b"not json", "text/plain")
        with lock:
            state["last"] = {"body": doc, "headers": {k.lower(): v for k, v in self.headers.items()}}
        auth = doc.get("authData") or {}
        name = auth.get("username")
        if name == "ann":
            self.send(200, json.dumps({"id": "ann-id", "clientData": {"c": 1},
                                       "serverData": {"role": "admin"}}).encode())
        elif name == "plain":
            self.send(200, b"plain-id", "text/plain")
        elif name == "empty":
            self.send(200, b"", "text/plain")
        elif name == "supplier":
            self.send(200, json.dumps({"id": "sup", "token": auth.get("token")}).encode())
        elif name == "slow":
            time.sleep(int(auth.get("ms", 1000)) / 1000.0)
            self.send(200, json.dumps({"id": "slow"}).encode())
        elif name == "flaky":
            key = auth.get("key", "")
            with lock:
                seen = state["flaky"].get(key, 0)
                state["flaky"][key] = seen + 1
            if seen < int(auth.get("fail_times", 1)):
                self.send(504, b"try again", "text/plain")
            else:
                self.send(200, json.dumps({"id": "flaky"}).encode())
        else:
            self.send(401, b"no", "text/plain")


def main():
    serve(Handler)


if __name__ == "__main__":
    main()
