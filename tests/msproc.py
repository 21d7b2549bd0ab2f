"""Starting and stopping bin/moonstream as a child process for the reliability
scripts in tests/ (crash.py, hostile.py, soak.py). Python 3 standard library
only; every server listens on 127.0.0.1 and a port chosen by the kernel."""
import json
import os
import re
import signal
import socket
import collections
import subprocess
import threading
import time
import http.client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for children that
    cannot take port 0, such as redis-server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_config(directory, extra=""):
    """A config file in directory with data in directory/data; extra is Lua
    table fields appended verbatim. Returns its path."""
    path = os.path.join(directory, "config.lua")
    with open(path, "w") as f:
        f.write('return { storage = { path = "data" }, logLevel = "info", %s }\n' % extra)
    return path


class Server:
    """bin/moonstream start CONFIG --port 0; the log line with the URL is the
    readiness signal (bounded wait)."""

    def __init__(self, config, timeout=15):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        self.proc = subprocess.Popen(
            ["lua5.4", os.path.join(ROOT, "bin/moonstream"), "start", config, "--port", "0",
             "--host", "127.0.0.1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.port = None
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            rest = self.proc.stdout.read()
            raise RuntimeError("server did not start:\n" + "".join(lines) + rest)
        self.pid = self.proc.pid
        # keeps reading the log so a chatty server never blocks on a full pipe
        self.tail = collections.deque(lines, maxlen=200)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.tail.append(line)

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill9(self):
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)

    def stop(self, timeout=20):
        """SIGTERM; returns the exit code and the rest of the log."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -1
            self.proc.wait(10)
        self.reader.join(10)
        return code, "".join(self.tail)


def api(conn, commands, timeout=None):
    """POST /api on an http.client connection; returns (status, decoded body
    or the text)."""
    body = json.dumps({"body": commands})
    conn.request("POST", "/api", body, {"Content-Type": "application/json"})
    res = conn.getresponse()
    data = res.read().decode("utf-8", "replace")
    if res.status == 200:
        return res.status, json.loads(data)
    return res.status, data


def connect(port, timeout=10):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
