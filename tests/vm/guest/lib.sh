#!/bin/bash
# lib.sh - helpers every check sources: the target under test (target.sh),
# connecting the kernel host, finding its devices, running fio, and the
# kernel-log bookkeeping that check 10-kernel-log relies on.
#
# A check is a bash script that exits 0 when it passed. `fail MSG` ends it
# with MSG as the reason printed on the host's FAIL line. A check that
# provokes nvme warnings on purpose declares them with `kmsg_expect REGEX`;
# they are then allowed in the kernel log between this check's begin and end
# markers, and nowhere else.
set -u
. /harness/env
. /harness/target.sh
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CHECK_NAME=${CHECK_NAME:-adhoc}
STATE_DIR=/run/vm
mkdir -p $STATE_DIR/expect

now_s() { cut -d' ' -f1 /proc/uptime; }
log() { echo "[$CHECK_NAME $(now_s)] $*"; }
fail() {
  log "FAIL: $*"
  echo "$*" > $STATE_DIR/reason
  exit 1
}

kmsg_expect() { echo "$1" >> $STATE_DIR/expect/$CHECK_NAME; }

# wait_until SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
wait_until() {
  local limit_s=$1 end; shift
  end=$(awk -v n="$(now_s)" -v l="$limit_s" 'BEGIN{print n+l}')
  while :; do
    "$@" && return 0
    awk -v n="$(now_s)" -v e="$end" 'BEGIN{exit !(n>=e)}' && return 1
    sleep 0.2
  done
}

# Host identity: QEMU has no DMI UUID, so give the host a random NQN once.
host_identity() {
  mkdir -p /etc/nvme
  [ -s /etc/nvme/hostnqn ] ||
    echo "nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)" > /etc/nvme/hostnqn
  [ -s /etc/nvme/hostid ] || cat /proc/sys/kernel/random/uuid > /etc/nvme/hostid
}

# The subsystem's sysfs dir (/sys/class/nvme-subsystem/nvme-subsysN), if any.
subsys_dir() {
  local s
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ -f "$s/subsysnqn" ] && [ "$(cat "$s/subsysnqn")" = "$TGT_NQN" ] && { echo "$s"; return 0; }
  done
  return 1
}

# The namespace's block device (the multipath head, /dev/nvmeXn1).
ns_dev() {
  local s n
  s=$(subsys_dir) || return 1
  for n in "$s"/nvme*n1; do
    [ -e "$n" ] && [ -b "/dev/$(basename "$n")" ] && { echo "/dev/$(basename "$n")"; return 0; }
  done
  return 1
}

# The controller (nvmeX) connected to our subsystem through TCP port $1.
ctrl_for_port() {
  local c
  for c in /sys/class/nvme/nvme*; do
    [ -f "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "$TGT_NQN" ] || continue
    case "$(cat "$c/address" 2>/dev/null)" in
      *"trsvcid=$1"*) basename "$c"; return 0 ;;
    esac
  done
  return 1
}

ctrl_state() { cat /sys/class/nvme/$1/state 2>/dev/null; }

# The path block device (nvmeXcYn1) of controller $1 under the head.
path_of_ctrl() {
  local p
  for p in /sys/block/nvme*c*n1; do
    [ -e "$p" ] || continue
    case "$(basename "$(readlink -f "$p/device")")" in "$1") basename "$p"; return 0 ;; esac
  done
  return 1
}

# connect PORT [nvme connect options...]: connect to our subsystem through
# PORT and wait for the controller to be live and the namespace to appear.
connect() {
  local port=$1 c; shift
  host_identity
  log "nvme connect -t tcp -a $TGT_ADDR -s $port -n $TGT_NQN $*"
  nvme connect -t tcp -a $TGT_ADDR -s "$port" -n $TGT_NQN "$@" || return 1
  wait_until 30 ctrl_for_port "$port" >/dev/null || { log "no controller for port $port"; return 1; }
  c=$(ctrl_for_port "$port")
  wait_until 30 eval '[ "$(ctrl_state '"$c"')" = live ]' || { log "$c not live"; return 1; }
  wait_until 30 ns_dev >/dev/null || { log "no namespace block device"; return 1; }
}

disconnect_all() {
  local c
  for c in /sys/class/nvme/nvme*; do
    [ -f "$c/subsysnqn" ] && [ "$(cat "$c/subsysnqn")" = "$TGT_NQN" ] &&
      nvme disconnect -d "$(basename "$c")" >/dev/null 2>&1
  done
  wait_until 30 eval '! subsys_dir >/dev/null'
}

# run_fio LABEL fio-args...: run fio against the namespace; passes when fio
# exits 0 and reports err=0. The output goes to the console log.
run_fio() {
  local label=$1 out=$STATE_DIR/fio-$1.log rc; shift
  log "fio $label: $*"
  fio --name="$label" --ioengine=libaio --direct=1 "$@" > "$out" 2>&1
  rc=$?
  grep -Ev '^ *(lat|clat|slat) percentiles|^ *\|| [0-9]+\.[0-9]+th=' "$out"
  [ $rc = 0 ] || { log "fio $label exited $rc"; return 1; }
  grep -q 'err= *0' "$out" || { log "fio $label: no err=0"; return 1; }
  ! grep -Eq 'err= *[1-9]' "$out" || { log "fio $label: error reported"; return 1; }
}

# size_to_bytes 64M -> 67108864 (fio-style K/M/G suffixes, powers of two).
size_to_bytes() {
  case $1 in
    *[Kk]) echo $(( ${1%?} * 1024 )) ;;
    *[Mm]) echo $(( ${1%?} * 1024 * 1024 )) ;;
    *[Gg]) echo $(( ${1%?} * 1024 * 1024 * 1024 )) ;;
    *) echo $(( $1 )) ;;
  esac
}

# Block-layer I/O counters of a path device: "reads writes" (completed ops).
path_io() { awk '{print $1, $5}' /sys/block/$1/stat; }

# ---- several namespaces (the pair serves nsid 1 and 2 in one subsystem) ----
# The multipath head (/dev/nvmeXnY) of namespace ID $1 of our subsystem. The
# head's Y is the host's own instance number, not the NSID: ask sysfs.
ns_dev_nsid() {
  local s n
  s=$(subsys_dir) || return 1
  for n in "$s"/nvme*n*; do
    [ -e "$n/nsid" ] && [ "$(cat "$n/nsid")" = "$1" ] && [ -b "/dev/$(basename "$n")" ] &&
      { echo "/dev/$(basename "$n")"; return 0; }
  done
  return 1
}

# The path device (nvmeXcYnZ) of controller $1 for namespace ID $2.
path_of_ctrl_nsid() {
  local p
  for p in /sys/block/nvme*c*n*; do
    [ -e "$p/nsid" ] && [ "$(cat "$p/nsid")" = "$2" ] || continue
    [ "$(basename "$(readlink -f "$p/device")")" = "$1" ] && { basename "$p"; return 0; }
  done
  return 1
}

# ---- JSON without jq: `tandem rpc` pretty-prints one value per line ----
# json_flat < JSON: one "path value" line per scalar, array elements by index:
#   {"pair": {"groups": [{"group": 1}]}}  ->  "pair.groups.0.group 1"
# Strings lose their quotes; an empty [] or {} is printed as such.
json_flat() {
  awk '
    function path(key,   p, i) {
      p = ""
      for (i = 2; i <= d; i++) p = p k[i] "."
      return p key
    }
    {
      line = $0; sub(/^[ \t]+/, "", line); sub(/,$/, "", line)
      if (line == "") next
      if (line == "}" || line == "]") { d--; next }
      key = ""
      if (match(line, /^"[^"]*": /)) { key = substr(line, 2, RLENGTH - 4); line = substr(line, RLENGTH + 1) }
      else if (d > 0 && t[d] == "a") key = n[d]++
      if (line == "{" || line == "[") { d++; k[d] = key; t[d] = (line == "[") ? "a" : "o"; n[d] = 0; next }
      if (line ~ /^".*"$/) line = substr(line, 2, length(line) - 2)
      print path(key), line
    }'
}

# flat_get FILE QUERY: the value at QUERY in a json_flat FILE, e.g.
# "pair.link.state"; one array element may be picked by a field's value:
# "pair.groups[group=1].mirror.state", "staging[nsid=2].records_committed".
# Fails (prints nothing) when there is no such value.
flat_get() {
  awk -v q="$2" '
    { v[$1] = substr($0, length($1) + 2) }
    END {
      if (match(q, /\[[^=]*=[^]]*\]/)) {
        pre = substr(q, 1, RSTART - 1); sel = substr(q, RSTART + 1, RLENGTH - 2); rest = substr(q, RSTART + RLENGTH)
        f = sel; sub(/=.*/, "", f); want = sel; sub(/^[^=]*=/, "", want)
        q = ""
        for (i = 0; (pre "." i "." f) in v; i++) if (v[pre "." i "." f] == want) { q = pre "." i rest; break }
      }
      if (q != "" && (q in v)) print v[q]; else exit 1
    }' "$1"
}
