#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the
# tests meet (git servers, a real Tomcat 10, pepper, ...), builds the
# binaries the whole-system tests start, runs every test binary (on past
# a failure) and ends with one summary line. Extra arguments go to
# `cargo test` (e.g. `bash scripts/test.sh -p halite-master`).
#
# As root it installs missing Debian packages itself; otherwise it lists
# them with the one command that installs them and stops before compiling.
# pepper (the salt-api CLI the compatibility test drives) goes into a
# virtualenv under target/test-tools/, never into the system's Python.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
started=$SECONDS

# Debian packages the suite needs. The Rust toolchain is pinned in
# rust-toolchain.toml (rustup fetches it on the first cargo call).
# - git_deploy's tests serve real repositories: git (daemon, http-backend),
#   python3 (the HTTPS front), openssl (a test CA), unshare (util-linux: a
#   full and a read-only filesystem for one minion).
# - java_tomcat's tests run a real Tomcat 10 with its manager and build
#   WARs with the JDK's `jar`; the harness talks to it with curl.
# - pepper is installed with python3's venv module.
# - the Windows minion is cross-built with mingw-w64 and run under Wine;
#   its MSI is built with wixl and patched with msibuild (msitools).
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
[ -x /usr/share/tomcat10/bin/catalina.sh ] || need+=(tomcat10)
[ -d /usr/share/tomcat10-admin/manager ] || need+=(tomcat10-admin)
command -v jar >/dev/null || need+=(default-jdk-headless)
command -v curl >/dev/null || need+=(curl)
# The portal's browser test: headless Chromium through WebDriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine wine64)
command -v wixl >/dev/null || need+=(wixl)
command -v msibuild >/dev/null || need+=(msitools)
# - the packages are built (lintian, rpm) and installed into a Debian root
#   (debootstrap) booted with systemd-nspawn (systemd-container).
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
# - the shared store's tests start a throwaway PostgreSQL cluster.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || need+=(postgresql)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
install_debian_packages scripts/test.sh ${need[@]+"${need[@]}"}

# pepper in its own virtualenv (the tests look for it on PATH, and in
# this directory when run by plain `cargo test`).
tools=$PWD/target/test-tools
venv=$tools/pepper
python_tool scripts/test.sh "$venv" salt-pepper pepper
export PATH="$venv/bin:$PATH"

# The Windows minion, for its Wine test.
windows_target

cargo build --workspace --bins && cargo build -p halite-minion --target x86_64-pc-windows-gnu || {
  echo "scripts/test.sh: the build failed; no test ran ($((SECONDS - started)) s)"
  exit 1
}
# The packages the install test installs, a rebuilt set to upgrade to,
# and the Debian root it boots (made once, kept in target/). They are made
# from the debug builds above: the packaging is what the test checks, and
# a release build would add ~14 minutes on two cores.
export HALITE_PACKAGE_PROFILE=debug
bash scripts/package.sh --linux >"$tools/package.log" 2>&1 \
  && HALITE_PACKAGE_RELEASE=2 HALITE_PACKAGE_OUT=target/packages-upgrade \
    bash scripts/package.sh --linux >>"$tools/package.log" 2>&1 || {
  tail -n 30 "$tools/package.log"
  echo "scripts/test.sh: building the packages failed (target/test-tools/package.log); no test ran"
  exit 1
}
nspawn_root=target/nspawn/bookworm
if [ ! -x "$nspawn_root/usr/lib/systemd/systemd" ]; then
  echo "scripts/test.sh: making a Debian bookworm root for the package test (debootstrap, about 2 minutes, once)"
  rm -rf "$nspawn_root.tmp"
  mkdir -p target/nspawn
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm \
    "$nspawn_root.tmp" http://deb.debian.org/debian >"$tools/debootstrap.log" 2>&1 \
    && mv "$nspawn_root.tmp" "$nspawn_root" || {
    tail -n 20 "$tools/debootstrap.log"
    echo "scripts/test.sh: debootstrap failed (target/test-tools/debootstrap.log); no test ran"
    exit 1
  }
fi
log=$tools/last-run.log
mkdir -p "$tools"
# Every test binary runs, even after one fails; the output is also kept
# for the summary.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

elapsed=$((SECONDS - started))
passed=0 failed=0 ignored=0 binaries=0
while read -r p f i; do
  passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i)) binaries=$((binaries + 1))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
# Binaries with a failure: the "Running" line before each FAILED result.
failing=$(awk '/^ *Running /{name=$NF; gsub(/[()]/, "", name)} /^ *Doc-tests /{name="doc-tests-" $2}
  /^test result: FAILED/{print name}' "$log" | sed 's#.*/##; s/-[0-9a-f]*$//' | sort -u | tr '\n' ' ')
when="$((elapsed / 60)) min $((elapsed % 60)) s"
if [ "$status" -eq 0 ]; then
  echo "scripts/test.sh: all tests passed: $passed passed, $ignored ignored, in $binaries test binaries ($when)"
else
  echo "scripts/test.sh: FAILED: $failed failed, $passed passed, $ignored ignored, in $binaries test binaries ($when); failing: ${failing:-see the output above} (full output: target/test-tools/last-run.log)"
fi
exit "$status"
