#!/bin/bash
# target.sh - the ONE place that knows how to drive the target under test.
#
# Every check talks to the target only through these functions, so a change
# in tandem's command-line or config shape is fixed here and nowhere else.
# TARGET_KIND=tandem runs `tandem serve`; TARGET_KIND=nvmet configures the
# kernel's own NVMe target through configfs as a stand-in with the same
# subsystem, ports, namespace and ANA states, so the harness can be proven
# before (or independently of) tandem.
#
# What the target serves (the checks assert these values):
TGT_NQN=nqn.2026-11.io.tandem:vm
TGT_SERIAL=TANDEMVM0001
TGT_MODEL=Tandem
TGT_NGUID=4e5a1d0c7b3f4a2e9c8d6b5a4f3e2d1c
TGT_ADDR=127.0.0.1
TGT_PORT1=4420          # ANA group 1 optimized here at start
TGT_PORT2=4421          # ANA group 1 inaccessible here at start
TGT_ANA_GROUP=1
TGT_SIZE_BYTES=$((256 * 1024 * 1024))
TGT_KATO_MS=10000
TANDEM_CONFIG=/run/vm/tandem.toml
TANDEM_RPC_SOCKET=/run/tandem-a.sock
TANDEM_LOG=/run/vm/tandem.log
TANDEM_PID_FILE=/run/vm/tandem.pid
# The medium: a 256 MiB RAM block device. It outlives the target process, so
# a target killed with -9 and restarted serves the same data (check 6).
TGT_MEDIUM=/dev/ram0
NVMET_CFG=/sys/kernel/config/nvmet

case $TARGET_KIND in
  tandem) TGT_BLOCK_BYTES=4096 ;;
  nvmet) TGT_BLOCK_BYTES=512 ;;   # brd's logical block size
esac
TGT_NSZE=$((TGT_SIZE_BYTES / TGT_BLOCK_BYTES))

# Create the medium once per boot.
target_medium() {
  [ -b $TGT_MEDIUM ] || modprobe brd rd_nr=1 rd_size=$((TGT_SIZE_BYTES / 1024))
  [ -b $TGT_MEDIUM ]
}

tandem_write_config() {
  mkdir -p /run/vm
  cat > $TANDEM_CONFIG <<TOML
[node]
name = "a"
cntlid_min = 1
cntlid_max = 0x7fff
cores = [0]
poll = "adaptive"
rpc_socket = "$TANDEM_RPC_SOCKET"

[[ports]]
id = 1
transport = "tcp"
addr = "$TGT_ADDR:$TGT_PORT1"
ana = { $TGT_ANA_GROUP = "optimized" }

[[ports]]
id = 2
transport = "tcp"
addr = "$TGT_ADDR:$TGT_PORT2"
ana = { $TGT_ANA_GROUP = "inaccessible" }

[[subsystems]]
nqn = "$TGT_NQN"
serial = "$TGT_SERIAL"
model = "$TGT_MODEL"
allow_any_host = true

[[subsystems.namespaces]]
nsid = 1
ana_group = $TGT_ANA_GROUP
backend = "file"
path = "$TGT_MEDIUM"
size = "256MiB"
block_size = $TGT_BLOCK_BYTES
nguid = "$TGT_NGUID"

[limits]
kato_default_ms = $TGT_KATO_MS
TOML
}

# Is something listening on 127.0.0.1:PORT? (/proc/net/tcp, state 0A = LISTEN)
port_listening() {
  local hex; hex=$(printf '%04X' "$1")
  awk -v p=":$hex" '$4=="0A" && substr($2, length($2)-4)==p {f=1} END {exit !f}' /proc/net/tcp
}

nvmet_link_ports() {
  local p
  for p in 1 2; do
    [ -e $NVMET_CFG/ports/$p/subsystems/$TGT_NQN ] ||
      ln -s $NVMET_CFG/subsystems/$TGT_NQN $NVMET_CFG/ports/$p/subsystems/$TGT_NQN
  done
}

nvmet_setup() {
  local s=$NVMET_CFG/subsystems/$TGT_NQN p svc
  modprobe nvmet && modprobe nvmet-tcp || return 1
  mkdir $s
  echo 1 > $s/attr_allow_any_host
  echo $TGT_SERIAL > $s/attr_serial
  echo $TGT_MODEL > $s/attr_model
  mkdir $s/namespaces/1
  echo -n $TGT_MEDIUM > $s/namespaces/1/device_path
  echo $TGT_NGUID > $s/namespaces/1/device_nguid
  echo $TGT_ANA_GROUP > $s/namespaces/1/ana_grpid
  echo 1 > $s/namespaces/1/enable
  for p in 1 2; do
    mkdir $NVMET_CFG/ports/$p
    echo tcp > $NVMET_CFG/ports/$p/addr_trtype
    echo ipv4 > $NVMET_CFG/ports/$p/addr_adrfam
    echo $TGT_ADDR > $NVMET_CFG/ports/$p/addr_traddr
    [ $p = 1 ] && svc=$TGT_PORT1 || svc=$TGT_PORT2
    echo $svc > $NVMET_CFG/ports/$p/addr_trsvcid
  done
  echo optimized > $NVMET_CFG/ports/1/ana_groups/$TGT_ANA_GROUP/ana_state
  echo inaccessible > $NVMET_CFG/ports/2/ana_groups/$TGT_ANA_GROUP/ana_state
  nvmet_link_ports
}

# Start the target (first time: create medium and config). Returns when both
# ports listen, non-zero if the target did not come up.
target_start() {
  local i
  target_medium || { echo "target_start: no $TGT_MEDIUM"; return 1; }
  case $TARGET_KIND in
    tandem)
      [ -f $TANDEM_CONFIG ] || tandem_write_config
      # A config tandem rejects is a harness/target contract mismatch: say
      # which field, rather than waiting for ports that never open.
      if ! tandem config check --config $TANDEM_CONFIG >> $TANDEM_LOG 2>&1; then
        echo "target_start: tandem rejects $TANDEM_CONFIG:"; tail -3 $TANDEM_LOG; return 1
      fi
      echo "---- tandem serve (log $TANDEM_LOG)" >> $TANDEM_LOG
      NO_COLOR=1 tandem serve --config $TANDEM_CONFIG 2>>$TANDEM_LOG >/dev/null &
      echo $! > $TANDEM_PID_FILE
      ;;
    nvmet)
      if [ -d $NVMET_CFG/subsystems/$TGT_NQN ]; then nvmet_link_ports; else nvmet_setup || return 1; fi
      ;;
  esac
  for i in $(seq 1 300); do
    if port_listening $TGT_PORT1 && port_listening $TGT_PORT2; then return 0; fi
    if [ $TARGET_KIND = tandem ] && ! kill -0 "$(cat $TANDEM_PID_FILE)" 2>/dev/null; then
      echo "target_start: tandem exited; log tail:"; tail -20 $TANDEM_LOG; return 1
    fi
    sleep 0.1
  done
  echo "target_start: ports $TGT_PORT1/$TGT_PORT2 not listening after 30 s"
  [ $TARGET_KIND = tandem ] && tail -20 $TANDEM_LOG
  return 1
}

target_running() {
  case $TARGET_KIND in
    tandem) [ -f $TANDEM_PID_FILE ] && kill -0 "$(cat $TANDEM_PID_FILE)" 2>/dev/null ;;
    nvmet) [ -e $NVMET_CFG/ports/1/subsystems/$TGT_NQN ] ;;
  esac
}

# Kill the target without letting it say goodbye. For nvmet the closest
# equivalent is unlinking the subsystem from its ports: the listeners close
# and every controller is torn down at once.
target_kill9() {
  case $TARGET_KIND in
    tandem) kill -9 "$(cat $TANDEM_PID_FILE)"; wait "$(cat $TANDEM_PID_FILE)" 2>/dev/null; true ;;
    nvmet) rm -f $NVMET_CFG/ports/1/subsystems/$TGT_NQN $NVMET_CFG/ports/2/subsystems/$TGT_NQN ;;
  esac
}

# Clean shutdown (SIGTERM); waits up to 30 s for the process to exit.
target_stop() {
  local pid i
  case $TARGET_KIND in
    tandem)
      pid=$(cat $TANDEM_PID_FILE 2>/dev/null) || return 0
      kill -TERM "$pid" 2>/dev/null || return 0
      for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
      echo "target_stop: tandem did not exit on SIGTERM"; return 1 ;;
    nvmet) target_kill9 ;;
  esac
}

# target_ana_set PORT_ID GROUP STATE: change the ANA state of GROUP as seen
# through port PORT_ID (1 or 2) at run time; the target raises an ANA-change
# asynchronous event on that port's controllers.
target_ana_set() {
  case $TARGET_KIND in
    tandem) tandem rpc --socket $TANDEM_RPC_SOCKET ana-set --port "$1" --group "$2" --state "$3" ;;
    nvmet) echo "$3" > $NVMET_CFG/ports/$1/ana_groups/$2/ana_state ;;
  esac
}

# Put the ANA states back to the configured ones (port 1 optimized, port 2
# inaccessible); the runner calls this after every check, so a check that
# failed half-way through an ANA change does not break the next one.
target_restore_ana() {
  target_ana_set 1 $TGT_ANA_GROUP optimized >/dev/null &&
    target_ana_set 2 $TGT_ANA_GROUP inaccessible >/dev/null
}

# ---- the example config, as a new user runs it ----
# `tandem config example` printed and served as is, from its own working
# directory: subsystem nqn.2026-11.io.tandem:demo on 127.0.0.1:4420, a 1 GiB
# file namespace under data_dir (tmpfs here, so buffered I/O) behind the shm
# staging log, MDTS 128 KiB. It takes port 4420, so the harness target is
# stopped first; target_example_stop gives the port back and the runner then
# restarts the harness target. With TARGET_KIND=nvmet the harness target
# stands in (same port, its own NQN).
EXAMPLE_DIR=/run/vm/example
EXAMPLE_PID_FILE=/run/vm/example.pid
EXAMPLE_PORT=4420

# Starts it and sets TGT_NQN to the example's subsystem NQN.
target_example_start() {
  local i pid
  [ $TARGET_KIND = tandem ] || return 0
  target_stop || return 1
  mkdir -p $EXAMPLE_DIR
  tandem config example > $EXAMPLE_DIR/example.toml || return 1
  TGT_NQN=$(awk -F'"' '/^nqn = /{print $2; exit}' $EXAMPLE_DIR/example.toml)
  [ -n "$TGT_NQN" ] || { echo "target_example_start: no nqn in the example"; return 1; }
  echo "---- tandem serve --config example.toml (in $EXAMPLE_DIR)" >> $TANDEM_LOG
  (cd $EXAMPLE_DIR && exec env NO_COLOR=1 tandem serve --config example.toml 2>>$TANDEM_LOG >/dev/null) &
  pid=$!
  echo $pid > $EXAMPLE_PID_FILE
  for i in $(seq 1 300); do
    port_listening $EXAMPLE_PORT && return 0
    kill -0 $pid 2>/dev/null || { echo "target_example_start: tandem exited"; tail -20 $TANDEM_LOG; return 1; }
    sleep 0.1
  done
  echo "target_example_start: port $EXAMPLE_PORT not listening after 30 s"; return 1
}

# Disconnects the host from it and stops it (SIGTERM, up to 30 s).
target_example_stop() {
  local pid i
  [ $TARGET_KIND = tandem ] || return 0
  disconnect_all
  pid=$(cat $EXAMPLE_PID_FILE 2>/dev/null) || return 0
  rm -f $EXAMPLE_PID_FILE
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "target_example_stop: tandem did not exit on SIGTERM"; kill -9 "$pid"; return 1
}

# ---- the HA pair, as `tandem config example --node a|b` prints it ----
# Two nodes on loopback serving one subsystem: nsid 1 (ANA group 1) homed on
# a, nsid 2 (group 2) homed on b; each node's port shows its own groups
# optimized and the partner's inaccessible; each owner mirrors its staged
# writes into the partner's second store over the interconnect. The configs
# are the example's, changed only where the guest needs it: each namespace's
# medium is a loop device (tmpfs has no O_DIRECT; both nodes open the SAME
# device) and each node gets its own shm staging dir. Everything else (NQN,
# ports, groups, key, rpc_socket and data_dir relative to the common working
# directory) is as printed. The pair takes ports 4420/4421 like the harness
# target, so a check stops that one first (the runner restarts it).
# TARGET_KIND=nvmet has no pair: these return 1 with a message.
PAIR_DIR=/run/vm/pair               # both nodes' working directory
PAIR_MEDIA_DIR=/tmp/pair-media      # the loop devices' backing files (tmpfs, sparse)
PAIR_NODES="a b"

# pair_conf_get FILE SECTION KEY: the first string value of KEY in the
# first SECTION (e.g. "[[ports]]") of a config.
pair_conf_get() {
  awk -F'"' -v s="$2" -v k="$3" '/^\[/ {split($0, w, " "); sect = w[1]}
    sect == s && $0 ~ "^" k " *= *\"" {print $2; exit}' "$1"
}

# pair_load: after pair_write_configs (any shell), set from the two configs:
#   PAIR_NQN, PAIR_NSIDS, PAIR_PORT_<node> (host port), PAIR_LINK_<node>
#   (interconnect listen port), PAIR_SOCK_<node> (absolute rpc socket),
#   PAIR_HOME_<node> (home ANA groups), PAIR_MEDIUM_<nsid> (loop device).
pair_load() {
  local n f addr
  [ -f $PAIR_DIR/a.toml ] && [ -f $PAIR_DIR/b.toml ] || { echo "pair_load: no configs in $PAIR_DIR"; return 1; }
  PAIR_NQN=$(pair_conf_get $PAIR_DIR/a.toml "[[subsystems]]" nqn)
  PAIR_NSIDS=$(awk '/^nsid = /{print $3}' $PAIR_DIR/a.toml | tr '\n' ' ')
  for n in $PAIR_NODES; do
    f=$PAIR_DIR/$n.toml
    addr=$(pair_conf_get $f "[[ports]]" addr)
    printf -v PAIR_PORT_$n '%s' "${addr##*:}"
    addr=$(pair_conf_get $f "[pair]" listen)
    printf -v PAIR_LINK_$n '%s' "${addr##*:}"
    printf -v PAIR_SOCK_$n '%s' "$PAIR_DIR/$(pair_conf_get $f "[node]" rpc_socket)"
    printf -v PAIR_HOME_$n '%s' "$(awk -F'[][]' '/^home_groups *=/{gsub(/[ ,]+/, " ", $2); print $2; exit}' $f)"
  done
  for n in $PAIR_NSIDS; do
    printf -v PAIR_MEDIUM_$n '%s' "$(cat $PAIR_DIR/medium-ns$n 2>/dev/null)"
  done
  [ -n "$PAIR_NQN" ] && [ -n "$PAIR_PORT_a" ] && [ -n "$PAIR_PORT_b" ] && [ -n "$PAIR_LINK_a" ] &&
    [ -n "$PAIR_LINK_b" ] || { echo "pair_load: cannot read NQN/ports from the configs"; return 1; }
}

# pair_write_configs: fresh media (one sparse file + loop device per
# namespace, the example's size), fresh staging dirs, and a.toml/b.toml in
# $PAIR_DIR derived from `tandem config example --node a|b`.
pair_write_configs() {
  local n nsid size bytes file dev
  [ $TARGET_KIND = tandem ] || { echo "pair_write_configs: no pair with TARGET_KIND=$TARGET_KIND"; return 1; }
  mkdir -p $PAIR_DIR $PAIR_MEDIA_DIR
  for n in $PAIR_NODES; do
    tandem config example --node $n > $PAIR_DIR/$n.example.toml ||
      { echo "pair_write_configs: tandem config example --node $n failed"; return 1; }
  done
  # One medium per namespace, shared by both nodes.
  for nsid in $(awk '/^nsid = /{print $3}' $PAIR_DIR/a.example.toml); do
    size=$(awk -v id=$nsid '/^nsid = /{cur=$3} cur==id && /^size = /{gsub(/"/, "", $3); print $3; exit}' \
      $PAIR_DIR/a.example.toml)
    case $size in
      *GiB) bytes=$(( ${size%GiB} * 1024 * 1024 * 1024 )) ;;
      *MiB) bytes=$(( ${size%MiB} * 1024 * 1024 )) ;;
      *) echo "pair_write_configs: nsid $nsid: cannot read size '$size'"; return 1 ;;
    esac
    file=$PAIR_MEDIA_DIR/ns$nsid.img
    if [ -f $PAIR_DIR/medium-ns$nsid ]; then
      dev=$(cat $PAIR_DIR/medium-ns$nsid)
      losetup -d $dev 2>/dev/null
      rm -f $PAIR_DIR/medium-ns$nsid
    fi
    rm -f $file
    dd if=/dev/zero of=$file bs=1M count=0 seek=$((bytes / 1024 / 1024)) 2>/dev/null ||
      { echo "pair_write_configs: cannot create $file"; return 1; }
    dev=$(losetup -f) && losetup $dev $file ||
      { echo "pair_write_configs: no loop device for $file"; return 1; }
    echo $dev > $PAIR_DIR/medium-ns$nsid
  done
  for n in $PAIR_NODES; do
    rm -rf /dev/shm/tandem-pair-$n
    awk -v node=$n -v dir=$PAIR_DIR '
      /^\[/ { sect = $1 }
      /^nsid = / { nsid = $3 }
      sect == "[[subsystems.namespaces]]" && /^path = / {
        f = dir "/medium-ns" nsid; getline dev < f; close(f)
        print "path = \"" dev "\"                 # the example: " $3; next
      }
      sect == "[staging]" && /^dir = / { next }
      { print }
      sect == "[staging]" && /^domain = / { print "dir = \"/dev/shm/tandem-pair-" node "\"" }
    ' $PAIR_DIR/$n.example.toml > $PAIR_DIR/$n.toml
    # Every namespace on its loop device, the staging dir set: else the
    # example's shape changed under the harness.
    for nsid in $(awk '/^nsid = /{print $3}' $PAIR_DIR/a.example.toml); do
      grep -q "^path = \"$(cat $PAIR_DIR/medium-ns$nsid)\"" $PAIR_DIR/$n.toml ||
        { echo "pair_write_configs: $n.toml: nsid $nsid is not on its loop device"; return 1; }
    done
    grep -q "^dir = \"/dev/shm/tandem-pair-$n\"" $PAIR_DIR/$n.toml ||
      { echo "pair_write_configs: $n.toml: no [staging] domain line to add the dir to"; return 1; }
    (cd $PAIR_DIR && tandem config check --config $n.toml) > $PAIR_DIR/$n.check 2>&1 ||
      { echo "pair_write_configs: tandem rejects $n.toml:"; cat $PAIR_DIR/$n.check; return 1; }
  done
  pair_load
}

pair_pid() { cat $PAIR_DIR/$1.pid 2>/dev/null; }
pair_running() { local p; p=$(pair_pid $1) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# pair_start: start both nodes (a, then b) from $PAIR_DIR, each logging to
# $PAIR_DIR/NODE.log, PIDs in $PAIR_DIR/NODE.pid. Returns when both host
# ports, both interconnect ports and both control sockets are up; non-zero
# (with the log tail) when a node exits or does not come up in 30 s.
pair_start() {
  local n i up
  [ $TARGET_KIND = tandem ] || { echo "pair_start: no pair with TARGET_KIND=$TARGET_KIND"; return 1; }
  pair_load || return 1
  for n in $PAIR_NODES; do
    if pair_running $n; then echo "pair_start: node $n already runs (pid $(pair_pid $n))"; return 1; fi
    echo "---- tandem serve --config $n.toml (in $PAIR_DIR) at $(now_s)" >> $PAIR_DIR/$n.log
    (cd $PAIR_DIR && exec env NO_COLOR=1 tandem serve --config $n.toml 2>>$PAIR_DIR/$n.log >/dev/null) &
    echo $! > $PAIR_DIR/$n.pid
    rm -f $PAIR_DIR/$n.rc
  done
  for i in $(seq 1 300); do
    up=1
    for n in $PAIR_NODES; do
      pair_running $n || { echo "pair_start: node $n exited; log tail:"; tail -20 $PAIR_DIR/$n.log; return 1; }
      local port=PAIR_PORT_$n link=PAIR_LINK_$n sock=PAIR_SOCK_$n
      port_listening ${!port} && port_listening ${!link} && [ -S ${!sock} ] || up=0
    done
    [ $up = 1 ] && return 0
    sleep 0.1
  done
  echo "pair_start: the nodes did not listen on their ports and sockets within 30 s"
  for n in $PAIR_NODES; do echo "-- $n:"; tail -10 $PAIR_DIR/$n.log; done
  return 1
}

# pair_stop: SIGTERM to both nodes (by their recorded PIDs) at once; each
# drains its staged writes to the medium and exits. Waits up to 30 s, then
# kills a node that is still there with -9. Writes each node's exit status
# to $PAIR_DIR/NODE.rc (known only in the shell that started them; else
# "?"). Non-zero when a node had to be killed or exited non-zero.
pair_stop() {
  local n pid i rc ret=0
  for n in $PAIR_NODES; do
    pid=$(pair_pid $n) && [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  done
  for n in $PAIR_NODES; do
    pid=$(pair_pid $n) && [ -n "$pid" ] || continue
    for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "pair_stop: node $n (pid $pid) did not exit within 30 s of SIGTERM; killing it"
      kill -9 "$pid" 2>/dev/null; ret=1
    fi
    wait "$pid" 2>/dev/null; rc=$?
    [ $rc = 127 ] && rc="?"
    echo "$rc" > $PAIR_DIR/$n.rc
    case $rc in 0|"?") ;; *) echo "pair_stop: node $n exited $rc"; ret=1 ;; esac
    rm -f $PAIR_DIR/$n.pid
  done
  return $ret
}

# pair_status NODE: the node's status (JSON, `tandem rpc ... status`).
pair_status() {
  local sock=PAIR_SOCK_$1
  [ -n "${!sock:-}" ] || pair_load >/dev/null || return 1
  tandem rpc --socket "${!sock}" status
}

# pair_remove_media: once both nodes are gone, detach the loop devices and
# free their files and the staging dirs (tmpfs: guest RAM) for later checks.
pair_remove_media() {
  local n f
  for n in $PAIR_NODES; do
    pair_running $n && { echo "pair_remove_media: node $n still runs"; return 1; }
  done
  for f in $PAIR_DIR/medium-ns*; do
    [ -f $f ] || continue
    losetup -d "$(cat $f)" 2>/dev/null
    rm -f $f
  done
  rm -rf $PAIR_MEDIA_DIR
  for n in $PAIR_NODES; do rm -rf /dev/shm/tandem-pair-$n; done
}
