#!/usr/bin/env bash
# How long a start after a crash takes to replay the write-ahead log, and so the most
# it can take (storage.checkpoint_mb of log, 64 MiB by default). Each run: a fresh
# server with checkpoints held off (checkpoint_mb 1024, checkpoint_secs 86400), wrk
# creating groups for DURATION seconds, kill -9, then a timed start to the first 200 on
# /readyz, reading the server's own "replayed …" line (frames, writes, millis). Prints
# a table (medians and spread of RUNS runs) and writes it to bench/results/wal-replay.md.
# Only ever talks to 127.0.0.1; every server it starts is killed on exit.
#   bench/wal_replay.sh            # 3 runs of 20 s of creates
#   RUNS=1 DURATION=5 bench/wal_replay.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
H=(python3 "$ROOT/bench/helper.py")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_SERVER_BIN:-$CARGO_TARGET_DIR/release/fleetgroups}
RUNS=${RUNS:-3}
DURATION=${DURATION:-20}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release --bin fleetgroups >&2)
WORK=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/wal-replay.XXXXXX")
PID=""
cleanup() { [[ -n $PID ]] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # start DIR: sets PID, URL; returns the seconds to ready
  local port t0
  port=$("${H[@]}" freeport)
  URL=http://127.0.0.1:$port
  t0=$EPOCHREALTIME
  FLEETGROUPS_STORAGE_CHECKPOINT_MB=1024 FLEETGROUPS_STORAGE_CHECKPOINT_SECS=86400 \
    "$BIN" --data-dir "$1" serve --listen "127.0.0.1:$port" >>"$1.log" 2>&1 &
  PID=$!
  local ready
  ready=$("${H[@]}" wait-ready "$URL" 600 "$PID")
  python3 -c "print(f'{$ready - $t0:.3f}')"
}

rows=()
for ((run = 1; run <= RUNS; run++)); do
  dir=$WORK/run$run
  start "$dir" >/dev/null
  key=$(head -n 1 "$dir/initial-api-key")
  token=$("${H[@]}" token "$URL" admin "$key")
  BENCH_RUN=$run wrk -t1 -c32 "-d${DURATION}s" --timeout 10s -H "Authorization: Bearer $token" \
    -s "$ROOT/bench/lua/post.lua" "$URL/api/groups" >"$dir.wrk" 2>&1
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  start "$dir" >"$dir.secs" # not in $( ): start sets PID in this shell
  secs=$(cat "$dir.secs")
  line=$(grep "replayed the store's write-ahead log" "$dir.log" | tail -n 1)
  frames=$(sed -n 's/.*frames=\([0-9]*\).*/\1/p' <<<"$line")
  log_bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$line")
  writes=$(sed -n 's/.*writes=\([0-9]*\).*/\1/p' <<<"$line")
  millis=$(sed -n 's/.*millis=\([0-9]*\).*/\1/p' <<<"$line")
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  rows+=("$log_bytes $frames $writes $millis $secs")
  echo "run $run: $log_bytes bytes of log, $frames frames, $writes key writes replayed in $millis ms; ready after $secs s" >&2
done

python3 - "$ROOT/bench/results/wal-replay.md" "$DURATION" "${rows[@]}" <<'PY'
import statistics, sys
out, duration, rows = sys.argv[1], sys.argv[2], [list(map(float, r.split())) for r in sys.argv[3:]]
def col(i): return [r[i] for r in rows]
def fmt(v): return f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})"
rate = [r[2] / (r[3] / 1000) for r in rows if r[3] > 0]
mbps = [r[0] / 2**20 / (r[3] / 1000) for r in rows if r[3] > 0]
bound = [64 / m for m in mbps]
lines = [
    "# Replay of the write-ahead log after kill -9",
    "",
    f"{len(rows)} runs: {duration} s of creates (wrk, 32 connections), checkpoints held off, kill -9, timed start. Median (min–max).",
    "",
    "| figure | value |",
    "|---|---|",
    f"| log replayed (bytes of frames) | {fmt(col(0))} |",
    f"| frames replayed | {fmt(col(1))} |",
    f"| key writes replayed | {fmt(col(2))} |",
    f"| replay (ms, the server's own figure) | {fmt(col(3))} |",
    f"| start to first 200 on /readyz (s) | {statistics.median(col(4)):.2f} ({min(col(4)):.2f}–{max(col(4)):.2f}) |",
    f"| key writes replayed per second | {fmt(rate) if rate else 'n/a'} |",
    f"| MiB of log replayed per second | {statistics.median(mbps):.1f} ({min(mbps):.1f}–{max(mbps):.1f}) |" if mbps else "| MiB/s | n/a |",
    f"| so a replay of checkpoint_mb = 64 MiB (the default bound) takes (s) | {statistics.median(bound):.2f} ({min(bound):.2f}–{max(bound):.2f}) |" if bound else "| bound | n/a |",
]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
