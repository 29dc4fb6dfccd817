#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain: installs the Debian
# packages the tests need, then runs formatting and lint checks, every unit, integration,
# property, stress and drop-in test (release), a second run of the stress-type tests under
# simulated NUMA nodes (TIERALLOC_SIMULATE_NODES), the multi-node NUMA tests inside a QEMU VM,
# the hwloc topology tests, and the loom model checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a C compiler (the drop-in tests compile C), QEMU + a 6.12 kernel + busybox
# (the NUMA VM), hwloc (the `hwloc` feature), sqlite3 and python3 (programs run under the
# malloc drop-in).
pkgs=(build-essential qemu-system-x86 linux-image-6.12-amd64 busybox-static cpio gzip
      libhwloc-dev libudev-dev pkg-config sqlite3 python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "need root to install: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0)) s)"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (workspace, all targets; then with the hwloc, prometheus and secure features)"
cargo clippy --workspace --all-targets -q -- -D warnings
# The optional features' code, the `secure` feature's hunks (docs/security.md) among it, in
# one run (one run less of the whole crate and its ~90 test targets than a run per feature).
cargo clippy --all-targets --features hwloc,prometheus,secure -q -- -D warnings

# The measurement probes behind docs/benchmarks.md (memfd-cost, mesh-sim) still build.
for f in scripts/probes/*.c; do cc -O2 -Wall -Wextra -Werror -fsyntax-only "$f"; done

step "tests: unit, integration, property, stress, drop-in, NUMA VM (release)"
# The drop-in's tests run programs under LD_PRELOAD of the .so, which `cargo test` does not
# produce by itself (a cdylib is not linked into tests): build it first, same profile.
cargo build -p tieralloc-preload --release
# The secure drop-in, in a target directory of its own (the feature would otherwise rebuild
# the default one), under the name preload/tests/heap_errors.rs looks for.
cargo build -p tieralloc-preload --release --features secure --target-dir target/secure
cp target/secure/release/libtieralloc_preload.so target/release/libtieralloc_preload_secure.so
TIERALLOC_REQUIRE_SECURE=1 cargo test --workspace --release
# The secure build's own tests: its lib tests and the heap errors (encoded links, the freed
# marker's double frees, fill, the guard pages, the canaries), and the integration tests whose
# paths the secure build changes (purging and RSS, huge blocks, routing, the free paths).
cargo test --release --features secure --lib --test heap_errors --test secure_guard --test secure_canary \
  --test secure_review --test scope --test scope_labels \
  --test idle --test purge --test trim --test churn --test tiers --test simnodes --test huge \
  --test fork --test cross_thread --test free_reuse --test recreate --test wrong_free_edges \
  --test align --test oom --test arena --test pool --test stress --test secure_realloc_freed
# Every system call failing (review rev38): the test-only `fault-injection` feature fails the
# Nth mmap, munmap, madvise, mprotect, mbind, move_pages, mremap or futex wait of a mixed
# workload, N = 1, 2, ..., in forked children, on simulated nodes; with `secure`, so the guard
# pages' mprotect calls are swept too. About 40 s (the crate built once more, ~15 s; the
# sweeps, ~15 s).
cargo test --release --features secure,fault-injection --test os_faults --test secure_guard_faults \
  --test map_trim_faults
# The `prometheus` feature: its collector's tests and the example service's (which needs it; the
# feature's clippy run above checks the example itself).
cargo test --release --features prometheus --test metrics --test service

step "tests again under simulated nodes (TIERALLOC_SIMULATE_NODES=2, then 2,far=1)"
# The multi-node paths (per-node heaps and pools, home-node moves, cross-node frees, tier
# policies, demotion bookkeeping) on this machine's one node: CPU c is node c % 2, and with
# far=1 node 2 is a memory-only far tier. The test binaries are built above: this only runs
# them.
for sim in 2 2,far=1; do
  echo "-- TIERALLOC_SIMULATE_NODES=$sim"
  TIERALLOC_SIMULATE_NODES=$sim cargo test -q --release --test churn --test model \
    --test pool --test pool_fork --test pool_fork_cache_growth --test arena --test stress --test stress_mi --test stress_nodes \
    --test budget_cache --test cross_thread
  # The secure build (encoded links, freed marker, canaries, guard pages) on the same paths:
  # the binaries of these seven that were stable under both simulations (review rev28: 0
  # failures in 150 to 400 runs each of the quick ones, 10 to 25 of churn, stress and model).
  # model and stress_nodes are built here (the secure step above does not build them).
  TIERALLOC_SIMULATE_NODES=$sim cargo test -q --release --features secure --test churn --test model \
    --test stress --test stress_nodes --test cross_thread --test free_reuse --test recreate
done

step "hwloc topology tests"
cargo test --release --features hwloc --test topology

step "loom model checks"
# The heap's concurrent cores (remote frees, delayed frees, segment lists, huge claims) under
# loom, with debug assertions on (the `loom` profile). The models' preemption bounds keep this
# near 45 s once built (the first build, of loom alone, takes about 3 minutes on 2 cores);
# LOOM_MAX_PREEMPTIONS=N raises them all for a deeper run.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --profile loom --test loom

step "all tests passed"
