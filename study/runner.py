"""The study runner: what every kind of study (a TPE sweep, a capacity grid) shares.

A design (``study.sweep``, ``study.capacity``) validates its own flags into a ``Prepared`` study
and supplies its tuner pieces through the ``Design`` protocol; ``run_study`` starts or joins Ray,
opens the MLflow parent run, writes birdplane's manifest, builds (or restores) the Tuner, runs it
and returns a ``StudySummary``.

Ray, MLflow and Optuna (and pandas) are imported inside the functions that use them: the command
line imports this module to build its parser, and `train`, `predict` and `--help` must run (and
start quickly) without them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from study import manifest, preflight
from study.checkout import git_commit
from study.errors import StorageFull, UsageError
from trainables.checkpoint import DEFAULT_CHECKPOINT_EVERY
from trainables.config import DataConfig
from trainables.data import load_study_data

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SMOKE_SUBSET = 100  # training images per class in a --smoke study
# Trials sharing one GPU when --gpus-per-trial is not given (the measurements behind the choice:
# docs/benchmarks.md).
DEFAULT_GPU_SHARE = 1 / 16
# Checkpoints Ray keeps per running trial: the newest, and the one before it, which a resume falls
# back to when the newest is truncated (trainables.tune_adapter.read_checkpoint). Ray snapshots its
# experiment state whenever a trial has made this many checkpoints since the last snapshot. Measured
# (docs/operations.md): the peak Ray folder of wide nets falls from 336 MB (4) to 252 MB (2). A SIGKILL
# can leave Ray's snapshot naming a checkpoint this deleted; study.disk.deleted_restore_points mends
# that. One that cut Ray's upload of a snapshot short left its experiment state and its searcher's of
# two snapshots (a resume waited forever); study.disk.intact_snapshot restores one snapshot's.
NUM_TO_KEEP = 2


@dataclass(frozen=True)
class StudyOptions:
    """The flags every kind of study shares; a design's options extend these."""

    name: str = ""
    storage_path: str | None = None  # Tune results and checkpoints (None: ~/ray_results)
    tracking_uri: str | None = None
    experiment: str | None = None  # None: the study's name
    resume: bool = False
    address: str | None = None  # Ray cluster (None: a fresh local instance)
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None  # None: DEFAULT_GPU_SHARE when the cluster has GPUs, else 0
    max_concurrent: int | None = None  # None: as many as the resources hold
    seed: int = 0
    smoke: bool = False
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # epochs between a trial's checkpoints
    # A dead node's cached actor can fail a trial twice at once (seen in the node-crash test).
    max_failures: int = 3


OptionsT = TypeVar("OptionsT", bound=StudyOptions)
S = TypeVar("S")


@dataclass(frozen=True)
class Prepared(Generic[OptionsT, S]):
    """A study that passed every check that needs neither Ray nor training.

    ``space`` is what the study explores (a sweep's SearchSpace, a capacity study's CapacitySpec);
    its ``to_dict()`` is recorded as search_space.json and in the manifest.
    """

    options: OptionsT
    space: S
    data: DataConfig
    tracking_uri: str
    experiment: str
    storage_path: str
    epochs: int  # every trial's epoch budget
    study_name: str  # the study as MLflow and Optuna know it (an extension's trials join the sweep it extends)
    metric: str = "val_acc"  # the summary's best trial: the highest val_acc or the lowest val_loss
    optuna_storage: str | None = None  # where an Optuna study is persisted (None: nowhere)
    # On --resume: trials whose MLflow runs an earlier driver closed and whose every epoch is in
    # Ray's results, though Ray's last snapshot has them unfinished: they are not trained again.
    finished: dict[str, dict] = field(default_factory=dict)  # trial id -> its last result

    @property
    def path(self) -> str:
        """Ray's experiment folder of this study (local or a URI)."""
        return manifest.experiment_path(self.storage_path, self.options.name)

    @property
    def mode(self) -> str:
        return "max" if self.metric == "val_acc" else "min"


Resolve = Callable[[dict], dict]


@runtime_checkable
class Design(Protocol):
    """What a kind of study supplies to ``run_study``."""

    kind: str  # the manifest's kind and the parent run's role: "sweep" or "capacity"

    def build_tuner(
        self, prep: Prepared, data, callbacks: list, cluster: dict, resolve: Resolve | None
    ) -> tuple[Any, int]:
        """(the Tuner, how many trials run at once); use ``tuner_for``."""
        ...

    def artifacts(self, prep: Prepared) -> dict[str, Any]:
        """JSON files for the parent run beside search_space.json, data.json, cluster.json."""
        ...

    def resolver(self, prep: Prepared, cluster: dict) -> Resolve | None:
        """A trial's config -> its full config, when Tune's configs are not full (None: they are)."""
        ...


@dataclass
class StudySummary:
    name: str
    experiment: str
    tracking_uri: str
    experiment_path: str
    parent_run_id: str
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None
    pareto: list[dict] = field(default_factory=list)
    undelivered: int = 0
    interrupted: bool = False


def default_name(kind: str) -> str:
    return f"{kind}-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------- checks before Ray


def check_options(opts: StudyOptions) -> None:
    """The shared flags: name, CPUs and GPUs per trial, concurrency, the Ray address."""
    if not NAME_PATTERN.match(opts.name):
        raise UsageError(f"--name {opts.name!r}: use letters, digits, '_', '-', '.' (at most 100)")
    if opts.cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be >= 1, got {opts.cpus_per_trial}")
    if opts.gpus_per_trial is not None and not 0 <= opts.gpus_per_trial <= 8:
        raise UsageError(f"--gpus-per-trial must be in [0, 8], got {opts.gpus_per_trial}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if opts.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {opts.checkpoint_every}")
    preflight.check_ray_address(opts.address)


def check_study_path(storage_path: str | None, name: str, resume: bool, kind: str) -> str:
    """The resolved storage path, once it is clear that a new study ``name`` may start there, or
    that ``--resume`` finds a birdplane study of this kind there."""
    storage = manifest.storage_root(storage_path)
    path = manifest.experiment_path(storage, name)
    if resume:
        if not manifest.exists(path):
            raise UsageError(f"--resume: no {kind} named {name!r} under {storage}")
        found = manifest.read(path).kind
        if found != kind:
            raise UsageError(f"--resume: {name!r} under {storage} is a {found} study, not a {kind}")
        from study.disk import unrecoverable  # imports Ray: only on --resume

        problem = unrecoverable(path, name)
        if problem:
            raise UsageError(problem)
    elif manifest.exists(path):
        raise UsageError(f"a study named {name!r} already exists under {storage}: pass --resume or another --name")
    return storage


# ---------------------------------------------------------------- disk


def checkpoint_bytes(hidden_sizes, optimizer: str, momentum: float, n_out: int = 2) -> int:
    """One checkpoint of a net (float32): its weights, the best epoch's weights and the optimizer
    state (Adam: two tensors a parameter; SGD with momentum: one)."""
    from trainables.model import IN_FEATURES, count_params

    slots = 2 if optimizer in ("adam", "adamw") else int(bool(momentum))
    return 4 * count_params(IN_FEATURES, list(hidden_sizes), n_out) * (2 + slots)


def footprint_warning(storage: str, per_trial: list[int]) -> str | None:
    """The warning --check prints when the study's checkpoints (NUM_TO_KEEP per trial, each trial's
    own size) may not fit into the free space of the storage path; None when they fit."""
    from study.disk import free_bytes, mb

    need = NUM_TO_KEEP * sum(per_trial)
    free = free_bytes(storage)
    if free is None or need <= free:
        return None
    return (
        f"warning: the checkpoints may need about {mb(need)} ({NUM_TO_KEEP} a trial) but {storage} has "
        f"{mb(free)} free; free space or give --storage-path elsewhere"
    )


# ---------------------------------------------------------------- Ray


def connect_ray(address: str | None):
    import ray

    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        if address in (None, "local"):
            # "local" always starts a fresh instance; no address would join whatever cluster
            # /tmp/ray/ray_current_cluster names, even a dead one.
            ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=True)
        else:
            ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UsageError(f"cannot connect to Ray at {address}: {str(err).splitlines()[0]}") from None
    return ray


def trial_resources(opts: StudyOptions, cluster: dict) -> tuple[dict, str, int]:
    """({"cpu", "gpu"} per trial, the trials' device, how many run at once): every CPU of the
    machine or cluster busy, GPUs shared in fractions."""
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = DEFAULT_GPU_SHARE if cluster["gpus"] > 0 else 0.0
    slots = max(1, cluster["cpus"] // opts.cpus_per_trial)
    if gpus > 0:
        slots = min(slots, int(cluster["gpus"] / gpus))
    return {"cpu": opts.cpus_per_trial, "gpu": gpus}, ("cuda" if gpus > 0 else "cpu"), opts.max_concurrent or slots


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def tuner_for(
    prep: Prepared,
    data,
    resources: dict,
    callbacks: list,
    tune_config=None,
    param_space=None,
    resolve: Resolve | None = None,
    train=None,
):
    """The Tuner of a new study, or on --resume the restored one; shared by every design.
    ``train``: the function trainable (None: trainables.tune_adapter.train_trial)."""
    from ray import tune

    from trainables.tune_adapter import train_trial

    opts = prep.options
    trainable = tune.with_resources(
        tune.with_parameters(
            train or train_trial,
            data=data,
            resolve=resolve,
            checkpoint_every=opts.checkpoint_every,
            finished=prep.finished,
        ),
        resources,
    )
    if opts.resume:
        # The restored experiment brings its own callbacks; the driver's active logger stands in
        # for the unpickled one (MlflowTrialLogger.activate).
        return tune.Tuner.restore(prep.path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=prep.storage_path,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=NUM_TO_KEEP),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ---------------------------------------------------------------- Optuna's persisted study


def fail_stale_optuna_trials(storage: str | None, study_name: str) -> int:
    """Mark the trials a killed driver left RUNNING in the persisted Optuna study as FAIL (no one can
    finish them: a resumed sweep re-runs its own unfinished trials as they were); returns how many."""
    if storage is None:
        return 0
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return 0
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(stale)


# ---------------------------------------------------------------- the run


def finished_trials(callback, experiment_path: str) -> dict[str, dict]:
    """Trials Ray's last snapshot has unfinished, though the driver that died closed their MLflow
    runs (FINISHED, with an outcome; a population trial's: every member's) and Ray's own record of
    the trial (its results, or its newest checkpoint, which the trial writes itself) holds every
    epoch the runs closed at: a --resume must not train them again. Trial id -> its last result,
    which the skipped trial reports once more (for the searcher, the scheduler and the summary)."""
    from mlflow import MlflowClient
    from ray.tune import ExperimentAnalysis

    from analysis.record import TAG_MEMBER, TAG_OUTCOME, TAG_PARENT, TAG_TRIAL
    from analysis.runs import search_runs
    from study.tracking import members_of

    analysis = ExperimentAnalysis(experiment_path)
    client = MlflowClient(callback.tracking_uri)
    runs = search_runs(client, callback.experiment_id, f"tags.`{TAG_PARENT}` = '{callback.parent_run_id}'")
    closed = {
        (r.data.tags.get(TAG_TRIAL), r.data.tags.get(TAG_MEMBER)): r
        for r in runs
        if r.info.status == "FINISHED" and TAG_OUTCOME in r.data.tags
    }
    frames = analysis.trial_dataframes
    done = {}
    for trial in analysis.trials:
        if trial.status in ("TERMINATED", "ERROR"):
            continue
        members = members_of(callback.full_config(trial.config))
        keys = [None] if members is None else [str(k) for k in range(len(members))]
        member_runs = [closed.get((trial.trial_id, k)) for k in keys]
        last = ray_last_record(trial, frames.get(trial.trial_id), members is not None)
        if last is None or any(run is None for run in member_runs):
            continue
        records = [last] if members is None else [last["members"].get(k) or {} for k in keys]
        pairs = list(zip(records, member_runs, strict=True))
        if all(r.get("epoch", 0) >= run.data.metrics.get("epochs_run", math.inf) for r, run in pairs):
            for r, run in pairs:
                r["param_count"] = run.data.metrics.get("param_count")
                r["status"] = "diverged" if run.data.tags[TAG_OUTCOME] == "diverged" else "completed"
            done[trial.trial_id] = last
    return done


def ray_last_record(trial, frame, population: bool = False) -> dict | None:
    """The last epoch's record Ray holds of ``trial``: from its results (result.json, written
    with Ray's snapshots) or its newest checkpoint on the storage path, whichever is further.
    A population trial's: {"epoch", "members": {"K": member K's last record}}."""
    from analysis.record import EPOCH_METRICS, SEED_METRICS
    from study.tracking import member_records
    from trainables.population import PopulationState
    from trainables.seeds import population_mean_history
    from trainables.tune_adapter import read_checkpoint, trial_checkpoints

    records = []
    if frame is not None and "epoch" in frame and len(frame):
        if population:
            rows = frame.to_dict("records")
            width = 1 + max((int(c.split("/")[1]) for c in frame.columns if c.startswith("members/")), default=-1)
            last = {str(k): member_records(rows, k)[-1] for k in range(width) if member_records(rows, k)}
            records.append({"epoch": int(frame["epoch"].max()), "members": last})
        else:
            row = frame.loc[frame["epoch"].idxmax()].to_dict()
            records.append({k: row[k] for k in ("epoch", *EPOCH_METRICS, *SEED_METRICS) if k in row})
    storage = getattr(trial, "storage", None)
    newest = trial_checkpoints(storage.trial_fs_path, storage.storage_filesystem)[:1] if storage else []
    state = read_checkpoint(newest[0]) if newest else None
    if isinstance(state, PopulationState) and population:
        last = {str(k): dict(m["history"][-1]) for k, m in enumerate(state.members) if m["history"]}
        records.append({"epoch": state.epoch, "members": last})
    elif isinstance(state, PopulationState):  # a trial of several seeds: its seeds' mean
        history = population_mean_history(state)
        if history:
            records.append({k: history[-1][k] for k in ("epoch", *EPOCH_METRICS, *SEED_METRICS) if k in history[-1]})
    elif state is not None and state.history:
        records.append(dict(state.history[-1]))
    return max(records, key=lambda r: r["epoch"], default=None)


def pareto_set(trials: list[dict]) -> list[dict]:
    """The summary trials no other beats on both val_acc (higher) and param_count (lower)."""
    import pandas as pd

    from analysis.overfitting import pareto_front

    if not trials:
        return []
    frame = pd.DataFrame(
        {
            "val_acc": [t.get("val_acc") for t in trials],
            "param_count": [t.get("param_count") for t in trials],
            "index": range(len(trials)),
        }
    )
    frame = frame[frame["val_acc"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    return [trials[i] for i in pareto_front(frame)["index"]]


def _flags(prep: Prepared, kind: str) -> dict:
    """The study's flags as the parent run's params and the manifest's options."""
    options = {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in asdict(prep.options).items()}
    return {
        **options,
        "kind": kind,
        "tracking_uri": prep.tracking_uri,
        "storage_path": prep.storage_path,
        "data_root": prep.data.root,
        "classes": ",".join(prep.data.classes),
        "val_split": prep.data.val_split,
        "split_seed": prep.data.split_seed,
        "subset": prep.data.subset,
        "git_commit": git_commit(),
    }


def error_line(error) -> str | None:
    """The first line that says why a trial failed. Ray's text of an error it could not pickle (a
    worker its out-of-memory monitor killed) starts with a "Failure # N (occurred at ...)" header."""
    if not error:
        return None
    lines = [line.strip() for line in str(error).splitlines()]
    said = [line for line in lines if line and not re.match(r"Failure # \d+ \(occurred at ", line)]
    return said[0] if said else type(error).__name__


def _summarise(prep: Prepared, results, callback, parent: str, resolve: Resolve | None) -> StudySummary:
    summary = StudySummary(
        prep.options.name,
        prep.experiment,
        prep.tracking_uri,
        prep.path,
        parent,
        undelivered=callback.last_undelivered,
        interrupted=callback.interrupted,
    )
    from study.tracking import member_key, members_of

    for result in results:
        metrics = result.metrics or {}
        full = (resolve(result.config) if resolve is not None else result.config) or {}
        members = members_of(full)
        if members is None:
            summary.trials.append(_summary_trial(metrics, full, result, callback, metrics.get("trial_id")))
            continue
        for k, point in enumerate(members):  # a population trial: one summary trial per member
            m = {**((metrics.get("members") or {}).get(str(k)) or {})}
            m.update(trial_id=metrics.get("trial_id"), node_id=metrics.get("node_id"))
            summary.trials.append(_summary_trial(m, point, result, callback, member_key(m["trial_id"], k)))
    finished = [t for t in summary.trials if isinstance(t["val_acc"], (int, float)) and math.isfinite(t["val_acc"])]
    if finished:
        summary.best = (max if prep.mode == "max" else min)(finished, key=lambda t: t[prep.metric])
    summary.pareto = pareto_set([t for t in finished if t["param_count"] is not None])
    return summary


def _summary_trial(m: dict, config: dict, result, callback, run_key) -> dict:
    return {
        "trial_id": m.get("trial_id"),
        "val_acc": m.get("val_acc"),
        "train_acc": m.get("train_acc"),
        "val_loss": m.get("val_loss"),
        "val_acc_sd": m.get("val_acc_sd"),  # a trial of several seeds: their sd (its val_acc is their mean)
        "param_count": m.get("param_count"),
        "epochs": m.get("epoch"),
        "status": m.get("status"),
        "config": config.get("train", {}),
        "tags": config.get("tags", {}),
        "path": result.path,
        "node_id": m.get("node_id"),
        "run_id": callback.runs.get(run_key),
        "error": error_line(result.error),
    }


def run_study(prep: Prepared, design: Design, extra_callbacks: list = ()) -> StudySummary:
    """Run a study of any design on Ray Tune, every trial a child run of one MLflow parent run.

    Starts or joins Ray, checks the cluster, opens (or adopts) the MLflow parent run, writes
    birdplane's manifest, builds the Tuner with ``design.build_tuner`` (which restores it on
    --resume), replays what a killed driver left undelivered, runs it and summarises.
    """
    from mlflow import MlflowClient

    from study import disk
    from study import records as record
    from study.sync import replay
    from study.tracking import MlflowTrialLogger
    from trainables.tune_adapter import slim_finished

    opts, kind = prep.options, design.kind
    if opts.resume and extra_callbacks:
        raise ValueError("extra callbacks cannot be added to a restored study (Tune restores its own)")
    preflight.bound_mlflow_http()
    # Decoding errors (a truncated image) surface here, before Ray or MLflow is touched.
    data = load_study_data(prep.data)
    if opts.address in (None, "local"):
        # A fresh local Ray (~5 s, mostly waiting on its processes) overlaps with creating the
        # MLflow store (~3 s of schema migrations when it is new).
        with ThreadPoolExecutor(max_workers=1) as pool:
            ready = pool.submit(
                lambda: record.retry_transient(
                    lambda: record.ensure_experiment(record.open_client(prep.tracking_uri), prep.experiment)
                )
            )
            ray = connect_ray(opts.address)
            ready.result()
    else:
        # On a cluster, nothing is written to MLflow before the cluster passed its checks.
        ray = connect_ray(opts.address)
    cluster = preflight.check_cluster(ray, prep.tracking_uri, prep.storage_path, opts.storage_path is not None)
    resolve = design.resolver(prep, cluster)
    # The trials' device, so that `sync` can rebuild a capacity study's points (study/capacity.py).
    flags = {**_flags(prep, kind), "trial_device": trial_resources(opts, cluster)[1]}
    callback = MlflowTrialLogger(
        prep.tracking_uri,
        prep.experiment,
        prep.study_name,
        parent_params=flags,
        parent_artifacts={
            "search_space.json": prep.space.to_dict(),
            "data.json": data.summary(),
            "cluster.json": cluster,
            f"{kind}.json": flags,
            **design.artifacts(prep),
        },
        data_config=prep.data.to_dict(),
        key=prep.path,
        role=kind,
        resolve=resolve,
        after_close=slim_finished,
    ).activate()
    parent = callback.open_parent()  # before any trial starts: a tracking problem stops us here
    placeholders: list[str] = []  # folders made for a stale snapshot's deleted checkpoints (--resume)
    if not opts.resume:
        manifest.write(
            prep.path,
            manifest.Manifest(
                kind=kind,
                name=opts.name,
                experiment=prep.experiment,
                tracking_uri=prep.tracking_uri,
                parent_run_id=parent,
                data=prep.data.to_dict(),
                space=prep.space.to_dict(),
                options=flags,
                optuna_storage=prep.optuna_storage,
            ),
        )
    else:
        disk.intact_snapshot(prep.path, opts.name)  # a snapshot a full disk truncated: the last good one
        # A stale snapshot naming a checkpoint num_to_keep (or slimming a finished trial) deleted.
        placeholders = disk.deleted_restore_points(prep.path)
        prep = dataclasses.replace(prep, finished=finished_trials(callback, prep.path))
        callback.skip(prep.finished)
    guard = disk.DiskGuard(prep.storage_path, prep.path)
    tuner, _ = design.build_tuner(prep, data, [callback, guard, *extra_callbacks], cluster, resolve)
    try:
        if opts.resume:
            # Trials that finished while the last driver's MLflow calls were lost (a SIGKILL, an
            # outage) get their runs completed from Ray's results before the study continues.
            replay(callback, prep.path, resuming=True)
        try:
            results = tuner.fit()
        finally:  # once Ray restored every trial: the placeholders nothing wrote into
            disk.drop_placeholders(placeholders)
    except Exception as err:
        if not (guard.full or disk.is_disk_full(err)):
            raise
        # Tune ended the experiment; its unfinished trials wait for --resume. The parent run says
        # the study failed (a --resume reopens it).
        callback.finish("FAILED")
        raise StorageFull(
            f"{disk.full_message(prep.storage_path, guard.needed)}: free some, then "
            f"`birdplane {kind} --name {opts.name} --resume` (same flags)"
        ) from None
    summary = _summarise(prep, results, callback, parent, resolve)
    if not summary.interrupted:  # nothing left to resume: no Optuna trial may stay RUNNING
        fail_stale_optuna_trials(prep.optuna_storage, prep.study_name)
    try:  # the study's headline on its parent run (the UI's runs list shows it in the parent's row)
        record.log_headline(MlflowClient(prep.tracking_uri), callback.experiment_id, parent)
    except Exception as err:  # the server went away at the very end: the trials' runs are all there
        logging.getLogger(__name__).warning("could not log the study's headline metrics: %s", err)
    return summary
