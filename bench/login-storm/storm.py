#!/usr/bin/env python3
"""Clients for bench/login-storm/run (run by hand, never by the tests).

  storm.py probe PORT OUT STOPFILE     one keep-alive connection sending, every
      2 ms, GET /health-check and a POST /api record read in turn, until
      STOPFILE exists; writes "<monotonic ns at send> <kind> <latency us>
      <status>" lines to OUT
  storm.py storm PORT N USER PASSWORD OUT
      opens N connections, then sends N POST /api/auth logins at once and
      waits for every answer; writes a JSON summary to OUT (start and end on
      the same monotonic clock as the probe, statuses, login latencies)
"""
import asyncio
import json
import os
import socket
import sys
import time


def http_request(method, path, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_response(sock, buf):
    """Reads one response with Content-Length from sock; returns (status, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return status, rest[length:]


def probe(port, out, stopfile):
    read = http_request("POST", "/api", b'{"body":[{"topic":"record","action":"read","recordName":"bench/read"}]}')
    health = http_request("GET", "/health-check")
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf, lines, i = b"", [], 0
    while not os.path.exists(stopfile):
        kind, req = ("health", health) if i % 2 == 0 else ("read", read)
        i += 1
        t0 = time.monotonic_ns()
        sock.sendall(req)
        status, buf = read_response(sock, buf)
        lines.append(f"{t0} {kind} {(time.monotonic_ns() - t0) / 1000:.0f} {status}\n")
        time.sleep(0.002)
    with open(out, "w") as f:
        f.writelines(lines)


async def storm(port, n, user, password, out):
    body = json.dumps({"username": user, "password": password}).encode()
    req = http_request("POST", "/api/auth", body)
    conns = []
    for _ in range(n):  # connect first: the storm is the logins, not the handshakes
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    go = asyncio.Event()
    results = []

    async def one(reader, writer):
        await go.wait()
        t0 = time.monotonic_ns()
        writer.write(req)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        await reader.readexactly(length)
        results.append((int(head.split()[1]), (time.monotonic_ns() - t0) / 1e6))
        writer.close()

    tasks = [asyncio.create_task(one(r, w)) for r, w in conns]
    await asyncio.sleep(0)
    start = time.monotonic_ns()
    go.set()
    await asyncio.gather(*tasks)
    end = time.monotonic_ns()
    statuses = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    lat = sorted(ms for _, ms in results)
    with open(out, "w") as f:
        json.dump({"start_ns": start, "end_ns": end, "logins": len(results), "statuses": statuses,
                   "login_p50_ms": lat[len(lat) // 2], "login_max_ms": lat[-1]}, f)


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        asyncio.run(storm(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]))
