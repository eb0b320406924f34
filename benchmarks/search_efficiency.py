"""Searchers against each other on one space, equal budgets, several seeds: best val_acc per compute.

    python benchmarks/search_efficiency.py [--searchers tpe,random] [--seeds 2] [--trials 12] [--epochs 4]

Searchers: Optuna's samplers through OptunaSearch (tpe, gp, qmc, optuna-random) and Ray's own
random search (random). Each (searcher, seed) is a real `birdplane sweep` (same space, same ASHA,
same number of trials)
logged to a throw-away MLflow store. Compute spent is counted in training epochs (every trial's
epochs run, in start order); the table prints the best val_acc found once 25/50/75/100% of the
epochs the sweep used were spent, as mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from analysis.runs import finished, load_study
from study.sweep import SweepOptions, prepare, run_sweep
from trainables.config import DataConfig


def best_by_budget(trials, fractions=(0.25, 0.5, 0.75, 1.0)) -> dict[float, float]:
    ordered = trials.sort_values("start_time")
    spent = ordered["epochs_run"].cumsum()
    total = float(spent.iloc[-1])
    out = {}
    for f in fractions:
        within = ordered[spent <= f * total + 1e-9]
        out[f] = float(within["val_acc"].max()) if len(within) else float("nan")
    return out | {"epochs": total}


def one_sweep(search: str, seed: int, a, work: Path) -> dict:
    import ray

    name = f"{search}-{seed}"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    sampler = {"optuna-random": "random"}.get(search, search)
    opts = SweepOptions(
        space=a.space,
        num_samples=a.trials,
        epochs=a.epochs,
        grace_epochs=a.grace,
        seed=seed,
        search="random" if search == "random" else "tpe",
        sampler="tpe" if search == "random" else sampler,
        # Every searcher under the same (asynchronous) ASHA: Ray's random search cannot batch, so the
        # reproducible mode would give it another scheduler than the others.
        reproducible=False,
        name=name,
        storage_path=str(work / "ray"),
        tracking_uri=uri,
    )
    data = DataConfig(root=os.path.abspath(a.data_root), subset=a.subset)
    run_sweep(prepare(opts, data))
    ray.shutdown()
    trials = finished(load_study(MlflowClient(uri), name).trials)
    return best_by_budget(trials)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searchers", default="tpe,random", help="tpe, gp, qmc, optuna-random (Optuna) and random (Ray)")
    p.add_argument("--grace", type=int, default=1, help="ASHA's grace epochs")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--subset", type=int, default=1500, help="training images per class")
    p.add_argument("--space", default=None)
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA", "../shared/data/cifar10"))
    p.add_argument("--smoke-test", action="store_true")
    a = p.parse_args()
    if a.smoke_test:
        a.seeds, a.trials, a.epochs, a.subset = 1, 3, 2, 50
    work = Path(tempfile.mkdtemp(prefix="birdplane-search-"))
    results: dict[str, list[dict]] = {name: [] for name in a.searchers.split(",")}
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for search in results:
            started = time.perf_counter()
            results[search].append(one_sweep(search, seed, a, work))
            r = results[search][-1]
            print(
                f"{search} seed {seed}: {r['epochs']:.0f} epochs, best val_acc {r[1.0]:.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )  # partial results survive a stop
    print(
        f"\n{a.trials} trials per sweep, ASHA (grace {a.grace}, max {a.epochs} epochs), {a.subset} images/class, "
        f"{a.seeds} seeds"
    )
    print(f"{'searcher':>13} {'epochs used':>12}  best val_acc after 25% / 50% / 75% / 100% of them")
    for search, runs in results.items():
        cells = []
        for f in (0.25, 0.5, 0.75, 1.0):
            values = [r[f] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f}±{sd:.4f}")
        used = statistics.fmean(r["epochs"] for r in runs)
        print(f"{search:>13} {used:>12.1f}  " + " / ".join(cells))


if __name__ == "__main__":
    main()
