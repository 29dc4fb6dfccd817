#!/usr/bin/env bash
# Runs the C/C++ allocator programs of preload/bench/ under each allocator, in a process of its
# own, interleaved (A B C D E, E D C B A, ...), RUNS times each (default 5), and prints markdown
# tables of the median wall time, CPU time (user + sys) and peak RSS, with tieralloc's ratio to the best peer:
#   tieralloc   LD_PRELOAD=libtieralloc_preload.so   (tieralloc's malloc drop-in)
#   glibc       no preload
#   mimalloc    LD_PRELOAD=libmimalloc.so.2          (Debian libmimalloc2.0)
#   jemalloc    LD_PRELOAD=libjemalloc.so.2          (Debian libjemalloc2)
#   tcmalloc    LD_PRELOAD=libtcmalloc_minimal.so.4  (Debian libtcmalloc-minimal4)
#
#   scripts/preload-bench.sh                    # every program, RUNS=5; QUICK=1 for short runs
#   ONLY="bigbufs larson" scripts/preload-bench.sh      # some programs
#   ALLOCS="tieralloc glibc" scripts/preload-bench.sh   # some allocators
#   ALLOCS="tieralloc tieralloc-secure" ...             # the secure drop-in's cost
#
# Needs cc, g++, GNU time and the three Debian libraries; run as root, it installs what is
# missing with apt-get (and says so), else it names the packages and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}

# The programs: name|source in preload/bench/|arguments|arguments with QUICK=1 (about a tenth
# of the work). One line per program; add a line to add one (C or C++, by the extension).
# Every program prints the same line under every allocator (checked) and its results only
# through its run time, CPU time and peak RSS.
PROGRAMS=(
  "larson|larson.c|4 200 100000 2000|4 20 100000 2000"
  "prodcons|prodcons.c|2 5000000|2 500000"
  "sizes|sizes.c|4 1000000 500|4 100000 500"
  "cxxchurn|cxxchurn.cpp|4 300|4 30"
  "bigbufs|bigbufs.c|16 400 1 32|16 60 1 32"
  "xthread|xthread.c|4 30 1000|4 10 1000"
  "linear|linear.c|2 1000000 20000|2 100000 20000"
  "threadlife|threadlife.c|5000 48|1000 48"
)

need=()
command -v cc >/dev/null && command -v g++ >/dev/null || need+=(build-essential)
[ -x /usr/bin/time ] || need+=(time)
lib() { ls /usr/lib/*/"$1" 2>/dev/null | head -1; }
[ -n "$(lib libmimalloc.so.2)" ] || need+=(libmimalloc2.0)
[ -n "$(lib libjemalloc.so.2)" ] || need+=(libjemalloc2)
[ -n "$(lib libtcmalloc_minimal.so.4)" ] || need+=(libtcmalloc-minimal4)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need[*]} (apt-get install -y ${need[*]})" >&2
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >&2
  else
    echo "missing: ${need[*]} (as root: apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

echo "building libtieralloc_preload.so (release)" >&2
cargo build -q -p tieralloc-preload --release
tdir=${CARGO_TARGET_DIR:-target}
case $tdir in /*) ;; *) tdir="$(pwd)/$tdir" ;; esac
TA="$tdir/release/libtieralloc_preload.so"
[ -f "$TA" ] || { echo "no $TA" >&2; exit 1; }

read -r -a allocs <<<"${ALLOCS:-tieralloc glibc mimalloc jemalloc tcmalloc}"
# `tieralloc-secure`: the drop-in of the `secure` build (issue 18), only when asked for:
#   ALLOCS="tieralloc tieralloc-secure" scripts/preload-bench.sh
TAS="$tdir/secure/release/libtieralloc_preload.so"
if [[ " ${allocs[*]} " == *" tieralloc-secure "* ]]; then
  echo "building the secure libtieralloc_preload.so (release)" >&2
  cargo build -q -p tieralloc-preload --release --features secure --target-dir "$tdir/secure"
fi
lib_of() {
  case $1 in
    tieralloc) echo "$TA" ;;
    tieralloc-secure) echo "$TAS" ;;
    glibc) echo "" ;;
    mimalloc) lib libmimalloc.so.2 ;;
    jemalloc) lib libjemalloc.so.2 ;;
    tcmalloc) lib libtcmalloc_minimal.so.4 ;;
    *) echo "unknown allocator $1" >&2; exit 1 ;;
  esac
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
benches=()
for line in "${PROGRAMS[@]}"; do
  IFS='|' read -r name src args qargs <<<"$line"
  if [ -n "${ONLY:-}" ] && ! [[ " $ONLY " == *" $name "* ]]; then continue; fi
  case $src in
    *.c) cc -O2 -pthread -o "$work/$name" "preload/bench/$src" ;;
    *) g++ -O2 -pthread -o "$work/$name" "preload/bench/$src" ;;
  esac
  if [ "${QUICK:-0}" = 1 ]; then args=$qargs; fi
  benches+=("$name|$args")
done

echo "load before: $(uptime)" >&2
results="$work/results"   # program alloc seconds kib run cpu-seconds
: >"$results"
for b in "${benches[@]}"; do
  name=${b%%|*}
  args=${b#*|}
  ref=""
  for r in $(seq 1 "$RUNS"); do
    # Alternate the order (A B C, C B A, ...): no allocator always runs after the same one.
    order=("${allocs[@]}")
    if [ $((r % 2)) = 0 ]; then
      order=()
      for ((i = ${#allocs[@]} - 1; i >= 0; i--)); do order+=("${allocs[$i]}"); done
    fi
    for a in "${order[@]}"; do
      # shellcheck disable=SC2086
      /usr/bin/time -f "%e %M %U %S" -o "$work/t" env LD_PRELOAD="$(lib_of "$a")" "$work/$name" $args >"$work/out" 2>"$work/err"
      out=$(cat "$work/out")
      if [ -z "$ref" ]; then ref=$out; elif [ "$out" != "$ref" ]; then
        echo "$name under $a printed '$out', expected '$ref'" >&2
        exit 1
      fi
      read -r secs kib usr sys <"$work/t"
      cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
      echo "$name $a $secs $kib $r $cpu" >>"$results"
      echo "  $name run $r $a: ${secs}s (CPU ${cpu}s) ${kib} KiB" >&2
    done
  done
done
echo "load after: $(uptime)" >&2

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
med() { awk -v b="$1" -v a="$2" -v f="$3" '$1==b && $2==a {print $f}' "$results" | median; }
# The median over runs of tieralloc's / the peer's value in the same run (field 3: time,
# 4: RSS, 6: CPU time): the two ran back to back, so a slow phase of a shared machine mostly cancels out.
paired() {
  awk -v b="$1" -v p="$2" -v f="$3" '$1==b && $2=="tieralloc" {t[$5]=$f} $1==b && $2==p {m[$5]=$f}
    END {for (r in t) if (m[r] > 0) print t[r] / m[r]}' "$results" | median
}
# The peer (not tieralloc) with the lowest median of field $2.
best() {
  local b=$1 f=$2 bestv="" bestp="" v
  for a in "${allocs[@]}"; do
    [ "$a" = tieralloc ] && continue
    v=$(med "$b" "$a" "$f")
    if [ -z "$bestv" ] || awk -v x="$v" -v y="$bestv" 'BEGIN {exit !(x < y)}'; then
      bestv=$v bestp=$a
    fi
  done
  echo "$bestp"
}

table() { # field, title, unit conversion (awk expression of v), format
  local f=$1 title=$2 conv=$3 fmt=$4 head="| program |" sep="|---|" row
  for a in "${allocs[@]}"; do head+=" $a |"; sep+="---:|"; done
  echo
  echo "$title"
  echo
  echo "$head best peer | tieralloc / best | paired |"
  echo "$sep---|---:|---:|"
  for b in "${benches[@]}"; do
    name=${b%%|*}
    row="| $name ${b#*|} |"
    for a in "${allocs[@]}"; do
      row+=" $(awk -v v="$(med "$name" "$a" "$f")" "BEGIN {printf \"$fmt\", $conv}") |"
    done
    if [[ " ${allocs[*]} " == *" tieralloc "* ]] && [ ${#allocs[@]} -gt 1 ]; then
      bp=$(best "$name" "$f")
      row+=" $bp | $(awk -v t="$(med "$name" tieralloc "$f")" -v p="$(med "$name" "$bp" "$f")" \
        'BEGIN {printf "%.2f", (p > 0 ? t / p : 0)}') | $(awk -v v="$(paired "$name" "$bp" "$f")" \
        'BEGIN {printf "%.2f", v}') |"
    else
      row+=" | | |"
    fi
    echo "$row"
  done
}

echo
echo "Medians of $RUNS interleaved runs, each allocator in a process of its own. \"tieralloc / best\""
echo "is tieralloc's median over the best peer's median (below 1: tieralloc better); \"paired\" is"
echo "the median of the per-run ratios to that peer."
table 3 "Wall time, seconds" "v" "%.2f"
table 6 "CPU time (user + sys), seconds" "v" "%.2f"
table 4 "Peak RSS, MiB" "v / 1024" "%.1f"
