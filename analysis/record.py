"""A birdplane run in MLflow: its tag and metric names, its parameter types, and what it summarises.

The contract between both floors: ``study/`` writes runs with these names (its writers are in
``study/records.py``), ``analysis/`` reads them back with the same names and types. Pure: nothing
here talks to MLflow, and nothing in ``analysis/`` writes to it (tests/test_floors.py).
"""

from __future__ import annotations

import dataclasses
import math
import typing

from trainables.config import TrainConfig
from trainables.model import size_label
from trainables.seeds import SEED_SD
from trainables.selection import best_record

# ---------------------------------------------------------------- names

TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_ROLE = "birdplane.role"
TAG_STUDY = (
    "birdplane.sweep"  # the study name (value kept from when every study was a sweep: stored studies still read)
)
TAG_TRIAL = "ray_trial_id"
TAG_OUTCOME = "outcome"
TAG_RERUN_OF = "rerun_of"
TAG_SEED = "seed"
TAG_REPRODUCED = "reproduced"

ROLE_SWEEP = "sweep"  # a sweep's parent run
ROLE_CAPACITY = "capacity"  # a capacity study's parent run
STUDY_ROLES = (ROLE_SWEEP, ROLE_CAPACITY)
ROLE_TRIAL = "trial"  # one trial of a sweep
ROLE_ORPHAN = "orphan"  # a finished trial's run that Ray's saved state never knew: kept, out of the study
ROLE_RERUN = "rerun"  # the parent of a rerun's seeds
ROLE_RERUN_SEED = "rerun_seed"
ROLE_CONFIRM = "confirm"  # a full-budget retraining of a sweep's trial, under the sweep's parent run
ROLE_TRIAL_SEED = "trial_seed"  # one seed of a sweep trial of several (--seeds-per-trial), nested under the trial's run

TAG_DESIGN = "birdplane.design"  # a capacity study's design: its grid, seeds, epochs and regulariser
TAG_CELL = "birdplane.cell"  # the cell of the grid: "[256,256]"
TAG_REGULARISER = "birdplane.regulariser"  # "augment=crop+flip" (or "none")
TAG_TUNE = "birdplane.tune"  # a tuned capacity study's nuisance value of the run: "lr=0.01" (or "none")
TAG_SELECTED = "birdplane.selected"  # "true"/"false": its value was the one kept for its size (val's selection half)
TAG_CONFIRMS = "confirms"  # the run id of the trial a confirmation run retrains
TAG_NODE = "birdplane.node"  # the Ray node a trial ran on (its last one, if retried elsewhere)
TAG_MEMBER = "birdplane.member"  # a population trial's member index ("0", "1", ...): its run's key with the trial id
TAG_POPULATION = "birdplane.population"  # a confirmation run: how many seeds trained with it as one population
REGISTERED_ALIAS = "champion"  # the alias `rerun --register` moves to the version it registers

EPOCH_METRICS = (
    "train_loss",
    "train_eval_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_ece",
    "val_select_loss",
    "val_select_acc",
    "val_report_loss",
    "val_report_acc",
    "gap",
    "epoch_seconds",
    "samples_per_second",
    "lr",
)
SEED_METRICS = (SEED_SD,)  # a trial of several seeds' run logs these per epoch too
CURVE_METRICS = (
    "train_loss",
    "train_eval_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_ece",
    "gap",
    "val_select_acc",
    "val_report_loss",
    "val_report_acc",
)
FINAL_METRICS = (
    "param_count",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "gap",
    "best_val_acc",
    "best_epoch",
    "epochs_run",
    "test_acc",
    "test_loss",
    "test_acc_last",
    "val_select_loss",
    "val_select_acc",
    "val_report_loss",
    "val_report_acc",
)

CONFIG_ARTIFACT = "config.json"
MODEL_ARTIFACT = "model.pt"


def _param_types() -> dict[str, type]:
    """Each TrainConfig field's type as MLflow must cast it back (params are stored as strings)."""
    hints = typing.get_type_hints(TrainConfig)
    types = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        types[f.name] = hint if hint in (int, float, str, bool) else tuple
    return types | {"depth": int}  # depth is logged beside hidden_sizes


PARAM_TYPES = _param_types()


def cast_params(params: dict[str, str]) -> dict:
    """MLflow's string params with their real types; widths as ``width_i`` columns for analysis."""
    out: dict = {}
    for key, kind in PARAM_TYPES.items():
        if key not in params:
            continue
        value = params[key]
        if kind is tuple:
            out[key] = tuple(int(v) for v in value.split(",")) if value else ()
        elif kind is int:
            out[key] = int(float(value))
        elif kind is bool:
            out[key] = value == "True"
        else:
            out[key] = kind(value)
    if out.get("hidden_sizes"):
        out["depth"] = len(out["hidden_sizes"])
        out["max_width"] = max(out["hidden_sizes"])
    for key, value in params.items():
        if key.startswith("search.width_"):
            out[key.removeprefix("search.")] = int(value)
    return out


def flat_params(values: dict) -> dict[str, str]:
    """Params as MLflow stores them: strings, sequences joined by commas."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)
    return out


def best_of(history: list[dict]) -> dict:
    """The best epoch's summary metrics (trainables.selection's rule); {} when there is none."""
    best = best_record(history)
    if best is None:
        return {}
    return {"best_val_acc": best["val_acc"], "best_epoch": best["epoch"]}


def headline(runs: list) -> dict[str, float]:
    """A study's headline for its parent run, from its trials' finished runs (every session's and
    every extension's): how many completed, were stopped early, diverged or failed, and the best
    final val_acc among those that completed (among all, when none did)."""
    counts = {"completed": 0, "stopped": 0, "diverged": 0, "failed": 0}
    full, every = [], []
    for run in runs:
        outcome = run.data.tags.get(TAG_OUTCOME)
        key = {"stopped_early": "stopped", "orphaned": None}.get(outcome, outcome)
        if key in counts:
            counts[key] += 1
        value = run.data.metrics.get("val_acc")
        if value is not None and math.isfinite(value) and outcome in ("completed", "stopped_early"):
            every.append(value)
            if outcome == "completed":
                full.append(value)
    out = {f"trials_{k}": float(v) for k, v in counts.items()}
    if every:
        out["study_best_val_acc"] = float(max(full or every))
    return out


def readable_name(train: dict) -> str:
    """A run name a person can read in the UI's runs list: "[505,103] relu bce adam"."""
    parts = [
        size_label(train.get("hidden_sizes", ())),
        train.get("activation"),
        train.get("loss"),
        train.get("optimizer"),
    ]
    return " ".join(str(x) for x in parts if x)
