#!/usr/bin/env bash
# What meshing's prerequisite would cost (docs/benchmarks.md, "Meshing's prerequisites,
# measured"): 256 MiB of 4 MiB segments backed by anonymous private memory against a memfd
# mapped MAP_SHARED (which meshing needs, to point two virtual pages at one physical page).
# Faults of every 4 KiB page, four passes with a purge between (MADV_DONTNEED against
# fallocate PUNCH_HOLE), and a fork with the region resident, whose child makes a memfd region
# private again (a copy), as a meshing allocator's fork handler must. Interleaved, RUNS times.
#   scripts/memfd-cost.sh            # RUNS=5
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cc -O2 -o "$out/memfd-cost" scripts/probes/memfd-cost.c
for _ in $(seq "${RUNS:-5}"); do
  "$out/memfd-cost" 0
  "$out/memfd-cost" 1
done
rm -rf "$out"
