#!/bin/sh
# Weakens one ordering (or removes one check) of the heap's concurrent cores at a time, runs
# the loom models (or a stress test) on the broken copy, records which fail, and puts the file
# back (git checkout). Review rev31's mutation table (docs/correctness.md, "Not covered").
#
#   scripts/loom-mutants.sh [ID...]        # all mutations, or the ones named
#
# Each line of the table below: ID~file~line~perl substitution~runner, where runner is `loom`
# (every model in tests/loom/) or `test:<file>[:<filter>]` (cargo test --release --test file).
# The substitution is applied to that line only; a mutation that changes nothing is an error
# (the line moved: fix the table). Results go to target/loom-mutants.log, one line each:
# ID, CAUGHT or SURVIVED, and the failing tests. Needs a clean worktree for the files it edits.
set -u
cd "$(dirname "$0")/.."
LOG=target/loom-mutants.log
TABLE=$(
	cat <<'EOF'
R1~src/heap/remote.rs~342~s/Ordering::AcqRel/Ordering::Relaxed/~loom
R2~src/heap/remote.rs~342~s/Ordering::AcqRel/Ordering::Release/~loom
R3~src/heap/remote.rs~358~s/Ordering::Release/Ordering::Relaxed/~loom
R4~src/heap/remote.rs~385~s/Ordering::Acquire/Ordering::Relaxed/~loom
R5~src/heap/remote.rs~408~s/Ordering::Acquire/Ordering::Relaxed/~loom
R6~src/heap/remote.rs~427~s/Ordering::AcqRel/Ordering::Relaxed/~loom
R7~src/heap/remote.rs~427~s/Ordering::AcqRel/Ordering::Release/~loom
R8~src/heap/remote.rs~427~s/Ordering::AcqRel/Ordering::Acquire/~loom
R9~src/heap/remote.rs~470~s/Ordering::AcqRel/Ordering::Relaxed/~loom
R10~src/heap/remote.rs~519~s/Ordering::Release/Ordering::Relaxed/~loom
R11~src/heap/remote.rs~555~s/Ordering::Acquire/Ordering::Relaxed/~loom
C1~src/heap/claim.rs~37~s/Ordering::AcqRel/Ordering::Relaxed/~loom
C2~src/heap/claim.rs~37~s/Ordering::AcqRel/Ordering::Release/~loom
C3~src/heap/claim.rs~49~s/Ordering::AcqRel, Ordering::Acquire/Ordering::Relaxed, Ordering::Relaxed/~loom
C4~src/heap/claim.rs~49~s/Ordering::AcqRel/Ordering::Release/~loom
C5~src/heap/claim.rs~68~s/Ordering::AcqRel, Ordering::Acquire/Ordering::Relaxed, Ordering::Relaxed/~loom
C6~src/heap/claim.rs~68~s/Ordering::AcqRel/Ordering::Acquire/~loom
C7~src/heap/claim.rs~80~s/Ordering::Acquire/Ordering::Relaxed/~loom
C8~src/heap/claim.rs~85~s/Ordering::AcqRel/Ordering::Relaxed/~loom
C9~src/heap/claim.rs~85~s/Ordering::AcqRel/Ordering::Acquire/~loom
C10~src/heap/claim.rs~92~s/Ordering::Release/Ordering::Relaxed/~loom
C11~src/heap/claim.rs~109~s/Ordering::Release/Ordering::Relaxed/~loom
C12~src/heap/claim.rs~49~s/Ordering::AcqRel/Ordering::Acquire/~loom
C13~src/heap/claim.rs~49~s/Ordering::AcqRel, Ordering::Acquire/Ordering::AcqRel, Ordering::Relaxed/~loom
S1~src/sync.rs~124~s/Ordering::Acquire/Ordering::Relaxed/~loom
S2~src/sync.rs~137~s/Ordering::Acquire/Ordering::Relaxed/~loom
S3~src/sync.rs~156~s/Ordering::Release/Ordering::Relaxed/~loom
S4~src/sync.rs~167~s/Ordering::Release/Ordering::Relaxed/~loom
W1~src/heap/wake.rs~77~s/fence\(Ordering::SeqCst\);/();/~loom
W2~src/heap/wake.rs~77~s/SeqCst/AcqRel/~loom
W3~src/heap/wake.rs~94~s/Ordering::Acquire/Ordering::Relaxed/~loom
W4~src/heap/wake.rs~95~s/Ordering::Acquire/Ordering::Relaxed/~loom
W5~src/heap/wake.rs~103~s/Ordering::AcqRel/Ordering::Relaxed/~loom
W6~src/heap/wake.rs~116~s/fence\(Ordering::SeqCst\);/();/~loom
W7~src/heap/wake.rs~129~s/fence\(Ordering::SeqCst\);/();/~loom
W8~src/heap/wake.rs~129~s/SeqCst/AcqRel/~loom
W9~src/heap/wake.rs~136~s/Ordering::Release/Ordering::Relaxed/~loom
W10~src/heap/wake.rs~141~s/Ordering::Release/Ordering::Relaxed/~loom
X1~src/heap/claim.rs~81~s/ \|\| v & CLAIMED != 0//~loom
X2~src/heap/list.rs~270~s/N::list_tag\(n\) != self.tag \|\| //~loom
X3~src/heap/list.rs~270~s/ \|\| N::owner\(n\) != 0//~loom
X4~src/heap/list.rs~265~s/let _g = self.lock.lock\(\);/let Some(_g) = self.lock.try_lock() else { return false };/~loom
X5~src/heap/list.rs~237~s/let _g = self.lock.lock\(\);/let Some(_g) = self.lock.try_lock() else { return ptr::null_mut() };/~loom
L1~src/heap/list.rs~269~s/if n != self.busy_locked\(\) \{/if true {/~loom
L2~src/heap/list.rs~241~s/n == self.busy_locked\(\)/false/~loom
L3~src/heap/list.rs~417~s/g = self.lock.lock\(\);/self.busy.store(ptr::null_mut(), Ordering::Relaxed); g = self.lock.lock();/~loom
L4~src/heap/list.rs~407~s/if !unsafe/if false \&\& !unsafe/~loom
X6~src/heap/remote.rs~340~s/match self$/match { let cur = self.word.load(Ordering::Acquire); if cur == old { self.word.store(new, Ordering::Release); Ok::<usize, usize>(cur) } else { Err(cur) } } { Ok(_) => return result, Err(cur) => { old = cur; continue } } match self/~loom
X7~src/heap/remote.rs~517~s/match self$/match { let cur = self.head.load(Ordering::Acquire); if cur == old { self.head.store(block, Ordering::Release); Ok::<*mut Block, *mut Block>(cur) } else { Err(cur) } } { Ok(_) => return, Err(cur) => { old = cur; continue } } match self/~loom
X8~src/heap/claim.rs~84~s/self.0$/{ let cur = self.0.load(Ordering::Acquire); if cur == v { self.0.store(v | CLAIMED, Ordering::Release); return Some(v) } else { return None } } self.0/~loom
X9~src/heap/claim.rs~47~s/match self$/match { let cur = self.0.load(Ordering::Acquire); if cur == v { self.0.store(0, Ordering::Release); Ok::<usize, usize>(cur) } else { Err(cur) } } { Ok(_) => return, Err(cur) if cur == v | CLAIMED => { waiting(); spin_hint(); continue } Err(_) => return } match self/~loom
G1~src/heap/gate.rs~25~s/Ordering::Acquire/Ordering::Relaxed/~loom
G2~src/heap/gate.rs~39~s/Ordering::Acquire/Ordering::Relaxed/~loom
G3~src/heap/gate.rs~49~s/Ordering::Acquire/Ordering::Relaxed/~loom
G4~src/heap/gate.rs~56~s/Ordering::Release/Ordering::Relaxed/~loom
G5~src/heap/gate.rs~38~s/while gate/if gate/~test:purger_race
T1~src/heap/thread/free.rs~598~s/Ordering::Acquire/Ordering::Relaxed/~test:cross_thread
T2~src/heap/segment/map.rs~97~s/Ordering::Release/Ordering::Relaxed/~test:cross_thread
T3~src/heap/thread/free.rs~721~s/Ordering::AcqRel, Ordering::Acquire/Ordering::Relaxed, Ordering::Relaxed/~test:recreate
T7~src/heap/thread/free.rs~548~s/\|\| owner == 0/|| false/~test:recreate
T8~src/heap/remote.rs~342~s/Ordering::AcqRel/Ordering::Relaxed/~test:remote
EOF
)

run_loom() {
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom timeout 900 nice -n 10 \
		cargo test --profile loom --test loom 2>&1
}

run_test() { # file [filter]
	timeout 900 nice -n 10 cargo test --release --test "$1" -- ${2:-} 2>&1
}

mkdir -p target
: >>"$LOG"
echo "$TABLE" | while IFS='~' read -r id file line sub runner; do
	if [ $# -gt 0 ]; then
		want=no
		for a in "$@"; do [ "$a" = "$id" ] && want=yes; done
		[ $want = yes ] || continue
	fi
	if ! git diff --quiet -- "$file"; then
		echo "$id: $file has changes of its own; skipped" | tee -a "$LOG"
		continue
	fi
	perl -i -pe "$sub if \$. == $line" "$file"
	if git diff --quiet -- "$file"; then
		echo "$id: $file:$line unchanged by $sub (the table is stale)" | tee -a "$LOG"
		continue
	fi
	start=$(date +%s)
	case "$runner" in
	loom) out=$(run_loom) ;;
	test:*)
		spec=${runner#test:}
		out=$(run_test "${spec%%:*}" "$(echo "$spec" | cut -s -d: -f2)")
		;;
	esac
	secs=$(($(date +%s) - start))
	git checkout -q -- "$file"
	failed=$(echo "$out" | sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' | tr '\n' ' ')
	if echo "$out" | grep -q "^error\[E\|^error: could not compile"; then
		echo "$id $file:$line BUILD-ERROR ($secs s)" | tee -a "$LOG"
		echo "$out" | grep -A5 "^error" | head -20
	elif [ -n "$failed" ] || ! echo "$out" | grep -q "^test result: ok"; then
		echo "$id $file:$line CAUGHT ($secs s): ${failed:-killed or timed out}" | tee -a "$LOG"
	else
		echo "$id $file:$line SURVIVED ($secs s)" | tee -a "$LOG"
	fi
done
