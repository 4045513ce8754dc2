#!/bin/bash
# 08-xfs: an xfs filesystem on the example config's 1 GiB namespace (xfs
# wants at least 300 MB): mkfs.xfs, mount, write files with fsync, checksum
# them, umount, drop caches, `xfs_repair -n` is clean, remount and the
# checksums match.
. /harness/lib.sh
trap 'umount /mnt 2>/dev/null; target_example_stop >/dev/null' EXIT
modprobe xfs || fail "no xfs module"
target_example_start || fail "the example config did not start"
connect $EXAMPLE_PORT || fail "nvme connect to the example config failed"
dev=$(ns_dev) || fail "no namespace device"
mkfs.xfs -q -f $dev || fail "mkfs.xfs failed"
mkdir -p /mnt
mount -t xfs $dev /mnt || fail "mount failed"
for i in 1 2 3 4 5 6; do
  dd if=/dev/urandom of=/mnt/file$i bs=64k count=$((i * 16)) conv=fsync 2>/dev/null ||
    fail "writing file$i failed"
done
mkdir -p /mnt/dir/sub && echo tandem > /mnt/dir/sub/small && sync || fail "writing small file failed"
(cd /mnt && sha256sum file* dir/sub/small) > $STATE_DIR/xfs-sums || fail "checksum failed"
cat $STATE_DIR/xfs-sums
umount /mnt || fail "umount failed"
# Drop the host's page cache so the reads below come from the target.
echo 3 > /proc/sys/vm/drop_caches
xfs_repair -n $dev > $STATE_DIR/xfs-repair.txt 2>&1 || { cat $STATE_DIR/xfs-repair.txt; fail "xfs_repair -n reports problems"; }
tail -3 $STATE_DIR/xfs-repair.txt
mount -t xfs $dev /mnt || fail "remount failed"
(cd /mnt && sha256sum -c $STATE_DIR/xfs-sums) || fail "checksums differ after remount"
umount /mnt || fail "umount failed"
log "xfs intact"
