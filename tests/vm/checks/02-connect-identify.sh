#!/bin/bash
# 02-connect-identify: `nvme connect -t tcp`, then again with header and
# data digests (-g -G), creates the namespace block device; nvme list,
# id-ctrl, id-ns and ana-log report what the target was configured with.
. /harness/lib.sh

# field FILE NAME: the value of "NAME : value" in nvme-cli's human output.
field() { awk -v k="$2" -F: '{n=$1; gsub(/ /, "", n)} n==k {v=$0; sub(/^[^:]*: */, "", v); sub(/ +$/, "", v); print v; exit}' "$1"; }
expect_eq() { [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"; log "$1 = $2 ok"; }

identify() {
  local dev c f
  dev=$(ns_dev) || fail "no namespace device"
  c=$(ctrl_for_port $TGT_PORT1) || fail "no controller on port $TGT_PORT1"
  log "namespace $dev, controller $c"
  nvme list | tee $STATE_DIR/list.txt
  grep -q "$TGT_SERIAL" $STATE_DIR/list.txt || fail "nvme list does not show serial $TGT_SERIAL"
  grep -q "$TGT_MODEL" $STATE_DIR/list.txt || fail "nvme list does not show model $TGT_MODEL"

  f=$STATE_DIR/id-ctrl.txt
  nvme id-ctrl /dev/$c > $f || fail "nvme id-ctrl failed"
  grep -E '^(sn|mn|subnqn|cntlid|anacap|anagrpmax|nanagrpid|cmic|kas) ' $f
  expect_eq "id-ctrl sn" "$(field $f sn)" "$TGT_SERIAL"
  expect_eq "id-ctrl mn" "$(field $f mn)" "$TGT_MODEL"
  expect_eq "id-ctrl subnqn" "$(field $f subnqn)" "$TGT_NQN"
  # CMIC bit 3: the controller reports ANA.
  [ $(( $(field $f cmic) & 8 )) != 0 ] || fail "id-ctrl cmic does not report ANA"

  f=$STATE_DIR/id-ns.txt
  nvme id-ns $dev > $f || fail "nvme id-ns failed"
  grep -E '^(nsze|ncap|nguid|anagrpid|lbaf +[0-9]+ .*in use)' $f
  expect_eq "id-ns nsze" "$(( $(field $f nsze) ))" "$TGT_NSZE"
  expect_eq "id-ns nguid" "$(field $f nguid)" "$TGT_NGUID"
  expect_eq "id-ns anagrpid" "$(( $(field $f anagrpid) ))" "$TGT_ANA_GROUP"
  local lbads; lbads=$(grep 'in use' $f | grep -o 'lbads:[0-9]*' | cut -d: -f2)
  expect_eq "block size" "$((1 << lbads))" "$TGT_BLOCK_BYTES"
  expect_eq "device size" "$(blockdev --getsize64 $dev)" "$TGT_SIZE_BYTES"

  f=$STATE_DIR/ana-log.txt
  nvme ana-log /dev/$c > $f || fail "nvme ana-log failed"
  cat $f
  # The group's descriptor: "ANA grpid" then its state a few lines below.
  local state; state=$(awk -F: -v g="$TGT_ANA_GROUP" '
      {k = $1; v = $2; gsub(/[ \t]/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)}
      k == "grpid" {cur = v}
      k == "state" && cur == g {print v; exit}' $f)
  [ "$state" = optimized ] || fail "ana-log group $TGT_ANA_GROUP state '$state', want optimized"
  log "ana-log group $TGT_ANA_GROUP: $state"
}

# A small write-read round trip through the namespace.
roundtrip() {
  local dev; dev=$(ns_dev) || fail "no namespace device"
  dd if=/dev/urandom of=$STATE_DIR/pattern bs=64k count=16 2>/dev/null
  dd if=$STATE_DIR/pattern of=$dev bs=64k oflag=direct 2>/dev/null || fail "write to $dev failed ($1)"
  dd if=$dev of=$STATE_DIR/readback bs=64k count=16 iflag=direct 2>/dev/null || fail "read from $dev failed ($1)"
  cmp $STATE_DIR/pattern $STATE_DIR/readback || fail "read back differs ($1)"
  log "1 MiB write/read round trip ok ($1)"
}

connect $TGT_PORT1 || fail "nvme connect failed"
identify
roundtrip "no digests"
disconnect_all || fail "disconnect failed"

# Header and data digests: the kernel refuses the connection when the
# target does not grant what it asked for, so a live controller means both
# digests are in use.
connect $TGT_PORT1 -g -G || fail "nvme connect -g -G failed"
identify
roundtrip "with digests"
disconnect_all || fail "disconnect failed"
