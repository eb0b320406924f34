"""Writing birdplane's runs to MLflow: idempotent writers, with the names of analysis/record.py.

``analysis/record.py`` holds the contract (tag and metric names, parameter types) that
``analysis/`` reads runs back with; the writes live on this floor, most of them here.

How MLflow stays consistent with Ray (the path is spread over a few files; this is the map):
  * Ray's experiment folder is the source of truth: per-epoch results, checkpoints, trial states,
    and birdplane's own manifest (``study/manifest.py``) naming the tracking URI and parent run.
  * Every write here is idempotent. A run is found by its key tags before one is created
    (``ensure_run``), and an epoch already logged to a run (its step) is not logged again
    (``log_epochs``). Repeating any call, in any order of crashes, cannot duplicate anything.
  * During a sweep, ``study/tracking.py``'s Tune callback turns trial events into these calls and
    queues them in an ordered ``Outbox`` on a background thread: a failed call (the server went
    away) is retried with back-off, never dropped, and Tune's event loop never waits on MLflow.
  * ``study/sync.py`` replays Ray's results through the same calls: after an outage
    (``birdplane sync``) and at the start of every ``--resume``. Runs of unfinished trials are
    adopted by the resumed trial; runs of trials Ray's snapshot never knew are retired as orphans.

synchronous=True everywhere: a user's MLFLOW_ENABLE_ASYNC_LOGGING=true would otherwise make
MLflow queue a write and drop it on failure, behind the back of the caller's retries.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from analysis.record import (
    CONFIG_ARTIFACT,
    EPOCH_METRICS,
    MODEL_ARTIFACT,
    ROLE_TRIAL,
    SEED_METRICS,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_ROLE,
    best_of,
    flat_params,
    headline,
)
from study.checkout import checkout
from trainables.bundle import save_bundle

# MLflow 3.17's UI opens an experiment on its GenAI pages unless the experiment says it holds
# model training (the UI reads this tag; "custom_model_development" is its model-training kind).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


@contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """One process at a time may open a sqlite store: the first to open a new store creates its
    tables (MLflow's alembic migrations), and a second migrating the same file at once crashes. The
    lock is ``flock`` on the store's folder, so no lock file is left beside the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    fd = os.open(os.path.dirname(uri[len("sqlite:///") :]) or ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri``; a new sqlite store is created by one process at a time."""
    with store_creation_lock(uri):
        return MlflowClient(uri)


def transient(err: BaseException) -> bool:
    """A transport failure (a reset or refused connection, a server still starting), not an answer:
    MLflow raises a plain MlflowException for those and a RestException for what the server said."""
    from mlflow.exceptions import MlflowException, RestException

    return isinstance(err, MlflowException) and not isinstance(err, RestException) and "failed with" in str(err)


def retry_transient(call, attempts: int = 6, wait_s: float = 2.0):
    """``call()``, tried again after a transient transport failure, up to ``attempts`` times ``wait_s``
    apart. For the few calls a study makes before its outbox (which retries everything) exists:
    MLflow's own HTTP retries are capped at 0 in the driver (study.preflight.bound_mlflow_http), so a
    single reset connection at the start would otherwise end a study that the preflight had
    already found its server for."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if not transient(err) or attempt == attempts - 1:
                raise
            time.sleep(wait_s)
    return None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    if TAG_EXPERIMENT_KIND not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def log_headline(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, float]:
    """The study's headline (analysis.record.headline of its trials' runs) on its parent run."""
    mlflow.set_tracking_uri(client.tracking_uri)  # search_runs pages through every child
    runs = mlflow.search_runs(
        [experiment_id],
        output_format="list",
        filter_string=(f"tags.`{TAG_PARENT}` = {_quote(parent_run_id)} and tags.`{TAG_ROLE}` = {_quote(ROLE_TRIAL)}"),
    )
    values = headline(runs)
    log_metrics(client, parent_run_id, values, step=0)
    return values


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source and Version columns) for this checkout."""
    tags = {"mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # no user name in a container
        pass
    found = checkout()
    if found.commit:
        tags["mlflow.source.git.commit"] = found.commit
        if found.branch:
            tags["mlflow.source.git.branch"] = found.branch
        if found.remote:
            tags["mlflow.source.git.repoURL"] = found.remote
    return {**tags, "mlflow.source.name": entry_point}


def log_dataset(client: MlflowClient, run_id: str, data: dict, context: str = "training") -> None:
    """The run's data set as an MLflow dataset input (the UI's Dataset column): its root, classes,
    split and subset, with a digest of them (the same data gives the same digest)."""
    described = {k: data.get(k) for k in ("root", "classes", "val_split", "val_fraction", "split_seed", "subset")}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = "cifar10-" + "-".join(data.get("classes") or ()) if data.get("classes") else "cifar10"
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": str(data.get("root"))}),
        profile=json.dumps({k: v for k, v in described.items() if k != "root"}, default=str),
    )
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id], filter_string=query, max_results=2, order_by=["attributes.start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def ensure_run(
    client: MlflowClient,
    experiment_id: str,
    key_tags: dict[str, str],
    name: str,
    extra_tags: dict[str, str] | None = None,
    reopen: bool = True,
) -> tuple[str, bool]:
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


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
    existing = client.get_run(run_id).data.params
    items = [p for p in items if p.key not in existing]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    metrics = [
        Metric(k, float(v), now, step)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)


def log_epochs(client: MlflowClient, run_id: str, records: Iterable[dict], after_step: int) -> int:
    """Log the per-epoch metrics of records whose epoch > after_step, in one batch; returns the new last step."""
    now = int(time.time() * 1000)
    metrics, last = [], after_step
    for r in records:
        if r["epoch"] <= after_step:
            continue
        metrics += [Metric(k, float(r[k]), now, int(r["epoch"])) for k in (*EPOCH_METRICS, *SEED_METRICS) if k in r]
        last = max(last, int(r["epoch"]))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)
    return last


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def log_dict(client: MlflowClient, run_id: str, payload: dict, name: str) -> None:
    """A JSON artifact (MLflow's own serialisation); values it cannot encode become strings first."""
    client.log_dict(run_id, json.loads(json.dumps(payload, default=str)), name)


def finish_run(client: MlflowClient, run_id: str, ok: bool = True, status: str | None = None) -> None:
    client.set_terminated(run_id, status=status or ("FINISHED" if ok else "FAILED"))


def write_finished_run(
    client: MlflowClient,
    run_id: str,
    *,
    history: list[dict],
    after_step: int,
    param_count: int | None,
    outcome: str,
    resolved_config: dict,
    model: dict | None,
    extra_metrics: dict | None = None,
    ok: bool = True,
) -> int:
    """Close one run the same way wherever it was trained (a sweep's trial, a rerun's seed).

    Logs the epochs not yet logged (those after ``after_step`` and any gap before it: a trial
    resumed from a checkpoint newer than the last epoch MLflow got, as when the checkpoint its
    stale snapshot named was deleted, skips the epochs in between), the summary metrics (best
    epoch, epochs run, param_count and ``extra_metrics``), the outcome tag, config.json and,
    given ``model`` (save_bundle's arguments: trainables.bundle.bundle_args), model.pt; then ends
    the run. Returns the last
    logged step.
    """
    logged = {m.step for m in client.get_metric_history(run_id, "val_acc")}
    log_epochs(client, run_id, [r for r in history if r["epoch"] <= after_step and r["epoch"] not in logged], -1)
    last_step = log_epochs(client, run_id, history, after_step)
    summary = best_of(history)
    if param_count is not None:
        summary["param_count"] = param_count
    summary["epochs_run"] = history[-1]["epoch"] if history else 0
    summary.update(extra_metrics or {})
    log_metrics(client, run_id, summary, step=summary["epochs_run"])
    set_tags(client, run_id, {TAG_OUTCOME: outcome})
    log_dict(client, run_id, resolved_config, CONFIG_ARTIFACT)
    if model is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, MODEL_ARTIFACT)
            save_bundle(path, **model)
            client.log_artifact(run_id, path)
    finish_run(client, run_id, ok=ok)
    return last_step
