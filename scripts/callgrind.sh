#!/usr/bin/env bash
# Instructions per alloc+free pair on the `pairs` workload, tieralloc vs mimalloc vs system,
# counted exactly with valgrind's callgrind: each worker runs N pairs and 0 pairs (after the
# same setup and warm-up) and the difference is divided by N. Needs valgrind
# (apt-get install valgrind). Extra arguments go to the driver, e.g.
#   scripts/callgrind.sh --allocs tieralloc,mimalloc --callgrind-pairs 2000000
# Profiles are kept in target/bench-results/callgrind/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind
  else
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
  fi
fi
exec cargo bench --features bench-peers --bench workloads -- --callgrind "$@"
