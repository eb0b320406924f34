"""Several studies on one page: their capacity frontiers, gap trends and best trials, overlaid.

Each study is analysed exactly as its own report does it (``analysis.report.analyse``: the same
budget rules, the same trends); this module only lines the results up. A typical use: the same
design with and without a regulariser, run as two studies.
"""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures import _finish
from analysis.overfitting import capacity_frontier
from analysis.report import StudyReport, _table, config_label

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
BEST_FILE = "compare_best.csv"
FIGURES = ("compare_capacity.png", "compare_gap.png")


def best_table(reports: list[StudyReport]) -> pd.DataFrame:
    """One row per study: its best trial at the budget and its trends (gap and val-loss rise per
    decade of parameters, with their bootstrap intervals where the study has seeds)."""
    rows = []
    for r in reports:
        best = r.trials.sort_values(["val_acc", "param_count"], ascending=[False, True]).iloc[0]
        rows.append({
            "experiment": r.experiment, "trials": len(r.trials), "budget": r.budget,
            "best_val_acc": float(best["val_acc"]), "best_train_acc": float(best["train_acc"]),
            "best_gap": float(best["gap"]), "best_param_count": int(best["param_count"]),
            "best_config": config_label(best), "best_run_id": best["run_id"],
            "gap_per_decade": r.gap_trend.get("slope_per_decade"), "gap_low": r.gap_trend.get("low"),
            "gap_high": r.gap_trend.get("high"), "val_loss_rise_per_decade": r.loss_trend.get("slope_per_decade"),
            "val_loss_rise_low": r.loss_trend.get("low"), "val_loss_rise_high": r.loss_trend.get("high")})
    return pd.DataFrame(rows)


def _per_size(trials: pd.DataFrame) -> pd.DataFrame:
    return (trials.groupby("param_count").agg(val_acc=("val_acc", "mean"), sd=("val_acc", "std"), n=("val_acc", "size"))
            .reset_index().sort_values("param_count"))


def frontier_figure(reports: list[StudyReport]):
    """val_acc against parameters: every study's trials (points) and, where sizes have several
    seeds, the mean per size (line, ±1 sd band), else the best-val-at-or-below-size frontier (steps)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        t = r.trials.dropna(subset=["param_count", "val_acc"])
        ax.scatter(t["param_count"], t["val_acc"], color=colour, s=14, alpha=0.45)
        sizes = _per_size(t)
        if (sizes["n"] > 1).any():
            sd = sizes["sd"].fillna(0)
            ax.plot(sizes["param_count"], sizes["val_acc"], "-o", color=colour, ms=4, label=f"{r.experiment} (mean)")
            ax.fill_between(sizes["param_count"], sizes["val_acc"] - sd, sizes["val_acc"] + sd, color=colour,
                            alpha=0.12, lw=0)
        else:
            front = capacity_frontier(t)
            xs = list(front["param_count"]) + [t["param_count"].max()]
            ys = list(front["val_acc"]) + [front["val_acc"].iloc[-1]]
            ax.step(xs, ys, where="post", color=colour, lw=1.4, label=f"{r.experiment} (best at or below size)")
    return _finish(fig, ax, "parameters", "val_acc (final epoch)", "Capacity frontiers", 8, log_x=True)


def gap_figure(reports: list[StudyReport]):
    """train - val gap against parameters for every study, with each study's fitted trend."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(reports):
        colour = COLOURS[i % len(COLOURS)]
        t = r.trials.dropna(subset=["param_count", "gap"])
        ax.scatter(t["param_count"], t["gap"], color=colour, s=14, alpha=0.5)
        slope = r.gap_trend.get("slope_per_decade")
        if slope is not None and len(t) > 1:
            logp = np.log10(t["param_count"].to_numpy(dtype=float))
            intercept = float(np.mean(t["gap"]) - slope * np.mean(logp))
            xs = np.linspace(logp.min(), logp.max(), 20)
            interval = "" if r.gap_trend.get("low") is None else \
                f" [{r.gap_trend['low']:+.3f}, {r.gap_trend['high']:+.3f}]"
            ax.plot(10 ** xs, intercept + slope * xs, color=colour, lw=1.2,
                    label=f"{r.experiment}: {slope:+.3f}/decade{interval}")
        else:
            ax.plot([], [], color=colour, label=f"{r.experiment}: no trend (one size)")
    ax.axhline(0, color="black", lw=0.8)
    return _finish(fig, ax, "parameters", "train_acc - val_acc (final)", "Generalisation gap, per study", 8, log_x=True)


def write_comparison(reports: list[StudyReport], out: Path) -> list[Path]:
    """compare.html (figures inlined), the two PNGs and compare_best.csv in ``out``; returns the paths."""
    import base64
    import io

    out.mkdir(parents=True, exist_ok=True)
    best = best_table(reports)
    written, inline = [], {}
    for name, fig in zip(FIGURES, (frontier_figure(reports), gap_figure(reports))):
        fig.savefig(out / name, dpi=110)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        inline[name] = base64.b64encode(buf.getvalue()).decode()
        written.append(out / name)
    best.to_csv(out / BEST_FILE, index=False)
    written.append(out / BEST_FILE)
    names = ", ".join(r.experiment for r in reports)
    counts = "; ".join(f"{html.escape(r.experiment)}: {len(r.trials)} trials at the {r.budget}-epoch budget "
                       f"({html.escape(r.left_out_text())})" for r in reports)
    sections = [f"<h1>birdplane: {html.escape(names)} compared</h1>", f"<p>{counts}.</p>",
                "<h2>Capacity frontiers</h2>", f"<img alt='frontiers' src='data:image/png;base64,{inline[FIGURES[0]]}'>",
                "<h2>Generalisation gap</h2>", f"<img alt='gap' src='data:image/png;base64,{inline[FIGURES[1]]}'>",
                "<h2>Best trials and trends</h2>",
                _table(best.drop(columns=["best_run_id"]),
                       legend="per study: its best trial at the budget (final-epoch numbers) and the slope of the gap "
                              "and of (final - minimum val loss) per decade of parameters, with 95% bootstrap "
                              f"intervals over seeds where sizes have several (also in {BEST_FILE})")]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
             "border-bottom:1px solid #ddd}p.legend{font-size:12px;color:#555}")
    page = out / "compare.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(names)}</title>"
                    f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    return written + [page]
