#!/usr/bin/env bash
# Where the time goes in the issue 2 setup (RAM backend, one reactor,
# loopback): perf record -g on the target and on the load generator during
# 4 KiB randread at QD1 and QD32, then strace -c on the target for a fixed
# number of I/Os to count syscalls per I/O.
#
#   bench/scenarios/profile.sh          # needs perf (linux-perf) and strace
#
# Output: build/bench/profile-<timestamp>/ with the perf.data files,
# the text reports (top self-time functions, call graphs) and the strace
# summaries; a short summary on stdout.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TANDEM=${TANDEM:-$ROOT/build/release/tandem}
TIME_S=${TIME_S:-5}
STRACE_IOS=${STRACE_IOS:-20000}
OUT=${OUT:-$ROOT/build/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)}
NQN=nqn.2026-11.io.tandem:bench
mkdir -p "$OUT"
[[ -x $TANDEM ]] || { echo "no tandem binary at $TANDEM (cargo build --release --bin tandem)" >&2; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
cat > "$OUT/ram.toml" <<CFG
[node]
name = "profile"
cntlid_min = 1
cntlid_max = 0x7fff
cores = [0]
poll = "adaptive"

[[ports]]
id = 1
transport = "tcp"
addr = "127.0.0.1:$PORT"

[[subsystems]]
nqn = "$NQN"
serial = "BENCH0002"
model = "Tandem bench"
allow_any_host = true

[[subsystems.namespaces]]
nsid = 1
ana_group = 1
backend = "ram"
size = "1GiB"
block_size = 4096
CFG

"$TANDEM" serve --config "$OUT/ram.toml" > "$OUT/serve.log" 2>&1 &
TARGET_PID=$!
trap 'kill $TARGET_PID 2>/dev/null || true; wait $TARGET_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do grep -q listening "$OUT/serve.log" && break; sleep 0.05; done

for w in "randread 1" "randread 32" "randwrite 32"; do
    set -- $w
    name=$1-4k-qd$2
    echo "== $name: perf record -g (target pid $TARGET_PID and the load generator)" >&2
    perf record -F 2000 -g -p "$TARGET_PID" -o "$OUT/target-$name.data" -- sleep "$TIME_S" 2> /dev/null &
    rec=$!
    perf record -F 2000 -g -o "$OUT/host-$name.data" -- \
        "$TANDEM" perf --addr "127.0.0.1:$PORT" --subnqn "$NQN" --rw "$1" --bs 4k --qd "$2" \
        --time "$TIME_S" --quiet --json > "$OUT/perf-$name.json" 2> /dev/null
    wait $rec
    for side in target host; do
        perf report -i "$OUT/$side-$name.data" --no-children --stdio --percent-limit 0.7 -g none \
            --sort dso,symbol 2> /dev/null > "$OUT/$side-$name.self.txt"
        perf report -i "$OUT/$side-$name.data" --children --stdio --percent-limit 3 -g caller,0.5,callee \
            --sort symbol 2> /dev/null > "$OUT/$side-$name.children.txt"
    done
    echo "== $name: strace -c -f on the target for $STRACE_IOS I/Os" >&2
    strace -c -f -p "$TARGET_PID" -o "$OUT/strace-$name.txt" &
    st=$!
    sleep 0.5
    "$TANDEM" perf --addr "127.0.0.1:$PORT" --subnqn "$NQN" --rw "$1" --bs 4k --qd "$2" \
        --ios "$STRACE_IOS" --time 120 --quiet --json > "$OUT/strace-perf-$name.json" 2> /dev/null
    kill -INT $st; wait $st 2>/dev/null || true
    {
        echo "### $name"
        echo "IOPS under perf record: $(jq -r '.nvme_tcp.iops|floor' "$OUT/perf-$name.json")"
        echo "Target, top self time:"
        grep -E '^ +[0-9]' "$OUT/target-$name.self.txt" | head -15
        echo "Load generator, top self time:"
        grep -E '^ +[0-9]' "$OUT/host-$name.self.txt" | head -8
        echo "Target syscalls per I/O ($STRACE_IOS I/Os, strace -c):"
        awk -v n="$STRACE_IOS" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %7.2f per I/O  (%s%% of syscall time)\n", $NF, $4/n, $1 }' \
            "$OUT/strace-$name.txt" | sort -k2 -nr | head -8
        echo
    } | tee "$OUT/summary-$name.txt"
done
