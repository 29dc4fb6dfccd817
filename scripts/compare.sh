#!/usr/bin/env bash
# Compares tieralloc with mimalloc, jemalloc (tikv-jemallocator), numalloc and the system
# allocator on the benchmark workloads (pairs, prodcons, larson, frag, spike, falseshare, churn,
# large), each allocator in its own process, interleaved runs, medians, PASS/FAIL against the
# targets. About 3 minutes on 2 cores (plus the first build); prints markdown tables and writes
# target/bench-results/workloads.json. Extra arguments go to the driver, e.g.
#   scripts/compare.sh --only pairs,larson --runs 5
#   scripts/compare.sh --plots /tmp/img        # also draw the SVG charts
# Full sizes, 5 runs, charts into docs/img: cargo bench --features bench-peers --bench workloads -- --plots
# (see docs/benchmarks.md). jemalloc's C sources are built by its crate with cc and make.
set -euo pipefail
cd "$(dirname "$0")/.."
# jemalloc's crate builds its bundled C sources with cc and make.
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make gcc >/dev/null
  else
    echo "compare.sh: make and a C compiler are needed (apt-get install make gcc)" >&2
    exit 1
  fi
fi
exec cargo bench --features bench-peers --bench workloads -- --quick "$@"
