#!/bin/bash
# 04-filesystem: a real filesystem on the namespace survives a disconnect:
# mkfs.ext4, mount, write files and checksum them, umount, disconnect,
# reconnect, mount, the checksums match, and `e2fsck -fn` is clean.
. /harness/lib.sh
connect $TGT_PORT1 || fail "nvme connect failed"
dev=$(ns_dev) || fail "no namespace device"
mkfs.ext4 -q -F $dev || fail "mkfs.ext4 failed"
mkdir -p /mnt
mount -t ext4 $dev /mnt || fail "mount failed"
for i in 1 2 3 4 5 6 7 8; do
  dd if=/dev/urandom of=/mnt/file$i bs=64k count=$((i * 8)) 2>/dev/null || fail "writing file$i failed"
done
mkdir -p /mnt/dir/sub && echo "tandem" > /mnt/dir/sub/small || fail "writing small file failed"
(cd /mnt && sha256sum file* dir/sub/small) > $STATE_DIR/sums || fail "checksum failed"
cat $STATE_DIR/sums
umount /mnt || fail "umount failed"
disconnect_all || fail "disconnect failed"
connect $TGT_PORT1 || fail "reconnect failed"
dev=$(ns_dev) || fail "no namespace device after reconnect"
mount -t ext4 $dev /mnt || fail "mount after reconnect failed"
(cd /mnt && sha256sum -c $STATE_DIR/sums) || fail "checksums differ after reconnect"
umount /mnt || fail "umount failed"
e2fsck -fn $dev || fail "e2fsck -fn reports problems"
log "filesystem intact"
