#!/usr/bin/env bash
# Builds the Debian package: target/debian/fleetgroups_<version>-<revision>_<arch>.deb.
# Needs cargo-deb (`cargo install cargo-deb --locked`). Arguments go to `cargo deb`
# (e.g. `--deb-revision 2`, `--output DIR`, `--fast`).
#
# Three steps, because `cargo deb` alone cannot make every file the package ships:
# 1. `cargo build --release --locked --bin fleetgroups` (the binary; a warm build is
#    a no-op);
# 2. `fleetgroups-assets target/deb-assets` (a packaging tool of this crate, run with
#    `cargo run`, so it is a host program even when the package is cross-compiled)
#    writes the shell completions and man pages from the binary's own clap
#    definitions (src/assets.rs says why this is neither build.rs nor a hidden
#    subcommand), and the conffile is the repository's config.toml with data_dir
#    and admin.socket set to the service's paths — the same two values
#    systemd/fleetgroups.service sets, so a CLI started by hand finds the store and
#    the socket the service uses;
# 3. `cargo deb --no-build` packs it all (Cargo.toml [package.metadata.deb]).
# Cross-compiling: build the target's binary first (`cargo build --release --target
# T`), then `scripts/build-deb.sh --target T`.
set -euo pipefail
cd "$(dirname "$0")/.."

assets=target/deb-assets

cargo build --release --locked --bin fleetgroups
rm -rf "$assets"
cargo run --locked --quiet --bin fleetgroups-assets -- "$assets"

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

cargo deb --no-build --locked "$@"
