"""What Ray Tune + Optuna + MLflow cost: the same configs as a sweep and as plain fit() calls, in ONE run.

    python benchmarks/sweep_overhead.py [--configs 6] [--epochs 5] [--concurrency 2] [--data-root DIR]

(a) `run_sweep` with Optuna (the configs enqueued as points_to_evaluate), ASHA off, MLflow logging
to a local store; (b) the same TrainConfigs through `trainables.fit`, back to back in a pool of
`--concurrency` worker processes (one process at --concurrency 1), each with the same threads as a
trial. Prints the tuning wall-time ratio (goal <= 1.05 on long enough trials) and the cold start:
launch to the first reported result (goal <= 15 s).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml
from ray import tune

from study.sweep import SweepOptions, prepare, run_sweep
from trainables.config import DataConfig, TrainConfig

LRS = [0.01, 0.02, 0.005, 0.03, 0.015, 0.007, 0.025, 0.012]


class FirstResult(tune.Callback):
    def __init__(self):
        self.first_result = None
        self.first_start = None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.first_start = self.first_start or time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.first_result = self.first_result or time.perf_counter()


_DATA = None


def _load(data_cfg: dict) -> None:
    """Pool initializer: each worker loads the data once, before the clock starts."""
    global _DATA
    from trainables.data import load_study_data

    _DATA = load_study_data(DataConfig.from_dict(data_cfg))


def _ready(_) -> bool:
    return _DATA is not None


def _fit(config: dict) -> float:
    from trainables.loop import fit

    return fit(TrainConfig.from_dict(config), _DATA).summary()["val_acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA", "../shared/data/cifar10"))
    p.add_argument("--subset", type=int, default=0, help="training images per class (0: all)")
    p.add_argument("--smoke-test", action="store_true")
    a = p.parse_args()
    if a.smoke_test:
        a.configs, a.epochs, a.subset, a.hidden = 2, 1, 100, 64
    lrs = LRS[: a.configs]
    work = Path(tempfile.mkdtemp(prefix="birdplane-overhead-"))
    space = {
        "depth": 1,
        "width": a.hidden,
        "batch_size": 64,
        "loss": "nll",
        "activation": "tanh",
        "optimizer": "sgd",
        "momentum": 0.0,
        "epochs": a.epochs,
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
    }
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    data_cfg = DataConfig(root=os.path.abspath(a.data_root), subset=a.subset)
    opts = SweepOptions(
        space=str(work / "space.yaml"),
        num_samples=len(lrs),
        scheduler="none",
        max_concurrent=a.concurrency,
        name="overhead",
        storage_path=str(work / "ray"),
        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
    )
    launched = time.perf_counter()
    prep = prepare(opts, data_cfg)
    probe = FirstResult()
    summary = run_sweep(prep, points_to_evaluate=[{"lr": lr} for lr in lrs], extra_callbacks=[probe])
    ended = time.perf_counter()
    configs = [
        TrainConfig(
            hidden_sizes=(a.hidden,),
            lr=t["config"]["lr"],
            epochs=a.epochs,
            threads=1,
            seed=t["config"]["seed"],
            device="cpu",
        ).to_dict()
        for t in summary.trials
    ]
    import ray

    ray.shutdown()  # the baseline gets the machine to itself
    # spawn, not fork: this process has run Ray's threads
    with ProcessPoolExecutor(
        max_workers=a.concurrency,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_load,
        initargs=(data_cfg.to_dict(),),
    ) as pool:
        assert all(pool.map(_ready, range(a.concurrency * 4)))  # every worker up, data loaded
        started = time.perf_counter()
        list(pool.map(_fit, configs))
        baseline = time.perf_counter() - started
    tuning = ended - probe.first_start
    print(f"{len(lrs)} configs x {a.epochs} epochs, [{a.hidden}], concurrency {a.concurrency}")
    print(
        f"sweep (Ray Tune + Optuna + MLflow): {tuning:.1f} s from the first trial start, "
        f"{ended - launched:.1f} s from launch"
    )
    print(f"plain fit() back to back:           {baseline:.1f} s")
    print(
        f"wall-time ratio sweep/plain: {tuning / baseline:.3f} (goal <= 1.05); "
        f"from launch: {(ended - launched) / baseline:.3f}"
    )
    print(f"cold start, launch to first reported result: {probe.first_result - launched:.1f} s (goal <= 15 s)")


if __name__ == "__main__":
    main()
