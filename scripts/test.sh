#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the whole-system
# tests in tests/, which start the real binaries (so they are built first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
