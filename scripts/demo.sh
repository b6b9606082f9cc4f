#!/usr/bin/env bash
# The main job, end to end on one machine without Lustre:
#   a simulated Lustre (coordinatool-sim serve + the liblustreapi.so.1 stand-in),
#   coordinatool-server registered as its only copytool, with the embedded store,
#   movers: the project's C reference copytool (an ordinary copytool linked with -llustreapi),
#   run unmodified under LD_PRELOAD=libcoordinatool_client.so,
# then archives, releases, restores (checking every file's content) and removes files while
# showing the server's queues and movers.
#
# Usage: scripts/demo.sh [FILES] [MOVERS]     (defaults: 200 files, 2 movers)
# Set KEEP=1 to keep the work directory (logs, archive, store) afterwards, and
# DEMO_PROFILE=debug to use debug builds (what the test command does, reusing its build).
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-200}
movers=${2:-2}

command -v cc >/dev/null || { echo "demo: needs a C compiler (apt-get install gcc)" >&2; exit 1; }

profile=${DEMO_PROFILE:-release}
case $profile in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) echo "demo: DEMO_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
echo "== building ($profile)"
cargo build "${build_flags[@]}" -q -p coordinatool-sim -p coordinatool-sim-lustreapi -p coordinatool-server \
    -p coordinatool-client -p coordinatool-preload
T=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$profile
ln -sf liblustreapi.so "$T/liblustreapi.so.1"    # the soname copytools and the server load

work=$(mktemp -d /tmp/coordinatool-demo.XXXXXX)
mnt=$work/lustre; archive=$work/archive; state=$work/state; logs=$work/logs
mkdir -p "$mnt" "$archive" "$state" "$logs"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "== kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

cc -std=c99 -O2 -Wall -Wextra -Werror -I crates/coordinatool-lustre/include \
    -o "$work/ctposix" crates/coordinatool-sim/copytool/ctposix.c -L "$T" -llustreapi -lpthread

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then echo "demo: timed out waiting for $what" >&2; tail -n 20 "$logs"/* >&2; exit 1; fi
        sleep 0.2
    done
}

sim() { "$T/coordinatool-sim" "$@"; }
lfs() { sim lfs "$@"; }

echo "== simulated Lustre on $mnt (fsname demo, 2 MDTs)"
sim serve "$mnt" --fsname demo --mdts 2 >"$logs/sim.log" 2>&1 & pids+=($!)
wait_for 20 "the simulator" test -S "$mnt/.lustre_sim/sock"
# What the upstream README recommends for a coordinatool setup.
sim lctl --mount "$mnt" set_param 'mdt.*.hsm.max_requests=1000' 'mdt.*.hsm.loop_period=1' \
    'mdt.*.hsm.active_request_timeout=2678400' >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "== coordinatool-server on 127.0.0.1:$port, embedded store in $state"
LD_LIBRARY_PATH=$T COORDINATOOL_STATE_DIR=$state \
    "$T/coordinatool-server" -H 127.0.0.1 -p "$port" "$mnt" >"$logs/server.log" 2>&1 & pids+=($!)
client() { "$T/coordinatool-client" -H 127.0.0.1 -p "$port" "$@"; }
wait_for 30 "the server" client status --timeout 1

echo "== $movers movers: ctposix under LD_PRELOAD=libcoordinatool_client.so"
for i in $(seq 1 "$movers"); do
    LD_LIBRARY_PATH=$T LD_PRELOAD=$T/libcoordinatool_client.so \
        COORDINATOOL_HOST=127.0.0.1 COORDINATOOL_PORT=$port COORDINATOOL_CLIENT_ID=mover$i \
        "$work/ctposix" --threads 4 --hsm-root "$archive" "$mnt" >"$logs/mover$i.log" 2>&1 & pids+=($!)
done

echo "== writing $files files"
mkdir -p "$mnt/data"
for i in $(seq 1 "$files"); do head -c $((4096 + RANDOM * 8)) /dev/urandom >"$mnt/data/f$i"; done
(cd "$mnt/data" && sha256sum f* >"$work/sums")

count_state() { # how many files show this word in `lfs hsm_state`
    (cd "$mnt/data" && ls | sed "s|^|$mnt/data/|" | xargs "$T/coordinatool-sim" lfs hsm_state 2>/dev/null | grep -c "$1" || true)
}
show() { client status 2>/dev/null | sed 's/^/   /' || true; }
wait_state() { # wait_state WORD N WHAT
    local deadline=$((SECONDS + 300)) n
    while n=$(count_state "$1"); [ "$n" -lt "$2" ]; do
        if [ $SECONDS -ge $deadline ]; then echo "demo: timed out: $3 ($n/$2)" >&2; tail -n 20 "$logs"/* >&2; exit 1; fi
        printf '   %s: %d/%d\r' "$3" "$n" "$2"; sleep 0.5
    done
    printf '   %s: %d/%d\n' "$3" "$n" "$2"
}
in_chunks() { # in_chunks CMD...: run `lfs CMD files` over every file, 40 at a time (lfs's E2BIG limit)
    (cd "$mnt/data" && ls | sed "s|^|$mnt/data/|" | xargs -n 40 "$T/coordinatool-sim" lfs "$@")
}

echo "== archive"
in_chunks hsm_archive
show
wait_state archived "$files" "archived"
show
echo "== release"
in_chunks hsm_release
wait_state released "$files" "released"
echo "== restore"
in_chunks hsm_restore
show
deadline=$((SECONDS + 300))
while [ "$(count_state released)" -gt 0 ]; do
    [ $SECONDS -lt $deadline ] || { echo "demo: restore timed out" >&2; tail -n 20 "$logs"/* >&2; exit 1; }
    sleep 0.5
done
if ! (cd "$mnt/data" && sha256sum --quiet -c "$work/sums"); then
    echo "demo: restored files differ from what was archived" >&2; exit 1
fi
echo "   all $files files restored with the right content"
echo "== remove the archive copies"
in_chunks hsm_remove
deadline=$((SECONDS + 300))
while [ "$(count_state exists)" -gt 0 ]; do
    [ $SECONDS -lt $deadline ] || { echo "demo: remove timed out" >&2; exit 1; }
    sleep 0.5
done
echo "   archive copies removed: $(find "$archive" -type f | wc -l) files left in the archive"
echo "== final server status"
show
echo "== done: $files files archived, released, restored and removed through coordinatool"
