#!/usr/bin/env bash
# Replication benchmark (docs/operations/many-gateways.md): a throwaway PostgreSQL cluster on
# 127.0.0.1 and the release server, three measurements:
#   1. the gateway's write throughput (wrk POST /api/groups, fsync) without
#      [replication], then with it while every write is replicated live;
#   2. catch-up: PENDING changes written while the gateway has no [replication], then
#      a restart with it: seconds from the exec until the centre's applied_seq holds
#      every change, and changes/s applied centrally.
# Prints a Markdown table and writes it to bench/results/replication.md.
#
# Usage: bench/replication.sh            (PENDING=100000, DURATION=10 s per wrk run)
#        PENDING=20000 DURATION=5 bench/replication.sh
# Needs root (initdb runs as the postgres user), wrk, psql and Debian's postgresql.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PENDING=${PENDING:-100000}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
BATCH=${BATCH:-500}
H=(python3 "$ROOT/bench/helper.py")
LUA=$ROOT/bench/lua
log() { echo "$*" >&2; }

[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --quiet --bin fleetgroups
BIN=$ROOT/target/release/fleetgroups
command -v wrk >/dev/null || { log "wrk is needed (apt-get install -y wrk)"; exit 1; }
PGBIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -n 1)")")
[[ -x $PGBIN/initdb ]] || { log "PostgreSQL is needed (apt-get install -y postgresql)"; exit 1; }

WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/fg-repl-bench.XXXXXX")
chown postgres "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  [[ ${KEEP:-0} == 1 ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres -E UTF8 >/dev/null
PGPORT=$("${H[@]}" freeport)
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w \
  -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null
PGURL="postgresql://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable"
sql() { psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atqc "$1"; }

# launch DIR REPL(0|1) GATEWAY: starts a server; sets URL, PID, T0.
launch() {
  local port
  port=$("${H[@]}" freeport)
  URL=http://127.0.0.1:$port
  T0=$EPOCHREALTIME
  if [[ $2 == 1 ]]; then
    FLEETGROUPS_REPLICATION_POSTGRES_URL=$PGURL FLEETGROUPS_REPLICATION_GATEWAY_ID=$3 \
      FLEETGROUPS_REPLICATION_BATCH_SIZE=$BATCH \
      "$BIN" --data-dir "$1" serve --listen "127.0.0.1:$port" >>"$1.log" 2>&1 &
  else
    "$BIN" --data-dir "$1" serve --listen "127.0.0.1:$port" >>"$1.log" 2>&1 &
  fi
  PID=$!
  PIDS+=("$PID")
  "${H[@]}" wait-ready "$URL" 120 "$PID" >/dev/null
  local i
  for ((i = 0; i < 200; i++)); do [[ -s $1/initial-api-key ]] && break; sleep 0.05; done
  TOKEN=$("${H[@]}" token "$URL" admin "$(head -n 1 "$1/initial-api-key")")
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }

# writes SECONDS PREFIX: wrk POST for SECONDS; prints requests/s.
writes() {
  local out=$WORK/wrk.$2
  BENCH_RUN=$2 wrk -t1 "-c$CONNECTIONS" "-d${1}s" --timeout 10s -H "Authorization: Bearer $TOKEN" \
    -s "$LUA/post.lua" "$URL/api/groups" -- "$2" >"$out" 2>&1
  grep '^BENCH ' "$out" | sed -E 's/.*rps=([0-9.]+).*/\1/'
}

# high: the store's highest seq (the feed's next once read to the end).
high() {
  python3 - "$URL" "$TOKEN" <<'EOF'
import json, sys, urllib.request
url, token = sys.argv[1], sys.argv[2]
after = None
while True:
    q = "limit=1000" + ("" if after is None else f"&after={after}")
    req = urllib.request.Request(f"{url}/api/changes?{q}", headers={"Authorization": f"Bearer {token}"})
    v = json.load(urllib.request.urlopen(req))
    if not v["changes"]:
        print(v["next"]); break
    after = v["next"]
EOF
}

applied() { sql "SELECT coalesce((SELECT applied_seq FROM fleetgroups.gateways WHERE gateway_id = '$1'), 0)" 2>/dev/null || echo 0; }

wait_applied() { # GATEWAY SEQ: prints seconds waited
  local t0=$EPOCHREALTIME
  until [[ $(applied "$1") -ge $2 ]]; do sleep 0.05; done
  python3 -c "print(f'{$EPOCHREALTIME - $t0:.2f}')"
}

log "== write throughput without replication"
launch "$WORK/off" 0 x
writes 2 warm >/dev/null
RPS_OFF=$(writes "$DURATION" off)
stop
log "   $RPS_OFF writes/s"

log "== write throughput while every write is replicated"
launch "$WORK/on" 1 gw-live
writes 2 warm >/dev/null
A0=$(applied gw-live)
T_START=$EPOCHREALTIME
RPS_ON=$(writes "$DURATION" on)
H_ON=$(high)
LAG_END=$(wait_applied gw-live "$H_ON")
LIVE_RATE=$(python3 -c "print(f'{($H_ON - $A0) / ($EPOCHREALTIME - $T_START):.0f}')")
stop
log "   $RPS_ON writes/s; centre $LAG_END s behind at the end; $LIVE_RATE changes/s applied"

log "== catch-up of $PENDING pending changes"
launch "$WORK/pending" 0 x
WRITTEN=0
N=0
while [[ $WRITTEN -lt $PENDING ]]; do
  N=$((N + 1))
  writes 5 "seed$N" >/dev/null
  WRITTEN=$(high)
done
stop
launch "$WORK/pending" 1 gw-catchup
wait_applied gw-catchup "$WRITTEN" >/dev/null
TOTAL=$(python3 -c "print(f'{$EPOCHREALTIME - $T0:.2f}')")
RATE=$(python3 -c "print(f'{$WRITTEN / $TOTAL:.0f}')")
stop
NGROUPS=$(sql "SELECT count(*) FROM fleetgroups.groups WHERE gateway_id = 'gw-catchup'")
CHANGES=$(sql "SELECT count(*) FROM fleetgroups.changes WHERE gateway_id = 'gw-catchup'")
log "   $WRITTEN changes caught up in $TOTAL s ($RATE/s); central: $NGROUPS groups, $CHANGES changes"

DROP=$(python3 -c "print(f'{(1 - $RPS_ON / $RPS_OFF) * 100:.1f}')")
VERDICT=$(python3 -c "print('PASS' if $RPS_ON >= 0.9 * $RPS_OFF else 'FAIL')")
mkdir -p bench/results
{
  echo "# fleetgroups replication benchmark"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- machine: $(nproc) cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1 (same machine), batch_size $BATCH; wrk -t1 -c$CONNECTIONS -d${DURATION}s POST /api/groups (fsync)"
  echo
  echo "| measurement | figure | target | result |"
  echo "|---|---|---|---|"
  echo "| gateway writes/s without replication | $RPS_OFF | (info) | |"
  echo "| gateway writes/s while replicating every write | $RPS_ON ($DROP % lower) | ≥ 90 % of the above | $VERDICT |"
  echo "| changes/s applied centrally, live | $LIVE_RATE (centre $LAG_END s behind when the writes stopped) | (info) | |"
  echo "| catch-up of $WRITTEN pending changes (exec → applied_seq) | $TOTAL s = $RATE changes/s | (info) | |"
  echo "| central rows after catch-up | $NGROUPS groups, $CHANGES changes | = $WRITTEN changes | $([[ $CHANGES == "$WRITTEN" ]] && echo PASS || echo FAIL) |"
} | tee bench/results/replication.md
