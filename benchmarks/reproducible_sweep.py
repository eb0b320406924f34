"""The reproducible sweep against the asynchronous one, on the same flags: wall time, best val_acc,
full-budget trials, and the search's digest (the trial table and per-epoch metrics, without ids or
clocks: analysis.export.search_digest), so two reproducible runs can be compared across machines.

    python benchmarks/reproducible_sweep.py [--modes reproducible,async] [--repeats 1]
        [--num-samples 32] [--seed 0] [--data-root DIR] [--keep DIR] [-- EXTRA SWEEP FLAGS]

Each run is `birdplane sweep` in a subprocess on a fresh sqlite store (the README's command 1 with
its own store), one mode after the other, alternating which goes first in each repeat. The data's
tensor cache is built before the first clock starts. Prints one row per run (s/epoch: wall time per
trial-epoch trained), then the wall-time ratio reproducible / async per repeat and the same ratio
per trial-epoch (which leaves out the extra epochs the reproducible halving trains and keeps the
batch's wait for its slowest trial), and whether the reproducible runs' digests agree.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from analysis.export import search_digest, search_tables
from trainables.config import DataConfig
from trainables.data import load_study_data

FLAG = {"reproducible": "--reproducible", "async": "--no-reproducible"}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def run_sweep(mode: str, name: str, folder: Path, args, extra: list[str]) -> dict:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, "-m", "study.cli", "sweep", FLAG[mode], "--name", name, "--json"]
    command += ["--num-samples", str(args.num_samples), "--seed", str(args.seed), "--tracking-uri", uri]
    command += ["--storage-path", str(folder / "ray"), *(["--data-root", args.data_root] if args.data_root else [])]
    loads = [load_average()]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen([*command, *extra], stdout=out_file, stderr=err_file, text=True)
        while proc.poll() is None:  # the load average every 30 s while it runs
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                loads.append(load_average())
        wall = time.perf_counter() - started
        out_file.seek(0), err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} sweep failed (exit {proc.returncode}):\n{err[-3000:]}")
    table, per_epoch = search_tables(MlflowClient(uri), name)
    best = table.loc[table["val_acc"].idxmax()]
    budget = int(table["epochs"].max())
    summary = json.loads(out.strip().splitlines()[-1])
    return {
        "mode": mode,
        "wall": wall,
        "best": float(best["val_acc"]),
        "best_trial": f"[{best['hidden_sizes']}] {best['activation']} {best['loss']} {best['optimizer']} "
        f"lr {best['lr']:.2g} {best['schedule']} batch {best['batch_size']} {best['augment']}",
        "full": int((table["epochs_run"] >= budget).sum()),
        "trials": len(table),
        "epochs": int(table["epochs_run"].sum()),
        "digest": search_digest(table, per_epoch)[:16],
        "load": sorted(loads)[len(loads) // 2],
        "printed_best": (summary.get("best") or {}).get("val_acc") if isinstance(summary, dict) else None,
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="reproducible,async")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--keep", default=None, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in FLAG]
    if unknown:
        raise SystemExit(f"--modes: unknown mode {unknown[0]!r} (reproducible or async)")
    load_study_data(DataConfig(root=args.data_root or os.environ.get("BIRDPLANE_DATA", "./data")))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bp-repro-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.num_samples} trials, seed {args.seed}, extra flags {extra or 'none'}; stores under {root}")
    header = (
        f"{'mode':>12} {'wall s':>8} {'load':>5} {'trials':>6} {'full':>4} {'epochs':>6} {'s/epoch':>7} {'best':>6}"
    )
    print(header + "  digest / best trial")
    rows = []
    for repeat in range(args.repeats):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            folder = root / f"{mode}-{repeat}"
            folder.mkdir()
            r = run_sweep(mode, f"{mode}-{repeat}", folder, args, extra)
            rows.append({**r, "repeat": repeat})
            print(
                f"{mode:>12} {r['wall']:>8.1f} {r['load']:>5.1f} {r['trials']:>6} {r['full']:>4} {r['epochs']:>6} "
                f"{r['wall'] / r['epochs']:>7.2f} {r['best']:>6.3f}  {r['digest']} {r['best_trial']}",
                flush=True,
            )
    for repeat in range(args.repeats):
        walls = {r["mode"]: r["wall"] for r in rows if r["repeat"] == repeat}
        if set(walls) == {"reproducible", "async"}:
            per = {r["mode"]: r["wall"] / r["epochs"] for r in rows if r["repeat"] == repeat}
            print(
                f"repeat {repeat}: wall time reproducible / async = {walls['reproducible'] / walls['async']:.2f}x; "
                f"per trial-epoch {per['reproducible'] / per['async']:.2f}x (the rest is the extra epochs trained)"
            )
    digests = {r["digest"] for r in rows if r["mode"] == "reproducible"}
    if len([r for r in rows if r["mode"] == "reproducible"]) > 1:
        print(f"reproducible runs: {'one digest' if len(digests) == 1 else f'{len(digests)} different digests'}")


if __name__ == "__main__":
    main()
