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

Each best val_acc is the maximum over a sweep's trials, measured on the validation images that chose
it, so it flatters a searcher that fits those images. Each sweep's chosen trial (its highest final
val_acc, as the sweep's summary picks it) is therefore also scored on the official test split, with
its model bundle's weights (the best epoch's, as ``birdplane predict`` uses them). No search decision
saw those images. The test split is touched only for this final number, never to steer a search.
The same pairing is reported on it. ``--rescore FILE --store URI`` adds the test number to the rows
of an earlier ``--out`` file from the MLflow store its sweeps wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from analysis.runs import finished, load_study
from analysis.statistics import mean_interval, paired_comparison
from study.sweep import SweepOptions, prepare, run_sweep
from trainables.bundle import load_bundle
from trainables.config import DataConfig
from trainables.data import load_study_data
from trainables.loop import evaluate, normalise


def best_by_budget(trials, fractions=(0.25, 0.5, 0.75, 1.0)) -> dict[float, float]:
    ordered = trials.sort_values("start_time")
    spent = ordered["epochs_run"].cumsum()
    total = float(spent.iloc[-1])
    out = {}
    for f in fractions:
        within = ordered[spent <= f * total + 1e-9]
        out[f] = float(within["val_acc"].max()) if len(within) else float("nan")
    return out | {"epochs": total}


def test_split(data_root: str):
    """The official test split of the sweeps' classes (uint8 images, labels)."""
    data = load_study_data(DataConfig(root=os.path.abspath(data_root)), include_test=True)
    return data.test, list(data.classes)


def chosen_on_test(client: MlflowClient, name: str, trials, test, classes: list[str]) -> dict:
    """Sweep ``name``'s chosen trial (highest final val_acc among its finished ``trials``) scored on
    the test split with its model bundle's weights: the search's answer on images that no search
    decision saw."""
    best = trials.loc[trials["val_acc"].idxmax()]
    with tempfile.TemporaryDirectory() as folder:
        bundle = load_bundle(client.download_artifacts(best["run_id"], "model.pt", folder))
    if bundle.classes != classes:
        raise ValueError(f"{name}: the chosen trial's classes {bundle.classes} are not the test split's {classes}")
    x = normalise(test.x, bundle.mean, bundle.std, torch.device("cpu"))
    with torch.no_grad():
        test_acc = evaluate(bundle.model, x, test.y, bundle.loss)["acc"]
    return {"chosen": best["run_id"], "chosen_val_acc": float(best["val_acc"]), "test_acc": test_acc}


def one_sweep(search: str, seed: int, a, work: Path, test, classes: list[str]) -> dict:
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
    client = MlflowClient(uri)
    trials = finished(load_study(client, name).trials)
    return best_by_budget(trials) | chosen_on_test(client, name, trials, test, classes)


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
    lines += _score_lines(by, searchers, reference, delta, lambda r: r["best"]["1.0"])
    scored = {s: {k: r for k, r in by[s].items() if "test_acc" in r} for s in searchers}
    if any(scored.values()):
        lines.append("")
        lines.append("the chosen trial's test_acc (official test split, never seen by the search): same columns")
        lines += _score_lines(scored, [s for s in searchers if scored[s]], reference, delta, lambda r: r["test_acc"])
    return "\n".join(lines)


def _score_lines(by: dict, searchers: list[str], reference: str, delta: float, score) -> list[str]:
    lines = []
    for search in searchers:
        values = [score(r) for r in by[search].values()]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        ci = mean_interval(statistics.fmean(values), sd, len(values))
        line = f"{search:>13} {ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}] ({len(values)} sweeps)"
        if search != reference and by.get(reference):
            seeds = sorted(set(by[search]) & set(by[reference]))
            if len(seeds) > 1:
                c = paired_comparison(
                    [score(by[search][k]) for k in seeds], [score(by[reference][k]) for k in seeds], delta
                )
                line += (
                    f"   {c['n']} pairs: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], p {c['p']:.3f}, "
                    f"sd {c['sd']:.4f}, power {c['power']:.2f}, pairs for 80%: {c['pairs_needed']}"
                )
        lines.append(line)
    return lines


def rescore(path: str, store: str, data_root: str) -> int:
    """Add each row's chosen-trial test_acc from the store its sweep wrote; the file is replaced whole.
    Returns how many rows were scored."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    client, (test, classes), done = MlflowClient(store), test_split(data_root), 0
    for row in rows:
        name = f"{row['search']}-{row['seed']}"
        if "test_acc" in row or client.get_experiment_by_name(name) is None:
            continue
        got = chosen_on_test(client, name, finished(load_study(client, name).trials), test, classes)
        if abs(got["chosen_val_acc"] - row["best"]["1.0"]) > 1e-12:
            raise ValueError(
                f"{name} in {store} chose val_acc {got['chosen_val_acc']}, the row says {row['best']['1.0']}"
            )
        row.update(got)
        done += 1
    tmp = Path(path + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return done


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
    p.add_argument("--rescore", default=None, help="add the chosen trials' test_acc to an --out file's rows, and stop")
    p.add_argument("--store", default=None, help="with --rescore: the MLflow tracking URI the sweeps wrote")
    p.add_argument("--data-root", default=os.environ.get("BIRDPLANE_DATA", "../shared/data/cifar10"))
    p.add_argument("--smoke-test", action="store_true")
    a = p.parse_args()
    if a.rescore:
        print(f"{rescore(a.rescore, a.store, a.data_root)} rows scored on the test split")
        return
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
    test, classes = test_split(a.data_root)  # once: every sweep's chosen trial is scored on it
    rows: list[dict] = []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for search in a.searchers.split(","):
            started = time.perf_counter()
            r = one_sweep(search, seed, a, work, test, classes)
            row = {
                "search": search,
                "seed": seed,
                "best": {str(f): v for f, v in r.items() if isinstance(f, float)},
                "epochs": r["epochs"],
                **{k: r[k] for k in ("chosen", "chosen_val_acc", "test_acc")},
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
                f"{search} seed {seed}: {r['epochs']:.0f} epochs, best val_acc {r[1.0]:.4f}, its test_acc "
                f"{r['test_acc']:.4f} ({row['seconds']:.0f} s)",
                flush=True,
            )  # partial results survive a stop
    subset = f"{a.subset} images/class" if a.subset else "all images"
    print(f"\n{a.trials} trials per sweep, ASHA (grace {a.grace}, max {a.epochs} epochs), {subset}, {a.seeds} seeds")
    print(summarise(rows, a.reference, a.delta))


if __name__ == "__main__":
    main()
