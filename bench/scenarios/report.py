#!/usr/bin/env python3
"""Turns the raw JSON of one run.sh run into markdown tables (stdout).

Each cell is the median over the repetitions and, after it, the spread: half
the min-max range in % of the median. Ratios (NVMe/TCP over the plain-TCP
baseline) are computed per repetition, from the same `tandem perf`
invocation, and then their median is taken.
"""
import glob
import json
import os
import re
import statistics
import sys


def cell(values, fmt="{:.0f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) < 2 or med == 0:
        return fmt.format(med)
    spread = (max(values) - min(values)) / 2 / abs(med) * 100
    return f"{fmt.format(med)} ±{spread:.0f}%"


def load(pattern):
    return [json.load(open(p)) for p in sorted(glob.glob(pattern))]


def kiops(v):
    return v / 1000


def issue2(out):
    rows = [
        ("4 KiB randread QD1", "randread-4k-qd1"),
        ("4 KiB randwrite QD1", "randwrite-4k-qd1"),
        ("4 KiB randread QD32", "randread-4k-qd32"),
        ("4 KiB randwrite QD32", "randwrite-4k-qd32"),
        ("128 KiB read QD8", "read-128k-qd8"),
        ("128 KiB write QD8", "write-128k-qd8"),
    ]
    if not glob.glob(os.path.join(out, "issue2", "*.json")):
        return
    print("### Issue 2: RAM backend, one reactor, loopback, 1 queue (NVMe/TCP vs plain-TCP baseline)")
    print()
    print("| workload | side | kIOPS | MB/s | p50 µs | p99 µs | p99.9 µs |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for label, key in rows:
        runs = load(os.path.join(out, "issue2", f"{key}.rep*.json"))
        if not runs:
            continue
        for side, name in (("nvme_tcp", "NVMe/TCP"), ("baseline", "baseline")):
            f = [r[side] for r in runs]
            lat = [x["latency_us"] for x in f]
            print(
                f"| {label} | {name} | {cell([kiops(x['iops']) for x in f], '{:.1f}')} "
                f"| {cell([x['mb_per_s'] for x in f])} | {cell([l['p50'] for l in lat], '{:.1f}')} "
                f"| {cell([l['p99'] for l in lat], '{:.0f}')} | {cell([l['p99_9'] for l in lat], '{:.0f}')} |"
            )
        ratios.append((label, runs))
    print()
    print("Ratios, NVMe/TCP over baseline (per repetition, median ±spread). Issue 2 asks for")
    print("IOPS ratio >= 0.8 at QD32 and latency ratio <= 1.3 at QD1.")
    print()
    print("| workload | IOPS ratio | mean lat. ratio | p50 lat. ratio | p99 lat. ratio | errors | verdict |")
    print("|---|---|---|---|---|---|---|")
    for label, runs in ratios:
        ir = [r["nvme_tcp"]["iops"] / r["baseline"]["iops"] for r in runs]
        lr = {
            k: [r["nvme_tcp"]["latency_us"][k] / r["baseline"]["latency_us"][k] for r in runs]
            for k in ("mean", "p50", "p99")
        }
        errors = sum(r["errors"] for r in runs)
        verdict = ""
        if "QD32" in label:
            verdict = "meets 0.8x" if statistics.median(ir) >= 0.8 else "SHORT of 0.8x"
        elif "QD1" in label:
            verdict = "meets 1.3x" if statistics.median(lr["mean"]) <= 1.3 else "OVER 1.3x (mean)"
        print(
            f"| {label} | {cell(ir, '{:.2f}')} | {cell(lr['mean'], '{:.2f}')} | {cell(lr['p50'], '{:.2f}')} "
            f"| {cell(lr['p99'], '{:.2f}')} | {errors} | {verdict} |"
        )
    print()


def issue4(out):
    variants = [
        ("staged-file", "shm staging -> file medium"),
        ("writethrough-file", "file, write_through"),
        ("ram", "RAM, no staging"),
        ("staged-ram", "shm staging -> RAM"),
    ]
    if not glob.glob(os.path.join(out, "issue4", "*.json")):
        return
    for phase, suffix, text in (
        ("burst", "-burst", "a burst that fits in the ring (fresh target, empty ring)"),
        ("sustained", "", "sustained, right after the burst (the ring fills if the flusher cannot keep up)"),
    ):
        print(f"### Issue 4: 4 KiB randwrite, 1 queue, {text}")
        print()
        print("| backend | QD1 p50 µs | QD1 mean µs | QD1 p99 µs | QD1 p99.9 µs | QD32 kIOPS | QD32 p50 µs | QD32 p99 µs | QD1 mean vs RAM | QD32 IOPS vs RAM |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        ram1 = load(os.path.join(out, "issue4", f"ram-randwrite-4k-qd1{suffix}.rep*.json"))
        ram32 = load(os.path.join(out, "issue4", f"ram-randwrite-4k-qd32{suffix}.rep*.json"))
        for key, label in variants:
            q1 = load(os.path.join(out, "issue4", f"{key}-randwrite-4k-qd1{suffix}.rep*.json"))
            q32 = load(os.path.join(out, "issue4", f"{key}-randwrite-4k-qd32{suffix}.rep*.json"))
            if not q1 or not q32:
                continue
            l1 = [r["nvme_tcp"]["latency_us"] for r in q1]
            f32 = [r["nvme_tcp"] for r in q32]
            # Variants run in separate target processes one after another, so
            # the ratio pairs repetition i of each (the same run.sh run).
            vs1 = [a["nvme_tcp"]["latency_us"]["mean"] / b["nvme_tcp"]["latency_us"]["mean"] for a, b in zip(q1, ram1)]
            vs32 = [a["nvme_tcp"]["iops"] / b["nvme_tcp"]["iops"] for a, b in zip(q32, ram32)]
            errors = sum(r["errors"] for r in q1 + q32)
            print(
                f"| {label}{' (' + str(errors) + ' errors)' if errors else ''} | {cell([l['p50'] for l in l1], '{:.1f}')} "
                f"| {cell([l['mean'] for l in l1], '{:.1f}')} | {cell([l['p99'] for l in l1], '{:.0f}')} "
                f"| {cell([l['p99_9'] for l in l1], '{:.0f}')} | {cell([kiops(x['iops']) for x in f32], '{:.1f}')} "
                f"| {cell([x['latency_us']['p50'] for x in f32], '{:.0f}')} "
                f"| {cell([x['latency_us']['p99'] for x in f32], '{:.0f}')} | {cell(vs1, '{:.2f}x')} | {cell(vs32, '{:.2f}x')} |"
            )
        print()
    live = load(os.path.join(out, "issue4", "drain-live.rep*.json"))
    stalled = load(os.path.join(out, "issue4", "drain-stalled.rep*.json"))
    fio = load(os.path.join(out, "issue4", "fio.rep*.json"))
    dd = []
    for p in sorted(glob.glob(os.path.join(out, "issue4", "dd.rep*.txt"))):
        m = re.search(r"copied, ([\d.]+) s", open(p).read())
        size = re.search(r"^(\d+) bytes", open(p).read(), re.M)
        if m and size:
            dd.append(int(size.group(1)) / float(m.group(1)) / 1e6)
    fio_mb = [j["jobs"][0]["write"]["bw_bytes"] / 1e6 for j in fio]
    print("### Issue 4: flusher drain rate vs the medium's raw sequential write rate (same filesystem)")
    print()
    print("| measurement | MB/s | vs fio raw |")
    print("|---|---|---|")
    fio_med = statistics.median(fio_mb) if fio_mb else None

    def vs(values):
        return cell([v / fio_med for v in values if v is not None], "{:.2f}x") if fio_med else "n/a"

    if stalled:
        d = [r["drain_mb_s"] for r in stalled]
        print(f"| flusher drain, ring full -> empty (medium stalled during the burst, then healed) | {cell(d)} | {vs(d)} |")
    if live:
        d = [r["drain_mb_s"] for r in live]
        h = [r["host_mb_s"] for r in live]
        b = [r["backlog_mib"] for r in live]
        print(f"| flusher drain during a live burst (backlog at end of burst: {cell(b, '{:.0f}')} MiB) | {cell(d)} | {vs(d)} |")
        print(f"| host write rate of that burst (128 KiB QD8) | {cell(h)} | {vs(h)} |")
    if fio_mb:
        print(f"| fio raw: 1 MiB O_DIRECT io_uring QD32, sparse file, end fsync | {cell(fio_mb)} | 1.00x |")
    if dd:
        print(f"| dd raw: 1 MiB O_DIRECT QD1, conv=fdatasync | {cell(dd)} | {vs(dd)} |")
    print()


def main():
    out = sys.argv[1]
    issue2(out)
    issue4(out)


if __name__ == "__main__":
    main()
