#!/usr/bin/env bash
# Builds the Debian package: target/debian/fleetgroups_<version>-<revision>_<arch>.deb.
# Needs cargo-deb (`cargo install cargo-deb --locked`). Arguments go to `cargo deb`
# (e.g. `--deb-revision 2`, `--output DIR`, `--target T`).
#
# Three steps, because `cargo deb` alone cannot make every file the package ships:
# 1. `cargo build --release --locked --bins`: the binary and the packaging tool
#    `fleetgroups-assets`, both from the release build (after a warm `cargo build
#    --release` this is a no-op, and the whole script takes seconds: the tool used to
#    run from a debug build, which compiled the crate a second time);
# 2. target/release/fleetgroups-assets target/deb-assets writes the shell completions
#    and man pages from the binary's own clap definitions and configuration
#    declarations (src/ops/assets.rs says why this is neither build.rs nor a hidden
#    subcommand); the conffile is the repository's config.toml with data_dir and
#    admin.socket set to the service's paths — the same two values
#    systemd/fleetgroups.service sets, so a CLI started by hand finds the store and
#    the socket the service uses; changelog.gz is CHANGELOG.md;
# 3. `cargo deb --no-build` packs it all (Cargo.toml [package.metadata.deb]).
#
# Cross-compiling (e.g. arm64, docs/operations/install.md): `--target T` builds the
# binary for T; the assets tool is always a host program (completions and pages do not
# depend on the target), built for the host in step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

assets=target/deb-assets
target=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --target) target=${args[$((i + 1))]:-} ;;
        --target=*) target=${args[$i]#--target=} ;;
    esac
done

cargo build --release --locked --bins
if [ -n "$target" ]; then
    cargo build --release --locked --bin fleetgroups --target "$target"
fi
rm -rf "$assets"
target/release/fleetgroups-assets "$assets"

# Exactly these two lines change; a config.toml where either is missing is an error,
# not a package with the default ./data.
sed -e 's|^data_dir = .*|data_dir = "/var/lib/fleetgroups"|' \
    -e 's|^socket = .*|socket = "/run/fleetgroups/admin.sock"|' \
    config.toml > "$assets/config.toml"
for want in 'data_dir = "/var/lib/fleetgroups"' 'socket = "/run/fleetgroups/admin.sock"'; do
    if ! grep -qxF "$want" "$assets/config.toml"; then
        echo "build-deb: config.toml has no line to turn into: $want" >&2
        exit 1
    fi
done
chmod 0644 "$assets/config.toml"
# -n: no name or time in the gzip header, so the same CHANGELOG.md gives the same bytes.
gzip -9n <CHANGELOG.md >"$assets/changelog.gz"
chmod 0644 "$assets/changelog.gz"

cargo deb --no-build --locked "$@"
