#!/bin/bash
# 06-keepalive-restart: fio writes with verify while the target is killed
# with -9. The kernel host notices within the keep-alive timeout and starts
# reconnecting; after the target restarts the host reconnects on its own,
# the queued I/O resumes, and fio's verify pass finds every block intact.
. /harness/lib.sh
KATO_S=5
RECONNECT_DELAY_S=2
# The outage is the point of this check: these host messages are expected.
kmsg_expect 'starting error recovery|Reconnecting in|failed to connect socket|Failed reconnect attempt'
kmsg_expect 'no usable path - requeuing I/O|failed to send request|receive failed|failed nvme_keep_alive_end_io'
# The stand-in kernel target's side of the same outage.
[ $TARGET_KIND = nvmet ] && kmsg_expect '^nvmet(_tcp)?: .*(keep-alive|failed|disconnect|deleting)'
connect $TGT_PORT1 --keep-alive-tmo=$KATO_S --reconnect-delay=$RECONNECT_DELAY_S || fail "connect failed"
c=$(ctrl_for_port $TGT_PORT1) || fail "no controller"
dev=$(ns_dev) || fail "no namespace device"
p=$(path_of_ctrl $c) || fail "no path device"
log "controller $c kato=$(cat /sys/class/nvme/$c/kato 2>/dev/null || echo '?') path $p"

fio --name=restart --filename=$dev --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
  --size=$FIO_SIZE --iodepth=16 --verify=crc32c --verify_fatal=1 > $STATE_DIR/fio-restart.log 2>&1 &
fio_pid=$!
read -r _ w0 < <(path_io $p)
# Kill in the middle of the write phase: a quarter of the blocks written.
quarter=$(( $(size_to_bytes $FIO_SIZE) / 4096 / 4 ))
wait_until 300 eval '[ $(path_io '"$p"' | cut -d" " -f2) -gt $((w0 + quarter)) ]' ||
  { kill $fio_pid; fail "fio made no progress"; }
log "killing the target (-9) after $(( $(path_io $p | cut -d' ' -f2) - w0 )) writes"
t_kill=$(now_s)
target_kill9 || fail "kill failed"
wait_until $KATO_S eval '[ "$(ctrl_state '"$c"')" != live ]' ||
  fail "host still thinks $c is live $KATO_S s after the kill"
log "host noticed after $(awk -v a=$t_kill -v b=$(now_s) 'BEGIN{printf "%.1f", b-a}') s: state $(ctrl_state $c)"
wait_until 30 eval '[ "$(ctrl_state '"$c"')" = connecting ]' || fail "host is not reconnecting (state $(ctrl_state $c))"
# Leave the target down until the host has tried and failed once, so the
# check shows the host retrying on its own rather than catching a lucky
# first attempt.
wait_until 60 eval 'dmesg | grep -q "$c: Failed reconnect attempt"' ||
  fail "kernel log shows no failed reconnect attempt while the target was down"
kill -0 $fio_pid 2>/dev/null || fail "fio ended during the outage"
target_start || fail "target restart failed"
log "target restarted"
wait_until 120 eval '[ "$(ctrl_state '"$c"')" = live ]' || fail "host did not reconnect (state $(ctrl_state $c))"
log "host reconnected: $c live"
wait $fio_pid; fio_rc=$?
grep -Ev '^ *(lat|clat|slat) percentiles|^ *\|| [0-9]+\.[0-9]+th=' $STATE_DIR/fio-restart.log
[ $fio_rc = 0 ] && grep -q 'err= *0' $STATE_DIR/fio-restart.log || fail "fio with verify failed across the restart"
log "I/O resumed and verified"
