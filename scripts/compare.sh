#!/usr/bin/env bash
# Compares tieralloc with mimalloc and the system allocator on the benchmark workloads
# (pairs, prodcons, larson, frag, spike), each allocator in its own process, interleaved runs,
# medians, PASS/FAIL against the targets. About 2 minutes; prints a markdown table and writes
# target/bench-results/workloads.json. Extra arguments go to the driver, e.g.
#   scripts/compare.sh --only pairs,larson --runs 5
# Without --quick-style sizes: cargo bench --bench workloads  (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench workloads -- --quick "$@"
