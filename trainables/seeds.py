"""One recipe trained with several seeds as one trial: its record is the mean of its seeds' records.

``sweep --seeds-per-trial K`` ranks recipes, not lucky seeds. The trial's K seeds train as one
population (trainables.population); after each epoch the searcher and the scheduler see the mean
over the seeds of every metric, and the seeds' sd of val_acc beside it.

Each seed's *latest* record counts: a seed that diverged keeps its last record in every later
epoch's mean, so a recipe that fails on some seeds is not scored on its survivors alone. The
trial counts as diverged only when every seed diverged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainables.config import TrainConfig

NOT_MEANED = ("epoch", "param_count", "status")
SEED_SD = "val_acc_sd"  # the seeds' sample sd of val_acc (0 for one seed)


def seed_configs(config: TrainConfig, seeds: Sequence[int]) -> list[TrainConfig]:
    """The recipe once per seed: the members of the trial's population."""
    return [config.replace(seed=int(s)) for s in seeds]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mean_record(records: Sequence[dict]) -> dict:
    """The trial's record from its seeds' latest records (one per seed): the mean of every metric
    all of them hold, the sd of val_acc, the latest epoch, the shared param_count, and "diverged"
    only when every seed diverged. A non-finite value makes its mean non-finite (a diverged loss)."""
    if not records:
        raise ValueError("a trial of seeds needs at least one seed's record")
    keys = [k for k in records[0] if k not in NOT_MEANED and all(_number(r.get(k)) for r in records)]
    out = {k: math.fsum(float(r[k]) for r in records) / len(records) for k in keys}
    if "val_acc" in out:
        values = [float(r["val_acc"]) for r in records]
        if len(values) < 2:
            out[SEED_SD] = 0.0
        elif all(math.isfinite(v) for v in values):
            mean = out["val_acc"]
            out[SEED_SD] = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
        else:
            out[SEED_SD] = math.nan
    out["epoch"] = max(int(r["epoch"]) for r in records)
    if "param_count" in records[0]:
        out["param_count"] = records[0]["param_count"]
    diverged = all(r.get("status") == "diverged" for r in records)
    out["status"] = "diverged" if diverged else "completed"
    return out


def mean_history(histories: Sequence[Sequence[dict]], statuses: Sequence[str]) -> list[dict]:
    """The trial's per-epoch records from its seeds' histories, as ``mean_record`` saw them live:
    at each epoch, each seed's latest record so far (``statuses``: each seed's final status, which
    its last record carries)."""
    last_epochs = [h[-1]["epoch"] if h else 0 for h in histories]
    out = []
    for epoch in range(1, max(last_epochs, default=0) + 1):
        latest = []
        for history, last, status in zip(histories, last_epochs, statuses, strict=True):
            seen = [r for r in history if r["epoch"] <= epoch]
            if seen:
                latest.append({**seen[-1], "status": status if seen[-1]["epoch"] == last else "completed"})
        if len(latest) == len(histories):
            out.append(mean_record(latest))
    return out


def population_mean_history(state) -> list[dict]:
    """A trial of seeds' per-epoch records from its population's state (``members``, each with its
    history and status): what ``mean_record`` reported live, rebuilt after the fact."""
    statuses = [m["status"] if m["status"] in ("diverged", "stopped") else "completed" for m in state.members]
    return mean_history([m["history"] for m in state.members], statuses)
