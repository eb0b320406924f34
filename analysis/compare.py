"""Several studies on one page: their capacity frontiers, gap trends and best trials, overlaid.

Each study is analysed exactly as its own report does it (``analysis.report.analyse``: the same
budget rules, the same trends); this module only lines the results up. A typical use: the same
design with and without a regulariser, run as two studies.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.figures import _finish, mark_threshold
from analysis.overfitting import capacity_frontier
from analysis.report import StudyReport, _table, config_label, png_bytes, write_files

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
BEST_FILE = "compare_best.csv"
TRENDS_FILE = "compare_trends.csv"
FIGURES = ("compare_capacity.png", "compare_gap.png")


def best_table(reports: list[StudyReport]) -> pd.DataFrame:
    """One row per study: its best trial at the budget (final-epoch numbers)."""
    rows = []
    for r in reports:
        best = r.trials.sort_values(["val_acc", "param_count"], ascending=[False, True]).iloc[0]
        rows.append(
            {
                "experiment": r.experiment,
                "trials": len(r.trials),
                "epochs": r.epochs,
                "best_val_acc": float(best["val_acc"]),
                "best_train_acc": float(best["train_acc"]),
                "best_gap": float(best["gap"]),
                "best_param_count": int(best["param_count"]),
                "best_config": config_label(best),
                "best_run_id": best["run_id"],
            }
        )
    return pd.DataFrame(rows)


TREND_COLUMNS = [
    "experiment",
    "curve",
    "metric",
    "shape",
    "peak",
    "dip",
    "peak_set",
    "slope_per_decade",
    "low",
    "high",
    "lack_of_fit_p",
    "sizes",
    "trials",
]


def trends_table(reports: list[StudyReport]) -> pd.DataFrame:
    """One row per study, curve (group and depth) and metric: the curve's shape and, where it is
    monotone, its size-level slope per decade with the 95% t interval (analysis.capacity.curve_trend)."""
    rows = []
    for r in reports:
        for curve, metrics in r.trends.items():
            for metric, t in metrics.items():
                monotone = t["monotone"]
                rows.append(
                    {
                        "experiment": r.experiment,
                        "curve": curve,
                        "metric": metric,
                        "shape": t["shape"],
                        "peak": t["peak"],
                        "dip": t["dip"],
                        "peak_set": " ".join(t["peak_set"]),
                        "slope_per_decade": t["slope_per_decade"] if monotone else None,
                        "low": t["low"] if monotone else None,
                        "high": t["high"] if monotone else None,
                        "lack_of_fit_p": t["lack_of_fit_p"],
                        "sizes": t["sizes"],
                        "trials": t["trials"],
                    }
                )
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def _curve_with_band(ax, rows, metric: str, j: int, colour, label: str) -> None:
    """One curve's per-size means of ``metric`` and its 95% band (``metric``_low/_high), the j-th line style."""
    ax.plot(
        rows["param_count"],
        rows[metric],
        ["-o", "--s", ":D", "-.^"][j % 4],
        color=colour,
        ms=4,
        label=f"{label} (mean, 95% CI)",
    )
    ax.fill_between(rows["param_count"], rows[f"{metric}_low"], rows[f"{metric}_high"], color=colour, alpha=0.12, lw=0)


def _curves(r: StudyReport):
    """(label, rows by size) per curve of a study's per-size table: group and depth apart."""
    depths = r.sizes["depth"].nunique() if not r.sizes.empty else 0
    for (group, depth), rows in r.sizes.groupby(["group", "depth"]):
        parts = [r.experiment] + ([] if group == "all" else [str(group)]) + ([f"depth {depth}"] if depths > 1 else [])
        yield ", ".join(parts), rows.sort_values("param_count")


def frontier_figure(reports: list[StudyReport]):
    """val_acc against parameters: every study's trials (points) and, where sizes have several
    seeds, the mean final val_acc per size, one line per curve (group and depth: never joined
    across depths) with its 95% interval as a band; else the best-val-at-or-below-size frontier."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        t = r.trials.dropna(subset=["param_count", "val_acc"])
        ax.scatter(t["param_count"], t["val_acc"], color=colour, s=14, alpha=0.45)
        if not r.sizes.empty and (r.sizes["seeds"] > 1).any():
            for j, (label, rows) in enumerate(_curves(r)):
                _curve_with_band(ax, rows, "final_val_acc", j, colour, label)
        else:
            front = capacity_frontier(t)
            xs = list(front["param_count"]) + [t["param_count"].max()]
            ys = list(front["val_acc"]) + [front["val_acc"].iloc[-1]]
            ax.step(xs, ys, where="post", color=colour, lw=1.4, label=f"{r.experiment} (best at or below size)")
    _thresholds(ax, reports)
    return _finish(
        fig, ax, "parameters", "val_acc (final)", "Capacity frontiers (bands: 95% CI of the mean)", 8, log_x=True
    )


def gap_figure(reports: list[StudyReport]):
    """train - val gap against parameters: one line per study and curve (mean over seeds, 95% CI band)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        t = r.trials.dropna(subset=["param_count", "gap"])
        ax.scatter(t["param_count"], t["gap"], color=colour, s=14, alpha=0.5)
        if r.sizes.empty or not (r.sizes["seeds"] > 1).any():
            ax.plot([], [], color=colour, label=f"{r.experiment}: one seed a size, no curve")
            continue
        for j, (label, rows) in enumerate(_curves(r)):
            _curve_with_band(ax, rows, "gap", j, colour, label)
    ax.axhline(0, color="black", lw=0.8)
    _thresholds(ax, reports)
    return _finish(
        fig, ax, "parameters", "train_acc - val_acc (final)", "Generalisation gap, per study and depth", 8, log_x=True
    )


def _thresholds(ax, reports: list[StudyReport]) -> None:
    """Each distinct interpolation threshold of the studies compared (their data may differ)."""
    for threshold in sorted({r.threshold for r in reports if getattr(r, "threshold", None)}):
        mark_threshold(ax, threshold)


def write_comparison(reports: list[StudyReport], out: Path) -> list[Path]:
    """compare.html (figures inlined), the two PNGs, compare_best.csv and compare_trends.csv in ``out``;
    returns the paths."""
    import base64

    best = best_table(reports)
    figures = (frontier_figure(reports), gap_figure(reports))
    contents = {name: png_bytes(fig) for name, fig in zip(FIGURES, figures, strict=False)}
    inline = {name: base64.b64encode(data).decode() for name, data in contents.items()}
    trends = trends_table(reports)
    contents[BEST_FILE] = best.to_csv(index=False).encode()
    contents[TRENDS_FILE] = trends.to_csv(index=False).encode()
    names = ", ".join(r.experiment for r in reports)
    counts = "; ".join(
        f"{html.escape(r.experiment)}: {len(r.trials)} trials at the {r.epochs}-epoch budget "
        f"({html.escape(r.left_out_text())})"
        for r in reports
    )
    sections = [
        f"<h1>birdplane: {html.escape(names)} compared</h1>",
        f"<p>{counts}.</p>",
        "<h2>Capacity frontiers</h2>",
        f"<img alt='frontiers' src='data:image/png;base64,{inline[FIGURES[0]]}'>",
        "<h2>Generalisation gap</h2>",
        f"<img alt='gap' src='data:image/png;base64,{inline[FIGURES[1]]}'>",
        "<h2>Best trials</h2>",
        _table(
            best.drop(columns=["best_run_id"]),
            legend=f"per study: its best trial at the budget (final-epoch numbers; also in {BEST_FILE})",
        ),
        "<h2>Trends per curve</h2>",
        _table(
            trends,
            legend="per study, curve (regulariser value and depth, never pooled) and metric: the "
            "shape judged on the whole curve; where it is monotone, the slope per decade of parameters "
            "with its 95% t interval over the size means (sizes are the units); where it is not, the "
            f"peak or dip and the sizes not distinguishable from the highest (also in {TRENDS_FILE})",
        ),
    ]
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
        "border-bottom:1px solid #ddd}p.legend{font-size:12px;color:#555}"
    )
    contents["compare.html"] = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(names)}</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    ).encode()
    return write_files(out, contents)
