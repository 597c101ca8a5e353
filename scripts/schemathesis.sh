#!/usr/bin/env bash
# Fuzzes a real fleetgroups server against its own OpenAPI document with Schemathesis
# (https://schemathesis.readthedocs.io): builds the debug binary, starts it on a free
# port with a fresh data directory, logs in as the bootstrap admin, and runs every
# Schemathesis check (server errors, status codes, content types, headers, response
# schemas, positive and negative data, stateful sequences, ...) for a bounded time.
#
# Usage: scripts/schemathesis.sh            (ST_MAX_TIME=120 seconds of testing)
#        ST_MAX_TIME=600 ST_SEED=1 scripts/schemathesis.sh
# One worker by default: with several, Hypothesis parses lambda sources from threads and
# CPython 3.11 can fail that with "AST constructor recursion depth mismatch" (a tool
# error, not a finding). ST_WORKERS=2 is faster on Python 3.12+.
# Schemathesis is installed into target/schemathesis-venv (pinned version) on first use.
# Exit status: Schemathesis's (0 = no failure). Reports go to target/schemathesis-report.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=${ST_VERSION:-4.32.5}
VENV=${ST_VENV:-$ROOT/target/schemathesis-venv}
MAX_TIME=${ST_MAX_TIME:-120}
REPORT_DIR=$ROOT/target/schemathesis-report

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version | grep -q "$VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi

cargo build --quiet --bin fleetgroups
BIN=$ROOT/target/debug/fleetgroups

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" --data-dir "$WORK/data" serve --listen 127.0.0.1:0 2>"$WORK/server.log" &
SERVER_PID=$!

# Wait for the "listening on http://ADDR" line (the port is chosen by the kernel).
ADDR=""
for _ in $(seq 1 300); do
    ADDR=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$WORK/server.log" | head -n 1)
    [ -n "$ADDR" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        cat "$WORK/server.log" >&2
        echo "schemathesis.sh: the server did not start" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "schemathesis.sh: no listening line after 30 s" >&2; exit 1; }

TOKEN=$(python3 - "$ADDR" "$WORK/data/initial-api-key" <<'PY'
import json, sys, urllib.request
addr, key_file = sys.argv[1], sys.argv[2]
body = json.dumps({"userName": "admin", "apiKey": open(key_file).read().strip()}).encode()
req = urllib.request.Request(f"http://{addr}/api/Auth/Token", data=body,
                             headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["token"])
PY
)

echo "schemathesis.sh: testing http://$ADDR for $MAX_TIME s (server log: kept on failure)"
set +e
# From the scratch directory, so Schemathesis's own cache (.schemathesis/) stays out of
# the repository.
cd "$WORK"
"$VENV/bin/st" --config-file "$ROOT/scripts/schemathesis.toml" run \
    "http://$ADDR/api/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks all \
    --max-time "$MAX_TIME" \
    --workers "${ST_WORKERS:-1}" \
    --report junit --report-dir "$REPORT_DIR" \
    ${ST_SEED:+--seed "$ST_SEED"}
STATUS=$?
set -e
if grep -q "panicked" "$WORK/server.log"; then
    echo "schemathesis.sh: the server log has a panic:" >&2
    grep -B2 -A5 "panicked" "$WORK/server.log" >&2
    STATUS=1
fi
if [ "$STATUS" -ne 0 ]; then
    cp "$WORK/server.log" "$REPORT_DIR/server.log" 2>/dev/null || true
fi
exit "$STATUS"
