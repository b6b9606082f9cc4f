#!/usr/bin/env bash
# The project's one test command (README: "run the tests"; .ci/run calls it too).
# Installs what the tests need when it is missing, then runs formatting, lints, docs and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v cc >/dev/null || need_pkgs+=(gcc)
# bindgen (the bindings drift test) needs libclang itself; libclang-cpp in the base image is not it.
dpkg -s libclang-dev >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
# The Redis store tests start their own redis-server on a loopback port.
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "== installing ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    else
        echo "missing packages: ${need_pkgs[*]} (run as root or install them)" >&2
        exit 1
    fi
fi

# redis-server is installed above: the Redis tests must run, not skip.
export COORDINATOOL_REQUIRE_REDIS=1

failed=()
# Run every step even when one fails, so one run shows every problem; fail at the end.
step() {
    local name=$1; shift
    echo "== $name"
    if ! "$@"; then
        echo "== FAILED: $name"
        failed+=("$name")
    fi
}

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q
# The library crates must stay publishable (metadata, README, no path-only dependency).
step "cargo package" cargo package --locked --no-verify --allow-dirty -q \
    -p coordinatool-config -p coordinatool-lustre -p coordinatool-proto -p coordinatool-sched -p coordinatool-sim
if command -v cargo-nextest >/dev/null; then
    step "cargo nextest" cargo nextest run --workspace --locked --no-fail-fast
    # nextest does not run doctests
    step "doctests" cargo test --workspace --doc --locked -q
else
    step "cargo test" cargo test --workspace --locked --no-fail-fast
fi

# The README's main job, small and on the debug build the tests just made: it must keep working.
step "demo (scripts/demo.sh, 40 files)" env DEMO_PROFILE=debug ./scripts/demo.sh 40 2

if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed steps: ${failed[*]}"
    exit 1
fi
echo "== all checks passed"
