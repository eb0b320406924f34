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
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study import manifest, preflight
from study.errors import UsageError
from study.space import SearchSpace, load_space
from trainables.config import DataConfig
from trainables.data import check_data

SMOKE_SUBSET = 100  # training images per class in a --smoke sweep
DEFAULT_GRACE = 4  # ASHA's first rung: augmentation and schedules lose at 2 epochs what they win at 40
SAMPLERS = ("tpe", "gp", "qmc", "random")  # Optuna samplers that handle the conditional depth -> widths space
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class SweepOptions:
    space: str | None = None
    num_samples: int = 32
    max_epochs: int | None = None
    metric: str = "val_acc"
    objectives: tuple[str, ...] = ()
    scheduler: str = "asha"
    grace_epochs: int | None = None  # None: min(DEFAULT_GRACE, the trials' epochs)
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
    max_failures: int = 3  # a dead node's cached actor can fail a trial twice at once (seen in the node-crash test)
    search: str = "tpe"  # tpe (Optuna through OptunaSearch) or random (Ray's BasicVariantGenerator)
    optuna_storage: str | None = None  # an Optuna RDB URL: the study is persisted there (optuna-dashboard)
    sampler: str = "tpe"  # the Optuna sampler behind --search tpe: tpe, gp, qmc or random
    extends: str | None = None  # --extend: the sweep whose Optuna study and MLflow parent run this one continues

    @property
    def study_name(self) -> str:
        """The sweep as MLflow and Optuna know it (an extension's trials join the sweep it extends)."""
        return self.extends or self.name

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
    optuna_storage: str | None = None  # where the Optuna study is persisted (None: in memory)

    @property
    def path(self) -> str:
        """Ray's experiment folder of this sweep (local or a URI)."""
        return manifest.experiment_path(self.storage_path, self.options.name)


def default_name() -> str:
    return "sweep-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def default_optuna_storage(tracking_uri: str, storage_path: str) -> str | None:
    """The Optuna study's database beside the MLflow store: optuna.db in the sqlite file's folder
    (or beside a local mlruns folder); for a tracking server, in a local Ray storage folder."""
    from urllib.parse import urlparse

    if tracking_uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///"):]))
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        path = urlparse(tracking_uri).path if tracking_uri.startswith("file:") else tracking_uri
        folder = os.path.dirname(os.path.abspath(path.rstrip("/")))
    elif "://" not in storage_path:
        folder = storage_path
    else:
        return None  # a server and a cloud storage path: give --optuna-storage
    return "sqlite:///" + os.path.join(folder, "optuna.db")


def prepare(opts: SweepOptions, data: DataConfig, space: SearchSpace | None = None) -> Prepared:
    """Every check that needs neither Ray nor training; raises UsageError with one line.
    ``space`` replaces the space file (an extension's checked space)."""
    if opts.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {opts.num_samples}")
    if opts.metric not in ("val_acc", "val_loss"):
        raise UsageError(f"--metric must be val_acc or val_loss, got {opts.metric!r}")
    if opts.objectives and (set(opts.objectives) != {"val_acc", "param_count"} or len(opts.objectives) != 2):
        raise UsageError(f"--objectives supports val_acc,param_count, got {','.join(opts.objectives)!r}")
    if opts.search not in ("tpe", "random"):
        raise UsageError(f"--search must be tpe or random, got {opts.search!r}")
    if opts.sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {opts.sampler!r}")
    if opts.scheduler not in ("asha", "none"):
        raise UsageError(f"--scheduler must be asha or none, got {opts.scheduler!r}")
    check_resources(opts)
    if opts.max_epochs is not None and opts.max_epochs < 1:
        raise UsageError(f"--max-epochs must be >= 1, got {opts.max_epochs}")
    if opts.grace_epochs is not None and opts.grace_epochs < 1:
        raise UsageError(f"--grace-epochs must be >= 1, got {opts.grace_epochs}")
    preflight.check_ray_address(opts.address)
    if opts.optuna_storage not in (None, "none"):
        if opts.search != "tpe":
            raise UsageError("--optuna-storage needs --search tpe (random search has no Optuna study)")
        check_optuna_storage(opts.optuna_storage)
    space = space if space is not None else load_space(opts.space)
    max_epochs = opts.max_epochs or (2 if opts.smoke else None)
    if max_epochs is not None:
        space = space.with_fixed(epochs=max_epochs)
    epochs = space.dimensions.get("epochs")
    if epochs is None or epochs.fixed is None:
        raise UsageError("search space: epochs must be fixed (or give --max-epochs): ASHA needs a budget")
    if epochs.fixed < 1:
        raise UsageError(f"search space: epochs must be >= 1 in a sweep, got {epochs.fixed}")
    if opts.scheduler == "asha" and opts.grace_epochs is not None and opts.grace_epochs > epochs.fixed:
        raise UsageError(f"--grace-epochs {opts.grace_epochs} exceeds the {epochs.fixed} epochs of a trial")
    loss = space.dimensions.get("loss")
    losses = (loss.choices or (loss.fixed,)) if loss is not None else ("nll",)
    if "bce" in losses and len(data.classes) != 2:
        raise UsageError("search space: loss bce needs exactly 2 classes")
    check_data(data)
    uri = preflight.resolve_tracking_uri(opts.tracking_uri)
    preflight.check_tracking_uri(uri)
    storage = check_study_path(opts.storage_path, opts.name, opts.resume, "sweep")
    optuna_storage = opts.optuna_storage
    if opts.resume:  # the study the interrupted sweep persisted, wherever that was
        found = manifest.read(manifest.experiment_path(storage, opts.name))
        optuna_storage = found.optuna_storage
        opts = dataclasses.replace(opts, extends=found.options.get("extends") or None)
    elif optuna_storage is None and opts.search == "tpe":
        optuna_storage = default_optuna_storage(uri, storage)
    if optuna_storage == "none":
        optuna_storage = None
    return Prepared(opts, space, data, uri, opts.experiment or opts.study_name, storage, int(epochs.fixed), optuna_storage)


def prepare_extension(opts: SweepOptions, data: DataConfig | None, count: int) -> Prepared:
    """``--extend N`` of sweep ``opts.name``: N more trials drawn by the sweep's own Optuna study
    (reloaded, so the sampler is warm-started from every earlier trial), logged under the same
    MLflow parent run. Runs as a Tune experiment of its own, NAME-ext1, NAME-ext2, ...; the search
    options, data and (unless --space widens it) space are the sweep's."""
    from study.space import check_extension, space_from_mapping

    if count < 1:
        raise UsageError(f"--extend must be >= 1, got {count}")
    if opts.resume:
        raise UsageError("--extend and --resume do not go together: resume an interrupted extension by its own --name")
    storage = opts.storage_path or os.path.expanduser("~/ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    base_path = manifest.experiment_path(storage, opts.name)
    if not manifest.exists(base_path):
        raise UsageError(f"--extend: no sweep named {opts.name!r} under {storage}")
    base = manifest.read(base_path)
    if base.kind != "sweep":
        raise UsageError(f"--extend: {opts.name!r} under {storage} is a {base.kind} study, not a sweep")
    if base.options.get("extends"):
        raise UsageError(f"--extend: {opts.name!r} is itself an extension; extend {base.options['extends']!r}")
    if base.optuna_storage is None:
        raise UsageError(f"--extend: sweep {opts.name!r} kept no Optuna study (it ran with --search random or "
                         "--optuna-storage none), so nothing can warm-start the search")
    status = _parent_status(base.tracking_uri, base.parent_run_id)
    if status != "FINISHED":
        raise UsageError(f"--extend: sweep {opts.name!r} has not finished (its MLflow parent run is {status}): "
                         f"continue it with --resume first")
    old_space = space_from_mapping(base.space, f"sweep {opts.name}")
    space = old_space
    if opts.space is not None:
        space = load_space(opts.space)
        check_extension(old_space, space)
    k = 1
    while manifest.exists(manifest.experiment_path(storage, f"{opts.name}-ext{k}")):
        k += 1
    flags = base.options
    objectives = tuple(o for o in str(flags.get("objectives") or "").split(",") if o)
    ext = dataclasses.replace(
        opts, name=f"{opts.name}-ext{k}", extends=opts.name, num_samples=count, max_epochs=None,
        metric=flags.get("metric", opts.metric), objectives=objectives, scheduler=flags.get("scheduler", opts.scheduler),
        grace_epochs=flags.get("grace_epochs"), search="tpe", sampler=flags.get("sampler", opts.sampler),
        seed=int(flags.get("seed", 0)) + k, tracking_uri=base.tracking_uri, experiment=base.experiment,
        optuna_storage=base.optuna_storage, storage_path=storage)
    data = data if data is not None else DataConfig.from_dict(base.data)
    return prepare(ext, data, space)


def _parent_status(tracking_uri: str, run_id: str) -> str:
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.status
    except Exception as err:  # the store is gone, or the run was deleted
        raise UsageError(f"--extend: cannot read the sweep's parent run {run_id} at {tracking_uri}: "
                         f"{str(err).splitlines()[0]}") from None


def warm_start(url: str | None, study_name: str, directions: list[str]):
    """An in-memory Optuna storage whose study holds every finished trial of the persisted study
    ``study_name``: the searcher of an extension samples as if it had run them itself."""
    import optuna

    memory = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=memory, study_name=study_name, directions=directions)
    if url is not None:
        done = optuna.load_study(study_name=study_name, storage=url).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        study.add_trials(done)
    return memory


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


def check_resources(opts) -> None:
    """The flags every kind of study shares: name, CPUs and GPUs per trial, concurrency."""
    if not NAME_PATTERN.match(opts.name):
        raise UsageError(f"--name {opts.name!r}: use letters, digits, '_', '-', '.' (at most 100)")
    if opts.cpus_per_trial < 1:
        raise UsageError(f"--cpus-per-trial must be >= 1, got {opts.cpus_per_trial}")
    if opts.gpus_per_trial is not None and not 0 <= opts.gpus_per_trial <= 8:
        raise UsageError(f"--gpus-per-trial must be in [0, 8], got {opts.gpus_per_trial}")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {opts.max_concurrent}")


def check_study_path(storage_path: str | None, name: str, resume: bool, kind: str) -> str:
    """The resolved storage path, once it is clear that a new study ``name`` may start there, or
    that ``--resume`` finds a birdplane study of this kind there."""
    storage = storage_path or os.path.expanduser("~/ray_results")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    path = manifest.experiment_path(storage, name)
    if resume:
        if not manifest.exists(path):
            raise UsageError(f"--resume: no {kind} named {name!r} under {storage}")
        found = manifest.read(path).kind
        if found != kind:
            raise UsageError(f"--resume: {name!r} under {storage} is a {found} study, not a {kind}")
    elif manifest.exists(path):
        raise UsageError(f"a study named {name!r} already exists under {storage}: pass --resume or another --name")
    return storage


def check_optuna_storage(url: str) -> None:
    """An Optuna RDB URL whose database can be created or opened (a sqlite file's folder must exist)."""
    if "://" not in url:
        raise UsageError(f"--optuna-storage {url!r}: expected a database URL such as sqlite:///optuna.db")
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(url[len("sqlite:///"):])) or "."
        if not os.path.isdir(folder):
            raise UsageError(f"--optuna-storage {url}: folder {folder} does not exist")


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


# Measured on an H100 with graphed steps (benchmarks/gpu_check.sh, gpu_mps.sh): the default sweep took
# 114 s at 1 trial per GPU, 51 s at 4 and 40-43 s at 16 (with or without MPS). No share keeps a
# trial at >= 0.8x its solo speed (4 at once: 0.30x; the GPU time-slices between processes), so
# the share is chosen for what a sweep wants, the most trials finished per second: 16 trials at
# once run 2.3x the solo throughput (5x under MPS).
DEFAULT_GPU_SHARE = 1 / 16


def trial_resources(opts, cluster: dict) -> tuple[dict, str, int]:
    """({"cpu", "gpu"} per trial, the trials' device, how many run at once): every CPU of the
    machine or cluster busy, GPUs shared in fractions."""
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else (DEFAULT_GPU_SHARE if cluster["gpus"] > 0 else 0.0)
    slots = max(1, cluster["cpus"] // opts.cpus_per_trial)
    if gpus > 0:
        slots = min(slots, int(cluster["gpus"] / gpus))
    return {"cpu": opts.cpus_per_trial, "gpu": gpus}, ("cuda" if gpus > 0 else "cpu"), opts.max_concurrent or slots


def tuner_for(prep, data, resources: dict, callbacks: list, tune_config=None, param_space=None, resolve=None):
    """The Tuner of a new study, or on --resume the restored one; shared by every kind of study."""
    from ray import tune

    from trainables.tune_adapter import train_trial

    opts = prep.options
    trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, resolve=resolve), resources)
    if opts.resume:
        # The restored experiment brings its own callbacks; the driver's active logger stands in
        # for the unpickled one (MlflowTrialLogger.activate).
        return tune.Tuner.restore(prep.path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    run_config = tune.RunConfig(
        name=opts.name, storage_path=prep.storage_path, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4), verbose=1)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def make_sampler(name: str, seed: int, startup: int):
    """A seeded Optuna sampler for the define-by-run space.

    TPE (the default): multivariate + group model the joint, conditional (depth -> widths) space;
    constant_liar keeps concurrent trials from piling onto one point; ``startup`` random trials
    let every concurrent slot explore first. GP: Optuna's Gaussian-process sampler (widths of
    layers that not every trial has are drawn at random). QMC: a scrambled Sobol sequence.
    """
    import optuna

    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=startup)


def build_tuner(prep: Prepared, data, callbacks: list, cluster: dict, points_to_evaluate: list[dict] | None = None):
    """The sweep's Tuner: Optuna TPE (or Ray's random search) and ASHA."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    opts = prep.options
    resources, device, concurrency = trial_resources(opts, cluster)
    space_fn = prep.space.define_by_run(seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device)
    sampler = make_sampler(opts.sampler, opts.seed, max(concurrency, min(10, opts.num_samples // 3)))
    param_space = None
    if opts.search == "random":
        from ray.tune.search import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=opts.seed, max_concurrent=concurrency)
        param_space = prep.space.tune_param_space(seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device)
    else:
        metric, mode = (["val_acc", "param_count"], ["max", "min"]) if opts.objectives else (opts.metric, opts.mode)
        metrics, modes = (metric, mode) if isinstance(metric, list) else ([metric], [mode])
        directions = ["maximize" if m == "max" else "minimize" for m in modes]
        # The searcher's own study stays in memory, snapshotted with Tune's state, so a resume
        # always matches the trials Tune restores; the persisted copy is written by
        # OptunaStudyMirror. An extension's in-memory study starts with every earlier trial.
        storage = warm_start(prep.optuna_storage, opts.study_name, directions) if opts.extends else None
        searcher = OptunaSearch(space=space_fn, metric=metric, mode=mode, sampler=sampler,
                                points_to_evaluate=points_to_evaluate, storage=storage,
                                study_name=opts.study_name if storage is not None else None)
        if prep.optuna_storage:
            from study.optuna_mirror import OptunaStudyMirror

            callbacks = [*callbacks, OptunaStudyMirror(prep.optuna_storage, opts.study_name, metrics, directions,
                                                       prep.space.optuna_distributions())]
        searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    scheduler = None
    if opts.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=opts.metric, mode=opts.mode, max_t=prep.max_epochs,
                                  grace_period=opts.grace_epochs or min(DEFAULT_GRACE, prep.max_epochs),
                                  reduction_factor=3)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.num_samples,
                                  reuse_actors=True, trial_dirname_creator=trial_dirname)
    return tuner_for(prep, data, resources, callbacks, tune_config, param_space), concurrency


def run_sweep(prep: Prepared, points_to_evaluate: list[dict] | None = None, extra_callbacks: list = ()) -> SweepSummary:
    return run_study(prep, "sweep", lambda data, callbacks, cluster, _resolve: build_tuner(
        prep, data, callbacks, cluster, points_to_evaluate), extra_callbacks=extra_callbacks)


def run_study(prep, kind: str, make_tuner, artifacts: dict | None = None, extra_callbacks: list = (),
              resolver=None) -> SweepSummary:
    """Run a study of any kind (a sweep, a capacity grid) on Ray Tune, every trial a child run.

    Starts or joins Ray, checks the cluster, opens (or adopts) the MLflow parent run, writes
    birdplane's manifest, builds the Tuner with ``make_tuner(data, callbacks, cluster, resolve)``
    (or restores it), replays what a killed driver left undelivered, runs it and summarises.
    ``resolver(cluster)``, if given, makes ``resolve``: a trial's config -> its full config.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    from study import records as record
    from study.tracking import MlflowTrialLogger
    from trainables.data import load_study_data

    opts = prep.options
    if opts.resume and extra_callbacks:
        raise ValueError("extra callbacks cannot be added to a restored study (Tune restores its own)")
    preflight.bound_mlflow_http()
    # Decoding errors (a truncated image) surface here, before Ray or MLflow is touched.
    data = load_study_data(prep.data)
    if opts.address in (None, "local"):
        # A fresh local Ray (~5 s, mostly waiting on its processes) overlaps with creating the
        # MLflow store (~3 s of schema migrations when it is new).
        with ThreadPoolExecutor(max_workers=1) as pool:
            ready = pool.submit(lambda: record.ensure_experiment(MlflowClient(prep.tracking_uri), prep.experiment))
            ray = connect_ray(opts.address)
            ready.result()
    else:
        # On a cluster, nothing is written to MLflow before the cluster passed its checks.
        ray = connect_ray(opts.address)
    cluster = preflight.check_cluster(ray, prep.tracking_uri, prep.storage_path, opts.storage_path is not None)
    resolve = resolver(cluster) if resolver is not None else None
    flags = {**{k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
             "kind": kind, "tracking_uri": prep.tracking_uri, "storage_path": prep.storage_path,
             "data_root": prep.data.root, "classes": ",".join(prep.data.classes), "val_split": prep.data.val_split,
             "split_seed": prep.data.split_seed, "subset": prep.data.subset, "git_commit": git_commit()}
    study_name = getattr(opts, "study_name", opts.name)
    optuna_storage = getattr(prep, "optuna_storage", None)
    if getattr(opts, "extends", None) and not opts.resume:
        fail_stale_optuna_trials(optuna_storage, study_name)
    callback = MlflowTrialLogger(
        prep.tracking_uri, prep.experiment, study_name, parent_params=flags,
        parent_artifacts={"search_space.json": prep.space.to_dict(), "data.json": data.summary(),
                          "cluster.json": cluster, f"{kind}.json": flags, **(artifacts or {})},
        data_config=prep.data.to_dict(), key=prep.path, role=kind, resolve=resolve).activate()
    parent = callback.open_parent()  # before any trial starts: a tracking problem stops us here
    if not opts.resume:
        manifest.write(prep.path, manifest.Manifest(
            kind=kind, name=opts.name, experiment=prep.experiment, tracking_uri=prep.tracking_uri,
            parent_run_id=parent, data=prep.data.to_dict(), space=prep.space.to_dict(), options=flags,
            optuna_storage=optuna_storage))
    tuner, _ = make_tuner(data, [callback, *extra_callbacks], cluster, resolve)
    if opts.resume:
        # Trials that finished while the last driver's MLflow calls were lost (a SIGKILL, an
        # outage) get their runs completed from Ray's results before the study continues.
        from study.sync import replay

        replay(callback, prep.path, resuming=True)
    results = tuner.fit()
    summary = SweepSummary(opts.name, prep.experiment, prep.tracking_uri, prep.path, parent,
                           undelivered=callback.last_undelivered, interrupted=callback.interrupted)
    for result in results:
        m = result.metrics or {}
        config = (resolve(result.config) if resolve is not None else result.config) or {}
        summary.trials.append({
            "trial_id": m.get("trial_id"), "val_acc": m.get("val_acc"), "train_acc": m.get("train_acc"),
            "val_loss": m.get("val_loss"), "param_count": m.get("param_count"), "epochs": m.get("epoch"),
            "status": m.get("status"), "config": config.get("train", {}), "tags": config.get("tags", {}),
            "path": result.path, "node_id": m.get("node_id"), "run_id": callback.runs.get(m.get("trial_id")),
            "error": str(result.error).splitlines()[0] if result.error else None})
    finished = [t for t in summary.trials if isinstance(t["val_acc"], (int, float)) and math.isfinite(t["val_acc"])]
    metric, mode = getattr(opts, "metric", "val_acc"), getattr(opts, "mode", "max")
    if finished:
        summary.best = (max if mode == "max" else min)(finished, key=lambda t: t[metric])
    summary.pareto = pareto_set([t for t in finished if t["param_count"] is not None])
    if not summary.interrupted:  # nothing left to resume: no Optuna trial may stay RUNNING
        fail_stale_optuna_trials(optuna_storage, study_name)
    try:  # the study's headline on its parent run (the UI's runs list shows it in the parent's row)
        record.log_headline(MlflowClient(prep.tracking_uri), callback.experiment_id, parent)
    except Exception as err:  # the server went away at the very end: the trials' runs are all there
        import logging

        logging.getLogger(__name__).warning("could not log the study's headline metrics: %s", err)
    return summary
