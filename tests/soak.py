#!/usr/bin/env python3
"""Soak: is the server's memory bounded under sustained load?

Starts bin/moonstream (127.0.0.1, port 0, its own data directory) and keeps
it busy for --seconds with --clients keep-alive clients (threads) doing a mix
of record writes (over a fixed set of names, so the data itself stops
growing), path writes, reads, heads, list writes, event emits, RPCs to a
missing provider, auth requests, malformed bodies, and reconnecting now and
then. The server's RSS is sampled every second. Printed: the RSS curve in ten
steps, the requests served, and the growth after warm-up (the first 30% of
the run, at least 10 s): the median RSS of the last third of the remaining
samples minus that of the first third (medians, so LevelDB's memtable
filling and flushing does not count as growth) must stay below
--max-growth-mb.

  python3 tests/soak.py --seconds 600           long form (10 minutes)
  python3 tests/soak.py --seconds 60            short form
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msproc  # noqa: E402


def client(port, rng, stop, counts, errors):
    conn = msproc.connect(port)
    while not stop.is_set():
        r = rng.random()
        name = "soak/%d" % rng.randrange(2000)
        try:
            if r < 0.30:
                cmds = [{"topic": "record", "action": "write", "recordName": name,
                         "data": {"n": rng.randrange(1 << 30), "s": "x" * rng.randrange(500)}}]
            elif r < 0.40:
                cmds = [{"topic": "record", "action": "write", "recordName": name, "path": "a.b[%d]" % rng.randrange(5),
                         "data": rng.randrange(100)}]
            elif r < 0.65:
                cmds = [{"topic": "record", "action": "read", "recordName": name},
                        {"topic": "record", "action": "head", "recordName": name}]
            elif r < 0.72:
                cmds = [{"topic": "list", "action": "write", "listName": "soak-list/%d" % rng.randrange(100),
                         "data": ["a", "b", str(rng.random())]}]
            elif r < 0.82:
                cmds = [{"topic": "event", "action": "emit", "eventName": "soak", "data": {"i": rng.random()}}]
            elif r < 0.87:
                cmds = [{"topic": "rpc", "action": "make", "rpcName": "nobody", "data": 1}]
            elif r < 0.92:
                conn.request("POST", "/api/auth", json.dumps({"username": "u%d" % rng.randrange(100)}),
                             {"Content-Type": "application/json"})
                res = conn.getresponse()
                res.read()
                counts[res.status] = counts.get(res.status, 0) + 1
                continue
            elif r < 0.96:
                conn.request("POST", "/api", '{"body":[{"topic":', {"Content-Type": "application/json"})
                res = conn.getresponse()
                res.read()
                counts[res.status] = counts.get(res.status, 0) + 1
                continue
            else:
                conn.close()
                conn = msproc.connect(port)
                cmds = [{"topic": "presence", "action": "query"}]
            status, _ = msproc.api(conn, cmds)
            counts[status] = counts.get(status, 0) + 1
        except (OSError, ValueError) as e:
            errors.append(repr(e))
            conn.close()
            conn = msproc.connect(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-growth-mb", type=float, default=8.0)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="moonstream-soak-")
    server = msproc.Server(msproc.write_config(tmp))
    stop = threading.Event()
    counts, errors, samples = {}, [], []
    threads = [threading.Thread(target=client, args=(server.port, random.Random(i), stop, counts, errors), daemon=True)
               for i in range(args.clients)]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1)  # sampling period
            if server.proc.poll() is not None:
                errors.append("the server died")
                break
            samples.append((time.monotonic() - t0, server.rss_kb()))
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        code, log = server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    served = sum(counts.values())
    print("soak: %.0fs, %d clients, %d requests (%.0f/s), statuses %s, %d client errors"
          % (args.seconds, args.clients, served, served / args.seconds,
             " ".join("%s=%d" % kv for kv in sorted(counts.items())), len(errors)))
    step = max(1, len(samples) // 10)
    print("RSS curve (MB): " + "  ".join("%ds:%.1f" % (t, kb / 1024) for t, kb in samples[::step]))
    warm = max(10, args.seconds * 0.3)
    after = [kb for t, kb in samples if t >= warm]
    failed = 0
    if code != 0:
        print("FAIL: server exit code %s on SIGTERM\n%s" % (code, log[-1500:]))
        failed += 1
    if errors:
        print("FAIL: client errors, first: %s" % errors[:3])
        failed += 1
    if len(after) >= 3:
        third = len(after) // 3
        first, last = statistics.median(after[:third]) / 1024, statistics.median(after[-third:]) / 1024
        peak = max(after) / 1024
        growth = last - first
        print("after warm-up (%.0fs): median %.1f MB in the first third, %.1f MB in the last, peak %.1f MB, "
              "growth %+.1f MB (limit %.1f MB)" % (warm, first, last, peak, growth, args.max_growth_mb))
        if growth > args.max_growth_mb:
            print("FAIL: RSS grew %.1f MB after warm-up" % growth)
            failed += 1
    else:
        print("FAIL: too few samples")
        failed += 1
    print("%d passed, %d failed" % (1 - min(failed, 1), min(failed, 1)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
