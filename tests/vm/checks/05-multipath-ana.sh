#!/bin/bash
# 05-multipath-ana: one node, two ports; ANA group optimized through port 1,
# inaccessible through port 2. The native multipath host sees both paths,
# sends I/O to the optimized one, and when the ANA states are swapped at run
# time it moves to the other path while fio with verify keeps running
# (err=0). The host must learn the change from the ANA-change asynchronous
# event (traced and logged), with no controller reset or reconnect.
. /harness/lib.sh
# The stand-in kernel target logs each write it refuses with an ANA status.
[ $TARGET_KIND = nvmet ] && kmsg_expect '^nvmet_tcp: failed cmd .* opcode 1,'
[ "$(cat /sys/module/nvme_core/parameters/multipath)" = Y ] || fail "nvme_core multipath is off"
connect $TGT_PORT1 || fail "connect port 1 failed"
connect $TGT_PORT2 || fail "connect port 2 failed"
c1=$(ctrl_for_port $TGT_PORT1) && c2=$(ctrl_for_port $TGT_PORT2) || fail "missing controller"
p1=$(path_of_ctrl $c1) && p2=$(path_of_ctrl $c2) || fail "missing path device"
dev=$(ns_dev) || fail "no namespace device"
cntlid1=$(cat /sys/class/nvme/$c1/cntlid); cntlid2=$(cat /sys/class/nvme/$c2/cntlid)
log "port1: $c1 ($p1, cntlid $cntlid1); port2: $c2 ($p2, cntlid $cntlid2); head $dev"

ana() { cat /sys/block/$1/ana_state; }
nvme list-subsys $dev | tee $STATE_DIR/subsys.txt
grep -q "$TGT_NQN" $STATE_DIR/subsys.txt || fail "list-subsys does not show $TGT_NQN"
grep -Eq "trsvcid=$TGT_PORT1.* live optimized" $STATE_DIR/subsys.txt || fail "list-subsys: port 1 not live optimized"
grep -Eq "trsvcid=$TGT_PORT2.* live inaccessible" $STATE_DIR/subsys.txt || fail "list-subsys: port 2 not live inaccessible"
[ "$(ana $p1)" = optimized ] && [ "$(ana $p2)" = inaccessible ] ||
  fail "sysfs ana_state: $p1=$(ana $p1) $p2=$(ana $p2)"

# I/O goes to the optimized path only.
read -r r1 w1 < <(path_io $p1); read -r r2 w2 < <(path_io $p2)
dd if=$dev of=/dev/null bs=4k count=1000 iflag=direct 2>/dev/null || fail "reads failed"
dd if=/dev/zero of=$dev bs=4k count=200 oflag=direct 2>/dev/null || fail "writes failed"
read -r r1b w1b < <(path_io $p1); read -r r2b w2b < <(path_io $p2)
log "port1 path: reads +$((r1b - r1)) writes +$((w1b - w1)); port2 path: reads +$((r2b - r2)) writes +$((w2b - w2))"
[ $((r1b - r1)) -ge 1000 ] && [ $((w1b - w1)) -ge 200 ] || fail "I/O did not go through the optimized path"
[ $((r2b - r2 + w2b - w2)) = 0 ] || fail "I/O went through the inaccessible path"

# Swap the ANA states while fio writes and verifies. Port 2 turns optimized
# before port 1 turns inaccessible, so there is always a usable path.
trace=/sys/kernel/tracing; [ -d $trace/events ] || trace=/sys/kernel/debug/tracing
echo > $trace/trace 2>/dev/null
kmsg_mark=$(dmesg | wc -l)
fio --name=mp --filename=$dev --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
  --size=$FIO_SIZE --iodepth=16 --verify=crc32c --verify_fatal=1 > $STATE_DIR/fio-mp.log 2>&1 &
fio_pid=$!
wait_until 120 eval '[ $(path_io '"$p1"' | cut -d" " -f2) -gt $((w1b + 2000)) ]' ||
  { kill $fio_pid; fail "fio made no progress on the optimized path"; }
log "fio running; ANA change: port 2 optimized, port 1 inaccessible"
read -r r2c w2c < <(path_io $p2)
target_ana_set 2 $TGT_ANA_GROUP optimized || fail "ana-set port 2 optimized failed"
target_ana_set 1 $TGT_ANA_GROUP inaccessible || fail "ana-set port 1 inaccessible failed"
wait_until 60 eval '[ "$(ana '"$p1"')" = inaccessible ] && [ "$(ana '"$p2"')" = optimized ]' ||
  fail "host did not take the new ANA states: $p1=$(ana $p1) $p2=$(ana $p2)"
log "host sees $p1=$(ana $p1) $p2=$(ana $p2)"
wait $fio_pid; fio_rc=$?
grep -Ev '^ *(lat|clat|slat) percentiles|^ *\|| [0-9]+\.[0-9]+th=' $STATE_DIR/fio-mp.log
[ $fio_rc = 0 ] && grep -q 'err= *0' $STATE_DIR/fio-mp.log || fail "fio with verify failed across the ANA change"
read -r r2d w2d < <(path_io $p2)
log "port2 path after the change: reads +$((r2d - r2c)) writes +$((w2d - w2c))"
[ $((w2d - w2c)) -gt 0 ] || fail "no writes moved to the new optimized path"
# Once settled, all I/O takes the new optimized path.
read -r r1e w1e < <(path_io $p1); read -r r2e w2e < <(path_io $p2)
dd if=$dev of=/dev/null bs=4k count=500 iflag=direct 2>/dev/null || fail "reads after the change failed"
read -r r1f w1f < <(path_io $p1); read -r r2f w2f < <(path_io $p2)
log "after the change: port1 path reads +$((r1f - r1e)), port2 path reads +$((r2f - r2e))"
[ $((r1f - r1e)) = 0 ] && [ $((r2f - r2e)) -ge 500 ] || fail "reads did not all take the new optimized path"
nvme list-subsys $dev

# How the host learnt it: an ANA-change AEN (log page 0x0c, notice 0x03)
# reached each controller, and the ANA log it read next was logged.
grep -i 'nvme_async_event' $trace/trace | tee $STATE_DIR/aen.txt
log "I/O completions with an ANA status: $(grep -c 'nvme_complete_rq' $trace/trace)"
# A target that answers I/O with an ANA status before it completes the
# pending AER lets the host learn the change from the status instead (and the
# host's ANA log read may then clear the event): that is what this catches.
for c in $c1 $c2; do
  grep -E "$c: NVME_AEN=0x0*c0302|$c: NVME_AEN=.*NVME_AER_NOTICE_ANA" $STATE_DIR/aen.txt >/dev/null ||
    fail "no ANA-change AEN traced on $c (port $( [ $c = $c1 ] && echo 1 || echo 2)); the host learnt the change another way"
done
dmesg | tail -n +$((kmsg_mark + 1)) > $STATE_DIR/kmsg.txt
grep -E 'nvme|ANA' $STATE_DIR/kmsg.txt
grep -Eq "$c2: ANA group $TGT_ANA_GROUP: optimized" $STATE_DIR/kmsg.txt || fail "kernel log: $c2 did not log ANA group optimized"
grep -Eq "$c1: ANA group $TGT_ANA_GROUP: inaccessible" $STATE_DIR/kmsg.txt || fail "kernel log: $c1 did not log ANA group inaccessible"
! grep -Eqi 'reset|reconnect|error recovery' $STATE_DIR/kmsg.txt || fail "kernel log shows a controller reset"
[ "$(cat /sys/class/nvme/$c1/cntlid)" = $cntlid1 ] && [ "$(cat /sys/class/nvme/$c2/cntlid)" = $cntlid2 ] ||
  fail "a controller was re-created (cntlid changed)"
[ "$(ctrl_state $c1)" = live ] && [ "$(ctrl_state $c2)" = live ] || fail "controllers not live"

# Put the states back for the checks that follow.
target_ana_set 1 $TGT_ANA_GROUP optimized && target_ana_set 2 $TGT_ANA_GROUP inaccessible ||
  fail "restoring ANA states failed"
wait_until 60 eval '[ "$(ana '"$p1"')" = optimized ]' || fail "host did not see port 1 optimized again"
