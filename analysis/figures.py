"""Figures of a study, drawn with matplotlib's Agg backend; each function returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.overfitting import capacity_frontier  # noqa: E402

LOSS_COLOURS = {"nll": "tab:blue", "ce": "tab:green", "mse": "tab:red", "bce": "tab:purple"}


def _colour(loss) -> str:
    return LOSS_COLOURS.get(loss, "tab:gray")


def _finish(
    fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int, log_x: bool = False, legend_columns: int = 1
):
    """The labels, grid and legend every scatter/curve figure here shares."""
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=legend_columns)
    fig.tight_layout()
    return fig


def mark_threshold(ax, threshold: int | None) -> None:
    """The interpolation threshold (parameters = training samples x classes) on a parameter axis."""
    if threshold:
        ax.axvline(threshold, color="0.3", ls=":", lw=1.2, label=f"threshold n x classes = {threshold:,}")


def _group_colour(i: int, name) -> str:
    return LOSS_COLOURS.get(name) or plt.cm.tab10(i % 10)


def _aggregated(sizes: pd.DataFrame) -> bool:
    return not sizes.empty and (sizes["seeds"] > 1).any()


def _size_curves(sizes: pd.DataFrame):
    """One curve per group (regulariser value, loss) and depth: (colour, marker, label, rows by size)."""
    depths = sorted(sizes["depth"].unique())
    curves = [(name, depth, rows) for name, g in sizes.groupby("group") for depth, rows in g.groupby("depth")]
    for i, (name, depth, rows) in enumerate(curves):
        label = ", ".join(([] if name == "all" else [str(name)]) + ([f"depth {depth}"] if len(depths) > 1 else []))
        yield plt.cm.tab10(i % 10), "osD^v"[depths.index(depth) % 5], label, rows.sort_values("param_count")


BAND_LABEL = "bands: 95% CI of the mean over seeds"


def _band(ax, rows: pd.DataFrame, column: str, colour) -> None:
    """The 95% interval of a per-size mean (``column``_low .. _high), where the size has one."""
    low, high = f"{column}_low", f"{column}_high"
    if low in rows and rows[low].notna().any():
        ax.fill_between(rows["param_count"], rows[low], rows[high], color=colour, alpha=0.15, lw=0)


def _band_legend(ax) -> None:
    from matplotlib.patches import Patch

    ax.add_artist(ax.legend(handles=[Patch(color="0.6", alpha=0.3, label=BAND_LABEL)], loc="lower right", fontsize=7))


def capacity_figure(
    trials: pd.DataFrame, sizes: pd.DataFrame, short: pd.DataFrame, group: str | None, threshold: int | None = None
):
    """Accuracy against parameter count.

    Several seeds per size: one curve per group (regulariser value, or loss) and depth of the mean
    final val_acc (solid, with its 95% interval as a band) and train_acc (dashed). One seed per
    size (a sweep): val (filled) and train (hollow) points per group, with the
    best-val-at-or-below-size frontier. Trials below the study's budget are grey and hollow:
    drawn, but not part of any curve.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    if _aggregated(sizes):
        for colour, marker, label, rows in _size_curves(sizes):
            label = f" ({label})" if label else ""
            ax.plot(
                rows["param_count"], rows["final_val_acc"], "-", color=colour, marker=marker, ms=4, label=f"val{label}"
            )
            _band(ax, rows, "final_val_acc", colour)
            ax.plot(
                rows["param_count"], rows["train_acc"], "--", color=colour, marker=marker, ms=4, label=f"train{label}"
            )
        _band_legend(ax)
    else:
        for i, (name, rows) in enumerate(trials.groupby(group) if group else [("all", trials)]):
            colour = _group_colour(i, name)
            label = "" if name == "all" else f" ({name})"
            ax.scatter(rows["param_count"], rows["val_acc"], color=colour, label=f"val{label}", s=28)
            ax.scatter(
                rows["param_count"],
                rows["train_acc"],
                facecolors="none",
                edgecolors=colour,
                label=f"train{label}",
                s=28,
            )
        front = capacity_frontier(trials)
        if not front.empty:
            xs = list(front["param_count"]) + [trials["param_count"].max()]
            ys = list(front["val_acc"]) + [front["val_acc"].iloc[-1]]
            ax.step(xs, ys, where="post", color="black", lw=1.2, label="best val at or below size")
    if short is not None and not short.empty:
        ax.scatter(
            short["param_count"],
            short["val_acc"],
            facecolors="none",
            edgecolors="0.6",
            s=22,
            label=f"val, below the budget ({len(short)}, left out)",
        )
    mark_threshold(ax, threshold)
    title = "Capacity: accuracy against parameter count" + (" (means over seeds)" if _aggregated(sizes) else "")
    return _finish(fig, ax, "parameters", "accuracy", title, 7, log_x=True, legend_columns=2)


def gap_figure(trials: pd.DataFrame, sizes: pd.DataFrame, group: str | None, threshold: int | None = None):
    """The final train - val gap against parameter count: one curve per group and depth (mean over
    seeds with its 95% interval), never a line pooled over curves of different depths."""
    fig, ax = plt.subplots(figsize=(8, 4))
    if _aggregated(sizes):
        for colour, marker, label, rows in _size_curves(sizes):
            ax.plot(rows["param_count"], rows["gap"], "-" + marker, color=colour, ms=4, label=label or "gap")
            _band(ax, rows, "gap", colour)
        _band_legend(ax)
    else:
        for i, (name, rows) in enumerate(trials.groupby(group) if group else [("all", trials)]):
            ax.scatter(rows["param_count"], rows["gap"], color=_group_colour(i, name), label=str(name), s=28)
    ax.axhline(0, color="black", lw=0.8)
    mark_threshold(ax, threshold)
    return _finish(
        fig,
        ax,
        "parameters",
        "train_acc - val_acc (final)",
        "Generalisation gap against parameter count",
        8,
        log_x=True,
    )


def learning_curves_figure(trials: pd.DataFrame, histories: pd.DataFrame, run_ids: list[str]):
    """train (dashed) and val (solid) accuracy per epoch for the given runs."""
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = trials.set_index("run_id")
    for i, run_id in enumerate(run_ids):
        curve = histories[histories["run_id"] == run_id].sort_values("epoch")
        if curve.empty:
            continue
        colour = plt.cm.tab10(i % 10)
        row = labels.loc[run_id]
        name = f"{row['trial_id']} ({int(row['param_count']):,} params)"
        ax.plot(curve["epoch"], curve["val_acc"], color=colour, lw=1.6, label=f"{name} val")
        ax.plot(curve["epoch"], curve["train_acc"], color=colour, lw=1.0, ls="--")
    return _finish(
        fig, ax, "epoch", "accuracy (train dashed, val solid)", "Learning curves: top trials and the largest model", 7
    )


def hyperparameter_figure(trials: pd.DataFrame, space: dict):
    """val_acc against each searched hyperparameter; red lines mark the searched range's edges."""
    searched = [(name, spec) for name, spec in space.items() if isinstance(spec, dict)]
    cols = 3
    rows = max(1, -(-len(searched) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(searched) :]:
        ax.axis("off")
    for ax, (name, spec) in zip(axes.flat, searched, strict=False):
        column = "max_width" if name == "width" else name
        if column not in trials.columns:
            ax.axis("off")
            continue
        data = trials.dropna(subset=[column, "val_acc"])
        if "choices" in spec and not all(isinstance(c, (int, float)) for c in spec["choices"]):
            choices = list(spec["choices"])
            xs = [choices.index(v) if v in choices else -1 for v in data[column]]
            ax.set_xticks(range(len(choices)), choices)
        else:
            xs = data[column]
            low = spec["low"] if "low" in spec else min(spec["choices"])
            high = spec["high"] if "high" in spec else max(spec["choices"])
            if spec.get("log") or name in ("batch_size",):
                ax.set_xscale("log")
            ax.set_xlim(
                low / 1.3 if ax.get_xscale() == "log" else low - 0.05 * (high - low),
                high * 1.3 if ax.get_xscale() == "log" else high + 0.05 * (high - low),
            )
            for edge in (low, high):
                ax.axvline(edge, color="tab:red", lw=1, ls=":")
        ax.scatter(xs, data["val_acc"], c=[_colour(loss) for loss in data.get("loss", [None] * len(data))], s=18)
        ax.set_title("widest layer" if name == "width" else name, fontsize=9)
        ax.set_ylabel("val_acc", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("val_acc against each searched hyperparameter (dotted red: range edges)")
    fig.tight_layout()
    return fig


def importance_figure(importances: dict[str, float]):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("fANOVA importance (Optuna)")
    ax.set_title("Hyperparameter importance for val_acc")
    if not names:
        ax.text(0.5, 0.5, "too few trials", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig
