"""Capacity against overfitting, aggregated over seeds: pure functions of trial tables and curves.

A *size* is one architecture (its hidden sizes, hence its parameter count); a *group* is one value
of the study's second axis (a regulariser's value, or the loss in a sweep). Only trials that ran
the study's whole budget enter the aggregates: a trial stopped early is not comparable.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.overfitting import overfitting_onset
from trainables.model import size_label

# The per-size table's columns and what they mean (the report prints this line under the table).
SIZE_COLUMNS = ("group", "depth", "hidden_sizes", "param_count", "seeds", "best_val_acc", "best_val_acc_sd", "final_val_acc",
                "final_val_acc_sd", "train_acc", "train_acc_sd", "gap", "gap_sd", "min_val_loss", "final_val_loss",
                "val_loss_rise", "val_loss_rise_sd", "onset", "onset_seen")
SIZE_TABLE_LEGEND = (
    "one row per size (and group); means over seeds, *_sd their standard deviations; best_val_acc: the best "
    "epoch's, final_*: at the last epoch; gap = train_acc - val_acc at the last epoch; val_loss_rise = final "
    "minus minimum val loss (the chapter's overfitting signal); onset: median overfitting-onset epoch of the "
    "seeds where one was seen (onset_seen of seeds)")


def budget_of(space: dict) -> int | None:
    """The epochs every trial of the study was meant to run: the space's fixed ``epochs``."""
    epochs = space.get("epochs") if space else None
    return int(epochs) if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else None


def split_by_budget(trials: pd.DataFrame, budget: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(full, short): trials that ran ``budget`` epochs, and those that ran fewer (stopped early,
    diverged). Without a known budget every trial counts as full."""
    if budget is None or trials.empty or "epochs_run" not in trials.columns:
        return trials, trials.iloc[0:0]
    full = trials["epochs_run"].fillna(0) >= budget
    return trials[full].reset_index(drop=True), trials[~full].reset_index(drop=True)


def curve_summary(histories: pd.DataFrame) -> pd.DataFrame:
    """Per run: minimum and final val loss, and the overfitting onset, from its per-epoch curve."""
    rows = []
    for run_id, curve in histories.groupby("run_id"):
        curve = curve.sort_values("epoch")
        losses = curve["val_loss"].dropna() if "val_loss" in curve else pd.Series(dtype=float)
        accs = curve.dropna(subset=["train_acc", "val_acc"])
        rows.append({"run_id": run_id,
                     "min_val_loss": float(losses.min()) if len(losses) else math.nan,
                     "final_val_loss": float(losses.iloc[-1]) if len(losses) else math.nan,
                     "onset": overfitting_onset(accs["train_acc"], accs["val_acc"], accs["epoch"]) if len(accs) else None})
    return pd.DataFrame(rows, columns=["run_id", "min_val_loss", "final_val_loss", "onset"])


def per_size(trials: pd.DataFrame, histories: pd.DataFrame | None = None, group: str | None = None) -> pd.DataFrame:
    """Aggregate the seeds of each size (and ``group`` value): means and standard deviations."""
    if trials.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    frame = trials.copy()
    if histories is not None and not histories.empty:
        frame = frame.merge(curve_summary(histories), on="run_id", how="left")
    for column in ("min_val_loss", "final_val_loss", "onset"):
        if column not in frame:
            frame[column] = math.nan
    frame["onset"] = pd.to_numeric(frame["onset"], errors="coerce")
    frame["val_loss_rise"] = frame["final_val_loss"] - frame["min_val_loss"]
    frame["group"] = frame[group].astype(str) if group and group in frame else "all"
    frame["size"] = frame["hidden_sizes"].map(size_label)
    rows = []
    for (grp, size), seeds in frame.groupby(["group", "size"], sort=False):
        sd = lambda column: float(seeds[column].std(ddof=1)) if len(seeds) > 1 else math.nan  # noqa: E731
        onsets = seeds["onset"].dropna()
        rows.append({
            "group": grp, "depth": size.count(",") + 1, "hidden_sizes": size,
            "param_count": int(seeds["param_count"].iloc[0]), "seeds": len(seeds),
            "best_val_acc": seeds["best_val_acc"].mean(), "best_val_acc_sd": sd("best_val_acc"),
            "final_val_acc": seeds["val_acc"].mean(), "final_val_acc_sd": sd("val_acc"),
            "train_acc": seeds["train_acc"].mean(), "train_acc_sd": sd("train_acc"),
            "gap": seeds["gap"].mean(), "gap_sd": sd("gap"),
            "min_val_loss": seeds["min_val_loss"].mean(), "final_val_loss": seeds["final_val_loss"].mean(),
            "val_loss_rise": seeds["val_loss_rise"].mean(), "val_loss_rise_sd": sd("val_loss_rise"),
            "onset": float(onsets.median()) if len(onsets) else math.nan,
            "onset_seen": f"{len(onsets)}/{len(seeds)}",
        })
    table = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    return table.sort_values(["group", "depth", "param_count"]).reset_index(drop=True)


def trend_with_interval(trials: pd.DataFrame, y: str = "gap", n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """Slope of ``y`` per decade of parameters, with a bootstrap interval over seeds.

    Each bootstrap draw keeps every size and resamples, with replacement, the seeds (trials) of
    each size, then refits the line: the interval says how much the slope depends on which seeds
    happened to be run. Needs at least two sizes.
    """
    ok = trials.dropna(subset=["param_count", y])
    ok = ok[ok["param_count"] > 0]
    sizes = [group[[y]].assign(x=np.log10(float(p))).to_numpy() for p, group in ok.groupby("param_count")]
    out = {"y": y, "slope_per_decade": None, "low": None, "high": None, "sizes": len(sizes), "trials": len(ok)}
    if len(sizes) < 2:
        return out
    data = np.concatenate(sizes)
    out["slope_per_decade"] = float(np.polyfit(data[:, 1], data[:, 0], 1)[0])
    if all(len(s) == 1 for s in sizes):  # one seed per size: nothing to resample, no interval
        return out
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        draw = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in sizes])
        slopes.append(np.polyfit(draw[:, 1], draw[:, 0], 1)[0])
    tail = (1 - level) / 2
    out["low"], out["high"] = (float(v) for v in np.quantile(slopes, [tail, 1 - tail]))
    return out


def memorisation(table: pd.DataFrame, threshold: float = 0.99, rise: float = 0.005) -> dict:
    """Where a group's nets memorise the training set, where validation peaks, and what follows.

    ``table`` is one group and depth of ``per_size`` (rows by parameter count: one variable at a
    time, since nets of another depth differ in more than size). The memorisation point is
    the smallest size whose mean train_acc reaches ``threshold`` at the budget. The val peak is
    the size with the highest mean final val_acc. ``beyond`` says what mean final val_acc does at
    the larger sizes: keeps rising, falls, stays flat (within ``rise``), or dips and then rises again
    more than ``rise`` above its low (a *second rise*, double-descent-like); reported as found,
    never assumed.
    """
    rows = table.sort_values("param_count").reset_index(drop=True)
    out = {"memorised_at": None, "memorised_size": None, "val_peak_at": None, "val_peak_size": None,
           "val_peak": None, "peak_vs_memorisation": None, "beyond": None, "second_rise": False,
           "second_rise_at": None}
    if rows.empty:
        return out
    peak = rows.loc[rows["final_val_acc"].idxmax()]
    out.update(val_peak_at=int(peak["param_count"]), val_peak_size=peak["hidden_sizes"],
               val_peak=float(peak["final_val_acc"]))
    memorised = rows[rows["train_acc"] >= threshold]
    if memorised.empty:
        return out
    first = memorised.index[0]
    out.update(memorised_at=int(rows.loc[first, "param_count"]), memorised_size=rows.loc[first, "hidden_sizes"])
    out["peak_vs_memorisation"] = ("below" if peak["param_count"] < out["memorised_at"] else
                                   "at" if peak["param_count"] == out["memorised_at"] else "above")
    beyond = rows.loc[first:, "final_val_acc"].to_numpy()
    if len(beyond) < 2:
        out["beyond"] = "no larger size"
        return out
    low_index = int(np.argmin(beyond))
    if 0 < low_index < len(beyond) - 1 and beyond[low_index + 1:].max() > beyond[low_index] + rise:
        out.update(beyond="dips, then rises again", second_rise=True,
                   second_rise_at=int(rows.loc[first + low_index + 1 + int(np.argmax(beyond[low_index + 1:])),
                                               "param_count"]))
    elif beyond[-1] > beyond[0] + rise:
        out["beyond"] = "keeps rising"
    elif beyond[-1] < beyond[0] - rise:
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
        if column in ("param_count", "trials", "seeds") or column.endswith("_count"):
            out[column] = out[column].map(fmt_count)
        elif column in ("onset", "epochs", "best_epoch", "epochs_run", "sweep_epochs"):
            out[column] = out[column].map(lambda v: fmt_acc(v, 0))
        elif pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(fmt_acc)
    return out.fillna("—")
