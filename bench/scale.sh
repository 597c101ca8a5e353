#!/usr/bin/env bash
# Scale benchmark for the read extensions (reverse lookup, paging, filters) at 100,000
# groups: builds the release binary and bench/scale.rs (a cargo example), then runs
# it. The example seeds the store once (concurrent keep-alive clients, relaxed
# durability for seeding only), restarts the server with fsync durability and prints a
# Markdown table of median/p99 latency per request kind. See the header of bench/scale.rs for the
# SCALE_* knobs; the seeded store in target/scale-data is reused by later runs.
#
# Usage: bench/scale.sh                 (100,000 groups × 10 devices, 1000 samples)
#        SCALE_GROUPS=20000 bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin fleetgroups --example scale
# The same target directory cargo just built into (CARGO_TARGET_DIR when set).
TARGET=${CARGO_TARGET_DIR:-target}
SCALE_BIN="$(realpath "$TARGET")/release/fleetgroups" exec "$TARGET/release/examples/scale"
