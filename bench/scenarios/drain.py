#!/usr/bin/env python3
"""Measures the staging flusher's drain rate from outside the target.

Runs the given `tandem perf` command (a sequential write burst of --bytes into
a staged namespace whose medium is a fresh sparse file) and samples the medium
file's allocated bytes (st_blocks * 512) every few milliseconds, during the
burst and after it until the medium holds --bytes (or a timeout). The flusher
is the only writer of the medium, so the growth of its allocation is the
flusher's progress.

With --rpc-socket (the namespace needs `fault_injection = true`), the medium
is held failing during the burst (`fault fail_writes_after 0`), so the burst
fills the ring and nothing reaches the medium; then the fault is healed and
the clock measures how fast the full ring empties with no host input. That
is the drain rate proper; without --rpc-socket the figure is bounded by the
host's own write rate whenever the flusher keeps up.

Prints one JSON object:
  host_mb_s      the host's write rate (perf's own figure)
  drain_mb_s     the medium's growth rate between 10 % and 90 % of the data
                 to drain (all of it, or what was staged at the heal)
  backlog_mib    data staged but not on the medium when the burst ended
"""
import argparse
import json
import os
import subprocess
import sys
import time

SAMPLE_S = 0.002
MB = 1e6


def allocated(path):
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def fault(tandem, socket, params):
    subprocess.run(
        [tandem, "rpc", "--socket", socket, "tandem_fault_inject", "-p", json.dumps(params)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medium", required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--rpc-socket")
    ap.add_argument("--tandem", default="tandem")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    stalled = a.rpc_socket is not None
    base = allocated(a.medium)  # the file backend creates the medium sparse
    if stalled:
        fault(a.tandem, a.rpc_socket, {"nsid": 1, "action": "fail_writes_after", "count": 0})
    samples = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    out_bytes = proc.communicate()[0] if stalled else None
    while proc.poll() is None:
        samples.append((time.monotonic() - t0, allocated(a.medium) - base))
        time.sleep(SAMPLE_S)
    if out_bytes is None:
        out_bytes = proc.stdout.read()
    t_stop = time.monotonic() - t0
    at_stop = allocated(a.medium) - base
    if proc.returncode != 0:
        sys.exit(f"perf failed: exit status {proc.returncode}")
    perf = json.loads(out_bytes)
    if stalled:
        fault(a.tandem, a.rpc_socket, {"nsid": 1, "action": "heal"})
    t_heal = time.monotonic() - t0
    deadline = time.monotonic() + a.timeout_s
    done = at_stop
    samples.append((t_heal, done))
    while done < a.bytes and time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        done = allocated(a.medium) - base
        samples.append((time.monotonic() - t0, done))
    t_done = time.monotonic() - t0
    # The rate is the slope between 10 % and 90 % of the data drained (after
    # the heal when stalled), so neither the rpc round trip nor the flusher's
    # retry backoff nor the last partial batch counts as drain time.
    floor = at_stop if stalled else 0
    span = a.bytes - floor

    def time_at(fraction):
        return next((t for t, b in samples if b - floor >= fraction * span), None)

    t10, t90 = time_at(0.1), time_at(0.9)
    drain = 0.8 * span / (t90 - t10) / MB if t10 is not None and t90 is not None and t90 > t10 else None
    out = {
        "mode": "stalled-then-healed" if stalled else "live",
        "bytes": a.bytes,
        "complete": done >= a.bytes,
        "host_mb_s": perf["nvme_tcp"]["mb_per_s"],
        "errors": perf["errors"],
        "drain_mb_s": drain,
        "backlog_mib": (a.bytes - at_stop) / (1 << 20),
        "seconds_burst": t_stop,
        "seconds_heal_to_10pct": t10 - t_heal if stalled and t10 is not None else None,
        "seconds_to_drained": t_done,
        "samples": samples[:: max(1, len(samples) // 400)],
        "perf": perf,
    }
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
