#!/usr/bin/env bash
# Builds the Debian package: target/debian/fleetgroups_<version>-<revision>_<arch>.deb.
# Needs cargo-deb (`cargo install cargo-deb --locked`). Arguments go to `cargo deb`
# (e.g. `--deb-revision 2`, `--output DIR`, `--fast`).
#
# Three steps, because `cargo deb` alone cannot make every file the package ships:
# 1. `cargo build --release --locked` (the binary; a warm build is a no-op);
# 2. `fleetgroups generate-assets target/deb-assets` writes the shell completions and
#    man pages from the binary's own clap definitions (src/assets.rs says why this is
#    not build.rs), and the conffile is the repository's config.toml with data_dir
#    and admin.socket set to the service's paths — the same two values
#    systemd/fleetgroups.service sets, so a CLI started by hand finds the store and
#    the socket the service uses;
# 3. `cargo deb --no-build` packs it all (Cargo.toml [package.metadata.deb]).
# Cross-compiling (`--target`): step 2 needs a binary that runs here; the files do not
# depend on the target, so run it with a host build of the same source.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
assets=target/deb-assets

cargo build --release --locked
rm -rf "$assets"
"$target_dir/release/fleetgroups" generate-assets "$assets"

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
