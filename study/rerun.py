"""`birdplane rerun`: retrain a study's rank-th best trial with several seeds, now with test numbers.

The trial's exact config comes from its config.json artifact (its MLflow params are the
cross-check). Seeds run as parallel Ray tasks; the driver logs each as a nested MLflow run.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient

from analysis import record as store
from analysis.runs import StudyNotFound, finished, load_histories, load_study, read_json_artifact
from study import preflight
from study.errors import UsageError
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
    resolved = read_json_artifact(client, trial["run_id"], store.CONFIG_ARTIFACT)
    if not resolved or "train" not in resolved:
        raise UsageError(f"run {trial['run_id']} has no config.json artifact to rebuild the trial from")
    config = TrainConfig.from_dict(resolved["train"])
    params = client.get_run(trial["run_id"]).data.params
    for key, value in store.flat_params(config.to_dict()).items():
        if key in params and params[key] != value:
            raise UsageError(f"run {trial['run_id']}: config.json says {key}={value}, params say {params[key]}")
    return config, DataConfig.from_dict(resolved["data"])


def train_seed(config_dict: dict, data) -> dict:
    """One rerun, in a Ray task: fit, then the official test split, touched here for the first time.

    Test numbers come from the weights of the best-val epoch (chosen on validation only); the last
    epoch's test numbers are reported beside them.
    """
    from trainables.bundle import bundle_args
    from trainables.losses import ChapterLoss
    from trainables.loop import evaluate, fit, normalise, pick_device
    from trainables.tune_adapter import data_meta

    config = TrainConfig.from_dict(config_dict)
    result = fit(config, data)
    device = pick_device(config.device)
    test_x, test_y = normalise(data.test.x, data.mean, data.std, device), data.test.y.to(device)
    loss = ChapterLoss(config.loss, len(data.classes))
    last_state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    last = evaluate(result.model, test_x, test_y, loss)
    best_state = {k: v.detach().cpu() for k, v in result.best_model.items()} if result.best_model else None
    if best_state is not None:
        result.model.load_state_dict(result.best_model)
    test = evaluate(result.model, test_x, test_y, loss)
    last_epoch = result.history[-1]["epoch"] if result.history else 0
    return {"history": result.history, "status": result.status, "param_count": result.param_count,
            "test_acc": test["acc"], "test_loss": test["loss"], "test_acc_last": last["acc"],
            "best_epoch": result.best_epoch, "meta": data_meta(data), "config": config.to_dict(),
            "bundle": bundle_args(config.to_dict(), data_meta(data), last_state, last_epoch, best_state,
                                  result.best_epoch)}


def same_history(original: pd.DataFrame, rerun: list[dict]) -> bool:
    """Bit-identical per-epoch metrics (as MLflow stored them: float64 of the same Python floats)."""
    mine = {(r["epoch"], k): float(r[k]) for r in rerun for k in COMPARED}
    theirs = {(int(row["epoch"]), k): float(row[k]) for _, row in original.iterrows() for k in COMPARED
              if not (isinstance(row[k], float) and math.isnan(row[k]))}
    return bool(theirs) and all(mine.get(key) == value for key, value in theirs.items()) and \
        len({e for e, _ in theirs}) == len({e for e, _ in mine})


def log_seed_run(client, experiment_id, parent_id, trial, seed, outcome, data_cfg) -> str:
    run = client.create_run(experiment_id, run_name=f"rerun_{trial['trial_id']}_seed{seed}", tags={
        store.TAG_PARENT: parent_id, store.TAG_ROLE: store.ROLE_RERUN_SEED, store.TAG_RERUN_OF: trial["run_id"],
        store.TAG_SEED: str(seed)})
    run_id = run.info.run_id
    store.log_params(client, run_id, {**outcome["config"], "depth": len(outcome["config"]["hidden_sizes"])})
    store.write_finished_run(
        client, run_id, history=outcome["history"], after_step=-1, param_count=outcome["param_count"],
        outcome=outcome["status"],
        resolved_config={"train": outcome["config"], "data": data_cfg.to_dict(), "normalisation": outcome["meta"]},
        model=outcome["bundle"],
        extra_metrics={"test_acc": outcome["test_acc"], "test_loss": outcome["test_loss"],
                       "test_acc_last": outcome["test_acc_last"]})
    return run_id


def prepare_rerun(opts: RerunOptions):
    if opts.rank < 1 or opts.seeds < 1 or (opts.epochs is not None and opts.epochs < 1):
        raise UsageError("--rank, --seeds and --epochs must be >= 1")
    if opts.metric not in ("val_acc", "val_loss"):
        raise UsageError(f"--metric must be val_acc or val_loss, got {opts.metric!r}")
    uri = preflight.resolve_tracking_uri(opts.tracking_uri)
    preflight.check_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        study = load_study(client, opts.experiment)
    except StudyNotFound as err:
        raise UsageError(str(err)) from None
    trials = finished(study.trials)
    if trials.empty:
        raise UsageError(f"experiment {opts.experiment!r} has no finished trials")
    trial = pick_trial(trials, opts.rank, opts.metric)
    config, data_cfg = trial_configs(client, trial)
    if opts.data_root:
        data_cfg = DataConfig.from_dict({**data_cfg.to_dict(), "root": opts.data_root})
    from trainables.data import check_data

    check_data(data_cfg)
    return client, study, trial, config, data_cfg


def run_rerun(opts: RerunOptions) -> RerunSummary:
    from study.sweep import connect_ray
    from trainables.data import load_study_data

    client, study, trial, config, data_cfg = prepare_rerun(opts)
    epochs = opts.epochs or int(trial["epochs_run"])
    seeds = [config.seed + i for i in range(opts.seeds)]
    data = load_study_data(data_cfg, include_test=True)
    ray = connect_ray(opts.address)
    data_ref = ray.put(data)
    task = ray.remote(num_cpus=max(1, config.threads))(train_seed)
    futures = [task.remote(config.replace(seed=s, epochs=epochs).to_dict(), data_ref) for s in seeds]
    outcomes = ray.get(futures)

    parent = client.create_run(study.experiment_id, run_name=f"rerun_{trial['trial_id']}", tags={
        store.TAG_ROLE: store.ROLE_RERUN, store.TAG_RERUN_OF: trial["run_id"]})
    parent_id = parent.info.run_id
    store.log_params(client, parent_id, {"rank": opts.rank, "metric": opts.metric, "seeds": ",".join(map(str, seeds)),
                                         "epochs": epochs, "trial_run_id": trial["run_id"]})
    summary = RerunSummary(trial["run_id"], trial["trial_id"], float(trial[opts.metric]), parent_id, seeds)
    for seed, outcome in zip(seeds, outcomes):
        run_id = log_seed_run(client, study.experiment_id, parent_id, trial, seed, outcome, data_cfg)
        last = outcome["history"][-1]
        best = store.best_of(outcome["history"])
        summary.runs.append({"run_id": run_id, "seed": seed, "val_acc": last["val_acc"], "val_loss": last["val_loss"],
                             "best_val_acc": best.get("best_val_acc"), "best_epoch": outcome["best_epoch"],
                             "last_epoch": last["epoch"], "test_acc": outcome["test_acc"],
                             "test_loss": outcome["test_loss"], "test_acc_last": outcome["test_acc_last"],
                             "status": outcome["status"]})
    if epochs == int(trial["epochs_run"]):
        original = load_histories(client, [trial["run_id"]], COMPARED)
        summary.reproduced = same_history(original, outcomes[0]["history"])
    stats = {}
    for key in ("val_acc", "test_acc"):
        values = [r[key] for r in summary.runs]
        stats[f"{key}_mean"] = statistics.fmean(values)
        stats[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    store.log_metrics(client, parent_id, stats, step=0)
    store.set_tags(client, parent_id, {store.TAG_REPRODUCED: str(summary.reproduced)})
    store.finish_run(client, parent_id)
    summary.model_uri = f"runs:/{summary.runs[0]['run_id']}/model.pt"
    return summary
