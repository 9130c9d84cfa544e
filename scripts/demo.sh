#!/usr/bin/env bash
# A local halite in one command: a master and three minions (web01, web02,
# db01) on 127.0.0.1 with an embedded store, keys accepted, real jobs run
# through master-cli, and a git_deploy of a sample app (served by
# `git daemon`) with a rollback. Everything lives in .halite-demo/
# (git-ignored).
#
#   scripts/demo.sh          run the demo, then stop what it started
#   scripts/demo.sh --keep   leave the master and minions running
set -euo pipefail

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
demo=$root/.halite-demo
bin=$root/target/debug
config=$demo/master/master.toml
minions=(web01:web web02:web db01:db)
pids=()

bold=$'\033[1m' plain=$'\033[0m'
[ -t 1 ] || bold='' plain=''
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
cli() { "$bin/master-cli" --config "$config" "$@"; }
show() { # Prints the command (single-quoting words that need it), then runs it.
    local word line="$ master-cli"
    for word; do [[ $word =~ ^[[:alnum:]_.,:@=/+-]+$ ]] && line+=" $word" || line+=" '$word'"; done
    printf '\n%s%s%s\n' "$bold" "$line" "$plain"
    cli "$@"
}

stop() { # PIDs: TERM, then KILL whatever is left after 10 s.
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$@" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$@" 2>/dev/null || true
}

finish() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "demo.sh: failed (exit $status); last log lines:" >&2
        for log in "$demo"/*/log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 5 "$log" >&2; }; done
    fi
    if [ "$keep" -eq 1 ] && [ "$status" -eq 0 ]; then
        cat <<EOF

Left running (PIDs in .halite-demo/pids). From $root, try:
  target/debug/master-cli --config .halite-demo/master/master.toml minions
  target/debug/master-cli --config .halite-demo/master/master.toml run target='*' cmd.run 'uptime'
Stop them with:
  kill \$(cat .halite-demo/pids)      (or run scripts/demo.sh again)
EOF
    else
        stop "${pids[@]}"
    fi
    exit "$status"
}
trap finish EXIT

# Waits up to $1 seconds for the command "$2..." to succeed, while every
# process started here stays alive.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" && return 0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || { echo "demo.sh: process $pid died while waiting for $what" >&2; return 1; }
        done
        sleep 0.1
    done
    echo "demo.sh: timed out after ${seconds}s waiting for $what" >&2
    return 1
}

# How many entries of `master-cli --json ARGS...` have "status": "$1".
count() { local status=$1; shift; cli --json "$@" 2>/dev/null | grep -cE "\"status\": \"$status\"" || true; }
all_pending() { [ "$(count pending keys list)" -eq ${#minions[@]} ]; }
all_up() { [ "$(count up minions)" -eq ${#minions[@]} ]; }
port() { sed -nE "s/.*\"$1\":([0-9]+).*/\1/p" "$demo/master/data/ports.json" 2>/dev/null; }
ports_written() { [ -n "$(port return_port)" ]; }

cd "$root"
say "Building halite (cargo build --workspace --bins)"
if [ -x "$bin/halite-master" ] && [ -x "$bin/halite-minion" ] && [ -x "$bin/master-cli" ]; then
    echo "Binaries in target/debug/ exist: rebuilding what changed (seconds)."
else
    echo "First build: about 15 minutes on 2 cores, 4 on 8 (rustup may first fetch the"
    echo "toolchain pinned in rust-toolchain.toml). cargo prints each crate as it compiles;"
    echo "the binaries land in target/debug/ (halite-master, halite-minion, master-cli)."
fi
build_started=$SECONDS
cargo build --workspace --bins
echo "Built in $((SECONDS - build_started)) s."

# Stop what a previous `--keep` run left, if it is still ours, then start clean.
if [ -f "$demo/pids" ]; then
    old=()
    for pid in $(cat "$demo/pids"); do
        grep -qs "$demo" "/proc/$pid/cmdline" && old+=("$pid")
    done
    stop "${old[@]}"
fi
rm -rf "$demo"
mkdir -p "$demo/master"

say "Starting the master (ports picked by the OS, written to data/ports.json)"
cat >"$config" <<EOF
id = "demo-master"
interface = "127.0.0.1"
publish_port = 0
return_port = 0
api_bind = "127.0.0.1:0"
pki_dir = "pki"
data_dir = "data"
heartbeat_interval = 2
EOF
# A sample app for git_deploy: a repository with tags v1 and v2, served
# by git-daemon (the demo's only use of system git; minions fetch with
# their own git code).
if command -v git >/dev/null; then
    git_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$demo/git" "$demo/shop-work" "$demo/master/apps.d"
    g() { git -C "$demo/shop-work" -c user.name=demo -c user.email=demo@example.invalid "$@"; }
    g init -q -b main
    git init -q --bare "$demo/git/shop.git"
    for v in v1 v2; do
        echo "<h1>shop $v</h1>" >"$demo/shop-work/index.html"
        g add -A && g commit -qm "$v" && g tag "$v"
    done
    g push -q "$demo/git/shop.git" main --tags
    # git-daemon itself, not the `git` wrapper, so its PID is the server's.
    "$(git --exec-path)/git-daemon" --reuseaddr --export-all --listen=127.0.0.1 --port="$git_port" \
        --base-path="$demo/git" "$demo/git" >"$demo/git/log" 2>&1 &
    pids+=($!)
    echo "$!" >>"$demo/pids"
    cat >"$demo/master/apps.d/shop.toml" <<APP
repo = "git://127.0.0.1:$git_port/shop.git"
target = "web01"
path = "$demo/srv/shop"
shared = ["storage"]
post_deploy = "echo live: \$(cat index.html)"
[health]
command = "test -s index.html"
APP
fi
NO_COLOR=1 "$bin/halite-master" --config "$config" >"$demo/master/log" 2>&1 &
pids+=($!)
echo "$!" >>"$demo/pids"
wait_for 30 "the master's ports.json" ports_written
fingerprint=$(cli --json keys fingerprint | sed -nE 's/.*"master_fingerprint": "([0-9a-f:]+)".*/\1/p')
echo "master: API $(sed -nE 's/.*"api":"([^"]+)".*/\1/p' "$demo/master/data/ports.json"), publish $(port publish_port), return $(port return_port)"
echo "master fingerprint: $fingerprint"

say "Starting minions (id:role) ${minions[*]}"
for entry in "${minions[@]}"; do
    id=${entry%%:*} role=${entry#*:}
    mkdir -p "$demo/$id"
    cat >"$demo/$id/minion.toml" <<EOF
id = "$id"
masters = ["127.0.0.1:$(port return_port)"]
master_fingerprint = "$fingerprint"
pki_dir = "pki"
data_dir = "data"
auth_retry = 1

[grains]
role = "$role"
EOF
    NO_COLOR=1 "$bin/halite-minion" --config "$demo/$id/minion.toml" >"$demo/$id/log" 2>&1 &
    pids+=($!)
    echo "$!" >>"$demo/pids"
done
wait_for 30 "${#minions[@]} pending keys" all_pending
show keys list
show keys accept --all
wait_for 30 "${#minions[@]} minions up" all_up
show minions

say "Running jobs"
show run target='web*' test.ping
show run target='*' cmd.run 'uname -sr'
show run 'target=G@role:db or web01' tgt_type=compound grains.get os
show jobs list

if [ -f "$demo/master/apps.d/shop.toml" ]; then
    say "Releasing an app (apps.d/shop.toml, fetched from git-daemon by the minion)"
    show apps
    show run target=web01 git_deploy tag=v1
    show run target=web01 git_deploy tag=v2
    show run target=web01 git_deploy.rollback
    show releases shop --history
    echo "live: $(cat "$demo/srv/shop/current/index.html")"
else
    say "git is not installed: skipping the git_deploy part of the demo"
fi
