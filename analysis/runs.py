"""A study's MLflow runs as pandas DataFrames, with params cast once to their real types."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import pandas as pd
from mlflow import MlflowClient

from analysis.record import (
    CURVE_METRICS,
    FINAL_METRICS,
    ROLE_CONFIRM,
    ROLE_TRIAL,
    STUDY_ROLES,
    TAG_CELL,
    TAG_CONFIRMS,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_REGULARISER,
    TAG_ROLE,
    TAG_SEED,
    TAG_SELECTED,
    TAG_TRIAL,
    TAG_TUNE,
    cast_params,
)


class StudyNotFound(LookupError):
    """No such experiment, or no sweep in it; the message says which."""


@dataclass(frozen=True)
class Study:
    experiment_id: str
    experiment: str
    parent_run_id: str
    space: dict
    trials: pd.DataFrame
    kind: str = "sweep"  # or "capacity"
    confirmations: pd.DataFrame | None = None  # full-budget retrainings of trials (rerun --pareto/--top)


def trials_frame(runs) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "trial_id": run.data.tags.get(TAG_TRIAL),
            "run_status": run.info.status,
            "outcome": run.data.tags.get(TAG_OUTCOME),
            "cell": run.data.tags.get(TAG_CELL),
            "regulariser": run.data.tags.get(TAG_REGULARISER),
            "seed_tag": run.data.tags.get(TAG_SEED),
            "confirms": run.data.tags.get(TAG_CONFIRMS),
            "tune": run.data.tags.get(TAG_TUNE),
            "selected": run.data.tags.get(TAG_SELECTED),
            "start_time": run.info.start_time,
        }
        row.update(cast_params(run.data.params))
        row.update({k: run.data.metrics.get(k) for k in FINAL_METRICS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["start_time", "run_id"]).reset_index(drop=True)
    return frame


def find_experiment(client: MlflowClient, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise StudyNotFound(f"experiment {experiment!r} does not exist")
    return exp.experiment_id


def search_runs(client: MlflowClient, experiment_id: str, query: str) -> list:
    """Every run of the experiment matching ``query``; ``mlflow.search_runs`` does the paging.

    It searches the process's tracking URI, which is set to the client's first: a birdplane
    process talks to one tracking store.
    """
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    return mlflow.search_runs([experiment_id], filter_string=query, output_format="list")


def read_json_artifact(client: MlflowClient, run_id: str, name: str) -> dict | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, name, folder)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        with open(path) as f:
            return json.load(f)


def load_study(client: MlflowClient, experiment: str) -> Study:
    """The most recent study (sweep or capacity grid) of ``experiment``: its parent run, search
    space, trial runs and any confirmation runs."""
    experiment_id = find_experiment(client, experiment)
    parents = [r for role in STUDY_ROLES for r in search_runs(client, experiment_id, f"tags.`{TAG_ROLE}` = '{role}'")]
    if not parents:
        raise StudyNotFound(f"experiment {experiment!r} holds no birdplane sweep")
    parent = max(parents, key=lambda r: r.info.start_time)
    children = search_runs(client, experiment_id, f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    trials = [r for r in children if r.data.tags.get(TAG_ROLE) == ROLE_TRIAL]
    confirmations = [r for r in children if r.data.tags.get(TAG_ROLE) == ROLE_CONFIRM]
    space = read_json_artifact(client, parent.info.run_id, "search_space.json") or {}
    return Study(
        experiment_id,
        experiment,
        parent.info.run_id,
        space,
        trials_frame(trials),
        kind=parent.data.tags.get(TAG_ROLE, "sweep"),
        confirmations=trials_frame(confirmations),
    )


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ended with a usable final val_acc (completed, stopped early or diverged)."""
    if trials.empty:
        return trials
    ok = trials[(trials["run_status"] == "FINISHED") & trials["val_acc"].notna()]
    return ok.reset_index(drop=True)


def left_out(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials ``finished`` leaves out, each with the reason: still running, failed or killed,
    or ended without a val_acc."""
    columns = ["run_id", "trial_id", "reason"]
    if trials.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, t in trials.iterrows():
        if t["run_status"] != "FINISHED":
            rows.append({"run_id": t["run_id"], "trial_id": t["trial_id"], "reason": f"run {t['run_status']}"})
        elif pd.isna(t["val_acc"]):
            rows.append({"run_id": t["run_id"], "trial_id": t["trial_id"], "reason": "no val_acc"})
    return pd.DataFrame(rows, columns=columns)


def load_histories(client: MlflowClient, run_ids, metrics=CURVE_METRICS) -> pd.DataFrame:
    """Per-epoch curves: one row per (run_id, epoch), one column per metric."""
    rows: dict[tuple[str, int], dict] = {}
    for run_id in run_ids:
        for key in metrics:
            for m in client.get_metric_history(run_id, key):
                rows.setdefault((run_id, m.step), {"run_id": run_id, "epoch": m.step})[key] = m.value
    frame = pd.DataFrame(list(rows.values()), columns=["run_id", "epoch", *metrics])
    return frame.sort_values(["run_id", "epoch"]).reset_index(drop=True)
