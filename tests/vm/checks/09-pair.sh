#!/bin/bash
# 09-pair: the Tandem HA pair, as `tandem config example --node a|b` prints
# it (target.sh's pair_* functions: media on two loop devices both nodes
# open, each node its own shm staging dir), against the stock kernel host
# with native multipath:
#  - both nodes up, link up, each owner's group mirror "in-sync";
#  - connected through both ports, each namespace is ONE head with TWO paths,
#    optimized through its owner's port and inaccessible through the other
#    (nvme list-subsys and sysfs ana_state);
#  - fio randwrite + crc32c verify on BOTH namespaces at the same time, then
#    128 KiB sequential write + verify on both, err=0, I/O only on each
#    namespace's optimized path;
#  - each owner's writes were staged and mirrored (records_committed > 0,
#    still in-sync, no degraded acks, the partner's second store connected
#    and holding them, mirrored_through >= released_seq);
#  - a pattern written through each head is on the shared medium after both
#    nodes stopped on SIGTERM (exit 0).
# The pair uses the harness target's ports: that one is stopped first and
# the runner restarts it afterwards.
. /harness/lib.sh
[ $TARGET_KIND = tandem ] || fail "the HA pair is tandem's: no stand-in with TARGET_KIND=$TARGET_KIND"
[ "$(cat /sys/module/nvme_core/parameters/multipath)" = Y ] || fail "nvme_core multipath is off"
PAT_OFFSET_MIB=512     # the dd pattern, past fio's regions (0-64M, 96M-160M with 64M)
PAT_MIB=4

cleanup() {
  disconnect_all
  pair_stop > /dev/null
  pair_remove_media
}
trap cleanup EXIT
target_stop || fail "the harness target did not stop"
pair_write_configs > $STATE_DIR/pair-setup.txt 2>&1 ||
  fail "pair configs: $(tr '\n' ' ' < $STATE_DIR/pair-setup.txt | cut -c1-200)"
pair_load || fail "pair_load failed"
TGT_NQN=$PAIR_NQN
log "pair: $PAIR_NQN, a on :$PAIR_PORT_a (link :$PAIR_LINK_a, home groups $PAIR_HOME_a)," \
  "b on :$PAIR_PORT_b (link :$PAIR_LINK_b, home groups $PAIR_HOME_b)"
for nsid in $PAIR_NSIDS; do m=PAIR_MEDIUM_$nsid; log "nsid $nsid medium ${!m} ($(losetup ${!m}))"; done
t_start=$(now_s)
pair_start > $STATE_DIR/pair-start.txt 2>&1 ||
  fail "pair did not start: $(tr '\n' ' ' < $STATE_DIR/pair-start.txt | cut -c1-200)"
log "both nodes listen (a pid $(pair_pid a), b pid $(pair_pid b))"

# snap NODE: take the node's status now; get NODE QUERY reads that snapshot.
snap() {
  pair_status $1 > $STATE_DIR/pair-$1.json 2>&1 && json_flat < $STATE_DIR/pair-$1.json > $STATE_DIR/pair-$1.flat
}
get() { flat_get $STATE_DIR/pair-$1.flat "$2"; }
partner_of() { [ $1 = a ] && echo b || echo a; }

# 1. Link up on both, every owned group's mirror in sync.
pair_ready() {
  local n g
  for n in $PAIR_NODES; do
    snap $n || return 1
    [ "$(get $n pair.link.state)" = up ] || return 1
    for g in $(eval echo \$PAIR_HOME_$n); do
      [ "$(get $n "pair.groups[group=$g].mirror.state")" = in-sync ] || return 1
    done
  done
}
if ! wait_until 30 pair_ready; then
  for n in $PAIR_NODES; do
    log "node $n: link $(get $n pair.link.state), groups:" \
      "$(grep -E '^pair\.groups\.[0-9]+\.(group|owner|mirror\.state) ' $STATE_DIR/pair-$n.flat | tr '\n' ' ')"
  done
  fail "the pair did not reach link up + in-sync within 30 s (a: link $(get a pair.link.state), b: link $(get b pair.link.state))"
fi
log "pair ready in $(awk -v a=$t_start -v b=$(now_s) 'BEGIN{printf "%.1f", b-a}') s:" \
  "a link $(get a pair.link.state) rtt $(get a pair.link.rtt_us) us, b link $(get b pair.link.state) rtt $(get b pair.link.rtt_us) us"

# Both nodes started together: neither may have counted the other away (a
# node that does acknowledges writes with one copy before its partner is up).
for n in $PAIR_NODES; do
  ! grep -q 'mirror DEGRADED' $PAIR_DIR/$n.log || fail "node $n logged 'mirror DEGRADED' at start: $(grep -m1 'mirror DEGRADED' $PAIR_DIR/$n.log)"
done

# Who owns which namespace (from the status, checked against the configs):
# OWNER_<nsid>, GROUP_<nsid>.
for n in $PAIR_NODES; do
  for g in $(eval echo \$PAIR_HOME_$n); do
    nsid=$(get $n "pair.groups[group=$g].nsid") || fail "node $n: no group $g in its status"
    [ "$(get $n "pair.groups[group=$g].owner")" = $n ] || fail "node $n does not own its home group $g"
    p=$(partner_of $n)
    [ "$(get $p "pair.groups[group=$g].owner")" = $n ] || fail "node $p says group $g is not $n's"
    printf -v OWNER_$nsid '%s' $n; printf -v GROUP_$nsid '%s' $g
  done
done
for nsid in $PAIR_NSIDS; do
  o=OWNER_$nsid; [ -n "${!o:-}" ] || fail "nsid $nsid has no owner in the pair's status"
done
[ "$OWNER_1" = a ] && [ "$OWNER_2" = b ] || fail "owners: nsid 1 on $OWNER_1, nsid 2 on $OWNER_2 (want a, b)"
port_of() { local v=PAIR_PORT_$1; echo ${!v}; }

# 2. The kernel host through both ports: one head per namespace, two paths.
connect $PAIR_PORT_a || fail "connect to node a (port $PAIR_PORT_a) failed"
connect $PAIR_PORT_b || fail "connect to node b (port $PAIR_PORT_b) failed"
ca=$(ctrl_for_port $PAIR_PORT_a) && cb=$(ctrl_for_port $PAIR_PORT_b) || fail "missing controller"
log "controllers: a $ca (cntlid $(cat /sys/class/nvme/$ca/cntlid)), b $cb (cntlid $(cat /sys/class/nvme/$cb/cntlid))"
ana() { cat /sys/block/$1/ana_state; }
for nsid in $PAIR_NSIDS; do
  wait_until 30 ns_dev_nsid $nsid > /dev/null || fail "no head device for nsid $nsid"
  head=$(ns_dev_nsid $nsid)
  heads=0
  for h in $(subsys_dir)/nvme*n*; do [ "$(cat $h/nsid 2>/dev/null)" = $nsid ] && heads=$((heads + 1)); done
  [ $heads = 1 ] || fail "nsid $nsid: $heads head devices, want one"
  wait_until 30 eval 'path_of_ctrl_nsid '"$ca $nsid"' >/dev/null && path_of_ctrl_nsid '"$cb $nsid"' >/dev/null' ||
    fail "nsid $nsid: no path through both controllers"
  paths=0
  for p in /sys/block/nvme*c*n*; do
    [ "$(cat $p/nsid 2>/dev/null)" = $nsid ] || continue
    [ "$(cat $(readlink -f $p/device)/subsysnqn)" = $PAIR_NQN ] && paths=$((paths + 1))
  done
  [ $paths = 2 ] || fail "nsid $nsid: $paths path devices, want two"
  printf -v HEAD_$nsid '%s' $head
  o=OWNER_$nsid
  if [ ${!o} = a ]; then opt=$ca; inacc=$cb; else opt=$cb; inacc=$ca; fi
  printf -v OPT_$nsid '%s' "$(path_of_ctrl_nsid $opt $nsid)"
  printf -v INACC_$nsid '%s' "$(path_of_ctrl_nsid $inacc $nsid)"
  po=OPT_$nsid; pi=INACC_$nsid
  log "nsid $nsid: head $head, optimized path ${!po} (node ${!o}), inaccessible path ${!pi}," \
    "ana_grpid $(cat /sys/block/${!po}/ana_grpid)"
  [ "$(cat /sys/block/${!po}/ana_grpid)" = $(eval echo \$GROUP_$nsid) ] ||
    fail "nsid $nsid: ana_grpid $(cat /sys/block/${!po}/ana_grpid), want $(eval echo \$GROUP_$nsid)"
  nvme list-subsys $head | tee $STATE_DIR/subsys-ns$nsid.txt
  grep -q "$PAIR_NQN" $STATE_DIR/subsys-ns$nsid.txt || fail "list-subsys $head does not show $PAIR_NQN"
  op=$(port_of ${!o}); ip=$(port_of $(partner_of ${!o}))
  grep -Eq "trsvcid=$op[,: ].* live optimized" $STATE_DIR/subsys-ns$nsid.txt ||
    fail "list-subsys nsid $nsid: port $op not live optimized"
  grep -Eq "trsvcid=$ip[,: ].* live inaccessible" $STATE_DIR/subsys-ns$nsid.txt ||
    fail "list-subsys nsid $nsid: port $ip not live inaccessible"
  [ "$(ana ${!po})" = optimized ] && [ "$(ana ${!pi})" = inaccessible ] ||
    fail "nsid $nsid sysfs ana_state: ${!po}=$(ana ${!po}) ${!pi}=$(ana ${!pi})"
done
[ "$HEAD_1" != "$HEAD_2" ] || fail "both namespaces on one head $HEAD_1"

# 3. fio with verify on both namespaces at once; 4. only on optimized paths.
io_mark() { local nsid v; for nsid in $PAIR_NSIDS; do for v in OPT INACC; do
  local p=${v}_$nsid; read -r r w < <(path_io ${!p}); printf -v ${1}_${v}_R_$nsid '%s' $r; printf -v ${1}_${v}_W_$nsid '%s' $w
done; done; }
# fio_both LABEL fio-args...: one fio per namespace through its head, both
# started at once; each must exit 0 with err=0. Sets OVERLAP=1 when both
# optimized paths moved while both fio processes were alive.
fio_both() {
  local label=$1 nsid h pids="" ok=1 p; shift
  for nsid in $PAIR_NSIDS; do
    h=HEAD_$nsid
    run_fio $label-ns$nsid --filename=${!h} "$@" > $STATE_DIR/run-$label-ns$nsid.txt 2>&1 &
    pids="$pids $!"
  done
  # Both must be writing at the same time: each optimized path moves while
  # both fio processes are alive.
  local w1a w2a; read -r _ w1a < <(path_io $OPT_1); read -r _ w2a < <(path_io $OPT_2)
  OVERLAP=1
  wait_until 120 eval '[ $(path_io $OPT_1 | cut -d" " -f2) -gt $((w1a + 100)) ] &&
    [ $(path_io $OPT_2 | cut -d" " -f2) -gt $((w2a + 100)) ]' || OVERLAP=0
  for p in $pids; do kill -0 $p 2>/dev/null || OVERLAP=0; done
  [ $OVERLAP = 1 ] && log "fio $label: both namespaces are being written at the same time" ||
    log "fio $label: the two runs did not overlap"
  for p in $pids; do wait $p || ok=0; done
  for nsid in $PAIR_NSIDS; do cat $STATE_DIR/run-$label-ns$nsid.txt; done
  [ $ok = 1 ]
}
io_mark B
t_fio=$(now_s)
fio_both pair-randwrite --rw=randwrite --bs=4k --size=$FIO_SIZE --iodepth=16 \
  --verify=crc32c --verify_fatal=1 || fail "fio randwrite + verify on both namespaces failed"
[ $OVERLAP = 1 ] || fail "fio randwrite: the two namespaces were not written at the same time"
log "randwrite + verify on both: $(awk -v a=$t_fio -v b=$(now_s) 'BEGIN{printf "%.1f", b-a}') s"
t_fio=$(now_s)
fio_both pair-seq128k --rw=write --bs=128k --size=$FIO_SIZE --offset=96M --iodepth=16 \
  --verify=crc32c --verify_fatal=1 || fail "fio 128 KiB sequential write + verify on both namespaces failed"
log "128 KiB sequential + verify on both: $(awk -v a=$t_fio -v b=$(now_s) 'BEGIN{printf "%.1f", b-a}') s"
io_mark E
# fio wrote and verified every 4 KiB block once (a few adjacent ones may
# have been merged into one request): at least 90 % of that per direction.
blocks=$(( $(size_to_bytes $FIO_SIZE) / 4096 * 9 / 10 ))
for nsid in $PAIR_NSIDS; do
  for v in OPT INACC; do
    for rw in R W; do
      b=B_${v}_${rw}_$nsid; e=E_${v}_${rw}_$nsid; printf -v D_${v}_${rw}_$nsid '%s' $(( ${!e} - ${!b} ))
    done
  done
  po=OPT_$nsid; pi=INACC_$nsid; dr=D_OPT_R_$nsid; dw=D_OPT_W_$nsid; ir=D_INACC_R_$nsid; iw=D_INACC_W_$nsid
  log "nsid $nsid: optimized path ${!po} reads +${!dr} writes +${!dw}; inaccessible path ${!pi} reads +${!ir} writes +${!iw}"
  [ ${!dw} -ge $blocks ] && [ ${!dr} -ge $blocks ] ||
    fail "nsid $nsid: fio's I/O did not go through the optimized path ${!po} (reads +${!dr} writes +${!dw}, want >= $blocks each)"
  [ $(( ${!ir} + ${!iw} )) = 0 ] || fail "nsid $nsid: I/O went through the inaccessible path ${!pi}"
done

# 5. The owners staged and mirrored their writes.
for n in $PAIR_NODES; do snap $n || fail "status of node $n: $(head -c 200 $STATE_DIR/pair-$n.json)"; done
for nsid in $PAIR_NSIDS; do
  o=OWNER_$nsid; n=${!o}; p=$(partner_of $n); g=GROUP_$nsid; g=${!g}
  m="pair.groups[group=$g].mirror"; s="pair.groups[group=$g].second_store"
  committed=$(get $n "staging[nsid=$nsid].records_committed")
  state=$(get $n $m.state); dacks=$(get $n $m.degraded_acks); pw=$(get $n $m.partner_writes)
  mirrored=$(get $n $m.mirrored_through); released=$(get $n $m.released_seq)
  sent=$(get $n $m.sent_through); acked=$(get $n $m.acked_through)
  conn=$(get $p $s.connected); held=$(get $p $s.held_through); mw=$(get $p $s.medium_writes)
  log "nsid $nsid on $n: records_committed $committed, mirror $state, sent_through $sent, acked_through $acked," \
    "mirrored_through $mirrored, released_seq $released, degraded_acks $dacks, partner_writes $pw;" \
    "second store on $p: connected $conn, held_through $held, records_held $(get $p $s.records_held), medium_writes $mw"
  [[ $committed =~ ^[0-9]+$ ]] && [ $committed -gt 0 ] || fail "nsid $nsid: $n's staging shows records_committed '$committed', want > 0"
  [ "$state" = in-sync ] || fail "nsid $nsid: $n's mirror is '$state' after fio, want in-sync"
  [ "$dacks" = 0 ] || fail "nsid $nsid: $n acknowledged $dacks writes with one copy (degraded_acks)"
  [ "$conn" = true ] || fail "nsid $nsid: $p's second store is not connected ($conn)"
  [[ $held =~ ^[0-9]+$ ]] && [ $held -gt 0 ] || fail "nsid $nsid: $p's second store held_through '$held', want > 0"
  [[ $mirrored =~ ^[0-9]+$ ]] && [[ $released =~ ^[0-9]+$ ]] && [ $mirrored -ge $released ] ||
    fail "nsid $nsid: $n released through $released but the partner holds only through $mirrored"
  [ "$pw" = 0 ] && [ "$mw" = 0 ] || fail "nsid $nsid: medium writes by the partner (partner_writes $pw, medium_writes $mw)"
  get $p "staging[nsid=$nsid].nsid" > /dev/null && fail "nsid $nsid: $p, not its owner, stages writes for it"
done

# 6. A pattern through each head is on the shared medium once both nodes
# have stopped (SIGTERM: they drain their staging rings and exit 0).
for nsid in $PAIR_NSIDS; do
  h=HEAD_$nsid
  dd if=/dev/urandom of=$STATE_DIR/pattern-ns$nsid bs=1M count=$PAT_MIB 2>/dev/null || fail "no pattern"
  dd if=$STATE_DIR/pattern-ns$nsid of=${!h} bs=1M seek=$PAT_OFFSET_MIB oflag=direct 2>/dev/null ||
    fail "nsid $nsid: dd of the pattern to ${!h} failed"
  dd if=${!h} bs=1M skip=$PAT_OFFSET_MIB count=$PAT_MIB iflag=direct 2>/dev/null |
    cmp -s - $STATE_DIR/pattern-ns$nsid || fail "nsid $nsid: the pattern does not read back through ${!h}"
done
for n in $PAIR_NODES; do
  snap $n && log "node $n before the stop: $(grep -E '^staging\.[0-9]+\.(nsid|staged_records|released_seq) ' \
    $STATE_DIR/pair-$n.flat | tr '\n' ' ')"
done
disconnect_all || fail "the host did not disconnect"
pid_a=$(pair_pid a); pid_b=$(pair_pid b)
t_stop=$(now_s)
pair_stop > $STATE_DIR/pair-stop.txt 2>&1
stop_rc=$?
cat $STATE_DIR/pair-stop.txt
log "nodes stopped in $(awk -v a=$t_stop -v b=$(now_s) 'BEGIN{printf "%.1f", b-a}') s:" \
  "a exited $(cat $PAIR_DIR/a.rc), b exited $(cat $PAIR_DIR/b.rc)"
[ $stop_rc = 0 ] && [ "$(cat $PAIR_DIR/a.rc)" = 0 ] && [ "$(cat $PAIR_DIR/b.rc)" = 0 ] ||
  fail "the nodes did not exit 0 on SIGTERM (a $(cat $PAIR_DIR/a.rc), b $(cat $PAIR_DIR/b.rc)): $(tr '\n' ' ' < $STATE_DIR/pair-stop.txt | cut -c1-150)"
! kill -0 $pid_a 2>/dev/null && ! kill -0 $pid_b 2>/dev/null || fail "a pair node still runs after the stop"
for n in $PAIR_NODES; do
  grep "staged writes drained" $PAIR_DIR/$n.log | tail -1 | sed "s/^/[node $n] /"
done
for nsid in $PAIR_NSIDS; do
  m=PAIR_MEDIUM_$nsid
  dd if=${!m} bs=1M skip=$PAT_OFFSET_MIB count=$PAT_MIB iflag=direct 2>/dev/null |
    cmp -s - $STATE_DIR/pattern-ns$nsid || fail "nsid $nsid: the pattern is not on the medium ${!m} after the stop"
  log "nsid $nsid: the pattern is on the medium ${!m}"
done
for n in $PAIR_NODES; do
  log "node $n log: $(grep -c ' WARN ' $PAIR_DIR/$n.log) WARN, $(grep -c ' ERROR ' $PAIR_DIR/$n.log) ERROR lines"
  grep -E ' (WARN|ERROR) ' $PAIR_DIR/$n.log | sed "s/^/[node $n] /" | head -20
done
log "pair check done"
