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
