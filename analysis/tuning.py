"""A nuisance hyperparameter tuned per size (``capacity --tune lr=...``): choose, then report apart.

Every cell trains each value of the tuned field. For each size (and regulariser value) the value
with the highest mean final accuracy on val's *selection* half is kept; the numbers the report
shows for that size come from val's *reporting* half (trainables.data.validation_halves: two
stratified halves, a fixed seed), which took no part in the choice. Choosing on the split that
reports would bias every size's number up by the maximum of several noisy draws, and more so
for the sizes whose values are close.

Why two fixed halves and not cross-fitting (choose on A, report on B, and the other way round):
a cross-fit can keep different values on the two folds, and then neither "the chosen lr of this
size" nor "the curve at the per-size best" is one network's number; two halves give one value
per size, one curve, and a test that can see the choice. The price: the reporting half is half
of val (500 images here), so its binomial noise is sqrt(2) times the whole split's; the intervals
say so (n_val is the reporting half's size).

Pure: pandas over the trial table and the per-epoch histories (analysis/runs.py).
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.statistics import FINAL_EPOCHS, tail_mean
from trainables.model import size_label

SELECT_METRIC = "val_select_acc"
REPORT_METRIC = "val_report_acc"
# What a chosen run reports: the whole-split metric -> its reporting-half metric.
REPORTED = {"val_acc": "val_report_acc", "val_loss": "val_report_loss"}
CHOICE_COLUMNS = [
    "group",
    "depth",
    "hidden_sizes",
    "param_count",
    "field",
    "value",
    "seeds",
    "select_acc",
    "report_acc",
    "chosen",
]
CHOICE_LEGEND = (
    "per size (and group) and tuned value: select_acc = mean over seeds of the final (last "
    f"{FINAL_EPOCHS} epochs) val_acc on val's selection half, report_acc the same on the reporting half; "
    "chosen: the value with the highest select_acc for its size (ties: the smaller value); every curve of the "
    "report is drawn at the chosen values, from the reporting half"
)


def tuned_field(trials: pd.DataFrame) -> str | None:
    """The field a tuned study varies per cell (from the runs' tune tag 'lr=0.01'), or None."""
    if "tune" not in trials:
        return None
    names = {str(t).partition("=")[0] for t in trials["tune"].dropna() if str(t) not in ("none", "")}
    return names.pop() if len(names) == 1 else None


def final_values(trials: pd.DataFrame, histories: pd.DataFrame | None, metric: str, tail: int) -> pd.Series:
    """Per run (indexed like ``trials``): the mean of ``metric`` over its last ``tail`` epochs where
    its curve has it, else the run's last logged value."""
    last = trials[metric] if metric in trials else pd.Series(math.nan, index=trials.index)
    if histories is None or histories.empty or metric not in histories:
        return last.astype(float)
    tails = {
        run_id: tail_mean(curve.sort_values("epoch")[metric].dropna(), tail)
        for run_id, curve in histories.groupby("run_id")
        if curve[metric].notna().any()
    }
    return trials["run_id"].map(tails).astype(float).fillna(last.astype(float))


def choose(
    trials: pd.DataFrame,
    histories: pd.DataFrame | None = None,
    field: str | None = None,
    group: str | None = "regulariser",
    tail: int = FINAL_EPOCHS,
) -> pd.DataFrame:
    """One row per (group, size, tuned value), the kept value of each size marked ``chosen``."""
    field = field or tuned_field(trials)
    if field is None or trials.empty:
        return pd.DataFrame(columns=CHOICE_COLUMNS)
    frame = trials.assign(
        _group=trials[group].astype(str) if group and group in trials else "all",
        _size=trials["hidden_sizes"].map(size_label),
        _select=final_values(trials, histories, SELECT_METRIC, tail),
        _report=final_values(trials, histories, REPORT_METRIC, tail),
    )
    rows = []
    for (grp, size, value), seeds in frame.groupby(["_group", "_size", field], sort=True):
        rows.append(
            {
                "group": grp,
                "depth": size.count(",") + 1,
                "hidden_sizes": size,
                "param_count": int(seeds["param_count"].iloc[0]),
                "field": field,
                "value": value,
                "seeds": len(seeds),
                "select_acc": float(seeds["_select"].mean()),
                "report_acc": float(seeds["_report"].mean()),
            }
        )
    table = pd.DataFrame(rows, columns=CHOICE_COLUMNS[:-1])
    table["chosen"] = False
    for _, options in table.groupby(["group", "hidden_sizes"]):
        ranked = options.sort_values(["select_acc", "value"], ascending=[False, True], na_position="last")
        table.loc[ranked.index[0], "chosen"] = True
    return table.sort_values(["group", "depth", "param_count", "value"]).reset_index(drop=True)


def selected_runs(trials: pd.DataFrame, choice: pd.DataFrame, group: str | None = "regulariser") -> set[str]:
    """The run ids of every seed of every size's chosen value."""
    if choice.empty:
        return set()
    field = choice["field"].iloc[0]
    kept = {(g, s, v) for g, s, v in choice.loc[choice["chosen"], ["group", "hidden_sizes", "value"]].itertuples(False)}
    groups = trials[group].astype(str) if group and group in trials else pd.Series("all", index=trials.index)
    sizes = trials["hidden_sizes"].map(size_label)
    return {
        run_id
        for run_id, g, s, v in zip(trials["run_id"], groups, sizes, trials[field], strict=True)
        if (g, s, v) in kept
    }


def on_reporting_half(
    trials: pd.DataFrame, histories: pd.DataFrame | None, choice: pd.DataFrame, group: str | None = "regulariser"
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The chosen runs only, their val numbers (final and per epoch) replaced by the reporting
    half's, and the gap recomputed from them: what every per-size number of a tuned report is."""
    keep = selected_runs(trials, choice, group)
    chosen = trials[trials["run_id"].isin(keep)].copy()
    for whole, half in REPORTED.items():
        if half in chosen:
            chosen[whole] = chosen[half]
    chosen["gap"] = chosen["train_acc"] - chosen["val_acc"]
    if histories is None or histories.empty:
        return chosen.reset_index(drop=True), histories
    curves = histories[histories["run_id"].isin(keep)].copy()
    for whole, half in REPORTED.items():
        if half in curves:
            curves[whole] = curves[half]
    curves["gap"] = curves["train_acc"] - curves["val_acc"]
    return chosen.reset_index(drop=True), curves.reset_index(drop=True)


def shift_text(choice: pd.DataFrame) -> list[str]:
    """Per curve (group and depth): the chosen value by size, smallest size first, and whether it moves."""
    lines = []
    for (grp, depth), rows in choice[choice["chosen"]].groupby(["group", "depth"]):
        rows = rows.sort_values("param_count")
        values = [
            f"{r.hidden_sizes}: {r.value:g}" if isinstance(r.value, float) else f"{r.hidden_sizes}: {r.value}"
            for r in rows.itertuples()
        ]
        moves = "the same value for every size" if rows["value"].nunique() == 1 else "the chosen value moves with size"
        name = ("" if grp == "all" else f"{grp}, ") + f"depth {depth}"
        lines.append(f"tuned {rows['field'].iloc[0]} ({name}): {'; '.join(values)} ({moves})")
    return lines


def tuning_figure(choice: pd.DataFrame, threshold: int | None = None):
    """The chosen value against parameter count, one line per curve (group and depth), on log axes
    where the values are positive numbers; the threshold dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.figures import _finish, mark_threshold

    fig, ax = plt.subplots(figsize=(8, 4))
    kept = choice[choice["chosen"]] if not choice.empty else choice
    numeric = not kept.empty and pd.api.types.is_numeric_dtype(kept["value"])
    for i, ((grp, depth), rows) in enumerate(kept.groupby(["group", "depth"])):
        rows = rows.sort_values("param_count")
        label = ("" if grp == "all" else f"{grp}, ") + f"depth {depth}"
        ax.plot(rows["param_count"], rows["value"], "-o", color=plt.cm.tab10(i % 10), ms=4, label=label)
    if numeric and (kept["value"] > 0).all():
        ax.set_yscale("log")
        ax.set_yticks(sorted(choice["value"].unique()))
        ax.set_yticklabels([f"{v:g}" for v in sorted(choice["value"].unique())])
    mark_threshold(ax, threshold)
    field = choice["field"].iloc[0] if not choice.empty else "value"
    return _finish(
        fig, ax, "parameters", f"chosen {field}", f"{field} chosen per size (val's selection half)", 8, log_x=True
    )
