"""The per-step and per-FLOP cost behind ``birdplane capacity --check``'s estimate (study/capacity.py).

Trains a few widths for a couple of epochs on the real airplane/bird data, one thread, and fits
seconds per epoch = steps x a + FLOPs / rate by least squares. The machine is shared: run it when
it is quiet and compare the fitted constants with study/capacity.py's CPU_STEP_SECONDS and CPU_FLOPS.

    python3 benchmarks/capacity_cost.py [--epochs 2] [--widths 1,8,64,512,2048]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from study.capacity import CPU_CACHE_PARAMS, run_flops
from trainables.config import DataConfig, TrainConfig
from trainables.data import load_study_data
from trainables.loop import fit
from trainables.model import count_params


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--widths", default="1,8,64,512,2048")
    p.add_argument("--depth", type=int, default=1)
    args = p.parse_args()
    data = load_study_data(DataConfig(root=os.environ.get("BIRDPLANE_DATA", "./data")))
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        hidden = [width] * args.depth
        config = TrainConfig(hidden_sizes=hidden, epochs=args.epochs, threads=1, device="cpu")
        result = fit(config, data)
        seconds = float(np.median([r["epoch_seconds"] for r in result.history]))
        steps = -(-len(data.train) // config.batch_size)
        flops = run_flops(hidden, len(data.train), len(data.val))
        rows.append({"hidden": hidden, "epoch_seconds": seconds, "steps": steps, "flops": flops})
        print(json.dumps(rows[-1]), flush=True)
    # Relative errors (rows weighted by 1/seconds): the smallest nets set the step cost, the largest the rate.
    small = [r for r in rows if count_params(3072, r["hidden"], 2) <= CPU_CACHE_PARAMS]
    a = np.array([[r["steps"], r["flops"]] for r in small])
    b = np.array([r["epoch_seconds"] for r in small])
    (step_s, per_flop), *_ = np.linalg.lstsq(a / b[:, None], np.ones(len(b)), rcond=None)
    large = [r["flops"] / (r["epoch_seconds"] - step_s * r["steps"]) for r in rows if r not in small]
    print(
        json.dumps(
            {
                "step_seconds": step_s,
                "flops_per_second": 1 / per_flop if per_flop > 0 else None,
                "flops_per_second_large": float(np.median(large)) if large else None,
            }
        )
    )


if __name__ == "__main__":
    main()
