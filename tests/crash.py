#!/usr/bin/env python3
"""Crash safety: kill -9 under write load, restart, check every acknowledged
write.

Several writer threads, each with its own keep-alive connection, write their
own records with explicit versions (version = last known + 1), one to three
records per request. The server is killed with SIGKILL at a random moment,
restarted on the same data, and then every record is read back:

  * a record acknowledged at version v must read back at version v (with the
    data of that write) or v + 1 (the writer's next write, sent but not yet
    answered when the server died: it may or may not have been synced);
  * versions never go backwards from one cycle to the next.

Writers then carry on from the versions they find. Bounded: --cycles cycles,
each with a random kill delay up to --max-delay seconds.

  python3 tests/crash.py --cycles 100           long form (a few minutes)
  python3 tests/crash.py --cycles 10            the short form .ci/run uses
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import msproc  # noqa: E402


class Writer(threading.Thread):
    def __init__(self, wid, port, state, rng, stop):
        super().__init__(daemon=True)
        self.wid, self.port, self.state, self.rng, self.stop = wid, port, state, rng, stop
        self.acked = 0

    def run(self):
        names = list(self.state.keys())
        try:
            conn = msproc.connect(self.port, timeout=10)
            while not self.stop.is_set():
                picked = self.rng.sample(names, self.rng.randint(1, 3))
                cmds = []
                for name in picked:
                    rec = self.state[name]
                    version = rec["known"] + 1
                    cmds.append({"topic": "record", "action": "write", "recordName": name,
                                 "version": version,
                                 "data": {"writer": self.wid, "v": version, "pad": "x" * self.rng.randint(0, 300)}})
                status, res = msproc.api(conn, cmds)
                if status != 200:
                    raise RuntimeError("write answered %d: %s" % (status, res))
                for cmd, r in zip(cmds, res["body"]):
                    rec = self.state[cmd["recordName"]]
                    if r["success"]:
                        rec["known"] = rec["acked"] = cmd["version"]
                        rec["data"] = cmd["data"]
                        self.acked += 1
                    elif r.get("errorEvent") == "VERSION_EXISTS":
                        # our unacknowledged write from before the crash landed
                        raise RuntimeError("unexpected VERSION_EXISTS for %s: %s" % (cmd["recordName"], r))
                    else:
                        raise RuntimeError("write failed: %s" % r)
        except (OSError, ConnectionError, ValueError, KeyError):
            pass  # the server was killed: expected
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = e


def verify(port, states, last_seen):
    """Reads every record back; returns (checked, problems). Updates each
    record's known version to what is stored."""
    problems, checked = [], 0
    conn = msproc.connect(port, timeout=30)
    names = [n for st in states for n in st]
    for i in range(0, len(names), 100):
        chunk = names[i:i + 100]
        status, res = msproc.api(conn, [{"topic": "record", "action": "read", "recordName": n} for n in chunk])
        if status != 200:
            problems.append("read answered %d: %s" % (status, res))
            continue
        for name, r in zip(chunk, res["body"]):
            rec = next(st[name] for st in states if name in st)
            stored = r["version"] if r["success"] else 0
            if rec["acked"] > 0:
                checked += 1
                if stored == rec["acked"]:
                    if r["data"] != rec["data"]:
                        problems.append("%s: version %d has other data" % (name, stored))
                elif stored != rec["acked"] + 1:
                    problems.append("%s: acknowledged version %d, found %d" % (name, rec["acked"], stored))
            if stored < last_seen.get(name, 0):
                problems.append("%s: version went back from %d to %d" % (name, last_seen[name], stored))
            last_seen[name] = stored
            rec["known"] = stored
            if stored > rec["acked"]:
                rec["acked"], rec["data"] = stored, r["data"]
    conn.close()
    return checked, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--records", type=int, default=20, help="records per writer")
    ap.add_argument("--max-delay", type=float, default=1.5, help="longest time before a kill (s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--config-extra", default="",
                    help="Lua table fields added to the server config; e.g. "
                         "'storageExclusionPrefixes = { \"crash/\" }' (memory only) must make this test fail")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print("crash: seed %d, %d cycles, %d writers x %d records" % (seed, args.cycles, args.writers, args.records))

    tmp = tempfile.mkdtemp(prefix="moonstream-crash-")
    config = msproc.write_config(tmp, args.config_extra)
    states = [{"crash/w%d/r%d" % (w, r): {"known": 0, "acked": 0, "data": None} for r in range(args.records)}
              for w in range(args.writers)]
    last_seen, problems = {}, []
    total_acked = total_checked = 0
    t0 = time.monotonic()
    try:
        server = msproc.Server(config)
        for cycle in range(1, args.cycles + 1):
            stop = threading.Event()
            writers = [Writer(w, server.port, states[w], random.Random(rng.random()), stop)
                       for w in range(args.writers)]
            for w in writers:
                w.start()
            time.sleep(rng.uniform(0.05, args.max_delay))  # a random moment to kill at
            server.kill9()
            stop.set()
            for w in writers:
                w.join(30)
                if getattr(w, "error", None):
                    problems.append("cycle %d writer %d: %s" % (cycle, w.wid, w.error))
            acked = sum(w.acked for w in writers)
            total_acked += acked
            server = msproc.Server(config)
            checked, found = verify(server.port, states, last_seen)
            total_checked += checked
            problems += ["cycle %d: %s" % (cycle, p) for p in found]
            print("cycle %3d: %5d writes acknowledged, %4d records checked, %d problems"
                  % (cycle, acked, checked, len(found)), flush=True)
            if len(problems) > 20:
                break
        code, log = server.stop()
        if code != 0:
            problems.append("server did not exit 0 on SIGTERM (%s): %s" % (code, log[-500:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in problems[:20]:
        print("PROBLEM:", p)
    print("crash: %d cycles, %d acknowledged writes, %d record checks after restart, %d lost or backwards, %.1fs"
          % (cycle, total_acked, total_checked, len(problems), time.monotonic() - t0))
    print("%d passed, %d failed" % (1 if not problems else 0, 1 if problems else 0))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
