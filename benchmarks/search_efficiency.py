"""Searchers against each other on one space, equal budgets, several seeds: best val_acc per compute.

    python benchmarks/search_efficiency.py [--searchers tpe,random] [--seeds 2] [--trials 12] [--epochs 4]
    python benchmarks/search_efficiency.py --default-sweep --budget-share 0.25 \
        --searchers tpe,optuna-random --seeds 10 --out results.jsonl     # the default sweep's space and trials

Searchers: Optuna's samplers through OptunaSearch (tpe, gp, qmc, optuna-random) and Ray's own
random search (random). Each (searcher, seed) is a real `birdplane sweep` (same space, same ASHA,
same number of trials) logged to a throw-away MLflow store. Compute spent is counted in training
epochs (every trial's epochs run, in start order); the table prints the best val_acc found once
25/50/75/100% of the epochs the sweep used were spent, as mean +- std over seeds.

With several seeds, each searcher's best val_acc also gets its mean and 95% interval over seeds,
and a paired comparison against ``--reference`` on the same seeds (analysis.statistics.
paired_comparison): the mean difference with its interval, the paired t test's p, the sd of the
differences, the power those pairs have to detect a difference of ``--delta`` and the pairs 80%
power needs at the measured sd. ``--out`` appends each sweep's result as a JSON line as soon as it
ends (a stopped run keeps what it finished); ``--summarise FILE`` prints the tables from such a file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from analysis.runs import finished, load_study
from analysis.statistics import mean_interval, paired_comparison
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


def summarise(rows: list[dict], reference: str, delta: float) -> str:
    """The tables of a comparison from its per-sweep rows ({search, seed, best: {fraction: val_acc}, epochs})."""
    searchers = list(dict.fromkeys(r["search"] for r in rows))
    by = {s: {r["seed"]: r for r in rows if r["search"] == s} for s in searchers}
    lines = [f"{'searcher':>13} {'seeds':>5} {'epochs used':>12}  best val_acc after 25% / 50% / 75% / 100% of them"]
    for search in searchers:
        runs = list(by[search].values())
        cells = []
        for f in ("0.25", "0.5", "0.75", "1.0"):
            values = [r["best"][f] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f}±{sd:.4f}")
        used = statistics.fmean(r["epochs"] for r in runs)
        lines.append(f"{search:>13} {len(runs):>5} {used:>12.1f}  " + " / ".join(cells))
    lines.append("")
    lines.append(
        f"best val_acc at the end: mean [95% interval over seeds]; paired with {reference} on the same seeds: "
        f"difference [95% interval], p (paired t), sd of the differences, power for {delta}, pairs for 80%"
    )
    for search in searchers:
        values = [r["best"]["1.0"] for r in by[search].values()]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        ci = mean_interval(statistics.fmean(values), sd, len(values))
        line = f"{search:>13} {ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"
        if search != reference and reference in by:
            seeds = sorted(set(by[search]) & set(by[reference]))
            c = paired_comparison(
                [by[search][k]["best"]["1.0"] for k in seeds], [by[reference][k]["best"]["1.0"] for k in seeds], delta
            )
            line += (
                f"   {c['n']} pairs: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], p {c['p']:.3f}, "
                f"sd {c['sd']:.4f}, power {c['power']:.2f}, pairs for 80%: {c['pairs_needed']}"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searchers", default="tpe,random", help="tpe, gp, qmc, optuna-random (Optuna) and random (Ray)")
    p.add_argument("--grace", type=int, default=1, help="ASHA's grace epochs (--default-sweep: its own)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--subset", type=int, default=1500, help="training images per class")
    p.add_argument("--space", default=None)
    p.add_argument(
        "--default-sweep",
        action="store_true",
        help="the default sweep's space, trials (32), grace and whole data; epochs = the space's x --budget-share",
    )
    p.add_argument("--budget-share", type=float, default=1.0, help="with --default-sweep: the share of its epochs")
    p.add_argument("--reference", default="random", help="the searcher the others are paired with")
    p.add_argument("--delta", type=float, default=0.01, help="the difference whose detection power is given")
    p.add_argument("--out", default=None, help="append each sweep's result here as a JSON line")
    p.add_argument("--summarise", default=None, help="print the tables of an --out file and stop")
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA", "../shared/data/cifar10"))
    p.add_argument("--smoke-test", action="store_true")
    a = p.parse_args()
    if a.summarise:
        rows = [json.loads(line) for line in Path(a.summarise).read_text().splitlines() if line.strip()]
        print(summarise(rows, a.reference, a.delta))
        return
    if a.default_sweep:
        from study.space import load_space
        from study.sweep import DEFAULT_GRACE, SweepOptions

        space_epochs = int(load_space(None).to_dict()["epochs"])
        a.space, a.trials, a.subset = None, SweepOptions.num_samples, 0
        a.epochs = max(1, round(space_epochs * a.budget_share))
        a.grace = min(DEFAULT_GRACE, a.epochs)
    if a.smoke_test:
        a.seeds, a.trials, a.epochs, a.subset, a.grace = 1, 3, 2, 50, 1
    work = Path(tempfile.mkdtemp(prefix="birdplane-search-"))
    rows: list[dict] = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for search in a.searchers.split(","):
            started = time.perf_counter()
            r = one_sweep(search, seed, a, work)
            row = {
                "search": search,
                "seed": seed,
                "best": {str(f): v for f, v in r.items() if f != "epochs"},
                "epochs": r["epochs"],
                "seconds": round(time.perf_counter() - started, 1),
                "trials": a.trials,
                "max_epochs": a.epochs,
                "grace": a.grace,
                "subset": a.subset,
            }
            rows.append(row)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            print(
                f"{search} seed {seed}: {r['epochs']:.0f} epochs, best val_acc {r[1.0]:.4f} ({row['seconds']:.0f} s)",
                flush=True,
            )  # partial results survive a stop
    subset = f"{a.subset} images/class" if a.subset else "all images"
    print(f"\n{a.trials} trials per sweep, ASHA (grace {a.grace}, max {a.epochs} epochs), {subset}, {a.seeds} seeds")
    print(summarise(rows, a.reference, a.delta))


if __name__ == "__main__":
    main()
