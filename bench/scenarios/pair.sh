#!/usr/bin/env bash
# The pair benchmark of issue 8, in one command:
#
#   bench/scenarios/pair.sh                       # build (release), run, print the table
#   SKIP_BUILD=1 REPS=3 TIME_S=5 bench/scenarios/pair.sh
#
# One reactor per node (`cores = [0]`, adaptive polling), shm staging, a
# file medium, loopback; 4 KiB randwrite through node a's namespace 1:
#   single   node a alone: the same config without [pair] (staging, no mirror)
#   pair     nodes a and b from `tandem config example --node a|b`: every
#            write mirrored into b's second store before it completes
#   link     the round trip of a 4 KiB message and its answer over plain
#            loopback TCP (`tandem perf --baseline-only`), and the pair's own
#            heartbeat round trip (`tandem rpc status`, pair.link.rtt_us)
# Each repetition runs single, then pair, on fresh data; the ratios are per
# repetition and their median is reported. Expected (issue 8): QD1 mirrored
# latency <= unmirrored + 1.2 x link RTT; QD32 mirrored IOPS >= 0.8 x unmirrored.
# Targets are started and stopped by PID; raw JSON goes to build/bench/pair-<stamp>/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TANDEM=${TANDEM:-$ROOT/build/release/tandem}
REPS=${REPS:-3}
TIME_S=${TIME_S:-5}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$ROOT/build/bench/pair-$STAMP}
NQN=nqn.2026-11.io.tandem:pair

log() { echo "[pair.sh $(date +%H:%M:%S)] $*" >&2; }

if [[ -z ${SKIP_BUILD:-} ]]; then
    log "cargo build --release --bin tandem"
    (cd "$ROOT" && cargo build --release --bin tandem >&2)
fi
[[ -x $TANDEM ]] || { echo "no tandem binary at $TANDEM" >&2; exit 1; }
mkdir -p "$OUT"

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_all
    rm -rf "$OUT"/work-* /dev/shm/tandem-pairbench-$$-*
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port work_dir
    local port=$1
    for _ in $(seq 1 600); do
        python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$port)))" && return 0
        sleep 0.1
    done
    echo "nothing listens on $port; the nodes' logs:" >&2
    tail -n 20 "$2"/*.log >&2 || true
    return 1
}

# The example pair's configs with fresh ports, its own work dir and shm dirs.
# $1 = work dir; sets HOST_A, HOST_B.
write_pair() {
    local work=$1
    HOST_A=$(free_port); HOST_B=$(free_port)
    local link_a link_b; link_a=$(free_port); link_b=$(free_port)
    for n in a b; do
        "$TANDEM" config example --node $n |
            sed -e "s/127.0.0.1:4420/127.0.0.1:$HOST_A/; s/127.0.0.1:4421/127.0.0.1:$HOST_B/" \
                -e "s/127.0.0.1:4430/127.0.0.1:$link_a/; s/127.0.0.1:4431/127.0.0.1:$link_b/" \
                -e "s|^ring_size = \"64MiB\"|dir = \"/dev/shm/tandem-pairbench-$$-$n\"\nring_size = \"64MiB\"|" \
            > "$work/$n.toml"
    done
    # node a alone: the same config without the pair.
    sed -e '/^\[pair\]/,$d' -e "s|tandem-pairbench-$$-a|tandem-pairbench-$$-single|" \
        -e 's|^rpc_socket = .*|rpc_socket = "tandem-pair/single.sock"|' "$work/a.toml" > "$work/single.toml"
}

serve() { # work_dir config
    (cd "$1" && exec "$TANDEM" serve --config "$2" >>"$1/${2%.toml}.log" 2>&1) &
    PIDS+=($!)
}

perf() { # port qd out.json
    "$TANDEM" perf -a "127.0.0.1:$1" --subnqn $NQN --nsid 1 --rw randwrite --bs 4k --qd "$2" \
        --time "$TIME_S" --size $((256 << 20)) --quiet --json > "$3"
}

status_rtt() { # work_dir node
    "$TANDEM" rpc -s "$1/tandem-pair/$2.sock" status 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["pair"]["link"]["rtt_us"] or 0)'
}

wait_in_sync() { # work_dir
    for _ in $(seq 1 300); do
        local ok=1
        for n in a b; do
            "$TANDEM" rpc -s "$1/tandem-pair/$n.sock" status 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)["pair"]
sys.exit(0 if d["link"]["state"] == "up" and all(g.get("mirror", {"state": "in-sync"})["state"] == "in-sync" for g in d["groups"]) else 1)' || ok=0
        done
        [[ $ok == 1 ]] && return 0
        sleep 0.1
    done
    echo "the pair did not get in sync" >&2; return 1
}

for rep in $(seq 1 "$REPS"); do
    work=$OUT/work-$rep
    mkdir -p "$work/tandem-pair/shared"
    write_pair "$work"
    log "rep $rep: single node"
    serve "$work" single.toml; wait_port "$HOST_A" "$work"
    perf "$HOST_A" 1 "$OUT/single-qd1-$rep.json"
    perf "$HOST_A" 32 "$OUT/single-qd32-$rep.json"
    stop_all
    rm -rf "$work/tandem-pair/shared"/* /dev/shm/tandem-pairbench-$$-*
    log "rep $rep: pair"
    serve "$work" a.toml; serve "$work" b.toml
    wait_port "$HOST_A" "$work"; wait_port "$HOST_B" "$work"; wait_in_sync "$work"
    perf "$HOST_A" 1 "$OUT/pair-qd1-$rep.json"
    echo "$(status_rtt "$work" a)" > "$OUT/heartbeat-rtt-$rep.txt"
    perf "$HOST_A" 32 "$OUT/pair-qd32-$rep.json"
    stop_all
    log "rep $rep: link round trip (plain TCP, 4 KiB)"
    "$TANDEM" perf --baseline-only --rw randwrite --bs 4k --qd 1 --time "$TIME_S" --json > "$OUT/link-$rep.json"
    rm -rf "$work" /dev/shm/tandem-pairbench-$$-*
done

python3 - "$OUT" "$REPS" <<'PY'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
def load(name, rep, key="nvme_tcp"):
    return json.load(open(f"{out}/{name}-{rep}.json"))[key]
rows = []
for r in range(1, reps + 1):
    s1, p1 = load("single-qd1", r), load("pair-qd1", r)
    s32, p32 = load("single-qd32", r), load("pair-qd32", r)
    link = load("link", r, "baseline")
    hb = float(open(f"{out}/heartbeat-rtt-{r}.txt").read().strip() or 0)
    rows.append(dict(
        s1=s1["latency_us"]["p50"], p1=p1["latency_us"]["p50"],
        s1m=s1["latency_us"]["mean"], p1m=p1["latency_us"]["mean"],
        rtt=link["latency_us"]["p50"], hb=hb,
        s32=s32["iops"], p32=p32["iops"],
        err=s1["errors"] + p1["errors"] + s32["errors"] + p32["errors"],
    ))
med = lambda k: statistics.median(r[k] for r in rows)
extra = [ (r["p1"] - r["s1"]) / r["rtt"] for r in rows ]
ratio32 = [ r["p32"] / r["s32"] for r in rows ]
print(f"| 4 KiB randwrite, {reps} reps, median | single (staging, no mirror) | pair (mirrored) | pair / single |")
print("|---|---|---|---|")
print(f"| QD1 latency p50 (us) | {med('s1'):.1f} | {med('p1'):.1f} | {statistics.median(r['p1']/r['s1'] for r in rows):.2f}x |")
print(f"| QD1 latency mean (us) | {med('s1m'):.1f} | {med('p1m'):.1f} | {statistics.median(r['p1m']/r['s1m'] for r in rows):.2f}x |")
print(f"| QD32 IOPS | {med('s32'):.0f} | {med('p32'):.0f} | {statistics.median(ratio32):.2f}x |")
print()
print(f"link round trip, plain TCP 4 KiB message, p50: {med('rtt'):.1f} us; the pair's heartbeat round trip: {med('hb'):.0f} us")
print(f"QD1 mirrored - unmirrored = {statistics.median(extra):.2f} x link RTT (expected <= 1.2)")
print(f"QD32 mirrored / unmirrored = {statistics.median(ratio32):.2f} (expected >= 0.8)")
print(f"errors: {sum(r['err'] for r in rows)}")
PY
