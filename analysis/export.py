"""A study as two tidy tables for a notebook: one row per trial, one row per (trial, epoch).

Trials: every parameter (typed as TrainConfig types them), the outcome, the study's epoch budget
and whether the trial reached it, the seed, the Ray node it ran on, the MLflow run id, the Ray
trial id and the final and best metrics. Curves: every per-epoch metric of every trial (and, in a
sweep of several seeds a trial, the seeds' sd of val_acc).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from analysis.capacity import epochs_of
from analysis.record import EPOCH_METRICS, SEED_METRICS, TAG_NODE
from analysis.runs import load_histories, load_study
from trainables.files import atomic_paths

FORMATS = (".csv", ".parquet")


def curves_path(out: Path) -> Path:
    """FILE.csv -> FILE.curves.csv (FILE.parquet -> FILE.curves.parquet)."""
    return out.with_name(out.stem + ".curves" + out.suffix)


def study_tables(client: MlflowClient, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of the experiment's latest study; StudyNotFound when there is none."""
    study = load_study(client, experiment)
    trials = study.trials.copy()
    budget = epochs_of(study.space)
    if trials.empty:
        return trials, pd.DataFrame(columns=["run_id", "trial_id", "epoch", *EPOCH_METRICS])
    trials.insert(0, "experiment", experiment)
    trials.insert(1, "study_run_id", study.parent_run_id)
    trials.insert(2, "kind", study.kind)
    if "epochs" not in trials:  # each trial's epochs param is its budget; else the study's
        trials["epochs"] = budget
    trials["ran_all_epochs"] = trials["epochs_run"].ge(trials["epochs"]) if trials["epochs"].notna().all() else pd.NA
    trials["node"] = trials["run_id"].map(_nodes(client, trials["run_id"]))
    if "hidden_sizes" in trials:  # a list per row: kept as text, a parquet- and csv-safe type
        trials["hidden_sizes"] = trials["hidden_sizes"].map(
            lambda v: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        )
    trials = trials.drop(columns=["seed_tag"], errors="ignore")
    curves = load_histories(client, trials["run_id"], (*EPOCH_METRICS, *SEED_METRICS))
    curves = curves.merge(trials[["run_id", "trial_id"]], on="run_id", how="left")
    seeded = [m for m in SEED_METRICS if curves[m].notna().any()]  # a sweep of several seeds a trial: their sd
    curves = curves[["run_id", "trial_id", "epoch", *EPOCH_METRICS, *seeded]]
    return trials.reset_index(drop=True), curves


# What differs between two runs of one search however reproducible it is: ids, clocks, hosts.
NOT_THE_SEARCH = ("experiment", "study_run_id", "run_id", "trial_id", "node")
CLOCKS = ("time", "seconds", "duration", "per_second")


def _search_columns(frame: pd.DataFrame) -> list[str]:
    return sorted(c for c in frame.columns if c not in NOT_THE_SEARCH and not any(w in c for w in CLOCKS))


def search_tables(client: MlflowClient, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a search did, without what only timing changes (ids, clocks, nodes): its trials (configs,
    epochs run, final and best metrics) ordered by seed, and their per-epoch metrics."""
    trials, curves = study_tables(client, experiment)
    table = trials[_search_columns(trials)].sort_values("seed").reset_index(drop=True)
    per_epoch = curves.merge(trials[["run_id", "seed"]], on="run_id")
    per_epoch = per_epoch[_search_columns(per_epoch)].sort_values(["seed", "epoch"]).reset_index(drop=True)
    return table, per_epoch


def search_digest(table: pd.DataFrame, per_epoch: pd.DataFrame) -> str:
    """A sha256 of ``search_tables``: equal for two runs that made the same search."""
    return hashlib.sha256((table.to_csv(index=False) + per_epoch.to_csv(index=False)).encode()).hexdigest()


def _nodes(client: MlflowClient, run_ids) -> dict[str, str | None]:
    return {r: client.get_run(r).data.tags.get(TAG_NODE) for r in run_ids}


def write_tables(trials: pd.DataFrame, curves: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """Both files, or neither (trainables.files.atomic_paths: each written to a temporary file beside
    its target, renamed into place only when both were written), with the user's umask's mode."""
    second = curves_path(out)
    with atomic_paths([out, second]) as (first_tmp, second_tmp):
        for frame, tmp in ((trials, first_tmp), (curves, second_tmp)):
            if out.suffix == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
    return out, second
