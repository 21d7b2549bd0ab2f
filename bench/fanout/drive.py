#!/usr/bin/env python3
"""Drives one fan-out measurement for bench/fanout/run (by hand, never in the tests).

  drive.py CLIENT_BIN PORT PATH OPCODE FRAMES_HEX CLIENTS PROCS SERVER_PID LAT BURST CONC EVENT

Starts PROCS client processes (bench/fanout/client.c) holding CLIENTS
subscribed clients between them, then:
  phase 1, one at a time: LAT emits (POST /api), each waits until every
    client has it; latency from the emit's send to each arrival;
  phase 2, burst: BURST emits with CONC HTTP requests in flight;
    deliveries/s = CLIENTS * BURST / (last arrival - first send).
The emit's data is the JSON string "~PHASE~SEND_NS~" that the clients look
for. CPU seconds used during the burst by the server, the client processes
and this driver come from /proc (utime + stime), so the report shows whether
the generator or the server was the bound. Prints one line of JSON.
"""
import http.client
import json
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time

PHASES = 4
SLOT_WORDS = 2 + 3 * PHASES + 4
HEAD_WORDS = 8
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def main():
    (client_bin, port, path, opcode, frames, clients, procs, server_pid, lat, burst, conc, event) = sys.argv[1:13]
    port, clients, procs, server_pid = int(port), int(clients), int(procs), int(server_pid)
    lat, burst, conc = int(lat), int(burst), int(conc)
    fd, shm_path = tempfile.mkstemp(prefix="moonstream-fanout-shm.")
    size = 8 * (HEAD_WORDS + procs * SLOT_WORDS)
    os.ftruncate(fd, size)
    shm = mmap.mmap(fd, size)

    def word(i):
        return int.from_bytes(shm[8 * i:8 * i + 8], "little")

    def slot_word(s, i):
        return word(HEAD_WORDS + s * SLOT_WORDS + i)

    def total(i):
        return sum(slot_word(s, i) for s in range(procs))

    def count(phase):
        return total(2 + phase)

    def last(phase):
        return max(slot_word(s, 2 + 2 * PHASES + phase) for s in range(procs))

    def wait_for(what, cond, seconds):
        deadline = time.monotonic() + seconds
        while not cond():
            if total(1) > 0:
                raise SystemExit(f"{what}: {total(1)} client connections failed or were closed")
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: timed out after {seconds} s")
            time.sleep(0.0005)

    kids = []
    for s in range(procs):
        n = clients // procs + (1 if s < clients % procs else 0)
        kids.append(subprocess.Popen([client_bin, str(port), path, opcode, str(n), frames, shm_path, str(s)],
                                     stdout=subprocess.PIPE, text=True))
    result = {"clients": clients, "procs": procs}
    try:
        wait_for("login", lambda: total(0) == clients, 600)
        local = threading.local()

        def emit(phase):
            if not hasattr(local, "c"):
                local.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            data = f"~{phase}~{time.monotonic_ns()}~"
            body = json.dumps({"body": [{"topic": "event", "action": "emit", "eventName": event, "data": data}]})
            local.c.request("POST", "/api", body, {"Content-Type": "application/json"})
            r = local.c.getresponse()
            text = r.read()
            if r.status != 200 or b"SUCCESS" not in text:
                raise SystemExit(f"emit: {r.status} {text[:200]!r}")

        for i in range(lat):
            emit(1)
            wait_for("one-at-a-time emit", lambda: count(1) == clients * (i + 1), 60)
        pids = [server_pid] + [k.pid for k in kids]
        before = [cpu_s(p) for p in pids] + [sum(os.times()[:2])]
        t0 = time.monotonic_ns()
        left = [burst]
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                emit(2)

        threads = [threading.Thread(target=worker) for _ in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for("burst", lambda: count(2) == clients * burst, 300)
        t1 = last(2)
        after = [cpu_s(p) for p in pids] + [sum(os.times()[:2])]
        wall = (t1 - t0) / 1e9
        result["burst_seconds"] = wall
        result["burst_deliveries"] = clients * burst
        result["deliveries_per_s"] = round(clients * burst / wall)
        used = [a - b for a, b in zip(after, before)]
        result["cpu_server_s"] = used[0]
        result["cpu_clients_s"] = sum(used[1:-1])
        result["cpu_driver_s"] = used[-1]
        result["cpu_client_max_s"] = max(used[1:-1])
    finally:
        shm[0:8] = (1).to_bytes(8, "little")
        outs = [k.communicate(timeout=60)[0] for k in kids]
        os.close(fd)
        os.unlink(shm_path)
    hists = [{} for _ in range(PHASES)]
    for out in outs:
        r = json.loads(out)
        for p in range(PHASES):
            for b, n in r["hist"][p].items():
                hists[p][int(b)] = hists[p].get(int(b), 0) + n

    def pct(h, q):  # bucket b holds [10b, 10b+10) us: report its upper edge in ms
        n = sum(h.values())
        want, seen = q * n, 0
        for b in sorted(h):
            seen += h[b]
            if seen >= want:
                return (b + 1) / 100
        return None
    for name, p in (("latency", 1), ("burst_latency", 2)):
        result[f"{name}_p50_ms"] = pct(hists[p], 0.50)
        result[f"{name}_p99_ms"] = pct(hists[p], 0.99)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
