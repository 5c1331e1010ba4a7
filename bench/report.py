#!/usr/bin/env python3
"""The report of one `ferry-bench --peers` run.

    report.py RESULTS.json [--md OUT.md] [--png OUT.png] [--check]

--md     Markdown: the run's machine and versions, then for each (payload,
         entries per call) the entries/s of every target by client count with
         ferry's ratio to each peer and to the raw bound, a compact p99 table,
         and the replay table.
--png    one chart: a panel per (payload, entries per call), x = clients,
         y = entries/s (both log), a line per target; replay as bars.
--check  exit 1 unless every target has a row with entries_per_sec > 0,
         every target whose server is a process of its own has a server CPU
         per call in some row (PostgreSQL's only when the run could read it),
         and every replay target read at entries_per_sec > 0 (a smoke test:
         it asserts no speed).

Always prints a one-line headline (ferry at 64 clients, 1 KiB, single
appends, or the nearest cell measured). With no option at all, prints the
Markdown to stdout. Standard library, plus matplotlib for --png.
"""
import argparse
import json
import math
import statistics
import sys
from collections import defaultdict

# Every target, in the order of the tables and the chart's legend.
TARGETS = ["raw", "store", "http", "http-wrk", "nats", "nats-nosync", "postgres", "postgres-pgbench"]
REPLAY_TARGETS = ["store", "http", "nats", "postgres"]
# What drives each target (a row's own `client` wins): our Rust clients,
# or the external load generators.
CLIENTS = {
    "raw": "in-process",
    "store": "in-process",
    "http": "reqwest",
    "http-wrk": "wrk",
    "nats": "async-nats",
    "nats-nosync": "async-nats",
    "postgres": "sqlx",
    "postgres-pgbench": "pgbench",
}
# Targets whose server is a process of its own, so its CPU is read.
CPU_TARGETS = ["http-wrk", "nats", "nats-nosync", "postgres", "postgres-pgbench"]
POSTGRES_TARGETS = {"postgres", "postgres-pgbench"}
LABELS = {
    "raw": "raw bound",
    "store": "ferry store",
    "http": "ferry HTTP (reqwest)",
    "http-wrk": "ferry HTTP (wrk)",
    "nats": "NATS JetStream (async-nats)",
    "nats-nosync": "NATS, not durable (async-nats)",
    "postgres": "PostgreSQL (sqlx)",
    "postgres-pgbench": "PostgreSQL (pgbench)",
}
# ferry's ratios: (numerator, denominator) targets.
RATIOS = [
    ("http", "nats"),
    ("http", "postgres"),
    ("http", "raw"),
    ("http-wrk", "postgres-pgbench"),
    ("http-wrk", "raw"),
    ("store", "nats"),
    ("store", "postgres"),
    ("store", "raw"),
]
SHORT = {"http": "ferry-http", "http-wrk": "ferry-http-wrk", "store": "ferry-store"}
HEADLINE_CELL = (64, 1024, 1)  # clients, payload_bytes, batch


def warn(msg):
    print(f"report.py: {msg}", file=sys.stderr)


# --- loading ----------------------------------------------------------------


def num(v):
    """A finite float, or None (null, missing, NaN, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class Results:
    def __init__(self, doc):
        if not isinstance(doc, dict):
            raise ValueError("the JSON is not an object with meta, rows, replay")
        self.meta = doc.get("meta") or {}
        rows = doc.get("rows") or []
        replay = doc.get("replay") or []
        if not isinstance(rows, list) or not isinstance(replay, list):
            raise ValueError("rows and replay must be lists")

        # cells[(payload, batch)][clients][target] = row
        grouped = defaultdict(list)
        self.durable = {}
        self.clients = dict(CLIENTS)
        for r in rows:
            if not isinstance(r, dict) or not r.get("target"):
                warn(f"skipping a row without a target: {r!r}")
                continue
            try:
                key = (int(r["payload_bytes"]), int(r["batch"]), int(r["clients"]), r["target"])
            except (KeyError, TypeError, ValueError):
                warn(f"skipping a row without clients/payload_bytes/batch: {r!r}")
                continue
            grouped[key].append(r)
            t = r["target"]
            self.durable[t] = self.durable.get(t, True) and r.get("durable") is not False
            if isinstance(r.get("client"), str) and r["client"]:
                self.clients[t] = r["client"]
        self.cells = defaultdict(lambda: defaultdict(dict))
        for (payload, batch, clients, target), rs in grouped.items():
            if len(rs) > 1:
                warn(
                    f"{len(rs)} rows for {target} at {clients} clients, {payload} B, "
                    f"batch {batch}: using their medians"
                )
                r = merge(rs)
            else:
                r = rs[0]
            self.cells[(payload, batch)][clients][target] = r

        self.replay = {}
        for r in replay:
            if isinstance(r, dict) and r.get("target"):
                self.replay[r["target"]] = r
            else:
                warn(f"skipping a replay entry without a target: {r!r}")

        seen = {t for c in self.cells.values() for row in c.values() for t in row}
        self.targets = [t for t in TARGETS if t in seen] + sorted(seen - set(TARGETS))
        self.replay_targets = [t for t in REPLAY_TARGETS if t in self.replay] + sorted(
            set(self.replay) - set(REPLAY_TARGETS)
        )

    def eps(self, cell, clients, target):
        r = self.cells.get(cell, {}).get(clients, {}).get(target)
        return num(r.get("entries_per_sec")) if r else None

    def cpu(self, cell, clients, target):
        r = self.cells.get(cell, {}).get(clients, {}).get(target)
        return num(r.get("server_cpu_us_per_call")) if r else None

    def label(self, target):
        client = self.clients.get(target)
        return f"{target} ({client})" if client else target

    def ratio(self, cell, clients, a, b):
        x, y = self.eps(cell, clients, a), self.eps(cell, clients, b)
        if x is not None and y:
            return x / y
        if b == "raw" and y is None:
            # No raw row in this cell: the row's own ratio, if it has one.
            r = self.cells.get(cell, {}).get(clients, {}).get(a)
            return num(r.get("ratio_to_raw")) if r else None
        return None

    def sorted_cells(self):
        # Single appends first, then batches; small payloads first.
        return sorted(self.cells, key=lambda pb: (pb[1], pb[0]))


def merge(rows):
    out = dict(rows[-1])
    for k in ("entries_per_sec", "mb_per_sec", "p50_us", "p99_us", "p999_us", "ratio_to_raw", "server_cpu_us_per_call"):
        vals = [v for v in (num(r.get(k)) for r in rows) if v is not None]
        out[k] = statistics.median(vals) if vals else None
    calls = [num(r.get("calls")) for r in rows]
    out["calls"] = sum(c for c in calls if c is not None)
    return out


# --- formatting -------------------------------------------------------------


def fmt_bytes(n):
    if n >= 1024 and n % 1024 == 0:
        k = n // 1024
        return f"{k // 1024} MiB" if k >= 1024 and k % 1024 == 0 else f"{k} KiB"
    return f"{n} B"


def fmt_eps(v):
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 or v == 0 else f"{v:,.1f}"


def fmt_ratio(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}×"
    if v >= 10:
        return f"{v:.1f}×"
    return f"{v:.2f}×"


def fmt_us(v):
    v = num(v)
    if v is None:
        return "—"
    if v < 1000:
        return f"{v:.0f} µs"
    if v < 10_000:
        return f"{v / 1000:.2f} ms"
    if v < 100_000:
        return f"{v / 1000:.1f} ms"
    if v < 1_000_000:
        return f"{v / 1000:.0f} ms"
    return f"{v / 1e6:.2f} s"


def fmt_cpu(v):
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def si(v):
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{unit}"
    return f"{v:g}"


def fmt_p99(row):
    # A run in which no call completed has no latency, whatever it says.
    if not row or num(row.get("calls")) == 0 or not num(row.get("entries_per_sec")):
        return "—"
    return fmt_us(row.get("p99_us"))


def cell_title(cell):
    payload, batch = cell
    calls = "single appends" if batch == 1 else f"batches of {batch}"
    return f"{fmt_bytes(payload)}, {calls}"


def ratio_name(a, b):
    return f"{SHORT.get(a, a)} / {SHORT.get(b, b)}"


def table(header, rows, align):
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# --- headline ---------------------------------------------------------------


def headline_cell(res):
    """(cell, clients) of the headline: 64 clients, 1 KiB, single, or the
    nearest one measured."""
    clients, payload, batch = HEADLINE_CELL
    candidates = [
        (cell, c)
        for cell, by_clients in res.cells.items()
        for c, row in by_clients.items()
        if "http" in row or "store" in row
    ]
    if not candidates:
        return None

    def distance(cc):
        (p, b), c = cc
        return (
            b != batch,
            abs(math.log2(max(p, 1)) - math.log2(payload)),
            abs(math.log2(max(c, 1)) - math.log2(clients)),
            -c,
        )

    return min(candidates, key=distance)


def headline(res):
    hc = headline_cell(res)
    if hc is None:
        return "headline: no ferry (store or HTTP) row in the results"
    cell, clients = hc
    parts = []
    for a in ("http", "store"):
        v = res.eps(cell, clients, a)
        if v is None:
            parts.append(f"{SHORT[a]} not measured")
            continue
        rs = []
        for b in ("nats", "postgres", "raw"):
            r = res.ratio(cell, clients, a, b)
            if r is not None:
                rs.append(f"{fmt_ratio(r)} {b}")
        parts.append(f"{SHORT[a]} {fmt_eps(v)}/s = " + (", ".join(rs) or "no peer to compare"))
    c0, p0, b0 = HEADLINE_CELL
    note = "" if (clients, *cell) == HEADLINE_CELL else f"; nearest measured to {c0} clients, {cell_title((p0, b0))}"
    return f"headline ({clients} clients, {cell_title(cell)}{note}): " + "; ".join(parts)


# --- Markdown ---------------------------------------------------------------


def markdown(res):
    m = res.meta
    lines = [f"# ferry-bench peers: {m.get('date', 'undated')}", ""]
    if m.get("quick"):
        lines += ["**Quick smoke run** (`--quick`): short cells, not representative numbers.", ""]

    machine = []
    if m.get("cores") is not None:
        machine.append(f"{m['cores']} cores")
    for key, label in (("cpu", None), ("mem", None), ("kernel", None)):
        if m.get(key):
            machine.append(str(m[key]))
    if m.get("load"):
        machine.append(f"load {m['load']} at start")
    if m.get("fs"):
        machine.append(f"data on {m['fs']}")
    lines.append(f"- Machine: {', '.join(machine) or 'not recorded'}")
    vers = []
    if m.get("nats_version"):
        vers.append(f"nats-server {m['nats_version']}")
    if m.get("postgres_version"):
        vers.append(f"PostgreSQL {m['postgres_version']}")
    if m.get("pgbench_version"):
        vers.append(str(m["pgbench_version"]))
    if m.get("wrk_version"):
        vers.append(str(m["wrk_version"]).split(" Copyright")[0])
    if m.get("ferry_version"):
        vers.append(f"served by http-wrk: {m['ferry_version']}")
    if vers:
        lines.append(f"- Versions: {', '.join(vers)}")
    if m.get("postgres_max_clients") is not None:
        lines.append(
            f"- PostgreSQL: one connection per client up to {m['postgres_max_clients']} "
            "(`max_connections` less a margin); more clients share that many."
        )
    known = {
        "date", "quick", "cores", "cpu", "mem", "kernel", "load", "fs",
        "nats_version", "postgres_version", "postgres_max_clients", "postgres_cpu",
        "pgbench_version", "wrk_version", "ferry_version",
    }
    for k in sorted(set(m) - known):
        lines.append(f"- {k}: {m[k]}")
    lines.append(
        "- Durability: every target acknowledges an append only once it is on disk "
        "(fsync/fdatasync), except **nats-nosync** (JetStream's default `sync_interval`), "
        "which is **NOT durable on ack** and is shown for reference only."
    )
    lines.append(
        "- Clients: each target is named with what drove it: our Rust clients (reqwest, "
        "async-nats, sqlx), the external load generators (wrk, pgbench), or in-process calls."
    )
    lines.append(
        "- Server CPU per call: utime + stime of the server's processes (a `ferry serve` child, "
        "nats-server, every process of the PostgreSQL cluster) from `/proc`, read before and after "
        "the run, divided by the calls acknowledged in between; empty for in-process servers."
    )
    if m.get("postgres_cpu") is False:
        lines.append("- PostgreSQL's processes were not on this machine: no CPU per call for its targets.")
    not_durable = sorted(t for t, d in res.durable.items() if not d and t != "nats-nosync")
    if not_durable:
        lines.append(f"- Also marked not durable in this run: {', '.join(not_durable)}.")
    missing = [t for t in TARGETS if t not in res.targets]
    if missing:
        lines.append(f"- **No rows at all for: {', '.join(missing)}.**")
    lines += ["", f"**{headline(res)}**", ""]
    lines += [
        "Entries/s are durable appends acknowledged per second by closed-loop clients. "
        "A ratio is ferry's entries/s divided by the peer's in the same cell "
        "(above 1× means ferry is faster); `—` is a cell that was not measured or failed.",
        "",
    ]

    targets = res.targets

    def tname(t):
        return f"{res.label(t)}†" if res.durable.get(t) is False else res.label(t)

    dagger = "† not durable on ack."

    for cell in res.sorted_cells():
        by_clients = res.cells[cell]
        lines += [f"## {cell_title(cell)}", ""]
        lines += ["Entries/s by target, then ferry's ratios:", ""]
        header = ["clients"] + [tname(t) for t in targets] + [ratio_name(a, b) for a, b in RATIOS]
        rows = []
        for c in sorted(by_clients):
            row = [str(c)] + [fmt_eps(res.eps(cell, c, t)) for t in targets]
            row += [fmt_ratio(res.ratio(cell, c, a, b)) for a, b in RATIOS]
            rows.append(row)
        lines += table(header, rows, "r" * len(header))
        lines += ["", "p99 latency of one call (one append, or one batch):", ""]
        header = ["clients"] + [tname(t) for t in targets]
        rows = []
        for c in sorted(by_clients):
            rows.append([str(c)] + [fmt_p99(by_clients[c].get(t)) for t in targets])
        lines += table(header, rows, "r" * len(header))
        cpu_targets = [t for t in targets if any(res.cpu(cell, c, t) is not None for c in by_clients)]
        if cpu_targets:
            lines += ["", "Server CPU per call, µs (utime + stime of the server's processes / calls acknowledged):", ""]
            header = ["clients"] + [tname(t) for t in cpu_targets]
            rows = []
            for c in sorted(by_clients):
                rows.append([str(c)] + [fmt_cpu(res.cpu(cell, c, t)) for t in cpu_targets])
            lines += table(header, rows, "r" * len(header))
        if any(res.durable.get(t) is False for t in targets):
            lines += ["", dagger]
        lines.append("")

    lines += ["## Replay", ""]
    if res.replay:
        lines += [
            "Reading a ledger of appended entries back from the start, in order.",
            "",
        ]
        header = ["target", "entries", "seconds", "entries/s", "÷ nats", "÷ postgres"]
        nats = num(res.replay.get("nats", {}).get("entries_per_sec"))
        pg = num(res.replay.get("postgres", {}).get("entries_per_sec"))
        rows = []
        for t in res.replay_targets:
            r = res.replay[t]
            v = num(r.get("entries_per_sec"))
            ent = num(r.get("entries"))
            secs = num(r.get("seconds"))
            rows.append(
                [
                    SHORT.get(t, t) if t in ("http", "store") else t,
                    f"{ent:,.0f}" if ent is not None else "—",
                    f"{secs:.2f}" if secs is not None else "—",
                    fmt_eps(v),
                    fmt_ratio(v / nats) if v is not None and nats else "—",
                    fmt_ratio(v / pg) if v is not None and pg else "—",
                ]
            )
        lines += table(header, rows, "lrrrrr")
    else:
        lines.append("No replay results.")
    lines.append("")
    return "\n".join(lines)


# --- chart ------------------------------------------------------------------

STYLE = {
    "raw": dict(color="#444444", linestyle=":", marker="s"),
    "store": dict(color="#1f77b4", linestyle="-", marker="o"),
    "http": dict(color="#2ca02c", linestyle="-", marker="o"),
    "nats": dict(color="#d62728", linestyle="-", marker="^"),
    "nats-nosync": dict(color="#d62728", linestyle="--", marker="^", alpha=0.6),
    "postgres": dict(color="#9467bd", linestyle="-", marker="D"),
    "http-wrk": dict(color="#2ca02c", linestyle="--", marker="x"),
    "postgres-pgbench": dict(color="#9467bd", linestyle="--", marker="x"),
}


def chart(res, path):
    try:
        import matplotlib
    except ImportError:
        warn("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    cells = res.sorted_cells()
    payloads = sorted({p for p, _ in cells})
    batches = sorted({b for _, b in cells})
    ncols = max(len(payloads), 1)
    nrows = len(batches) + (1 if res.replay else 0)
    if nrows == 0:
        warn("nothing to chart")
        return False
    heights = [3.2] * len(batches) + ([2.2] if res.replay else [])
    width = max(4.4 * ncols, 9.0)
    fig = plt.figure(figsize=(width, sum(heights) + 1.4))
    gs = fig.add_gridspec(nrows, ncols, height_ratios=heights)

    handles = {}
    for i, b in enumerate(batches):
        for j, p in enumerate(payloads):
            ax = fig.add_subplot(gs[i, j])
            by_clients = res.cells.get((p, b))
            ax.set_title(cell_title((p, b)), fontsize=10)
            if not by_clients:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            xs = sorted(by_clients)
            absent = []
            for t in res.targets:
                ys = [res.eps((p, b), c, t) for c in xs]
                ys = [y if y is not None and y > 0 else math.nan for y in ys]
                if all(math.isnan(y) for y in ys):
                    absent.append(t)
                    continue
                style = STYLE.get(t, dict(marker="o"))
                (line,) = ax.plot(xs, ys, label=LABELS.get(t, t), markersize=4, linewidth=1.5, **style)
                handles.setdefault(t, line)
            if absent:
                ax.text(0.02, 0.02, "no numbers: " + ", ".join(absent), transform=ax.transAxes, fontsize=7, color="#aa0000")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(x) for x in xs])
            ax.grid(True, which="major", alpha=0.3)
            ax.grid(True, which="minor", axis="y", alpha=0.1)
            if i == len(batches) - 1 or not res.replay:
                ax.set_xlabel("clients")
            if j == 0:
                ax.set_ylabel("entries/s")

    if res.replay:
        ax = fig.add_subplot(gs[len(batches), :])
        ts = res.replay_targets
        vals = [num(res.replay[t].get("entries_per_sec")) or 0 for t in ts]
        colors = [STYLE.get(t, {}).get("color", "#777777") for t in ts]
        bars = ax.barh([LABELS.get(t, t) for t in ts], vals, color=colors, alpha=0.8)
        for bar, v in zip(bars, vals):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {fmt_eps(v)}/s", va="center", fontsize=8)
        entries = {num(r.get("entries")) for r in res.replay.values()} - {None}
        n = f"{max(entries):,.0f} entries" if entries else "entries"
        ax.set_title(f"replay: reading {n} back", fontsize=10)
        ax.set_xlabel("entries/s")
        ax.invert_yaxis()
        if any(v > 0 for v in vals):
            ax.set_xlim(0, max(vals) * 1.15)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
        ax.grid(True, axis="x", alpha=0.3)

    m = res.meta
    title = f"ferry-bench peers, {m.get('date', '')}"
    if m.get("cores") is not None:
        title += f" — {m['cores']} cores"
    if m.get("fs"):
        title += f", {m['fs']}"
    if m.get("quick"):
        title += " (quick smoke run)"
    fig.suptitle(title, fontsize=12)
    order = [t for t in res.targets if t in handles]
    fig.legend(
        [handles[t] for t in order],
        [LABELS.get(t, t) for t in order],
        loc="lower center",
        ncol=max(min(len(order), 6 if width >= 12 else 3), 1),
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.08 if width < 12 else 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- check ------------------------------------------------------------------


def zero_cells(res):
    """Cells in which a target has a row but no entries/s: worth a warning."""
    out = []
    for cell in res.sorted_cells():
        for c in sorted(res.cells[cell]):
            for t in res.targets:
                if t in res.cells[cell][c] and not res.eps(cell, c, t):
                    out.append(f"{t} at {c} clients, {cell_title(cell)}: no entries/s")
    return out


def check(res, targets, replay_targets, cpu_targets=()):
    """Problems that make a smoke run fail: a target with no positive
    entries/s anywhere, a CPU target with no server CPU per call anywhere,
    a replay target missing or at zero."""
    problems = []
    for t in cpu_targets:
        vals = [res.cpu(cell, c, t) for cell in res.cells for c in res.cells[cell]]
        if not any(v is not None and v > 0 for v in vals):
            problems.append(f"target {t}: no row with server_cpu_us_per_call > 0")
    for t in targets:
        vals = [res.eps(cell, c, t) for cell in res.cells for c in res.cells[cell]]
        vals = [v for v in vals if v is not None]
        if not vals:
            problems.append(f"target {t}: no rows")
        elif not any(v > 0 for v in vals):
            problems.append(f"target {t}: no row with entries_per_sec > 0")
    for t in sorted(set(replay_targets) | set(res.replay)):
        r = res.replay.get(t)
        if r is None:
            problems.append(f"replay {t}: missing")
        elif not (num(r.get("entries_per_sec")) or 0) > 0:
            problems.append(f"replay {t}: entries_per_sec is {r.get('entries_per_sec')!r}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="the JSON ferry-bench --peers --json wrote")
    ap.add_argument("--md", metavar="OUT.md", help="write the Markdown report here")
    ap.add_argument("--png", metavar="OUT.png", help="write the chart here (needs matplotlib)")
    ap.add_argument("--check", action="store_true", help="exit 1 unless every target produced numbers")
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="targets --check requires [%(default)s]",
    )
    ap.add_argument(
        "--replay-targets",
        default=",".join(REPLAY_TARGETS),
        help="replay targets --check requires [%(default)s]",
    )
    args = ap.parse_args()

    try:
        with open(args.results, encoding="utf-8") as f:
            res = Results(json.load(f))
    except (OSError, ValueError) as e:
        print(f"report.py: cannot read {args.results}: {e}", file=sys.stderr)
        return 2

    print(headline(res))
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(markdown(res))
        print(f"wrote {args.md}")
    if args.png and chart(res, args.png):
        print(f"wrote {args.png}")
    if not (args.md or args.png or args.check):
        print()
        print(markdown(res))
    if args.check:
        want = [t for t in args.targets.split(",") if t]
        want_replay = [t for t in args.replay_targets.split(",") if t]
        # PostgreSQL's CPU is read only where its processes are on this
        # machine; the run says whether they were.
        want_cpu = [
            t for t in CPU_TARGETS
            if t in want and (t not in POSTGRES_TARGETS or res.meta.get("postgres_cpu") is not False)
        ]
        for z in zero_cells(res):
            warn(f"warning: {z}")
        problems = check(res, want, want_replay, want_cpu)
        if problems:
            print("check FAILED:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        print(
            f"check passed: {len(want)} targets and {len(res.replay)} replay targets produced numbers, "
            f"{len(want_cpu)} of them a server CPU per call"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
