"""A study's MLflow runs as pandas DataFrames, with params cast once to their real types."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import pandas as pd
from mlflow import MlflowClient

ROLE, SWEEP = "birdplane.role", "birdplane.sweep"
INT_PARAMS = ("batch_size", "epochs", "seed", "threads", "depth")
FLOAT_PARAMS = ("lr", "momentum", "weight_decay")
TEXT_PARAMS = ("activation", "loss", "optimizer", "augment", "device")
FINAL_METRICS = ("param_count", "train_loss", "train_acc", "val_loss", "val_acc", "gap", "best_val_acc",
                 "best_epoch", "epochs_run", "test_acc", "test_loss")
CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "gap")


class StudyNotFound(LookupError):
    """No such experiment, or no sweep in it; the message says which."""


@dataclass(frozen=True)
class Study:
    experiment_id: str
    experiment: str
    parent_run_id: str
    space: dict
    trials: pd.DataFrame


def cast_params(params: dict[str, str]) -> dict:
    """MLflow stores params as strings; give each its real type once, here."""
    out: dict = {}
    hidden = params.get("hidden_sizes")
    if hidden:
        out["hidden_sizes"] = tuple(int(h) for h in hidden.split(","))
        out["depth"] = len(out["hidden_sizes"])
        out["max_width"] = max(out["hidden_sizes"])
    for key in INT_PARAMS:
        if key in params and key not in out:
            out[key] = int(float(params[key]))
    for key in FLOAT_PARAMS:
        if key in params:
            out[key] = float(params[key])
    for key in TEXT_PARAMS:
        if key in params:
            out[key] = params[key]
    for key, value in params.items():
        if key.startswith("search.width_"):
            out[key.removeprefix("search.")] = int(value)
    return out


def trials_frame(runs) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "trial_id": run.data.tags.get("ray_trial_id"),
               "run_status": run.info.status, "outcome": run.data.tags.get("outcome"),
               "start_time": run.info.start_time}
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


def search_all(client: MlflowClient, experiment_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def read_json_artifact(client: MlflowClient, run_id: str, name: str) -> dict | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, name, folder)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        with open(path) as f:
            return json.load(f)


def load_study(client: MlflowClient, experiment: str) -> Study:
    """The most recent sweep of ``experiment``: its parent run, search space and trial runs."""
    experiment_id = find_experiment(client, experiment)
    parents = search_all(client, experiment_id, f"tags.`{ROLE}` = 'sweep'")
    if not parents:
        raise StudyNotFound(f"experiment {experiment!r} holds no birdplane sweep")
    parent = max(parents, key=lambda r: r.info.start_time)
    children = search_all(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    space = read_json_artifact(client, parent.info.run_id, "search_space.json") or {}
    return Study(experiment_id, experiment, parent.info.run_id, space, trials_frame(children))


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ended with a usable final val_acc (completed, stopped early or diverged)."""
    if trials.empty:
        return trials
    ok = trials[(trials["run_status"] == "FINISHED") & trials["val_acc"].notna()]
    return ok.reset_index(drop=True)


def load_histories(client: MlflowClient, run_ids, metrics=CURVE_METRICS) -> pd.DataFrame:
    """Per-epoch curves: one row per (run_id, epoch), one column per metric."""
    rows: dict[tuple[str, int], dict] = {}
    for run_id in run_ids:
        for key in metrics:
            for m in client.get_metric_history(run_id, key):
                rows.setdefault((run_id, m.step), {"run_id": run_id, "epoch": m.step})[key] = m.value
    frame = pd.DataFrame(list(rows.values()), columns=["run_id", "epoch", *metrics])
    return frame.sort_values(["run_id", "epoch"]).reset_index(drop=True)
