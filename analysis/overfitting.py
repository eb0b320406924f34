"""Overfitting and capacity measures over a study's trials: pure functions of DataFrames and curves."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.statistics import loss_onset
from trainables.selection import best_record


def overfitting_onset(
    train_acc: Sequence[float], val_acc: Sequence[float], epochs: Sequence[int] | None = None, tol: float = 0.0
) -> int | None:
    """The first epoch after which val keeps falling while train keeps rising (on accuracy).

    Kept for reference, not used by the report: on one noisy curve some epoch nearly always
    qualifies (issue 17: 98% "onsets" on a flat val curve). The report's onset is
    analysis.statistics.loss_onset, on the smoothed val loss, calibrated against a null.

    Precisely: the earliest epoch e, not the last, such that at every later epoch t
    val_acc[t] < val_acc[e] - tol (validation never gets back to where it was at e) and
    train_acc[t] > train_acc[e] (training stays above where it was at e). None when no such
    epoch exists: the run never overfitted in that sense (or is too short to tell).
    """
    train, val = list(train_acc), list(val_acc)
    if len(train) != len(val):
        raise ValueError("train_acc and val_acc must have the same length")
    epochs = list(epochs) if epochs is not None else list(range(1, len(val) + 1))
    n = len(val)
    # Suffix extrema make the test O(n): max of val and min of train over t > e.
    later_val_max, later_train_min = [-math.inf] * n, [math.inf] * n
    for e in range(n - 2, -1, -1):
        later_val_max[e] = max(val[e + 1], later_val_max[e + 1])
        later_train_min[e] = min(train[e + 1], later_train_min[e + 1])
    for e in range(n - 1):
        if later_val_max[e] < val[e] - tol and later_train_min[e] > train[e]:
            return int(epochs[e])
    return None


def capacity_frontier(trials: pd.DataFrame, x: str = "param_count", y: str = "val_acc") -> pd.DataFrame:
    """The best ``y`` achievable at or below each ``x``: the trials where the running maximum rises."""
    ok = trials.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    best, keep = -math.inf, []
    for index, row in ok.iterrows():
        if row[y] > best:
            best = row[y]
            keep.append(index)
    return ok.loc[keep].reset_index(drop=True)


def compare_by(trials: pd.DataFrame, column: str, metric: str = "val_acc") -> pd.DataFrame:
    """Per value of ``column``: number of trials and the mean, median and best ``metric``."""
    if column not in trials.columns or metric not in trials.columns:
        return pd.DataFrame(columns=["trials", "mean", "median", "best"])
    ok = trials.dropna(subset=[column, metric])
    grouped = ok.groupby(column)[metric]
    table = pd.DataFrame(
        {"trials": grouped.size(), "mean": grouped.mean(), "median": grouped.median(), "best": grouped.max()}
    )
    return table.sort_values("best", ascending=False)


def edge_flags(
    trials: pd.DataFrame, space: dict, metric: str = "val_acc", top: int = 5, margin: float = 0.1
) -> pd.DataFrame:
    """Searched ranges whose best trials sit at an edge (the range may need widening).

    For each searched dimension, the ``top`` trials by ``metric`` are checked: a numeric value
    within ``margin`` of the range (in log units for log ranges) is at that edge; for choice lists
    of numbers the first and last choices are the edges. A dimension is flagged when more than half
    of the top trials sit at the same edge. Widths are checked layer by layer (width_0, width_1...).
    """
    best = trials.dropna(subset=[metric]).sort_values(metric, ascending=False).head(top)
    rows = []
    for name, spec in space.items():
        if not isinstance(spec, dict):
            continue
        columns = sorted(c for c in best.columns if c.startswith("width_")) if name == "width" else [name]
        for column in columns:
            if column not in best.columns:
                continue
            values = best[column].dropna().tolist()
            if not values:
                continue
            if "choices" in spec:
                choices = spec["choices"]
                if not all(isinstance(c, (int, float)) for c in choices) or len(choices) < 2:
                    continue
                low, high = min(choices), max(choices)
                at_low = sum(v == low for v in values)
                at_high = sum(v == high for v in values)
            else:
                low, high, log = spec["low"], spec["high"], spec.get("log", False)
                values = [v for v in values if v > 0] if log else values  # or_zero's zeros sit on no edge
                scale = (lambda v: math.log(v)) if log else (lambda v: v)
                span = scale(high) - scale(low)
                at_low = sum(scale(v) - scale(low) <= margin * span for v in values)
                at_high = sum(scale(high) - scale(v) <= margin * span for v in values)
            # A majority of all the top trials, not of those that have this layer.
            edge = "low" if at_low > len(best) / 2 else "high" if at_high > len(best) / 2 else None
            rows.append(
                {
                    "dimension": column,
                    "low": low,
                    "high": high,
                    "best_values": values,
                    "at_edge": edge is not None,
                    "edge": edge,
                }
            )
    return pd.DataFrame(rows, columns=["dimension", "low", "high", "best_values", "at_edge", "edge"])


def overfitting_summary(trials: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """Per trial: param_count, best epoch by val, final gap, the accuracy onset (overfitting_onset)
    and the val-loss onset (analysis.statistics.loss_onset; what the report shows)."""
    rows = []
    for run_id, curve in histories.groupby("run_id"):
        curve = curve.sort_values("epoch").dropna(subset=["train_acc", "val_acc"])
        if curve.empty:
            continue
        best = best_record(curve.to_dict("records"))
        rows.append(
            {
                "run_id": run_id,
                "best_epoch": int(best["epoch"]),
                "best_val_acc": best["val_acc"],
                "final_gap": curve["train_acc"].iloc[-1] - curve["val_acc"].iloc[-1],
                "onset": overfitting_onset(curve["train_acc"], curve["val_acc"], curve["epoch"]),
                "val_loss_onset": (
                    loss_onset(curve["val_loss"].to_numpy(), curve["epoch"].tolist())
                    if "val_loss" in curve and curve["val_loss"].notna().all()
                    else None
                ),
                "epochs": int(curve["epoch"].max()),
            }
        )
    summary = pd.DataFrame(
        rows, columns=["run_id", "best_epoch", "best_val_acc", "final_gap", "onset", "val_loss_onset", "epochs"]
    )
    return summary.merge(trials[["run_id", "param_count", "trial_id"]], on="run_id", how="left")


def pareto_front(trials: pd.DataFrame, maximise: str = "val_acc", minimise: str = "param_count") -> pd.DataFrame:
    """Trials that no other trial beats on both objectives, by increasing ``minimise``."""
    ok = trials.dropna(subset=[maximise, minimise]).reset_index(drop=True)
    keep = []
    for i, row in ok.iterrows():
        dominated = (
            (ok[maximise] >= row[maximise])
            & (ok[minimise] <= row[minimise])
            & ((ok[maximise] > row[maximise]) | (ok[minimise] < row[minimise]))
        ).any()
        if not dominated:
            keep.append(i)
    return ok.loc[keep].sort_values(minimise).reset_index(drop=True)


def importance_distributions(trials: pd.DataFrame, space: dict) -> dict:
    """Optuna's distribution of each searched hyperparameter that every trial holds (a width: its
    first layer's), as the search drew it: choices, integer or real ranges on their scale, and an
    or_zero range as one linear axis from 0 (which holds both its zeros and its values)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for name, spec in space.items():
        if not isinstance(spec, dict):
            continue
        column = "width_0" if name == "width" else name
        if column not in trials.columns or trials[column].isna().any():
            continue
        if "choices" in spec:
            dists[column] = CategoricalDistribution(list(spec["choices"]))
        elif name in ("depth", "width", "batch_size", "epochs"):
            dists[column] = IntDistribution(int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        elif spec.get("or_zero"):
            dists[column] = FloatDistribution(0.0, float(spec["high"]))
        else:
            dists[column] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=spec.get("log", False))
    return dists


def importances(trials: pd.DataFrame, space: dict, metric: str = "val_acc", seed: int = 0) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched hyperparameters present in every trial."""
    import optuna

    ok = trials.dropna(subset=[metric])
    dists = importance_distributions(ok, space)
    if len(ok) < 2 or not dists:
        return {}
    study = optuna.create_study(direction="maximize")
    for _, row in ok.iterrows():
        params = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in dists}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[metric])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
