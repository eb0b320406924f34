"""`birdplane rerun`: retrain a study's rank-th best trial with several seeds, now with test numbers.

The trial's exact config comes from its config.json artifact (its MLflow params are the
cross-check). A rerun's seeds run as parallel Ray tasks; a confirmation's trials each train their
seeds as one population in one task. The driver logs each seed as a nested MLflow run.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient

from analysis.record import (
    CONFIG_ARTIFACT,
    MODEL_ARTIFACT,
    REGISTERED_ALIAS,
    ROLE_CONFIRM,
    ROLE_RERUN,
    ROLE_RERUN_SEED,
    TAG_CONFIRMS,
    TAG_PARENT,
    TAG_POPULATION,
    TAG_REPRODUCED,
    TAG_RERUN_OF,
    TAG_ROLE,
    TAG_SEED,
    best_of,
    flat_params,
)
from analysis.runs import load_histories, read_json_artifact
from analysis.statistics import confirmation, tail_mean
from study import records as store
from study.errors import UsageError
from study.reporting import open_study
from trainables.config import DataConfig, TrainConfig

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass(frozen=True)
class RerunOptions:
    experiment: str
    rank: int = 1
    metric: str = "val_acc"
    seeds: int = 3
    epochs: int | None = None
    tracking_uri: str | None = None
    address: str | None = None
    data_root: str | None = None
    register: str | None = None  # register the model in MLflow's registry under this name


@dataclass
class RerunSummary:
    trial_run_id: str
    trial_id: str
    trial_metric: float
    parent_run_id: str
    seeds: list[int]
    runs: list[dict] = field(default_factory=list)  # per seed: run_id, seed, val_acc, test_acc, ...
    reproduced: bool | None = None
    model_uri: str = ""
    registered: dict | None = None  # {"name", "version", "uri", "alias_uri"} with --register
    # final with final, best with best; the trial's own seed apart from the independent ones
    like_for_like: list[dict] = field(default_factory=list)


def pick_trial(trials: pd.DataFrame, rank: int, metric: str) -> pd.Series:
    """The rank-th best trial; ties go to fewer parameters, then the earlier run id."""
    ascending = metric == "val_loss"
    ok = trials.dropna(subset=[metric])
    ok = ok[ok["outcome"].isin(["completed", "stopped_early"])]
    ordered = ok.sort_values([metric, "param_count", "run_id"], ascending=[ascending, True, True])
    if rank > len(ordered):
        raise UsageError(f"--rank {rank}: the study has only {len(ordered)} finished trials")
    return ordered.iloc[rank - 1]


def trial_configs(client: MlflowClient, trial: pd.Series) -> tuple[TrainConfig, DataConfig]:
    resolved = read_json_artifact(client, trial["run_id"], CONFIG_ARTIFACT)
    if not resolved or "train" not in resolved:
        raise UsageError(f"run {trial['run_id']} has no config.json artifact to rebuild the trial from")
    config = TrainConfig.from_dict(resolved["train"])
    params = client.get_run(trial["run_id"]).data.params
    for key, value in flat_params(config.to_dict()).items():
        if key in params and params[key] != value:
            raise UsageError(f"run {trial['run_id']}: config.json says {key}={value}, params say {params[key]}")
    return config, DataConfig.from_dict(resolved["data"])


def first_new_seed(params: dict[str, str], seed: int) -> int:
    """Where a trial's retrainings start: at its own ``seed`` (that retraining reproduces it), or,
    for a trial scored over several seeds (``sweep --seeds-per-trial``: its run's params hold
    ``search.seeds``), after them, so that every retraining is independent of the numbers that
    selected the trial."""
    raw = params.get("search.seeds")
    seeds = [int(s) for s in raw.split(",")] if raw else []
    return max(seeds) + 1 if len(seeds) > 1 else seed


def train_seed(config_dict: dict, data, with_test: bool = True) -> dict:
    """One rerun, in a Ray task: fit, then the official test split, touched here for the first time.

    Test numbers come from the weights of the best-val epoch (chosen on validation only); the last
    epoch's test numbers are reported beside them. A confirmation (``with_test=False``) trains
    only: selection must not see the test split.
    """
    from trainables.loop import fit

    config = TrainConfig.from_dict(config_dict)
    return seed_outcome(config, data, fit(config, data), with_test)


def train_seeds(config_dicts: list[dict], data) -> list[dict]:
    """One confirmed trial's seeds, in one Ray task: trained as one population
    (``trainables.population.fit_population``, as ``birdplane train --seeds``), each member's
    outcome as ``train_seed(..., with_test=False)`` gives it, within float tolerance. Validation
    only. Each outcome's ``population`` is how many members trained together."""
    from trainables.population import fit_population

    configs = [TrainConfig.from_dict(c) for c in config_dicts]
    results = fit_population(configs, data)
    return [
        {**seed_outcome(config, data, result, with_test=False), "population": len(results)}
        for config, result in zip(configs, results, strict=True)
    ]


def seed_outcome(config: TrainConfig, data, result, with_test: bool) -> dict:
    """What the driver logs of one seed's FitResult: history, status, best epoch, the model
    bundle (last and best-epoch weights), and with ``with_test`` the test numbers."""
    from trainables.bundle import bundle_args
    from trainables.loop import evaluate, normalise, pick_device
    from trainables.losses import ChapterLoss
    from trainables.tune_adapter import data_meta

    last_state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    best_state = {k: v.detach().cpu() for k, v in result.best_model.items()} if result.best_model else None
    tests = {}
    if with_test:
        device = pick_device(config.device)
        test_x, test_y = normalise(data.test.x, data.mean, data.std, device), data.test.y.to(device)
        loss = ChapterLoss(config.loss, len(data.classes))
        last = evaluate(result.model, test_x, test_y, loss)
        if best_state is not None:
            result.model.load_state_dict(result.best_model)
        test = evaluate(result.model, test_x, test_y, loss)
        tests = {"test_acc": test["acc"], "test_loss": test["loss"], "test_acc_last": last["acc"]}
    last_epoch = result.history[-1]["epoch"] if result.history else 0
    return {
        "history": result.history,
        "status": result.status,
        "param_count": result.param_count,
        **tests,
        "best_epoch": result.best_epoch,
        "meta": data_meta(data),
        "config": config.to_dict(),
        "bundle": bundle_args(config.to_dict(), data_meta(data), last_state, last_epoch, best_state, result.best_epoch),
    }


def same_history(original: pd.DataFrame, rerun: list[dict]) -> bool:
    """Bit-identical per-epoch metrics (as MLflow stored them: float64 of the same Python floats)."""
    mine = {(r["epoch"], k): float(r[k]) for r in rerun for k in COMPARED}
    theirs = {
        (int(row["epoch"]), k): float(row[k])
        for _, row in original.iterrows()
        for k in COMPARED
        if not (isinstance(row[k], float) and math.isnan(row[k]))
    }
    return (
        bool(theirs)
        and all(mine.get(key) == value for key, value in theirs.items())
        and len({e for e, _ in theirs}) == len({e for e, _ in mine})
    )


def log_seed_run(client, experiment_id: str, run_name: str, tags: dict, outcome: dict, data_cfg) -> str:
    """One retraining as a finished child run (``tags`` name its parent, role and seed)."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    store.log_params(client, run_id, {**outcome["config"], "depth": len(outcome["config"]["hidden_sizes"])})
    store.write_finished_run(
        client,
        run_id,
        history=outcome["history"],
        after_step=-1,
        param_count=outcome["param_count"],
        outcome=outcome["status"],
        resolved_config={"train": outcome["config"], "data": data_cfg.to_dict(), "normalisation": outcome["meta"]},
        model=outcome["bundle"],
        extra_metrics={k: outcome[k] for k in ("test_acc", "test_loss", "test_acc_last") if k in outcome},
    )
    return run_id


def prepare_rerun(opts: RerunOptions):
    if opts.rank < 1 or opts.seeds < 1 or (opts.epochs is not None and opts.epochs < 1):
        raise UsageError("--rank, --seeds and --epochs must be >= 1")
    if opts.metric not in ("val_acc", "val_loss"):
        raise UsageError(f"--metric must be val_acc or val_loss, got {opts.metric!r}")
    client, study, trials, _ = open_study(opts.tracking_uri, opts.experiment)
    if opts.register is not None:
        check_registry(client, opts.register)  # before hours of training, not after
    trial = pick_trial(trials, opts.rank, opts.metric)
    config, data_cfg = trial_configs(client, trial)
    if opts.data_root:
        data_cfg = DataConfig.from_dict({**data_cfg.to_dict(), "root": opts.data_root})
    from trainables.data import check_data

    check_data(data_cfg)
    return client, study, trial, config, data_cfg


def like_for_like(
    client: MlflowClient, trial: pd.Series, seed: int, outcomes: list[dict], n_val: int | None
) -> list[dict]:
    """The selected trial against its retrainings (``analysis.statistics.confirmation``): final
    (the mean of the last epochs) against final, best epoch against best epoch; the retraining with
    the trial's own ``seed`` reproduces it, so only the other seeds count as independent."""
    curve = load_histories(client, [trial["run_id"]], ("val_acc",))["val_acc"].tolist()
    selected = {
        "seed": seed,
        "final": tail_mean(curve),
        "best": best_of([{"epoch": i + 1, "val_acc": v} for i, v in enumerate(curve)]).get("best_val_acc"),
    }
    runs = [
        {
            "seed": o["seed"],
            "final": tail_mean([r["val_acc"] for r in o["history"]]),
            "best": best_of(o["history"]).get("best_val_acc"),
        }
        for o in outcomes
    ]
    return confirmation(selected, runs, n_val=n_val)


def run_rerun(opts: RerunOptions) -> RerunSummary:
    from study.runner import connect_ray
    from trainables.data import load_study_data

    client, study, trial, config, data_cfg = prepare_rerun(opts)
    epochs = opts.epochs or int(trial["epochs_run"])
    start = first_new_seed(client.get_run(trial["run_id"]).data.params, config.seed)
    seeds = [start + i for i in range(opts.seeds)]
    data = load_study_data(data_cfg, include_test=True)
    ray = connect_ray(opts.address)
    data_ref = ray.put(data)
    task = ray.remote(num_cpus=max(1, config.threads))(train_seed)
    futures = [task.remote(config.replace(seed=s, epochs=epochs).to_dict(), data_ref) for s in seeds]
    outcomes = ray.get(futures)

    parent = client.create_run(
        study.experiment_id,
        run_name=f"rerun_{trial['trial_id']}",
        tags={TAG_ROLE: ROLE_RERUN, TAG_RERUN_OF: trial["run_id"]},
    )
    parent_id = parent.info.run_id
    store.log_params(
        client,
        parent_id,
        {
            "rank": opts.rank,
            "metric": opts.metric,
            "seeds": ",".join(map(str, seeds)),
            "epochs": epochs,
            "trial_run_id": trial["run_id"],
        },
    )
    summary = RerunSummary(trial["run_id"], trial["trial_id"], float(trial[opts.metric]), parent_id, seeds)
    for seed, outcome in zip(seeds, outcomes, strict=False):
        run_id = log_seed_run(
            client,
            study.experiment_id,
            f"rerun_{trial['trial_id']}_seed{seed}",
            {TAG_PARENT: parent_id, TAG_ROLE: ROLE_RERUN_SEED, TAG_RERUN_OF: trial["run_id"], TAG_SEED: str(seed)},
            outcome,
            data_cfg,
        )
        last = outcome["history"][-1]
        best = best_of(outcome["history"])
        summary.runs.append(
            {
                "run_id": run_id,
                "seed": seed,
                "val_acc": last["val_acc"],
                "val_loss": last["val_loss"],
                "best_val_acc": best.get("best_val_acc"),
                "best_epoch": outcome["best_epoch"],
                "last_epoch": last["epoch"],
                "test_acc": outcome["test_acc"],
                "test_loss": outcome["test_loss"],
                "test_acc_last": outcome["test_acc_last"],
                "status": outcome["status"],
            }
        )
    n_val = len(data.val.y)
    summary.like_for_like = like_for_like(
        client, trial, config.seed, [{**o, "seed": s} for s, o in zip(seeds, outcomes, strict=True)], n_val
    )
    # A trial of several seeds (sweep --seeds-per-trial) holds their mean, not one seed's run: no
    # single retraining can reproduce it exactly, so the check is left unsaid (None).
    if epochs == int(trial["epochs_run"]) and start == config.seed:
        original = load_histories(client, [trial["run_id"]], COMPARED)
        summary.reproduced = same_history(original, outcomes[0]["history"])
    stats = {}
    for key in ("val_acc", "test_acc"):
        values = [r[key] for r in summary.runs]
        stats[f"{key}_mean"] = statistics.fmean(values)
        stats[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    store.log_metrics(client, parent_id, stats, step=0)
    store.set_tags(client, parent_id, {TAG_REPRODUCED: str(summary.reproduced)})
    store.finish_run(client, parent_id)
    summary.model_uri = f"runs:/{summary.runs[0]['run_id']}/model.pt"
    if opts.register is not None:
        summary.registered = register_model(client, opts.register, summary.runs[0]["run_id"], trial)
    return summary


REGISTERED_FOLDER = "model"  # the run's artifact folder a registered version points at (it holds model.pt)
REGISTERED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,254}$")


def check_registry(client, name: str) -> None:
    """A usable model name, and a tracking store that has a model registry."""
    if not REGISTERED_NAME.match(name) or "/" in name or "@" in name:
        raise UsageError(f"--register {name!r}: use letters, digits, '_', '-', '.' and spaces (no '/' or '@')")
    try:
        client.search_registered_models(max_results=1)
    except Exception as err:  # the store has no registry (MLflow raises several types)
        raise UsageError(
            f"--register: the tracking store {client.tracking_uri} has no model registry: {str(err).splitlines()[0]}"
        ) from None


def register_model(client, name: str, run_id: str, trial) -> dict:
    """Register the run's model.pt (the safe, weights-only bundle) as a new version of ``name`` and
    move the @champion alias to it; ``models:/NAME/VERSION`` and ``models:/NAME@champion`` then
    resolve to that file."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="birdplane: a fully connected airplane/bird classifier "
            "(weights-only bundle; load with `birdplane predict`)",
        )
    # A registered version's source is a folder (models:/ URIs download folders): the run's
    # model.pt is logged again under model/, and that folder registered.
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, MODEL_ARTIFACT, folder)
        client.log_artifact(run_id, path, artifact_path=REGISTERED_FOLDER)
    source = f"{client.get_run(run_id).info.artifact_uri}/{REGISTERED_FOLDER}"
    version = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={"birdplane.trial_run_id": str(trial["run_id"]), "format": "birdplane bundle (torch weights_only)"},
    )
    client.set_registered_model_alias(name, REGISTERED_ALIAS, version.version)
    return {
        "name": name,
        "version": int(version.version),
        "uri": f"models:/{name}/{version.version}",
        "alias_uri": f"models:/{name}@{REGISTERED_ALIAS}",
    }


# ---------------------------------------------------------------- confirmation of a sweep


@dataclass(frozen=True)
class ConfirmOptions:
    experiment: str
    pareto: bool = False  # the Pareto set (val_acc up, param_count down) of every finished trial
    top: int | None = None  # or the top K by val_acc
    seeds: int = 3
    epochs: int | None = None  # default: the study's full budget
    tracking_uri: str | None = None
    address: str | None = None
    data_root: str | None = None


@dataclass
class ConfirmSummary:
    parent_run_id: str
    epochs: int
    seeds: int
    trials: list[dict] = field(default_factory=list)  # per confirmed trial: sweep numbers and the seeds' mean/sd


def select_for_confirmation(trials: pd.DataFrame, pareto: bool, top: int | None) -> pd.DataFrame:
    """Trials to retrain: the Pareto set of every finished trial (stopped early or not), or the top K
    by final val_acc (ties: fewer parameters, then run id)."""
    from analysis.overfitting import pareto_front

    ok = trials.dropna(subset=["val_acc", "param_count"])
    ok = ok[ok["outcome"].isin(["completed", "stopped_early"])]
    if pareto:
        return pareto_front(ok).reset_index(drop=True)
    ordered = ok.sort_values(["val_acc", "param_count", "run_id"], ascending=[False, True, True])
    return ordered.head(top).reset_index(drop=True)


def run_confirm(opts: ConfirmOptions) -> ConfirmSummary:
    """Retrain a sweep's Pareto set (or top K) at the full budget with several seeds.

    Each trial's seeds train as one population in one Ray task (``train_seeds``; the trials' tasks
    run in parallel); each seed becomes a child run of the study's parent run, tagged
    ``confirms=<the trial's run id>`` and ``birdplane.population=<seeds trained together>``, so the
    report can rebuild the frontier from equal-budget, multi-seed numbers. Validation only: the test
    split stays untouched. A member equals its solo run within float tolerance, not bit for bit.
    """
    from analysis.capacity import epochs_of
    from study.runner import connect_ray
    from trainables.data import check_data, load_study_data

    if opts.pareto == (opts.top is not None):
        raise UsageError("give exactly one of --pareto and --top K")
    if (opts.top is not None and opts.top < 1) or opts.seeds < 1 or (opts.epochs is not None and opts.epochs < 1):
        raise UsageError("--top, --seeds and --epochs must be >= 1")
    client, study, trials, _ = open_study(opts.tracking_uri, opts.experiment)
    chosen = select_for_confirmation(trials, opts.pareto, opts.top)
    epochs = opts.epochs or epochs_of(study.space)
    if epochs is None:
        raise UsageError("the study records no fixed epoch budget: give --epochs")
    configs = [trial_configs(client, trial) for _, trial in chosen.iterrows()]
    data_cfg = configs[0][1]
    if opts.data_root:
        data_cfg = DataConfig.from_dict({**data_cfg.to_dict(), "root": opts.data_root})
    check_data(data_cfg)
    data = load_study_data(data_cfg)  # no test split: confirmation is selection
    ray = connect_ray(opts.address)
    data_ref = ray.put(data)
    jobs = []  # one task per trial: its seeds share every field a population must share
    for (_, trial), (config, _) in zip(chosen.iterrows(), configs, strict=False):
        task = ray.remote(num_cpus=max(1, config.threads))(train_seeds)
        start = first_new_seed(client.get_run(trial["run_id"]).data.params, config.seed)
        seeds = range(start, start + opts.seeds)
        members = [config.replace(seed=seed, epochs=epochs).to_dict() for seed in seeds]
        jobs.append((trial, seeds, task.remote(members, data_ref)))
    summary = ConfirmSummary(study.parent_run_id, epochs, opts.seeds)
    config_of = {trial["run_id"]: config for (_, trial), (config, _) in zip(chosen.iterrows(), configs, strict=True)}
    by_trial: dict[str, list[dict]] = {}
    outcomes_of: dict[str, list[dict]] = {}
    for trial, seeds, future in jobs:
        for seed, outcome in zip(seeds, ray.get(future), strict=True):
            by_trial.setdefault(trial["run_id"], []).append(
                log_confirmation(client, study, trial, seed, outcome, data_cfg)
            )
            outcomes_of.setdefault(trial["run_id"], []).append({**outcome, "seed": seed})
    for _, trial in chosen.iterrows():
        runs = by_trial[trial["run_id"]]
        entry = {
            "trial_id": trial["trial_id"],
            "run_id": trial["run_id"],
            "param_count": int(trial["param_count"]),
            "sweep_val_acc": float(trial["val_acc"]),
            "sweep_epochs": int(trial["epochs_run"]),
            "runs": runs,
            "like_for_like": like_for_like(
                client, trial, config_of[trial["run_id"]].seed, outcomes_of[trial["run_id"]], len(data.val.y)
            ),
        }
        for key in ("best_val_acc", "val_acc", "train_acc"):
            values = [r[key] for r in runs if r[key] is not None]
            entry[f"{key}_mean"] = statistics.fmean(values) if values else None
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.trials.append(entry)
    return summary


def log_confirmation(client, study, trial, seed: int, outcome: dict, data_cfg) -> dict:
    """One confirmed seed as a child run of the study (tagged with the trial it confirms and the
    size of the population it trained in); its numbers for the summary."""
    run_id = log_seed_run(
        client,
        study.experiment_id,
        f"confirm_{trial['trial_id']}_seed{seed}",
        {
            TAG_PARENT: study.parent_run_id,
            TAG_ROLE: ROLE_CONFIRM,
            TAG_CONFIRMS: trial["run_id"],
            TAG_SEED: str(seed),
            TAG_POPULATION: str(outcome["population"]),
        },
        outcome,
        data_cfg,
    )
    best = best_of(outcome["history"])
    return {
        "run_id": run_id,
        "seed": seed,
        "best_val_acc": best.get("best_val_acc"),
        "val_acc": outcome["history"][-1]["val_acc"],
        "train_acc": outcome["history"][-1]["train_acc"],
    }
