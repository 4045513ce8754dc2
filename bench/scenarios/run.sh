#!/usr/bin/env bash
# Benchmark scenarios of issues 2 and 4, in one command.
#
#   bench/scenarios/run.sh            # build, run everything, print the tables
#   REPS=3 TIME_S=5 bench/scenarios/run.sh
#   SKIP_BUILD=1 ONLY=issue2 bench/scenarios/run.sh
#
# Issue 2: RAM backend, one reactor, loopback; 4 KiB randread/randwrite at QD1
#   and QD32, 128 KiB read/write at QD8, each beside the plain-TCP --baseline
#   measured in the same `tandem perf` invocation.
# Issue 4: 4 KiB randwrite QD1 and QD32 on (a) shm staging in front of a file
#   medium, (b) the same file backend with write_through, (c) RAM without
#   staging, (d) RAM with shm staging; the flusher's drain rate (medium file
#   growth after a sequential burst) beside fio/dd O_DIRECT sequential writes
#   on the same filesystem.
#
# Every figure is measured REPS times; the tables give the median and the
# spread (half the min-max range, in % of the median). Ratios are taken per
# repetition (same perf invocation) and then the median is reported.
# Targets are started and stopped by PID on free loopback ports; raw JSON goes
# to build/bench/<timestamp>/, the markdown tables to stdout, progress to
# stderr.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TANDEM=${TANDEM:-$ROOT/build/release/tandem}
REPS=${REPS:-3}
TIME_S=${TIME_S:-5}
ONLY=${ONLY:-all}            # all | issue2 | issue4
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/build/bench/$STAMP}
WORK=$OUT/work               # target data dirs and the medium files (same fs as fio's file)
SHM=/dev/shm/tandem-bench-$$ # staging rings
NQN=nqn.2026-11.io.tandem:bench
RING=${RING:-64MiB}          # staging ring of the latency/IOPS runs (the config default)
BURST_MIB=${BURST_MIB:-32}   # issue 4 burst phase: fits in RING
DRAIN_MIB=${DRAIN_MIB:-192}  # sequential burst of the drain test...
DRAIN_RING=${DRAIN_RING:-256MiB}  # ...into a ring that holds it all

log() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release --bin tandem"
    (cd "$ROOT" && cargo build --release --bin tandem >&2)
fi
[[ -x $TANDEM ]] || { echo "no tandem binary at $TANDEM" >&2; exit 1; }
mkdir -p "$OUT" "$WORK" "$SHM"

TARGET_PID=""
cleanup() {
    if [[ -n $TARGET_PID ]]; then kill "$TARGET_PID" 2>/dev/null || true; wait "$TARGET_PID" 2>/dev/null || true; fi
    rm -rf "$SHM" "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# write_config NAME PORT BACKEND(ram|file) STAGING(yes|no) WRITE_THROUGH(true|false) [drain]
# "drain" adds a control socket, fault injection on the medium and DRAIN_RING.
write_config() {
    local name=$1 port=$2 backend=$3 staging=$4 wt=$5 drain=${6:-} cfg=$OUT/$1.toml
    local ring=$RING
    [[ $drain == drain ]] && ring=$DRAIN_RING
    {
        echo "[node]"
        echo "name = \"$name\""
        echo "cntlid_min = 1"
        echo "cntlid_max = 0x7fff"
        echo "cores = [0]"
        echo "poll = \"adaptive\""
        echo "data_dir = \"$WORK/$name\""
        [[ $drain == drain ]] && echo "rpc_socket = \"$WORK/$name.sock\""
        echo
        echo "[[ports]]"
        echo "id = 1"
        echo "transport = \"tcp\""
        echo "addr = \"127.0.0.1:$port\""
        echo
        echo "[[subsystems]]"
        echo "nqn = \"$NQN\""
        echo "serial = \"BENCH0001\""
        echo "model = \"Tandem bench\""
        echo "allow_any_host = true"
        echo
        echo "[[subsystems.namespaces]]"
        echo "nsid = 1"
        echo "ana_group = 1"
        echo "backend = \"$backend\""
        [[ $backend == file ]] && echo "path = \"medium.img\""
        echo "size = \"1GiB\""
        echo "block_size = 4096"
        echo "write_through = $wt"
        [[ $drain == drain ]] && echo "fault_injection = true"
        if [[ $staging == yes ]]; then
            echo
            echo "[staging]"
            echo "domain = \"shm\""
            echo "dir = \"$SHM/$name\""
            echo "ring_size = \"$ring\""
        fi
    } > "$cfg"
    echo "$cfg"
}

# start_target CONFIG PORT: fresh media and rings, waits for the listener.
start_target() {
    local cfg=$1 port=$2 name
    name=$(basename "$cfg" .toml)
    rm -rf "${WORK:?}/$name" "${SHM:?}/$name"
    "$TANDEM" serve --config "$cfg" > "$OUT/$name.serve.log" 2>&1 &
    TARGET_PID=$!
    for _ in $(seq 1 200); do
        if grep -q "listening" "$OUT/$name.serve.log" 2>/dev/null; then return 0; fi
        kill -0 "$TARGET_PID" 2>/dev/null || { cat "$OUT/$name.serve.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "target $name did not start" >&2; exit 1
}

stop_target() {
    kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; TARGET_PID=""
}

# perf_json OUTFILE PORT perf-args...
perf_json() {
    local out=$1 port=$2; shift 2
    "$TANDEM" perf --addr "127.0.0.1:$port" --subnqn "$NQN" --quiet --json "$@" > "$out"
}

# ---- issue 2 ---------------------------------------------------------------
if [[ $ONLY == all || $ONLY == issue2 ]]; then
    port=$(free_port)
    cfg=$(write_config issue2-ram "$port" ram no false)
    start_target "$cfg" "$port"
    mkdir -p "$OUT/issue2"
    for rep in $(seq 1 "$REPS"); do
        for w in "randread 4k 1" "randwrite 4k 1" "randread 4k 32" "randwrite 4k 32" "read 128k 8" "write 128k 8"; do
            set -- $w
            log "issue2 rep $rep: $1 bs=$2 qd=$3 (+ baseline)"
            perf_json "$OUT/issue2/$1-$2-qd$3.rep$rep.json" "$port" \
                --rw "$1" --bs "$2" --qd "$3" --time "$TIME_S" --baseline
        done
    done
    stop_target
fi

# ---- issue 4 ---------------------------------------------------------------
if [[ $ONLY == all || $ONLY == issue4 ]]; then
    mkdir -p "$OUT/issue4"
    for v in "staged-file file yes false" "writethrough-file file no true" \
             "ram ram no false" "staged-ram ram yes false"; do
        set -- $v
        variant=$1 backend=$2 staging=$3 wt=$4
        port=$(free_port)
        cfg=$(write_config "issue4-$variant" "$port" "$backend" "$staging" "$wt")
        for rep in $(seq 1 "$REPS"); do
            for qd in 1 32; do
                # A fresh target (empty ring, sparse medium) per figure. First
                # a burst that fits in the ring (BURST_MIB), then TIME_S more
                # on the same target: with staging the ring then fills and the
                # figure is the flusher's sustained rate.
                start_target "$cfg" "$port"
                log "issue4 $variant rep $rep: randwrite 4k qd=$qd, ${BURST_MIB} MiB burst then ${TIME_S}s"
                perf_json "$OUT/issue4/$variant-randwrite-4k-qd$qd-burst.rep$rep.json" "$port" \
                    --rw randwrite --bs 4k --qd "$qd" --ios $((BURST_MIB * 256)) --time 60
                perf_json "$OUT/issue4/$variant-randwrite-4k-qd$qd.rep$rep.json" "$port" \
                    --rw randwrite --bs 4k --qd "$qd" --time "$TIME_S"
                stop_target
            done
        done
    done

    # Drain rate: a sequential burst of DRAIN_MIB (128 KiB writes, QD8)
    # through the staged namespace into a fresh sparse medium; drain.py
    # samples the medium's allocated bytes. "live": the flusher runs during
    # the burst (bounded by the host's rate if it keeps up). "stalled": the
    # medium fails writes during the burst (fault injection), so the ring
    # fills; then it heals and the ring empties with no host input.
    port=$(free_port)
    cfg=$(write_config issue4-drain "$port" file yes false drain)
    for rep in $(seq 1 "$REPS"); do
        for mode in live stalled; do
            start_target "$cfg" "$port"
            log "issue4 drain rep $rep ($mode): ${DRAIN_MIB} MiB sequential 128k qd8"
            extra=()
            [[ $mode == stalled ]] && extra=(--rpc-socket "$WORK/issue4-drain.sock" --tandem "$TANDEM")
            python3 "$HERE/drain.py" --medium "$WORK/issue4-drain/medium.img" \
                --bytes $((DRAIN_MIB << 20)) "${extra[@]}" -- \
                "$TANDEM" perf --addr "127.0.0.1:$port" --subnqn "$NQN" --quiet --json \
                --rw write --bs 128k --qd 8 --size "${DRAIN_MIB}m" --ios $((DRAIN_MIB * 8)) \
                > "$OUT/issue4/drain-$mode.rep$rep.json"
            stop_target
        done
    done

    # The medium's raw sequential write rate on the same filesystem: fio with
    # the flusher's shape (1 MiB O_DIRECT writes, 32 in flight, io_uring, a
    # sparse file, fdatasync at the end) and dd at QD1.
    raw=$WORK/raw.img
    for rep in $(seq 1 "$REPS"); do
        rm -f "$raw"; truncate -s "$((DRAIN_MIB * 4))M" "$raw"
        log "issue4 raw rep $rep: fio 1m qd32 O_DIRECT"
        fio --name=raw --filename="$raw" --rw=write --bs=1M --iodepth=32 --direct=1 \
            --ioengine=io_uring --size="$((DRAIN_MIB * 4))M" --fallocate=none --end_fsync=1 \
            --output-format=json > "$OUT/issue4/fio.rep$rep.json" 2>/dev/null
        rm -f "$raw"
        log "issue4 raw rep $rep: dd 1m qd1 O_DIRECT"
        dd if=/dev/zero of="$raw" bs=1M count=$((DRAIN_MIB * 2)) oflag=direct conv=fdatasync \
            2> "$OUT/issue4/dd.rep$rep.txt"
        rm -f "$raw"
    done
fi

{
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(date -u +%Y-%m-%d) UTC"
    echo "Raw JSON: $OUT; $REPS repetitions of ${TIME_S}s each; median ±spread (half the min-max range, % of median)"
    echo
} > "$OUT/tables.md"
python3 "$HERE/report.py" "$OUT" >> "$OUT/tables.md"
cat "$OUT/tables.md"
