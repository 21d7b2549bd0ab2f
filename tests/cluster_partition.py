#!/usr/bin/env python3
"""Partition test for the cluster mode (README "Cluster"; needs root for `ip netns`).

A node runs in its own network namespace, joined to the host by a veth pair
(10.211.N.1 host side, 10.211.N.2 node side); Redis listens on the host side.
Requests are made from inside the namespace to the node's loopback. The link
to Redis is cut (`ip link set ... down`): a write must fail clearly (the
existing RECORD_UPDATE_ERROR text) and within the command timeout; when the
link returns the node must reconnect by itself and a write must succeed.
Prints "1 passed, 0 failed" or the failure, and exits accordingly.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

PASSWORD = "partition-test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from msproc import free_port  # noqa: E402


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def main():
    tag = "%d" % random.randint(1, 250)
    ns, host_if, node_if = "ms-part-" + tag, "msph" + tag, "mspn" + tag
    host_ip, node_ip = "10.211.%s.1" % tag, "10.211.%s.2" % tag
    tmp = tempfile.mkdtemp(prefix="moonstream-partition-")
    redis = node = None
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if)
        sh("ip", "link", "set", node_if, "netns", ns)
        sh("ip", "addr", "add", host_ip + "/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", node_ip + "/30", "dev", node_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", node_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        rport = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", host_ip, "--dir", tmp,
                                  "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                  "--requirepass", PASSWORD,  # not loopback: Redis' protected mode wants one
                                  "--logfile", os.path.join(tmp, "redis.log")], env=env)
        config = os.path.join(tmp, "node.lua")
        with open(config, "w") as f:
            f.write('return { storage = { path = "%s/data" }, cluster = { redis = "redis://%s:%d/0", password = "%s" } }\n'
                    % (tmp, host_ip, rport, PASSWORD))
        deadline = time.time() + 20
        while sh("redis-cli", "--no-auth-warning", "-a", PASSWORD, "-h", host_ip, "-p", str(rport), "ping", check=False).stdout.strip() != "PONG":
            assert time.time() < deadline, "redis did not start"
            time.sleep(0.05)
        node = subprocess.Popen(["ip", "netns", "exec", ns, "lua5.4", "bin/moonstream", "start", config, "--port",
                                 "0", "--cluster-name", "partitioned"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        port = None
        for line in node.stdout:
            if "listening on" in line:
                port = line.split("127.0.0.1:")[1].split()[0]
                break
        assert port, "the node did not start"

        def write(value):
            body = json.dumps({"body": [{"topic": "record", "action": "write", "recordName": "part/r",
                                         "data": {"v": value}}]})
            started = time.time()
            out = sh("ip", "netns", "exec", ns, "curl", "-s", "-m", "30", "-H", "Content-Type: application/json",
                     "-d", body, "http://127.0.0.1:%s/api" % port, check=False).stdout
            return json.loads(out)["body"][0], time.time() - started

        r, _ = write(1)
        assert r.get("success"), r
        sh("ip", "link", "set", host_if, "down")
        r, took = write(2)
        print("cut: %s (%.2f s)" % (r.get("error"), took))
        assert not r.get("success") and r.get("errorEvent") == "RECORD_UPDATE_ERROR", r
        assert took < 10, "a request without Redis must fail within the command timeout"
        r, took = write(3)
        print("cut, again: %s (%.2f s)" % (r.get("error"), took))
        assert not r.get("success"), r
        sh("ip", "link", "set", host_if, "up")
        deadline = time.time() + 20
        while True:
            r, _ = write(4)
            if r.get("success"):
                break
            assert time.time() < deadline, "the node did not recover: %s" % r
            time.sleep(0.1)  # polling the node's recovery with a deadline
        stored = sh("redis-cli", "--no-auth-warning", "-a", PASSWORD, "-h", host_ip, "-p", str(rport), "hget", "ms:r:part/r", "d").stdout.strip()
        assert json.loads(stored) == {"v": 4}, stored
        print("restored: the write succeeded and is in Redis")
        print("1 passed, 0 failed")
        return 0
    except AssertionError as e:
        print("FAILED:", e)
        print("0 passed, 1 failed")
        return 1
    finally:
        if node:
            node.terminate()
            node.wait()
        if redis:
            redis.terminate()
            redis.wait()
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
