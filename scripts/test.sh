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

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q

echo "== tests"
if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --locked --no-fail-fast
    # nextest does not run doctests
    cargo test --workspace --doc --locked -q
else
    cargo test --workspace --locked
fi
