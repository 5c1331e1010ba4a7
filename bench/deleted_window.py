#!/usr/bin/env python3
"""How long a deleted ledger's data stays readable in the data directory
(issue #13 item 11; docs/decisions/2026-12-04-deleted-data-in-the-wal.md).

Starts `ferry serve` on a temp data dir, appends entries carrying a unique
marker to ledger `gone`, interleaved with other ledgers' entries, deletes
`gone`, then keeps appending 1 KiB entries to the other ledgers and greps
every file under the data dir for the marker after each step. Reports the
DELETE's latency and how much was appended before the marker left the
disk (or that it never did, up to --max-mib). Standard library only.

    cargo build -p ferry && python3 bench/deleted_window.py --others 1
    python3 bench/deleted_window.py --others 64 --max-mib 256
    python3 bench/deleted_window.py --idle 5
"""
import argparse, http.client, json, os, socket, subprocess, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_with(root, needle):
    hits = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                if needle in f.read():
                    hits.append(os.path.relpath(p, root))
    return hits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/debug/ferry")
    ap.add_argument("--others", type=int, default=1, help="other ledgers, appended round robin")
    ap.add_argument("--max-mib", type=int, default=160, help="stop appending after this much")
    ap.add_argument("--idle", type=float, default=0, help="only wait this long after the DELETE")
    ap.add_argument("--gone-entries", type=int, default=1000, help="entries of the deleted ledger")
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="deleted-window-", dir=os.environ.get("BENCH_DIR", "target"))
    port = free_port()
    server = subprocess.Popen([args.binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

        def call(method, path, body=None):
            c.request(method, path, body=body, headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            return r.status

        marker = f"marker-{os.getpid()}-{time.time_ns()}"
        filler = "x" * 1000
        others = [f"other-{i}" for i in range(args.others)]
        batch = json.dumps({"entries": [{"payload": {"f": filler}}] * 100})  # ~100 KiB
        # The deleted ledger's entries interleave with the others' records.
        for i in range(args.gone_entries // 10):
            gone = json.dumps({"entries": [{"payload": f"{marker}-{i}-{j}"} for j in range(10)]})
            assert call("POST", "/v1/ledgers/gone/entries", gone) == 201
            assert call("POST", f"/v1/ledgers/{others[i % len(others)]}/entries", batch) == 201
        assert files_with(data, marker.encode()), "the marker is on disk before the DELETE"
        t = time.monotonic()
        assert call("DELETE", "/v1/ledgers/gone") == 204
        print(f"DELETE answered in {(time.monotonic() - t) * 1000:.1f} ms")
        hits = files_with(data, marker.encode())
        print(f"right after the DELETE the marker is in {hits or 'no file'}")
        if args.idle:
            time.sleep(args.idle)
            print(f"after {args.idle} s idle: {files_with(data, marker.encode()) or 'no file'}")
            return
        appended, step = 0, 0
        while hits and appended < args.max_mib * 1024 * 1024:
            for _ in range(40):  # ~4 MiB between greps
                assert call("POST", f"/v1/ledgers/{others[step % len(others)]}/entries", batch) == 201
                appended += len(batch)
                step += 1
            hits = files_with(data, marker.encode())
        mib = appended / 1024 / 1024
        if hits:
            print(f"after {mib:.0f} MiB more appends the marker is still in {hits}")
        else:
            print(f"the marker left the disk after {mib:.0f} MiB more appends")
    finally:
        server.kill()
        server.wait()
        subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
