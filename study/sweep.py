"""The sweep: Optuna (through Ray Tune's OptunaSearch) + ASHA over trainables.fit, logged to MLflow.

``prepare`` validates everything that can be checked before Ray starts; ``run_sweep`` starts or
joins Ray, opens the MLflow parent run, builds (or restores) the Tuner and returns a summary.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import re
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study import mlflow_store as store
from study.errors import UsageError
from study.space import SearchSpace, load_space
from trainables.config import DataConfig
from trainables.data import check_data

SMOKE_SUBSET = 100  # training images per class in a --smoke sweep
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ADDRESS_PATTERN = re.compile(r"^(auto|local|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


@dataclass(frozen=True)
class SweepOptions:
    space: str | None = None
    num_samples: int = 24
    max_epochs: int | None = None
    metric: str = "val_acc"
    objectives: tuple[str, ...] = ()
    scheduler: str = "asha"
    grace_epochs: int = 2
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    address: str | None = None
    storage_path: str | None = None
    name: str = ""
    resume: bool = False
    seed: int = 0
    tracking_uri: str | None = None
    experiment: str | None = None
    smoke: bool = False
    max_failures: int = 2
    search: str = "tpe"  # tpe (Optuna through OptunaSearch) or random (Ray's BasicVariantGenerator)

    @property
    def mode(self) -> str:
        return "max" if self.metric == "val_acc" else "min"


@dataclass
class Prepared:
    options: SweepOptions
    space: SearchSpace
    data: DataConfig
    tracking_uri: str
    experiment: str
    storage_path: str
    max_epochs: int


def default_name() -> str:
    return "sweep-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare(opts: SweepOptions, data: DataConfig) -> Prepared:
    """Every check that needs neither Ray nor training; raises UsageError with one line."""
    if opts.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {opts.num_samples}")
    if opts.metric not in ("val_acc", "val_loss"):
        raise UsageError(f"--metric must be val_acc or val_loss, got {opts.metric!r}")
    if opts.objectives and (set(opts.objectives) != {"val_acc", "param_count"} or len(opts.objectives) != 2):
        raise UsageError(f"--objectives supports val_acc,param_count, got {','.join(opts.objectives)!r}")
    if opts.search not in ("tpe", "random"):
        raise UsageError(f"--search must be tpe or random, got {opts.search!r}")
    if opts.scheduler not in ("asha", "none"):
        raise UsageError(f"--scheduler must be asha or none, got {opts.scheduler!r}")
    if opts.cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be >= 1, got {opts.cpus_per_trial}")
    if opts.gpus_per_trial is not None and not 0 <= opts.gpus_per_trial <= 8:
        raise UsageError(f"--gpus-per-trial must be in [0, 8], got {opts.gpus_per_trial}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")
    if opts.max_epochs is not None and opts.max_epochs < 1:
        raise UsageError(f"--max-epochs must be >= 1, got {opts.max_epochs}")
    if opts.grace_epochs < 1:
        raise UsageError(f"--grace-epochs must be >= 1, got {opts.grace_epochs}")
    if not NAME_PATTERN.match(opts.name):
        raise UsageError(f"--name {opts.name!r}: use letters, digits, '_', '-', '.' (at most 100)")
    if opts.address is not None and not ADDRESS_PATTERN.match(opts.address):
        raise UsageError(f"--address {opts.address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    check_ray_address(opts.address)
    space = load_space(opts.space)
    max_epochs = opts.max_epochs or (2 if opts.smoke else None)
    if max_epochs is not None:
        space = space.with_fixed(epochs=max_epochs)
    epochs = space.dimensions.get("epochs")
    if epochs is None or epochs.fixed is None:
        raise UsageError("search space: epochs must be fixed (or give --max-epochs): ASHA needs a budget")
    if opts.scheduler == "asha" and opts.grace_epochs > epochs.fixed:
        raise UsageError(f"--grace-epochs {opts.grace_epochs} exceeds the {epochs.fixed} epochs of a trial")
    loss = space.dimensions.get("loss")
    losses = (loss.choices or (loss.fixed,)) if loss is not None else ("nll",)
    if "bce" in losses and len(data.classes) != 2:
        raise UsageError("search space: loss bce needs exactly 2 classes")
    check_data(data)
    uri = store.resolve_tracking_uri(opts.tracking_uri)
    store.check_tracking_uri(uri)
    storage = opts.storage_path or os.path.expanduser("~/ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    experiment_dir = os.path.join(storage, opts.name)
    if "://" not in storage:
        exists = os.path.exists(os.path.join(experiment_dir, "tuner.pkl"))
        if opts.resume and not exists:
            raise UsageError(f"--resume: no sweep named {opts.name!r} under {storage}")
        if not opts.resume and os.path.exists(experiment_dir):
            raise UsageError(f"a sweep named {opts.name!r} already exists under {storage}: pass --resume or another --name")
    return Prepared(opts, space, data, uri, opts.experiment or opts.name, storage, int(epochs.fixed))


def experiment_dir(storage_path: str | None, name: str) -> str:
    storage = storage_path or os.path.expanduser("~/ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    return os.path.join(storage, name) if "://" not in storage else storage.rstrip("/") + "/" + name


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray address that nothing answers makes ray.init hang for minutes: fail fast instead."""
    import socket

    if address in (None, "local"):
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or ""
        current = Path("/tmp/ray/ray_current_cluster")
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target:
            raise UsageError("--address auto: no running Ray cluster found on this machine (start one with `ray start --head`)")
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise UsageError(f"--address {address}: no Ray cluster answers at {host}:{port} ({err})") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


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


def check_cluster(prep: Prepared, ray) -> dict:
    """Resources and the rules for several nodes: shared storage and a tracking server."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    if len(nodes) > 1:
        if store.is_local_store(prep.tracking_uri):
            raise UsageError(f"a {len(nodes)}-node cluster needs an MLflow tracking server (--tracking-uri http://...), "
                             f"not the local store {prep.tracking_uri}")
        if prep.options.storage_path is None:
            raise UsageError(f"a {len(nodes)}-node cluster needs --storage-path on shared storage (NFS) or a cloud URI")
        if "://" not in prep.storage_path:
            check_shared_path(ray, prep.storage_path, nodes)
    return {"nodes": len(nodes), "cpus": int(resources.get("CPU", 0)), "gpus": float(resources.get("GPU", 0))}


def check_shared_path(ray, path: str, nodes: list) -> None:
    """A marker written here must be visible on every node, or checkpoints would be lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, f".birdplane-shared-{uuid.uuid4().hex}")
    Path(marker).write_text("ok")
    try:
        @ray.remote(num_cpus=0)
        def visible(p):
            return os.path.exists(p)

        checks = [visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
                  for n in nodes]
        if not all(ray.get(checks, timeout=60)):
            raise UsageError(f"--storage-path {path} is not shared by every node of the cluster (use NFS or a cloud URI)")
    finally:
        os.unlink(marker)


@dataclass
class SweepSummary:
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


def pareto_set(trials: list[dict]) -> list[dict]:
    """The summary trials no other beats on both val_acc (higher) and param_count (lower)."""
    import pandas as pd

    from analysis.overfitting import pareto_front

    if not trials:
        return []
    frame = pd.DataFrame({"val_acc": [t.get("val_acc") for t in trials],
                          "param_count": [t.get("param_count") for t in trials], "index": range(len(trials))})
    frame = frame[frame["val_acc"].map(lambda v: isinstance(v, (int, float)) and math.isfinite(v))]
    return [trials[i] for i in pareto_front(frame)["index"]]


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(prep: Prepared, data, callback, cluster: dict, points_to_evaluate: list[dict] | None = None):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from trainables.tune_adapter import train_trial

    opts = prep.options
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (0.25 if cluster["gpus"] > 0 else 0.0)
    device = "cuda" if gpus > 0 else "cpu"
    slots = max(1, cluster["cpus"] // opts.cpus_per_trial)
    if gpus > 0:
        slots = min(slots, int(cluster["gpus"] / gpus))
    concurrency = opts.max_concurrent or slots
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data), {"cpu": opts.cpus_per_trial, "gpu": gpus})
    space_fn = prep.space.define_by_run(seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device)
    # TPE: seeded; multivariate + group model the joint, conditional (depth -> widths) space;
    # constant_liar keeps concurrent trials from piling onto one point; enough random start-up
    # trials that every concurrent slot explores before TPE takes over.
    sampler = optuna.samplers.TPESampler(
        seed=opts.seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=max(concurrency, min(10, opts.num_samples // 3)))
    param_space = None
    if opts.search == "random":
        from ray.tune.search import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=opts.seed, max_concurrent=concurrency)
        param_space = prep.space.tune_param_space(seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device)
    else:
        if opts.objectives:
            searcher = OptunaSearch(space=space_fn, metric=["val_acc", "param_count"], mode=["max", "min"],
                                    sampler=sampler, points_to_evaluate=points_to_evaluate)
        else:
            searcher = OptunaSearch(space=space_fn, metric=opts.metric, mode=opts.mode, sampler=sampler,
                                    points_to_evaluate=points_to_evaluate)
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    scheduler = None
    if opts.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=opts.metric, mode=opts.mode, max_t=prep.max_epochs,
                                  grace_period=opts.grace_epochs, reduction_factor=3)
    run_config = tune.RunConfig(
        name=opts.name, storage_path=prep.storage_path, callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4), verbose=1)
    path = os.path.join(prep.storage_path, opts.name)
    if opts.resume:
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True), concurrency
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.num_samples,
                                  reuse_actors=True, trial_dirname_creator=trial_dirname)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config), concurrency


def run_sweep(prep: Prepared, points_to_evaluate: list[dict] | None = None, extra_callbacks: list = ()) -> SweepSummary:
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    from study.tracking import MlflowTrialLogger
    from trainables.data import load_study_data

    opts = prep.options
    # Decoding errors (a truncated image) surface here, before Ray or MLflow is touched.
    data = load_study_data(prep.data)
    if opts.address in (None, "local"):
        # A fresh local Ray (~5 s, mostly waiting on its processes) overlaps with creating the
        # MLflow store (~3 s of schema migrations when it is new).
        with ThreadPoolExecutor(max_workers=1) as pool:
            ready = pool.submit(lambda: store.ensure_experiment(MlflowClient(prep.tracking_uri), prep.experiment))
            ray = connect_ray(opts.address)
            ready.result()
    else:
        # On a cluster, nothing is written to MLflow before the cluster passed its checks.
        ray = connect_ray(opts.address)
    cluster = check_cluster(prep, ray)
    flags = {**{k: v for k, v in asdict(opts).items() if k != "objectives"},
             "objectives": ",".join(opts.objectives), "tracking_uri": prep.tracking_uri,
             "storage_path": prep.storage_path, "data_root": prep.data.root, "classes": ",".join(prep.data.classes),
             "val_split": prep.data.val_split, "split_seed": prep.data.split_seed, "subset": prep.data.subset,
             "git_commit": git_commit()}
    callback = MlflowTrialLogger(
        prep.tracking_uri, prep.experiment, opts.name, parent_params=flags,
        parent_artifacts={"search_space.json": prep.space.to_dict(), "data.json": data.summary(),
                          "cluster.json": cluster, "sweep.json": flags},
        data_config=prep.data.to_dict())
    tuner, concurrency = build_tuner(prep, data, callback, cluster, points_to_evaluate)
    tuner._local_tuner.get_run_config().callbacks.extend(extra_callbacks)
    # A restored Tuner carries its own callback, unpickled from the experiment state.
    callback = tuner._local_tuner.get_run_config().callbacks[0]
    parent = callback.open_parent()  # before any trial starts: a tracking problem stops us here
    if opts.resume:
        # Trials that finished while the last driver's MLflow calls were lost (a SIGKILL, an
        # outage) get their runs completed from Ray's results before the sweep continues.
        from study.sync import replay

        replay(callback, os.path.join(prep.storage_path, opts.name), resuming=True)
    results = tuner.fit()
    summary = SweepSummary(opts.name, prep.experiment, prep.tracking_uri, os.path.join(prep.storage_path, opts.name),
                           parent, undelivered=callback.last_undelivered, interrupted=callback.interrupted)
    for result in results:
        m = result.metrics or {}
        train = (result.config or {}).get("train", {})
        summary.trials.append({
            "trial_id": m.get("trial_id"), "val_acc": m.get("val_acc"), "train_acc": m.get("train_acc"),
            "val_loss": m.get("val_loss"), "param_count": m.get("param_count"), "epochs": m.get("epoch"),
            "status": m.get("status"), "config": train, "path": result.path, "node_id": m.get("node_id"),
            "run_id": callback.runs.get(m.get("trial_id")), "error": str(result.error).splitlines()[0] if result.error else None})
    finished = [t for t in summary.trials if isinstance(t["val_acc"], (int, float)) and math.isfinite(t["val_acc"])]
    if finished:
        pick = max if opts.mode == "max" else min
        summary.best = pick(finished, key=lambda t: t[opts.metric])
    summary.pareto = pareto_set([t for t in finished if t["param_count"] is not None])
    return summary
