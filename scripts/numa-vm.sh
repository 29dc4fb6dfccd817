#!/usr/bin/env bash
# Boots a QEMU VM (software emulation) shaped like a two-socket server with a CXL memory
# expander, runs a statically linked program as its init, and exits with the program's status.
#
#   node 0: CPU 0, 1 GiB     node 1: CPU 1, 1 GiB     node 2: no CPU, 1 GiB (far memory)
#   distances: 0-1 21, 0-2 and 1-2 30
#   HMAT: local 80 ns / 20 GB/s, other socket 140 ns / 10 GB/s, node 2 300 ns / 5 GB/s
#   (Linux 6.12 puts node 2 in its own, slower memory tier)
#
# usage: scripts/numa-vm.sh PROGRAM [ARGS...]
# env:   VM_ENV="K=V ..."   variables exported inside the VM before PROGRAM runs
#        VM_KERNEL=path     the kernel (default: the newest /boot/vmlinuz-6.12*)
#        VM_TIMEOUT=secs    give up after this long (default 300)
#        VM_LOG=path        keep the whole console output there
#        VM_FILES="HOST:GUEST ..."  more files to put in the VM (GUEST: an absolute path); a
#                           dynamically linked one brings the libraries ldd names (same paths)
#
# Needs the Debian packages qemu-system-x86 linux-image-6.12-amd64 busybox-static, and
# cpio and gzip. Build PROGRAM statically, e.g.
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p tieralloc-vm-probe \
#     --target x86_64-unknown-linux-gnu
set -euo pipefail

is_static() {
  local out
  out=$(ldd "$1" 2>&1 || true)
  case "$out" in *"statically linked"*|*"not a dynamic executable"*) return 0 ;; *) return 1 ;; esac
}

missing() {
  echo "numa-vm: $1 is missing; install with: apt-get install -y qemu-system-x86 linux-image-6.12-amd64 busybox-static cpio gzip" >&2
  exit 2
}

[ $# -ge 1 ] || { echo "usage: $0 PROGRAM [ARGS...]" >&2; exit 2; }
prog=$(readlink -f "$1"); shift
[ -x "$prog" ] || { echo "numa-vm: $prog is not an executable file" >&2; exit 2; }

kernel=${VM_KERNEL:-$(ls /boot/vmlinuz-6.12* 2>/dev/null | sort -V | tail -1 || true)}
[ -n "$kernel" ] && [ -r "$kernel" ] || missing "a readable Linux 6.12 kernel in /boot"
command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64"
busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  if [ -x "$b" ] && is_static "$b"; then busybox=$b; break; fi
done
[ -n "$busybox" ] || missing "a statically linked busybox"
command -v cpio >/dev/null || missing "cpio"
command -v gzip >/dev/null || missing "gzip"
if ! is_static "$prog"; then
  echo "numa-vm: $prog is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\"" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$busybox" "$root/bin/busybox"
cp "$prog" "$root/bin/prog"
# Copies host file $1 to $root$2, with the libraries it needs when it is dynamically linked.
add_file() {
  mkdir -p "$root$(dirname "$2")"
  cp -L "$1" "$root$2"
  if ! is_static "$1"; then
    local lib
    for lib in $(ldd "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
      [ -e "$root$lib" ] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  fi
}
for f in ${VM_FILES:-}; do add_file "${f%%:*}" "${f#*:}"; done
{
  echo '#!/bin/busybox sh'
  echo '/bin/busybox --install -s /bin'
  echo 'mount -t proc proc /proc'
  echo 'mount -t sysfs sysfs /sys'
  echo 'mount -t devtmpfs dev /dev'
  echo 'mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null'
  for kv in ${VM_ENV:-}; do printf 'export %q\n' "$kv"; done
  echo 'echo; echo NUMA-VM-START'
  printf '/bin/prog'
  for a in "$@"; do printf ' %q' "$a"; done
  echo
  echo 'echo "NUMA-VM-EXIT=$?"'
  echo 'poweroff -f'
} > "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz")

# HMAT latency (ns) and bandwidth for one initiator-target pair.
hmat() {
  local i=$1 t=$2 lat=$3 bw=$4
  echo "-numa hmat-lb,initiator=$i,target=$t,hierarchy=memory,data-type=access-latency,latency=$lat"
  echo "-numa hmat-lb,initiator=$i,target=$t,hierarchy=memory,data-type=access-bandwidth,bandwidth=$bw"
}

# shellcheck disable=SC2046 # the hmat lines are meant to split into words
timeout "${VM_TIMEOUT:-300}" qemu-system-x86_64 \
  -accel tcg -cpu qemu64 -m 3G -smp 2,sockets=2,cores=1,threads=1 \
  -machine hmat=on \
  -object memory-backend-ram,id=mem0,size=1G \
  -object memory-backend-ram,id=mem1,size=1G \
  -object memory-backend-ram,id=mem2,size=1G \
  -numa node,nodeid=0,cpus=0,memdev=mem0,initiator=0 \
  -numa node,nodeid=1,cpus=1,memdev=mem1,initiator=1 \
  -numa node,nodeid=2,memdev=mem2,initiator=0 \
  -numa dist,src=0,dst=1,val=21 \
  -numa dist,src=0,dst=2,val=30 \
  -numa dist,src=1,dst=2,val=30 \
  $(hmat 0 0 80 20G) $(hmat 0 1 140 10G) $(hmat 0 2 300 5G) \
  $(hmat 1 0 140 10G) $(hmat 1 1 80 20G) $(hmat 1 2 300 5G) \
  -kernel "$kernel" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1" \
  -nographic -no-reboot -display none -monitor none -serial stdio -nodefaults \
  < /dev/null 2>"$work/qemu.err" | tr -d '\r' > "$work/out" || true

if [ -n "${VM_LOG:-}" ]; then cp "$work/out" "$VM_LOG"; fi
# The program's output: what follows the start marker, without kernel messages.
sed -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1b[a-zA-Z]//g' "$work/out" |
  awk '/^NUMA-VM-START$/ { on = 1; next } /^NUMA-VM-EXIT=/ { on = 0 } on' |
  grep -v -a -E '^\[ *[0-9]+\.[0-9]+\] ' || true
code=$(sed -n 's/^NUMA-VM-EXIT=//p' "$work/out" | tail -1)
if [ -z "$code" ]; then
  echo "numa-vm: the VM did not report an exit status (timeout after ${VM_TIMEOUT:-300} s, or a crash)" >&2
  tail -20 "$work/qemu.err" >&2 || true
  tail -30 "$work/out" >&2 || true
  exit 3
fi
exit "$code"
