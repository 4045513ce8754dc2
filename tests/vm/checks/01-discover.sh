#!/bin/bash
# 01-discover: `nvme discover` through port 1 lists our subsystem with the
# traddr, trsvcid and subnqn the target was configured with.
. /harness/lib.sh
host_identity
out=$STATE_DIR/discover.txt
nvme discover -t tcp -a $TGT_ADDR -s $TGT_PORT1 > $out 2>&1 || { cat $out; fail "nvme discover failed"; }
cat $out
# One record per "=====Discovery Log Entry" block; find an NVM subsystem
# record that names our NQN, address and port.
awk -v nqn="$TGT_NQN" -v addr="$TGT_ADDR" -v port="$TGT_PORT1" '
  function check() { if (sub_ok && nqn_ok && addr_ok && port_ok) found = 1 }
  /^=====Discovery Log Entry/ { check(); sub_ok = nqn_ok = addr_ok = port_ok = 0; next }
  { key = $1; sub(/:$/, "", key); val = $0; sub(/^[^:]*: */, "", val); sub(/ +$/, "", val) }
  key == "subtype" && val == "nvme subsystem" { sub_ok = 1 }
  key == "subnqn" && val == nqn { nqn_ok = 1 }
  key == "traddr" && val == addr { addr_ok = 1 }
  key == "trsvcid" && val == port { port_ok = 1 }
  END { check(); exit !found }' $out ||
  fail "no discovery record with subnqn=$TGT_NQN traddr=$TGT_ADDR trsvcid=$TGT_PORT1"
log "discovery record found"
