#!/usr/bin/env python3
"""Lost-update checker for the cluster mode (README "Cluster").

Starts a real redis-server (free port, temporary dir, appendonly yes,
appendfsync always) and three moonstream nodes sharing one config file
(`moonstream start config.lua --port N --cluster-name node-K`). Writers on all
three nodes do read-modify-write with versions on a few records: each write
appends its own id to the record's list `ops` and sends version = read + 1.
Every outcome is recorded: acknowledged, refused (VERSION_EXISTS: retry) or
unknown (connection error, storage error).

Then the final state of every record is checked:
  * no version was acknowledged twice;
  * every acknowledged write is in the final list, at the position of its
    version (nothing acknowledged is missing or was overwritten);
  * the list has one id per version, none twice (final state = the chain of
    acknowledged writes plus writes whose outcome the writer could not know).

--kill-node kills node 3 with -9 mid-run and restarts it; --kill-redis kills
Redis with -9 mid-run and restarts it (the AOF must hold every acknowledged
write). Prints the figures and exits 1 on any anomaly.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from msproc import free_port  # noqa: E402


def child_env():
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Child:
    """A child process (self.proc) to kill with -9 or stop."""
    proc = None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


class Redis(Child):
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "redis")
        os.makedirs(self.dir)
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", os.path.join(self.dir, "redis.log")], env=child_env())
        deadline = time.time() + 20
        while not redis_ping(self.port):
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)


class Node(Child):
    def __init__(self, config, name):
        self.config, self.name, self.port, self.proc = config, name, free_port(), None

    def start(self):
        self.proc = subprocess.Popen(
            ["lua5.4", "bin/moonstream", "start", self.config, "--port", str(self.port), "--cluster-name", self.name],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            if "listening on" in line:
                break
        else:
            raise RuntimeError("node %s did not start" % self.name)
        # keep reading the log so the pipe never fills
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()


def api(conn, commands):
    conn.request("POST", "/api", json.dumps({"body": commands}), {"Content-Type": "application/json"})
    res = conn.getresponse()
    return json.loads(res.read())


class Writer(threading.Thread):
    def __init__(self, wid, nodes, records, stop, history):
        super().__init__(daemon=True)
        self.wid, self.nodes, self.records, self.stop_at, self.history = wid, nodes, records, stop, history
        self.node = nodes[wid % len(nodes)]
        self.conn = None
        self.seq = 0

    def connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=10)
        return self.conn

    def one(self, record):
        read = api(self.connection(), [{"topic": "record", "action": "read", "recordName": record}])["body"][0]
        if read.get("success"):
            version, ops = read["version"], read["data"]["ops"]
        elif read.get("errorEvent") == "RECORD_NOT_FOUND":
            version, ops = 0, []
        else:
            return ("error", None, None)
        self.seq += 1
        op_id = "%d-%d" % (self.wid, self.seq)
        try:
            res = api(self.connection(), [{"topic": "record", "action": "write", "recordName": record,
                                           "data": {"ops": ops + [op_id]}, "version": version + 1}])["body"][0]
        except (OSError, http.client.HTTPException, ValueError):
            self.conn = None
            return ("unknown", op_id, version + 1)
        if res.get("success"):
            return ("ack", op_id, version + 1)
        if res.get("errorEvent") in ("VERSION_EXISTS", "INVALID_VERSION"):
            return ("refused", op_id, version + 1)
        return ("unknown", op_id, version + 1)  # a storage error: Redis may or may not have it

    def run(self):
        i = 0
        while time.time() < self.stop_at:
            record = self.records[(self.wid + i) % len(self.records)]
            i += 1
            try:
                kind, op_id, version = self.one(record)
            except (OSError, http.client.HTTPException, ValueError):
                self.conn = None
                kind, op_id, version = "error", None, None
                time.sleep(0.05)  # the node is being restarted: try again shortly
            self.history.append((record, kind, op_id, version))


def check(history, final):
    anomalies = []
    acked = {}
    for record, kind, op_id, version in history:
        if kind != "ack":
            continue
        key = (record, version)
        if key in acked:
            anomalies.append("version %d of %s acknowledged twice (%s, %s)" % (version, record, acked[key], op_id))
        acked[key] = op_id
    for (record, version), op_id in acked.items():
        ops = final.get(record, {}).get("ops", [])
        if len(ops) < version or ops[version - 1] != op_id:
            anomalies.append("acknowledged write %s (version %d of %s) is missing from the final state"
                             % (op_id, version, record))
    for record, data in final.items():
        ops = data["ops"]
        if len(ops) != data["version"]:
            anomalies.append("%s: %d ids for version %d" % (record, len(ops), data["version"]))
        if len(set(ops)) != len(ops):
            anomalies.append("%s: an id appears twice" % record)
    return anomalies


def self_test():
    """The checker itself finds each kind of anomaly (a checker that cannot fail proves nothing)."""
    final = {"r": {"version": 2, "ops": ["a", "b"]}}
    assert check([("r", "ack", "a", 1), ("r", "ack", "b", 2)], final) == []
    assert check([("r", "ack", "a", 1), ("r", "ack", "x", 1)], final)           # version acknowledged twice
    assert check([("r", "ack", "c", 3)], final)                                  # acknowledged, missing
    assert check([("r", "ack", "z", 2)], final)                                  # overwritten
    assert check([], {"r": {"version": 3, "ops": ["a", "b"]}})                   # a version without its id
    assert check([], {"r": {"version": 2, "ops": ["a", "a"]}})                   # an id twice
    print("self-test: the checker reports every kind of anomaly")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--writers", type=int, default=12)
    ap.add_argument("--records", type=int, default=3)
    ap.add_argument("--kill-node", action="store_true")
    ap.add_argument("--kill-redis", action="store_true")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    tmp = tempfile.mkdtemp(prefix="moonstream-lost-update-")
    redis = Redis(tmp)
    nodes = []
    try:
        redis.start()
        config = os.path.join(tmp, "config.lua")
        with open(config, "w") as f:
            f.write('return { logLevel = "info", storage = { path = "%s/data-" .. os.getenv("MS_NODE") },'
                    ' cluster = { redis = "redis://127.0.0.1:%d/0" } }\n' % (tmp, redis.port))
        for k in range(1, 4):
            os.environ["MS_NODE"] = str(k)  # each node keeps its own LevelDB dir (tokens, pid file)
            node = Node(config, "node-%d" % k)
            node.start()
            nodes.append(node)
        records = ["lost-update/r%d" % i for i in range(args.records)]
        history = []
        stop_at = time.time() + args.seconds
        writers = [Writer(i, nodes, records, stop_at, history) for i in range(args.writers)]
        for w in writers:
            w.start()
        kills = 0
        if args.kill_node or args.kill_redis:
            time.sleep(args.seconds / 3)
            if args.kill_node:
                os.environ["MS_NODE"] = "3"
                nodes[2].kill9()
                kills += 1
                nodes[2].start()
            if args.kill_redis:
                redis.kill9()
                kills += 1
                redis.start()
        for w in writers:
            w.join()
        conn = http.client.HTTPConnection("127.0.0.1", nodes[0].port, timeout=10)
        final = {}
        for record in records:
            deadline = time.time() + 10
            while True:
                r = api(conn, [{"topic": "record", "action": "read", "recordName": record}])["body"][0]
                if r.get("success") or time.time() > deadline:
                    break
                time.sleep(0.05)  # the node reconnects to a restarted Redis by itself
            if r.get("success"):
                final[record] = {"version": r["version"], "ops": r["data"]["ops"]}
        counts = {}
        for _, kind, _, _ in history:
            counts[kind] = counts.get(kind, 0) + 1
        anomalies = check(history, final)
        if len(final) != len(records):
            anomalies.append("a record could not be read at the end")
        print("writers=%d nodes=3 records=%d seconds=%.0f kills=%d attempts=%d acknowledged=%d refused=%d "
              "unknown=%d errors=%d anomalies=%d" % (
                  args.writers, len(records), args.seconds, kills, len(history), counts.get("ack", 0),
                  counts.get("refused", 0), counts.get("unknown", 0), counts.get("error", 0), len(anomalies)))
        for a in anomalies[:20]:
            print("ANOMALY:", a)
        if counts.get("ack", 0) == 0:
            anomalies.append("nothing was acknowledged")
            print("ANOMALY: nothing was acknowledged")
        print("%d passed, %d failed" % ((0, 1) if anomalies else (1, 0)))  # the line .ci/run counts
        return 1 if anomalies else 0
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
