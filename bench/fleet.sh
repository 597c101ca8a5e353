#!/usr/bin/env bash
# Fleet benchmark (README "Many gateways"; not CI): N gateway processes (release
# binary, default 1,000) against one PostgreSQL with max_connections = MAXCONN (100),
# directly and through PgBouncer in transaction mode, GROUPS (200) groups each, a
# tenth of them writing. Reports per mode: seconds until every gateway's applied_seq
# equals its head, the peak number of central connections of the gateways' role, a
# reader's connect latency throughout, the fleet's RSS and idle CPU, and after a
# 60 s stop of PostgreSQL under writes: the spread of reconnections and the catch-up.
# Then EXPLAIN ANALYZE of the README's queries on 1,000,000 central groups.
# Prints a Markdown table and writes it to bench/results/fleet.md (RESULT to change).
#
# Usage: bench/fleet.sh                       (N=1000 GROUPS_EACH=200 MAXCONN=100)
#        N=200 MODES=direct EXPLAIN=0 bench/fleet.sh
#        N=100 MODES= EXPLAIN=0 BASELINE=1 RESULT=bench/results/fleet-idle.md bench/fleet.sh
#          (idle CPU and RSS of the same gateways without and with replication)
# Needs root (initdb and pgbouncer run as postgres), psql, Debian's postgresql and
# pgbouncer, and memory for N servers (~10 MiB each).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export N=${N:-1000} GROUPS_EACH=${GROUPS_EACH:-200} MAXCONN=${MAXCONN:-100}
RESULT=${RESULT:-bench/results/fleet.md}
H=(python3 "$ROOT/bench/helper.py")
log() { echo "$*" >&2; }

[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --quiet --bin fleetgroups
BIN=$ROOT/target/release/fleetgroups
PGBIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -n 1)")")
[[ -x $PGBIN/initdb ]] || { log "PostgreSQL is needed (apt-get install -y postgresql)"; exit 1; }
[[ -x /usr/sbin/pgbouncer ]] || { log "PgBouncer is needed (apt-get install -y pgbouncer)"; exit 1; }
ulimit -n "$(ulimit -Hn)"
ulimit -u unlimited 2>/dev/null || true

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/fg-fleet-bench.XXXXXX")
chown postgres "$WORK"
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  [[ ${KEEP:-0} == 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# One seed store: a fresh server's admin and sequences, backed up, plus GROUPS
# generated groups (helper.py gen-backup); every gateway restores it (a store_id each).
log "== seed backup of $GROUPS_EACH groups"
PORT=$("${H[@]}" freeport)
"$BIN" --data-dir "$WORK/seed" serve --listen "127.0.0.1:$PORT" >"$WORK/seed.log" 2>&1 &
SEED=$!
"${H[@]}" wait-ready "http://127.0.0.1:$PORT" 60 "$SEED" >/dev/null
KEY=$(head -n 1 "$WORK/seed/initial-api-key")
kill -TERM "$SEED"; wait "$SEED" || true
"$BIN" --data-dir "$WORK/seed" backup "$WORK/small.jsonl" >>"$WORK/seed.log" 2>&1
"${H[@]}" gen-backup "$WORK/small.jsonl" "$GROUPS_EACH" "$WORK/seed.jsonl"
# As if the groups had been made by writes whose feed entries retention has since
# removed (nextChange past them, so purged_through = GROUPS_EACH): each gateway's first
# contact is a resync from a snapshot, as for a real gateway joining with history.
python3 - "$WORK/seed.jsonl" "$GROUPS_EACH" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
lines = open(path).read().splitlines()
for i, line in enumerate(lines):
    rec = json.loads(line)
    if rec.get("type") == "sequences":
        rec["nextChange"] = max(int(rec["nextChange"]), n + 1)
        lines[i] = json.dumps(rec, separators=(",", ":"))
open(path, "w").write("\n".join(lines) + "\n")
PY

export PGVERSION=$("$PGBIN/postgres" --version | awk '{print $3}')
python3 "$ROOT/bench/fleet.py" "$BIN" "$WORK" "$PGBIN" "$WORK/seed.jsonl" "$KEY" >"$WORK/out.json"

mkdir -p "$(dirname "$RESULT")"
python3 - "$WORK/out.json" <<'PY' | tee "$RESULT"
import json, os, subprocess, sys
d = json.load(open(sys.argv[1]))
rs = d["results"]
env = os.environ
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
pgv = env["PGVERSION"]
print("# fleetgroups fleet benchmark")
print()
print(f"- commit {rev}; {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB; PostgreSQL {pgv} and the gateways on one machine")
print(f"- {env['N']} gateway processes (release), {env['GROUPS_EACH']} groups each (restored), writes on every tenth "
      f"(one group per {env.get('WRITE_EVERY', '2')} s each, {env.get('WRITE_SECONDS', '30')} s); max_connections = {env['MAXCONN']}, "
      f"role `fleet` CONNECTION LIMIT {int(env['MAXCONN']) - 3 - int(env.get('READER_SLOTS', '17'))}; "
      f"PgBouncer transaction mode, default_pool_size {env.get('POOL', '20')}; idle_disconnect_secs 10, heartbeat_secs 60 (defaults)")
print()
if rs:
    print("| measurement | " + " | ".join(r["mode"] for r in rs) + " |")
    print("|---|" + "---|" * len(rs))
def row(name, f):
    if not rs:
        return
    print(f"| {name} | " + " | ".join(f(r) for r in rs) + " |")
row("launch of all processes (s)", lambda r: f"{r['launch_s']:.1f}")
row("launch → every gateway applied_seq = head (s)", lambda r: f"{r['converge_s']:.1f}")
row("central groups after convergence", lambda r: f"{r['groups']}")
row("peak central connections of the fleet's role", lambda r: f"{r['peak']}")
row("reader connect+query p50 / p99 / max (ms)", lambda r: f"{r['lat_p50']:.0f} / {r['lat_p99']:.0f} / {r['lat_max']:.0f}")
row("reader refused (of samples)", lambda r: f"{r['reader_fail']} of {r['reader_samples'] + r['reader_fail']}")
row("fleet connections at PostgreSQL once idle (15 s after; PgBouncer keeps its pool)", lambda r: f"{r['idle_conns']}")
row("fleet idle CPU (% of one core, 30 s)", lambda r: f"{r['idle_cpu']:.2f}")
row("fleet RSS (MiB; per gateway)", lambda r: f"{r['rss_mib']:.0f}; {r['rss_each']:.1f}")
row(f"{env.get('OUTAGE', '60')} s outage: catch-up after the restart (s)", lambda r: f"{r['catch_s']:.1f}")
row("reconnects after the restart: first / median / p90 (s)", lambda r: f"{r['rec_first']:.1f} / {r['rec_p50']:.1f} / {r['rec_p90']:.1f}")
row("reconnects counted; most in one second (first 10 s)", lambda r: f"{r['rec_n']}; {r['rec_peak_s']}")
b = d.get("baseline") or {}
if b:
    n = int(env["N"])
    print()
    print(f"Idle cost of replication itself: the same {n} caught-up gateways, {env.get('IDLE_WINDOW', '30')} s after a settling minute:")
    print()
    print("| replication | fleet CPU (% of one core) | per gateway (% of one core) | fleet RSS (MiB) |")
    print("|---|---|---|---|")
    for k in ("off", "on"):
        if k in b:
            print(f"| {k} | {b[k]['cpu']:.2f} | {b[k]['cpu'] / n:.4f} | {b[k]['rss_mib']:.0f} |")
if any(r["fail_example"] for r in rs):
    print()
    for r in rs:
        if r["fail_example"]:
            print(f"- {r['mode']}: a reader refusal: `{r['fail_example']}`")
if d["plans"]:
    print()
    print("## The README's queries at 1,000,000 central groups (EXPLAIN ANALYZE)")
    for name, plan in d["plans"].items():
        print()
        print(f"{name}:")
        print()
        print("```")
        print(plan)
        print("```")
PY
