#!/usr/bin/env bash
# tests/vm/run.sh - the Linux kernel host guest suite, in one command.
#
# Boots Debian bookworm's stock kernel under QEMU (TCG, `-nic none`) with a
# busybox initramfs that carries the kernel NVMe host (nvme-tcp, native
# multipath), nvme-cli, fio, e2fsprogs and Tandem's binaries, then runs every
# tests/vm/checks/NN-name.sh inside the guest against `tandem serve` on
# 127.0.0.1. Prints one PASS/FAIL line per check and a final
# "N passed, N failed" line; exits non-zero when a check failed or the guest
# did not finish. The guest console goes to a log file, never to stdout.
#
# The guest reports results on its second serial port (ttyS1 -> a file), so
# kernel messages on the console can never garble a result line.
#
# Environment:
#   TANDEM_VM_TARGET   tandem (default) | nvmet: run the checks against the
#                      kernel's own target as a stand-in (harness development)
#   TANDEM_VM_CACHE    cache dir for the kernel .deb and the unpacked kernel
#                      (default /var/cache/tandem-vm, else ~/.cache/tandem-vm)
#   TANDEM_VM_TIMEOUT_S  bound on the whole QEMU run (default 1140 s)
#   TANDEM_VM_CHECKS   space-separated check names (e.g. "01-discover") to run
#                      only those; default all
#   TANDEM_VM_FIO_SIZE size of the fio verify runs (default 64M, the minimum)
#   TANDEM_VM_STALL_S  a check with no console output and no I/O for this
#                      long fails at once (default 300 s; see watch.sh)
#   TANDEM_VM_HARDENED_USERCOPY  off (default) | on: on boots the guest
#                      without hardened_usercopy=off, to reproduce the 6.1
#                      kernel BUG described in README.md
#   TANDEM_VM_REPRO    NAME: run only tests/vm/repro/NAME.sh (no checks)
#   TANDEM_VM_REPRO_ARGS  words passed to the repro script (harness/env)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET_KIND=${TANDEM_VM_TARGET:-tandem}
TIMEOUT_S=${TANDEM_VM_TIMEOUT_S:-1140}
FIO_SIZE=${TANDEM_VM_FIO_SIZE:-64M}
PKGS="qemu-system-x86 busybox-static cpio zstd kmod iproute2 nvme-cli fio e2fsprogs xfsprogs \
rdma-core ibverbs-providers"

# Kernel modules the guest needs; their dependency closure is added.
GUEST_MODULES="configfs dummy loop brd crc32_generic crc32-pclmul crc32c_generic crc32c-intel \
libcrc32c ext4 xfs nvme-core nvme-fabrics nvme-tcp nvmet nvmet-tcp \
ib_core ib_uverbs rdma_cm rdma_ucm rdma_rxe nvme-rdma nvmet-rdma"
# Host programs copied into the guest with every library ldd reports.
GUEST_BINS="/usr/sbin/nvme /usr/bin/fio /usr/sbin/ip /bin/bash /sbin/mke2fs /sbin/e2fsck \
/usr/bin/rdma /sbin/mkfs.xfs /sbin/xfs_repair"
HARDENED_USERCOPY=${TANDEM_VM_HARDENED_USERCOPY:-off}

log() { printf '[tandem-vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

case $TARGET_KIND in tandem|nvmet) ;; *) die "TANDEM_VM_TARGET must be tandem or nvmet";; esac
case $HARDENED_USERCOPY in on|off) ;; *) die "TANDEM_VM_HARDENED_USERCOPY must be on or off";; esac
if [ -n "${TANDEM_VM_REPRO:-}" ] && [ ! -f "$HERE/repro/$TANDEM_VM_REPRO.sh" ]; then
  die "no tests/vm/repro/$TANDEM_VM_REPRO.sh"
fi

pick_cache() {
  local c=${TANDEM_VM_CACHE:-/var/cache/tandem-vm}
  if ! mkdir -p "$c" 2>/dev/null || [ ! -w "$c" ]; then
    [ -z "${TANDEM_VM_CACHE:-}" ] || die "cache dir $c is not writable"
    c=${XDG_CACHE_HOME:-$HOME/.cache}/tandem-vm
    mkdir -p "$c"
  fi
  CACHE=$c
}

install_packages() {
  local p missing=""
  for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages:$missing (run as root or install them)"
  log "installing:$missing"
  # Update the package index once, only when something is missing.
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# Download (never install) the kernel image that linux-image-amd64 points at,
# unpack it into the cache and give it a modules.dep. Cached per version.
fetch_kernel() {
  local real
  real=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$real" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    real=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$real" ] || die "apt-cache does not know linux-image-amd64 (run apt-get update)"
  KDIR=$CACHE/kernel/$real
  if [ -z "$(ls "$KDIR"/boot/vmlinuz-* 2>/dev/null)" ]; then
    log "downloading $real"
    mkdir -p "$CACHE/debs"
    if [ -z "$(ls "$CACHE/debs/${real}"_*.deb 2>/dev/null)" ]; then
      (cd "$CACHE/debs" && apt-get download "$real" >/dev/null 2>&1) || {
        [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null
        (cd "$CACHE/debs" && apt-get download "$real" >/dev/null)
      }
    fi
    rm -rf "$KDIR.tmp.$$"; mkdir -p "$KDIR.tmp.$$"
    dpkg -x "$(ls "$CACHE/debs/${real}"_*.deb | tail -1)" "$KDIR.tmp.$$"
    rm -rf "$KDIR"; mv "$KDIR.tmp.$$" "$KDIR"
  fi
  KVER=$(basename "$(ls -d "$KDIR"/lib/modules/* | head -1)")
  VMLINUZ=$KDIR/boot/vmlinuz-$KVER
  [ -f "$KDIR/lib/modules/$KVER/modules.dep" ] || depmod -b "$KDIR" "$KVER"
}

# The tandem binary: the newer of build/release and build/debug; build the
# debug one when neither exists.
find_tandem() {
  local rel=$REPO/build/release/tandem dbg=$REPO/build/debug/tandem
  if [ ! -x "$rel" ] && [ ! -x "$dbg" ]; then
    log "building tandem (cargo build --bin tandem)"
    (cd "$REPO" && cargo build -q --bin tandem) || die "cargo build --bin tandem failed"
  fi
  if [ -x "$rel" ] && { [ ! -x "$dbg" ] || [ "$rel" -nt "$dbg" ]; }; then
    TANDEM_BIN=$rel
  else
    TANDEM_BIN=$dbg
  fi
  [ -x "$TANDEM_BIN" ] || die "no tandem binary"
}

# Copy a file to the same absolute path under $ROOT, following symlinks.
copy_path() {
  local src=$1 dst=$ROOT$1
  [ -e "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  if [ -L "$src" ]; then
    local tgt; tgt=$(readlink -f "$src")
    copy_path "$tgt"
    ln -sf "$tgt" "$dst"
  else
    cp -a "$src" "$dst"
  fi
}

# Add a program (at its own path, or at $2) and every library ldd reports.
add_bin() {
  local b=$1 dest=${2:-} lib
  [ -e "$b" ] || die "$b not found on the host"
  if [ -n "$dest" ]; then
    mkdir -p "$ROOT$(dirname "$dest")"; cp -L "$b" "$ROOT$dest"
  else
    copy_path "$b"
  fi
  for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do copy_path "$lib"; done
}

add_modules() {
  local m f want="" mdir=$KDIR/lib/modules/$KVER
  for m in $GUEST_MODULES; do
    f=$(modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '/^insmod/{print $2}') || true
    [ -n "$f" ] || { log "note: module $m not in this kernel (built in or absent)"; continue; }
    want="$want $f"
  done
  for f in $(echo "$want" | tr ' ' '\n' | sort -u); do
    local rel=${f#"$KDIR"}
    mkdir -p "$ROOT$(dirname "$rel")"; cp "$f" "$ROOT$rel"
  done
  cp "$mdir"/modules.order "$mdir"/modules.builtin "$mdir"/modules.builtin.modinfo "$ROOT/lib/modules/$KVER/"
  depmod -b "$ROOT" "$KVER"
}

build_initramfs() {
  ROOT=$WORK/root
  rm -rf "$ROOT"
  mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/nvme,proc,sys,dev,tmp,run,mnt,root,lib/modules,var/lib}
  ln -s lib "$ROOT/lib64"
  cp /bin/busybox "$ROOT/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do [ -e "$ROOT/bin/$a" ] || ln -s busybox "$ROOT/bin/$a"; done
  # The kernel's request_module() runs /sbin/modprobe: busybox's reads modules.dep.
  ln -sf /bin/busybox "$ROOT/sbin/modprobe"
  add_modules
  for a in $GUEST_BINS; do add_bin "$a"; done
  ln -sf mke2fs "$ROOT/sbin/mkfs.ext4"
  [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOT/etc/"
  add_bin "$(ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so | head -1)"
  mkdir -p "$ROOT/etc/libibverbs.d"; cp /etc/libibverbs.d/rxe.driver "$ROOT/etc/libibverbs.d/"
  if [ "$TARGET_KIND" = tandem ]; then add_bin "$TANDEM_BIN" /usr/local/bin/tandem; fi
  echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOT/etc/passwd"
  echo 'root:x:0:' > "$ROOT/etc/group"
  printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"
  install -m755 "$HERE/guest/init" "$ROOT/init"
  mkdir -p "$ROOT/harness/checks"
  install -m755 "$HERE"/guest/*.sh "$ROOT/harness/"
  if [ -n "${TANDEM_VM_REPRO:-}" ]; then
    install -m755 "$HERE/repro/$TANDEM_VM_REPRO.sh" "$ROOT/harness/checks/00-repro-$TANDEM_VM_REPRO.sh"
  else
    install -m755 "$HERE"/checks/*.sh "$ROOT/harness/checks/"
  fi
  {
    echo "TARGET_KIND=$TARGET_KIND"
    echo "FIO_SIZE=$FIO_SIZE"
    echo "CHECKS_ONLY=\"${TANDEM_VM_CHECKS:-}\""
    echo "REPRO_ARGS=\"${TANDEM_VM_REPRO_ARGS:-}\""
  } > "$ROOT/harness/env"
  INITRD=$WORK/initrd.cpio.zst
  (cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet | zstd -q -3 -T0) > "$INITRD"
}

boot() {
  # The 6.1 guest kernel's hardened usercopy BUGs on loopback NVMe/TCP with
  # large folios (README.md, "The guest kernel's usercopy BUG"): off by default.
  local append="console=ttyS0 quiet panic=-1 log_buf_len=8M nvme_core.multipath=Y"
  [ "$HARDENED_USERCOPY" = off ] && append="$append hardened_usercopy=off"
  log "booting guest ($TARGET_KIND, timeout ${TIMEOUT_S} s, stall ${TANDEM_VM_STALL_S:-300} s," \
    "hardened_usercopy $HARDENED_USERCOPY), console log $CONSOLE_LOG"
  : > "$RESULTS"
  VERDICT=$WORK/verdict
  set +e
  timeout --kill-after=10 "$TIMEOUT_S" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -smp 2 -m 2G \
    -display none -vga none -monitor none -no-reboot -nic none \
    -serial "file:$CONSOLE_LOG" -serial "file:$RESULTS" \
    -kernel "$VMLINUZ" -initrd "$INITRD" \
    -append "$append" \
    </dev/null >>"$CONSOLE_LOG.qemu" 2>&1 &
  local qemu_pid=$!
  # Ends QEMU (the timeout process we started, which passes TERM on) at
  # once on a kernel crash or a stalled check.
  "$HERE/watch.sh" "$CONSOLE_LOG" "$qemu_pid" "$VERDICT"
  wait "$qemu_pid"
  QEMU_RC=$?
  set -e
}

report() {
  local name line passed=0 failed=0 results v_check="" v_reason=""
  results=$(tr -d '\r' < "$RESULTS")
  if [ -s "$VERDICT" ]; then
    IFS=$'\t' read -r v_check v_reason < "$VERDICT"
  fi
  FINISHED=0
  printf '%s\n' "$results" | grep -qx 'SUITE-DONE' && FINISHED=1
  local names
  if [ -n "${TANDEM_VM_REPRO:-}" ]; then names="00-repro-$TANDEM_VM_REPRO"
  else names=$(for f in "$HERE"/checks/[0-9]*.sh; do basename "$f" .sh; done | tr "\n" " "); fi
  for name in $names; do
    if [ -n "${TANDEM_VM_CHECKS:-}" ] && [[ " $TANDEM_VM_CHECKS " != *" $name "* ]]; then continue; fi
    line=$(printf '%s\n' "$results" | awk -v n="$name" '$1=="RESULT" {k=$3; sub(/:$/, "", k); if (k==n) print}' | tail -1)
    case $line in
      "RESULT PASS "*) echo "PASS ${line#RESULT PASS }"; passed=$((passed + 1)) ;;
      "RESULT FAIL "*) echo "FAIL ${line#RESULT FAIL }"; failed=$((failed + 1)) ;;
      *)
        if [ -n "$v_check" ] && [ "$v_check" = "$name" ]; then echo "FAIL $name: $v_reason"
        elif [ "$FINISHED" = 1 ]; then echo "FAIL $name: no result reported"
        else echo "FAIL $name: did not run (the guest did not finish)"; fi
        failed=$((failed + 1)) ;;
    esac
  done
  if [ -n "$v_check" ] && [[ " $names " != *" $v_check "* ]]; then
    echo "FAIL $v_check: $v_reason"; failed=$((failed + 1))
  fi
  if [ -n "$v_check" ]; then
    echo "guest console around it:"
    tail -n +2 "$VERDICT" | sed 's/^/  | /'
  fi
  echo "$passed passed, $failed failed"
  FAILED=$failed
}

main() {
  local t0=$SECONDS
  "$HERE/watch-selftest.sh" || die "the console watcher's self-test failed"
  pick_cache
  install_packages
  fetch_kernel
  [ "$TARGET_KIND" = tandem ] && find_tandem
  WORK=$CACHE/work-$$
  mkdir -p "$WORK"
  trap 'rm -rf "$WORK"' EXIT
  build_initramfs
  log "kernel $KVER, initramfs $(du -h "$INITRD" | cut -f1), ready in $((SECONDS - t0)) s"
  local logdir=$REPO/build/vm-logs
  mkdir -p "$logdir" 2>/dev/null || logdir=$CACHE/logs
  mkdir -p "$logdir"
  local stamp; stamp=$(date +%Y%m%d-%H%M%S)
  CONSOLE_LOG=$logdir/console-$stamp-$TARGET_KIND.log
  RESULTS=$logdir/results-$stamp-$TARGET_KIND.txt
  : > "$CONSOLE_LOG"
  local tb=$SECONDS
  boot
  log "guest ran $((SECONDS - tb)) s (qemu rc $QEMU_RC), total $((SECONDS - t0)) s"
  report
  if [ "$FINISHED" != 1 ]; then
    [ "$QEMU_RC" = 124 ] && log "the guest did not finish within ${TIMEOUT_S} s" ||
      log "the guest did not finish (qemu rc $QEMU_RC)"
  fi
  if [ "$FAILED" != 0 ] || [ "$FINISHED" != 1 ]; then
    echo "guest console log: $CONSOLE_LOG"
    exit 1
  fi
}

main "$@"
