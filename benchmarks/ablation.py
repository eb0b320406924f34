"""Which levers mattered: a one-at-a-time ablation of a trial's recipe, on the same split and seeds.

    python benchmarks/ablation.py --experiment study1 [--run RUN_ID] [--seeds 2] [--tracking-uri URI]

Takes the best trial of the study (or --run), then retrains its recipe as it is and with one lever
removed at a time: augmentation (none), weight decay (0), the schedule (constant), dropout (0).
Every variant runs the study's full epoch budget with each seed, two trainings at a time (one CPU
thread each); the table prints best and final val_acc, mean ± sd over seeds, and the change
against the full recipe. Validation only: the test split is not touched.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor

LEVERS = {
    "augmentation": {"augment": "none"},
    "weight decay": {"weight_decay": 0.0},
    "schedule": {"schedule": "constant"},
    "dropout": {"dropout": 0.0},
}


def train(args: tuple[dict, dict]) -> dict:
    import torch

    from trainables.config import DataConfig, TrainConfig
    from trainables.data import load_study_data
    from trainables.loop import fit

    config, data = args
    torch.set_num_threads(1)
    result = fit(TrainConfig.from_dict(config), load_study_data(DataConfig.from_dict(data)))
    return {"best": max(r["val_acc"] for r in result.history), "final": result.history[-1]["val_acc"]}


def main() -> None:
    from analysis.capacity import epochs_of
    from study.reporting import open_study
    from study.rerun import pick_trial, trial_configs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--run", default=None, help="the trial's run id (default: the study's best trial)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="default: the study's budget")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    client, study, trials, _ = open_study(a.tracking_uri, a.experiment)
    trial = trials[trials["run_id"] == a.run].iloc[0] if a.run else pick_trial(trials, 1, "val_acc")
    config, data = trial_configs(client, trial)
    epochs = a.epochs or epochs_of(study.space) or config.epochs
    base = config.replace(epochs=epochs, threads=1, device="cpu")
    variants = {"full recipe": {}} | {
        f"without {name}": change
        for name, change in LEVERS.items()
        if any(getattr(base, k) != v for k, v in change.items())
    }
    jobs = [(name, seed) for name in variants for seed in range(base.seed, base.seed + a.seeds)]
    with ProcessPoolExecutor(a.workers) as pool:
        results = list(
            pool.map(train, [(base.replace(**variants[n], seed=s).to_dict(), data.to_dict()) for n, s in jobs])
        )
    print(
        f"trial {trial['trial_id']} ({trial['run_id']}): {base.hidden_sizes} {base.activation} {base.loss} "
        f"{base.optimizer} lr {base.lr:.2g} wd {base.weight_decay:.2g} dropout {base.dropout:.2g} "
        f"{base.augment} {base.schedule}; {epochs} epochs, {a.seeds} seeds, val = holdout"
    )
    table = {}
    for (name, _), r in zip(jobs, results, strict=False):
        table.setdefault(name, []).append(r)
    full = statistics.fmean(r["best"] for r in table["full recipe"])
    print(f"{'variant':>24} {'best val_acc':>16} {'final val_acc':>16} {'best vs full':>13}")
    for name, rs in table.items():

        def ms(k, rs=rs):
            sd = statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0
            return f"{statistics.fmean(r[k] for r in rs):.3f} ± {sd:.3f}"

        print(f"{name:>24} {ms('best'):>16} {ms('final'):>16} {statistics.fmean(r['best'] for r in rs) - full:>+13.3f}")


if __name__ == "__main__":
    main()
