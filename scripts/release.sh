#!/usr/bin/env bash
# One release, every artifact: scripts/release.sh [--target T] [--out DIR]
#
# Writes into DIR (default target/release-artifacts/<version>/):
#   fleetgroups_<version>-1_<arch>.deb          the Debian package (scripts/build-deb.sh)
#   fleetgroups-<version>-<target>.tar.gz      for other systems: bin/fleetgroups, the
#                                              systemd units and sysusers file, the example
#                                              config.toml, man pages, completions,
#                                              README.md, LICENSE, CHANGELOG.md, docs/
#   fleetgroups-<version>-release-notes.md     this version's section of CHANGELOG.md
#   SHA256SUMS                                 `sha256sum -c SHA256SUMS` checks the rest
# and prints the listing with sizes and checksums.
#
# The release notes are the `## [<version>]` section of CHANGELOG.md (Keep a Changelog);
# a version without one is refused, so no release goes out undescribed. The tarball is
# reproducible from the same build: files sorted, owned by 0:0, dated at the commit.
# Cross-compiling (e.g. --target aarch64-unknown-linux-gnu, docs/operations/install.md)
# needs the target's toolchain and linker; the man pages and completions come from a
# host tool either way.
set -euo pipefail
cd "$(dirname "$0")/.."

target=
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: scripts/release.sh [--target T] [--out DIR]" >&2; exit 2 ;;
    esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
host=$(rustc -vV | sed -n 's/^host: //p')
triple=${target:-$host}
out=${out:-target/release-artifacts/$version}
bindir=target/${target:+$target/}release

# The notes first: a version CHANGELOG.md does not describe is not released.
notes=$(awk -v v="$version" '
    $0 ~ "^## \\[" v "\\]" { on = 1; print; next }
    on && /^## \[/ { exit }
    on { print }' CHANGELOG.md)
if [ -z "$notes" ]; then
    echo "release: CHANGELOG.md has no section \"## [$version]\": write the release notes first" >&2
    exit 1
fi

rm -rf "$out"
mkdir -p "$out"
printf '%s\n' "$notes" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$out/fleetgroups-$version-release-notes.md"

# The package (and with it the release build and the generated assets).
bash scripts/build-deb.sh --output "$out/" ${target:+--target "$target"}

# The tarball, from the same files the package holds.
name=fleetgroups-$version-$triple
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/fleetgroups-$version
install -d "$root/bin" "$root/systemd" "$root/man/man1" "$root/man/man5" "$root/completions"
install -m 0755 "$bindir/fleetgroups" "$root/bin/fleetgroups"
install -m 0644 systemd/fleetgroups.service systemd/fleetgroups-backup.service \
    systemd/fleetgroups-backup.timer systemd/fleetgroups.sysusers "$root/systemd/"
install -m 0644 config.toml README.md LICENSE CHANGELOG.md SECURITY.md "$root/"
install -m 0644 target/deb-assets/man/*.1 "$root/man/man1/"
install -m 0644 target/deb-assets/man/*.5 "$root/man/man5/"
install -m 0644 target/deb-assets/completions/* "$root/completions/"
(cd docs && find . -name '*.md') | while read -r page; do
    install -D -m 0644 "docs/$page" "$root/docs/$page"
done
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    -C "$stage" -cf - "fleetgroups-$version" | gzip -9n >"$out/$name.tar.gz"

(cd "$out" && sha256sum -- *.deb *.tar.gz *-release-notes.md >SHA256SUMS && sha256sum -c --quiet SHA256SUMS)

echo "release $version ($triple) in $out:"
(cd "$out" && for f in *; do printf '  %-48s %10s bytes\n' "$f" "$(stat -c %s "$f")"; done)
echo "SHA256SUMS:"
sed 's/^/  /' "$out/SHA256SUMS"
