#!/usr/bin/env python3
"""One line of bench/commit-wait: the deltas of two /metrics scrapes around a
wrk run, set against the run's req/s.

usage: commit-wait.py workload connections seconds before after "RESULT ..." loop_run_ms loop_wait_ms

Printed: req/s and p50/p99 (wrk), syncs/s, requests per sync, the writer's
busy share (time spent in synced writes / wall time: near 1, the next group
always waits for the one in flight), sync time mean and p50/p90/p99 (bucket
upper bounds), the server's CPU share of one core (all threads), the loop
thread's share on a CPU and its share runnable but waiting for a CPU (the
machine's other users), the loop's CPU per request, and the closed-loop
figures: latency = connections / req/s, and that latency in mean syncs."""
import re
import sys

LINE = re.compile(r'^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$')


def scrape(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def delta(a, b, key):
    return b.get(key, 0.0) - a.get(key, 0.0)


def quantile(a, b, name, q):
    """Upper bound of the bucket holding quantile q of the delta histogram."""
    buckets = []
    for key in b:
        m = re.match(name + r'_bucket\{le="([^"]+)"\}$', key)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), delta(a, b, key)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= q * total:
            return le
    return float("nan")


def main():
    workload, conns, secs, before, after, result, loop_ms, wait_ms = sys.argv[1:9]
    loop_s, wait_s = float(loop_ms) / 1000, float(wait_ms) / 1000
    conns, secs = int(conns), float(secs)
    a, b = scrape(before), scrape(after)
    parts = result.split()
    if len(parts) < 5 or parts[0] != "RESULT":
        print("%s: wrk gave no result (%r)" % (workload, result))
        return 1
    rps, p50, p99 = float(parts[1]), float(parts[2]) / 1000, float(parts[3]) / 1000
    sync = "moonstream_storage_sync_seconds"
    syncs = delta(a, b, sync + "_count")
    sync_s = delta(a, b, sync + "_sum")
    reqs = delta(a, b, 'moonstream_http_requests_total{endpoint="api",status="200"}')
    cpu = delta(a, b, "process_cpu_seconds_total")
    mean = sync_s / syncs * 1000 if syncs else float("nan")
    lat = conns / rps * 1000 if rps else float("nan")
    q = [quantile(a, b, sync, x) * 1000 for x in (0.5, 0.9, 0.99)]
    print("%-8s %8.0f req/s  p50 %.2f ms p99 %.1f ms | %6.0f syncs/s  %5.1f req/sync  writer busy %3.0f%%  "
          "sync mean %.2f ms (p50<=%g p90<=%g p99<=%g) | cpu %3.0f%%, loop %3.0f%% (+%.0f%% waiting for a CPU), %.0f us/req | "
          "latency %.2f ms = %.1f mean syncs"
          % (workload, rps, p50, p99, syncs / secs, reqs / syncs if syncs else float("nan"),
             100 * sync_s / secs, mean, q[0], q[1], q[2], 100 * cpu / secs, 100 * loop_s / secs, 100 * wait_s / secs,
             loop_s / (rps * secs) * 1e6 if rps else 0, lat, lat / mean if syncs else 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
