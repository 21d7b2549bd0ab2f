#!/usr/bin/env python3
"""Hostile HTTP: does a healthy client stay served while others misbehave?

Starts bin/moonstream (127.0.0.1, port 0, its own data directory) and runs,
one phase after the other, each bounded in time and connection count:

  slowloris   N connections sending request headers one byte at a time
  idle        N keep-alive connections that made one request and then wait
  half-body   N requests announcing a body and stopping half-way
  burst       M connections opened at once (10 000 in the long form)
  flood       C keep-alive clients posting as fast as they can (its ratio is
              printed, not checked: a flood takes its share of the one thread)
  big-header  one request with 64 KiB of headers (expects 431, not a crash)

During the slowloris, idle, half-body and flood phases a healthy client (a
separate process, so this script's own work does not slow it) makes
sequential requests, each on a new connection, and its median latency is
compared with the median measured alone first: "ratio" is that slowdown.
The script checks that slow connections are dropped after connectionTimeout,
that the server still answers at the end, and that it exits 0 on SIGTERM.
All traffic goes to 127.0.0.1.

  python3 tests/hostile.py                      long form: 1000 slow, 10 000 at once
  python3 tests/hostile.py --short              the CI form: 300 slow, 2000 at once
"""
import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msproc  # noqa: E402

BODY = json.dumps({"body": [{"topic": "record", "action": "write", "recordName": "healthy", "data": {"n": 1}},
                            {"topic": "record", "action": "read", "recordName": "healthy"}]})
REQUEST = ("POST /api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)).encode()


def healthy_client(port, seconds):
    """Run as a child process: sequential requests, one connection each, for
    `seconds`; prints the latencies (ms) as JSON."""
    lat, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(REQUEST)
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            if not data.startswith(b"HTTP/1.1 200"):
                errors += 1
                continue
            lat.append((time.monotonic() - t) * 1000)
        except OSError:
            errors += 1
    print(json.dumps({"lat": lat, "errors": errors}))


def start_healthy(port, seconds):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--healthy-client", str(port), str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def finish_healthy(proc):
    out, _ = proc.communicate(timeout=120)
    r = json.loads(out)
    return r["lat"], r["errors"]


def median(v):
    return statistics.median(v) if v else float("inf")


class Phase:
    def __init__(self, name):
        self.name, self.notes, self.failures = name, [], []


def open_many(port, n, nonblocking=True):
    """Opens up to n connections (non-blocking connect); returns the sockets."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def alive_count(socks):
    """Connections the server has not closed: a peek that would block (no EOF,
    no answer waiting) means the server still holds the connection open."""
    alive = 0
    for s in socks:
        try:
            s.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def with_healthy(port, seconds, phase, baseline, work):
    """Runs work(deadline) while the healthy client runs; records the ratio."""
    proc = start_healthy(port, seconds)
    work(time.monotonic() + seconds)
    lat, errors = finish_healthy(proc)
    ratio = median(lat) / baseline
    phase.ratio = ratio
    phase.notes.append("healthy client: %d requests, median %.2f ms, %d errors, ratio %.2f"
                       % (len(lat), median(lat), errors, ratio))
    if errors:
        phase.failures.append("%d healthy requests failed" % errors)
    return ratio


def slowloris(port, n, seconds, baseline, limit_ratio):
    ph = Phase("slowloris")
    socks = open_many(port, n)
    header = b"POST /api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 100000
    pos = [0] * len(socks)
    sent = [0]

    def work(deadline):
        while time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if s is None:
                    continue
                try:
                    s.send(header[pos[i]:pos[i] + 1])
                    pos[i] += 1
                    sent[0] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    socks[i] = None
            time.sleep(0.05)  # pacing: a byte per connection every ~50 ms
    ratio = with_healthy(port, seconds, ph, baseline, work)
    live = [s for s in socks if s is not None]
    ph.notes.append("%d slow connections, %d header bytes sent, %d still open" % (n, sent[0], alive_count(live)))
    if ratio > limit_ratio:
        ph.failures.append("healthy client slowed %.2fx (limit %.1fx)" % (ratio, limit_ratio))
    close_all(live)
    return ph


def stalled(name, port, n, preamble, read_reply, seconds, baseline, limit_ratio, timeout_s):
    """n connections that send preamble (and read the answer if read_reply)
    and then stay open doing nothing: a healthy client must not slow down, and
    the server must close them after connectionTimeout."""
    ph = Phase(name)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(preamble)
        if read_reply:
            s.recv(4096)
        s.setblocking(False)
        socks.append(s)
    ratio = with_healthy(port, seconds, ph, baseline, lambda deadline: time.sleep(max(0, deadline - time.monotonic())))
    if ratio > limit_ratio:
        ph.failures.append("healthy client slowed %.2fx (limit %.1fx)" % (ratio, limit_ratio))
    wait_closed(ph, socks, timeout_s)
    return ph


def idle(port, n, seconds, baseline, limit_ratio, timeout_s):
    return stalled("idle keep-alive", port, n, b"GET /health-check HTTP/1.1\r\nHost: x\r\n\r\n", True,
                   seconds, baseline, limit_ratio, timeout_s)


def wait_closed(ph, socks, timeout_s):
    """The server must drop these connections after connectionTimeout."""
    deadline = time.monotonic() + timeout_s + 5
    left = alive_count(socks)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = alive_count(socks)
    ph.notes.append("%d of %d connections still open within connectionTimeout (%ds) + 5 s" % (left, len(socks), timeout_s))
    if left:
        ph.failures.append("%d idle/stalled connections never closed" % left)
    close_all(socks)


def half_body(port, n, seconds, baseline, limit_ratio, timeout_s):
    preamble = (b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\n\r\n"
                + b'{"body":[' + b" " * 9000)
    return stalled("half-body", port, n, preamble, False, seconds, baseline, limit_ratio, timeout_s)


def burst(port, n, server):
    ph = Phase("burst")
    t = time.monotonic()
    socks = open_many(port, n)
    # every connection sends a request; count answers within a bounded time
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
        pending[s] = b""
    answered = refused = 0
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for key, ev in sel.select(0.5):
            s = key.fileobj
            try:
                if ev & selectors.EVENT_WRITE:
                    s.send(b"GET /health-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(4096)
                if data.startswith(b"HTTP/1.1 200"):
                    answered += 1
                elif not data:
                    refused += 1
                else:
                    refused += 1
            except OSError:
                refused += 1
            sel.unregister(s)
            del pending[s]
            s.close()
    unfinished = len(pending)
    for s in pending:
        sel.unregister(s)
        s.close()
    ph.notes.append("%d connections at once: %d answered 200, %d refused/closed by the connection limit, "
                    "%d unanswered after 20 s, %.1fs" % (n, answered, refused, unfinished, time.monotonic() - t))
    if server.proc.poll() is not None:
        ph.failures.append("the server died")
    if answered == 0:
        ph.failures.append("no connection was served")
    return ph


def flood(port, clients, seconds, baseline):
    ph = Phase("flood")
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        conns.append(s)
    ok = [0]
    bad = [0]

    def work(deadline):
        buf = {s: b"" for s in conns}
        for s in conns:
            s.sendall(REQUEST)
            sel.register(s, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    bad[0] += 1
                    continue
                buf[s] += data
                # one answer per request: the JSON body ends the message
                while b"\r\n\r\n" in buf[s]:
                    head, _, rest = buf[s].partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) < length:
                        break
                    if head.startswith(b"HTTP/1.1 200"):
                        ok[0] += 1
                    else:
                        bad[0] += 1
                    buf[s] = rest[length:]
                    s.sendall(REQUEST)
    ph.flood_ratio = with_healthy(port, seconds, ph, baseline, work)
    del ph.ratio  # a flood takes its share of one thread: reported, not held to the slow-connection limit
    close_all(conns)
    ph.notes.append("%d flooding clients: %d requests answered 200 (%.0f/s), %d other"
                    % (clients, ok[0], ok[0] / seconds, bad[0]))
    if bad[0]:
        ph.failures.append("%d flood requests failed" % bad[0])
    return ph


def big_header(port):
    ph = Phase("big-header")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"GET /health-check HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
    except OSError:
        pass
    try:
        data = s.recv(4096)
    except OSError:
        data = b""
    s.close()
    status = data.split(b"\r\n")[0].decode(errors="replace") if data else "(connection closed)"
    ph.notes.append("64 KiB header: %s" % status)
    if data and not data.startswith(b"HTTP/1.1 431"):
        ph.failures.append("expected 431, got %s" % status)
    return ph


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--healthy-client":
        return healthy_client(int(sys.argv[2]), float(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="CI form: fewer connections, shorter phases")
    ap.add_argument("--slow", type=int, help="slow/idle/half-body connections (default 1000, short 300)")
    ap.add_argument("--burst", type=int, help="connections opened at once (default 10000, short 2000)")
    ap.add_argument("--seconds", type=float, help="length of each measured phase (default 8, short 3)")
    ap.add_argument("--max-ratio", type=float, default=2.0)
    ap.add_argument("--timeout", type=int, default=5, help="connectionTimeout given to the server (s)")
    args = ap.parse_args()
    slow = args.slow or (300 if args.short else 1000)
    nburst = args.burst or (2000 if args.short else 10000)
    seconds = args.seconds or (3 if args.short else 8)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, nburst + slow + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < nburst + 64:
        nburst = want - 64
        print("hostile: ulimit -n allows only %d connections at once" % nburst)

    tmp = tempfile.mkdtemp(prefix="moonstream-hostile-")
    config = msproc.write_config(tmp, "connectionTimeout = %d" % args.timeout)
    server = msproc.Server(config)
    phases = []
    try:
        lat, errors = finish_healthy(start_healthy(server.port, seconds))
        baseline = median(lat)
        print("baseline: healthy client alone: %d requests, median %.2f ms, %d errors"
              % (len(lat), baseline, errors), flush=True)
        steps = [
            lambda: slowloris(server.port, slow, seconds, baseline, args.max_ratio),
            lambda: idle(server.port, slow, seconds, baseline, args.max_ratio, args.timeout),
            lambda: half_body(server.port, slow, seconds, baseline, args.max_ratio, args.timeout),
            lambda: burst(server.port, nburst, server),
            lambda: flood(server.port, 32, seconds, baseline),
            lambda: big_header(server.port),
        ]
        for step in steps:
            ph = step()
            phases.append(ph)
            print("%-16s %s" % (ph.name + ":", "; ".join(ph.notes)), flush=True)
            for f in ph.failures:
                print("  FAIL:", f, flush=True)
            if server.proc.poll() is not None:
                break
        # still serving?
        lat, errors = finish_healthy(start_healthy(server.port, 1))
        final = Phase("after")
        final.notes.append("%d requests, %d errors" % (len(lat), errors))
        if errors or not lat:
            final.failures.append("the server no longer answers")
        phases.append(final)
        print("%-16s %s" % ("after:", final.notes[0]))
    finally:
        code, log = server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        phases.append(Phase("exit"))
        phases[-1].failures.append("server exit code %s on SIGTERM" % code)
        print(log[-2000:])
    ratios = [p.ratio for p in phases if hasattr(p, "ratio")]
    failed = sum(1 for p in phases if p.failures)
    print("hostile: worst slowdown ratio %.2f (limit %.1f) with %d slow connections; %d connections at once"
          % (max(ratios) if ratios else float("nan"), args.max_ratio, slow, nburst))
    print("%d passed, %d failed" % (len(phases) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
