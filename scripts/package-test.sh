#!/usr/bin/env bash
# The Debian package, tested for real (issue 12 item 1; CI runs it from .ci/run):
#  1. builds it (scripts/build-deb.sh) and a second one with a bumped revision from the
#     same build (`cargo deb --no-build`), for the upgrade;
#  2. checks the package without installing it: control fields, the file list, the
#     conffile, the maintainer scripts (dpkg-deb -I / -c / -e), the packaged units;
#  3. installs it on THIS machine with dpkg, as root — systemd need not run (in CI it
#     is not PID 1): the maintainer scripts must cope;
#  4. runs the binary as the service user exactly as fleetgroups.service's ExecStart
#     does (the unit's Environment=, WorkingDirectory= and the directories systemd
#     would create), on a free port, and checks /healthz, /readyz through
#     `fleetgroups healthcheck`, /metrics, the initial key file's owner and mode, and
#     the CLI through the admin socket;
#  5. edits /etc/fleetgroups/config.toml, upgrades to the second package and checks
#     the edit and the data survive;
#  6. `dpkg --remove` keeps data, configuration and user; `dpkg --purge` removes all
#     three, says so, and moves the backups to /var/backups/fleetgroups/<time>/ unless
#     FLEETGROUPS_PURGE_BACKUPS=yes (checked too, on a second install).
#
# It changes the machine (a system user, /usr/bin/fleetgroups, /etc, /var/lib), so it
# refuses to start when any of that exists already — a gateway or a developer's
# machine with a real install — unless given --force or run by CI (CI=true: a
# throwaway machine), which purge it first. Everything it installed is purged when
# it ends, also on failure. Usage: sudo scripts/package-test.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { echo "== package-test [$(($(date +%s) - started)) s] $*"; }
fail() {
    echo "package-test: FAIL: $*" >&2
    exit 1
}
# Polls a shell condition every 0.1 s until it holds or `limit` seconds pass.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$(($(date +%s) + limit))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit} s waiting for $what"
        sleep 0.1
    done
}

[ "$(id -u)" = 0 ] || fail "run as root: the test installs the package with dpkg"
for tool in dpkg dpkg-deb runuser getent cargo-deb; do
    command -v "$tool" >/dev/null || fail "$tool is missing (.ci/run installs what the test needs)"
done
if dpkg-query -W fleetgroups >/dev/null 2>&1 || getent passwd fleetgroups >/dev/null ||
    [ -e /var/lib/fleetgroups ] || [ -e /etc/fleetgroups ]; then
    if [ "${1:-}" = "--force" ] || [ "${CI:-}" = true ]; then
        # A clean slate, so every check below sees what a first install does.
        echo "package-test: fleetgroups was installed or used here; purging it first"
        dpkg --purge fleetgroups >/dev/null 2>&1 || true
        rm -rf /var/lib/fleetgroups /etc/fleetgroups /run/fleetgroups
        userdel fleetgroups 2>/dev/null || true
        groupdel fleetgroups 2>/dev/null || true
    else
        fail "fleetgroups is installed or was used on this machine; --force tests (and purges) it anyway"
    fi
fi

server_pid=
installed=
cleanup() {
    local rc=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [ -n "$installed" ]; then
        FLEETGROUPS_PURGE_BACKUPS=yes dpkg --purge fleetgroups >/dev/null 2>&1 || true
    fi
    [ -n "${kept_backups:-}" ] && rm -rf "$kept_backups"
    rmdir /var/backups/fleetgroups 2>/dev/null || true
    [ -n "${work:-}" ] && rm -rf "$work"
    if [ "$rc" = 0 ]; then
        echo "package-test: passed in $(($(date +%s) - started)) s"
    else
        echo "package-test: failed (exit $rc) after $(($(date +%s) - started)) s" >&2
    fi
}
trap cleanup EXIT
work=$(mktemp -d)

# ---------------------------------------------------------------------------------
step "1. build"
out=target/debian/package-test
rm -rf "$out"
mkdir -p "$out/1" "$out/2"
bash scripts/build-deb.sh --output "$out/1/" >"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    fail "build-deb.sh failed"
}
# The upgrade: the same binary and files, a newer Debian revision.
cargo deb --no-build --locked --deb-revision 2 --output "$out/2/" >>"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    fail "cargo deb --deb-revision 2 failed"
}
deb1=$(ls "$out"/1/fleetgroups_*.deb)
deb2=$(ls "$out"/2/fleetgroups_*.deb)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
echo "$deb1"
echo "$deb2"

# ---------------------------------------------------------------------------------
step "2. contents (dpkg-deb -I / -c / -e)"
field() { dpkg-deb -f "$1" "$2"; }
[ "$(field "$deb1" Package)" = fleetgroups ] || fail "Package: $(field "$deb1" Package)"
[ "$(field "$deb1" Version)" = "$version-1" ] || fail "Version: $(field "$deb1" Version)"
[ "$(field "$deb2" Version)" = "$version-2" ] || fail "Version of the upgrade: $(field "$deb2" Version)"
depends=$(field "$deb1" Depends)
for want in 'libc6' 'systemd (>= 247) | systemd-sysusers' 'passwd'; do
    case "$depends" in *"$want"*) ;; *) fail "Depends lacks $want: $depends" ;; esac
done

dpkg-deb -c "$deb1" >"$work/list"
# Path → mode, for regular files (the listing's paths start with ./).
awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $6, $1 }' "$work/list" | sort >"$work/files"
cat "$work/list"
expect_file() { # path mode
    grep -qxF "$1 $2" "$work/files" || fail "the package lacks $1 with mode $2"
}
expect_file usr/bin/fleetgroups -rwxr-xr-x
for f in etc/fleetgroups/config.toml \
    usr/lib/systemd/system/fleetgroups.service \
    usr/lib/systemd/system/fleetgroups-backup.service \
    usr/lib/systemd/system/fleetgroups-backup.timer \
    usr/lib/sysusers.d/fleetgroups.conf \
    usr/share/bash-completion/completions/fleetgroups \
    usr/share/zsh/vendor-completions/_fleetgroups \
    usr/share/fish/vendor_completions.d/fleetgroups.fish \
    usr/share/man/man1/fleetgroups.1.gz \
    usr/share/man/man1/fleetgroups-serve.1.gz \
    usr/share/man/man1/fleetgroups-healthcheck.1.gz \
    usr/share/man/man1/fleetgroups-user-add.1.gz \
    usr/share/man/man1/fleetgroups-restore.1.gz \
    usr/share/man/man5/fleetgroups.toml.5.gz \
    usr/share/doc/fleetgroups/changelog.gz \
    usr/share/doc/fleetgroups/docs/README.md \
    usr/share/doc/fleetgroups/docs/configuration.md \
    usr/share/doc/fleetgroups/docs/operations/install.md \
    usr/share/doc/fleetgroups/SECURITY.md \
    usr/share/doc/fleetgroups/copyright \
    usr/share/doc/fleetgroups/README.md \
    usr/share/doc/fleetgroups/examples/config.toml; do
    expect_file "$f" -rw-r--r--
done
# Nothing else: every file is one of the above or another subcommand's man page. Owned
# by root, since dpkg installs what the archive says.
while read -r path mode; do
    case "$path" in
        usr/share/man/man1/fleetgroups-*.1.gz) ;;
        usr/share/doc/fleetgroups/docs/*.md) [ -f "docs/${path#usr/share/doc/fleetgroups/docs/}" ] ||
            fail "the package has a page docs/ does not: $path" ;;
        *) grep -qxF "$path" <<<"usr/bin/fleetgroups
etc/fleetgroups/config.toml
usr/lib/systemd/system/fleetgroups.service
usr/lib/systemd/system/fleetgroups-backup.service
usr/lib/systemd/system/fleetgroups-backup.timer
usr/lib/sysusers.d/fleetgroups.conf
usr/share/bash-completion/completions/fleetgroups
usr/share/zsh/vendor-completions/_fleetgroups
usr/share/fish/vendor_completions.d/fleetgroups.fish
usr/share/man/man1/fleetgroups.1.gz
usr/share/man/man5/fleetgroups.toml.5.gz
usr/share/doc/fleetgroups/changelog.gz
usr/share/doc/fleetgroups/SECURITY.md
usr/share/doc/fleetgroups/copyright
usr/share/doc/fleetgroups/README.md
usr/share/doc/fleetgroups/examples/config.toml" || fail "unexpected file in the package: $path ($mode)" ;;
    esac
done <"$work/files"
# Every page of docs/ is in the package.
(cd docs && find . -name '*.md') | while read -r page; do
    grep -q "^usr/share/doc/fleetgroups/docs/${page#./} " "$work/files" || fail "the package lacks docs/${page#./}"
done
# The changelog is the repository's CHANGELOG.md.
dpkg-deb --fsys-tarfile "$deb1" | tar -xO ./usr/share/doc/fleetgroups/changelog.gz | zcat | cmp - CHANGELOG.md ||
    fail "usr/share/doc/fleetgroups/changelog.gz is not CHANGELOG.md"
if awk '{ print $2 }' "$work/list" | grep -vqx '0/0'; then
    fail "a file not owned by root/root in the package"
fi

dpkg-deb -x "$deb1" "$work/root"
dpkg-deb -e "$deb1" "$work/control"
[ "$(cat "$work/control/conffiles")" = /etc/fleetgroups/config.toml ] ||
    fail "conffiles: $(cat "$work/control/conffiles")"
# The conffile is the repository's config.toml with exactly the service's two paths.
diff config.toml "$work/root/etc/fleetgroups/config.toml" >"$work/config.diff" || true
cat >"$work/config.want" <<'EOF'
< data_dir = "data"
---
> data_dir = "/var/lib/fleetgroups"
< socket = ""
---
> socket = "/run/fleetgroups/admin.sock"
EOF
grep -v '^[0-9]' "$work/config.diff" | diff "$work/config.want" - ||
    fail "the conffile differs from config.toml in more than data_dir and admin.socket"
# The units and the sysusers file are the repository's, byte for byte.
for u in fleetgroups.service fleetgroups-backup.service fleetgroups-backup.timer; do
    cmp "systemd/$u" "$work/root/usr/lib/systemd/system/$u" || fail "packaged $u differs from systemd/$u"
done
cmp systemd/fleetgroups.sysusers "$work/root/usr/lib/sysusers.d/fleetgroups.conf" ||
    fail "packaged sysusers.d file differs"
# Every maintainer script is valid sh and does what it must.
for s in postinst prerm postrm; do
    [ -x "$work/control/$s" ] || fail "$s missing or not executable"
    sh -n "$work/control/$s" || fail "$s is not valid sh"
done
has() { grep -qF -- "$2" "$work/control/$1" || fail "$1 lacks: $2"; }
has postinst 'systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} fleetgroups.conf'
has postinst 'deb-systemd-helper enable fleetgroups.service'
has postinst 'deb-systemd-invoke $_dh_action fleetgroups.service'
has postinst 'deb-systemd-helper enable fleetgroups-backup.timer'
has postinst 'deb-systemd-invoke restart fleetgroups-backup.timer'
has prerm 'deb-systemd-invoke stop fleetgroups.service'
has postrm 'deb-systemd-helper purge fleetgroups.service'
has postrm 'rm -rf /var/lib/fleetgroups'
has postrm 'userdel fleetgroups'
has postrm 'FLEETGROUPS_PURGE_BACKUPS'
has postinst 'fleetgroups: systemd is not running, so the service was not started'
# The backup service itself is never started by the package (the timer starts it).
if grep -E 'deb-systemd-invoke (start|restart|\$_dh_action) .*fleetgroups-backup\.service' "$work/control/postinst"; then
    fail "postinst starts fleetgroups-backup.service"
fi
# The user is created before anything runs as it: the sysusers call comes first.
sysusers_line=$(grep -n 'systemd-sysusers' "$work/control/postinst" | head -1 | cut -d: -f1)
install_line=$(grep -n 'install -d -m 0700 -o fleetgroups' "$work/control/postinst" | head -1 | cut -d: -f1)
[ "$sysusers_line" -lt "$install_line" ] || fail "postinst creates the data directory before the user"

# ---------------------------------------------------------------------------------
step "3. install ($( [ -d /run/systemd/system ] && echo "systemd running" || echo "systemd not running"))"
installed=yes
dpkg -i "$deb1" </dev/null >"$work/install.log" 2>&1 || {
    cat "$work/install.log"
    fail "dpkg -i $deb1"
}
cat "$work/install.log"
# Without a running systemd nothing starts, and the install says how to start it.
if [ -d /run/systemd/system ]; then
    if grep -q 'systemd is not running' "$work/install.log"; then fail "the install says systemd is not running"; fi
else
    grep -qx 'fleetgroups: systemd is not running, so the service was not started; start it as its unit would: install -d -m 0700 -o fleetgroups -g fleetgroups /run/fleetgroups && cd /var/lib/fleetgroups && runuser -u fleetgroups -- fleetgroups --config /etc/fleetgroups/config.toml serve' "$work/install.log" ||
        fail "the install without systemd does not say how to start the service"
fi
[ "$(dpkg-query -W -f '${Status} ${Version}' fleetgroups)" = "install ok installed $version-1" ] ||
    fail "dpkg-query: $(dpkg-query -W -f '${Status} ${Version}' fleetgroups)"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd fleetgroups) || fail "no user fleetgroups"
[ "$uid" -lt 1000 ] || fail "fleetgroups is not a system user (uid $uid)"
[ "$home" = /var/lib/fleetgroups ] || fail "home of fleetgroups: $home"
case "$shell" in */nologin) ;; *) fail "fleetgroups has a login shell: $shell" ;; esac
[ "$(getent group fleetgroups | cut -d: -f3)" = "$gid" ] || fail "fleetgroups' group is not its own"
[ "$(stat -c '%U:%G %a' /var/lib/fleetgroups)" = "fleetgroups:fleetgroups 700" ] ||
    fail "/var/lib/fleetgroups: $(stat -c '%U:%G %a' /var/lib/fleetgroups)"
[ "$(stat -c '%U:%G %a' /etc/fleetgroups/config.toml)" = "root:root 644" ] ||
    fail "/etc/fleetgroups/config.toml: $(stat -c '%U:%G %a' /etc/fleetgroups/config.toml)"
# Enabled like dh_installsystemd enables (symlinks), whether systemd runs or not; the
# backup service only through its timer.
[ -L /etc/systemd/system/multi-user.target.wants/fleetgroups.service ] || fail "fleetgroups.service is not enabled"
[ -L /etc/systemd/system/timers.target.wants/fleetgroups-backup.timer ] || fail "fleetgroups-backup.timer is not enabled"
if find /etc/systemd/system -name fleetgroups-backup.service | grep -q .; then
    fail "fleetgroups-backup.service is enabled on its own"
fi
if [ -d /run/systemd/system ]; then
    systemctl is-active --quiet fleetgroups-backup.timer || fail "the backup timer is not active"
fi

/usr/bin/fleetgroups --version | tee "$work/version"
grep -q "^fleetgroups $version (revision [^,]*, target [^,]*, rustc " "$work/version" ||
    fail "--version does not name version, revision, target and rustc"
want_rev=${FLEETGROUPS_BUILD_REVISION:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
grep -qF "(revision $want_rev," "$work/version" || fail "--version does not name revision $want_rev"
zcat /usr/share/man/man1/fleetgroups.1.gz | grep -q '^\.TH fleetgroups 1' || fail "the man page is not roff"
bash -c 'source /usr/share/bash-completion/completions/fleetgroups && complete -p fleetgroups' >/dev/null ||
    fail "the bash completion does not register"

# The packaged units, as systemd reads them from where the package put them.
if command -v systemd-analyze >/dev/null; then
    # With man installed, verify also finds the units' Documentation=man: pages.
    man_check=--man=yes
    command -v man >/dev/null || man_check=--man=no
    systemd-analyze verify "$man_check" /usr/lib/systemd/system/fleetgroups.service \
        /usr/lib/systemd/system/fleetgroups-backup.service \
        /usr/lib/systemd/system/fleetgroups-backup.timer 2>"$work/verify" || {
        cat "$work/verify"
        fail "systemd-analyze verify"
    }
    [ ! -s "$work/verify" ] || {
        cat "$work/verify"
        fail "systemd-analyze verify warned"
    }
    for u in fleetgroups.service fleetgroups-backup.service; do
        rating=$(systemd-analyze security --offline=yes --no-pager "/usr/lib/systemd/system/$u" |
            grep 'Overall exposure level')
        echo "$rating"
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$rating")
        awk -v s="$score" 'BEGIN { exit !(s != "" && s + 0 <= 2.0) }' || fail "$u is rated worse than OK"
    done
fi

# ---------------------------------------------------------------------------------
step "4. run as the service user, as ExecStart does"
unit=/usr/lib/systemd/system/fleetgroups.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ "$exec_start" = "/usr/bin/fleetgroups --config /etc/fleetgroups/config.toml serve" ] ||
    fail "unexpected ExecStart: $exec_start"
mapfile -t unit_env < <(sed -n 's/^Environment=//p' "$unit")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
# What systemd does before ExecStart: RuntimeDirectory=fleetgroups (0700, the user's)
# for the admin socket, StateDirectory= (the package already made it).
install -d -m 0700 -o fleetgroups -g fleetgroups /run/fleetgroups
# A free port without a race: the kernel picks it (listen port 0, the only change
# from the unit, passed the way an operator's drop-in would: the environment), and
# the server's start-up line says which.
log="$work/server.log"
(
    cd "$workdir"
    # shellcheck disable=SC2086 # ExecStart is split into words, as systemd does.
    exec runuser -u fleetgroups -- env "${unit_env[@]}" FLEETGROUPS_LISTEN=127.0.0.1:0 $exec_start 2>>"$log"
) &
server_pid=$! # runuser's; the server is its child
listening() { grep -q 'listening on http://' "$log" 2>/dev/null || ! kill -0 "$server_pid" 2>/dev/null; }
wait_for 30 "the server to listen" listening
kill -0 "$server_pid" 2>/dev/null || {
    cat "$log"
    fail "the server exited"
}
cat "$log"
grep -q "starting fleetgroups $version (revision $want_rev" "$log" || fail "the start-up line does not name the build"
addr=$(sed -n 's/.*listening on http:\/\/\([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -1)
port=${addr##*:}
fg_pid=$(pgrep -P "$server_pid" -x fleetgroups) || fail "no fleetgroups process under runuser"
[ "$(ps -o user= -p "$fg_pid")" = fleetgroups ] || fail "the server does not run as fleetgroups"

# One HTTP/1.1 request over bash's /dev/tcp: no curl on the machine needed.
http_get() {
    local path=$1
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
    timeout 10 cat <&3
    exec 3<&-
}
http_get /healthz >"$work/healthz"
head -1 "$work/healthz" | grep -q '^HTTP/1.1 200' || fail "/healthz: $(head -1 "$work/healthz")"
grep -q '"status":"ok"' "$work/healthz" || fail "/healthz body: $(cat "$work/healthz")"
http_get /metrics >"$work/metrics"
grep -q "^fleetgroups_build_info{version=\"$version\",revision=\"$want_rev\",target=\"[^\"]*\"} 1" "$work/metrics" ||
    fail "/metrics has no fleetgroups_build_info for this build"
# The probe a container or monitor would run, as the service user, with the
# configuration the service reads.
runuser -u fleetgroups -- env FLEETGROUPS_LISTEN="$addr" /usr/bin/fleetgroups --config /etc/fleetgroups/config.toml healthcheck ||
    fail "fleetgroups healthcheck against the running server"

key=/var/lib/fleetgroups/initial-api-key
wait_for 10 "the initial key file" test -s "$key"
[ "$(stat -c '%U:%G %a' "$key")" = "fleetgroups:fleetgroups 600" ] ||
    fail "$key: $(stat -c '%U:%G %a' "$key")"
grep -q "$key" "$log" || fail "the log does not name the initial key file"
if grep -qF "$(cat "$key")" "$log"; then fail "the log holds the initial key"; fi
# The CLI as docs/operations/install.md says to run it, through the running server's admin socket.
runuser -u fleetgroups -- /usr/bin/fleetgroups --config /etc/fleetgroups/config.toml user list >"$work/users"
grep -q 'admin' "$work/users" || fail "user list: $(cat "$work/users")"
# The backup unit's command, as its ExecStart runs it, once `backup --dir` exists in
# this build (issue 12 item 4 lands it separately).
backup_unit=/usr/lib/systemd/system/fleetgroups-backup.service
if /usr/bin/fleetgroups backup --help | grep -q -- '--dir'; then
    install -d -m 0700 -o fleetgroups -g fleetgroups /var/lib/fleetgroups/backups
    mapfile -t backup_env < <(sed -n 's/^Environment=//p' "$backup_unit")
    backup_cmd=$(sed -n 's/^ExecStart=//p' "$backup_unit")
    # shellcheck disable=SC2086
    (cd /var/lib/fleetgroups && runuser -u fleetgroups -- env "${backup_env[@]}" $backup_cmd) ||
        fail "the backup unit's ExecStart failed"
    find /var/lib/fleetgroups/backups -type f -user fleetgroups | grep -q . ||
        fail "the backup unit wrote no file owned by fleetgroups"
else
    echo "(backup --dir is not in this build: the backup unit's ExecStart was not run)"
fi
# SIGTERM to the server, as `systemctl stop` sends it; runuser passes its exit code on.
kill -TERM "$fg_pid"
wait "$server_pid" || fail "the server did not exit 0 after SIGTERM"
server_pid=

# ---------------------------------------------------------------------------------
step "5. upgrade over an edited configuration"
sed -i 's/^shutdown_grace_secs = .*/shutdown_grace_secs = 7  # edited by package-test/' /etc/fleetgroups/config.toml
dpkg -i "$deb2" </dev/null || fail "dpkg -i $deb2"
[ "$(dpkg-query -W -f '${Version}' fleetgroups)" = "$version-2" ] || fail "not upgraded"
grep -qx 'shutdown_grace_secs = 7  # edited by package-test' /etc/fleetgroups/config.toml ||
    fail "the edited configuration did not survive the upgrade"
if ls /etc/fleetgroups/ | grep -q 'dpkg-'; then fail "dpkg left $(ls /etc/fleetgroups)"; fi
[ "$(getent passwd fleetgroups | cut -d: -f3)" = "$uid" ] || fail "the upgrade changed the user"
[ -s "$key" ] || fail "the upgrade lost the data"
runuser -u fleetgroups -- /usr/bin/fleetgroups --config /etc/fleetgroups/config.toml check-config >"$work/effective" 2>&1 ||
    fail "check-config after the upgrade: $(cat "$work/effective")"
grep -qx 'shutdown_grace_secs = 7' "$work/effective" || fail "the edit is not in effect: $(cat "$work/effective")"
grep -qx 'data_dir = "/var/lib/fleetgroups"' "$work/effective" || fail "data_dir: $(cat "$work/effective")"
# The store itself, opened by the CLI with the server stopped.
runuser -u fleetgroups -- /usr/bin/fleetgroups --config /etc/fleetgroups/config.toml user list >"$work/users" 2>&1 ||
    fail "user list after the upgrade: $(cat "$work/users")"
grep -q 'admin' "$work/users" || fail "the upgrade lost user admin: $(cat "$work/users")"

# ---------------------------------------------------------------------------------
step "6. remove keeps, purge removes"
dpkg --remove fleetgroups </dev/null || fail "dpkg --remove"
[ ! -e /usr/bin/fleetgroups ] || fail "remove left the binary"
[ -s "$key" ] || fail "remove deleted the data"
[ -f /etc/fleetgroups/config.toml ] || fail "remove deleted the configuration"
getent passwd fleetgroups >/dev/null || fail "remove deleted the user"
backups_before=$(find /var/lib/fleetgroups/backups -type f -name 'fleetgroups-*.jsonl.gz' 2>/dev/null | wc -l)
dpkg --purge fleetgroups </dev/null >"$work/purge.log" 2>&1 || {
    cat "$work/purge.log"
    fail "dpkg --purge"
}
installed=
cat "$work/purge.log"
grep -qx 'fleetgroups: purged the data directory /var/lib/fleetgroups (the store, its users and keys), /run/fleetgroups, /etc/fleetgroups and the user fleetgroups' "$work/purge.log" ||
    fail "purge does not say what it removed"
if [ "$backups_before" -gt 0 ]; then
    kept_backups=$(sed -n 's/^fleetgroups: kept the backups: moved to \([^ ]*\) (remove them.*/\1/p' "$work/purge.log")
    [ -n "$kept_backups" ] || fail "purge does not say where the backups went"
    [ "$(find "$kept_backups" -type f -name 'fleetgroups-*.jsonl.gz' | wc -l)" = "$backups_before" ] ||
        fail "purge kept $(ls "$kept_backups") of $backups_before backups"
    [ "$(stat -c '%U:%G %a' "$kept_backups")" = "root:root 700" ] || fail "$kept_backups: $(stat -c '%U:%G %a' "$kept_backups")"
    if find "$kept_backups" ! -user root | grep .; then fail "kept backups not owned by root"; fi
fi
[ ! -e /var/lib/fleetgroups ] || fail "purge left /var/lib/fleetgroups"
[ ! -e /etc/fleetgroups ] || fail "purge left /etc/fleetgroups: $(ls -A /etc/fleetgroups)"
[ ! -e /run/fleetgroups ] || fail "purge left /run/fleetgroups"
! getent passwd fleetgroups >/dev/null || fail "purge left the user"
! getent group fleetgroups >/dev/null || fail "purge left the group"
if find /etc/systemd/system -name 'fleetgroups*' | grep .; then fail "purge left unit links"; fi
if dpkg-query -W fleetgroups >/dev/null 2>&1; then fail "dpkg still knows the package"; fi
# Asked to, purge removes the backups too, and says so.
installed=yes
dpkg -i "$deb1" </dev/null >/dev/null 2>&1 || fail "dpkg -i $deb1 (again)"
install -d -m 0700 -o fleetgroups -g fleetgroups /var/lib/fleetgroups/backups
runuser -u fleetgroups -- touch /var/lib/fleetgroups/backups/fleetgroups-20261201T085300Z.jsonl.gz
ls -d /var/backups/fleetgroups/* >"$work/kept.before" 2>/dev/null || true
FLEETGROUPS_PURGE_BACKUPS=yes dpkg --purge fleetgroups </dev/null >"$work/purge.log" 2>&1 || {
    cat "$work/purge.log"
    fail "dpkg --purge with FLEETGROUPS_PURGE_BACKUPS=yes"
}
installed=
grep -qx 'fleetgroups: FLEETGROUPS_PURGE_BACKUPS=yes: removing the backups in /var/lib/fleetgroups/backups' "$work/purge.log" ||
    fail "purge with FLEETGROUPS_PURGE_BACKUPS=yes does not say it removes the backups: $(cat "$work/purge.log")"
[ ! -e /var/lib/fleetgroups ] || fail "purge with FLEETGROUPS_PURGE_BACKUPS=yes left /var/lib/fleetgroups"
ls -d /var/backups/fleetgroups/* 2>/dev/null | diff "$work/kept.before" - >/dev/null ||
    fail "purge with FLEETGROUPS_PURGE_BACKUPS=yes kept backups anyway"
step "done"
