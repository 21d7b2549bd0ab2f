#!/usr/bin/env python3
"""Idle realtime clients for bench/ws-scale/run (run by hand, never by the tests).

  clients.py PORT PATH OPCODE N FIRST_IP FRAMES_JSON HEARTBEAT_MS
    Opens N WebSocket connections to 127.0.0.1:PORT PATH from source
    addresses 127.0.0.FIRST_IP, FIRST_IP+1, ... (10 000 per address: each has
    its own ephemeral ports), each one: the challenge, a login, then nothing
    but deepstream's heartbeat: a PING every HEARTBEAT_MS (spread over the
    interval), answered by the server's PONG. FRAMES_JSON holds the hex of
    the payloads (challenge, auth, ping, pong, accept, auth_ok) made by the
    server's own codecs; OPCODE 1 (text, json) or 2 (binary). Prints "ready N"
    once every client is logged in, then "pongs K lost L" at each SIGUSR1,
    and exits at SIGTERM.
"""
import asyncio
import json
import signal
import sys

PER_IP = 10000
CONCURRENCY = 200


def frame(opcode, payload):
    """A masked client frame (mask key 0: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


class Client(asyncio.Protocol):
    def __init__(self, shared, done):
        self.s, self.done, self.buf, self.state = shared, done, b"", "http"

    def connection_made(self, transport):
        self.t = transport
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        self.t.write((f"GET {self.s['path']} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode())

    def data_received(self, data):
        self.buf += data
        if self.state == "http":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.fail("handshake: " + self.buf[:60].decode(errors="replace"))
                return
            self.buf = self.buf[end + 4:]
            self.state = "challenge"
            self.t.write(self.s["challenge"])
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < off + n:
                return
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            self.message(payload)

    def message(self, payload):
        payload = self.s["key"](payload)
        if payload == self.s["pong"]:
            self.s["pongs"] += 1
        elif self.state == "challenge" and payload == self.s["accept"]:
            self.state = "auth"
            self.t.write(self.s["auth"])
        elif self.state == "auth" and payload == self.s["auth_ok"]:
            self.state = "ready"
            self.s["ready"].append(self.t)
            self.done.set_result(True)

    def fail(self, why):
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))

    def connection_lost(self, exc):
        self.s["lost"] += 1
        self.fail(f"connection lost in state {self.state} ({exc})")


async def main():
    port, path, opcode, n, first_ip = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    frames = {k: bytes.fromhex(v) for k, v in json.loads(sys.argv[6]).items()}
    heartbeat = int(sys.argv[7]) / 1000
    loop = asyncio.get_running_loop()

    def key(payload):  # json: the server's key order is its own; compare topic and action
        if opcode != 1:
            return payload
        try:
            m = json.loads(payload)
            return (m.get("topic"), m.get("action"))
        except ValueError:
            return None
    shared = {"path": path, "pongs": 0, "lost": 0, "pong": key(frames["pong"]), "accept": key(frames["accept"]),
              "auth_ok": key(frames["auth_ok"]), "ready": [], "key": key}
    for k in ("challenge", "auth"):
        shared[k] = frame(opcode, frames[k])
    ping = frame(opcode, frames["ping"])

    async def heartbeats():  # every logged-in client pings once per interval, spread evenly
        slices = 50
        while True:
            ready = shared["ready"]
            for k in range(slices):
                for t in ready[k::slices]:
                    if not t.is_closing():
                        t.write(ping)
                await asyncio.sleep(heartbeat / slices)

    beat = asyncio.create_task(heartbeats())
    sem = asyncio.Semaphore(CONCURRENCY)
    keep = []

    async def one(i):
        async with sem:
            done = loop.create_future()
            ip = f"127.0.0.{first_ip + i // PER_IP}"
            t, _ = await loop.create_connection(lambda: Client(shared, done), "127.0.0.1", port, local_addr=(ip, 0))
            keep.append(t)
            await asyncio.wait_for(done, 60)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(f"pongs {shared['pongs']} lost {shared['lost']}", flush=True))
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(True))
    await asyncio.gather(*(one(i) for i in range(n)))
    print(f"ready {n}", flush=True)
    await stop
    beat.cancel()
    for t in keep:
        t.close()


if __name__ == "__main__":
    asyncio.run(main())
