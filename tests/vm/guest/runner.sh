#!/bin/bash
# runner.sh - runs inside the guest: starts the target, runs every
# /harness/checks/NN-name.sh in order, writes one "RESULT PASS|FAIL name ..."
# line per check to /dev/ttyS1 (the host's results file) and SUITE-DONE at
# the end. Each check's output goes to the console log. Between checks the
# runner disconnects the host and brings the target back if a check left it
# down, so checks do not depend on each other's leftovers.
#
# Around each check it writes TANDEM-VM-CHECK-BEGIN/END markers into the
# kernel log; check 10-kernel-log uses them to attribute every kernel
# message to the check that was running.
set -u
CHECK_NAME=runner
. /harness/lib.sh
RESULTS=/dev/ttyS1
result() { echo "RESULT $*" > $RESULTS; echo "RESULT $*"; }

# Keep the results port raw so lines arrive as written.
stty -F $RESULTS raw -echo 2>/dev/null
# The nvme host's ANA handling is reported by dev_dbg(): turn those on so the
# kernel log shows where the host learnt an ANA state from.
if [ -w /proc/dynamic_debug/control ]; then
  echo 'file drivers/nvme/host/multipath.c +p' > /proc/dynamic_debug/control 2>/dev/null
fi
# The AEN tracepoint records each asynchronous event the host receives.
tr=/sys/kernel/tracing
[ -d $tr/events/nvme ] || tr=/sys/kernel/debug/tracing
if [ -d $tr/events/nvme/nvme_async_event ]; then
  echo 1 > $tr/events/nvme/nvme_async_event/enable
  # Completions with an ANA status (0x302 inaccessible, 0x303 transition):
  # the other way a host learns ANA states; check 05 reports them.
  echo 'status == 0x302 || status == 0x303' > $tr/events/nvme/nvme_complete_rq/filter 2>/dev/null &&
    echo 1 > $tr/events/nvme/nvme_complete_rq/enable
  echo 1 > $tr/tracing_on
fi
host_identity
# Heartbeat for the host's watcher (tests/vm/watch.sh): the running check and
# the I/O completed on every block device so far. A check that prints nothing
# and moves no I/O for TANDEM_VM_STALL_S fails there with its name.
echo runner > $STATE_DIR/current
io_total() { cat /sys/block/*/stat 2>/dev/null | awk '{n += $1 + $5} END {print n + 0}'; }
( while sleep 10; do
    echo "TANDEM-VM-HEARTBEAT check=$(cat $STATE_DIR/current 2>/dev/null) io=$(io_total)"
  done ) &
heartbeat_pid=$!
log "starting target ($TARGET_KIND)"
target_ok=1
target_start > $STATE_DIR/target-start.txt 2>&1 || target_ok=0
cat $STATE_DIR/target-start.txt
start_error=$(grep -v '^ *$' $STATE_DIR/target-start.txt | tr '\n' ' ' | cut -c1-200)

for check in /harness/checks/[0-9]*.sh; do
  name=$(basename "$check" .sh)
  if [ -n "$CHECKS_ONLY" ] && [[ " $CHECKS_ONLY " != *" $name "* ]]; then continue; fi
  if [ $target_ok = 0 ]; then result FAIL "$name (0 s): target did not start: $start_error"; continue; fi
  rm -f $STATE_DIR/reason
  echo "<5>TANDEM-VM-CHECK-BEGIN $name" > /dev/kmsg
  echo "$name" > $STATE_DIR/current
  echo "==== BEGIN $name uptime=$(now_s)"
  t0=$(now_s)
  CHECK_NAME=$name timeout 900 /bin/bash "$check"
  rc=$?
  took=$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN{printf "%.0f", b-a}')
  echo "==== END $name rc=$rc took ${took}s"
  echo "<5>TANDEM-VM-CHECK-END $name" > /dev/kmsg
  if [ $rc = 0 ]; then
    result PASS "$name (${took} s)"
  else
    reason=$(cat $STATE_DIR/reason 2>/dev/null || echo "exit status $rc")
    result FAIL "$name (${took} s): $reason"
  fi
  # Leave a clean slate for the next check.
  umount /mnt 2>/dev/null
  # A check that ran the HA pair stops it itself; one that ended early may
  # leave its nodes (and the host's connections to them) behind.
  if ls $PAIR_DIR/*.pid >/dev/null 2>&1; then
    log "$name left pair nodes running: disconnecting and stopping them"
    pair_load >/dev/null && (TGT_NQN=$PAIR_NQN; disconnect_all)
    pair_stop && pair_remove_media
  fi
  disconnect_all
  if target_running; then
    target_restore_ana || log "restoring the ANA states failed"
  else
    target_start > $STATE_DIR/target-start.txt 2>&1 || target_ok=0
    cat $STATE_DIR/target-start.txt
    start_error=$(grep -v '^ *$' $STATE_DIR/target-start.txt | tr '\n' ' ' | cut -c1-200)
  fi
done
target_stop
kill $heartbeat_pid 2>/dev/null
echo "==== kernel log"
dmesg
[ $TARGET_KIND = tandem ] && { echo "==== tandem log"; cat $TANDEM_LOG 2>/dev/null; }
for f in $PAIR_DIR/a.log $PAIR_DIR/b.log; do
  [ -f $f ] && { echo "==== tandem pair log (node $(basename $f .log))"; cat $f; }
done
echo "SUITE-DONE" > $RESULTS
