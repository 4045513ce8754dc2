#!/usr/bin/env bash
# tests/vm/watch-selftest.sh - proves watch.sh without QEMU: a fake console
# with an oops, one with a stalled check, and a healthy one that runs longer
# than the stall limit. run.sh runs this before it boots the guest.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$(mktemp -d)
# Only this shell removes the scratch dir, not the writer subshells.
trap '[ "$BASHPID" = '$$' ] && rm -rf "$T"' EXIT
fails=0
bad() { echo "watch-selftest: FAIL: $*" >&2; fails=$((fails + 1)); }

# scenario NAME WRITER_FUNCTION: runs the watcher against a console the
# writer fills, with a sleeping process standing in for QEMU.
scenario() {
  local name=$1 writer=$2
  : > "$T/$name.log"
  sleep 120 & local fake=$!
  ( trap - EXIT; $writer "$T/$name.log"; [ "$name" = healthy ] && kill $fake ) &
  local wpid=$! t0=$SECONDS
  TANDEM_VM_STALL_S=3 "$HERE/watch.sh" "$T/$name.log" $fake "$T/$name.verdict"
  RC=$? TOOK=$((SECONDS - t0))
  # The stand-in was killed by the watcher when it ends by SIGTERM (143).
  # (The healthy writer kills it itself, once the console is complete.)
  # A TERM the watcher sent has landed after half a second; KILL whatever
  # still runs, so the status says which signal ended it.
  sleep 0.5; kill -KILL $fake 2>/dev/null
  wait $fake 2>/dev/null; local st=$?
  [ $st = 143 ] && FAKE_ALIVE=0 || FAKE_ALIVE=1
  kill $wpid 2>/dev/null; wait $wpid 2>/dev/null
}

write_oops() {
  printf '==== BEGIN 07-fio-large uptime=20.1\r\n' >> "$1"
  printf '[07-fio-large 20.2] fio mix: --bssplit=4k/50:256k/10\n' >> "$1"
  sleep 1
  cat >> "$1" <<'EOF'
[   21.012345] usercopy: Kernel memory exposure attempt detected from page alloc (offset 2084816, size 65377)!
[   21.012400] ------------[ cut here ]------------
[   21.012401] kernel BUG at mm/usercopy.c:101!
[   21.012500] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[   21.012600] CPU: 0 PID: 186 Comm: reactor0 Not tainted 6.1.0-57-amd64 #1  Debian 6.1.192-3
[   21.012700] Call Trace:
[   21.012701]  <TASK>
[   21.012702]  __check_object_size.cold+0x17/0xcb
[   21.012703]  simple_copy_to_iter+0x25/0x40
[   21.012704]  tcp_recvmsg_locked+0x2a3/0x9a0
EOF
  sleep 60
}

write_stall() {
  printf '==== BEGIN 08-xfs uptime=30.0\n[08-xfs 30.1] mkfs.xfs\n' >> "$1"
  local i
  for i in $(seq 1 30); do printf 'TANDEM-VM-HEARTBEAT check=08-xfs io=42\n' >> "$1"; sleep 0.5; done
}

write_healthy() {
  printf '==== BEGIN 03-fio-verify uptime=10.0\n' >> "$1"
  local i
  for i in $(seq 1 12); do printf 'TANDEM-VM-HEARTBEAT check=03-fio-verify io=%d\n' $((i * 100)) >> "$1"; sleep 0.5; done
  # A warning's trace in the final kernel-log dump is check 10-kernel-log's business.
  printf '==== END 03-fio-verify rc=0 took 6s\n==== kernel log\n[    5.1] Call Trace:\n' >> "$1"
}

scenario oops write_oops
[ $RC = 1 ] || bad "oops: watcher exited $RC, want 1"
[ $TOOK -le 10 ] || bad "oops: took $TOOK s"
[ $FAKE_ALIVE = 0 ] || bad "oops: the QEMU stand-in was not killed"
head -1 "$T/oops.verdict" | grep -q $'^07-fio-large\tguest kernel crash: usercopy: Kernel memory exposure' ||
  bad "oops: verdict line: $(head -1 "$T/oops.verdict")"
grep -q 'tcp_recvmsg_locked' "$T/oops.verdict" || bad "oops: the trace is missing"

scenario stall write_stall
[ $RC = 1 ] || bad "stall: watcher exited $RC, want 1"
[ $TOOK -le 10 ] || bad "stall: took $TOOK s"
[ $FAKE_ALIVE = 0 ] || bad "stall: the QEMU stand-in was not killed"
head -1 "$T/stall.verdict" | grep -q $'^08-xfs\tno progress for 3 s' ||
  bad "stall: verdict line: $(head -1 "$T/stall.verdict")"

scenario healthy write_healthy
[ $RC = 0 ] || bad "healthy: watcher exited $RC ($(head -1 "$T/healthy.verdict")), want 0"
[ -s "$T/healthy.verdict" ] && bad "healthy: verdict written"

[ $fails = 0 ] && echo "watch-selftest: oops, stall and healthy consoles judged right" >&2
exit $((fails > 0))
