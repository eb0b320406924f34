"""Idempotent MLflow operations for studies: find-or-create experiments and runs, log epochs once.

Every write is safe to repeat: a run is found by its tags before one is created, and an epoch
already logged to a run (its step) is not logged again. That is what lets a resumed sweep, a
retried call and `birdplane sync` meet the same runs without duplicating anything.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import urllib.request
from typing import Iterable

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from study.errors import UsageError

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "gap", "epoch_seconds", "samples_per_second")
TAG_SWEEP = "birdplane.sweep"
TAG_ROLE = "birdplane.role"  # "sweep" (parent), "trial" (child), "rerun" (parent), "rerun_seed" (child)
TAG_TRIAL = "ray_trial_id"
TAG_OUTCOME = "outcome"
TAG_PARENT = "mlflow.parentRunId"


def resolve_tracking_uri(uri: str | None) -> str:
    """MLflow's default local store, made absolute: trials and later commands must find the same file."""
    if not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", ".")) or "://" not in uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before anything starts, when a tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except Exception as err:  # urllib raises several types
            raise UsageError(f"tracking server {uri} does not answer ({err})") from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
        if not os.path.isdir(folder):
            raise UsageError(f"tracking URI {uri}: folder {folder} does not exist")
    elif "://" in uri and not uri.startswith(("file://", "databricks")):
        raise UsageError(f"tracking URI {uri}: unsupported scheme (use http(s)://, sqlite:/// or a folder)")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def find_experiment_id(client: MlflowClient, name: str) -> str | None:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    return find_experiment_id(client, name) or client.create_experiment(name)


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=2, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def ensure_run(client: MlflowClient, experiment_id: str, key_tags: dict[str, str], name: str,
               extra_tags: dict[str, str] | None = None, reopen: bool = True) -> tuple[str, bool]:
    """(run_id, created). A run carrying ``key_tags`` is adopted (and, with reopen, marked RUNNING again)."""
    run_id = find_run(client, experiment_id, key_tags)
    if run_id is not None:
        if reopen and client.get_run(run_id).info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id, False
    run = client.create_run(experiment_id, tags={**key_tags, **(extra_tags or {})}, run_name=name)
    return run.info.run_id, True


def last_logged_step(client: MlflowClient, run_id: str, key: str = "val_acc") -> int:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def flat_params(values: dict) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)
    return out


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
    existing = client.get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_epochs(client: MlflowClient, run_id: str, records: Iterable[dict], after_step: int) -> int:
    """Log the per-epoch metrics of records whose epoch > after_step, in one batch; returns the new last step."""
    now = int(time.time() * 1000)
    metrics, last = [], after_step
    for r in records:
        if r["epoch"] <= after_step:
            continue
        metrics += [Metric(k, float(r[k]), now, int(r["epoch"])) for k in EPOCH_METRICS if k in r]
        last = max(last, int(r["epoch"]))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    return last


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_json_artifact(client: MlflowClient, run_id: str, name: str, payload: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
        client.log_artifact(run_id, path)


def finish_run(client: MlflowClient, run_id: str, ok: bool = True, status: str | None = None) -> None:
    client.set_terminated(run_id, status=status or (RunStatus.to_string(RunStatus.FINISHED) if ok else "FAILED"))


def best_of(history: list[dict]) -> dict:
    finite = [r for r in history if isinstance(r.get("val_acc"), float) and math.isfinite(r["val_acc"])]
    if not finite:
        return {}
    best = max(finite, key=lambda r: (r["val_acc"], -r["epoch"]))
    return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"]}
