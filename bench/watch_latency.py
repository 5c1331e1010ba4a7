#!/usr/bin/env python3
"""Append → watcher latency of a real `ferry serve`, next to the append
round trip itself, measured in the same run.

Starts `target/release/ferry serve` on a temp data dir and a free port,
opens `GET /v1/watch`, appends entries at a steady rate (each payload
carries its send time), and reports p50/p99 of (a) the append's own round
trip (POST → 201, durable) and (b) send → the entry arriving on the watch
stream. Standard library only.

    cargo build --release -p ferry && python3 bench/watch_latency.py [--rate 500] [--count 5000]
"""
import argparse, http.client, json, os, socket, subprocess, sys, tempfile, threading, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500, help="appends per second")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--binary", default="target/release/ferry")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="watch-lat-", dir=os.environ.get("BENCH_DIR", "target"))
    port = free_port()
    server = subprocess.Popen([args.binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        watch = http.client.HTTPConnection("127.0.0.1", port)
        watch.request("GET", "/v1/watch?prefix=lat")
        stream = watch.getresponse()
        assert stream.status == 200, stream.status
        seen = []

        def reader():
            while len(seen) < args.count:
                line = stream.fp.readline()
                if line.startswith(b"data:"):
                    now = time.perf_counter_ns()
                    sent = json.loads(line[5:])["payload"]["t"]
                    seen.append((now - sent) / 1e3)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        post = http.client.HTTPConnection("127.0.0.1", port)
        acks = []
        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        for _ in range(args.count):
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter_ns()
            post.request("POST", "/v1/ledgers/lat.a/entries", body=json.dumps({"payload": {"t": sent}}))
            r = post.getresponse()
            r.read()
            assert r.status == 201, r.status
            acks.append((time.perf_counter_ns() - sent) / 1e3)
        t.join(timeout=30)
        print(f"{args.count} appends at {args.rate}/s, one client, one watcher")
        print(f"append round trip (durable ack): p50 {pct(acks, .5):8.0f} µs  p99 {pct(acks, .99):8.0f} µs")
        print(f"append → watcher:                p50 {pct(seen, .5):8.0f} µs  p99 {pct(seen, .99):8.0f} µs"
              f"  ({len(seen)} received)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
