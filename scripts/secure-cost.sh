#!/usr/bin/env bash
# The `secure` build's cost on the whole Rust workload suite (issue 18): every workload of
# benches/workloads (quick sizes) run by tieralloc built without and with `--features secure`.
#
# Two measures, each workload in a process of its own:
# - instructions (default): the whole worker process under valgrind's callgrind, which counts
#   exactly whatever else the machine does. Every workload here does a fixed amount of work
#   (no run-for-a-duration loop), so the counts compare like for like. Threads are run one at
#   a time by valgrind, so contention (falseshare) costs nothing here: see the time measure.
# - time (MODE=time): each workload's own time per operation (1e9 / its `ops_per_s`: wall
#   time of the measured loop, without start-up and idle phases) over RUNS interleaved runs
#   per build, medians. On a shared machine this is noisy; the instructions are the reliable
#   figure.
#
# Prints a markdown table with the ratio secure/default per workload and their geometric
# mean. Usage: scripts/secure-cost.sh            (instructions)
#              MODE=time RUNS=7 scripts/secure-cost.sh
#              ONLY="pairs larson" scripts/secure-cost.sh
# Needs valgrind for the instructions (installed if missing and we are root).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-instructions}
RUNS=${RUNS:-5}
ONLY=${ONLY:-"pairs prodcons larson falseshare churn large frag"}
OUT=target/bench-results/secure-cost
mkdir -p "$OUT"

if [ "$MODE" = instructions ] && ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind
  else
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
  fi
fi

# The bench binary of each build (cargo prints the executable it made).
bench_exe() {
  cargo bench --bench workloads --no-run --message-format=json "$@" 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "workloads" and m.get("executable"):
        print(m["executable"])' | tail -1
}
DEFAULT=$(bench_exe)
SECURE=$(bench_exe --features secure --target-dir target/secure)
[ -x "$DEFAULT" ] && [ -x "$SECURE" ] || { echo "could not build the bench binaries" >&2; exit 1; }
echo "default: $DEFAULT ($(git rev-parse --short HEAD))" >&2
echo "secure:  $SECURE" >&2

median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

rows=()
for w in $ONLY; do
  if [ "$MODE" = instructions ]; then
    for b in default secure; do
      exe=$DEFAULT; [ $b = secure ] && exe=$SECURE
      env TIERALLOC_BENCH_ALLOC=tieralloc TIERALLOC_BENCH_WORKLOAD="$w" TIERALLOC_BENCH_QUICK=1 \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/$w-$b.out" "$exe" >/dev/null 2>"$OUT/$w-$b.log" || { echo "$w ($b) failed: $OUT/$w-$b.log" >&2; exit 1; }
    done
    d=$(grep -m1 '^summary:\|^totals:' "$OUT/$w-default.out" | awk '{print $2}')
    s=$(grep -m1 '^summary:\|^totals:' "$OUT/$w-secure.out" | awk '{print $2}')
    [ -n "$d" ] && [ -n "$s" ] || { echo "$w: no instruction count in $OUT/$w-*.out" >&2; exit 1; }
    rows+=("$w $d $s")
    echo "  $w: default $d, secure $s instructions" >&2
  else
    : >"$OUT/$w-default.t"; : >"$OUT/$w-secure.t"
    for ((r = 0; r < RUNS; r++)); do
      order="default secure"; [ $((r % 2)) = 1 ] && order="secure default"
      for b in $order; do
        exe=$DEFAULT; [ $b = secure ] && exe=$SECURE
        env TIERALLOC_BENCH_ALLOC=tieralloc TIERALLOC_BENCH_WORKLOAD="$w" TIERALLOC_BENCH_QUICK=1 \
          "$exe" 2>/dev/null | python3 -c 'import json,sys; print(1e9 / json.loads(sys.stdin.readline())["metrics"]["ops_per_s"])' >>"$OUT/$w-$b.t"
      done
    done
    d=$(median <"$OUT/$w-default.t")
    s=$(median <"$OUT/$w-secure.t")
    rows+=("$w $d $s")
    echo "  $w: ns per operation default $d, secure $s" >&2
  fi
done

if [ "$MODE" = instructions ]; then
  echo "| workload | default (instructions) | secure | secure / default |"
  echo "|---|---:|---:|---:|"
else
  echo "| workload | default ns per operation | secure | secure / default |"
  echo "|---|---:|---:|---:|"
fi
printf '%s\n' "${rows[@]}" | awk -v mode="$MODE" '
  { r = $3 / $2; g += log(r); n++
    if (mode == "instructions") printf "| `%s` | %.0f | %.0f | %.3f |\n", $1, $2, $3, r
    else printf "| `%s` | %.2f | %.2f | %.3f |\n", $1, $2, $3, r }
  END { printf "| **geometric mean** | | | **%.3f** |\n", exp(g / n) }'
