#!/bin/bash
# 10-kernel-log: no nvme warning or error in the kernel log other than those
# a check declared with kmsg_expect while it was running. Run last: it reads
# the whole log, which the runner splits by TANDEM-VM-CHECK markers.
. /harness/lib.sh
dmesg -r > $STATE_DIR/kmsg-raw.txt
: > $STATE_DIR/unexpected.txt
current=""
while IFS= read -r line; do
  case $line in
    *"TANDEM-VM-CHECK-BEGIN "*) current=${line##* }; continue ;;
    *"TANDEM-VM-CHECK-END "*) current=""; continue ;;
  esac
  # "<N>[time] message": level = N mod 8; warning is 4, error 3, worse below.
  level=${line#<}; level=${level%%>*}
  [[ $level =~ ^[0-9]+$ ]] || continue
  [ $((level % 8)) -le 4 ] || continue
  msg=${line#*] }
  echo "$msg" | grep -qi 'nvme' || continue
  if [ -n "$current" ] && [ -s $STATE_DIR/expect/$current ] &&
     echo "$msg" | grep -Eq -f $STATE_DIR/expect/$current; then
    continue
  fi
  echo "[${current:-between checks}] $line" >> $STATE_DIR/unexpected.txt
done < $STATE_DIR/kmsg-raw.txt
if [ -s $STATE_DIR/unexpected.txt ]; then
  cat $STATE_DIR/unexpected.txt
  fail "$(wc -l < $STATE_DIR/unexpected.txt) unexpected nvme warning(s)/error(s), first: $(head -1 $STATE_DIR/unexpected.txt)"
fi
log "kernel log clean"
