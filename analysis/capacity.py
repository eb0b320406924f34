"""Capacity against overfitting, aggregated over seeds: pure functions of trial tables and curves.

A *size* is one architecture (its hidden sizes, hence its parameter count); a *group* is one value
of the study's second axis (a regulariser's value, or the loss in a sweep). Only trials that ran
the study's whole budget enter the aggregates: a trial stopped early is not comparable.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.statistics import (
    FINAL_EPOCHS,
    curve_shape,
    loss_onset,
    mean_interval,
    onset_share,
    size_comparisons,
    size_trend,
    tail_mean,
)
from trainables.model import size_label

# The per-size table's columns and what they mean (the report prints this line under the table).
SIZE_COLUMNS = (
    "group",
    "depth",
    "hidden_sizes",
    "param_count",
    "seeds",
    "best_val_acc",
    "best_val_acc_sd",
    "final_val_acc",
    "final_val_acc_sd",
    "final_val_acc_low",
    "final_val_acc_high",
    "train_acc",
    "train_acc_sd",
    "gap",
    "gap_sd",
    "gap_low",
    "gap_high",
    "min_val_loss",
    "final_val_loss",
    "val_loss_rise",
    "val_loss_rise_sd",
    "val_loss_rise_low",
    "val_loss_rise_high",
    "onset",
    "onset_seen",
    "train_eval_loss",
    "val_ece",
    "val_ece_sd",
)
SIZE_TABLE_LEGEND = (
    f"one row per size (and group); means over seeds, *_sd their standard deviations, *_low .. *_high 95% intervals "
    f"of the mean (t with seeds - 1 df, for accuracies widened by the validation split's binomial noise p(1-p)/n_val "
    f"when the split size is known); final_*: mean over the last {FINAL_EPOCHS} epochs of each seed; best_val_acc: "
    f"the best epoch's val_acc, selected on the validation split it is reported on (biased up); gap = train_acc - "
    f"val_acc (final); val_loss_rise = final minus minimum val loss; onset: median epoch where the smoothed val loss "
    f"was last near its minimum before a sustained rise, over the seeds that show one (onset_seen of seeds); "
    f"train_eval_loss: final train loss in eval mode on the whole training split, val_ece: final expected "
    f"calibration error on val (15 bins), where the runs logged them"
)
# Per-size metrics that are accuracies measured on the validation split (their intervals carry its binomial noise).
_VAL_ACCURACIES = ("final_val_acc", "gap")


def epochs_of(space: dict) -> int | None:
    """The epochs every trial of the study was meant to run: the space's fixed ``epochs``."""
    epochs = space.get("epochs") if space else None
    return int(epochs) if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else None


def split_by_epochs(trials: pd.DataFrame, budget: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(full, short): trials that ran ``budget`` epochs, and those that ran fewer (stopped early,
    diverged). Without a known budget every trial counts as full."""
    if budget is None or trials.empty or "epochs_run" not in trials.columns:
        return trials, trials.iloc[0:0]
    full = trials["epochs_run"].fillna(0) >= budget
    return trials[full].reset_index(drop=True), trials[~full].reset_index(drop=True)


# Per-epoch metrics whose final (tail-mean) value the per-size table shows when the runs logged them.
OPTIONAL_CURVES = ("train_eval_loss", "val_ece")
CURVE_COLUMNS = [
    "run_id",
    "min_val_loss",
    "final_val_loss",
    "onset",
    "final_val_acc",
    "final_train_acc",
    "final_gap",
    *(f"final_{c}" for c in OPTIONAL_CURVES),
]


def curve_summary(histories: pd.DataFrame, tail: int = FINAL_EPOCHS) -> pd.DataFrame:
    """Per run, from its per-epoch curve: minimum and final val loss, the val-loss onset
    (analysis.statistics.loss_onset) and the final (mean of the last ``tail`` epochs) accuracies."""
    rows = []
    for run_id, curve in histories.groupby("run_id"):
        curve = curve.sort_values("epoch")
        row = {"run_id": run_id}
        losses = curve.dropna(subset=["val_loss"]) if "val_loss" in curve else curve.iloc[0:0]
        row["min_val_loss"] = float(losses["val_loss"].min()) if len(losses) else math.nan
        row["final_val_loss"] = tail_mean(losses["val_loss"], tail) if len(losses) else math.nan
        row["onset"] = loss_onset(losses["val_loss"].to_numpy(), losses["epoch"].tolist()) if len(losses) else None
        for column in ("val_acc", "train_acc", "gap", *OPTIONAL_CURVES):
            row[f"final_{column}"] = tail_mean(curve[column], tail) if column in curve else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def per_size(
    trials: pd.DataFrame,
    histories: pd.DataFrame | None = None,
    group: str | None = None,
    tail: int = FINAL_EPOCHS,
    n_val: int | None = None,
) -> pd.DataFrame:
    """Aggregate the seeds of each size (and ``group`` value): means, sds and 95% intervals.

    With histories, "final" numbers are each seed's mean over its last ``tail`` epochs (else the
    trial's last epoch). ``n_val``: the validation split's size, to widen the accuracies'
    intervals by its binomial noise (analysis.statistics.mean_interval).
    """
    if trials.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    frame = trials.copy()
    if histories is not None and not histories.empty:
        frame = frame.merge(curve_summary(histories, tail), on="run_id", how="left")
        for column in ("val_acc", "train_acc", "gap"):  # the tail mean where the run has a curve
            frame[column] = frame[f"final_{column}"].fillna(frame[column])
    for column in ("min_val_loss", "final_val_loss", "onset", *(f"final_{c}" for c in OPTIONAL_CURVES)):
        if column not in frame:
            frame[column] = math.nan
    frame["onset"] = pd.to_numeric(frame["onset"], errors="coerce")
    frame["val_loss_rise"] = frame["final_val_loss"] - frame["min_val_loss"]
    frame["group"] = frame[group].astype(str) if group and group in frame else "all"
    frame["size"] = frame["hidden_sizes"].map(size_label)
    rows = []
    for (grp, size), seeds in frame.groupby(["group", "size"], sort=False):

        def sd(column: str, seeds: pd.DataFrame = seeds) -> float:
            return float(seeds[column].std(ddof=1)) if len(seeds) > 1 else math.nan

        share = onset_share(seeds["onset"].tolist())
        row = {
            "group": grp,
            "depth": size.count(",") + 1,
            "hidden_sizes": size,
            "param_count": int(seeds["param_count"].iloc[0]),
            "seeds": len(seeds),
            "best_val_acc": seeds["best_val_acc"].mean(),
            "best_val_acc_sd": sd("best_val_acc"),
            "final_val_acc": seeds["val_acc"].mean(),
            "final_val_acc_sd": sd("val_acc"),
            "train_acc": seeds["train_acc"].mean(),
            "train_acc_sd": sd("train_acc"),
            "gap": seeds["gap"].mean(),
            "gap_sd": sd("gap"),
            "min_val_loss": seeds["min_val_loss"].mean(),
            "final_val_loss": seeds["final_val_loss"].mean(),
            "val_loss_rise": seeds["val_loss_rise"].mean(),
            "val_loss_rise_sd": sd("val_loss_rise"),
            "onset": share["median"],
            "onset_seen": f"{share['seen']}/{share['seeds']}",
            "train_eval_loss": seeds["final_train_eval_loss"].mean(),
            "val_ece": seeds["final_val_ece"].mean(),
            "val_ece_sd": sd("final_val_ece"),
        }
        for column in ("final_val_acc", "gap", "val_loss_rise"):
            # The gap's split noise is the val accuracy's: the training split is ~9x larger.
            p = row["final_val_acc"] if column in _VAL_ACCURACIES else None
            ci = mean_interval(
                row[column], row[f"{column}_sd"], len(seeds), n_val=n_val if p is not None else None, split_p=p
            )
            row[f"{column}_low"], row[f"{column}_high"] = ci["low"], ci["high"]
        rows.append(row)
    table = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    return table.sort_values(["group", "depth", "param_count"]).reset_index(drop=True)


def curves(sizes: pd.DataFrame):
    """The per-size table cut into curves: ((group, depth), rows by parameter count). One variable
    at a time: nets of another depth or regulariser value differ in more than size."""
    for (grp, depth), rows in sizes.groupby(["group", "depth"]):
        yield (grp, int(depth)), rows.sort_values("param_count").reset_index(drop=True)


def curve_trend(rows: pd.DataFrame, column: str, delta: float | None = None) -> dict:
    """One curve's ``column`` against log10(params): its shape (on the whole curve) and, where the
    curve is monotone or flat, the size-level slope with its t interval and lack of fit; where it
    is not, the peak (or dip) and the sizes not distinguishable from the peak instead of a slope."""
    means, sds, ns = rows[column].tolist(), rows[f"{column}_sd"].tolist(), rows["seeds"].tolist()
    shape = curve_shape(means, sds, ns, **({} if delta is None else {"delta": delta}))
    trend = size_trend(np.log10(rows["param_count"].astype(float)), means, sds, ns)
    labels = rows["hidden_sizes"].tolist()
    out = {
        "y": column,
        **trend,
        "shape": shape["shape"],
        "moves": shape["moves"],
        "peak": labels[shape["peak"]] if shape["peak"] is not None else None,
        "dip": labels[shape["dip"]] if shape["dip"] is not None else None,
        "peak_set": [labels[i] for i in shape["peak_set"]],
        "trials": int(sum(ns)),
        "delta": shape["delta"],
        "monotone": shape["shape"] in ("rising", "falling", "flat", "no detectable shape"),
    }
    return out


def comparisons(rows: pd.DataFrame, column: str = "final_val_acc") -> pd.DataFrame:
    """One curve's paired comparisons (adjacent sizes, each size against the best), Holm-corrected."""
    table = pd.DataFrame(
        size_comparisons(
            rows["hidden_sizes"].tolist(), rows[column].tolist(), rows[f"{column}_sd"].tolist(), rows["seeds"].tolist()
        ),
        columns=["comparison", "a", "b", "diff", "low", "high", "p", "p_holm"],
    )
    return table


def memorisation(table: pd.DataFrame, threshold: float = 0.99, rise: float = 0.005) -> dict:
    """Where a group's nets memorise the training set, where validation peaks, and what follows.

    ``table`` is one group and depth of ``per_size`` (rows by parameter count: one variable at a
    time, since nets of another depth differ in more than size). The memorisation point is the
    smallest size from which every larger size reaches mean train_acc ``threshold`` at the budget
    (a size that falls back below it ends no memorised range). The val peak is the size with the
    highest mean final val_acc; ``peak_set`` the sizes not significantly below it. ``beyond``
    says what mean final val_acc does from the memorisation point on, judged on that whole stretch
    by analysis.statistics.curve_shape when sizes have several seeds: keeps rising, falls, stays
    flat, no detectable shape, rises then falls, or dips and then rises again (a *second rise*,
    double-descent-like: judged on the whole curve, so a dip at the memorisation point counts);
    ``shape`` is the whole curve's. With one seed a size there is no noise estimate: the plain rule of
    ``rise`` (differences above it count) is used and said so in ``judged``.
    """
    rows = table.sort_values("param_count").reset_index(drop=True)
    out = {
        "memorised_at": None,
        "memorised_size": None,
        "val_peak_at": None,
        "val_peak_size": None,
        "val_peak": None,
        "peak_vs_memorisation": None,
        "beyond": None,
        "second_rise": False,
        "second_rise_at": None,
        "peak_set": [],
        "shape": None,
        "judged": None,
    }
    if rows.empty:
        return out
    peak = rows.loc[rows["final_val_acc"].idxmax()]
    out.update(
        val_peak_at=int(peak["param_count"]), val_peak_size=peak["hidden_sizes"], val_peak=float(peak["final_val_acc"])
    )
    noisy = "final_val_acc_sd" in rows and "seeds" in rows and (rows["seeds"] > 1).any()
    if noisy:
        whole = curve_shape(rows["final_val_acc"].tolist(), rows["final_val_acc_sd"].tolist(), rows["seeds"].tolist())
        out["peak_set"] = [rows.loc[i, "hidden_sizes"] for i in whole["peak_set"]]
        out["shape"] = whole["shape"]
    reached = (rows["train_acc"] >= threshold).to_numpy()
    if not reached[-1]:
        return out
    first = len(reached) - int(np.argmin(reached[::-1])) if not reached.all() else 0
    out.update(memorised_at=int(rows.loc[first, "param_count"]), memorised_size=rows.loc[first, "hidden_sizes"])
    out["peak_vs_memorisation"] = (
        "below"
        if peak["param_count"] < out["memorised_at"]
        else "at"
        if peak["param_count"] == out["memorised_at"]
        else "above"
    )
    beyond = rows.loc[first:].reset_index(drop=True)
    if len(beyond) < 2:
        out["beyond"] = "no larger size"
        return out
    if noisy:
        # A dip at the memorisation point itself (classic double descent) shows only on the whole
        # curve; a dip before it says nothing of what follows memorisation.
        shape = (
            whole
            if whole["shape"] == "dip-then-rise" and whole["dip"] >= first
            else curve_shape(
                beyond["final_val_acc"].tolist(), beyond["final_val_acc_sd"].tolist(), beyond["seeds"].tolist()
            )
        )
        beyond = rows if shape is whole else beyond
        out["judged"] = f"on the noise of the seeds (flat: within ±{shape['delta']})"
        words = {
            "rising": "keeps rising",
            "falling": "falls",
            "flat": "stays flat",
            "single peak": "rises, then falls",
            "dip-then-rise": "dips, then rises again",
        }
        out["beyond"] = words.get(shape["shape"], shape["shape"])
        if shape["shape"] == "dip-then-rise":
            after = beyond.loc[shape["dip"] + 1 :, "final_val_acc"]
            out.update(second_rise=True, second_rise_at=int(beyond.loc[after.idxmax(), "param_count"]))
        return out
    out["judged"] = f"one seed a size: differences above {rise} count, without a noise estimate"
    values = beyond["final_val_acc"].to_numpy()
    low_index = int(np.argmin(values))
    if 0 < low_index < len(values) - 1 and values[low_index + 1 :].max() > values[low_index] + rise:
        out.update(
            beyond="dips, then rises again",
            second_rise=True,
            second_rise_at=int(beyond.loc[low_index + 1 + int(np.argmax(values[low_index + 1 :])), "param_count"]),
        )
    elif values[-1] > values[0] + rise:
        out["beyond"] = "keeps rising"
    elif values[-1] < values[0] - rise:
        out["beyond"] = "falls"
    else:
        out["beyond"] = "stays flat"
    return out


def fmt_count(value) -> str:
    """1574402 -> '1,574,402'; missing -> '—'."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{int(value):,}"


def fmt_acc(value, digits: int = 3) -> str:
    """0.83456 -> '0.835'; missing -> '—'."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.{digits}f}"


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: counts with thousands separators, 3 decimals, '—' for missing."""
    out = table.copy()
    for column in out.columns:
        if column in ("trials", "seeds") or column.endswith("_count"):  # param_count among them
            out[column] = out[column].map(fmt_count)
        elif column in ("onset", "val_loss_onset", "epochs", "best_epoch", "epochs_run", "sweep_epochs"):
            out[column] = out[column].map(lambda v: fmt_acc(v, 0))
        elif pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(fmt_acc)
    return out.fillna("—")
