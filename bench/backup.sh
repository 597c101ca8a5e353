#!/usr/bin/env bash
# Backup/restore figures: restores a generated backup of N groups (default 100000),
# times an offline backup, then starts a server on the store and times a backup
# through the admin socket while a client keeps reading and one client writes, to show
# that reads go on while the export holds the writer mutex and writes wait for it.
# Prints a table. Usage: bench/backup.sh [N]   (BIN=… to pick the binary)
#
# With BASE_BIN=… set it first compares restores side by side: BASE_BIN and BIN each
# restore the same two generated backups RUNS times (default 3), alternating, into
# empty directories: "groups" (N groups of 3 devices, as below) and "groups+feed" (N
# groups of 10 devices, each with its "created" change-feed entry, the shape of
# bench/run.sh's restore row). It prints medians with the spread (min–max) of the wall
# time, of the CPU time (user + system, getrusage of the child via /usr/bin/time) and
# of the peak RSS, and the ratio BIN/BASE_BIN. RESTORE_ONLY=1 stops after that table.
# Loopback only; everything runs in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BIN=${BIN:-target/release/fleetgroups}
[ -x "$BIN" ] || cargo build --release
WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# A user line with a real argon2 hash, from a scratch store.
KEY=$("$BIN" --data-dir "$WORK/scratch" user add bench 2>/dev/null)
"$BIN" --data-dir "$WORK/scratch" backup "$WORK/scratch.jsonl" 2>/dev/null
USER_LINE=$(grep '"type":"user"' "$WORK/scratch.jsonl")

awk -v n="$N" -v user="$USER_LINE" 'BEGIN {
  print "{\"format\":\"fleetgroups-backup\",\"version\":1,\"storeFormat\":1,\"created\":\"2026-01-01T00:00:00.000Z\"}"
  printf "{\"type\":\"sequences\",\"nextGroup\":%d,\"nextChange\":1}\n", n + 1
  print user
  for (i = 1; i <= n; i++)
    printf "{\"type\":\"group\",\"account\":\"default\",\"id\":%d,\"revision\":1,\"creation\":1767225600000,\"lastModified\":1767225600000,\"name\":\"group %d\",\"description\":null,\"devices\":[\"dev-%d\",\"dev-%d\",\"dev-%d\"]}\n", i, i, i, i + 1, i + 2
  printf "{\"type\":\"end\",\"records\":%d}\n", n + 2
}' > "$WORK/gen.jsonl"

if [ -n "${BASE_BIN:-}" ]; then
  RUNS=${RUNS:-3}
  # The same groups with 10 devices each and one "created" feed entry per group.
  awk -v n="$N" -v user="$USER_LINE" 'BEGIN {
    t = "2026-01-01T00:00:00.000Z"
    print "{\"format\":\"fleetgroups-backup\",\"version\":1,\"storeFormat\":1,\"created\":\"" t "\"}"
    printf "{\"type\":\"sequences\",\"nextGroup\":%d,\"nextChange\":%d}\n", n + 1, n + 1
    print user
    for (i = 1; i <= n; i++) {
      devs = ""
      for (d = 0; d < 10; d++) devs = devs sprintf("%s\"dev-%d\"", (d ? "," : ""), i * 10 + d)
      printf "{\"type\":\"group\",\"account\":\"default\",\"id\":%d,\"revision\":1,\"creation\":1767225600000,\"lastModified\":1767225600000,\"name\":\"group %d\",\"description\":null,\"devices\":[%s]}\n", i, i, devs
    }
    for (i = 1; i <= n; i++) {
      devs = ""
      for (d = 0; d < 10; d++) devs = devs sprintf("%s\"dev-%d\"", (d ? "," : ""), i * 10 + d)
      printf "{\"type\":\"change\",\"account\":\"default\",\"seq\":%d,\"time\":\"%s\",\"op\":\"created\",\"id\":%d,\"revision\":1,\"userName\":\"bench\",\"group\":{\"id\":\"grp-%d\",\"name\":\"group %d\",\"description\":null,\"devices\":[%s],\"creation\":\"%s\",\"lastModified\":\"%s\"}}\n", i, t, i, i, i, devs, t, t
    }
    printf "{\"type\":\"end\",\"records\":%d}\n", 2 * n + 2
  }' > "$WORK/feed.jsonl"
  # One restore: "wall cpu rss_mib" on stdout.
  restore_once() {
    rm -rf "$WORK/r"
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.out" "$1" --data-dir "$WORK/r" restore "$2" >/dev/null 2>&1
    awk '{ printf "%.2f %.2f %.1f\n", $1, $2 + $3, $4 / 1024 }' "$WORK/time.out"
  }
  # "median (min–max)" of column $2 of file $1.
  stat() { sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { printf "%s (%s–%s)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
  median() { sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'; }
  printf '%-34s %-22s %-22s %s\n' "restore of $N groups" "BASE_BIN" "BIN" "BIN/BASE"
  for shape in groups feed; do
    file="$WORK/gen.jsonl"; label="groups (3 devices)"
    [ "$shape" = feed ] && file="$WORK/feed.jsonl" && label="groups+feed (10 devices)"
    : > "$WORK/base.$shape"; : > "$WORK/new.$shape"
    for _ in $(seq "$RUNS"); do
      restore_once "$BASE_BIN" "$file" >> "$WORK/base.$shape"
      restore_once "$BIN" "$file" >> "$WORK/new.$shape"
    done
    for col in 1:wall_s 2:cpu_s 3:peak_rss_mib; do
      c=${col%%:*}; name=${col#*:}
      ratio=$(awk -v a="$(median "$WORK/base.$shape" "$c")" -v b="$(median "$WORK/new.$shape" "$c")" 'BEGIN { printf "%.2f", b / a }')
      printf '%-34s %-22s %-22s %s\n' "$label $name" "$(stat "$WORK/base.$shape" "$c")" "$(stat "$WORK/new.$shape" "$c")" "$ratio"
    done
  done
  [ -n "${RESTORE_ONLY:-}" ] && exit 0
  echo
fi

t0=$(now); "$BIN" --data-dir "$WORK/data" restore "$WORK/gen.jsonl" 2>/dev/null; t1=$(now)
RESTORE=$(secs "$t0" "$t1")
t0=$(now); "$BIN" --data-dir "$WORK/data" backup "$WORK/offline.jsonl" 2>/dev/null; t1=$(now)
OFFLINE=$(secs "$t0" "$t1")
SIZE=$(du -m "$WORK/offline.jsonl" | cut -f1)

"$BIN" --data-dir "$WORK/data" serve --listen 127.0.0.1:0 2> "$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 300); do grep -q 'listening on http://' "$WORK/server.log" && break; sleep 0.1; done
ADDR=$(grep -o 'listening on http://[0-9.:]*' "$WORK/server.log" | sed 's|listening on http://||')
TOKEN=$(curl -s -X POST "http://$ADDR/api/Auth/Token" -H 'Content-Type: application/json' \
  -d "{\"userName\":\"bench\",\"apiKey\":\"$KEY\"}" | sed 's/.*"token":"\([^"]*\)".*/\1/')

# Reads during the online backup: the slowest GET of a 100-group page.
( t0=$(now); "$BIN" --data-dir "$WORK/data" backup "$WORK/online.jsonl" 2>/dev/null; t1=$(now)
  secs "$t0" "$t1" > "$WORK/online.secs" ) &
BACKUP_PID=$!
sleep 0.2
( curl -s -o /dev/null -w '%{time_total}' -X POST "http://$ADDR/api/groups" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"during backup"}' > "$WORK/write.secs" ) &
WRITE_PID=$!
MAX_READ=0; READS=0
while kill -0 "$BACKUP_PID" 2>/dev/null; do
  t=$(curl -s -o /dev/null -w '%{time_total}' "http://$ADDR/api/groups?limit=100" -H "Authorization: Bearer $TOKEN")
  READS=$((READS + 1))
  MAX_READ=$(awk -v a="$MAX_READ" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
done
wait "$BACKUP_PID"
wait "$WRITE_PID"
WRITE_DURING=$(cat "$WORK/write.secs")
WRITE=$(curl -s -o /dev/null -w '%{time_total}' -X POST "http://$ADDR/api/groups" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"name":"after backup"}')
ONLINE=$(cat "$WORK/online.secs")

printf '%-44s %12s\n' "measure ($N groups, 3 devices each)" "value"
printf '%-44s %12s\n' "restore (s)" "$RESTORE"
printf '%-44s %12s\n' "backup, server stopped (s)" "$OFFLINE"
printf '%-44s %12s\n' "backup, server running, via socket (s)" "$ONLINE"
printf '%-44s %12s\n' "backup file size (MiB)" "$SIZE"
printf '%-44s %12s\n' "GETs served during the online backup" "$READS"
printf '%-44s %12s\n' "slowest GET during the online backup (s)" "$MAX_READ"
printf '%-44s %12s\n' "a POST sent during the online backup (s)" "$WRITE_DURING"
printf '%-44s %12s\n' "a POST after the backup (s)" "$WRITE"
