#!/bin/bash
# repro/usercopy.sh - the fio job of issue 12, with knobs to find what makes
# the 6.1 guest kernel's hardened-usercopy BUG fire. Run it on its own:
#   TANDEM_VM_HARDENED_USERCOPY=on TANDEM_VM_REPRO=usercopy \
#   TANDEM_VM_REPRO_ARGS="engine=libaio thp=never" tests/vm/run.sh
# Words in REPRO_ARGS (defaults first):
#   engine=io_uring|libaio   bssplit=4k/50:16k/20:64k/20:256k/10 (fio syntax)
#   thp=always|madvise|never (guest transparent hugepages)
#   digest=0|1 (nvme connect -g -G)   align=0|N (fio --iomem_align)
#   mem=malloc|shmhuge (fio --iomem)  size=96M
# With hardened usercopy on, a guest that hits the bug never gets here
# again: the host's watcher ends the run with the trace.
. /harness/lib.sh
engine=io_uring bssplit=4k/50:16k/20:64k/20:256k/10 thp="" digest=0 align=0 mem=malloc size=96M
for w in $REPRO_ARGS; do
  case $w in
    engine=*|bssplit=*|thp=*|digest=*|align=*|mem=*|size=*) eval "${w%%=*}=\${w#*=}" ;;
    *) fail "unknown REPRO_ARGS word '$w'" ;;
  esac
done
thp_file=/sys/kernel/mm/transparent_hugepage/enabled
[ -n "$thp" ] && { echo "$thp" > $thp_file || fail "cannot set THP to $thp"; }
log "kernel cmdline: $(cat /proc/cmdline)"
log "THP: $(cat $thp_file); engine=$engine bssplit=$bssplit digest=$digest align=$align mem=$mem"
[ "$mem" = shmhuge ] && echo 128 > /proc/sys/vm/nr_hugepages
opts=()
[ "$digest" = 1 ] && opts=(-g -G)
connect $TGT_PORT1 "${opts[@]}" || fail "nvme connect failed"
dev=$(ns_dev) || fail "no namespace device"
log "MDTS: $(nvme id-ctrl /dev/$(ctrl_for_port $TGT_PORT1) | awk '$1=="mdts"{print $3}')"
fio --name=mix --filename=$dev --ioengine=$engine --direct=1 --rw=randrw --rwmixread=40 \
  --bssplit=$bssplit --iodepth=32 --size=$size --verify=md5 --verify_fatal=1 --randrepeat=0 \
  --iomem=$mem --iomem_align=$align > $STATE_DIR/fio-mix.log 2>&1
rc=$?
grep -Ev '^ *(lat|clat|slat) percentiles|^ *\|| [0-9]+\.[0-9]+th=' $STATE_DIR/fio-mix.log
[ $rc = 0 ] || fail "fio exited $rc"
log "no crash: fio passed"
