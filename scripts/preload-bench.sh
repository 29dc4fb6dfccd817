#!/usr/bin/env bash
# Runs the multi-threaded C/C++ allocator stress programs of preload/bench/ under
#   LD_PRELOAD=libtieralloc_preload.so   (tieralloc's malloc drop-in)
#   LD_PRELOAD=libmimalloc.so.2          (Debian's libmimalloc2.0)
#   no preload                           (glibc's malloc)
# interleaved (A B C, A B C, ...), RUNS times each (default 5), and prints a markdown table of
# the median wall time and median peak RSS, with ratios against mimalloc.
#
#   scripts/preload-bench.sh            # RUNS=5 by default; QUICK=1 for short runs
#
# Needs cc, g++, GNU time and libmimalloc2.0; as root it installs what is missing
# (apt-get install -y libmimalloc2.0 time build-essential).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
need=()
command -v cc >/dev/null && command -v g++ >/dev/null || need+=(build-essential)
[ -x /usr/bin/time ] || need+=(time)
ls /usr/lib/*/libmimalloc.so.2* >/dev/null 2>&1 || need+=(libmimalloc2.0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
  else
    echo "missing: ${need[*]} (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi
MI=$(ls /usr/lib/*/libmimalloc.so.2* | head -1)

echo "building libtieralloc_preload.so (release)" >&2
cargo build -q -p tieralloc-preload --release
tdir=${CARGO_TARGET_DIR:-target}
case $tdir in /*) ;; *) tdir="$(pwd)/$tdir" ;; esac
TA="$tdir/release/libtieralloc_preload.so"
[ -f "$TA" ] || { echo "no $TA" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for p in larson prodcons sizes; do
  cc -O2 -pthread -o "$work/$p" "preload/bench/$p.c"
done
g++ -O2 -pthread -o "$work/cxxchurn" preload/bench/cxxchurn.cpp

# name|arguments (threads first); QUICK=1 divides the work by about 10.
if [ "${QUICK:-0}" = 1 ]; then
  benches=("larson|4 20 100000 2000" "prodcons|2 500000" "sizes|4 100000 500" "cxxchurn|4 30")
else
  benches=("larson|4 200 100000 2000" "prodcons|2 5000000" "sizes|4 1000000 500" "cxxchurn|4 300")
fi
allocs=(tieralloc mimalloc glibc)
lib_of() { case $1 in tieralloc) echo "$TA" ;; mimalloc) echo "$MI" ;; glibc) echo "" ;; esac; }

results="$work/results"   # bench alloc seconds kib
: >"$results"
for b in "${benches[@]}"; do
  name=${b%%|*}
  args=${b#*|}
  ref=""
  for r in $(seq 1 "$RUNS"); do
    # Alternate the order (A B C, C B A, ...): no allocator always runs after the same one.
    order=("${allocs[@]}")
    if [ $((r % 2)) = 0 ]; then order=(glibc mimalloc tieralloc); fi
    for a in "${order[@]}"; do
      # shellcheck disable=SC2086
      /usr/bin/time -f "%e %M" -o "$work/t" env LD_PRELOAD="$(lib_of "$a")" "$work/$name" $args >"$work/out"
      out=$(cat "$work/out")
      if [ -z "$ref" ]; then ref=$out; elif [ "$out" != "$ref" ]; then
        echo "$name under $a printed '$out', expected '$ref'" >&2
        exit 1
      fi
      read -r secs kib <"$work/t"
      echo "$name $a $secs $kib $r" >>"$results"
      echo "  $name run $r $a: ${secs}s ${kib} KiB" >&2
    done
  done
done

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
med() { awk -v b="$1" -v a="$2" -v f="$3" '$1==b && $2==a {print $f}' "$results" | median; }

# The median over runs of tieralloc's time / mimalloc's time in the same run: the two ran
# back to back, so a slow phase of a shared machine mostly cancels out.
paired() {
  awk -v b="$1" '$1==b && $2=="tieralloc" {t[$5]=$3} $1==b && $2=="mimalloc" {m[$5]=$3}
    END {for (r in t) if (m[r] > 0) print t[r] / m[r]}' "$results" | median
}
# In how many runs tieralloc was faster than mimalloc.
wins() {
  awk -v b="$1" '$1==b && $2=="tieralloc" {t[$5]=$3} $1==b && $2=="mimalloc" {m[$5]=$3}
    END {w=0; for (r in t) if (t[r] < m[r]) w++; print w}' "$results"
}

echo
echo "Median of $RUNS runs (interleaved), wall seconds and peak RSS; ratios are tieralloc / mimalloc (below 1: tieralloc better)."
echo "Paired: the median of the per-run time ratios; wins: runs in which tieralloc was faster."
echo
echo "| program | tieralloc s | mimalloc s | glibc s | time ratio | paired | wins | tieralloc MiB | mimalloc MiB | glibc MiB | RSS ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for b in "${benches[@]}"; do
  name=${b%%|*}
  ts=$(med "$name" tieralloc 3); ms=$(med "$name" mimalloc 3); gs=$(med "$name" glibc 3)
  tk=$(med "$name" tieralloc 4); mk=$(med "$name" mimalloc 4); gk=$(med "$name" glibc 4)
  pr=$(paired "$name"); wn="$(wins "$name")/$RUNS"
  awk -v n="$name ${b#*|}" -v ts="$ts" -v ms="$ms" -v gs="$gs" -v pr="$pr" -v wn="$wn" -v tk="$tk" -v mk="$mk" -v gk="$gk" 'BEGIN {
    printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %.1f | %.1f | %.1f | %.2f |\n",
      n, ts, ms, gs, (ms > 0 ? ts / ms : 0), pr, wn, tk / 1024, mk / 1024, gk / 1024, (mk > 0 ? tk / mk : 0) }'
done
