#!/usr/bin/env python3
"""HTTP test server for the HTTP client specs (python3 standard library only).

Binds 127.0.0.1 on a free port and, once listening, prints one line
"<port> <pid>" on stdout (flushed): reading that line is the readiness signal.
It stops on SIGTERM and when its parent process dies (so a crashed spec run
leaves no server behind); with --exit-on-stdin-eof also when stdin closes (for
io.popen(cmd, "w")). That is opt-in because a harness may run the specs with an
already closed stdin.

Endpoints (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS and PROPFIND; HEAD gets
the headers only):
  /echo          200, JSON: method, path, query, headers (names lowercased;
                 repeated headers joined with ", "), body (UTF-8, invalid bytes
                 replaced), body_hex, body_length, client_port (the client's
                 TCP port, to tell whether a connection was reused)
  /raw           200, the request body as is (application/octet-stream)
  /status/NNN    status NNN, body "status NNN" (no body for 1xx, 204, 304)
  /slow?ms=N     200 "slow" after N ms (each request has its own thread)
  /big?n=N       200 with N bytes of "0123456789" repeated; with &chunked=1
                 sent chunked (no Content-Length)
  /headers?k=v   200, every query pair sent as a response header, in order
  anything else  404
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

from child_server import serve

MAX_BODY = 64 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client can reuse connections
    server_version = "echo_server"

    def log_message(self, format, *args):  # keep the spec output clean
        pass

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        n = int(length)
        if n < 0 or n > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(n)

    def send(self, status, body=b"", content_type="text/plain", extra=()):
        self.send_response(status)
        for name, value in extra:
            self.send_header(name, value)
        bodyless = status < 200 or status in (204, 304)
        if not bodyless:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and not bodyless:
            self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        query = parse_qsl(url.query, keep_blank_values=True)
        body = self.read_body()
        if url.path == "/echo":
            headers = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = headers[key] + ", " + value if key in headers else value
            doc = {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": headers,
                "body": body.decode("utf-8", "replace"),
                "body_hex": body.hex(),
                "body_length": len(body),
                "client_port": self.client_address[1],
            }
            self.send(200, json.dumps(doc).encode(), "application/json")
        elif url.path == "/raw":
            self.send(200, body, "application/octet-stream")
        elif url.path.startswith("/status/"):
            status = int(url.path[len("/status/"):])
            self.send(status, ("status %d" % status).encode())
        elif url.path == "/slow":
            time.sleep(int(dict(query).get("ms", "1000")) / 1000.0)
            self.send(200, b"slow")
        elif url.path == "/big":
            self.send_big(int(dict(query).get("n", "0")), dict(query).get("chunked") == "1")
        elif url.path == "/headers":
            self.send(200, b"headers", extra=query)
        else:
            self.send(404, b"not found")

    def send_big(self, n, chunked):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        chunk = b"0123456789" * 6554
        while n > 0:
            part = chunk[:n]
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            else:
                self.wfile.write(part)
            n -= len(part)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any
    do_PROPFIND = handle_any  # a method curl knows nothing about


def exit_on_stdin_eof():
    def watch():
        while os.read(0, 4096):
            pass
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def main():
    stdin_eof = "--exit-on-stdin-eof" in sys.argv[1:]
    serve(Handler, exit_on_stdin_eof if stdin_eof else None)


if __name__ == "__main__":
    main()
