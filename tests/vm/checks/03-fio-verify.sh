#!/bin/bash
# 03-fio-verify: fio with libaio and O_DIRECT against the namespace:
# randwrite then crc32c verify over FIO_SIZE (64 MiB minimum) at iodepth
# 16; a 70/30 random read/write mix with verify; a 128 KiB sequential
# write+verify pass. Every run must end with err=0.
. /harness/lib.sh
connect $TGT_PORT1 || fail "nvme connect failed"
dev=$(ns_dev) || fail "no namespace device"
[ -b "$dev" ] || fail "$dev is not a block device"
run_fio randwrite-verify --filename=$dev --rw=randwrite --bs=4k --size=$FIO_SIZE \
  --iodepth=16 --verify=crc32c --verify_fatal=1 || fail "randwrite+verify failed"
run_fio randrw-verify --filename=$dev --rw=randrw --rwmixread=70 --bs=4k --size=32M \
  --offset=64M --iodepth=16 --verify=crc32c --verify_fatal=1 || fail "70/30 randrw+verify failed"
run_fio seq128k --filename=$dev --rw=write --bs=128k --size=$FIO_SIZE --offset=96M \
  --iodepth=16 --verify=crc32c --verify_fatal=1 || fail "128 KiB sequential pass failed"
