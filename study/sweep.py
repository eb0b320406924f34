"""The sweep design: Optuna (through Ray Tune's OptunaSearch) + ASHA over trainables.fit.

``prepare`` validates everything that can be checked before Ray starts (``prepare_extension`` for
``--extend``); ``run_sweep`` runs the prepared sweep through ``study.runner.run_study``, with
``Sweep`` supplying the searcher and the scheduler.

Ray, MLflow and Optuna are imported inside the functions that use them (see study/runner.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from study import manifest, preflight
from study.errors import UsageError
from study.namelock import study_claimed
from study.runner import (
    Prepared,
    StudyOptions,
    StudySummary,
    check_options,
    check_study_path,
    fail_stale_optuna_trials,
    run_study,
    trial_dirname,
    trial_resources,
    tuner_for,
)
from study.space import SearchSpace, check_extension, load_space, space_from_mapping
from trainables.config import DataConfig
from trainables.data import check_data

DEFAULT_GRACE = 4  # ASHA's first rung: augmentation and schedules lose at 2 epochs what they win at 40
DEFAULT_REDUCTION = 3.0  # ASHA's reduction factor: a rung keeps the top 1/rf (docs/benchmarks.md#halving-replayed)
REDUCTION_BEFORE_FLAG = 3.0  # what sweeps ran with before --reduction-factor (their manifests lack it)
SAMPLERS = ("tpe", "gp", "qmc", "random")  # Optuna samplers that handle the conditional depth -> widths space


@dataclass(frozen=True)
class SweepOptions(StudyOptions):
    space: str | None = None
    num_samples: int = 32
    epochs: int | None = None  # every trial's epochs (None: the space's; 2 with --smoke)
    metric: str = "val_acc"
    objectives: tuple[str, ...] = ()
    scheduler: str = "asha"
    grace_epochs: int | None = None  # None: min(DEFAULT_GRACE, the trials' epochs)
    reduction_factor: float = DEFAULT_REDUCTION  # ASHA keeps the top 1/reduction_factor of each rung
    search: str = "tpe"  # tpe (Optuna through OptunaSearch) or random (Ray's BasicVariantGenerator)
    optuna_storage: str | None = None  # an Optuna RDB URL: the study is persisted there (optuna-dashboard)
    sampler: str = "tpe"  # the Optuna sampler behind --search tpe: tpe, gp, qmc or random
    extends: str | None = None  # --extend: the sweep whose Optuna study and MLflow parent run this one continues
    # Same flags, seed and data -> the same trials (study/reproducible.py); None: on for a local Ray
    # instance, off on a cluster (--address), where batches wait for the slowest node.
    reproducible: bool | None = None
    # Each trial trains its recipe with this many seeds as one population and is scored by their
    # mean (trainables/seeds.py): the search ranks recipes, not lucky seeds.
    seeds_per_trial: int | None = None  # None: 1, or on --extend/--resume the sweep's own

    @property
    def is_reproducible(self) -> bool:
        if self.reproducible is not None:
            return self.reproducible
        return self.address in (None, "local")

    @property
    def study_name(self) -> str:
        """The sweep as MLflow and Optuna know it (an extension's trials join the sweep it extends)."""
        return self.extends or self.name


SweepPrepared = Prepared[SweepOptions, SearchSpace]


def default_optuna_storage(tracking_uri: str, storage_path: str) -> str | None:
    """The Optuna study's database beside the MLflow store: optuna.db in the sqlite file's folder
    (or beside a local mlruns folder); for a tracking server, in a local Ray storage folder."""
    if tracking_uri.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///") :]))
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        path = urlparse(tracking_uri).path if tracking_uri.startswith("file:") else tracking_uri
        folder = os.path.dirname(os.path.abspath(path.rstrip("/")))
    elif "://" not in storage_path:
        folder = storage_path
    else:
        return None  # a server and a cloud storage path: give --optuna-storage
    return "sqlite:///" + os.path.join(folder, "optuna.db")


def prepare(opts: SweepOptions, data: DataConfig, space: SearchSpace | None = None) -> SweepPrepared:
    """Every check that needs neither Ray nor training; raises UsageError with one line.
    ``space`` replaces the space file (an extension's checked space)."""
    opts = dataclasses.replace(opts, reproducible=opts.is_reproducible)  # the manifest records the mode used
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
    if opts.epochs is not None and opts.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {opts.epochs}")
    if opts.grace_epochs is not None and opts.grace_epochs < 1:
        raise UsageError(f"--grace-epochs must be >= 1, got {opts.grace_epochs}")
    spt = opts.seeds_per_trial
    if spt is not None and (isinstance(spt, bool) or not isinstance(spt, int) or spt < 1):
        raise UsageError(f"--seeds-per-trial must be an integer >= 1, got {spt}")
    opts = dataclasses.replace(opts, seeds_per_trial=spt or 1)
    check_options(opts)
    if opts.optuna_storage not in (None, "none"):
        if opts.search != "tpe":
            raise UsageError("--optuna-storage needs --search tpe (random search has no Optuna study)")
        check_optuna_storage(opts.optuna_storage)
    space = space if space is not None else load_space(opts.space)
    budget = opts.epochs or (2 if opts.smoke else None)
    if budget is not None:
        space = space.with_fixed(epochs=budget)
    epochs = space.dimensions.get("epochs")
    if epochs is None or epochs.fixed is None:
        raise UsageError("search space: epochs must be fixed (or give --epochs): ASHA needs a budget")
    if epochs.fixed < 1:
        raise UsageError(f"search space: epochs must be >= 1 in a sweep, got {epochs.fixed}")
    if opts.is_reproducible and opts.search == "random" and opts.scheduler == "asha":
        raise UsageError(
            "--search random with --scheduler asha is not reproducible (Ray's random search does not "
            "batch): use --sampler random (Optuna's, reproducible), --scheduler none, or --no-reproducible"
        )
    if opts.scheduler == "asha" and opts.grace_epochs is not None and opts.grace_epochs > epochs.fixed:
        raise UsageError(f"--grace-epochs {opts.grace_epochs} exceeds the {epochs.fixed} epochs of a trial")
    check_reduction_factor(opts.reduction_factor, sweep_grace(opts, int(epochs.fixed)), int(epochs.fixed))
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
        opts = dataclasses.replace(
            opts,
            extends=found.options.get("extends") or None,
            reproducible=bool(found.options.get("reproducible", False)),  # the mode it started in
            seeds_per_trial=int(found.options.get("seeds_per_trial", 1)),
        )
    elif optuna_storage is None and opts.search == "tpe":
        optuna_storage = default_optuna_storage(uri, storage)
    if optuna_storage == "none":
        optuna_storage = None
    return Prepared(
        opts,
        space,
        data,
        uri,
        opts.experiment or opts.study_name,
        storage,
        int(epochs.fixed),
        study_name=opts.study_name,
        metric=opts.metric,
        optuna_storage=optuna_storage,
    )


def sweep_grace(opts: SweepOptions, epochs: int) -> int:
    """ASHA's grace: --grace-epochs, else DEFAULT_GRACE or the trials' epochs when fewer."""
    return opts.grace_epochs or min(DEFAULT_GRACE, epochs)


def check_reduction_factor(rf, grace: int, max_t: int) -> None:
    """A factor whose rungs below ``max_t`` each fall on an epoch of their own. (Two milestones on one
    epoch make Ray's ASHA decide the second an epoch late, and near 1 the rungs never end.)"""
    if isinstance(rf, bool) or not isinstance(rf, numbers.Real) or not math.isfinite(rf) or rf <= 1:
        raise UsageError(f"--reduction-factor must be a finite number above 1, got {rf}")
    previous, k = None, 0
    while grace * rf**k < max_t:  # at most max_t steps: each one moves a whole epoch, or fails
        epoch = math.ceil(grace * rf**k - 1e-9)
        if epoch == previous:
            raise UsageError(
                f"--reduction-factor {rf} puts two of ASHA's rungs on epoch {epoch} (grace {grace}): give a larger one"
            )
        previous, k = epoch, k + 1


def prepare_extension(opts: SweepOptions, data: DataConfig | None, count: int) -> SweepPrepared:
    """``--extend N`` of sweep ``opts.name``: N more trials drawn by the sweep's own Optuna study
    (reloaded, so the sampler is warm-started from every earlier trial), logged under the same
    MLflow parent run. Runs as a Tune experiment of its own, NAME-ext1, NAME-ext2, ...; the search
    options, data and (unless --space widens it) space are the sweep's."""
    if count < 1:
        raise UsageError(f"--extend must be >= 1, got {count}")
    if opts.resume:
        raise UsageError("--extend and --resume do not go together: resume an interrupted extension by its own --name")
    storage = manifest.storage_root(opts.storage_path)
    base_path = manifest.experiment_path(storage, opts.name)
    if not manifest.exists(base_path):
        raise UsageError(f"--extend: no sweep named {opts.name!r} under {storage}")
    base = manifest.read(base_path)
    if base.kind != "sweep":
        raise UsageError(f"--extend: {opts.name!r} under {storage} is a {base.kind} study, not a sweep")
    if base.options.get("extends"):
        raise UsageError(f"--extend: {opts.name!r} is itself an extension; extend {base.options['extends']!r}")
    if base.optuna_storage is None:
        raise UsageError(
            f"--extend: sweep {opts.name!r} kept no Optuna study (it ran with --search random or "
            "--optuna-storage none), so nothing can warm-start the search"
        )
    status = _parent_status(base.tracking_uri, base.parent_run_id)
    if status != "FINISHED":
        raise UsageError(
            f"--extend: sweep {opts.name!r} has not finished (its MLflow parent run is {status}): "
            f"continue it with --resume first"
        )
    old_space = space_from_mapping(base.space, f"sweep {opts.name}")
    space = old_space
    if opts.space is not None:
        space = load_space(opts.space)
        check_extension(old_space, space)
    k = 1
    while manifest.exists(manifest.experiment_path(storage, f"{opts.name}-ext{k}")):
        k += 1
    flags = base.options
    base_seeds = int(flags.get("seeds_per_trial", 1))
    if opts.seeds_per_trial not in (None, base_seeds):
        raise UsageError(
            f"--extend: sweep {opts.name!r} scores each trial over {base_seeds} seed(s); its extension "
            f"must too (got --seeds-per-trial {opts.seeds_per_trial})"
        )
    objectives = tuple(o for o in str(flags.get("objectives") or "").split(",") if o)
    ext = dataclasses.replace(
        opts,
        name=f"{opts.name}-ext{k}",
        extends=opts.name,
        num_samples=count,
        epochs=None,
        metric=flags.get("metric", opts.metric),
        objectives=objectives,
        scheduler=flags.get("scheduler", opts.scheduler),
        grace_epochs=flags.get("grace_epochs"),
        reduction_factor=float(flags.get("reduction_factor", REDUCTION_BEFORE_FLAG)),
        search="tpe",
        sampler=flags.get("sampler", opts.sampler),
        # The sweep's own mode unless this command says otherwise (a sweep from before the flag: async).
        reproducible=opts.reproducible if opts.reproducible is not None else bool(flags.get("reproducible", False)),
        seed=int(flags.get("seed", 0)) + k,
        seeds_per_trial=base_seeds,
        tracking_uri=base.tracking_uri,
        experiment=base.experiment,
        optuna_storage=base.optuna_storage,
        storage_path=storage,
    )
    data = data if data is not None else DataConfig.from_dict(base.data)
    return prepare(ext, data, space)


def _parent_status(tracking_uri: str, run_id: str) -> str:
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.status
    except Exception as err:  # the store is gone, or the run was deleted
        raise UsageError(
            f"--extend: cannot read the sweep's parent run {run_id} at {tracking_uri}: {str(err).splitlines()[0]}"
        ) from None


def warm_start(url: str | None, study_name: str, directions: list[str]):
    """An in-memory Optuna storage whose study holds every finished trial of the persisted study
    ``study_name``: the searcher of an extension samples as if it had run them itself."""
    import optuna

    memory = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=memory, study_name=study_name, directions=directions)
    if url is not None:
        done = optuna.load_study(study_name=study_name, storage=url).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        )
        # In a stable order (the persisted copy is written in completion order), so that a reproducible
        # sweep's extension is reproducible too.
        study.add_trials(sorted(done, key=lambda t: (json.dumps(t.params, sort_keys=True, default=str), t.values)))
    return memory


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
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=startup
    )


def check_optuna_storage(url: str) -> None:
    """An Optuna RDB URL whose database can be created or opened (a sqlite file's folder must exist)."""
    if "://" not in url:
        raise UsageError(f"--optuna-storage {url!r}: expected a database URL such as sqlite:///optuna.db")
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(url[len("sqlite:///") :])) or "."
        if not os.path.isdir(folder):
            raise UsageError(f"--optuna-storage {url}: folder {folder} does not exist")


def build_tuner(
    prep: SweepPrepared, data, callbacks: list, cluster: dict, points_to_evaluate: list[dict] | None = None
):
    """The sweep's Tuner: Optuna TPE (or Ray's random search) and ASHA."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from study.optuna_mirror import OptunaStudyMirror

    opts = prep.options
    if opts.extends and not opts.resume:  # an earlier, killed extension may have left trials RUNNING
        fail_stale_optuna_trials(prep.optuna_storage, prep.study_name)
    resources, device, concurrency = trial_resources(opts, cluster)
    space_fn = prep.space.define_by_run(
        seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device, seeds_per_trial=opts.seeds_per_trial
    )
    sampler = make_sampler(opts.sampler, opts.seed, max(concurrency, min(10, opts.num_samples // 3)))
    param_space = None
    if opts.search == "random":
        searcher = BasicVariantGenerator(random_state=opts.seed, max_concurrent=concurrency)
        param_space = prep.space.tune_param_space(
            seed=opts.seed * 100_000, threads=opts.cpus_per_trial, device=device, seeds_per_trial=opts.seeds_per_trial
        )
    else:
        metric, mode = (["val_acc", "param_count"], ["max", "min"]) if opts.objectives else (prep.metric, prep.mode)
        metrics, modes = (metric, mode) if isinstance(metric, list) else ([metric], [mode])
        directions = ["maximize" if m == "max" else "minimize" for m in modes]
        # The searcher's own study stays in memory, snapshotted with Tune's state, so a resume
        # always matches the trials Tune restores; the persisted copy is written by
        # OptunaStudyMirror. An extension's in-memory study starts with every earlier trial.
        storage = warm_start(prep.optuna_storage, prep.study_name, directions) if opts.extends else None
        searcher = OptunaSearch(
            space=space_fn,
            metric=metric,
            mode=mode,
            sampler=sampler,
            points_to_evaluate=points_to_evaluate,
            storage=storage,
            study_name=prep.study_name if storage is not None else None,
        )
        if prep.optuna_storage:
            callbacks = [
                *callbacks,
                OptunaStudyMirror(
                    prep.optuna_storage, prep.study_name, metrics, directions, prep.space.optuna_distributions()
                ),
            ]
        if opts.is_reproducible:
            from study.reproducible import OrderedBatchLimiter

            searcher = OrderedBatchLimiter(searcher, max_concurrent=concurrency)
        else:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    scheduler = make_scheduler(prep, concurrency)
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=opts.num_samples,
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
    return tuner_for(prep, data, resources, callbacks, tune_config, param_space), concurrency


def make_scheduler(prep: SweepPrepared, concurrency: int):
    """The sweep's early stopping: ASHA (``BatchedHalving`` in the reproducible mode, deciding per
    batch of ``concurrency`` trials), or None for ``--scheduler none``."""
    from ray.tune.schedulers import ASHAScheduler

    opts = prep.options
    scheduler = None
    grace = sweep_grace(opts, prep.epochs)
    if opts.scheduler == "asha" and opts.is_reproducible:
        from study.reproducible import BatchedHalving

        scheduler = BatchedHalving(
            metric=prep.metric,
            mode=prep.mode,
            max_t=prep.epochs,
            grace_period=grace,
            reduction_factor=opts.reduction_factor,
            batch_size=concurrency,
        )
    elif opts.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=prep.metric,
            mode=prep.mode,
            max_t=prep.epochs,
            grace_period=grace,
            reduction_factor=opts.reduction_factor,
        )
    return scheduler


@dataclass(frozen=True)
class Sweep:
    """The sweep as a ``study.runner.Design``: its searcher and scheduler; no extra artefacts."""

    points_to_evaluate: tuple[dict, ...] = ()  # configs the searcher tries first
    kind: str = "sweep"

    def build_tuner(self, prep: SweepPrepared, data, callbacks: list, cluster: dict, resolve=None):
        return build_tuner(prep, data, callbacks, cluster, list(self.points_to_evaluate) or None)

    def artifacts(self, prep: SweepPrepared) -> dict:
        return {}

    def resolver(self, prep: SweepPrepared, cluster: dict) -> None:
        return None  # a sweep's trials carry their full config


def run_sweep(
    prep: SweepPrepared, points_to_evaluate: list[dict] | None = None, extra_callbacks: list = ()
) -> StudySummary:
    with study_claimed(prep, "sweep"):
        return run_study(prep, Sweep(tuple(points_to_evaluate or ())), extra_callbacks=extra_callbacks)


def checkpoint_sizes(prep: SweepPrepared, draws: int = 500) -> list[int]:
    """Each trial's expected checkpoint size in bytes (study.runner.checkpoint_bytes), for --check:
    the mean over random draws of the space's depth, widths and optimizer."""
    import numpy as np

    from study.runner import checkpoint_bytes

    rng = np.random.default_rng(0)
    dims = prep.space.dimensions

    def draw(name: str, default):
        d = dims.get(name)
        if d is None:
            return default
        if d.fixed is not None:
            return d.fixed
        if d.choices:
            return d.choices[rng.integers(len(d.choices))]
        if d.log:
            return float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
        return float(rng.uniform(d.low, d.high))

    sizes = []
    for _ in range(draws):
        depth = int(round(draw("depth", 1)))
        hidden = [int(round(draw("width", 512))) for _ in range(depth)]
        sizes.append(checkpoint_bytes(hidden, str(draw("optimizer", "sgd")), float(draw("momentum", 0.0))))
    # A trial of K seeds keeps one population checkpoint: K members' weights and optimizer state.
    return [int(np.mean(sizes)) * (prep.options.seeds_per_trial or 1)] * prep.options.num_samples
