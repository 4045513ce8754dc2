#!/bin/bash
# 07-fio-large-blocks: against the example config (`tandem config example`,
# served as printed), the fio job of issue 12 - random 40/60 read/write with
# mixed blocks up to 256 KiB at QD32 over 96 MiB, md5 verify, verify_fatal -
# with io_uring and with libaio; then sequential writes larger than the
# controller's MDTS, which the host splits, with sha256 verify, both engines.
# Every run must end with err=0, and the path device must have seen at least
# one write request per MDTS-sized piece. (With the guest kernel's hardened
# usercopy on, the first run is what crashed the 6.1 guest; see README.md.)
. /harness/lib.sh
trap 'target_example_stop >/dev/null' EXIT
target_example_start || fail "the example config did not start"
connect $EXAMPLE_PORT || fail "nvme connect to the example config failed"
dev=$(ns_dev) || fail "no namespace device"
c=$(ctrl_for_port $EXAMPLE_PORT) || fail "no controller"
path=$(path_of_ctrl $c) || fail "no path device for $c"
mix=4k/50:16k/20:64k/20:256k/10
for eng in io_uring libaio; do
  run_fio mix-$eng --filename=$dev --ioengine=$eng --rw=randrw --rwmixread=40 --bssplit=$mix \
    --iodepth=32 --size=96M --verify=md5 --verify_fatal=1 --randrepeat=0 ||
    fail "mixed blocks up to 256 KiB with $eng failed"
done
# MDTS is a power of two in units of the minimum page size (4 KiB); 0 means
# no limit (nvmet), where the host's own limit bounds a request.
mdts=$(nvme id-ctrl /dev/$c | awk '$1=="mdts" {print $3}')
[[ $mdts =~ ^[0-9]+$ ]] || fail "id-ctrl reports no mdts"
max_kb=$(cat /sys/block/$path/queue/max_sectors_kb)
bs=$((1024 * 1024))
if [ "$mdts" != 0 ]; then
  mdts_bytes=$(((1 << mdts) * 4096))
  [ $((max_kb * 1024)) -le $mdts_bytes ] || fail "host allows $max_kb KiB requests, above MDTS $mdts_bytes"
  [ $bs -gt $mdts_bytes ] || bs=$((mdts_bytes * 2))
fi
log "mdts=$mdts, $path max_sectors_kb=$max_kb, fio bs=$bs"
size_b=$(size_to_bytes $FIO_SIZE)
for eng in io_uring libaio; do
  read -r _ w0 < <(path_io $path)
  run_fio big-$eng --filename=$dev --ioengine=$eng --rw=write --bs=$bs --iodepth=4 \
    --size=$FIO_SIZE --offset=128M --verify=sha256 --verify_fatal=1 ||
    fail "sequential $bs-byte writes with $eng failed"
  read -r _ w1 < <(path_io $path)
  want=$((size_b / (max_kb * 1024)))
  log "$eng: $((w1 - w0)) write requests on $path for $((size_b / bs)) fio writes of $bs bytes"
  if [ $bs -gt $((max_kb * 1024)) ]; then
    [ $((w1 - w0)) -ge $want ] || fail "$eng: $((w1 - w0)) write requests, want >= $want (split at $max_kb KiB)"
  fi
done
