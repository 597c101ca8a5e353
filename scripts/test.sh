#!/usr/bin/env bash
# The test command (README "Tests"; .ci/run calls exactly this): installs every tool the
# tests use when it is missing, starts the one daemon they expect to find running
# (journald), then runs `cargo test`. No test skips when its tool is missing: each
# fails and names the tool, so this script is what makes a fresh machine pass.
#
# Tools, and who needs them (all from Debian's packages):
#   faketime             tests/it/clock.rs steps the server's clock (libfaketime)
#   postgresql           tests/it/replication*.rs start throwaway clusters (initdb, pg_ctl)
#   pgbouncer            the pooler tests run a real PgBouncer in transaction mode
#   systemd              systemd-analyze (unit checks), systemd-journald and
#                        systemd-cat/journalctl (tests/it/journald.rs)
#   prometheus           promtool check metrics (tests/it/metrics.rs)
#   git                  tests/it/build_info.rs makes throwaway repositories
#   e2fsprogs, mount     tests/it/disk_faults.rs (an ext4 image on a loop device)
#   curl                 tests/it/readme.rs runs the README's quick start as written
# Installing needs root (or sudo); the tests themselves run as root because initdb
# and the fault tests need it. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || need+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || [ -x /usr/bin/pgbouncer ] || need+=(pgbouncer)
{ command -v systemd-analyze && command -v systemd-cat && command -v journalctl; } >/dev/null 2>&1 \
    && [ -x /lib/systemd/systemd-journald ] || need+=(systemd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v git >/dev/null 2>&1 || need+=(git)
command -v mkfs.ext4 >/dev/null 2>&1 && command -v e2fsck >/dev/null 2>&1 || need+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Debian's pgbouncer package starts its own service where systemd runs; the tests start
# their own instances on free ports and need nothing from it.

# A journald to talk to: a systemd machine has one; a container or CI machine does not,
# so start one (it creates its sockets under /run/systemd/journal itself).
if ! python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect("/run/systemd/journal/stdout")' 2>/dev/null; then
    echo "== starting systemd-journald (none is running)"
    $sudo mkdir -p /run/systemd/journal
    $sudo setsid /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 100); do
        python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/run/systemd/journal/stdout")' 2>/dev/null && break
        sleep 0.1
    done
    python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("/run/systemd/journal/stdout")' \
        || { echo "systemd-journald did not start" >&2; exit 1; }
fi

echo "== cargo test"
exec cargo test --locked "$@"
