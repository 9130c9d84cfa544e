#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests
# meet (git servers, a real Tomcat, pepper, ...), then runs the unit tests
# of every crate and the whole-system tests in tests/, which start the
# real binaries (so they are built first). Extra arguments go to
# `cargo test` (e.g. `bash scripts/test.sh -p halite-master`).
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the suite needs. The Rust toolchain is pinned in rust-toolchain.toml.
# git_deploy's tests serve real repositories: git (daemon, http-backend),
# python3 (the HTTPS front), openssl (a test CA), unshare (a full and a
# read-only filesystem for one minion).
need=()
command -v python3 >/dev/null || need+=(python3)
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
# (Debian's git package carries git-daemon and git-http-backend.)
command -v pip3 >/dev/null || command -v pip >/dev/null || need+=(python3-pip)
# java_tomcat's tests run a real Tomcat 10 (Debian's packages) and build
# WARs with the JDK's `jar`; the harness talks to it with curl.
[ -x /usr/share/tomcat10/bin/catalina.sh ] || need+=(tomcat10)
[ -d /usr/share/tomcat10-admin/manager ] || need+=(tomcat10-admin)
command -v jar >/dev/null || need+=(default-jdk-headless)
command -v curl >/dev/null || need+=(curl)
as_root=(); [ "$(id -u)" -eq 0 ] || as_root=(sudo)
if [ ${#need[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need[*]} (Debian packages)"
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# The salt-api compatibility test drives halite with the real pepper CLI.
if ! command -v pepper >/dev/null; then
  python3 -m pip install --quiet salt-pepper || python3 -m pip install --quiet --break-system-packages salt-pepper
fi

cargo build --workspace --bins
cargo test --workspace "$@"
