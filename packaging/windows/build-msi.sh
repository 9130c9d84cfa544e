#!/usr/bin/env bash
# Builds the Windows minion's MSI with wixl (Debian msitools):
#   packaging/windows/build-msi.sh EXE VERSION OUT.msi
# Used by scripts/package.sh and by the Wine test, so both ship the same
# MSI. wixl ignores the Permanent and NeverOverwrite attributes of a
# component, so they are set afterwards in the Component table with
# msibuild: the default minion.toml stays on uninstall and an edited one is
# never replaced.
set -euo pipefail
exe=$1 version=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/halite-minion.exe"
cp "$here/minion.toml" "$stage/minion.toml"
# wixl warns about each attribute it ignores; the two below are fixed next.
(cd "$stage" && wixl -a x64 -D "Version=$version" -o "$out" "$here/halite-minion.wxs" 2>/dev/null)
# 256 = 64-bit component, 16 = Permanent, 128 = NeverOverwrite.
msibuild "$out" -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'MinionConfig'"
