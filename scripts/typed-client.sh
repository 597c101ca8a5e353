#!/usr/bin/env bash
# Typed clients from the OpenAPI document (issue "Operator-ready", item 8): generates a
# Python client with openapi-python-client from the running server's own
# /api/openapi.json and runs tests/client/session.py through it, which fails when any
# answer or error comes back untyped. Run by .ci/run after the tests; needs python3
# with venv and PyPI. Usage: scripts/typed-client.sh [path/to/fleetgroups]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/fleetgroups}
[ -x "$BIN" ] || cargo build --locked
# Pinned: a new generator version may type things differently; bump it deliberately.
GENERATOR=openapi-python-client==0.29.1
VENV=${FLEETGROUPS_CACHE:-$HOME/.cache/fleetgroups}/typed-client-venv
if ! "$VENV/bin/openapi-python-client" --version 2>/dev/null | grep -q "${GENERATOR#*==}"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "$GENERATOR"
fi

WORK=$(mktemp -d)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
env -u FLEETGROUPS_CONFIG "$BIN" --data-dir "$WORK/data" serve --listen 127.0.0.1:0 2>"$WORK/log" &
SERVER=$!
ADDR=
for _ in $(seq 300); do
    ADDR=$(grep -o 'listening on http://[0-9.:]*' "$WORK/log" | head -1 | sed 's|listening on ||') || true
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/log"; echo "typed-client: the server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/log"; echo "typed-client: the server did not start" >&2; exit 1; }

"$VENV/bin/python" - "$ADDR/api/openapi.json" "$WORK/openapi.json" <<'PY'
import sys, urllib.request
open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1]).read())
PY
"$VENV/bin/openapi-python-client" generate --path "$WORK/openapi.json" --meta none \
    --config tests/client/generator.yaml --output-path "$WORK/fleetgroups_client" >"$WORK/generate.log" 2>&1 \
    || { cat "$WORK/generate.log"; exit 1; }
# The generator warns about what it could not type; any warning is a failure here.
if grep -qi "warning" "$WORK/generate.log"; then
    cat "$WORK/generate.log"
    echo "typed-client: the generator could not type everything" >&2
    exit 1
fi
PYTHONPATH="$WORK" "$VENV/bin/python" tests/client/session.py "$ADDR" admin \
    "$(cat "$WORK/data/initial-api-key")"
