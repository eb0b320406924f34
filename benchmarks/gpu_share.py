"""How many trainings share one device before each slows below a fraction of its solo speed.

    python benchmarks/gpu_share.py --device cuda --counts 1,4,8,16 --epochs 20 [--graphs auto|off]

Starts N `birdplane train` processes at once (the chapter's net, book split) for each N, reads
each one's training seconds from its --json summary, and prints the per-run time and the speed
relative to running alone. The largest N at >= --threshold (0.8) x solo speed is what the sweep's
default --gpus-per-trial (1/N) should come from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def run_batch(count: int, args) -> list[float]:
    cmd = [
        sys.executable,
        "-m",
        "study.cli",
        "train",
        "--val-split",
        "book",
        "--epochs",
        str(args.epochs),
        "--device",
        args.device,
        "--graphs",
        args.graphs,
        "--threads",
        "1",
        "--json",
    ]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(count)]
    seconds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"a training failed (exit {proc.returncode})")
        seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--counts", default="1,4,8,16")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--graphs", default="auto", choices=("auto", "off"))
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA"))
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--smoke-test", action="store_true", help="2 epochs, counts 1,2 (for CI on a CPU)")
    a = p.parse_args()
    if a.smoke_test:
        a.epochs, a.counts = 2, "1,2"
    counts = [int(c) for c in a.counts.split(",")]
    solo = None
    best = 1
    print(f"{'runs at once':>12} {'per-run training s (median)':>28} {'speed vs solo':>14} {'wall s':>8}")
    for count in counts:
        started = time.perf_counter()
        seconds = run_batch(count, a)
        wall = time.perf_counter() - started
        median = statistics.median(seconds)
        solo = solo or median
        ratio = solo / median
        if ratio >= a.threshold:
            best = max(best, count)
        print(f"{count:>12} {median:>28.2f} {ratio:>14.2f} {wall:>8.1f}")
    print(f"largest count at >= {a.threshold}x solo speed: {best} -> --gpus-per-trial {1 / best:g}")


if __name__ == "__main__":
    main()
