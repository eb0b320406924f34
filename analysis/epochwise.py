"""The epoch-wise view of a capacity study: val loss and val accuracy over (size x epoch).

Nakkiran et al. ("Deep Double Descent") see double descent along epochs as well as along size: a
net of one size can get worse, then better again as it trains. One heatmap per curve (regulariser
value and depth, never pooled), each cell the mean over seeds of one size at one epoch; the rows
are the sizes in order of parameter count, with the interpolation threshold drawn between the
sizes that straddle it. Pure: pandas and matplotlib (Agg), nothing read or written.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trainables.model import size_label  # noqa: E402

HEATMAP_METRICS = ("val_loss", "val_acc")


def epoch_grids(
    trials: pd.DataFrame, histories: pd.DataFrame, group: str | None = None, metrics=HEATMAP_METRICS
) -> dict[tuple[str, int], dict[str, pd.DataFrame]]:
    """{(group, depth): {metric: a table of seed means, one row per size (by parameter count, labelled
    with its hidden sizes and parameter count as the index), one column per epoch}}."""
    if trials.empty or histories is None or histories.empty:
        return {}
    runs = trials[["run_id", "hidden_sizes", "param_count"]].assign(
        group=trials[group].astype(str) if group and group in trials else "all",
        size=trials["hidden_sizes"].map(size_label),
    )
    frame = histories.merge(runs, on="run_id", how="inner")
    frame["depth"] = frame["size"].str.count(",") + 1
    out: dict[tuple[str, int], dict[str, pd.DataFrame]] = {}
    for (grp, depth), rows in frame.groupby(["group", "depth"]):
        grids = {}
        for metric in metrics:
            if metric not in rows:
                continue
            table = rows.pivot_table(index=["param_count", "size"], columns="epoch", values=metric, aggfunc="mean")
            grids[metric] = table.sort_index(level=0)
        out[(str(grp), int(depth))] = grids
    return out


def threshold_row(param_counts, threshold: int | None) -> float | None:
    """Where the threshold falls between rows of sizes ordered by parameter count: a fractional row
    index for a line (None when no threshold, or it lies outside the sizes)."""
    counts = list(param_counts)
    if threshold is None or not counts or threshold < counts[0] or threshold > counts[-1]:
        return None
    for i in range(len(counts) - 1):
        if counts[i] <= threshold <= counts[i + 1]:
            return i + 0.5
    return None


def heatmap_figure(grids: dict, threshold: int | None = None):
    """One row of panels per curve, val loss and val accuracy side by side; a dashed line at the
    interpolation threshold (parameters = training samples x classes) where the sizes straddle it."""
    curves = [(key, g) for key, g in sorted(grids.items()) if g]
    n = max(len(curves), 1)
    fig, axes = plt.subplots(n, 2, figsize=(11, 2.2 + 1.9 * n), squeeze=False)
    if not curves:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0][0].set_title("no per-epoch curves")
        return fig
    for row, ((grp, depth), g) in enumerate(curves):
        for col, metric in enumerate(HEATMAP_METRICS):
            ax = axes[row][col]
            table = g.get(metric)
            if table is None or table.empty:
                ax.set_axis_off()
                continue
            cmap = "viridis_r" if metric.endswith("loss") else "viridis"
            epochs = list(table.columns)
            image = ax.imshow(
                table.to_numpy(dtype=float),
                aspect="auto",
                origin="lower",
                cmap=cmap,
                interpolation="nearest",
                extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(table) - 0.5),
            )
            fig.colorbar(image, ax=ax, fraction=0.04)
            counts = [int(c) for c, _ in table.index]
            ax.set_yticks(np.arange(len(table)))
            ax.set_yticklabels([f"{s} ({int(c):,})" for c, s in table.index], fontsize=6)
            line = threshold_row(counts, threshold)
            if line is not None:
                ax.axhline(line, color="white", ls="--", lw=1.2)
                ax.text(epochs[0], line + 0.1, f" threshold {threshold:,}", color="white", fontsize=7, va="bottom")
            name = ("" if grp == "all" else f"{grp}, ") + f"depth {depth}"
            ax.set_title(f"{metric} (mean over seeds), {name}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    return fig
